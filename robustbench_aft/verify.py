"""``bench verify --adversarial FILE.pt``: check a third-party adversarial-example tensor against a stored model.

The inverse of ``bench export --adversarial`` (export.py): the tensor holds one adversarial image per
evaluated point of the stored run, in the order of its stored test indices. Each check is a row of one
table (methods.md §18.5): the file holds a tensor of the points' shape and a floating dtype, finite, in
[0, 1], inside the eps-ball of the stated norm around the clean images (up to a stated tolerance, since
a tensor written in float32 rounds x + δ); then the stored model re-classifies it, and its per-point
outcomes are compared with the stored ones. A failed check makes the verdict FAIL (exit 1); a file that
is not a tensor is bad input (one line, exit 2).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .errors import ConfigError, not_a_file_reason
from .registry import METHODS, NATURAL
from .results import ResultsStore

# float32 rounding of x + δ near 1 is ~6e-8; 1e-5 also covers tensors saved in float16 only for range.
DEFAULT_TOLERANCE = 1e-5


@dataclass
class Verification:
    """The rows of the table (check, status ok/FAIL/info/not checked, detail) and what the verdict rests on."""

    method: str
    seed: int
    eps: float
    norm: str
    tolerance: float
    rows: List[Dict[str, str]] = field(default_factory=list)

    def add(self, check: str, passed: Optional[bool], detail: str) -> bool:
        self.rows.append({"check": check, "status": "info" if passed is None else "ok" if passed else "FAIL",
                          "detail": detail})
        return passed is not False

    def skip(self, check: str, detail: str) -> None:
        """A check that cannot be run because an earlier one failed: listed, but not a failure of its own."""
        self.rows.append({"check": check, "status": "not checked", "detail": detail})

    @property
    def failed(self) -> List[str]:
        return [row["check"] for row in self.rows if row["status"] == "FAIL"]

    def verdict(self) -> str:
        subject = f"{self.method} seed {self.seed}, {self.norm} eps={self.eps:.4g} (tolerance {self.tolerance:g})"
        if self.failed:
            unchecked = sum(row["status"] == "not checked" for row in self.rows)
            later = f"; {unchecked} later checks not run" if unchecked else ""
            return f"verdict: FAIL ({', '.join(self.failed)}{later}) for {subject}"
        return f"verdict: PASS, a valid set of adversarial examples for {subject}"


def load_tensor(path: Path) -> torch.Tensor:
    """The tensor in ``path``; anything else is one ConfigError line (a pickle is never executed)."""
    reason = not_a_file_reason(path)
    if reason:
        raise ConfigError(f"--adversarial {path} {reason}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the file is, the message is one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--adversarial {path} is not a tensor file torch.load can read ({first[:160]})") from None
    if not isinstance(payload, torch.Tensor):
        raise ConfigError(f"--adversarial {path} holds a {type(payload).__name__}, not a tensor of images")
    return payload


def _stored_model(store: ResultsStore, method: str, seed: Optional[int], device: torch.device):
    """The chosen run, its dataset, its model in eval mode and its evaluation config."""
    from .export import _chosen_run, load_stored_model, stored_eval_config

    run = _chosen_run(store, method, seed)
    config, _, data, model = load_stored_model(run, "verification re-classifies with it")
    return run, data, model.to(device).eval(), stored_eval_config(config)


def _predictions(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(images[i:i + 256].to(device)).argmax(1).cpu() for i in range(0, len(images), 256)])


def _stored_samples(store: ResultsStore, name: str, run: Dict[str, Any], metric: str):
    """The run's stored per-sample results, which must hold ``metric``'s outcomes."""
    stored = store.samples(run["run_id"])
    if stored is None:
        raise ConfigError(f"{name} seed {run['seed']} has no stored per-sample results to verify against")
    if metric not in stored.correct:
        raise ConfigError(f"{name} seed {run['seed']} has no stored {metric!r} outcomes (it has "
                          f"{', '.join(sorted(stored.correct))}); choose one with --metric")
    return stored


def _check_indices(report: Verification, path: Path, stored) -> None:
    """The "indices" row, where a readable sidecar next to the tensor lists the points' indices."""
    sidecar = path.with_suffix(".json")  # bench export writes the points' indices next to the tensor
    if sidecar.is_file():
        try:
            indices = json.loads(sidecar.read_text()).get("indices")
        except (ValueError, AttributeError):
            indices = None
        if indices is not None:
            report.add("indices", list(indices) == list(stored.indices),
                       f"{sidecar.name} lists {len(indices)} test indices; the stored run {len(stored.indices)}"
                       + ("" if list(indices) == list(stored.indices) else ", not the same points or order"))


