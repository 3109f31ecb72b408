"""The results store and the leaderboard: round trips, mean ± std over seeds, latest run wins."""
import io

import pandas as pd
import pytest

from robustbench_aft.errors import ConfigError
from robustbench_aft.results import ResultsStore, RunRecord
from robustbench_aft.tables import leaderboard_frame, render_leaderboard


def record(method, seed, clean, pgd, aa, group="g1", flags=()):
    return RunRecord(group_id=group, method=method, method_version=0 if method == "natural" else 2,
                     dataset="digits", arch="smallcnn", seed=seed, eps=0.15, norm="Linf", n_eval=100,
                     metrics={"clean": clean, "pgd": pgd, "aa": aa, "worst": min(pgd, aa)}, config={"x": 1},
                     flags=list(flags), provenance={"package_version": "0.1.0", "device": "cpu"}, wall_seconds=1.0)


@pytest.fixture
def store(tmp_path):
    db = ResultsStore(str(tmp_path / "sub" / "results.db"))
    db.add(record("natural", 0, 99.0, 1.0, 0.0))
    db.add(record("afd", 0, 98.0, 70.0, 66.0))
    db.add(record("afd", 1, 96.0, 74.0, 62.0, flags=["PGD far above aa"]))
    db.add(record("trades", 0, 95.0, 50.0, 40.0))
    return db


def test_two_seeds_give_mean_and_sample_std(store):
    frame = leaderboard_frame(store.rows())
    assert frame["method"].tolist() == ["natural", "afd", "trades"]
    afd = frame.set_index("method").loc["afd"]
    assert afd["seeds"] == 2 and afd["version"] == 2 and afd["flagged_runs"] == 1
    assert afd["clean"] == pytest.approx(97.0) and afd["clean_std"] == pytest.approx(2 ** 0.5)
    assert afd["pgd"] == pytest.approx(72.0) and afd["aa"] == pytest.approx(64.0)
    # avg = mean over runs of (clean + pgd + aa) / 3
    assert afd["avg"] == pytest.approx(((98 + 70 + 66) / 3 + (96 + 74 + 62) / 3) / 2)
    markdown = render_leaderboard(frame, "md")
    assert "97.00 ± 1.41" in markdown and "| natural " in markdown.splitlines()[2]


def test_csv_round_trip_gives_the_same_numbers(store):
    frame = leaderboard_frame(store.rows())
    back = pd.read_csv(io.StringIO(render_leaderboard(frame, "csv")))
    assert back["method"].tolist() == frame["method"].tolist()
    for column in ("clean", "pgd", "aa", "worst", "avg", "clean_std"):
        pd.testing.assert_series_equal(back[column], frame[column].astype(float), check_names=False, atol=1e-4)


def test_latest_run_of_a_cell_wins_and_groups_filter(store):
    store.add(record("trades", 0, 90.0, 55.0, 45.0, group="g2"))
    frame = leaderboard_frame(store.rows()).set_index("method")
    assert frame.loc["trades", "clean"] == 90.0 and frame.loc["trades", "seeds"] == 1
    only_g2 = leaderboard_frame(store.rows("g2"))
    assert only_g2["method"].tolist() == ["trades"]


def test_json_is_robustbench_style_with_numbers(store):
    import json

    entries = json.loads(render_leaderboard(leaderboard_frame(store.rows()), "json"))
    afd = next(e for e in entries if e["name"] == "afd")
    assert afd["clean_acc"] == 97.0 and afd["autoattack_acc"] == 64.0 and afd["unreliable"] is True
    assert afd["architecture"] == "smallcnn" and afd["eps"] == 0.15 and afd["seeds"] == 2


def test_store_keeps_config_and_provenance(store):
    runs = store.runs()
    assert len(runs) == 4 and runs[0]["package_version"] == "0.1.0" and runs[0]["config_json"] == '{"x": 1}'


def test_a_directory_or_a_non_database_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        ResultsStore(str(tmp_path))
    bogus = tmp_path / "bogus.db"
    bogus.write_text("not sqlite at all, just text that is long enough to be read as a header....")
    with pytest.raises(ConfigError, match="not a results database"):
        ResultsStore(str(bogus))


def test_published_numbers_parse_and_name_registered_methods():
    from robustbench_aft.registry import METHODS
    from robustbench_aft.tables import load_published

    published = load_published()
    assert set(published["method"]) <= set(METHODS.names())
    assert published["value"].dtype.kind == "f" and published["source"].str.len().min() > 0
    afd = published[(published["method"] == "afd") & (published["dataset"] == "cifar10")
                     & (published["arch"] == "resnet18")].set_index("metric")["value"]
    assert afd.to_dict() == {"clean": 84.88, "pgd": 52.70, "aa": 47.40, "avg": 61.66}
    # Table 1 and Table 2 of the AFD paper: 10 + 7 methods, three datasets, fast-AT rows without Tiny.
    assert len(published[published["source"].str.contains("AAAI 2025")]) == (27 + 21) * 4


def test_published_columns_only_where_everything_matches_and_never_for_afkd(tmp_path):
    from robustbench_aft.tables import load_published, with_published

    db = ResultsStore(str(tmp_path / "r.db"))
    for method, dataset in (("afd", "cifar10"), ("afkd", "cifar10"), ("trades", "digits")):
        rec = record(method, 0, 80.0, 50.0, 45.0)
        rec.dataset, rec.arch, rec.eps = dataset, "resnet18", 8 / 255
        db.add(rec)
    l2 = record("vaft", 0, 80.0, 50.0, 45.0)
    l2.dataset, l2.arch, l2.eps, l2.norm = "cifar10", "resnet18", 8 / 255, "L2"  # an L∞ budget's number never fits L2
    db.add(l2)
    frame = with_published(leaderboard_frame(db.rows()), load_published()).set_index("method")
    assert pd.isna(frame.loc["vaft", "published_aa"]) and frame.loc["vaft", "norm"] == "L2"
    assert frame.loc["afd", "published_aa"] == 47.40 and "Table 1" in frame.loc["afd", "published_source"]
    assert pd.isna(frame.loc["afkd", "published_aa"]) and frame.loc["afkd", "reconstructed"]
    assert pd.isna(frame.loc["trades", "published_clean"])
    markdown = render_leaderboard(frame.reset_index(), "md")
    assert "afkd (reconstructed)" in markdown and "published aa" in markdown
