"""Validation-based checkpoint selection, the catastrophic-overfitting flag and the counted passes."""

import pytest
import torch

from robustbench_aft.config import TrainConfig
from robustbench_aft.engine import fine_tune
from robustbench_aft.errors import ConfigError
from robustbench_aft.evaluator import EvalConfig
from robustbench_aft.validation import (
    ValidationSet,
    best_epoch,
    catastrophic_overfitting,
    is_better,
    split_training_set,
)

CPU = torch.device("cpu")


def test_split_keeps_the_subset_of_earlier_versions_and_takes_validation_outside_it():
    train, val = split_training_set(1000, 300, 200, seed=4)
    before = sorted(torch.randperm(1000, generator=torch.Generator().manual_seed(4))[:300].tolist())
    assert train == before  # the fine-tuning images of a run made before validation existed
    assert len(val) == 200 and not set(train) & set(val) and val == sorted(val)
    assert split_training_set(1000, 300, 200, seed=5)[1] != val  # seeded


def test_split_without_a_subset_holds_out_validation_from_every_training_image():
    train, val = split_training_set(50, None, 10, seed=0)
    assert len(train) == 40 and len(val) == 10 and sorted(train + val) == list(range(50))
    assert split_training_set(50, None, 0, seed=0) == (None, [])
    assert split_training_set(50, 60, 10, seed=0)[0] == train  # a subset as large as the set is no subset


def test_split_refuses_sizes_that_do_not_fit():
    with pytest.raises(ConfigError, match="only 100 training images lie outside --train-subset 900"):
        split_training_set(1000, 900, 200, seed=0)
    with pytest.raises(ConfigError, match="leaves no training image"):
        split_training_set(10, None, 10, seed=0)


def test_validation_images_are_disjoint_from_the_test_set_and_the_fine_tuning_subset(digits):
    train, val = split_training_set(len(digits.train), 128, 200, seed=0)
    validation = ValidationSet(digits.train, val, eps=0.15, norm="Linf", seed=0)
    test_images = digits.test.images.flatten(1)
    for image in validation.x.flatten(1)[:50]:
        # The training augmentation shifts by at most a pixel; an unshifted test image would match exactly.
        assert not bool((test_images == image).all(dim=1).any())
    assert not set(train) & set(validation.indices)


def test_best_epoch_prefers_robust_then_clean_accuracy_and_keeps_the_earlier_of_a_tie():
    curve = [{"epoch": 1, "clean": 80.0, "pgd": 30.0}, {"epoch": 2, "clean": 70.0, "pgd": 35.0},
             {"epoch": 3, "clean": 85.0, "pgd": 35.0}, {"epoch": 4, "clean": 85.0, "pgd": 35.0}]
    assert best_epoch(curve) == 3
    assert best_epoch([]) is None
    assert is_better(curve[0], None) and not is_better(curve[3], curve[2])


def test_catastrophic_overfitting_fires_on_a_robust_collapse_with_rising_clean_accuracy():
    collapse = [{"epoch": 1, "clean": 60.0, "pgd": 30.0}, {"epoch": 2, "clean": 75.0, "pgd": 12.0}]
    message = catastrophic_overfitting(collapse)
    assert message.startswith("catastrophic overfitting: validation PGD accuracy fell from 30.0 % (epoch 1) "
                              "to 12.0 % (epoch 2)")
    # Half exactly is not "more than half"; a drop with falling clean accuracy is plain bad training.
    assert catastrophic_overfitting([collapse[0], {"epoch": 2, "clean": 75.0, "pgd": 15.0}]) is None
    assert catastrophic_overfitting([collapse[0], {"epoch": 2, "clean": 50.0, "pgd": 5.0}]) is None


