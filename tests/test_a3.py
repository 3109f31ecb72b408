"""A3 (attacks/a3.py, methods.md §17): breaks the natural digits model, spends at most its backward budget,
is reproducible, and the evaluator stores its counted passes with its budget."""
import math

import torch

from robustbench_aft.attacks.a3 import AdaptiveAutoAttack, cosine_step, margin
from robustbench_aft.config import EvalConfig
from robustbench_aft.data import collect
from robustbench_aft.evaluator import evaluate
from robustbench_aft.passes import PassCounter

CPU = torch.device("cpu")


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_a3_breaks_the_natural_digits_model_at_the_usual_budget(digits, digits_model):
    x, y = collect(digits.test, range(0, 360, 6))
    x_adv = AdaptiveAutoAttack(0.15)(digits_model, x, y, seed=0)
    assert _accuracy(digits_model, x, y) > 0.9
    assert _accuracy(digits_model, x_adv, y) <= 0.05
    again = AdaptiveAutoAttack(0.15)(digits_model, x, y, seed=0)
    torch.testing.assert_close(again, x_adv, rtol=0, atol=0)


def test_a3_spends_at_most_its_average_backward_budget_and_discards_hopeless_points(digits, digits_model):
    x, y = collect(digits.test, range(0, 360, 9))
    with PassCounter([digits_model]) as counter:
        AdaptiveAutoAttack(0.03, average_backward=20)(digits_model, x, y, seed=0)
    # The last restart may overrun the budget by at most one restart of the kept points (≤ 75 steps).
    assert 0 < counter.backward / len(y) <= 20 + 75
    assert counter.forward >= counter.backward


def test_margin_and_cosine_step():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    torch.testing.assert_close(margin(logits, torch.tensor([0, 0])), torch.tensor([-1.0, 3.0]))
    assert math.isclose(cosine_step(0, 20, 0.1), 0.1) and cosine_step(20, 20, 0.1) < 0.002
    assert cosine_step(10, 10, 0.1) >= 0.01  # short restarts decay to eps/10 only


def test_the_evaluator_stores_a3_in_its_own_column_with_counted_passes(digits, digits_model):
    config = EvalConfig(attacks=["clean", "pgd", "a3"], eps=0.15, n_eval=24, sanity=False)
    result = evaluate(digits_model, digits, config, CPU, progress=False)
    assert "a3" in result.accuracy and "aa" not in result.accuracy
    cost = result.budgets["a3"]["cost"]
    assert cost["backward_per_image"] > 0 and cost["forward_per_image"] >= cost["backward_per_image"]
    assert result.budgets["pgd"]["cost"]["backward_per_image"] == 20  # PGD-20: every point, every step
    assert result.accuracy["a3"] <= result.accuracy["pgd"] + 100 / 24
