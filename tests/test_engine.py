"""The engine: checkpoints written atomically, EMA on or off, NaN stops with a clear message, seeding."""
import copy

import pytest
import torch

from robustbench_aft.config import TrainConfig
from robustbench_aft.engine import NumericalError, fine_tune

CPU = torch.device("cpu")
TINY = TrainConfig(epochs=1, batch_size=64, train_subset=128)


def test_fine_tune_writes_last_checkpoint_and_is_reproducible(digits_model, digits, tmp_path):
    first = fine_tune("vaft", digits_model, digits, TINY, eps=0.15, seed=3, device=CPU, out_dir=tmp_path,
                      progress=False)
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


def test_channels_last_auto_is_on_for_cuda_and_onednn_cpus_and_explicit_settings_win(monkeypatch):
    from robustbench_aft.devices import use_channels_last
    from robustbench_aft.errors import ConfigError

    assert use_channels_last("auto", torch.device("cuda")) and not use_channels_last("off", torch.device("cuda"))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    assert use_channels_last("auto", CPU) and not use_channels_last("off", CPU)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not use_channels_last("auto", CPU) and use_channels_last("on", CPU)
    assert not use_channels_last("auto", torch.device("mps"))
    with pytest.raises(ConfigError, match="auto, on or off"):
        use_channels_last("yes", CPU)


def test_channels_last_changes_the_memory_layout_not_the_maths(digits_model, digits):
    """channels_last on (auto on CUDA and oneDNN CPUs) and off on CPU: the same training within float noise."""
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
    from robustbench_aft.evaluator import EvalConfig, evaluate

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


def _compiled_modules(model: torch.nn.Module) -> list:
    return [name for name, module in model.named_modules() if getattr(module, "_compiled_call_impl", None) is not None]


@pytest.mark.slow
def test_compile_runs_the_same_training_through_inductor_and_exports_an_eager_model():
    """`--compile` on CPU, on CIFAR-shaped inputs (where AOTAutograd donates saved buffers): vAFT
    then AFD in one process, as `bench run --methods vaft,afd --compile` does, so AFD's three
    gradients reuse graphs compiled for vAFT; AFD (branches, frozen teacher under inference mode,
    three optimisers) reaches the eager run's weights within float noise."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from robustbench_aft.data import DataBundle, TensorImageDataset
    from robustbench_aft.models import build_model

    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(64, 3, 32, 32, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    dataset = TensorImageDataset(images, labels)
    data = DataBundle(name="synthetic", key="synthetic", train=dataset, test=dataset, num_classes=10,
                      input_shape=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, default_eps=8 / 255,
                      class_names=[str(i) for i in range(10)])
    torch.manual_seed(0)
    natural = build_model("tinycnn", 10, 3, data.mean, data.std).eval()
    train = {"eager": TrainConfig(epochs=1, batch_size=32, feature_gap_probe=0),
             "compiled": TrainConfig(epochs=1, batch_size=32, feature_gap_probe=0, compile=True)}
    torch._dynamo.reset()  # graphs of the same architecture compiled earlier in this process would be reused
    graphs_before = counters["stats"]["unique_graphs"]
    fine_tune("vaft", natural, data, train["compiled"], eps=8 / 255, seed=0, device=CPU, progress=False)
    assert counters["stats"]["unique_graphs"] > graphs_before  # dynamo captured graphs, not an eager fallback
    tuned = {name: fine_tune("afd", natural, data, config, eps=8 / 255, seed=0, device=CPU, progress=False)
             for name, config in train.items()}
    assert _compiled_modules(tuned["compiled"].model) == []
    for key, value in tuned["eager"].final_terms.items():
        assert tuned["compiled"].final_terms[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
    for (name, compiled), eager in zip(tuned["compiled"].model.state_dict().items(),
                                       tuned["eager"].model.state_dict().values()):
        torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-4, msg=name)


def test_compile_leaves_a_method_that_differentiates_twice_eager(digits_model, digits, caplog):
    from torch._dynamo.utils import counters

    graphs_before = counters["stats"]["unique_graphs"]
    with caplog.at_level("WARNING", logger="robustbench_aft.engine"):
        tuned = fine_tune("fgsm-ga", digits_model, digits, TrainConfig(epochs=1, batch_size=64, train_subset=128,
                                                                        compile=True),
                          eps=0.15, seed=0, device=CPU, progress=False)
    assert "fgsm-ga: --compile ignored" in caplog.text and "double backward" in caplog.text
    assert counters["stats"]["unique_graphs"] == graphs_before
    assert tuned.final_terms["loss"] > 0
