"""ARREST invariants (methods.md §7.2)."""

import pytest
import torch

from robustbench_aft.baselines.arrest import noisy_replay_threshold, representation_distance
from robustbench_aft.config import TrainConfig
from robustbench_aft.data import collect
from robustbench_aft.engine import build_method


def test_threshold_and_distance():
    assert noisy_replay_threshold(30.0) == pytest.approx(0.1339746, abs=1e-7)
    features = torch.randn(5, 7)
    assert representation_distance(features, features).item() == pytest.approx(0.0, abs=1e-6)


def test_nr_and_rgkd_off_is_exactly_vaft(digits_model, digits):
    x, y = collect(digits.train, range(32))
    batch = (x, y, torch.arange(32))
    arrest = build_method("arrest", {"nr": False, "rgkd": False}, eps=0.15, train=TrainConfig())
    vaft = build_method("vaft", None, eps=0.15, train=TrainConfig())
    for method in (arrest, vaft):
        method.prepare(digits_model)
        method.optimizers = method.configure_optimizers()
        method.train()
        torch.manual_seed(7)
        method.update(batch)
    for (name, a), b in zip(arrest.student.state_dict().items(), vaft.student.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_no_noisy_replay_at_init_and_never_after_epoch_10(digits_model, digits):
    x, y = collect(digits.train, range(32))
    method = build_method("arrest", {"angle": 1.0}, eps=0.15, train=TrainConfig())
    method.prepare(digits_model)
    method.train()
    method.on_epoch_start(1, 20)
    assert method.training_step((x, y, torch.arange(32)))["noisy_replay"].item() == 0.0  # d = 0 at init
    with torch.no_grad():
        method.student.head.weight.mul_(-1)
        for module in method.student.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.mul_(-1)
    assert method.training_step((x, y, torch.arange(32)))["noisy_replay"].item() == 1.0
    method.on_epoch_start(11, 20)
    assert method.training_step((x, y, torch.arange(32)))["noisy_replay"].item() == 0.0
