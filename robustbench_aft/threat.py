"""The threat model of a run: the norm and budget shared by its training attacks and its evaluation.

A leaf module (no imports from the package), so that configuration, engine and evaluator can all
depend on it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

# The budget the papers' CIFAR protocol uses; step sizes of training attacks are stated relative to it.
CIFAR_EPS = 8 / 255
NORMS = ("Linf", "L2")


@dataclass(frozen=True)
class ThreatModel:
    """Norm and budget (pixel units: images are in [0, 1]) of a run.

    Attributes:
        norm: ``Linf`` or ``L2``.
        eps: the budget; None until resolved: the dataset's default for the norm.
        eps_text: eps as the user wrote it (``8/255``), kept in every stored budget; None: not given.
    """

    norm: str = "Linf"
    eps: Optional[float] = None
    eps_text: Optional[str] = None

    def resolved(self, default_eps: float) -> "ThreatModel":
        """This threat model with the dataset's ``default_eps`` where no eps was given."""
        return self if self.eps is not None else replace(self, eps=default_eps)

    def describe(self) -> str:
        eps = self.eps_text or ("default" if self.eps is None else f"{self.eps:.4g}")
        return f"{self.norm} eps={eps}"