def test_validating_does_not_change_what_fine_tuning_computes(digits_model, digits):
    validated = fine_tune("vaft", digits_model, digits, TrainConfig(epochs=2, batch_size=64, train_subset=128),
                          eps=0.15, seed=1, device=CPU, progress=False)
    plain = fine_tune("vaft", digits_model, digits, TrainConfig(epochs=2, batch_size=64, train_subset=128, val_size=0),
                      eps=0.15, seed=1, device=CPU, progress=False)
    assert [p["epoch"] for p in validated.validation] == [1, 2] and plain.validation == []
    for a, b in zip(validated.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(a, b)


def scripted_validation(monkeypatch, pgd_by_epoch):
    """Make validation report ``pgd_by_epoch`` and remember the weights it was shown at each epoch."""
    seen = {}

    def measure(self, model, epoch):
        seen[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"epoch": epoch, "clean": 90.0, "pgd": pgd_by_epoch[epoch], "seconds": 0.0}

    monkeypatch.setattr(ValidationSet, "measure", measure)
    return seen


def test_best_val_exports_the_weights_of_the_best_validated_epoch(digits_model, digits, monkeypatch):
    seen = scripted_validation(monkeypatch, {1: 20.0, 2: 40.0, 3: 25.0})
    tuned = fine_tune("vaft", digits_model, digits,
                      TrainConfig(epochs=3, batch_size=64, train_subset=128, select="best-val"),
                      eps=0.15, seed=0, device=CPU, progress=False)
    assert tuned.best_val_epoch == 2 and tuned.best_val_model is not tuned.model
    for name, value in tuned.best_val_model.state_dict().items():
        assert torch.equal(value, seen[2][name])
    for name, value in tuned.model.state_dict().items():
        assert torch.equal(value, seen[3][name])


def test_afd_validates_its_ema_model(digits_model, digits, monkeypatch):
    seen = scripted_validation(monkeypatch, {1: 30.0, 2: 10.0})
    tuned = fine_tune("afd", digits_model, digits, TrainConfig(epochs=2, batch_size=64, train_subset=128),
                      eps=0.15, seed=0, device=CPU, progress=False)
    # The exported model after the last epoch is the EMA's: exactly what validation saw at epoch 2.
    for name, value in tuned.model.state_dict().items():
        assert torch.equal(value, seen[2][name])
    assert tuned.best_val_epoch == 1 and tuned.best_val_model is None  # --select last: nothing else exported


def test_passes_are_counted_per_training_image(digits_model, digits):
    settings = TrainConfig(epochs=1, batch_size=64, train_subset=128, val_size=0)
    vaft = fine_tune("vaft", digits_model, digits, settings, eps=0.15, seed=0, device=CPU, progress=False)
    # PGD-10: ten forward and backward passes for the attack, one of each for the update.
    assert vaft.passes_per_image == {"forward": 11.0, "backward": 11.0}
    trades = fine_tune("trades", digits_model, digits, settings, eps=0.15, seed=0, device=CPU, progress=False)
    # TRADES: the natural logits the KL attack aims away from (1), ten attack steps (10), then the
    # natural and adversarial forwards of the loss (2), whose backward goes through both (2).
    assert trades.passes_per_image == {"forward": 13.0, "backward": 12.0}


def test_best_val_run_stores_both_rows_and_the_curve(digits_model, digits, tmp_path, monkeypatch):
    from robustbench_aft.config import RunConfig
    from robustbench_aft.pipeline import run
    from robustbench_aft.pretrained import save_checkpoint
    from robustbench_aft.results import ResultsStore
    from robustbench_aft.tables import leaderboard

    scripted_validation(monkeypatch, {1: 50.0, 2: 10.0})
    natural = save_checkpoint(digits_model, tmp_path / "natural.pt", "smallcnn", digits)
    config = RunConfig(methods=["vaft"], dataset="digits", arch="smallcnn", pretrained=str(natural),
                       seeds=[0], db=str(tmp_path / "r.db"), out=str(tmp_path / "out"),
                       train=TrainConfig(epochs=2, batch_size=64, train_subset=128, select="best-val",
                                         feature_gap_probe=0),
                       eval=EvalConfig(attacks=["clean", "pgd"], n_eval=60))
    run(config, progress=False)
    store = ResultsStore(config.db)
    runs = {(r["method"], r["selection"]): r for r in store.runs()}
    assert set(runs) == {("natural", "last"), ("vaft", "last"), ("vaft", "best-val")}
    assert runs[("vaft", "last")]["selected_epoch"] == 2 and runs[("vaft", "best-val")]["selected_epoch"] == 1
    assert (tmp_path / "out" / "vaft-seed0" / "best-val.pt").is_file()
    curves = store.validation_curves()
    assert [(c["epoch"], c["pgd"]) for c in curves] == [(1, 50.0), (2, 10.0)]
    last, best = leaderboard(config.db), leaderboard(config.db, selection="best-val")
    assert list(last["method"]) == list(best["method"]) == ["natural", "vaft"]
    assert last.loc[1, "epoch"] == 2 and best.loc[1, "epoch"] == 1
    assert last.loc[1, "forward_per_image"] == 11.0 and last.loc[1, "eval_s"] > 0
    # Each row names the weights it evaluated: the epoch-1 export and the final one differ.
    best_weights = torch.load(runs[("vaft", "best-val")]["config_json"].split('"checkpoint": "')[1].split('"')[0],
                              weights_only=True)["state_dict"]
    last_weights = torch.load(tmp_path / "out" / "vaft-seed0" / "final.pt", weights_only=True)["state_dict"]
    assert best_weights.keys() == last_weights.keys()
    assert any(not torch.equal(best_weights[k], last_weights[k]) for k in best_weights)


def test_rows_stored_before_selection_existed_count_as_last_with_empty_costs(tmp_path):
    from robustbench_aft.results import ResultsStore, RunRecord
    from robustbench_aft.tables import leaderboard_frame

    store = ResultsStore(str(tmp_path / "r.db"))
    record = RunRecord(group_id="g", method="vaft", method_version=1, dataset="digits", arch="smallcnn", seed=0,
                       eps=0.15, norm="Linf", n_eval=10, metrics={"clean": 90.0}, config={}, flags=[],
                       provenance={}, wall_seconds=1.0)
    run_id = store.add(record)
    with store._connect() as connection, connection:  # what a store written by an older version holds
        connection.execute("DELETE FROM selection")
        connection.execute("DELETE FROM costs")
    rows = store.rows()
    assert rows[0]["selection"] == "last" and rows[0]["eval_seconds"] is None
    assert store.rows(selection="best-val") == []
    frame = leaderboard_frame(rows)
    assert frame.loc[0, "clean"] == 90.0 and frame["eval_s"].isna().all()
    assert store.runs()[0]["run_id"] == run_id


def test_the_default_split_shrinks_to_a_tenth_on_small_datasets_but_an_explicit_one_does_not():
    from robustbench_aft.engine import default_val_size

    assert default_val_size(500, 50000, 5000) == 500
    assert default_val_size(200, 1437, None) == 200
    assert default_val_size(500, 64, None) == 6
    assert default_val_size(500, 1000, 900) == 10  # a tenth of the 100 images outside the subset
    with pytest.raises(ConfigError, match="leaves no training image"):
        split_training_set(64, None, 500, seed=0)  # what an explicit --val-size 500 meets
