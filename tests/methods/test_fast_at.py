"""Free-AT, FGSM-GA and ATAS invariants (methods.md §9.4, §10.4, §11.4)."""
import copy

import pytest
import torch
from torch.nn import functional as F

from robustbench_aft.baselines.atas import adaptive_step_size
from robustbench_aft.baselines.fgsm_ga import gradient_alignment
from robustbench_aft.config import TrainConfig
from robustbench_aft.data import collect
from robustbench_aft.engine import build_method

EPS = 8 / 255


def _prepared(name, model, params=None, eps=0.15, lr=0.025):
    method = build_method(name, params, eps=eps, train=TrainConfig(lr=lr))
    method.prepare(model)
    method.optimizers = method.configure_optimizers()
    return method


@pytest.fixture
def batch(digits):
    x, y = collect(digits.train, range(32))
    return x, y, torch.arange(32)


def test_free_at_replays_m_times_and_keeps_delta_in_the_box(digits_model, batch):
    method = _prepared("free-at", digits_model, {"replays": 3})
    steps = []
    method.optimizers[0].step = (lambda original: (lambda *a, **k: (steps.append(1), original(*a, **k))[1]))(
        method.optimizers[0].step)
    method.train()
    method.update(batch)
    assert len(steps) == 3
    assert method.delta.abs().max().item() <= 0.15 + 1e-7 and method.delta.abs().max().item() > 0
    kept = method.delta.clone()
    method.update(batch)
    assert not torch.equal(method.delta, kept)  # δ persists and keeps moving across minibatches


def test_free_at_with_one_replay_and_zero_eps_is_natural_training(digits_model, batch):
    method = _prepared("free-at", digits_model, {"replays": 1}, eps=0.0)
    reference = copy.deepcopy(digits_model).train()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
    F.cross_entropy(reference(batch[0]), batch[1]).backward()
    optimizer.step()
    method.train()
    method.update(batch)
    for (name, ours), theirs in zip(method.student.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(ours, theirs, msg=name)


def test_grad_align_bounds_and_lambda_zero(digits_model, batch):
    a, b = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    value = gradient_alignment(a, b).item()
    assert 0.0 <= value <= 2.0
    assert gradient_alignment(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert gradient_alignment(a, -a).item() == pytest.approx(2.0, abs=1e-6)
    method = _prepared("fgsm-ga", digits_model, {"grad_align_lambda": 0.0})
    method.train()
    terms = method.training_step(batch)
    torch.testing.assert_close(terms["loss"], terms["ce_adversarial"])


def test_fgsm_step_is_eps_sign_of_the_gradient(digits_model, batch):
    x, y, _ = batch
    model = copy.deepcopy(digits_model).train()
    x_start = x.clone().requires_grad_(True)
    gradient, = torch.autograd.grad(F.cross_entropy(model(x_start), y), x_start)
    delta = (1.25 * 0.15 * gradient.sign()).clamp(-0.15, 0.15)
    assert torch.equal(delta.abs()[gradient != 0], torch.full_like(delta[gradient != 0], 0.15))


def test_atas_step_sizes_stay_in_bounds():
    low, high = 4 / 255, 14 / 255
    assert adaptive_step_size(torch.zeros(1), 0.01, 2 * EPS, low, high).item() == pytest.approx(high)
    assert adaptive_step_size(torch.tensor([0.03 ** 2]), 0.01, 2 * EPS, low, high).item() == pytest.approx(low)
    values = adaptive_step_size(torch.rand(100), 0.01, 2 * EPS, low, high)
    assert (values >= low - 1e-9).all() and (values <= high + 1e-9).all()


def test_atas_keeps_per_example_perturbations_in_the_ball(digits_model, digits, batch):
    method = _prepared("atas", digits_model)
    method.on_fit_start(digits.train)
    method.train()
    for epoch in (1, 12):
        method.on_epoch_start(epoch, 20)
        terms = method.update(batch)
        stored = method.perturbations[batch[2]]
        assert stored.abs().max().item() <= 0.15 + 1e-6
        assert method.perturbations.shape[0] == len(digits.train)
    assert terms["step_mean"].item() <= 1.75 * 0.15 + 1e-6
    assert (method.gradient_norm_ema[batch[2]] > 0).all()  # updated after the warm-up
