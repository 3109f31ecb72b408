"""TRADES: a natural cross-entropy plus a KL robustness regulariser."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch.nn import functional as F

from robustbench_aft.method import Method, afd_lr, summed_kl
from robustbench_aft.modes import eval_mode
from robustbench_aft.params import NONNEGATIVE, param, training_attack_params
from robustbench_aft.registry import METHODS


def trades_kl(logits_natural: torch.Tensor, logits_adversarial: torch.Tensor) -> torch.Tensor:
    """(1/B) Σ_i KL(p(x_i) ‖ p(x_adv,i)), gradient through both distributions.

    Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019
    (arXiv 1901.08573), Eq. 5 as ``trades.py`` computes it: ``KLDivLoss(sum)`` of
    log_softmax(adversarial) against softmax(natural), divided by the batch size; the natural
    softmax is not detached.
    """
    return summed_kl(F.softmax(logits_natural, dim=1), logits_adversarial) / logits_natural.shape[0]


def trades_attack_loss(probabilities_natural: torch.Tensor):
    """The attack objective Σ KL(p(x) ‖ p(x_k)) over batch and classes, for a fixed natural p(x)."""

    def loss(logits_adversarial: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
        return summed_kl(probabilities_natural, logits_adversarial)

    return loss


@METHODS.register("trades")
class TRADES(Method):
    """TRADES: CE(f(x), y) + β·KL(p(x) ‖ p(x_adv)), Zhang et al., ICML 2019.

    "Theoretically Principled Trade-off between Robustness and Accuracy",
    https://arxiv.org/abs/1901.08573; official code yaodongyu/TRADES ``trades.py``. Threat model
    L∞. Attack as in the official code: eval mode, start x + 0.001·N(0, I), 10 steps of 0.007 on
    the summed KL, eps 0.031 (both given as ratios of 8/255). Applied as fine-tuning with the
    run's budget (methods.md §3.3, INFERRED toolkit setting: AFD's schedule, β = 6).

    Differs from the official step only in forward passes: the natural logits are computed once
    in train mode and used for both the CE and the KL target (the official code runs the model on
    x twice, which gives identical outputs but one more BN running-statistics update), and the
    attack's natural distribution is computed once instead of at every step (identical values).

    L2: the shared L2 PGD on the same KL objective with the same Gaussian start, instead of the
    official ``distance='l_2'`` branch (SGD on δ with lr 2ε/K, renormalised gradients); both ascend the
    KL along the normalised gradient inside the L2 ball.
    """

    reference = "arXiv 1901.08573; yaodongyu/TRADES trades.py"
    capturable = True
    attack_start = "gaussian"

    @dataclass
    class Params(training_attack_params(steps=10, step="0.007", eps="0.031", source="train_trades_cifar10.py default")):
        beta: float = param(6.0, "weight β of the KL regulariser (1/λ in the paper's Eq. 5; larger: more robust, "
                                 "less accurate)", "train_trades_cifar10.py default", NONNEGATIVE)

    def lr_at(self, epoch: int, total_epochs: int, base_lr: float) -> float:
        """AFD's schedule, the run's shared budget (methods.md: INFERRED toolkit setting)."""
        return afd_lr(epoch, total_epochs, base_lr)

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x, y, _ = batch
        p = self.params
        with eval_mode(self.student), torch.no_grad():
            probabilities_natural = F.softmax(self.student(x), dim=1)
        x_adv = self.training_attack(x, y, loss_fn=trades_attack_loss(probabilities_natural))
        logits_natural = self.student(x)
        logits_adversarial = self.student(x_adv)
        ce = F.cross_entropy(logits_natural, y)
        kl = trades_kl(logits_natural, logits_adversarial)
        return {"loss": ce + p.beta * kl, "ce_natural": ce, "kl_robust": kl}
