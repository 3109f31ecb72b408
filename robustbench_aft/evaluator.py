"""The uniform evaluator: one protocol for every model (design.md §6).

A fixed, seeded subset of the test set; every requested attack on every point that the model
classifies correctly (a point misclassified clean counts as broken by every attack, AutoAttack's
convention, so no attack is spent on it); per-sample correctness for each attack; ``worst`` = the
per-sample worst case over all eps-ball attacks run (a point counts as robust only if every attack
failed on it; corruptions are reported beside it); and sanity checks that flag likely gradient
masking next to the numbers instead of hiding it. What differs from attack to attack is asked of
the attack (:class:`.attacks.Attack`), never decided here from its kind; only the sanity checks
built on PGD itself look for it by name.

Verified bf16 (``--eval-precision``/``--aa-precision bf16``, docs/protocol.md): the attacks run under
bf16 autocast and a point counts as broken only if the fp32 model misclassifies the attack's image
too (:func:`.attacks._base.classified_correctly`); a seeded share of the points
(:func:`select_check_points`) is attacked in fp32 as well, and each attack's budget stores the paired
difference fp32 − verified bf16 on those points (:func:`_verification`), flagged when its 95 % interval
excludes 0.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .attacks import Attack
from .attacks._base import classified_correctly
from .config import EvalConfig
from .data import DataBundle, default_eps, make_loader
from .devices import VERIFIED_BF16, autocast, evaluation_precision
from .errors import ConfigError
from .files import atomic_torch_save
from .folding import folded_for_attacks
from .modes import eval_mode
from .passes import PassCounter
from .registry import ATTACKS
from .signals import StopSignal
from .stats import CONFIDENCE, paired_comparison
from .tensorcache import evaluation_split

log = logging.getLogger(__name__)

# Above this gap (percentage points) PGD is "far above" AutoAttack: the classic masking symptom.
PGD_AA_GAP_PP = 10.0
# An unbounded L∞ attack (eps = 1 covers the whole image cube) must break nearly every point.
UNBOUNDED_MAX_ACCURACY = 10.0
# The fp32 check points of verified bf16 are drawn from a stream of their own, so that they are not the
# first points of the evaluation subset's permutation (drawn with the evaluation seed itself).
CHECK_SEED_OFFSET = 1_000_003


@dataclass
class EvalResult:
    """Accuracies in percent, per-sample correctness, timings and sanity flags."""

    eps: float
    norm: str
    indices: List[int]
    accuracy: Dict[str, float]
    correct: Dict[str, torch.Tensor]
    seconds: Dict[str, float]
    flags: List[str]
    config: dict
    # Per attack with parts (corruptions): accuracy in % per corruption and per corruption@severity.
    breakdown: Dict[str, Dict[str, float]] = field(default_factory=dict)
    # Per attack: its full budget as run (see :meth:`EvalPlan.budget`), stored with every metric.
    budgets: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.indices)

    @property
    def verification(self) -> Dict[str, Dict[str, Any]]:
        """Per attack run in verified bf16: its fp32 check (points, accuracies, Δ = fp32 − verified bf16,
        95 % interval, exact McNemar p), as stored in its budget."""
        return {name: budget["verification"] for name, budget in self.budgets.items() if "verification" in budget}

    def rows(self) -> List[dict]:
        """One row per attack plus ``worst``, for tables."""
        rows = []
        for name, accuracy in self.accuracy.items():
            rows.append({
                "attack": name,
                "accuracy": round(accuracy, 2),
                "correct": int(self.correct[name].sum()),
                "n": len(self.correct[name]) if name in self.correct else self.n,
                "seconds": round(self.seconds.get(name, 0.0), 2),
            })
        return rows

    def to_dict(self) -> dict:
        return {
            "eps": self.eps, "norm": self.norm, "n": self.n, "accuracy": self.accuracy,
            "seconds": self.seconds, "flags": self.flags, "config": self.config,
            "breakdown": self.breakdown, "budgets": self.budgets,
        }


def select_check_points(indices: List[int], share: float, minimum: int, seed: int) -> List[int]:
    """The sorted test indices, among the evaluated ``indices``, that verified bf16 also attacks in fp32:
    a seeded random ``share`` of them, at least ``minimum``, at most all."""
    # ceil of share·n, less a rounding margin: 0.1 · 300 is 30.000000000000004 in floats, and means 30.
    size = min(len(indices), max(minimum, math.ceil(share * len(indices) - 1e-9)))
    generator = torch.Generator().manual_seed(seed + CHECK_SEED_OFFSET)
    chosen = torch.randperm(len(indices), generator=generator)[:size].tolist()
    return sorted(indices[i] for i in chosen)


def select_subset(n_total: int, n_eval: Optional[int], seed: int) -> List[int]:
    """Sorted indices of a seeded random subset of size n_eval (all indices when n_eval is None)."""
    if n_eval is not None and n_eval <= 0:
        raise ConfigError(f"--n-eval must be positive, got {n_eval}")
    if n_eval is not None and n_eval > n_total:
        # An error rather than a silent clamp: a table that says n=1000 must have used 1000 points.
        raise ConfigError(f"--n-eval {n_eval} is larger than the test set ({n_total} images); use at most "
                          f"{n_total}, or leave it out to evaluate on all of them")
    if n_eval is None or n_eval == n_total:
        return list(range(n_total))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_total, generator=generator)[:n_eval].tolist())


@dataclass
class EvalPlan:
    """One evaluation protocol, resolved from its config once by :func:`plan_evaluation`, so that
    :func:`evaluate` and :func:`worst_case_examples` run the same eps, subset, batches, attacks,
    seeds and precisions."""

    config: EvalConfig
    eps: float
    # Canonical name → attack, in evaluation order; clean is always one of them.
    attacks: Dict[str, Attack]
    indices: List[int]
    loader: DataLoader
    num_classes: int
    # Verified bf16: the test indices also attacked in fp32 (select_check_points); empty when every
    # attack runs in fp32.
    check_indices: List[int] = field(default_factory=list)

    def check_mask(self, batch_number: int, size: int) -> torch.Tensor:
        """Booleans over the ``size`` points of batch ``batch_number``: which are fp32 check points."""
        chosen = set(self.check_indices)
        return torch.tensor([index in chosen for index in self.batch_indices(batch_number, size)], dtype=torch.bool)

    def seed(self, batch_number: int) -> int:
        """The seed of every attack on one batch: fixed by the evaluation seed and the batch, so a resumed
        evaluation and ``worst_case_examples`` redraw exactly the same random starts."""
        return self.config.seed * 100003 + batch_number

    def batch_indices(self, batch_number: int, size: int) -> List[int]:
        """The test-set indices of the ``size`` points of batch ``batch_number``."""
        begin = batch_number * self.config.batch_size
        return self.indices[begin:begin + size]

    def precision(self, attack: Attack) -> str:
        """``fp32`` or ``bf16`` (verified): the evaluation's precision is fp32 on every device unless bf16
        was asked for (``auto``, the setting of configurations written before, means fp32 here too);
        attacks without ``runs_in_bf16`` (clean, corruptions) are fp32 always."""
        if not attack.runs_in_bf16:
            return "fp32"
        return evaluation_precision(self.config.aa_precision if attack.autoattack else self.config.precision)

    @property
    def verifies_bf16(self) -> bool:
        """Whether some attack of the plan runs in verified bf16."""
        return any(self.precision(attack) == "bf16" for attack in self.attacks.values())

    def budget(self, attack: Attack, device: torch.device) -> Dict[str, Any]:
        """The full budget an attack ran with (what makes two numbers of one column comparable): its
        class, precision (``fp32`` or ``verified-bf16``, with the share of its fp32 check, so that the
        two never share a column unmarked), every setting the attack declares, its threat model (eps as
        a float and as given, norm) and, for a transfer attack, the source model."""
        config = self.config
        verified = self.precision(attack) == "bf16"
        budget: Dict[str, Any] = {"attack": type(attack).__name__, "precision": VERIFIED_BF16 if verified else "fp32",
                                  **attack.budget(self.num_classes)}
        if verified:
            budget["fp32_check"] = {"share": config.bf16_check_share, "min_points": config.bf16_check_min}
        budget.update(attack.threat_budget(
            config.eps_text or (f"{config.eps:g}" if config.eps is not None else "dataset default")))
        if attack.needs_source:
            budget["source"] = config.transfer_from
        return budget

    def state_folder(self, state_dir: Path, device: torch.device) -> Path:
        """Per-sample results of one evaluation protocol live in a folder named by its fingerprint, so
        files of a different protocol (other eps, attacks, subset, precision) are never mixed in."""
        config = self.config
        protocol: Dict[str, Any] = {"indices": self.indices, "attacks": list(self.attacks), "eps": self.eps,
                                    "norm": config.norm, "seed": config.seed, "batch_size": config.batch_size,
                                    "sanity": config.sanity, "attack_options": config.attack_options}
        if config.transfer_from is not None:  # added with the transfer attack: older protocols keep their fingerprint
            protocol["transfer_from"] = config.transfer_from
        precisions = (evaluation_precision(config.precision), evaluation_precision(config.aa_precision))
        if precisions != ("fp32", "fp32"):
            protocol["precision"] = precisions  # fp32, the original protocol, keeps its original fingerprint
            # bf16 files of versions before verified bf16 hold unverified outcomes: never read them.
            protocol["verified_bf16_check"] = [config.bf16_check_share, config.bf16_check_min]
        fingerprint = json.dumps(protocol, sort_keys=True)
        return state_dir / f"eval-{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"


def plan_evaluation(data: DataBundle, config: EvalConfig, source_model: Optional[nn.Module] = None) -> EvalPlan:
    """The plan of ``config`` on ``data``: eps (the dataset's default unless given), the attacks (canonical
    names in the given order, clean first unless listed), the seeded subset of ``data.test`` and its
    batches. ``source_model``: the model a transfer attack crafts on."""
    names = [ATTACKS.canonical(a) for a in config.attacks]
    if "clean" not in names:
        names.insert(0, "clean")
    eps = default_eps(data, config.norm) if config.eps is None else float(config.eps)
    if eps < 0:
        raise ConfigError(f"--eps must be >= 0, got {eps}")
    attacks = {name: _build_attack(name, eps, config, data, source_model) for name in dict.fromkeys(names)}
    indices = select_subset(len(data.test), config.n_eval, config.seed)
    # The tensor cache's test split where the dataset has one: the same pixels, decoded once.
    loader = make_loader(Subset(evaluation_split(data), indices), batch_size=config.batch_size, shuffle=False)
    plan = EvalPlan(config=config, eps=eps, attacks=attacks, indices=indices, loader=loader,
                    num_classes=data.num_classes)
    if plan.verifies_bf16:
        plan.check_indices = select_check_points(indices, config.bf16_check_share, config.bf16_check_min, config.seed)
    return plan


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def _eps_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                accuracy_at_eps: float, seed: int) -> List[str]:
    """PGD at 2×eps and with an unbounded budget on one batch: accuracy must fall as eps grows."""
    from .attacks import PGD

    flags = []
    n = len(y)
    doubled = PGD(2 * eps, norm)(model, x, y, seed=seed)
    accuracy_doubled = 100.0 * float((_predict(model, doubled) == y).sum()) / n
    if accuracy_doubled > accuracy_at_eps + 100.0 / n:
        flags.append(f"accuracy does not fall with eps: PGD {accuracy_at_eps:.1f}% at eps={eps:.4g} but "
                     f"{accuracy_doubled:.1f}% at eps={2 * eps:.4g} (first batch): likely gradient masking")
    if norm == "Linf":
        unbounded = PGD(1.0, norm)(model, x, y, seed=seed)
        accuracy_unbounded = 100.0 * float((_predict(model, unbounded) == y).sum()) / n
        if accuracy_unbounded > UNBOUNDED_MAX_ACCURACY:
            flags.append(f"unbounded PGD (eps=1) leaves {accuracy_unbounded:.1f}% accuracy (first batch): "
                         "gradients do not lead anywhere, likely gradient masking")
    return flags


def _load_batch_state(path: Optional[Path]) -> Dict[str, Any]:
    empty: Dict[str, Any] = {"correct": {}, "seconds": {}, "flags": {}, "sanity": None}
    if path is None or not path.is_file():
        return empty
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a file cut short by a crash is only a cache: recompute that batch
        log.warning("ignoring unreadable per-sample results %s; that batch is evaluated again", path)
        return empty


def _extend_unique(flags: List[str], new: List[str]) -> None:
    flags.extend(flag for flag in new if flag not in flags)


def evaluate(model: nn.Module, data: DataBundle, config: EvalConfig, device: torch.device,
             progress: bool = True, state_dir: Optional[Path] = None,
             stop: Optional[StopSignal] = None, shard: Optional[Tuple[int, int]] = None,
             source_model: Optional[nn.Module] = None) -> EvalResult:
    """Evaluate ``model`` on a seeded subset of ``data.test`` with every attack in ``config``.

    The model is put in eval mode for every attack and its original mode restored at the end.
    With ``state_dir``, the per-sample results of every (batch, attack) are written there as
    they are computed, and an evaluation that finds them (after a kill or an interruption) only
    computes what is missing; every attack is seeded per batch, so the result is the same.
    ``shard=(rank, world_size)`` evaluates only the batches b with b % world_size == rank (the
    result then covers those points only); torchrun jobs let every rank write its shard into the
    same ``state_dir`` and rank 0 then gathers the whole result from the files. ``source_model``:
    the model the ``transfer`` attack crafts on (``config.transfer_from`` names it in the results).
    """
    plan = plan_evaluation(data, config, source_model)
    folder = plan.state_folder(state_dir, device) if state_dir is not None else None
    outcomes: Dict[str, List[torch.Tensor]] = {name: [] for name in plan.attacks}
    seconds = dict.fromkeys(plan.attacks, 0.0)
    passes: Dict[str, List[Tuple[int, int, int]]] = {name: [] for name in plan.attacks}
    checks: Dict[str, List[Optional[Dict[str, Any]]]] = {name: [] for name in plan.attacks}
    flags: List[str] = []
    evaluated: List[int] = []
    bar = tqdm(total=len(plan.loader) * len(plan.attacks), desc="evaluate", unit="attack-batch",
               disable=None if progress else True, leave=False)
    try:
        with eval_mode(model):
            folded = folded_for_attacks(model, data.input_shape, device)
            for batch_number, (x, y, positions) in enumerate(plan.loader):
                if shard is not None and batch_number % shard[1] != shard[0]:
                    bar.update(len(plan.attacks))
                    continue
                evaluated.extend(plan.batch_indices(batch_number, len(y)))
                x, y = x.to(device), y.to(device)
                path = folder / f"batch-{batch_number:05d}.pt" if folder is not None else None
                saved = _load_batch_state(path)
                for name, attack in plan.attacks.items():
                    bar.set_postfix_str(name)
                    if name not in saved["correct"]:
                        _run_attack(plan, name, attack, (model, folded), (x, y, positions), batch_number, saved)
                        if path is not None:
                            atomic_torch_save(saved, path)
                    outcomes[name].append(saved["correct"][name])
                    seconds[name] += saved["seconds"][name]
                    passes[name].append(saved.get("passes", {}).get(name))  # None: a file from before counting
                    checks[name].append(saved.get("check", {}).get(name))  # None: not verified bf16
                    _extend_unique(flags, saved["flags"][name])
                    bar.update(1)
                    if stop is not None:
                        stop.check(f"evaluation ({name}, batch {batch_number + 1} of {len(plan.loader)})")
                if batch_number == 0 and config.sanity:
                    _extend_unique(flags, _first_batch_flags(plan, model, x, y, saved, path))
    finally:
        bar.close()
    return _result(plan, outcomes, seconds, flags, evaluated, device, passes, checks)


def _attacked_in(precision: str, model: nn.Module, folded: nn.Module) -> nn.Module:
    """The module an attack runs on: the folded copy in fp32 (folding.py), ``model`` under bf16
    autocast (the fold's rounding was checked in fp32 only)."""
    return folded if precision == "fp32" else model


def _distinct(models: Tuple[nn.Module, ...]) -> List[nn.Module]:
    """``models`` without repeats (the folded copy is the model itself when nothing folds)."""
    return list({id(module): module for module in models}.values())


def _run_attack(plan: EvalPlan, name: str, attack: Attack, models: Tuple[nn.Module, nn.Module],
                batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_number: int,
                saved: Dict[str, Any]) -> None:
    """One attack on one batch: its per-point outcomes, seconds and flags, into the batch's ``saved``
    results. Attacks after clean know which points are already misclassified. ``models``: the model and
    the copy fp32 attacks run on (folding.py; the model itself when nothing folds); outcomes are judged
    by the model. In verified bf16 the batch's fp32 check points are attacked in fp32 too
    (:func:`_fp32_check`); the column's seconds and passes include that check, which is also kept on its own."""
    model, folded = models
    x, y, positions = batch
    start = time.perf_counter()
    precision = plan.precision(attack)
    # Every attack's cost is counted the same way (passes.py: images through the model's stem), so
    # that columns compare in passes as well as in seconds; it includes the forward pass that
    # re-classifies the attack's images, as every attack has it (and verified bf16's fp32 re-check).
    with PassCounter(_distinct(models)) as counter:
        correct = attack.outcomes(model, x, y, plan.seed(batch_number), positions.tolist(),
                                  clean_correct=saved["correct"].get("clean"), precision=precision,
                                  attacked=_attacked_in(precision, model, folded))
        saved["flags"][name] = list(attack.flags)  # before the check, whose run of the attack resets them
        if precision == "bf16":
            saved.setdefault("check", {})[name] = _fp32_check(plan, attack, models, batch, batch_number, saved)
    saved["correct"][name] = correct.cpu()
    saved["seconds"][name] = time.perf_counter() - start
    saved.setdefault("passes", {})[name] = (counter.forward, counter.backward, len(y))


def _fp32_check(plan: EvalPlan, attack: Attack, models: Tuple[nn.Module, nn.Module],
                batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_number: int,
                saved: Dict[str, Any]) -> Dict[str, Any]:
    """Verified bf16's fp32 check on one batch: ``attack`` in fp32 on the batch's check points, with the
    batch's seed, as an fp32 evaluation runs it (on the folded copy of ``models``). Returns the check
    mask, the fp32 outcomes (False off the mask), seconds and passes."""
    model, folded = models
    x, y, positions = batch
    mask = plan.check_mask(batch_number, len(y))
    clean = saved["correct"].get("clean")
    correct = torch.zeros(len(y), dtype=torch.bool)
    start = time.perf_counter()
    with PassCounter(_distinct(models)) as counter:
        if bool(mask.any()) and attack.attacks_subsets:
            # The whole batch with only the check points active: their random starts are drawn as in
            # the fp32 evaluation of this batch, so each outcome is the one that evaluation stores.
            active = mask if clean is None else mask & clean
            correct = attack.outcomes(model, x, y, plan.seed(batch_number), positions.tolist(),
                                      clean_correct=active, precision="fp32", attacked=folded).cpu() & mask
        elif bool(mask.any()):
            # An attack of the whole batch at once (AutoAttack): the check points as a batch of their own.
            on_device = mask.to(x.device)
            correct[mask] = attack.outcomes(model, x[on_device], y[on_device], plan.seed(batch_number),
                                            positions[mask].tolist(),
                                            clean_correct=None if clean is None else clean[mask],
                                            precision="fp32", attacked=folded).cpu()
    return {"mask": mask, "correct": correct, "seconds": time.perf_counter() - start,
            "passes": (counter.forward, counter.backward)}


def _first_batch_flags(plan: EvalPlan, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       saved: Dict[str, Any], path: Optional[Path]) -> List[str]:
    """The sanity checks run on the first batch: PGD at other budgets (kept with the batch's results,
    since they cost attacks) and random outputs."""
    flags = []
    if "pgd" in plan.attacks and plan.eps > 0:
        if saved["sanity"] is None:
            first_pgd = 100.0 * float(saved["correct"]["pgd"].sum()) / len(y)
            saved["sanity"] = _eps_checks(model, x, y, plan.eps, plan.config.norm, first_pgd, plan.config.seed)
            if path is not None:
                atomic_torch_save(saved, path)
        flags.extend(saved["sanity"])
    return flags + _randomness_flags(model, x, plan.attacks)


def _cost(seconds: float, counted: List[Optional[Tuple[int, int, int]]],
          checks: Optional[List[Optional[Dict[str, Any]]]] = None) -> Dict[str, float]:
    """What a column cost per evaluated image (kept with its budget; the leaderboard does not compare
    it across rows); no passes when some batch came from a file written before they were counted.
    Verified bf16: the totals include the fp32 check, whose own part is kept as ``check_*``."""
    cost: Dict[str, float] = {"seconds": round(seconds, 3)}
    if counted and all(part is not None for part in counted):
        images = max(1, sum(part[2] for part in counted))
        cost.update(forward_per_image=sum(part[0] for part in counted) / images,
                    backward_per_image=sum(part[1] for part in counted) / images)
        if checks and all(check is not None for check in checks):
            cost.update(check_seconds=round(sum(check["seconds"] for check in checks), 3),
                        check_forward_per_image=sum(check["passes"][0] for check in checks) / images,
                        check_backward_per_image=sum(check["passes"][1] for check in checks) / images)
    return cost


def _verification(name: str, correct: torch.Tensor, checks: List[Optional[Dict[str, Any]]],
                  clean: torch.Tensor) -> Optional[Dict[str, Any]]:
    """Verified bf16's fp32 check of one attack over the evaluated batches: on the check points, the fp32
    and the verified-bf16 accuracies and their paired difference fp32 − verified bf16 (percentage
    points, the t-interval of the per-point differences and the exact McNemar p, stats.paired_comparison);
    None when the attack ran in fp32 or some batch has no check (a shard without check points has
    an empty one)."""
    if not checks or any(check is None for check in checks):
        return None
    mask = torch.cat([check["mask"] for check in checks])
    if not bool(mask.any()):
        return None
    fp32 = (torch.cat([check["correct"] for check in checks]) & clean)[mask].numpy()
    verified = correct[mask].numpy()
    result = paired_comparison([fp32], [verified], CONFIDENCE)
    return {"points": int(mask.sum()), "fp32": 100.0 * float(fp32.mean()),
            "verified_bf16": 100.0 * float(verified.mean()), "delta": result.delta,
            "ci95": [result.ci_low, result.ci_high], "p": result.p_value,
            # Points only one side classifies correctly: broken by the bf16 attack only (verified in fp32),
            # and broken by the fp32 attack only (where bf16 was the weaker attack).
            "broken_by_bf16_only": result.only_first, "broken_by_fp32_only": result.only_second}


def _verification_flags(verification: Dict[str, Dict[str, Any]]) -> List[str]:
    """A flag (and a logged warning) per attack whose fp32 check differs from its verified-bf16
    outcomes beyond noise: the 95 % interval of fp32 − verified bf16 excludes 0."""
    flags = []
    for name, check in verification.items():
        low, high = check["ci95"]
        if low > 0.0 or high < 0.0:
            flag = (f"verified bf16 {name}: fp32 − verified-bf16 accuracy on the {check['points']} fp32-checked "
                    f"points is {check['delta']:+.2f} points [{low:+.2f}, {high:+.2f}] (McNemar p = "
                    f"{check['p']:.3g}): bf16 changes what {name} finds on this model; evaluate it in fp32")
            log.warning(flag)
            flags.append(flag)
    return flags


def _result(plan: EvalPlan, batches: Dict[str, List[torch.Tensor]], seconds: Dict[str, float], flags: List[str],
            evaluated: List[int], device: torch.device,
            passes: Optional[Dict[str, List[Optional[Tuple[int, int, int]]]]] = None,
            checks: Optional[Dict[str, List[Optional[Dict[str, Any]]]]] = None) -> EvalResult:
    """Accuracies and per-sample outcomes of the evaluated batches; ``worst`` is the per-point AND over
    the eps-ball attacks. Other attacks (corruptions) keep their own outcomes, one bit per (part, point)."""
    outcomes = {name: torch.cat(values, dim=-1) if values else torch.zeros(0, dtype=torch.bool)
                for name, values in batches.items()}
    # Per-batch files written before attacks skipped misclassified points may hold a point that is
    # wrong clean but right after an attack; the convention (misclassified clean: broken) makes it wrong.
    correct = {name: values & outcomes["clean"] for name, values in outcomes.items() if plan.attacks[name].eps_ball}
    correct["worst"] = torch.stack(list(correct.values())).all(dim=0)
    correct.update({name: values.flatten() for name, values in outcomes.items() if name not in correct})
    accuracy = {name: 100.0 * float(values.sum()) / max(1, values.numel()) for name, values in correct.items()}
    breakdown = {name: plan.attacks[name].breakdown(outcomes[name]) for name in plan.attacks
                 if outcomes[name].numel()}
    config = {**asdict(plan.config), "eps": plan.eps, "attacks": list(plan.attacks)}
    checks = checks or {}
    verification = {name: check for name in plan.attacks if plan.precision(plan.attacks[name]) == "bf16"
                    for check in [_verification(name, correct[name], checks.get(name, []), correct["clean"])]
                    if check is not None}
    budgets = {name: {**plan.budget(attack, device),
                      "cost": _cost(seconds[name], (passes or {}).get(name, []), checks.get(name))}
               for name, attack in plan.attacks.items()}
    for name, check in verification.items():
        budgets[name]["verification"] = check
    return EvalResult(eps=plan.eps, norm=plan.config.norm, indices=evaluated, accuracy=accuracy, correct=correct,
                      seconds=seconds, config=config, breakdown={name: b for name, b in breakdown.items() if b},
                      flags=(flags + _accuracy_flags(accuracy, plan.attacks) + _transfer_flags(accuracy, plan.attacks)
                             + _verification_flags(verification)),
                      budgets=budgets)


def worst_case_examples(model: nn.Module, data: DataBundle, config: EvalConfig, device: torch.device,
                        source_model: Optional[nn.Module] = None, progress: bool = True
                        ) -> Tuple[torch.Tensor, torch.Tensor, List[int], List[str]]:
    """The adversarial images behind the ``worst`` column, recomputed as :func:`evaluate` computed
    them (the same :class:`EvalPlan`: subset, batches, per-batch seeds, masks and precisions): per
    evaluated point, the output of the first attack (in ``config.attacks`` order) under which the
    model is wrong, else the last attack's output. Returns (images, labels, test indices, the attack
    each image came from); attacks outside the eps-ball (corruptions) do not take part."""
    plan = plan_evaluation(data, config, source_model)
    attacks = {name: attack for name, attack in plan.attacks.items() if attack.eps_ball}
    last = list(attacks)[-1]
    images, labels, origins = [], [], []
    with eval_mode(model):
        folded = folded_for_attacks(model, data.input_shape, device)
        for batch_number, (x, y, _) in enumerate(tqdm(plan.loader, desc="export", disable=None if progress else True)):
            x, y = x.to(device), y.to(device)
            chosen, origin = x.clone(), ["clean"] * len(y)
            clean_correct = _predict(model, x) == y
            settled = ~clean_correct
            for name, attack in attacks.items():
                if name == "clean":
                    continue
                precision = plan.precision(attack)
                with autocast(device, precision):
                    x_adv = attack(_attacked_in(precision, model, folded), x, y, seed=plan.seed(batch_number),
                                   active=clean_correct).float()
                # Classified as the evaluation classified it (verified bf16: broken only if fp32 agrees).
                wrong = ~classified_correctly(model, x_adv, y, precision, clean_correct)
                take = ~settled if name == last else ~settled & wrong
                chosen[take] = x_adv[take]
                for i in take.nonzero().flatten().tolist():
                    origin[i] = name
                settled |= take
            images.append(chosen.cpu())
            labels.append(y.cpu())
            origins += origin
    return torch.cat(images), torch.cat(labels), plan.indices, origins


def _build_attack(name: str, eps: float, config: EvalConfig, data: DataBundle,
                  source_model: Optional[nn.Module]) -> Attack:
    attack_class = ATTACKS.get(name)
    given = {ATTACKS.canonical(k): v for k, v in config.attack_options.items()}.get(name, {})
    options = {**attack_class.data_options(data), **given}
    if attack_class.needs_source:
        if source_model is None:
            raise ConfigError(f"attack {name} crafts on a source model: give --transfer-from natural|PATH")
        options["source"] = source_model
    try:
        return attack_class(eps, config.norm, config.batch_size, **options)
    except TypeError as exc:
        raise ConfigError(f"invalid options {options} for attack {name!r}: {exc}") from None


def _randomness_flags(model: nn.Module, x: torch.Tensor, attacks: Dict[str, Attack]) -> List[str]:
    """A flag when the model's outputs are random (the same images, twice, in eval mode, give different
    logits: dropout left on, noise injection) and a deterministic AutoAttack ran without one that
    averages over the randomness (``aa-rand``, whose expectation over transformations such a model
    needs: Croce & Hein's own check)."""
    deterministic = [name for name, attack in attacks.items() if attack.autoattack and not attack.averages_randomness]
    if not deterministic or any(attack.averages_randomness for attack in attacks.values()):
        return []
    with torch.no_grad():
        first, second = model(x).float(), model(x).float()
    if torch.allclose(first, second, rtol=1e-4, atol=1e-5):
        return []
    return [f"the model's outputs are random (the same images gave different logits twice): "
            f"{', '.join(deterministic)} assume a deterministic model; evaluate with aa-rand "
            "(AutoAttack's rand version, with expectation over 20 draws)"]


def _transfer_flags(accuracy: Dict[str, float], attacks: Dict[str, Attack]) -> List[str]:
    """Each attack's gradient-masking flags against the strongest white-box attack that ran (the transfer
    attack: examples crafted on another model fool the evaluated one more often than its own
    white-box attacks do, so those miss adversarial examples that exist)."""
    white_box = {name: accuracy[name] for name, attack in attacks.items() if attack.white_box}
    if not white_box:
        return []
    strongest = min(white_box, key=white_box.get)
    return [flag for name, attack in attacks.items()
            for flag in attack.masking_flags(name, accuracy[name], strongest, white_box[strongest])]


def _accuracy_flags(accuracy: Dict[str, float], attacks: Dict[str, Attack]) -> List[str]:
    flags = []
    clean = accuracy["clean"]
    for name, value in accuracy.items():
        if name not in ("clean", "worst") and value > clean:
            flags.append(f"{name} accuracy {value:.2f}% is above clean accuracy {clean:.2f}%: "
                         "the model may be randomised or the attack broken")
    for aa_name in (name for name, attack in attacks.items() if attack.autoattack):
        if "pgd" in accuracy and accuracy["pgd"] - accuracy[aa_name] > PGD_AA_GAP_PP:
            flags.append(f"PGD accuracy {accuracy['pgd']:.2f}% is far above {aa_name} {accuracy[aa_name]:.2f}% "
                         f"(> {PGD_AA_GAP_PP:.0f} points): likely gradient masking, trust {aa_name}")
    return flags

