"""TWINS invariants (methods.md §5.7)."""
import pytest
import torch

from robustbench_aft.baselines.twins import TwoWingBatchNorm, twins_at_loss
from robustbench_aft.config import TrainConfig
from robustbench_aft.data import collect
from robustbench_aft.engine import build_method


@pytest.fixture
def batch(digits):
    x, y = collect(digits.train, range(40))
    return x, y, torch.arange(40)


def _twins(name, digits_model, **params):
    method = build_method(name, params or None, eps=0.15, train=TrainConfig())
    method.prepare(digits_model)
    method.optimizers = method.configure_optimizers()
    return method


def test_both_wings_start_as_the_pretrained_model(digits_model, batch):
    method = _twins("twins-at", digits_model)
    x = batch[0]
    with torch.no_grad():
        expected = digits_model.eval()(x)
        method.student.eval()
        torch.testing.assert_close(method.student(x), expected)
        method.student.train()
        # Train mode: first half frozen wing (pre-trained running statistics) = the eval logits.
        torch.testing.assert_close(method.student(x)[:20], expected[:20])
    assert sum(isinstance(m, TwoWingBatchNorm) for m in method.student.modules()) == 5


def test_frozen_statistics_never_move_but_frozen_affine_does(digits_model, batch):
    method = _twins("twins-at", digits_model)
    wings = [m for m in method.student.modules() if isinstance(m, TwoWingBatchNorm)]
    stats = [(w.frozen_mean.clone(), w.frozen_var.clone(), w.frozen_weight.detach().clone()) for w in wings]
    method.train()
    for _ in range(3):
        method.update(batch)
    for wing, (mean, var, weight) in zip(wings, stats):
        assert torch.equal(wing.frozen_mean, mean) and torch.equal(wing.frozen_var, var)
    assert any(not torch.equal(w.frozen_weight, s[2]) for w, s in zip(wings, stats))


def test_lambda_zero_leaves_the_frozen_wing_without_gradient(digits_model, batch):
    method = _twins("twins-at", digits_model, lambda_twins=0.0)
    method.train()
    terms = method.training_step(batch)
    terms["loss"].backward()
    wings = [m for m in method.student.modules() if isinstance(m, TwoWingBatchNorm)]
    assert all(w.frozen_weight.grad is None or (w.frozen_weight.grad == 0).all() for w in wings)
    assert any(w.adaptive.weight.grad.abs().sum() > 0 for w in wings)


def test_export_is_the_adaptive_net(digits_model, batch):
    method = _twins("twins-trades", digits_model)
    method.train()
    method.update(batch)
    exported = method.export().eval()
    assert not any(isinstance(m, TwoWingBatchNorm) for m in exported.modules())
    method.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(batch[0]), method.student(batch[0]))


def test_equal_wings_reduce_to_the_base_loss():
    logits, labels = torch.randn(6, 4), torch.randint(0, 4, (6,))
    both = twins_at_loss(logits[:3], labels[:3], logits[3:], labels[3:], 1.0)
    expected = (torch.nn.functional.cross_entropy(logits[:3], labels[:3])
                + torch.nn.functional.cross_entropy(logits[3:], labels[3:]))
    torch.testing.assert_close(both, expected)
    torch.testing.assert_close(twins_at_loss(logits[:3], labels[:3], logits[:3], labels[:3], 1.0),
                               2 * torch.nn.functional.cross_entropy(logits[:3], labels[:3]))
