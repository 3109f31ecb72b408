"""The uniform evaluator: agreement with torchattacks, AA vs PGD, masking detection, subsets."""
import pytest
import torch
from torch import nn

from robustbench_aft.attacks import cw_margin_loss
from robustbench_aft.data import collect
from robustbench_aft.errors import ConfigError, UnknownNameError
from robustbench_aft.evaluator import EvalConfig, evaluate, select_subset
from robustbench_aft.parsing import parse_attacks, parse_eps

CPU = torch.device("cpu")


def test_cw_margin_loss_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 2])
    # row 0: best other 1.0 - true 2.0 = -1; row 1: best other 3.0 - true 1.0 = 2
    assert cw_margin_loss(logits, labels).item() == pytest.approx(1.0)


def test_pgd_agrees_with_torchattacks(digits_model, digits):
    torchattacks = pytest.importorskip("torchattacks")
    eps = 0.05
    result = evaluate(digits_model, digits, EvalConfig(attacks=["pgd"], eps=eps, sanity=False), CPU, progress=False)
    x, y = collect(digits.test, range(len(digits.test)))
    reference = torchattacks.PGD(digits_model, eps=eps, alpha=eps / 4, steps=20, random_start=True)
    torch.manual_seed(0)
    x_adv = reference(x, y)
    with torch.no_grad():
        reference_accuracy = 100.0 * (digits_model(x_adv).argmax(1) == y).float().mean().item()
    ours = result.accuracy["pgd"]
    print(f"PGD-20 at eps {eps}: ours {ours:.2f}%, torchattacks {reference_accuracy:.2f}%")
    assert 5.0 < ours < result.accuracy["clean"]  # a non-trivial operating point
    assert abs(ours - reference_accuracy) <= 1.0


@pytest.mark.slow
def test_autoattack_is_at_least_as_strong_as_pgd(digits_model, digits):
    result = evaluate(digits_model, digits, EvalConfig(attacks=["clean", "pgd", "aa"], eps=0.05, n_eval=80),
                      CPU, progress=False)
    acc = result.accuracy
    print(acc)
    assert acc["pgd"] > 5.0
    assert acc["aa"] <= acc["pgd"] + 1.0
    assert acc["worst"] <= min(acc["pgd"], acc["aa"])
    assert not [f for f in result.flags if "far above" in f]


class QuantizedInput(nn.Module):
    """Rounds the input to 1/8 steps before the classifier: piecewise constant, zero gradients."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(torch.round(x * 8) / 8)


@pytest.mark.slow
def test_masked_gradients_are_caught_by_square_worst_and_flags(digits_model, digits):
    masked = QuantizedInput(digits_model).eval()
    result = evaluate(masked, digits, EvalConfig(attacks=["clean", "pgd", "aa"], eps=0.2, n_eval=100),
                      CPU, progress=False)
    acc = result.accuracy
    print(acc, result.flags)
    assert acc["clean"] >= 85.0
    assert acc["pgd"] >= 60.0  # gradient steps go nowhere
    assert acc["aa"] <= acc["pgd"] - 30.0  # Square, a black-box attack, is not fooled
    assert acc["worst"] <= acc["aa"]
    text = " ".join(result.flags)
    assert "far above aa" in text
    assert "unbounded PGD" in text
    assert "AutoAttack:" in text


def test_natural_model_has_no_flags_and_accuracy_falls_with_eps(digits_model, digits):
    accuracies = []
    for eps in (0.0, 0.03, 0.1):
        result = evaluate(digits_model, digits, EvalConfig(attacks=["pgd", "cw"], eps=eps, n_eval=120), CPU,
                          progress=False)
        assert not result.flags, result.flags
        accuracies.append(result.accuracy["pgd"])
        if eps == 0.0:
            assert result.accuracy["pgd"] == result.accuracy["cw"] == result.accuracy["clean"]
            assert torch.equal(result.correct["pgd"], result.correct["clean"])
    assert accuracies[0] > accuracies[1] > accuracies[2]


def test_subset_is_seeded_sorted_and_clean_is_always_evaluated(digits_model, digits):
    assert select_subset(10, None, 0) == list(range(10))
    first, again, other = select_subset(360, 50, 3), select_subset(360, 50, 3), select_subset(360, 50, 4)
    assert first == again and first == sorted(first) and len(set(first)) == 50 and first != other
    digits_model.train()
    result = evaluate(digits_model, digits, EvalConfig(attacks=["cw"], eps=0.05, n_eval=50, seed=3), CPU,
                      progress=False)
    assert digits_model.training  # mode restored
    digits_model.eval()
    assert result.indices == first
    assert list(result.accuracy) == ["clean", "cw", "worst"]
    assert torch.equal(result.correct["worst"], result.correct["clean"] & result.correct["cw"])
    assert [row["attack"] for row in result.rows()] == ["clean", "cw", "worst"]


def test_parsers_reject_bad_values():
    assert parse_eps("8/255") == pytest.approx(8 / 255)
    assert parse_eps("0.2") == 0.2
    for bad in ("-0.1", "abc", "1/0", "inf", "nan"):
        with pytest.raises(ConfigError):
            parse_eps(bad)
    assert parse_attacks("clean, PGD ,aa") == ["clean", "pgd", "aa"]
    with pytest.raises(UnknownNameError, match="Did you mean 'pgd'"):
        parse_attacks("clean,pgdd")


def _with_wrong_labels(digits, every: int = 3):
    """The digits test split with every ``every``-th label shifted, so a third of it is misclassified clean."""
    import dataclasses

    from robustbench_aft.data import TensorImageDataset

    x, y = collect(digits.test, range(len(digits.test)))
    y = y.clone()
    y[::every] = (y[::every] + 1) % digits.num_classes
    return dataclasses.replace(digits, test=TensorImageDataset(x, y))


def _naive_protocol(model, data, config):
    """Every attack on every point of every batch, then AutoAttack's convention (wrong clean → broken)."""
    from robustbench_aft.registry import ATTACKS

    indices = select_subset(len(data.test), config.n_eval, config.seed)
    correct = {name: [] for name in config.attacks}
    for batch_number, start in enumerate(range(0, len(indices), config.batch_size)):
        x, y = collect(data.test, indices[start:start + config.batch_size])
        for name in config.attacks:
            attack = ATTACKS.get(name)(config.eps, config.norm, config.batch_size)
            x_adv = attack(model, x, y, seed=config.seed * 100003 + batch_number)
            with torch.no_grad():
                correct[name].append(model(x_adv).argmax(1) == y)
    per_sample = {name: torch.cat(values) for name, values in correct.items()}
    return {name: values & per_sample["clean"] for name, values in per_sample.items()}


