"""The feature gap, the eps curve and the HTML report, on digits with two methods and two seeds."""
from __future__ import annotations

import sqlite3
from html.parser import HTMLParser

import pandas as pd
import pytest
import torch
from PIL import Image

from robustbench_aft.analysis import FIGURE_DPI, FIGURE_SIZE, feature_gap_frame, feature_gap_summary, plot_feature_gap
from robustbench_aft.cli import main
from robustbench_aft.featuregap import FeatureGapProbe

EPOCHS = 2
METHODS = ("afd", "vaft")


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits_natural):
    folder = tmp_path_factory.mktemp("analysis")
    db = folder / "results.db"
    # 400 fine-tuning images: what is checked is the stored gap and its plot, not accuracy.
    assert main(["run", "--methods", ",".join(METHODS), "--seeds", "0,1", "--preset", "ci", "--epochs", str(EPOCHS),
                 "--train-subset", "400", "--attacks", "clean,pgd", "--n-eval", "60", "--val-size", "0",
                 "--feature-gap-probe", "64", "--db", str(db), "--quiet"]) == 0
    return db


def test_a_gap_row_for_every_epoch_of_every_run(store):
    with sqlite3.connect(store) as connection:
        rows = connection.execute("SELECT r.method, r.seed, g.epoch, g.l2, g.cosine FROM runs r JOIN feature_gap g "
                                  "ON r.run_id = g.run_id").fetchall()
    epochs = {}
    for method, seed, epoch, l2, cosine in rows:
        epochs.setdefault((method, seed), []).append(epoch)
        assert l2 > 0 and 0 < cosine < 2
    assert epochs == {("natural", 0): [0], **{(m, s): list(range(EPOCHS + 1)) for m in METHODS for s in (0, 1)}}
    natural = {round(l2, 9) for method, _, epoch, l2, _ in rows if epoch == 0}
    assert len(natural) == 1, "epoch 0 of every run is the same natural model"


def test_csv_and_plot_show_exactly_the_stored_numbers(store, tmp_path, capsys):
    assert main(["analyze", "feature-gap", "--db", str(store), "--output", str(tmp_path)]) == 0
    assert "feature_gap-digits-smallcnn.png" in capsys.readouterr().out
    written = pd.read_csv(tmp_path / "feature_gap.csv")
    with sqlite3.connect(store) as connection:
        stored = pd.read_sql("SELECT r.method, r.seed, g.epoch, g.l2 FROM runs r JOIN feature_gap g "
                             "ON r.run_id = g.run_id", connection)
    merged = written.merge(stored, on=["method", "seed", "epoch"], suffixes=("_csv", "_db"))
    assert len(merged) == len(stored) == len(written)
    assert (merged["l2_csv"] - merged["l2_db"]).abs().max() < 1e-5

    summary = feature_gap_summary(feature_gap_frame(str(store)))
    _, drawn = plot_feature_gap(summary, tmp_path / "again.png", "test")
    for method in METHODS:
        expected = stored[stored["method"] == method].groupby("epoch")["l2"].mean()
        assert [epoch for epoch, _ in drawn[(method, "l2")]] == list(expected.index)
        assert [value for _, value in drawn[(method, "l2")]] == pytest.approx(list(expected.values), abs=1e-9)
    assert drawn[("natural", "l2")] == [(0, pytest.approx(stored[stored["method"] == "natural"]["l2"].item()))]
    with sqlite3.connect(store) as connection:
        heads = pd.read_sql("SELECT r.method, h.epoch, h.l2 FROM runs r JOIN head_gap h ON r.run_id = h.run_id",
                            connection)
    for method in METHODS:  # the second row of panels: the gap at the head's input
        expected = heads[heads["method"] == method].groupby("epoch")["l2"].mean()
        assert [value for _, value in drawn[(method, "head_l2")]] == pytest.approx(list(expected.values), abs=1e-9)
    with Image.open(tmp_path / "feature_gap-digits-smallcnn.png") as image:
        # Two rows of panels: on φ, and on the head's input.
        assert image.size == (int(FIGURE_SIZE[0] * FIGURE_DPI), int(2 * FIGURE_SIZE[1] * FIGURE_DPI))


def test_gap_at_the_head_input_goes_through_the_map_the_head_reads(digits, digits_model):
    probe = FeatureGapProbe(digits.train, 64, eps=0.15)
    dim = digits_model.head.in_features
    doubling = torch.nn.Linear(dim, dim, bias=False)
    with torch.no_grad():
        doubling.weight.copy_(2 * torch.eye(dim))
    plain, mapped = probe.measure(digits_model), probe.measure(digits_model, head_input=doubling)
    assert plain["head_l2"] == plain["l2"] and plain["head_cosine"] == plain["cosine"]
    # A map that doubles φ doubles the distance and leaves the angle alone.
    assert mapped["head_l2"] == pytest.approx(2 * mapped["l2"], rel=1e-5)
    assert mapped["head_cosine"] == pytest.approx(mapped["cosine"], abs=1e-6)


