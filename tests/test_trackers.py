"""`--log tensorboard,mlflow`: the event file and the MLflow store read back hold the store's numbers; a
tracker name that does not exist, or whose package is missing, is one line and exit 2 before anything is
written; a fourth tracker is one registered class."""
from __future__ import annotations

import json

import pytest

from robustbench_aft.cli import main
from robustbench_aft.registry import TRACKERS
from robustbench_aft.results import ResultsStore
from robustbench_aft.stats import interval_for
from robustbench_aft.trackers import CellLogger, Tracker

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

EPOCHS = 2
POINTS = 64


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, digits_natural):
    folder = tmp_path_factory.mktemp("tracked")
    code = main(["run", "--methods", "ours", "--epochs", str(EPOCHS), "--attacks", "clean,pgd", "--n-eval", str(POINTS),
                 "--feature-gap-probe", "0", "--log", "tensorboard,mlflow", "--db", str(folder / "results.db"),
                 "--out", str(folder / "out"), "--format", "csv", "--quiet"])
    assert code == 0
    store = ResultsStore(str(folder / "results.db"))
    run = next(r for r in store.runs() if r["method"] == "afd")
    return folder, store, run


def _stored(store, run):
    record = store.record(run["run_id"])
    return record, json.loads(run["config_json"])["training_history"]


