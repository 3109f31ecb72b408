"""The uniform evaluator: one protocol for every model (design.md §6).

A fixed, seeded subset of the test set; every requested attack on every point that the model
classifies correctly (a point misclassified clean counts as broken by every attack, AutoAttack's
convention, so no attack is spent on it); per-sample correctness for each attack; ``worst`` = the
per-sample worst case over all attacks run (a point counts as robust only if every attack failed
on it); and sanity checks that flag likely gradient masking next to the numbers instead of hiding
it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import Subset
from tqdm.auto import tqdm

from .attacks import is_autoattack
from .attacks.corruptions import breakdown as corruption_breakdown
from .config import EvalConfig
from .data import DataBundle, default_eps, make_loader
from .errors import ConfigError
from .registry import ATTACKS
from .devices import autocast, resolve_precision
from .files import atomic_torch_save
from .passes import PassCounter
from .signals import StopSignal

log = logging.getLogger(__name__)

# Above this gap (percentage points) PGD is "far above" AutoAttack: the classic masking symptom.
PGD_AA_GAP_PP = 10.0
# An unbounded L∞ attack (eps = 1 covers the whole image cube) must break nearly every point.
UNBOUNDED_MAX_ACCURACY = 10.0


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
    # Per attack: its full budget as run (see :func:`_budget`), stored with every metric.
    budgets: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.indices)

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


def _check_perturbation(name: str, x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> None:
    if x_adv.shape != x.shape:
        raise RuntimeError(f"attack {name} returned shape {tuple(x_adv.shape)} for input {tuple(x.shape)}")
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "Linf" else delta.norm(dim=1)
    if bool((size > eps + 1e-5).any()) or x_adv.min() < -1e-6 or x_adv.max() > 1 + 1e-6:
        raise RuntimeError(f"attack {name} left the {norm} eps-ball of radius {eps} or the [0, 1] box")


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


def _state_folder(state_dir: Path, indices: List[int], attack_names: List[str], eps: float,
                  config: EvalConfig, device: torch.device) -> Path:
    """Per-sample results of one evaluation protocol live in a folder named by its fingerprint, so
    files of a different protocol (other eps, attacks, subset, precision) are never mixed in."""
    protocol: Dict[str, Any] = {"indices": indices, "attacks": attack_names, "eps": eps, "norm": config.norm,
                                "seed": config.seed, "batch_size": config.batch_size, "sanity": config.sanity,
                                "attack_options": config.attack_options}
    if config.transfer_from is not None:  # added with the transfer attack: older protocols keep their fingerprint
        protocol["transfer_from"] = config.transfer_from
    precisions = (resolve_precision(config.precision, device), resolve_precision(config.aa_precision, device))
    if precisions != ("fp32", "fp32"):
        protocol["precision"] = precisions  # fp32, the original protocol, keeps its original fingerprint
    fingerprint = json.dumps(protocol, sort_keys=True)
    return state_dir / f"eval-{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"


def _load_batch_state(path: Optional[Path]) -> Dict[str, Any]:
    empty: Dict[str, Any] = {"correct": {}, "seconds": {}, "flags": {}, "sanity": None}
    if path is None or not path.is_file():
        return empty
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a file cut short by a crash is only a cache: recompute that batch
        log.warning("ignoring unreadable per-sample results %s; that batch is evaluated again", path)
        return empty


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
    attack_names = [ATTACKS.canonical(a) for a in config.attacks]
    if "clean" not in attack_names:
        attack_names.insert(0, "clean")
    attack_names = list(dict.fromkeys(attack_names))
    eps = default_eps(data, config.norm) if config.eps is None else float(config.eps)
    if eps < 0:
        raise ConfigError(f"--eps must be >= 0, got {eps}")
    attacks = {name: _build_attack(name, eps, config, data, source_model) for name in attack_names}
    indices = select_subset(len(data.test), config.n_eval, config.seed)
    loader = make_loader(Subset(data.test, indices), batch_size=config.batch_size, shuffle=False)
    folder = _state_folder(state_dir, indices, attack_names, eps, config, device) if state_dir is not None else None

    was_training = model.training
    model.eval()
    correct: Dict[str, List[torch.Tensor]] = {name: [] for name in attack_names}
    seconds = {name: 0.0 for name in attack_names}
    passes: Dict[str, Optional[List[int]]] = {name: [0, 0, 0] for name in attack_names}
    flags: List[str] = []
    evaluated: List[int] = []
    bar = tqdm(total=len(loader) * len(attack_names), desc="evaluate", unit="attack-batch",
               disable=None if progress else True, leave=False)
    try:
        for batch_number, (x, y, positions) in enumerate(loader):
            if shard is not None and batch_number % shard[1] != shard[0]:
                bar.update(len(attack_names))
                continue
            evaluated.extend(indices[batch_number * config.batch_size:batch_number * config.batch_size + len(y)])
            x, y = x.to(device), y.to(device)
            path = folder / f"batch-{batch_number:05d}.pt" if folder is not None else None
            saved = _load_batch_state(path)
            for name, attack in attacks.items():
                bar.set_postfix_str(name)
                if name not in saved["correct"]:
                    start = time.perf_counter()
                    precision = config.aa_precision if is_autoattack(name) else config.precision
                    # A point misclassified clean counts as broken by every attack (AutoAttack's
                    # convention), so attacks that can skip points only work on the correct ones.
                    clean_correct = saved["correct"].get("clean")
                    attack_flags: List[str] = []
                    # Every attack's cost is counted the same way (passes.py: images through the model's
                    # stem), so that columns compare in passes as well as in seconds.
                    with PassCounter([model]) as counter:
                        if attack.kind == "corruption":  # not an attack on the clean-correct points: every point
                            saved["correct"][name] = attack.outcomes(model, x, y, _attack_seed(config, batch_number),
                                                                     positions.tolist()).cpu()
                        elif clean_correct is not None and not bool(clean_correct.any()):
                            saved["correct"][name] = clean_correct.clone()
                        else:
                            active = clean_correct.to(device) if clean_correct is not None else None
                            with autocast(device, precision):
                                x_adv = attack(model, x, y, seed=_attack_seed(config, batch_number), active=active)
                                counter.enabled = False  # the re-classification below is the evaluator's pass
                                _check_perturbation(name, x, x_adv.float(), eps, config.norm)
                                still_correct = _predict(model, x_adv) == y
                            if active is not None:
                                still_correct &= active
                            saved["correct"][name] = still_correct.cpu()
                            attack_flags = list(attack.flags)
                    saved["seconds"][name] = time.perf_counter() - start
                    saved.setdefault("passes", {})[name] = (counter.forward, counter.backward, len(y))
                    saved["flags"][name] = attack_flags
                    if path is not None:
                        atomic_torch_save(saved, path)
                correct[name].append(saved["correct"][name])
                seconds[name] += saved["seconds"][name]
                counted = saved.get("passes", {}).get(name)  # None in batch files written before passes were counted
                passes[name] = None if counted is None or passes[name] is None else \
                    [total + part for total, part in zip(passes[name], counted)]
                flags.extend(f for f in saved["flags"][name] if f not in flags)
                bar.update(1)
                if stop is not None:
                    stop.check(f"evaluation ({name}, batch {batch_number + 1} of {len(loader)})")
            if batch_number == 0 and config.sanity and "pgd" in attacks and eps > 0:
                if saved["sanity"] is None:
                    first_pgd = 100.0 * float(correct["pgd"][0].sum()) / len(y)
                    saved["sanity"] = _eps_checks(model, x, y, eps, config.norm, first_pgd, config.seed)
                    if path is not None:
                        atomic_torch_save(saved, path)
                flags.extend(f for f in saved["sanity"] if f not in flags)
            if batch_number == 0 and config.sanity:
                flags.extend(f for f in _randomness_flags(model, x, attack_names) if f not in flags)
    finally:
        bar.close()
        model.train(was_training)

    corrupted = {name: torch.cat(correct.pop(name), dim=1) for name in list(correct)
                 if attacks[name].kind == "corruption" and correct[name]}
    per_sample = {name: torch.cat(values) if values else torch.zeros(0, dtype=torch.bool)
                  for name, values in correct.items()}
    # Per-batch files written before attacks skipped misclassified points may hold a point that is
    # wrong clean but right after an attack; the convention above makes it wrong.
    per_sample = {name: values & per_sample["clean"] for name, values in per_sample.items()}
    per_sample["worst"] = torch.stack(list(per_sample.values())).all(dim=0)
    n = max(1, len(evaluated))
    accuracy = {name: 100.0 * float(values.sum()) / n for name, values in per_sample.items()}
    breakdown = {}
    for name, outcomes in corrupted.items():  # (variants, points): one bit per corrupted image
        accuracy[name] = 100.0 * float(outcomes.sum()) / max(1, outcomes.numel())
        breakdown[name] = corruption_breakdown(attacks[name].variants(), outcomes)
        per_sample[name] = outcomes.flatten()
    flags.extend(_accuracy_flags(accuracy))
    flags.extend(_transfer_flags(accuracy, attacks))
    budgets = {name: _budget(attack, config, device, data.num_classes) for name, attack in attacks.items()}
    for name, counted in passes.items():
        # What the column cost per evaluated image, kept with its budget (the leaderboard does not
        # compare it across rows); no passes when some batch came from a file written before they were.
        cost: Dict[str, float] = {"seconds": round(seconds[name], 3)}
        if counted is not None:
            cost.update(forward_per_image=counted[0] / max(1, counted[2]),
                        backward_per_image=counted[1] / max(1, counted[2]))
        budgets[name]["cost"] = cost
    return EvalResult(eps=eps, norm=config.norm, indices=evaluated, accuracy=accuracy, correct=per_sample,
                      seconds=seconds, flags=flags, config={**asdict(config), "eps": eps, "attacks": attack_names},
                      breakdown=breakdown, budgets=budgets)


def worst_case_examples(model: nn.Module, data: DataBundle, config: EvalConfig, device: torch.device,
                        source_model: Optional[nn.Module] = None, progress: bool = True
                        ) -> Tuple[torch.Tensor, torch.Tensor, List[int], List[str]]:
    """The adversarial images behind the ``worst`` column, recomputed as :func:`evaluate` computed
    them (same subset, batches, per-batch seeds, masks and precisions): per evaluated point, the
    output of the first attack (in ``config.attacks`` order) under which the model is wrong, else
    the last attack's output. Returns (images, labels, test indices, the attack each image came from);
    corruptions are not an eps-ball attack and do not take part."""
    attack_names = [name for name in dict.fromkeys(ATTACKS.canonical(a) for a in config.attacks)
                    if ATTACKS.get(name).kind != "corruption"]
    eps = default_eps(data, config.norm) if config.eps is None else float(config.eps)
    attacks = {name: _build_attack(name, eps, config, data, source_model) for name in attack_names}
    indices = select_subset(len(data.test), config.n_eval, config.seed)
    loader = make_loader(Subset(data.test, indices), batch_size=config.batch_size, shuffle=False)
    images, labels, origins = [], [], []
    was_training = model.training
    model.eval()
    try:
        for batch_number, (x, y, _) in enumerate(tqdm(loader, desc="export", disable=None if progress else True)):
            x, y = x.to(device), y.to(device)
            chosen, origin = x.clone(), ["clean"] * len(y)
            settled = torch.zeros(len(y), dtype=torch.bool, device=device)
            clean_correct = _predict(model, x) == y
            settled |= ~clean_correct
            for name, attack in attacks.items():
                if name == "clean":
                    continue
                precision = config.aa_precision if is_autoattack(name) else config.precision
                with autocast(device, precision):
                    x_adv = attack(model, x, y, seed=_attack_seed(config, batch_number), active=clean_correct).float()
                    wrong = _predict(model, x_adv) != y
                take = ~settled if name == attack_names[-1] else ~settled & wrong
                chosen[take] = x_adv[take]
                for i in take.nonzero().flatten().tolist():
                    origin[i] = name
                settled |= take
            images.append(chosen.cpu())
            labels.append(y.cpu())
            origins += origin
    finally:
        model.train(was_training)
    return torch.cat(images), torch.cat(labels), indices, origins


def _build_attack(name: str, eps: float, config: EvalConfig, data: DataBundle,
                  source_model: Optional[nn.Module]):
    options = dict({ATTACKS.canonical(k): v for k, v in config.attack_options.items()}.get(name, {}))
    attack_class = ATTACKS.get(name)
    if attack_class.needs_source:
        if source_model is None:
            raise ConfigError(f"attack {name} crafts on a source model: give --transfer-from natural|PATH")
        options["source"] = source_model
    if attack_class.kind == "corruption" and data.released_corruptions:
        options.setdefault("released", data.released_corruptions)
    try:
        return attack_class(eps, config.norm, config.batch_size, **options)
    except TypeError as exc:
        raise ConfigError(f"invalid options {options} for attack {name!r}: {exc}") from None


def _attack_seed(config: EvalConfig, batch_number: int) -> int:
    """The seed of every attack on one batch: fixed by the evaluation seed and the batch, so a resumed
    evaluation and ``worst_case_examples`` redraw exactly the same random starts."""
    return config.seed * 100003 + batch_number


def _budget(attack, config: EvalConfig, device: torch.device, num_classes: int) -> Dict[str, Any]:
    """The full budget an attack ran with (what makes two numbers of one column comparable): its
    class, eps as given and as a float, norm, precision, and every setting the attack declares."""
    precision = resolve_precision(config.aa_precision if attack.autoattack else config.precision, device)
    budget: Dict[str, Any] = {"attack": type(attack).__name__, "precision": precision, **attack.budget(num_classes)}
    if attack.kind in ("white-box", "transfer"):
        given = config.eps_text or (f"{config.eps:g}" if config.eps is not None else "dataset default")
        budget.update(eps=attack.eps, eps_given=given, norm=attack.norm)
    if attack.needs_source:
        budget["source"] = config.transfer_from
    return budget


def _randomness_flags(model: nn.Module, x: torch.Tensor, attack_names: List[str]) -> List[str]:
    """A flag when the model's outputs are random (the same images, twice, in eval mode, give different
    logits: dropout left on, noise injection) and a deterministic AutoAttack ran without ``aa-rand``,
    whose expectation over transformations such a model needs (Croce & Hein's own check)."""
    deterministic = [name for name in attack_names
                     if is_autoattack(name) and getattr(ATTACKS.get(name), "version", "") != "rand"]
    if not deterministic or "aa-rand" in attack_names:
        return []
    with torch.no_grad():
        first, second = model(x).float(), model(x).float()
    if torch.allclose(first, second, rtol=1e-4, atol=1e-5):
        return []
    return [f"the model's outputs are random (the same images gave different logits twice): "
            f"{', '.join(deterministic)} assume a deterministic model; evaluate with aa-rand "
            "(AutoAttack's rand version, with expectation over 20 draws)"]


def _transfer_flags(accuracy: Dict[str, float], attacks: Dict[str, Any]) -> List[str]:
    """A flag when examples crafted on another model fool the evaluated one more often than its own
    white-box attacks do: those attacks miss adversarial examples that exist (gradient masking)."""
    white_box = {name: accuracy[name] for name, attack in attacks.items() if attack.kind == "white-box"}
    if not white_box:
        return []
    strongest = min(white_box, key=white_box.get)
    return [f"{name} accuracy {accuracy[name]:.2f}% is below white-box {strongest} {white_box[strongest]:.2f}%: "
            "examples crafted on another model fool it more than its own gradients do, likely gradient masking"
            for name, attack in attacks.items() if attack.kind == "transfer" and accuracy[name] < white_box[strongest]]


def _accuracy_flags(accuracy: Dict[str, float]) -> List[str]:
    flags = []
    clean = accuracy["clean"]
    for name, value in accuracy.items():
        if name not in ("clean", "worst") and value > clean:
            flags.append(f"{name} accuracy {value:.2f}% is above clean accuracy {clean:.2f}%: "
                         "the model may be randomised or the attack broken")
    for aa_name in (name for name in accuracy if is_autoattack(name)):
        if "pgd" in accuracy and accuracy["pgd"] - accuracy[aa_name] > PGD_AA_GAP_PP:
            flags.append(f"PGD accuracy {accuracy['pgd']:.2f}% is far above {aa_name} {accuracy[aa_name]:.2f}% "
                         f"(> {PGD_AA_GAP_PP:.0f} points): likely gradient masking, trust {aa_name}")
    return flags


def parse_attacks(text: str) -> List[str]:
    """Comma-separated attack names → canonical names (unknown names raise UnknownNameError)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigError("--attacks is empty; choose from " + ", ".join(ATTACKS.names()))
    return [ATTACKS.canonical(name) for name in names]


def parse_eps(text: str, norm: str = "Linf") -> float:
    """'8/255', '0.031' or '2e-2' → float; negative or malformed values raise ConfigError."""
    try:
        if "/" in text:
            numerator, denominator = text.split("/")
            value = float(numerator) / float(denominator)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--eps must be a number or a fraction like 8/255, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"--eps must be a finite number >= 0, got {text!r}")
    if norm == "Linf" and value > 1:
        raise ConfigError(f"--eps {text} is larger than 1: images are in [0, 1], so an L-inf eps above 1 means "
                          "nothing (did you mean 8/255 rather than 8?)")
    return value

