"""Verified bf16 (``--eval-precision``/``--aa-precision bf16``): attacks run under bf16 autocast, a point
counts as broken only if the fp32 model misclassifies the attack's image too, and a seeded share of the
points is attacked in fp32 as well (docs/protocol.md). Tiny models and few points: bf16 autocast works
on CPU, slowly."""
import json

import pytest
import torch
from torch import nn

from robustbench_aft.attacks import PGD, AutoAttack
from robustbench_aft.attacks._base import classified_correctly
from robustbench_aft.cli import main
from robustbench_aft.errors import ConfigError
from robustbench_aft.evaluator import EvalConfig, evaluate, plan_evaluation, select_check_points
from robustbench_aft.protocol import describe_difference
from robustbench_aft.results import ResultsStore, RunRecord
from robustbench_aft.tables import leaderboard

CPU = torch.device("cpu")
EPS = 0.15


class _FlipsUnderBf16(nn.Module):
    """A digits model whose bf16 argmax is wrong where its fp32 argmax is right: a last linear layer adds
    1000 to every logit and scales the model's logits by 1e-3, so in fp32 the argmax is the model's,
    while in bf16 (spacing 4 near 1000) every logit rounds to the same value and the argmax is class 0."""

    def __init__(self, model: nn.Module, classes: int = 10) -> None:
        super().__init__()
        self.model = model
        self.fragile = nn.Linear(classes, classes)
        with torch.no_grad():
            self.fragile.weight.copy_(1e-3 * torch.eye(classes))
            self.fragile.bias.fill_(1000.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fragile(self.model(x))


class _MaskedUnderBf16(nn.Module):
    """A digits model whose input gradient is exactly zero under autocast (the same logits, detached from
    the input), so a bf16 attack takes no step while an fp32 attack on the same model breaks points."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            return self.model(x.detach()) + 0.0 * x.sum()
        return self.model(x)


@pytest.fixture(scope="module")
def points(digits):
    x = torch.stack([digits.test[i][0] for i in range(64)])
    y = torch.tensor([int(digits.test[i][1]) for i in range(64)])
    return x, y


@pytest.mark.parametrize("wrap", ["flips", "real"])
def test_verified_bf16_never_counts_a_point_broken_that_fp32_classifies_correctly(digits_model, points, wrap):
    """Per sample: every point verified bf16 counts as broken is misclassified by the fp32 model on the
    very image the bf16 attack produced (the same seed gives the same image); on the model whose bf16
    argmax flips, plain bf16 classification would have called points broken that fp32 gets right."""
    model = (_FlipsUnderBf16(digits_model) if wrap == "flips" else digits_model).eval()
    x, y = points
    attack = PGD(EPS, "Linf", steps=5)
    clean = classified_correctly(model, x, y, "fp32")
    verified = attack.outcomes(model, x, y, seed=3, positions=list(range(len(y))), clean_correct=clean,
                               precision="bf16")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = attack(model, x, y, seed=3, active=clean)
        bf16_correct = model(images).argmax(1) == y
    fp32_correct = model(images).argmax(1) == y
    broken = clean & ~verified
    assert not bool((broken & fp32_correct).any())
    # It only takes breaks away from the bf16 attack: every verified break is a bf16 break too.
    assert not bool((broken & bf16_correct).any())
    assert torch.equal(verified, clean & (bf16_correct | fp32_correct))
    if wrap == "flips":
        assert bool((clean & ~bf16_correct & fp32_correct).any())  # the case the re-check is there for


def test_autoattack_standard_runs_square_under_bf16_on_points_left_after_apgd():
    """Square keeps its running loss in the logits' dtype; with bf16 logits its ``index_put`` into fp32
    buffers failed. At an eps too small to break anything every point reaches Square, which must run
    and leave all of them correct."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = torch.rand(12, 1, 8, 8)
    y = model(x).argmax(1)
    attack = AutoAttack(eps=0.0005)
    correct = attack.outcomes(model, x, y, seed=0, positions=list(range(12)),
                              clean_correct=torch.ones(12, dtype=torch.bool), precision="bf16")
    assert correct.dtype == torch.bool and correct.shape == (12,)
    assert bool(correct.all())


@pytest.mark.parametrize("n, share, minimum, expected", [(1000, 0.1, 200, 200), (3000, 0.1, 200, 300),
                                                          (150, 0.1, 200, 150), (300, 0.1, 5, 30), (301, 0.1, 5, 31)])
def test_the_fp32_check_share_is_seeded_and_of_the_right_size(n, share, minimum, expected):
    indices = list(range(5, 5 + 3 * n, 3))  # test-set indices of some evaluation subset
    chosen = select_check_points(indices, share, minimum, seed=0)
    assert len(chosen) == expected and len(set(chosen)) == expected and set(chosen) <= set(indices)
    assert chosen == sorted(chosen) == select_check_points(indices, share, minimum, seed=0)
    if expected < n:
        assert chosen != select_check_points(indices, share, minimum, seed=1)
        assert chosen != indices[:expected]  # drawn, not the first points of the subset


def test_a_plan_checks_points_only_when_an_attack_runs_in_bf16(digits):
    fp32 = plan_evaluation(digits, EvalConfig(attacks=["clean", "pgd"], eps=EPS, n_eval=100))
    assert fp32.check_indices == []
    bf16 = plan_evaluation(digits, EvalConfig(attacks=["clean", "pgd"], eps=EPS, n_eval=100, precision="bf16",
                                              bf16_check_share=0.25, bf16_check_min=10))
    assert len(bf16.check_indices) == 25 and set(bf16.check_indices) <= set(bf16.indices)
    masks = [bf16.check_mask(b, len(y)) for b, (_, y, _) in enumerate(bf16.loader)]
    assert int(sum(int(m.sum()) for m in masks)) == 25
    budgets = {name: bf16.budget(attack, CPU) for name, attack in bf16.attacks.items()}
    assert budgets["pgd"]["precision"] == "verified-bf16" and budgets["clean"]["precision"] == "fp32"
    assert budgets["pgd"]["fp32_check"] == {"share": 0.25, "min_points": 10}


def _config(**overrides):
    settings = dict(attacks=["clean", "pgd"], eps=EPS, n_eval=48, batch_size=16, sanity=False, precision="bf16",
                    bf16_check_min=48)
    settings.update(overrides)
    return EvalConfig(**settings)


def test_the_fp32_check_is_what_an_fp32_evaluation_finds_and_flags_a_weaker_bf16_attack(digits_model, digits):
    """On a model whose gradients vanish under autocast, bf16 PGD breaks (almost) nothing; the fp32 check
    of every point (the minimum is all 48) is exactly the fp32 evaluation's outcome per point, the
    difference fp32 − verified bf16 is negative beyond noise, and the flag says so."""
    model = _MaskedUnderBf16(digits_model).eval()
    fp32 = evaluate(model, digits, _config(precision="fp32"), CPU, progress=False)
    verified = evaluate(model, digits, _config(), CPU, progress=False)
    check = verified.verification["pgd"]
    assert check["points"] == 48
    assert check["fp32"] == pytest.approx(fp32.accuracy["pgd"])
    assert check["verified_bf16"] == pytest.approx(verified.accuracy["pgd"])
    assert check["delta"] == pytest.approx(fp32.accuracy["pgd"] - verified.accuracy["pgd"])
    assert check["delta"] < 0 and check["ci95"][1] < 0 and check["p"] < 0.05
    assert check["broken_by_fp32_only"] > 0 and check["broken_by_bf16_only"] == 0
    assert any(flag.startswith("verified bf16 pgd:") for flag in verified.flags)
    assert not any("verified bf16" in flag for flag in fp32.flags) and fp32.verification == {}
    assert verified.budgets["pgd"]["cost"]["check_seconds"] > 0
    assert verified.budgets["pgd"]["cost"]["check_backward_per_image"] > 0


def test_no_flag_when_bf16_and_fp32_agree_and_the_check_share_is_honoured(digits_model, digits):
    result = evaluate(digits_model, digits, _config(bf16_check_share=0.25, bf16_check_min=4), CPU, progress=False)
    check = result.verification["pgd"]
    assert check["points"] == 12
    low, high = check["ci95"]
    flagged = any(flag.startswith("verified bf16 pgd:") for flag in result.flags)
    assert flagged == (low > 0 or high < 0)
    assert set(result.verification) == {"pgd"}  # clean is fp32 in every mode


def _record(method, result, created=None):
    return RunRecord(group_id="g", method=method, method_version=1, dataset="digits", arch="smallcnn", seed=0,
                     eps=result.eps, norm=result.norm, n_eval=result.n, metrics=dict(result.accuracy), config={},
                     flags=list(result.flags), provenance={}, wall_seconds=1.0, indices=list(result.indices),
                     per_sample={name: "".join("1" if bit else "0" for bit in values.tolist())
                                 for name, values in result.correct.items()},
                     budgets=result.budgets)


def test_the_check_round_trips_through_the_store_and_the_leaderboard_keeps_precisions_apart(
        digits_model, digits, tmp_path, capsys):
    model = _MaskedUnderBf16(digits_model).eval()
    verified = evaluate(model, digits, _config(), CPU, progress=False)
    fp32 = evaluate(digits_model, digits, _config(precision="fp32"), CPU, progress=False)
    store = ResultsStore(str(tmp_path / "r.db"))
    run_id = store.add(_record("afd", verified))
    store.add(_record("vaft", fp32))
    store.add(_record("trades", fp32))
    stored = store.record(run_id).budgets["pgd"]
    assert stored["verification"] == json.loads(json.dumps(verified.budgets["pgd"]["verification"]))
    assert stored["precision"] == "verified-bf16"
    # One column, two precisions: refused in one line that names them, marked and stated with --mix-budgets.
    with pytest.raises(ConfigError, match=r"column pgd would mix precisions \(fp32 and verified-bf16\)"):
        leaderboard(str(store.path))
    assert main(["leaderboard", "--db", str(store.path), "--mix-budgets"]) == 0
    out = capsys.readouterr().out
    afd_line = next(line for line in out.splitlines() if "| afd" in line)
    vaft_line = next(line for line in out.splitlines() if "| vaft" in line)
    assert "†" in afd_line and "†" not in vaft_line
    assert "column pgd mixes precisions: fp32 cells and † verified-bf16 cells" in out
    # The verified-bf16 run is flagged (its check differs beyond noise): the flags column says so.
    frame = leaderboard(str(store.path), mix_budgets=True)
    assert dict(zip(frame["method"], frame["flagged_runs"])) == {"afd": 1, "vaft": 0, "trades": 0}
    # The check's measurements are not part of the protocol; the precision is, and is named.
    protocols = frame.attrs["protocols"]
    by_method = dict(zip(frame["method"], frame["protocol_id"]))
    assert by_method["vaft"] == by_method["trades"] != by_method["afd"]
    assert "pgd precision verified-bf16 vs fp32" in describe_difference(protocols[by_method["afd"]],
                                                                        protocols[by_method["vaft"]])
