"""Intervals, paired tests and noise-aware ranks against values computed by hand, and bench compare."""
import json
import math
import sqlite3

import numpy as np
import pytest
from scipy.stats import t as student_t

from robustbench_aft.cli import main
from robustbench_aft.compare import pair_seeds, rank_groups
from robustbench_aft.results import ResultsStore, RunRecord, outcome_bits
from robustbench_aft.stats import holm, interval_for, mcnemar_exact, paired_comparison, t_interval, wilson_interval
from robustbench_aft.tables import leaderboard, leaderboard_frame

Z = 1.959963984540054  # the 97.5 % normal quantile


def wilson_by_hand(k, n):
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return 100 * (centre - half), 100 * (centre + half)


@pytest.mark.parametrize("k,n", [(8, 10), (0, 20), (47, 100), (1000, 1000)])
def test_wilson_interval_matches_the_formula(k, n):
    assert wilson_interval(k, n) == pytest.approx(wilson_by_hand(k, n), abs=1e-9)


def test_wilson_for_8_of_10_by_hand():
    assert wilson_interval(8, 10) == pytest.approx((49.0162, 94.3318), abs=1e-3)


def test_t_interval_of_three_seeds_by_hand():
    # mean 62, sample sd 2, t(0.975, 2) = 4.302653: 62 ± 4.302653 · 2 / √3
    assert t_interval([60.0, 62.0, 64.0]) == pytest.approx((57.03172, 66.96828), abs=1e-4)
    assert t_interval([50.0, 50.0]) == (50.0, 50.0)
    assert all(math.isnan(v) for v in t_interval([50.0]))
    # a leaderboard cell over seeds is cut to the possible accuracies
    assert interval_for([98.0, 100.0], None)[1] == 100.0
    # two seeds with the same 127 of 1,000: not the zero-width t-interval but Wilson on 254 of 2,000
    assert interval_for([12.7, 12.7], 1000) == pytest.approx(wilson_by_hand(254, 2000))
    assert interval_for([12.7, 12.7], None) == (12.7, 12.7)  # avg is no proportion: no pooled interval


def test_mcnemar_exact_by_hand():
    # 1 point right only for the first model, 9 only for the second, 5 for both, 5 for neither:
    # p = 2 · P(X ≤ 1), X ~ Bin(10, 1/2) = 2 · 11 / 1024
    first = np.array([1] * 1 + [0] * 9 + [1] * 5 + [0] * 5, dtype=bool)
    second = np.array([0] * 1 + [1] * 9 + [1] * 5 + [0] * 5, dtype=bool)
    assert mcnemar_exact(first, second) == pytest.approx(22 / 1024)
    assert mcnemar_exact(first, first) == 1.0
    assert mcnemar_exact(first, second) == mcnemar_exact(second, first)


