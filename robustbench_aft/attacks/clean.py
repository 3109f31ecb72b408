"""Clean accuracy: the unperturbed test images."""
from __future__ import annotations

from typing import Any, Dict

from ..registry import ATTACKS
from ._base import Attack


@ATTACKS.register("clean")
class Clean(Attack):
    """No attack: the unperturbed test images (clean accuracy)."""

    column_position = 0
    kind = "none"
    white_box = False
    in_avg = True
    # One forward pass and the mask every attack starts from: fp32 in every mode (nothing to speed up).
    runs_in_bf16 = False

    def perturb(self, model, x, y, generator):
        return x.clone()

    def threat_budget(self, eps_given: str) -> Dict[str, Any]:
        return {}  # no perturbation: no eps-ball of its own
