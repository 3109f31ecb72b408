"""BatchNorm folded for the attacks of an fp32 evaluation (folding.py): the copy computes the model's
logits, models it cannot stand for are attacked as given, and every outcome is judged by the model."""
import torch
from torch import nn

from robustbench_aft import evaluator
from robustbench_aft.evaluator import EvalConfig, evaluate
from robustbench_aft.folding import folded_for_attacks

CPU = torch.device("cpu")
DIGITS_SHAPE = (1, 8, 8)


def _batch_norms(module):
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def test_the_folded_copy_has_no_batchnorm_and_the_models_logits(digits_model, digits):
    before = {key: value.clone() for key, value in digits_model.state_dict().items()}
    folded = folded_for_attacks(digits_model, DIGITS_SHAPE, CPU)
    assert folded is not digits_model
    assert _batch_norms(digits_model) == 5 and _batch_norms(folded) == 0
    x = torch.stack([digits.test[i][0] for i in range(64)])
    with torch.no_grad():
        reference, candidate = digits_model(x), folded(x)
    assert (candidate - reference).abs().max() <= 1e-4 * max(1.0, float(reference.abs().max()))
    assert torch.equal(candidate.argmax(1), reference.argmax(1))
    assert all(torch.equal(before[key], value) for key, value in digits_model.state_dict().items())


class _Branches(nn.Module):
    """A conv-BN model whose forward branches on a tensor's value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(256, 10))

    def forward(self, x):
        return self.body(x) if float(x.sum()) > 0 else -self.body(x)


class _Random(nn.Module):
    """A conv-BN model with noise on its logits in eval mode (a randomised defence)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(256, 10))

    def forward(self, x):
        logits = self.body(x)
        return logits + torch.randn_like(logits)


def test_models_the_copy_cannot_stand_for_are_attacked_as_given():
    without_batchnorm = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    training = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 10)).train()
    for model in (without_batchnorm, training, _Branches().eval(), _Random().eval()):
        assert folded_for_attacks(model, DIGITS_SHAPE, CPU) is model


class _Constant(nn.Module):
    """Logits that ignore the image: no gradient to follow, the same class for every image."""

    def forward(self, x):
        return torch.zeros(len(x), 10, device=x.device) + torch.arange(10.0, device=x.device) + 0.0 * x.sum()


def test_outcomes_are_judged_by_the_model_not_by_the_copy_the_attack_ran_on(digits_model, digits, monkeypatch):
    """A copy that predicts class 9 everywhere and has no gradient: PGD on it only takes its random start,
    so judged by the model nearly every clean-correct point stays correct; judged by the copy, only the
    nines would."""
    config = EvalConfig(attacks=["clean", "pgd"], eps=0.15, n_eval=60, sanity=False)
    honest = evaluate(digits_model, digits, config, CPU, progress=False)
    monkeypatch.setattr(evaluator, "folded_for_attacks", lambda model, shape, device: _Constant())
    judged = evaluate(digits_model, digits, config, CPU, progress=False)
    assert judged.accuracy["pgd"] >= judged.accuracy["clean"] - 15.0
    assert judged.accuracy["pgd"] > honest.accuracy["pgd"] + 30.0  # the copy did not attack the model
    nines = sum(int(digits.test[i][1]) == 9 for i in judged.indices)
    assert judged.accuracy["pgd"] > 100.0 * nines / len(judged.indices) + 30.0


def test_folding_keeps_the_counted_passes_and_the_outcomes(digits_model, digits, monkeypatch):
    config = EvalConfig(attacks=["clean", "pgd", "cw"], eps=0.15, n_eval=60, sanity=False)
    folded = evaluate(digits_model, digits, config, CPU, progress=False)
    monkeypatch.setattr(evaluator, "folded_for_attacks", lambda model, shape, device: model)
    as_given = evaluate(digits_model, digits, config, CPU, progress=False)
    for attack in ("pgd", "cw"):
        cost, cost_as_given = folded.budgets[attack]["cost"], as_given.budgets[attack]["cost"]
        assert cost["forward_per_image"] > 10
        assert cost["forward_per_image"] == cost_as_given["forward_per_image"]
        assert cost["backward_per_image"] == cost_as_given["backward_per_image"]
        agreement = (folded.correct[attack] == as_given.correct[attack]).float().mean()
        assert agreement >= 0.9
