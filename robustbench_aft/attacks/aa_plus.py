"""AutoAttack's ``plus`` version, the stronger and costlier one (Croce & Hein, ICML 2020)."""
from __future__ import annotations

from ..registry import ATTACKS
from .autoattack import AutoAttackVersion


@ATTACKS.register("aa-plus")
class AutoAttackPlus(AutoAttackVersion):
    """AutoAttack plus: APGD-CE and APGD-DLR with 5 restarts, FAB with 5 restarts, Square 5000 queries,
    APGD-T and FAB-T on 9 targets; never reported as an ``aa`` number."""

    version = "plus"
    column_position = 34
