"""MART: boosted adversarial cross-entropy plus a misclassification-aware KL."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch.nn import functional as F

from robustbench_aft.method import Method, afd_lr
from robustbench_aft.params import NONNEGATIVE, param, training_attack_params
from robustbench_aft.registry import METHODS


def best_wrong_class(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """argmax over the classes other than the true one."""
    return logits.detach().scatter(1, labels[:, None], float("-inf")).argmax(dim=1)


def boosted_cross_entropy(logits_adversarial: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE = CE(f(x_adv), y) + mean_i −log(1.0001 − q_{i,ŷ_i} + 1e-12), ŷ the best wrong class under q.

    Wang et al., "Improving Adversarial Robustness Requires Revisiting Misclassified Examples",
    ICLR 2020 (OpenReview rklOg6EFwS), Eq. 5, with the constants of the official ``mart.py``.
    """
    probabilities = F.softmax(logits_adversarial, dim=1)
    wrong = best_wrong_class(logits_adversarial, labels)
    q_wrong = probabilities.gather(1, wrong[:, None]).squeeze(1)
    return F.cross_entropy(logits_adversarial, labels) + (-torch.log(1.0001 - q_wrong + 1e-12)).mean()


def misclassification_aware_kl(logits_natural: torch.Tensor, logits_adversarial: torch.Tensor,
                               labels: torch.Tensor) -> torch.Tensor:
    """R = (1/B) Σ_i KL(p_i ‖ q_i) · (1.0000001 − p_{i,y_i}); nothing detached (MART Eq. 6, ``mart.py``)."""
    natural_probabilities = F.softmax(logits_natural, dim=1)
    adversarial_probabilities = F.softmax(logits_adversarial, dim=1)
    kl = (natural_probabilities * (torch.log(natural_probabilities)
                                   - torch.log(adversarial_probabilities + 1e-12))).sum(dim=1)
    true_class_probability = natural_probabilities.gather(1, labels[:, None]).squeeze(1)
    return (kl * (1.0000001 - true_class_probability)).mean()


@METHODS.register("mart")
class MART(Method):
    """MART: BCE(x_adv) + β·KL(p(x) ‖ p(x_adv))·(1 − p_y(x)), Wang et al., ICLR 2020.

    "Improving Adversarial Robustness Requires Revisiting Misclassified Examples",
    https://openreview.net/forum?id=rklOg6EFwS; official code YisenWang/MART ``mart.py``. Threat
    model L∞. Attack as in the official code: eval mode, start x + 0.001·N(0, I), 10 steps of
    0.007 on CE, eps 0.031. Applied as fine-tuning with the run's budget and β = 6, the
    ``mart_loss`` default (methods.md §4.3, INFERRED toolkit setting). Ties of the best wrong
    class are broken by argmax.

    L2 (the official code has none; our choice): the shared L2 PGD on CE with the Gaussian start.
    """

    reference = "OpenReview rklOg6EFwS; YisenWang/MART mart.py"
    capturable = True
    attack_start = "gaussian"

    @dataclass
    class Params(training_attack_params(steps=10, step="0.007", eps="0.031", source="train_resnet.py default")):
        beta: float = param(6.0, "weight of the misclassification-aware KL", "mart.py mart_loss default", NONNEGATIVE)

    def lr_at(self, epoch: int, total_epochs: int, base_lr: float) -> float:
        """AFD's schedule, the run's shared budget (methods.md: INFERRED toolkit setting)."""
        return afd_lr(epoch, total_epochs, base_lr)

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x, y, _ = batch
        x_adv = self.training_attack(x, y)
        # Both forwards in train mode, natural first: BN statistics move in the official order.
        logits_natural, logits_adversarial = self.student(x), self.student(x_adv)
        bce = boosted_cross_entropy(logits_adversarial, y)
        kl = misclassification_aware_kl(logits_natural, logits_adversarial, y)
        return {"loss": bce + self.params.beta * kl, "bce_adversarial": bce, "kl_weighted": kl}
