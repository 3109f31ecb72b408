"""The engine: checkpoints written atomically, EMA on or off, NaN stops with a clear message, seeding."""
import copy

import pytest
import torch

from robustbench_aft.config import TrainConfig
from robustbench_aft.engine import NumericalError, fine_tune

CPU = torch.device("cpu")
TINY = TrainConfig(epochs=1, batch_size=64, train_subset=128)


def test_fine_tune_writes_last_checkpoint_and_is_reproducible(digits_model, digits, tmp_path):
    first = fine_tune("vaft", digits_model, digits, TINY, eps=0.15, seed=3, device=CPU, out_dir=tmp_path, progress=False)
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=False)
    assert checkpoint["next_epoch"] == 2 and checkpoint["method"] == "vaft" and checkpoint["ema"] is None
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed away
    again = fine_tune("vaft", digits_model, digits, TINY, eps=0.15, seed=3, device=CPU, progress=False)
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert first.images_per_second > 0 and first.final_terms["loss"] > 0


def test_ema_is_the_method_default_and_can_be_forced(digits_model, digits, tmp_path):
    fine_tune("afd", digits_model, digits, TINY, eps=0.15, seed=0, device=CPU, out_dir=tmp_path / "afd",
              progress=False)
    assert torch.load(tmp_path / "afd" / "last.pt", weights_only=False)["ema"]["updates"] == 2
    forced = TrainConfig(epochs=1, batch_size=64, train_subset=128, ema=True)
    fine_tune("vaft", digits_model, digits, forced, eps=0.15, seed=0, device=CPU, out_dir=tmp_path / "vaft",
              progress=False)
    assert torch.load(tmp_path / "vaft" / "last.pt", weights_only=False)["ema"]["updates"] == 2


def test_nan_loss_names_method_seed_epoch_batch_and_term(digits_model, digits, tmp_path):
    broken = copy.deepcopy(digits_model)
    with torch.no_grad():
        broken.head.weight.fill_(float("nan"))
    with pytest.raises(NumericalError, match=r"trades seed 0 epoch 1 batch 1: loss term 'loss' is nan"):
        fine_tune("trades", broken, digits, TINY, eps=0.15, seed=0, device=CPU, out_dir=tmp_path, progress=False)
    assert not (tmp_path / "last.pt").exists()


def test_unknown_method_parameter_is_a_config_error():
    from robustbench_aft.engine import build_method
    from robustbench_aft.errors import ConfigError

    with pytest.raises(ConfigError, match="afd has no parameter"):
        build_method("afd", {"delta": 1.0}, eps=0.1, train=TINY)


def test_channels_last_changes_the_memory_layout_not_the_maths(digits_model, digits):
    """The channels_last path (auto on CUDA) forced on CPU: the same training within float noise."""
    tuned = {setting: fine_tune("vaft", digits_model, digits, TrainConfig(epochs=1, batch_size=128, train_subset=256,
                                                                          channels_last=setting),
                                eps=0.15, seed=0, device=CPU, progress=False)
             for setting in ("off", "on")}
    conv = next(m for m in tuned["on"].model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert tuned["on"].final_terms["loss"] == pytest.approx(tuned["off"].final_terms["loss"], rel=1e-3)
    for (name, on), off in zip(tuned["on"].model.state_dict().items(), tuned["off"].model.state_dict().values()):
        torch.testing.assert_close(on, off, rtol=1e-3, atol=1e-4, msg=name)


def test_bf16_autocast_runs_on_cpu_and_stays_close_to_fp32(digits_model, digits):
    """The AMP path (bf16 autocast) that CUDA uses by default, exercised on CPU so CI covers it."""
    from robustbench_aft.evaluate import EvalConfig, evaluate

    tuned = {precision: fine_tune("vaft", digits_model, digits, TrainConfig(epochs=2, batch_size=128,
                                                                            train_subset=512, precision=precision),
                                  eps=0.15, seed=0, device=CPU, progress=False)
             for precision in ("fp32", "bf16")}
    assert all(torch.isfinite(torch.tensor(v)) for v in tuned["bf16"].final_terms.values())
    accuracy = {}
    for precision in ("fp32", "bf16"):
        config = EvalConfig(attacks=["clean", "pgd"], eps=0.15, n_eval=200, precision=precision, sanity=False)
        accuracy[precision] = evaluate(tuned["fp32"].model, digits, config, CPU, progress=False).accuracy
    # bf16 keeps 8 mantissa bits: the attack finds the same points up to a few flips.
    assert abs(accuracy["bf16"]["pgd"] - accuracy["fp32"]["pgd"]) <= 5.0
    assert accuracy["bf16"]["clean"] == pytest.approx(accuracy["fp32"]["clean"], abs=1.0)
    assert tuned["bf16"].final_terms["loss"] == pytest.approx(tuned["fp32"].final_terms["loss"], rel=0.2)