def test_tensorboard_event_file_holds_the_stored_curves_and_results(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, store, run = tracked_run
    record, history = _stored(store, run)
    events = EventAccumulator(str(folder / "out" / "tensorboard" / "afd-seed0"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    terms = [key for key in history[0] if key != "epoch"]
    assert {"loss", "ce"} <= set(terms)
    for term in terms:  # every loss term, every epoch
        assert scalars[f"train/{term}"] == [(h["epoch"], pytest.approx(h[term], rel=1e-6)) for h in history]
    for key in ("clean", "pgd"):
        assert scalars[f"val/{key}"] == [(v["epoch"], pytest.approx(v[key])) for v in record.validation]
    assert [step for step, _ in scalars["train/lr"]] == list(range(1, EPOCHS + 1))
    assert all(rate > 0 for _, rate in scalars["train/images_per_second"])
    for metric, value in record.metrics.items():
        low, high = interval_for([value], POINTS)
        assert scalars[f"eval/{metric}"] == [(EPOCHS, pytest.approx(value))]
        assert scalars[f"eval/{metric}_ci_low"][0][1] == pytest.approx(low)
        assert scalars[f"eval/{metric}_ci_high"][0][1] == pytest.approx(high)
    # The natural model is a tracked run too: its results, no epochs.
    natural = EventAccumulator(str(folder / "out" / "tensorboard" / "natural"))
    natural.Reload()
    assert "eval/clean" in natural.Tags()["scalars"] and "train/loss" not in natural.Tags()["scalars"]


def test_mlflow_store_holds_the_stored_numbers_params_and_model_folder(tracked_run):
    from mlflow.tracking import MlflowClient

    from robustbench_aft.trackers.mlflow import tracking_uri

    folder, store, run = tracked_run
    record, history = _stored(store, run)
    client = MlflowClient(tracking_uri=tracking_uri(folder / "out"))
    experiment = client.get_experiment_by_name(run["group_id"])
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"natural", "afd-seed0"}
    tracked = runs["afd-seed0"]
    assert tracked.info.status == "FINISHED"
    loss = client.get_metric_history(tracked.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in sorted(loss, key=lambda m: m.step)] == \
        [(h["epoch"], pytest.approx(h["loss"])) for h in history]
    val_pgd = client.get_metric_history(tracked.info.run_id, "val/pgd")
    assert sorted((m.step, m.value) for m in val_pgd) == [(v["epoch"], v["pgd"]) for v in record.validation]
    for metric, value in record.metrics.items():
        assert tracked.data.metrics[f"eval/{metric}"] == pytest.approx(value)
        assert tracked.data.metrics[f"eval/{metric}_ci_low"] == pytest.approx(interval_for([value], POINTS)[0])
    params = tracked.data.params
    assert params["train.epochs"] == str(EPOCHS) and params["eval.n_eval"] == str(POINTS)
    assert params["method_params_used.gamma"] == str(json.loads(run["config_json"])["method_params_used"]["gamma"])
    artifacts = {a.path for a in client.list_artifacts(tracked.info.run_id, "model")}
    assert artifacts == {f"model/{name}" for name in ("README.md", "config.json", "config.yaml", "model.safetensors")}
    # The artifact is the exported model folder, recorded in the store for `bench report`.
    from robustbench_aft.modelfolder import exported_folders

    assert exported_folders(str(folder / "results.db"))[run["run_id"]] == str((folder / "out" / "afd-seed0" / "model")
                                                                               .resolve())


@pytest.mark.parametrize("argv, expected", [
    (["run", "--methods", "ours", "--log", "tensorbord"], "unknown tracker 'tensorbord'. Did you mean 'tensorboard'"),
    (["pretrain", "--log", "mlflow,neptune"], "unknown tracker 'neptune'"),
    (["run", "--methods", "ours", "--log", "absent"], "--log absent needs not_installed_tracker_pkg: "
                                                      "pip install 'robustbench-aft[absent]'"),
])
def test_bad_tracker_is_one_line_exit_2_and_writes_nothing(argv, expected, tmp_path, capsys, monkeypatch):
    @TRACKERS.register("absent")
    class Absent(Tracker):
        """A tracker whose package is not installed."""

        extra, module = "absent", "not_installed_tracker_pkg"

    try:
        monkeypatch.chdir(tmp_path)
        code = main(argv + ["--db", str(tmp_path / "r.db"), "--out", str(tmp_path / "out"), "--quiet"]
                    if argv[0] == "run" else argv + ["--quiet"])
    finally:
        TRACKERS.unregister("absent")
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured.err
    assert lines[0].startswith("bench: error: ") and expected in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_fourth_tracker_is_one_registered_class(tmp_path):
    """Everything a tracker needs to implement: the CellLogger does the naming and the intervals."""
    seen = []

    @TRACKERS.register("memory")
    class Memory(Tracker):
        """Keeps what it is given."""

        extra, module = "dev", "json"

        def log_metrics(self, values, step):
            seen.append((step, dict(values)))

        def log_params(self, params):
            seen.append(("params", params))

    try:
        from robustbench_aft.trackers import open_trackers

        logger = open_trackers(["memory"], tmp_path, "g").cell("afd-seed0")
        logger.epoch({"epoch": 1, "lr": 0.1, "terms": {"loss": 2.0}, "images": 100, "seconds": 2.0,
                      "validation": {"clean": 90.0, "pgd": 40.0}})
        logger.epoch({"epoch": 2, "lr": 0.05, "terms": {"loss": 1.0}, "images": 300, "seconds": 3.0,
                      "validation": None})
        logger.results({"clean": 50.0}, 100)
        logger.params({"train": {"lr": 0.1}})
    finally:
        TRACKERS.unregister("memory")
    assert seen[0] == (1, {"train/loss": 2.0, "train/lr": 0.1, "train/images_per_second": 50.0, "val/clean": 90.0,
                           "val/pgd": 40.0})
    assert seen[1] == (2, {"train/loss": 1.0, "train/lr": 0.05, "train/images_per_second": 200.0})
    low, high = interval_for([50.0], 100)
    assert seen[2] == (2, {"eval/clean": 50.0, "eval/clean_ci_low": low, "eval/clean_ci_high": high})
    assert seen[3] == ("params", {"train.lr": 0.1})
    assert not CellLogger([])  # no --log: nothing to call


def test_wandb_writes_an_offline_run_without_an_account(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from robustbench_aft.trackers import open_trackers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    logger = open_trackers(["wandb"], tmp_path, "g").cell("afd-seed0")
    logger.epoch({"epoch": 1, "lr": 0.1, "terms": {"loss": 2.0}, "images": 10, "seconds": 1.0, "validation": None})
    logger.results({"clean": 50.0}, 100)
    logger.params({"train": {"lr": 0.1}})
    logger.artifact(tmp_path / "model")
    run = logger.trackers[0].run
    assert run.settings.mode == "offline" and run.summary["eval/clean"] == 50.0 and run.config["train.lr"] == 0.1
    logger.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))  # what `wandb sync` uploads later
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
