"""CW-∞: PGD on the CW margin loss (Carlini & Wagner, S&P 2017)."""
from __future__ import annotations

from ..registry import ATTACKS
from ._base import _IterativeAttack, cw_margin_loss


@ATTACKS.register("cw")
class CWInf(_IterativeAttack):
    """CW-∞: PGD-30 on the per-sample CW margin loss, uniform random start, step eps/4.

    This is the "CW" column of adversarial-training papers; torchattacks' ``CW`` is the L2
    optimisation attack of Carlini & Wagner, a different thing.
    """

    loss_fn = staticmethod(cw_margin_loss)
    default_steps = 30
    column_position = 20
