"""TRADES: the hand-made oracle of methods.md §3.5 and its invariants."""
import pytest
import torch
from torch.nn import functional as F

from robustbench_aft.baselines.trades import trades_kl
from robustbench_aft.config import TrainConfig
from robustbench_aft.data import collect
from robustbench_aft.engine import build_method
from robustbench_aft.method import pgd_attack

NATURAL = torch.tensor([[2.0, 0.5, -1.0], [0.2, 1.5, 0.3]], dtype=torch.float64)
ADVERSARIAL = torch.tensor([[0.5, 1.0, -0.5], [0.1, 1.2, 0.9]], dtype=torch.float64)
LABELS = torch.tensor([0, 1])


def test_hand_computed_loss():
    ce = F.cross_entropy(NATURAL, LABELS)
    kl = trades_kl(NATURAL, ADVERSARIAL)
    assert ce.item() == pytest.approx(0.3473787, abs=1e-7)
    assert kl.item() == pytest.approx((0.4340134 + 0.0689977) / 2, abs=1e-7)
    assert (ce + 6 * kl).item() == pytest.approx(1.8564119, abs=1e-6)


def test_kl_is_zero_when_the_adversarial_input_is_the_natural_one():
    assert trades_kl(NATURAL, NATURAL).item() == pytest.approx(0.0, abs=1e-12)


def test_kl_gradient_flows_through_both_distributions():
    natural, adversarial = NATURAL.clone().requires_grad_(), ADVERSARIAL.clone().requires_grad_()
    trades_kl(natural, adversarial).backward()
    assert natural.grad.abs().sum() > 0 and adversarial.grad.abs().sum() > 0


def test_beta_zero_is_clean_cross_entropy(digits_model, digits):
    x, y = collect(digits.test, range(32))
    method = build_method("trades", {"beta": 0.0}, eps=0.15, train=TrainConfig())
    method.prepare(digits_model)
    method.train()
    terms = method.training_step((x, y, torch.arange(32)))
    expected = F.cross_entropy(method.student(x), y)
    torch.testing.assert_close(terms["loss"], expected)


def test_attack_starts_from_gaussian_noise_of_scale_0_001():
    torch.manual_seed(0)
    x = torch.full((4, 1, 16, 16), 0.5)
    start = pgd_attack(torch.nn.Identity(), torch.nn.Identity(), x, torch.zeros(4, dtype=torch.long),
                       loss_fn=lambda logits, labels: logits.sum(), eps=0.1, step_size=0.01, steps=0,
                       start="gaussian", bn_mode="eval")
    assert (start - x).std().item() == pytest.approx(0.001, rel=0.1)
    assert (start - x).abs().max().item() < 0.006
