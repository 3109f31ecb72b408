"""``bench audit``: the binarization test of Zimmermann, Brendel, Tramèr & Carlini, "Increasing Confidence in
Adversarial Robustness Evaluations", NeurIPS 2022 (arXiv 2206.13991; code zimmerrol/active-tests), for a
stored model and a registered attack (methods.md §18).

Per test point x the model is turned into a binary classifier that provably has an adversarial example
inside the eps-ball: the original model's features φ, then a new linear readout trained so that x and
``inner`` random points of the ball (within 0.95·eps) are class 0 and one point on the ball's surface is
class 1. When the readout separates them (the test is *feasible*), the boundary point is an adversarial example of that
classifier, so a correct attack must find one. The audit reports the share of feasible points where the
attack does; below the threshold, the model × attack pair gets a sanity flag: the attack misses
adversarial examples that exist, so its accuracy on this model overestimates robustness.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from .attacks import Attack, into_ball_and_box, random_in_ball
from .errors import ConfigError
from .registry import ATTACKS, METHODS, NATURAL
from .results import ResultsStore

# The authors' case-study setting (zimmerrol/active-tests): 49 inner samples and one boundary sample per
# test point, fewer samples than feature dimensions so that one point can be cut off linearly.
DEFAULT_INNER = 49
# Inner samples lie within (1 − gap)·eps, the boundary sample at eps (the authors' relative gap).
INNER_GAP = 0.05
# An attack passes when it breaks at least this share of the feasible binarized points (methods.md §18.3).
DEFAULT_THRESHOLD = 0.95
# Full-batch optimisation of the readout: enough on digits and CIFAR features to separate one point
# from a thousand when it can be separated at all (checked on the digits models, §18.2).
READOUT_STEPS = 300
READOUT_LR = 0.05


class BinarizedModel(nn.Module):
    """The original model's features followed by a two-logit readout [0, w·φ(x) + b]: class 1 wins exactly
    where the linear score is positive, so the attack sees an ordinary two-class classifier."""

    def __init__(self, model: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.model.forward_features(x).float() @ self.weight + self.bias
        return torch.stack([torch.zeros_like(score), score], dim=1)


def boundary_point(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """One point on the surface of the ball around ``x`` (1, C, H, W), inside [0, 1]: a random corner in L∞;
    in L2 a random direction at radius eps (clipping to the box can only move it inwards)."""
    if norm == "Linf":
        signs = (torch.rand(x.shape, generator=generator, device=x.device) < 0.5).to(x.dtype) * 2 - 1
        return into_ball_and_box(x + eps * signs, x, eps, norm)
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return into_ball_and_box(x + eps * direction / direction.norm().clamp_min(1e-12), x, eps, norm)


def train_readout(features: torch.Tensor, labels: torch.Tensor, steps: int = READOUT_STEPS):
    """A linear readout (w, b) on centred features with class-balanced logistic loss (one class-1 point
    against the inner ones); returns (w, b) in the units of the raw features. One scale for all features,
    not one per feature: a feature nearly constant on the training points would get a huge weight and
    dominate the readout wherever else it switches on, which no attack could be blamed for."""
    mean = features.mean(dim=0)
    scale = (features - mean).norm(dim=1).mean().clamp_min(1e-12)
    z = (features - mean) / scale
    weight = torch.zeros(features.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    positive = labels.bool()
    balance = torch.where(positive, 0.5 / positive.sum().clamp_min(1), 0.5 / (~positive).sum().clamp_min(1))
    optimizer = torch.optim.Adam([weight, bias], lr=READOUT_LR)
    for _ in range(steps):
        optimizer.zero_grad()
        score = z @ weight + bias
        loss = (balance * F.binary_cross_entropy_with_logits(score, labels.float(), reduction="none")).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (weight / scale).detach(), (bias - (weight / scale * mean).sum()).detach()


@dataclass
class PointTest:
    """One binarized test: whether the readout separated (feasible) and whether the attack found class 1."""

    index: int
    feasible: bool
    found: bool


def audit_flag_prefix(attack: str) -> str:
    """How every stored audit flag of ``attack`` begins (a new audit of the same attack replaces it)."""
    return f"audit of {attack}: "


@dataclass
class AuditResult:
    method: str
    seed: int
    attack: str
    eps: float
    norm: str
    inner: int
    threshold: float
    tests: List[PointTest]
    seconds: float
    run_id: str = ""
    # Whether the audit ran at the run's own eps: only then is its verdict about the stored column.
    at_run_eps: bool = True

    @property
    def feasible(self) -> int:
        return sum(t.feasible for t in self.tests)

    @property
    def found(self) -> int:
        return sum(t.found for t in self.tests if t.feasible)

    @property
    def share(self) -> float:
        return self.found / self.feasible if self.feasible else float("nan")

    @property
    def passed(self) -> bool:
        return self.feasible > 0 and self.share >= self.threshold

    def flag(self) -> Optional[str]:
        if self.passed:
            return None
        if not self.feasible:
            return (f"{audit_flag_prefix(self.attack)}no binarized test was feasible for {self.method}; nothing was "
                    "tested")
        return (f"{audit_flag_prefix(self.attack)}found the guaranteed adversarial example on only {self.found} of "
                f"{self.feasible} binarized {self.method} points ({100 * self.share:.1f} % < "
                f"{100 * self.threshold:.0f} %): the attack is too weak for this model, its accuracy overestimates "
                "robustness")

    def row(self) -> Dict[str, Any]:
        return {"method": self.method, "seed": self.seed, "attack": self.attack, "norm": self.norm,
                "eps": round(self.eps, 4), "points": len(self.tests), "feasible": self.feasible,
                "found": self.found, "share %": round(100 * self.share, 1) if self.feasible else float("nan"),
                "threshold %": round(100 * self.threshold, 1), "verdict": "pass" if self.passed else "FAIL",
                "seconds": round(self.seconds, 1)}


def binarization_test(model: nn.Module, x: torch.Tensor, attack: Attack, seed: int = 0,
                      inner: int = DEFAULT_INNER, index: int = 0) -> PointTest:
    """The binarization test at one point ``x`` (1, C, H, W) for ``attack`` (built with its eps and norm)."""
    eps, norm = attack.eps, attack.norm
    generator = torch.Generator(device=x.device).manual_seed(seed)
    radius = (1 - INNER_GAP) * eps
    samples = (x + random_in_ball(x.expand(inner, *x.shape[1:]), radius, norm, generator)).clamp(0, 1)
    boundary = boundary_point(x, eps, norm, generator)
    points = torch.cat([x, samples, boundary])
    labels = torch.zeros(len(points))
    labels[-1] = 1
    with torch.no_grad():
        features = torch.cat([model.forward_features(points[i:i + 512]).float().cpu()
                              for i in range(0, len(points), 512)])
    weight, bias = train_readout(features, labels)
    binarized = BinarizedModel(model, weight.to(x.device), bias.to(x.device)).eval()
    with torch.no_grad():
        predicted = torch.cat([binarized(points[i:i + 512]).argmax(1).cpu() for i in range(0, len(points), 512)])
    if not bool((predicted == labels.long()).all()):
        return PointTest(index, feasible=False, found=False)
    x_adv = attack(binarized, x, torch.zeros(1, dtype=torch.long, device=x.device), seed=seed)
    delta = (x_adv - x).flatten(1)
    size = float(delta.abs().max() if norm == "Linf" else delta.norm())
    with torch.no_grad():
        found = bool(binarized(x_adv).argmax(1).item() == 1) and size <= eps + 1e-5
    return PointTest(index, feasible=True, found=found)


def audit_attack(model: nn.Module, x: torch.Tensor, attack: Attack, indices: List[int], seed: int = 0,
                 inner: int = DEFAULT_INNER) -> List[PointTest]:
    """One binarization test per point of ``x``, each seeded by ``seed`` + its position."""
    if not hasattr(model, "forward_features"):
        raise ConfigError("the binarization test needs the model's features (forward_features); this model has none")
    return [binarization_test(model, x[i:i + 1], attack, seed=seed + i, inner=inner, index=indices[i])
            for i in range(len(x))]


def audit_stored(db: str, method: str, attack_name: str, device: torch.device, seed: Optional[int] = None,
                 points: int = 50, inner: int = DEFAULT_INNER, threshold: float = DEFAULT_THRESHOLD,
                 eps: Optional[float] = None, options: Optional[Dict[str, Any]] = None) -> AuditResult:
    """The binarization test of ``attack_name`` on the stored model of ``method`` (its lowest stored seed
    unless ``seed``), on the first ``points`` of the run's evaluated test points, at the run's eps and norm."""
    from .data import collect
    from .verify import _stored_model

    name = method if method == NATURAL else METHODS.canonical(method)
    attack_name = ATTACKS.canonical(attack_name)
    attack_class = ATTACKS.get(attack_name)
    if attack_class.kind != "white-box" or attack_name == "clean":
        raise ConfigError(f"attack {attack_name} is not a white-box eps-ball attack ({attack_class.kind}); the "
                          "binarization test attacks the binarized model itself: choose e.g. pgd, cw, a3 or aa")
    if points < 1 or inner < 1:
        raise ConfigError(f"--points and --inner must be positive, got {points} and {inner}")
    if not 0 < threshold <= 1:
        raise ConfigError(f"--threshold must be in (0, 1], got {threshold}")
    store = ResultsStore(db)
    run, data, model, _ = _stored_model(store, name, seed, device)
    stored = store.samples(run["run_id"])
    indices = stored.indices[:points] if stored is not None else list(range(min(points, len(data.test))))
    at_run_eps = eps is None or abs(float(eps) - float(run["eps"])) < 1e-12
    eps = float(run["eps"]) if eps is None else float(eps)
    try:
        attack = attack_class(eps, run["norm"], **(options or {}))
    except TypeError as exc:
        raise ConfigError(f"invalid options {options} for attack {attack_name!r}: {exc}") from None
    x, _ = collect(data.test, indices)
    start = time.perf_counter()
    tests = audit_attack(model, x.to(device), attack, indices, seed=0, inner=inner)
    return AuditResult(method=name, seed=run["seed"], attack=attack_name, eps=eps, norm=run["norm"], inner=inner,
                       threshold=threshold, tests=tests, seconds=time.perf_counter() - start, run_id=run["run_id"],
                       at_run_eps=at_run_eps)


def store_verdict(db: str, result: AuditResult) -> Optional[str]:
    """Keep the audit's verdict with the audited run: a failed audit adds its sanity flag (the leaderboard
    then counts the run as flagged), a passed one removes an earlier flag of the same attack. Returns
    what was done, or None when the audit was not at the run's eps (then it says nothing about the
    stored column, and nothing is stored)."""
    if not result.at_run_eps:
        return None
    flag = result.flag()
    previous = ResultsStore(db).replace_flags(result.run_id, audit_flag_prefix(result.attack), flag)
    if flag:
        return f"flag stored with run {result.run_id}"
    return f"earlier {result.attack} audit flag removed from run {result.run_id}" if previous else None
