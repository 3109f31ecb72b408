"""AutoAttack's ``rand`` version, for models whose outputs are random (Croce & Hein, ICML 2020)."""
from __future__ import annotations

from ..registry import ATTACKS
from .autoattack import AutoAttackVersion


@ATTACKS.register("aa-rand")
class AutoAttackRand(AutoAttackVersion):
    """AutoAttack rand: APGD-CE and APGD-DLR with expectation over 20 draws (EOT) per gradient, for
    randomised defences; never reported as an ``aa`` number."""

    version = "rand"
    averages_randomness = True
    column_position = 32