def test_gap_is_zero_without_a_budget(digits, digits_model):
    gap = FeatureGapProbe(digits.train, 64, eps=0.0).measure(digits_model)
    assert gap["l2"] == 0.0
    assert abs(gap["cosine"]) < 1e-6


def test_probe_is_fixed_and_leaves_the_global_generator_alone(digits, digits_model):
    torch.manual_seed(5)
    before = torch.get_rng_state()
    first = FeatureGapProbe(digits.train, 64, eps=0.15)
    assert torch.equal(torch.get_rng_state(), before)
    second = FeatureGapProbe(digits.train, 64, eps=0.15)
    assert torch.equal(first.x, second.x)
    assert first.measure(digits_model) | {"seconds": 0} == second.measure(digits_model) | {"seconds": 0}


@pytest.mark.slow
def test_eps_curve_from_the_store(store, tmp_path, capsys):
    assert main(["analyze", "eps-curve", "--db", str(store), "--methods", "natural,afd", "--eps-values", "0,0.15",
                 "--aa-eps", "0.15", "--n-eval", "30", "--output", str(tmp_path), "--quiet"]) == 0
    frame = pd.read_csv(tmp_path / "eps_curve.csv")
    assert set(frame["method"]) == {"natural", "afd"}
    assert len(frame[(frame["method"] == "afd") & (frame["attack"] == "aa")]) == 2  # two seeds, one AA eps
    at = frame.set_index(["method", "seed_index", "eps", "attack"])["accuracy"]
    assert at[("natural", 0, 0.15, "pgd")] < 10 < at[("natural", 0, 0.0, "pgd")]
    assert at[("afd", 0, 0.15, "aa")] <= at[("afd", 0, 0.15, "pgd")]
    with Image.open(tmp_path / "eps_curve.png") as image:
        assert image.size == (1000, 400)


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self.images, self.stack = [], [], []

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "td":
            self.cells.append(data.strip())


def test_report_is_one_self_contained_page(store, tmp_path, capsys):
    output = tmp_path / "report.html"
    assert main(["report", "--db", str(store), "--output", str(output)]) == 0
    parser = _Collector()
    parser.feed(output.read_text())
    assert parser.stack == []
    for method in ("natural",) + METHODS:
        assert method in parser.cells
    assert parser.images and all(src.startswith("data:image/png;base64,") for src in parser.images)
    text = output.read_text()
    assert "git_commit" in text and "Sanity flags" in text
    assert "Clean against robust accuracy" in text and len(parser.images) >= 2  # trade-off + feature gap
    assert list(tmp_path.iterdir()) == [output]


def test_tradeoff_plot_and_csv_carry_the_leaderboard_intervals(store, tmp_path, capsys):
    assert main(["analyze", "tradeoff", "--db", str(store), "--metric", "pgd", "--output", str(tmp_path)]) == 0
    frame = pd.read_csv(tmp_path / "tradeoff.csv").set_index("method")
    assert set(frame.index) == {"natural", *METHODS}
    assert (frame.loc["afd", "seeds"], frame.loc["natural", "seeds"]) == (2, 1)
    for method in frame.index:
        assert frame.loc[method, "pgd_ci_low"] <= frame.loc[method, "pgd"] <= frame.loc[method, "pgd_ci_high"]
    png, = tmp_path.glob("tradeoff-*.png")
    with Image.open(png) as image:
        assert image.size == (640, 480)


def test_afd_gap_at_the_head_input_is_measured_on_d1_features(store):
    with sqlite3.connect(store) as connection:
        rows = connection.execute("SELECT r.method, g.l2, h.l2 FROM runs r JOIN feature_gap g ON r.run_id = g.run_id "
                                  "JOIN head_gap h ON g.run_id = h.run_id AND g.epoch = h.epoch "
                                  "WHERE g.epoch > 0").fetchall()
    by_method = {}
    for method, features_l2, head_l2 in rows:
        by_method.setdefault(method, []).append((features_l2, head_l2))
    # The head of every other method reads φ; AFD's reads D1 φ, and D1 has moved from the identity.
    assert all(features == head for method, pairs in by_method.items() if method != "afd" for features, head in pairs)
    assert all(features != head for features, head in by_method["afd"])