def test_paired_comparison_one_seed_and_several():
    first = np.array([1] * 1 + [0] * 9 + [1] * 5 + [0] * 5, dtype=bool)
    second = np.array([0] * 1 + [1] * 9 + [1] * 5 + [0] * 5, dtype=bool)
    one = paired_comparison([first], [second])
    assert one.delta == pytest.approx(-40.0) and one.ci_low < -40.0 < one.ci_high < 0
    assert one.p_value == pytest.approx(22 / 1024) and (one.only_first, one.only_second) == (1, 9)
    several = paired_comparison([first, first], [second, first])
    assert several.per_seed_delta == [pytest.approx(-40.0), 0.0]
    assert several.delta == pytest.approx(-20.0) and several.seeds == 2
    assert one.seed_p_value is None and one.seed_interval_excludes_zero is None
    # Per-seed Δ −40 and 0: mean −20, sample std 20√2, standard error 20, t = −1 on 1 degree of
    # freedom, whose two-sided p is exactly 1/2 (the t distribution with 1 df is the Cauchy).
    assert several.seed_p_value == pytest.approx(0.5) and several.seed_interval_excludes_zero is False
    # McNemar on the pooled points still sees the 1-vs-9 split of the first seed (the second adds no
    # discordant point): the two tests disagree, which `bench compare` says in words.
    assert several.p_value == pytest.approx(22 / 1024)
    # Every seed gives Δ = −40: no spread, so the t-test is undefined (NaN, not the p = 0 of t = ∞).
    steady = paired_comparison([first, first, first], [second, second, second])
    assert math.isnan(steady.seed_p_value) and steady.seed_interval_excludes_zero is None
    assert steady.delta == pytest.approx(-40.0)
    # Its interval is not the point [−40, −40] but the per-point t-interval of the 60 pooled points:
    # differences +100 on 3, −100 on 27, 0 on 30; squared deviations from −40 sum to
    # 3·140² + 27·60² + 30·40² = 204,000, so the standard error is √(204,000 / 59 / 60) ≈ 7.59.
    half_width = student_t.ppf(0.975, 59) * math.sqrt(204_000 / 59 / 60)
    assert (steady.ci_low, steady.ci_high) == (pytest.approx(-40.0 - half_width), pytest.approx(-40.0 + half_width))
    assert steady.ci_high < 0


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def test_rank_groups_ties_and_a_clearly_worse_method():
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.6
    close = base.copy()
    close[:4] = ~close[:4]  # differs from the best on 4 points of 400: not significant
    worse = base & (rng.random(400) < 0.5)  # loses about half of the best's correct points
    outcomes = {"a": {0: base}, "b": {0: close}, "c": {0: worse}}
    means = [100 * base.mean(), 100 * close.mean(), 100 * worse.mean()]
    assert rank_groups(["a", "b", "c"], means, outcomes.get) == [1, 1, 2]
    assert rank_groups(["a", "b"], means[:2], {"a": {0: base}, "b": None}.get) == [None, None]
    # "c" has only seed 1, where it equals the best: paired with seed 1 of "a" it ties, however bad
    # the seed-0 run of the others (pairing "c" seed 1 with "a" seed 0 would rank it 2).
    partial = {"a": {0: base, 1: base}, "b": {0: close, 1: close}, "c": {1: base}}
    assert rank_groups(["a", "b", "c"], means, partial.get) == [1, 1, 1]


def test_seeds_pair_by_number_and_the_natural_model_with_every_seed():
    assert pair_seeds([0, 1, 2], [2, 0]) == [(0, 0), (2, 2)]
    assert pair_seeds([1], [0]) == []
    assert pair_seeds([None], [2, 0]) == [(None, 0), (None, 2)]
    assert pair_seeds([3], [None]) == [(3, None)]
    assert pair_seeds([None], [None]) == [(None, None)]


def _store_of(tmp_path, *records):
    db = tmp_path / "results.db"
    store = ResultsStore(str(db))
    for record in records:
        store.add(record)
    return db, store


