"""Registered evaluation attacks, one file each: clean, pgd, cw, aa and aa-fast, aa-rand, aa-plus
(``bench list attacks``).

The contract and the shared PGD core are in :mod:`._base`; every public module of this package is
imported here, so a new attack is one new file with one ``@ATTACKS.register`` line.
"""
from __future__ import annotations

from typing import List

from ..registry import ATTACKS, import_submodules
from ._base import (
    NORMS,
    Attack,
    ascent_direction,
    attacked_chunks,
    cross_entropy_loss,
    cw_margin_loss,
    into_ball_and_box,
    pgd,
    pgd_steps,
    project,
    random_in_ball,
)

import_submodules(__name__)

from .aa_plus import AutoAttackPlus  # noqa: E402
from .aa_rand import AutoAttackRand  # noqa: E402
from .autoattack import AutoAttack, AutoAttackFast, AutoAttackVersion  # noqa: E402
from .clean import Clean  # noqa: E402
from .cw import CWInf  # noqa: E402
from .pgd import PGD  # noqa: E402

# Leaderboard columns computed from the per-attack ones rather than by an attack.
DERIVED_METRICS = ("worst", "avg")


def metric_columns() -> List[str]:
    """Every registered attack in leaderboard order (``column_position``, then name), then the derived
    metrics: worst (the per-point minimum over the attacks run) and avg (AFD's Avg)."""
    ordered = sorted(ATTACKS.names(), key=lambda name: (ATTACKS.get(name).column_position, name))
    return ordered + list(DERIVED_METRICS)


def avg_metrics() -> List[str]:
    """The metrics AFD's Avg column averages (attacks with ``in_avg``)."""
    return [name for name in metric_columns() if name in ATTACKS and ATTACKS.get(name).in_avg]


def is_autoattack(name: str) -> bool:
    """Whether ``name`` is a registered AutoAttack variant (runs at ``aa_precision``)."""
    return name in ATTACKS and bool(ATTACKS.get(name).autoattack)


__all__ = ["ATTACKS", "DERIVED_METRICS", "NORMS", "PGD", "Attack", "AutoAttack", "AutoAttackFast", "AutoAttackPlus",
           "AutoAttackRand", "AutoAttackVersion", "CWInf", "Clean", "ascent_direction", "attacked_chunks",
           "avg_metrics", "cross_entropy_loss", "cw_margin_loss", "into_ball_and_box", "is_autoattack",
           "metric_columns", "pgd", "pgd_steps", "project", "random_in_ball"]
