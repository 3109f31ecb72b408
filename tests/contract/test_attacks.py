"""Every registered attack: stays in the eps-ball and [0, 1], never beats clean, is a no-op at eps 0."""
import copy

import pytest
import torch

from robustbench_aft.data import collect
from robustbench_aft.registry import ATTACKS

EPS = 0.1
# The expensive attacks (AutoAttack standard, rand and plus: Square's 5,000 queries, EOT, restarts)
# run in the slow tier; aa-fast checks the same properties of the same code path in the fast one.
# Corruptions are not an eps-ball attack: their own properties are tested in test_transfer_corruptions.py.
BALL_ATTACKS = [name for name in ATTACKS.names() if ATTACKS.get(name).kind != "corruption"]
ATTACK_NAMES = [pytest.param(name, marks=pytest.mark.slow) if ATTACKS.get(name).expensive else name
                for name in BALL_ATTACKS]


def _attack(name, model, eps, norm="Linf"):
    """The registered attack; one that crafts on a source model (transfer) gets a copy of ``model``
    with its weights shifted, so the source is another model than the target."""
    attack_class = ATTACKS.get(name)
    if not attack_class.needs_source:
        return attack_class(eps, norm)
    source = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter, generator=torch.Generator().manual_seed(0)))
    return attack_class(eps, norm, source=source)


@pytest.fixture(scope="module")
def batch(digits):
    return collect(digits.test, range(0, 360, 6))  # 60 test images, every class


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("name", ATTACK_NAMES)
@pytest.mark.parametrize("norm,eps", [("Linf", EPS), ("L2", 1.0)])
def test_adversarial_images_stay_in_the_ball_and_in_the_box(digits_model, batch, name, norm, eps):
    x, y = batch
    attack_class = ATTACKS.get(name)
    if attack_class.autoattack:  # the same properties on fewer points: AutoAttack costs the most
        points = 8 if attack_class.expensive else 16
        x, y = x[:points], y[:points]
    x_adv = _attack(name, digits_model, eps, norm)(digits_model, x, y, seed=1)
    assert x_adv.shape == x.shape
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "Linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert _accuracy(digits_model, x_adv, y) <= _accuracy(digits_model, x, y)


@pytest.mark.parametrize("name", BALL_ATTACKS)
def test_zero_budget_changes_nothing(digits_model, batch, name):
    x, y = batch
    x_adv = _attack(name, digits_model, 0.0)(digits_model, x, y, seed=1)
    torch.testing.assert_close(x_adv, x, rtol=0, atol=0)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_runs_in_eval_mode_and_restores_the_mode(digits_model, batch, name):
    x, y = batch
    seen_modes = []
    handle = digits_model.register_forward_pre_hook(lambda module, inputs: seen_modes.append(module.training))
    digits_model.train()
    try:
        # A budget that breaks every point at once, so AutoAttack's later attacks have nothing to run on.
        _attack(name, digits_model, 0.3)(digits_model, x[:8], y[:8], seed=1)
    finally:
        handle.remove()
        mode_after = digits_model.training
        digits_model.eval()
    assert mode_after is True
    assert not any(seen_modes)
    assert seen_modes or name in ("clean", "transfer")  # clean needs no forward pass, transfer only the source's