def _check_tensor(report: Verification, images: torch.Tensor, expected: tuple, norm: str, metric: str) -> bool:
    """The shape, dtype and finite rows; False (with the later rows listed as not checked) if any fails."""
    shape_ok = report.add("shape", tuple(images.shape) == expected,
                          f"{tuple(images.shape)}; the stored run evaluated {expected} (points × image)")
    dtype_ok = report.add("dtype", images.is_floating_point(), f"{images.dtype}; a floating-point dtype is needed")
    finite = False
    if dtype_ok:
        non_finite = int((~torch.isfinite(images)).sum())
        finite = report.add("finite", non_finite == 0, "no NaN or ±inf" if non_finite == 0 else
                            f"{non_finite} value{' is' if non_finite == 1 else 's are'} NaN or ±inf")
    else:
        report.skip("finite", "not a floating-point tensor")
    if not (shape_ok and dtype_ok and finite):
        for check in ("range [0, 1]", f"{norm} ball", "re-classification", f"agreement with stored {metric}"):
            report.skip(check, "the tensor has the wrong shape, dtype or non-finite values")
        return False
    return True


def _check_ball(report: Verification, images: torch.Tensor, x: torch.Tensor) -> None:
    """The range row and the eps-ball row of the float tensor around the clean images ``x``."""
    eps, norm, tolerance = report.eps, report.norm, report.tolerance
    low, high = float(images.min()), float(images.max())
    report.add("range [0, 1]", low >= -tolerance and high <= 1 + tolerance, f"min {low:.6g}, max {high:.6g}")
    delta = (images - x).flatten(1)
    sizes = delta.abs().max(dim=1).values if norm == "Linf" else delta.norm(dim=1)
    outside = int((sizes > eps + tolerance).sum())
    report.add(f"{norm} ball", outside == 0, f"largest perturbation {float(sizes.max()):.6g} (eps {eps:.6g}); "
                                             f"{outside} of {len(sizes)} points outside eps + tolerance")


def _check_outcomes(report: Verification, model: torch.nn.Module, images: torch.Tensor, x: torch.Tensor,
                    y: torch.Tensor, stored_outcomes: torch.Tensor, metric: str, device: torch.device) -> None:
    """The re-classification row and the row comparing its per-point outcomes with the stored ones."""
    clean_correct = _predictions(model, x, device) == y
    correct = (_predictions(model, images, device) == y) & clean_correct  # wrong clean: broken by convention
    accuracy = 100.0 * float(correct.float().mean())
    stored_accuracy = 100.0 * float(stored_outcomes.float().mean())
    report.add("re-classification", None, f"the stored model is right on {int(correct.sum())} of {len(y)} "
                                          f"({accuracy:.2f} %); stored {metric}: {stored_accuracy:.2f} %")
    stronger = int((~correct & stored_outcomes).sum())
    weaker = int((correct & ~stored_outcomes).sum())
    report.add(f"agreement with stored {metric}", stronger == 0 and weaker == 0,
               f"{len(y) - stronger - weaker} of {len(y)} points agree; {stronger} broken here but robust in the "
               f"store (a stronger attack than the stored one), {weaker} robust here but broken in the store")


def verify_adversarial(db: str, method: str, path: Path, device: torch.device, seed: Optional[int] = None,
                       eps: Optional[float] = None, norm: Optional[str] = None, metric: str = "worst",
                       tolerance: float = DEFAULT_TOLERANCE) -> Verification:
    """Check the tensor at ``path`` against the stored model of ``method`` (its lowest stored seed unless
    ``seed``): eps and norm default to the run's; ``metric`` names the stored outcomes to agree with."""
    from .data import collect

    if tolerance < 0:
        raise ConfigError(f"--tolerance must be >= 0, got {tolerance}")
    name = method if method == NATURAL else METHODS.canonical(method)
    images = load_tensor(path)
    store = ResultsStore(db)
    run, data, model, _ = _stored_model(store, name, seed, device)
    stored = _stored_samples(store, name, run, metric)
    eps = float(run["eps"]) if eps is None else float(eps)
    norm = run["norm"] if norm is None else norm
    report = Verification(method=name, seed=run["seed"], eps=eps, norm=norm, tolerance=tolerance)
    _check_indices(report, path, stored)
    x, y = collect(data.test, stored.indices)
    if not _check_tensor(report, images, (len(stored.indices), *x.shape[1:]), norm, metric):
        return report
    images = images.float()
    _check_ball(report, images, x)
    _check_outcomes(report, model, images, x, y, torch.as_tensor(stored.correct[metric].copy()), metric, device)
    return report


def describe(report: Verification) -> Dict[str, Any]:
    """The verification as a JSON-able dict (``--format json``)."""
    return {"method": report.method, "seed": report.seed, "eps": report.eps, "norm": report.norm,
            "tolerance": report.tolerance, "checks": report.rows, "failed": report.failed,
            "verdict": "FAIL" if report.failed else "PASS"}
