"""Transfer: PGD-20 crafted on a source model, evaluated on the target (a black-box check)."""
from __future__ import annotations

from typing import List, Optional

from torch import nn

from ..modes import eval_mode, frozen_parameters
from ..registry import ATTACKS
from ._base import Attack, cross_entropy_loss, pgd


@ATTACKS.register("transfer")
class Transfer(Attack):
    """PGD-20 (CE, uniform random start, step eps/4) on a *source* model, the adversarial images then
    classified by the evaluated model: the transfer (black-box) check reviewers ask of a defence
    (Papernot et al., "Transferability in Machine Learning", arXiv 1605.07277; Athalye et al.,
    ICML 2018, §5, recommend it against gradient masking). The source defaults to the run's natural
    model (``--transfer-from natural|PATH``). Transfer accuracy below the white-box accuracy means the
    white-box attacks miss adversarial examples that exist: the evaluator flags it.
    """

    kind = "transfer"
    white_box = False
    needs_source = True
    attacks_subsets = True
    column_position = 45

    def __init__(self, eps: float, norm: str = "Linf", batch_size: int = 256, steps: int = 20,
                 relative_step: float = 0.25, source: Optional[nn.Module] = None) -> None:
        super().__init__(eps, norm, batch_size)
        if source is None:
            raise ValueError("the transfer attack needs a source model (--transfer-from natural|PATH)")
        self.source = source
        self.steps = steps
        self.relative_step = relative_step

    def budget(self, num_classes: int = 10):
        return {"steps": self.steps, "restarts": 1, "step": f"{self.relative_step:g}·eps", "loss": "cross_entropy_loss",
                "start": "random"}

    def perturb(self, model, x, y, generator, active=None):
        with eval_mode(self.source), frozen_parameters(self.source):
            return pgd(self.source, x, y, eps=self.eps, norm=self.norm, steps=self.steps,
                       step_size=self.relative_step * self.eps, loss_fn=cross_entropy_loss, generator=generator,
                       active=active)

    def masking_flags(self, name: str, accuracy: float, white_box: str, white_box_accuracy: float) -> List[str]:
        if accuracy >= white_box_accuracy:
            return []
        return [f"{name} accuracy {accuracy:.2f}% is below white-box {white_box} {white_box_accuracy:.2f}%: "
                "examples crafted on another model fool it more than its own gradients do, likely gradient masking"]