@pytest.mark.slow
def test_attacks_skip_misclassified_points_with_the_same_per_sample_outcomes(digits_model, digits):
    data = _with_wrong_labels(digits)
    config = EvalConfig(attacks=["clean", "pgd", "cw", "aa-fast"], eps=0.05, n_eval=100, batch_size=40,
                        sanity=False, seed=3)
    fast = evaluate(digits_model, data, config, CPU, progress=False)
    naive = _naive_protocol(digits_model, data, config)
    assert 55.0 < fast.accuracy["clean"] < 75.0  # a third of the labels are wrong
    assert 10.0 < fast.accuracy["pgd"] < fast.accuracy["clean"]
    for name in config.attacks:
        assert torch.equal(fast.correct[name], naive[name]), name
    assert torch.equal(fast.correct["worst"], torch.stack([naive[n] for n in config.attacks]).all(0))


def test_pgd_on_a_subset_spends_steps_only_there_and_matches_the_full_batch(digits_model, digits):
    from robustbench_aft.attacks import PGD

    x, y = collect(digits.test, range(40))
    active = torch.arange(40) % 2 == 0
    calls = []
    hook = digits_model.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
    try:
        subset = PGD(0.1)(digits_model, x, y, seed=5, active=active)
    finally:
        hook.remove()
    full = PGD(0.1)(digits_model, x, y, seed=5)
    assert calls == [20] * 20  # 20 steps on the 20 active points only
    torch.testing.assert_close(subset[active], full[active], rtol=0, atol=1e-6)
    start_noise = (subset[~active] - x[~active]).abs()
    assert 0 < start_noise.max() <= 0.1 + 1e-6  # inactive points stay at their random start


class _DropoutAtTestTime(nn.Module):
    """A randomised model: dropout on the features even in eval mode (a common randomised defence).
    Built in eval mode: evaluate() restores the wrapper's mode, which would otherwise leave the shared
    digits model in train mode for the tests after it."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        features = nn.functional.dropout(self.classifier.forward_features(x), p=0.5, training=True)
        return self.classifier.head(features)


def test_random_outputs_are_flagged_when_a_deterministic_autoattack_ran(digits_model, digits):
    # eps 0: AutoAttack returns at once, and the check of the outputs runs all the same.
    config = EvalConfig(attacks=["clean", "aa-fast"], n_eval=16, eps=0.0, sanity=True)
    torch.manual_seed(0)
    random_result = evaluate(_DropoutAtTestTime(digits_model).eval(), digits, config, torch.device("cpu"),
                             progress=False)
    assert any("outputs are random" in flag and "aa-rand" in flag for flag in random_result.flags)
    deterministic = evaluate(digits_model, digits, config, torch.device("cpu"), progress=False)
    assert not any("outputs are random" in flag for flag in deterministic.flags)


@pytest.mark.slow
def test_aa_rand_runs_on_a_randomised_model_without_the_flag(digits_model, digits):
    torch.manual_seed(0)
    result = evaluate(_DropoutAtTestTime(digits_model).eval(), digits,
                      EvalConfig(attacks=["clean", "aa-rand"], n_eval=8, eps=0.1), torch.device("cpu"), progress=False)
    assert not any("outputs are random" in flag for flag in result.flags)
    assert result.accuracy["aa-rand"] <= result.accuracy["clean"] + 1e-9


def test_fp32_is_the_evaluation_default_on_a_cuda_device(digits):
    """Every evaluation attack runs in fp32 unless bf16 is asked for, whatever the device: resolved on a
    CUDA-typed device without needing one (the budget stored with each metric says so)."""
    from robustbench_aft.config import build_run_config
    from robustbench_aft.evaluator import plan_evaluation

    cuda = torch.device("cuda")
    config = build_run_config(["vaft"], train_overrides={"precision": "auto"}).eval
    assert config.precision == "fp32" and config.aa_precision == "fp32"
    plan = plan_evaluation(digits, EvalConfig(attacks=["clean", "pgd", "cw", "aa"], eps=0.15, n_eval=8))
    assert {name: plan.budget(attack, cuda)["precision"] for name, attack in plan.attacks.items()} == {
        "clean": "fp32", "pgd": "fp32", "cw": "fp32", "aa": "fp32"}
    legacy = plan_evaluation(digits, EvalConfig(attacks=["pgd"], eps=0.15, n_eval=8, precision="auto"))
    assert legacy.budget(legacy.attacks["pgd"], cuda)["precision"] == "fp32"  # configs written before
    asked = plan_evaluation(digits, EvalConfig(attacks=["pgd"], eps=0.15, n_eval=8, precision="bf16"))
    assert asked.budget(asked.attacks["pgd"], cuda)["precision"] == "verified-bf16"
