"""`bench dump` / `bench load`: finished runs as JSON files and back, with nothing lost."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from robustbench_aft.archive import dump_runs, load_runs
from robustbench_aft.cli import main
from robustbench_aft.errors import ConfigError
from robustbench_aft.results import ResultsStore, RunRecord
from robustbench_aft.tables import leaderboard_frame


def record(method: str, seed: int, clean_bits: str, **extra) -> RunRecord:
    accuracy = 100.0 * clean_bits.count("1") / len(clean_bits)
    return RunRecord(group_id="g", method=method, method_version=1, dataset="digits", arch="smallcnn", seed=seed,
                     eps=0.15, norm="Linf", n_eval=len(clean_bits), metrics={"clean": accuracy},
                     config={"checkpoint": "x.pt", "training_history": [{"epoch": 1, "loss": 0.5}]}, flags=[],
                     provenance={"package_version": "0.2.0", "git_commit": "abc", "torch_version": "2",
                                 "device": "cpu"},
                     wall_seconds=3.0, train_seconds=2.0, images_per_second=10.0,
                     feature_gap=[{"epoch": 1, "l2": 1.5, "cosine": 0.1, "seconds": 0.2, "head_l2": 1.2,
                                   "head_cosine": 0.05}],
                     indices=list(range(len(clean_bits))), per_sample={"clean": clean_bits},
                     validation=[{"epoch": 1, "clean": 90.0, "pgd": 40.0, "seconds": 0.3}], eval_seconds=4.0,
                     passes_per_image={"forward": 11.0, "backward": 11.0}, selected_epoch=1, **extra)


@pytest.fixture
def store_path(tmp_path):
    path = str(tmp_path / "original.db")
    store = ResultsStore(path)
    store.add(record("vaft", 0, "1101101111"))
    store.add(record("vaft", 0, "1111111111", selection="best-val"))
    store.add(record("afd", 0, "1111110111"))
    return path


def test_a_dumped_run_loads_back_identical(store_path, tmp_path):
    files = dump_runs(store_path, tmp_path / "runs")
    assert sorted(p.name.rsplit("-", 1)[0] for p in files) == ["afd-seed0", "vaft-seed0", "vaft-seed0-best-val"]
    copy = str(tmp_path / "copy.db")
    load_runs(tmp_path / "runs", copy)
    original, loaded = ResultsStore(store_path), ResultsStore(copy)
    for run in original.runs():
        assert dataclasses.asdict(loaded.record(run["run_id"])) == dataclasses.asdict(original.record(run["run_id"]))
    assert np.array_equal(loaded.samples(original.runs()[0]["run_id"]).correct["clean"],
                          original.samples(original.runs()[0]["run_id"]).correct["clean"])
    assert leaderboard_frame(loaded.rows()).equals(leaderboard_frame(original.rows()))
    best = leaderboard_frame(loaded.rows(selection="best-val"))
    assert list(best["method"]) == ["vaft"] and best.loc[0, "clean"] == 100.0
    load_runs(tmp_path / "runs", copy)  # loading again replaces the same rows
    assert len(loaded.runs()) == 3


def test_cli_dump_and_load_and_a_bad_file_is_one_line(store_path, tmp_path, capsys):
    assert main(["dump", "--db", store_path, "--output", str(tmp_path / "runs")]) == 0
    assert main(["load", str(tmp_path / "runs"), "--db", str(tmp_path / "copy.db")]) == 0
    assert "stored 3 run(s)" in capsys.readouterr().out
    (tmp_path / "runs" / "broken.json").write_text("<html>not json</html>")
    assert main(["load", str(tmp_path / "runs"), "--db", str(tmp_path / "other.db")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("bench: error: ") and "broken.json is not a run file" in error and "\n" not in error
    with pytest.raises(ConfigError, match="holds no run files"):
        load_runs(tmp_path / "empty", str(tmp_path / "other.db"))


def test_run_files_written_before_the_refactor_still_load_and_rank(tmp_path, capsys):
    """leaderboard/cifar10-jpeg-cpu-runs/ was dumped by the code before issue 16's refactor (AFD's
    terms were then named neg/cos/rob): it loads into a new store, and seed 0 gives the committed numbers."""
    runs = Path(__file__).resolve().parents[1] / "leaderboard" / "cifar10-jpeg-cpu-runs"
    db = tmp_path / "old.db"
    assert main(["load", str(runs), "--db", str(db)]) == 0
    capsys.readouterr()
    assert main(["leaderboard", "--db", str(db)]) == 0
    assert "| afd " in capsys.readouterr().out
    seed0 = {(row["method"], row["metric"]): row["value"] for row in ResultsStore(str(db)).rows() if row["seed"] == 0}
    assert seed0[("afd", "clean")] == pytest.approx(49.10) and seed0[("afd", "aa")] == pytest.approx(12.90)
    assert seed0[("natural", "clean")] == pytest.approx(78.30)