def test_bench_compare_pairs_only_common_seeds(tmp_path, capsys):
    # afd has seeds 0 and 1, trades only seed 0: the comparison is seed 0 alone (one seed, McNemar),
    # never afd seed 1 against trades seed 0; the natural model pairs with both afd seeds.
    db, store = _store_of(tmp_path, _record("afd", 0, "1" * 60 + "0" * 40), _record("afd", 1, "1" * 30 + "0" * 70),
                          _record("trades", 0, "1" * 50 + "0" * 50), _record("natural", 0, "0" * 100))
    assert main(["compare", "--db", str(db), "afd", "trades", "--metric", "aa", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["per_seed_delta"] == [pytest.approx(10.0)] and document["rows"][0]["seeds"] == 1
    assert main(["compare", "--db", str(db), "afd", "natural", "--metric", "aa", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["per_seed_delta"] == [pytest.approx(60.0), pytest.approx(30.0)]
    assert main(["compare", "--db", str(db), "trades", "afd", "--metric", "aa"]) == 0
    store.add(_record("vaft", 1, "1" * 50 + "0" * 50))
    code = main(["compare", "--db", str(db), "trades", "vaft", "--metric", "aa"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith("trades and vaft have no seed in common to pair")


def _record(method, seed, bits, n_eval=None, indices=None):
    correct = np.array([c == "1" for c in bits])
    accuracy = 100.0 * correct.mean()
    return RunRecord(group_id="g", method=method, method_version=1, dataset="digits", arch="smallcnn", seed=seed,
                     eps=0.15, norm="Linf", n_eval=n_eval or len(bits),
                     metrics={"clean": 100.0, "aa": accuracy, "worst": accuracy}, config={}, flags=[],
                     provenance={}, wall_seconds=1.0, indices=indices or list(range(len(bits))),
                     per_sample={"clean": "1" * len(bits), "aa": bits, "worst": bits})


@pytest.fixture
def store_db(tmp_path):
    db = tmp_path / "results.db"
    store = ResultsStore(str(db))
    rng = np.random.default_rng(1)
    best = rng.random(300) < 0.6
    store.add(_record("afd", 0, outcome_bits(best)))
    store.add(_record("vaft", 0, outcome_bits(best & (rng.random(300) < 0.99))))
    store.add(_record("trades", 0, outcome_bits(best & (rng.random(300) < 0.5))))
    return db


def test_leaderboard_ranks_and_intervals_from_the_store(store_db):
    frame = leaderboard(str(store_db)).set_index("method")
    assert frame.loc["afd", "rank"] == 1 and frame.loc["vaft", "rank"] == 1 and frame.loc["trades", "rank"] == 2
    correct = round(frame.loc["afd", "aa"] * 3)
    assert (frame.loc["afd", "aa_ci_low"], frame.loc["afd", "aa_ci_high"]) == pytest.approx(
        wilson_by_hand(correct, 300))


def test_bench_compare_prints_delta_interval_and_p(store_db, capsys):
    assert main(["compare", "--db", str(store_db), "afd", "trades", "--metric", "aa", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    row, = document["rows"]
    assert row["delta"] > 20 and row["ci95 low"] > 0 and float(row["p"]) < 1e-6
    assert row["significant (p < 0.05)"] == "yes" and row["points"] == 300


def test_bench_compare_says_when_seeds_disagree_with_the_pooled_test(tmp_path, capsys):
    # Seed 0: afd right on 40 more of 100 points than vaft; seed 1: the two models agree everywhere.
    # Pooled McNemar (40 vs 0 discordant) is far below 0.05; the per-seed Δ 40 and 0 give t = 1 on
    # 1 df, p = 0.5: the verdict must say the difference does not outlast a change of seed.
    db, _ = _store_of(tmp_path, _record("afd", 0, "1" * 60 + "0" * 40), _record("vaft", 0, "1" * 20 + "0" * 80),
                      _record("afd", 1, "1" * 50 + "0" * 50), _record("vaft", 1, "1" * 50 + "0" * 50))
    assert main(["compare", "--db", str(db), "afd", "vaft", "--metric", "aa"]) == 0
    out = capsys.readouterr().out
    assert "p seeds" in out and "Δ = +20.00 points" in out
    assert "significant at α = 0.05 on the pooled points; the seed interval includes 0 (p seeds = 0.5)" in out
    assert "not distinguishable from seed-to-seed variation with 2 seeds" in out


def test_bench_compare_refuses_different_points(tmp_path, capsys):
    db = tmp_path / "results.db"
    store = ResultsStore(str(db))
    store.add(_record("afd", 0, "1101"))
    store.add(_record("vaft", 0, "1100", indices=[0, 1, 2, 5]))
    code = main(["compare", "--db", str(db), "afd", "vaft", "--metric", "aa"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "were not evaluated on the same points" in err[0]
    other = ResultsStore(str(tmp_path / "other.db"))
    other.add(_record("afd", 0, "1101"))
    shifted = _record("vaft", 0, "1100")
    shifted.eps = 0.1
    other.add(shifted)
    code = main(["compare", "--db", str(tmp_path / "other.db"), "afd", "vaft"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no common dataset, arch, eps and norm" in err[0]


def test_an_old_store_still_loads_with_empty_new_columns(tmp_path, capsys):
    db = tmp_path / "old.db"
    ResultsStore(str(db)).add(_record("afd", 0, "1101"))
    with sqlite3.connect(db) as connection:  # a store as written before per-sample outcomes were kept
        connection.execute("DROP TABLE samples")
        connection.execute("DROP TABLE eval_points")
    frame = leaderboard(str(db))
    assert math.isnan(frame.loc[0, "rank"]) and frame.loc[0, "aa"] == 75.0
    assert not math.isnan(frame.loc[0, "aa_ci_low"])  # the Wilson interval needs only the stored accuracy
    assert main(["leaderboard", "--db", str(db)]) == 0
    afd_row, = [line for line in capsys.readouterr().out.splitlines() if "| afd " in line]
    assert afd_row.split("|")[1].strip() == "-"  # no rank without per-sample outcomes
    assert leaderboard_frame(ResultsStore(str(db)).rows()).loc[0, "aa"] == 75.0
