"""AFKD (reconstructed): adversarial fine-tuning with distillation from the natural model."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_aft.method import Method, arrest_lr, summed_kl
from robustbench_aft.params import NONNEGATIVE, POSITIVE, param, training_attack_params
from robustbench_aft.registry import METHODS


def distillation_kl(logits_teacher: torch.Tensor, logits_student: torch.Tensor, temperature: float) -> torch.Tensor:
    """τ²·KL(softmax(g(x)/τ) ‖ softmax(f(x_adv)/τ)), batch mean (Hinton et al. 2015, arXiv 1503.02531, Eq. 2 form)."""
    target = F.softmax(logits_teacher / temperature, dim=1)
    return temperature ** 2 * (summed_kl(target, logits_student / temperature) / logits_student.shape[0])


@METHODS.register("afkd")
class AFKD(Method):
    """AFKD (reconstructed, no official definition): vAFT + KD from the frozen natural model.

    The AFD paper's tables list "AFKD" but no code or definition could be found (methods.md §8).
    This is OUR reconstruction, labelled as such everywhere: L = CE(f(x_adv), y) +
    λ_KD·τ²·KL(softmax(g(x)/τ) ‖ softmax(f(x_adv)/τ)), with g the frozen pre-trained model in eval
    mode on the natural input, τ = 1, λ_KD = 1, and vAFT's attack and schedule. The AFD paper's
    AFKD numbers are never attached to it.

    L2 (no official code; our choice): the shared L2 PGD training attack.
    """

    reference = "RECONSTRUCTION: no definition found (methods.md §8)"
    capturable = True

    reconstructed = True

    @dataclass
    class Params(training_attack_params(steps=10, step="2/255", eps="8/255", source="vAFT (AFD ARREST.py)")):
        lambda_kd: float = param(1.0, "weight of the distillation term", "reconstruction (methods.md §8)", NONNEGATIVE)
        temperature: float = param(1.0, "distillation temperature τ", "reconstruction (methods.md §8)", POSITIVE)

    def prepare(self, model: nn.Module) -> None:
        self.student = copy.deepcopy(model)
        self.make_teacher(model)

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x, y, _ = batch
        p = self.params
        x_adv = self.training_attack(x, y)
        with torch.no_grad():
            logits_teacher = self.teacher(x)
        logits_adversarial = self.student(x_adv)
        ce = F.cross_entropy(logits_adversarial, y)
        kd = distillation_kl(logits_teacher, logits_adversarial, p.temperature)
        return {"loss": ce + p.lambda_kd * kd, "ce_adversarial": ce, "kd": kd}

    def lr_at(self, epoch: int, total_epochs: int, base_lr: float) -> float:
        return arrest_lr(epoch, total_epochs, base_lr)
