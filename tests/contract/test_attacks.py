"""Every registered attack: stays in the eps-ball and [0, 1], never beats clean, is a no-op at eps 0."""
import copy

import pytest
import torch

from robustbench_aft.data import collect
from robustbench_aft.registry import ATTACKS

EPS = 0.1
# The attacks whose contract tests run in the slow tier, because they take minutes rather than seconds
# on a few dozen digits points: AutoAttack standard, rand and plus (Square's 5,000 queries, EOT over 20
# draws, restarts). aa-fast checks the same properties of the same code path in the fast tier.
SLOW_ATTACKS = {"aa", "aa-rand", "aa-plus"}
# Corruptions are not an eps-ball attack: their own properties are tested in test_transfer_corruptions.py.
BALL_ATTACKS = [name for name in ATTACKS.names() if ATTACKS.get(name).eps_ball]
ATTACK_NAMES = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_ATTACKS else name
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
        points = 8 if name in SLOW_ATTACKS else 16
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


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_needs_no_weight_gradient_and_restores_requires_grad(digits_model, batch, name):
    """Attacks see the model with frozen parameters (only the input gradient is wanted; pyautoattack's FAB
    calls backward(), which would compute and accumulate every weight gradient), and get them back."""
    x, y = batch
    digits_model = copy.deepcopy(digits_model)
    digits_model.zero_grad(set_to_none=True)
    trainable_during = []
    handle = digits_model.register_forward_pre_hook(
        lambda module, inputs: trainable_during.append(any(p.requires_grad for p in module.parameters())))
    before = {key: parameter.requires_grad for key, parameter in digits_model.named_parameters()}
    try:
        _attack(name, digits_model, EPS)(digits_model, x[:8], y[:8], seed=1)
    finally:
        handle.remove()
    assert not any(trainable_during)
    assert {key: parameter.requires_grad for key, parameter in digits_model.named_parameters()} == before
    assert all(parameter.grad is None for parameter in digits_model.parameters())


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_outcomes_are_one_bit_per_point_and_a_point_wrong_clean_stays_broken(digits_model, batch, name):
    """``Attack.outcomes``, what the evaluator stores: one boolean per point, never right where the
    model is wrong clean, equal to classifying the attack's own images, and nothing attacked (the
    clean mask back) when no point is right clean."""
    x, y = batch
    x, y = x[:16], y[:16]
    attack = _attack(name, digits_model, EPS)
    with torch.no_grad():
        clean_correct = digits_model(x).argmax(1) == y
    clean_correct[:4] = False  # as if misclassified clean: they must count as broken
    outcomes = attack.outcomes(digits_model, x, y, seed=1, positions=list(range(16)), clean_correct=clean_correct)
    assert outcomes.dtype == torch.bool and outcomes.shape == (16,)
    assert not (outcomes & ~clean_correct).any()
    if attack.attacks_subsets:
        x_adv = attack(digits_model, x, y, seed=1, active=clean_correct)
        with torch.no_grad():
            expected = digits_model(x_adv).argmax(1) == y
        assert torch.equal(outcomes, expected & clean_correct)
    none_right = torch.zeros(16, dtype=torch.bool)
    assert torch.equal(attack.outcomes(digits_model, x, y, seed=1, positions=list(range(16)),
                                       clean_correct=none_right), none_right)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_kind_label_agrees_with_the_behaviour_the_evaluator_reads(name):
    """``kind`` is only a label; the evaluator reads ``eps_ball``, ``white_box`` and the threat budget.
    They must tell the same story, so tables that group by kind and the evaluator agree."""
    attack_class = ATTACKS.get(name)
    assert attack_class.kind in ("white-box", "transfer", "corruption", "none")
    assert attack_class.white_box == (attack_class.kind == "white-box")
    assert attack_class.eps_ball == (attack_class.kind != "corruption")

