"""TRADES: a natural cross-entropy plus a KL robustness regulariser."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch.nn import functional as F

from robustbench_aft.method import CIFAR_EPS, COUNT, NONNEGATIVE, POSITIVE, Method, param, pgd_attack
from robustbench_aft.registry import METHODS


def trades_kl(logits_natural: torch.Tensor, logits_adversarial: torch.Tensor) -> torch.Tensor:
    """(1/B) Σ_i KL(p(x_i) ‖ p(x_adv,i)), gradient through both distributions.

    Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019
    (arXiv 1901.08573), Eq. 5 as ``trades.py`` computes it: ``KLDivLoss(sum)`` of
    log_softmax(adversarial) against softmax(natural), divided by the batch size; the natural
    softmax is not detached.
    """
    return F.kl_div(F.log_softmax(logits_adversarial, dim=1), F.softmax(logits_natural, dim=1),
                    reduction="sum") / logits_natural.shape[0]


def trades_attack_loss(probabilities_natural: torch.Tensor):
    """The attack objective Σ KL(p(x) ‖ p(x_k)) over batch and classes, for a fixed natural p(x)."""

    def loss(logits_adversarial: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits_adversarial, dim=1), probabilities_natural, reduction="sum")

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
    """

    reference = "arXiv 1901.08573; yaodongyu/TRADES trades.py"

    version = 1

    @dataclass
    class Params:
        beta: float = param(6.0, "weight of the KL regulariser", "train_trades_cifar10.py default", NONNEGATIVE)
        attack_steps: int = param(10, "PGD steps of the training attack", "train_trades_cifar10.py default", COUNT)
        attack_step_ratio: float = param(0.007 / CIFAR_EPS, "training attack step / eps (0.007 at 8/255)",
                                         "train_trades_cifar10.py default", POSITIVE)
        attack_eps_ratio: float = param(0.031 / CIFAR_EPS, "training attack eps / the run's eps (0.031 at 8/255)",
                                        "train_trades_cifar10.py default", POSITIVE)

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x, y, _ = batch
        p = self.params
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad():
            probabilities_natural = F.softmax(self.student(x), dim=1)
        self.student.train(was_training)
        x_adv = pgd_attack(self.student, self.student, x, y, loss_fn=trades_attack_loss(probabilities_natural),
                           eps=p.attack_eps_ratio * self.eps, step_size=p.attack_step_ratio * self.eps,
                           steps=p.attack_steps, start="gaussian", bn_mode="eval")
        logits_natural = self.student(x)
        logits_adversarial = self.student(x_adv)
        ce = F.cross_entropy(logits_natural, y)
        kl = trades_kl(logits_natural, logits_adversarial)
        return {"loss": ce + p.beta * kl, "ce_natural": ce, "kl_robust": kl}
