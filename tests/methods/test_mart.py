"""MART: the hand-made oracle of methods.md §4.5 and its invariants."""
import pytest
import torch
from torch.nn import functional as F

from robustbench_aft.baselines.mart import best_wrong_class, boosted_cross_entropy, misclassification_aware_kl

NATURAL = torch.tensor([[2.0, 0.5, -1.0], [0.2, 1.5, 0.3]], dtype=torch.float64)
ADVERSARIAL = torch.tensor([[0.5, 1.0, -0.5], [0.1, 1.2, 0.9]], dtype=torch.float64)
LABELS = torch.tensor([0, 1])


def test_hand_computed_loss():
    assert best_wrong_class(ADVERSARIAL, LABELS).tolist() == [1, 2]
    assert F.cross_entropy(ADVERSARIAL, LABELS).item() == pytest.approx(0.9167299, abs=1e-7)
    bce = boosted_cross_entropy(ADVERSARIAL, LABELS)
    assert bce.item() == pytest.approx(1.5329734, abs=1e-7)
    assert (bce - F.cross_entropy(ADVERSARIAL, LABELS)).item() == pytest.approx(0.6162434, abs=1e-7)
    kl = misclassification_aware_kl(NATURAL, ADVERSARIAL, LABELS)
    assert kl.item() == pytest.approx(0.0591040, abs=1e-7)
    assert (bce + 6 * kl).item() == pytest.approx(1.8875973, abs=1e-6)
    assert (bce + 5 * kl).item() == pytest.approx(1.8284933, abs=1e-6)


def test_best_wrong_class_is_never_the_label():
    logits, labels = torch.randn(300, 10), torch.randint(0, 10, (300,))
    assert (best_wrong_class(logits, labels) != labels).all()


def test_weight_of_kl_carries_gradient_to_the_natural_logits():
    natural = NATURAL.clone().requires_grad_()
    misclassification_aware_kl(natural, ADVERSARIAL, LABELS).backward()
    assert natural.grad.abs().sum() > 0
