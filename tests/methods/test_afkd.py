"""AFKD (reconstructed): the distillation term and its labelling."""
import pytest
import torch

from robustbench_aft.baselines.afkd import distillation_kl
from robustbench_aft.registry import METHODS


def test_distillation_is_zero_for_equal_logits_and_scales_with_tau_squared():
    logits = torch.randn(4, 5)
    assert distillation_kl(logits, logits, 1.0).item() == pytest.approx(0.0, abs=1e-7)
    teacher = torch.tensor([[2.0, 0.0]])
    student = torch.tensor([[0.0, 0.0]])
    p = torch.softmax(teacher, 1)
    expected = (p * (p.log() - torch.log(torch.tensor([0.5, 0.5])))).sum()
    assert distillation_kl(teacher, student, 1.0).item() == pytest.approx(expected.item(), abs=1e-6)


def test_marked_as_a_reconstruction():
    cls = METHODS.get("afkd")
    assert cls.reconstructed is True
    assert "reconstructed" in METHODS.entry("afkd").description.lower()
    assert not getattr(METHODS.get("afd"), "reconstructed", False)
