"""vAFT: vanilla adversarial fine-tuning, PGD-AT started from the pre-trained weights."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch.nn import functional as F

from robustbench_aft.method import Method, arrest_lr
from robustbench_aft.params import training_attack_params
from robustbench_aft.registry import METHODS


def adversarial_cross_entropy(logits_adversarial: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE(f(x_adv), y), batch mean: the PGD-AT objective of Madry et al., ICLR 2018 (arXiv 1706.06083), Eq. 2.3."""
    return F.cross_entropy(logits_adversarial, labels)


@METHODS.register("vaft", "pgd-aft")
class VanillaAFT(Method):
    """vAFT: PGD adversarial training from the natural pre-trained model (per AFD's re-implementation).

    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018,
    https://arxiv.org/abs/1706.06083, applied as fine-tuning. No official vAFT code exists; this
    follows the AFD authors' ``ARREST.py`` with ``--NR`` and ``--RGKD`` off (changzhang777/AFD),
    which is INFERRED to be their vAFT (methods.md §2): PGD-10 with step 2/255 at eps 8/255,
    uniform unclipped start, eval-mode attack; one train-mode forward on x_adv; one SGD step;
    the lr set to 0.02 at epoch 11 and halved at every odd epoch from 13; the final raw model is
    evaluated. Unlike that script, no unused teacher forward is run (methods.md §15).

    L2 (the official ARREST.py has none; our choice): the shared training attack in L2, i.e. steps of
    the same ratio of eps along the normalised gradient, a uniform start in the L2 ball, radial projection.
    """

    reference = "arXiv 1706.06083; AFD re-implementation ARREST.py (flags off)"
    capturable = True

    @dataclass
    class Params(training_attack_params(steps=10, step="2/255", eps="8/255", source="AFD ARREST.py default",
                                        eps_source="AFD ARREST.py (8/255)")):
        pass

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x, y, _ = batch
        x_adv = self.training_attack(x, y)
        ce = adversarial_cross_entropy(self.student(x_adv), y)
        return {"loss": ce, "ce_adversarial": ce}

    def lr_at(self, epoch: int, total_epochs: int, base_lr: float) -> float:
        return arrest_lr(epoch, total_epochs, base_lr)
