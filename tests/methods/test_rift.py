"""RiFT invariants (methods.md §6.5): projection bound, interpolation end points, frozen modules."""
import pytest
import torch

from robustbench_aft.baselines.rift import choose_alpha, interpolate_states, project_relative
from robustbench_aft.config import TrainConfig
from robustbench_aft.data import collect
from robustbench_aft.engine import build_method


def test_projection_bounds_the_relative_norm():
    initial = torch.randn(8, 8)
    far = initial + 5 * torch.randn(8, 8)
    projected = project_relative(far, initial, 0.1)
    assert ((projected - initial).norm() / initial.norm()).item() == pytest.approx(0.1, abs=1e-6)
    near = initial + 1e-4 * torch.randn(8, 8)
    assert torch.equal(project_relative(near, initial, 0.1), near)


def test_interpolation_end_points_are_exact():
    start = {"w": torch.randn(3, 3), "n": torch.tensor(5)}
    end = {"w": torch.randn(3, 3), "n": torch.tensor(9)}
    assert torch.equal(interpolate_states(start, end, 0.0)["w"], start["w"])
    assert torch.equal(interpolate_states(start, end, 1.0)["w"], end["w"])
    torch.testing.assert_close(interpolate_states(start, end, 0.3)["w"], 0.3 * end["w"] + 0.7 * start["w"])
    assert interpolate_states(start, end, 0.3)["n"].item() == 5


def test_alpha_rule_keeps_robustness_within_tolerance():
    scores = [(0.0, 90.0, 60.0), (0.5, 95.0, 59.95), (1.0, 97.0, 50.0)]
    assert choose_alpha(scores, 0.1) == 0.5
    assert choose_alpha(scores, 20.0) == 1.0
    assert choose_alpha(scores, 0.0) == 0.0


def test_stage_two_trains_only_the_least_critical_module(digits_model, digits):
    method = build_method("rift", {"probe_size": 64, "mrc_epochs": 2}, eps=0.15, train=TrainConfig())
    method.prepare(digits_model)
    method.optimizers = method.configure_optimizers()
    method.on_fit_start(digits.train)
    method.on_epoch_start(1, 2)
    x, y = collect(digits.train, range(32))
    method.train()
    method.update((x, y, torch.arange(32)))  # epoch 1: the upstream vAFT stage
    method.on_epoch_start(2, 2)  # epoch 2: MRC, then RiFT's stage 2
    assert method.critical_module is not None
    before = {k: v.clone() for k, v in method.student.named_parameters()}
    method.update((x, y, torch.arange(32)))
    changed = {k for k, v in method.student.named_parameters() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(method.critical_module + ".") for k in changed)
    exported = method.export()
    assert method.chosen_alpha is not None and 0.0 <= method.chosen_alpha <= 1.0
    assert exported(x).shape == (32, 10)
