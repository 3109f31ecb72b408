"""PGD-20 on cross-entropy (Madry et al., ICLR 2018)."""
from __future__ import annotations

from ..registry import ATTACKS
from ._base import _IterativeAttack, cross_entropy_loss


@ATTACKS.register("pgd")
class PGD(_IterativeAttack):
    """PGD-20 on cross-entropy, one uniform random start, step eps/4 (2/255 at eps 8/255)."""

    loss_fn = staticmethod(cross_entropy_loss)
    default_steps = 20
    column_position = 10
    in_avg = True
