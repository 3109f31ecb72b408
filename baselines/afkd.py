"""AFKD (reconstructed): adversarial fine-tuning with distillation from the natural model."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_aft.method import CIFAR_EPS, COUNT, NONNEGATIVE, POSITIVE, Method, arrest_lr, param, pgd_attack
from robustbench_aft.registry import METHODS

def distillation_kl(logits_teacher: torch.Tensor, logits_student: torch.Tensor, temperature: float) -> torch.Tensor:
    """τ²·KL(softmax(g(x)/τ) ‖ softmax(f(x_adv)/τ)), batch mean (Hinton et al. 2015, arXiv 1503.02531, Eq. 2 form)."""
    return temperature ** 2 * F.kl_div(F.log_softmax(logits_student / temperature, dim=1),
                                       F.softmax(logits_teacher / temperature, dim=1), reduction="batchmean")


@METHODS.register("afkd")
class AFKD(Method):
    """AFKD (reconstructed, no official definition): vAFT + KD from the frozen natural model.

    The AFD paper's tables list "AFKD" but no code or definition could be found (methods.md §8).
    This is OUR reconstruction, labelled as such everywhere: L = CE(f(x_adv), y) +
    λ_KD·τ²·KL(softmax(g(x)/τ) ‖ softmax(f(x_adv)/τ)), with g the frozen pre-trained model in eval
    mode on the natural input, τ = 1, λ_KD = 1, and vAFT's attack and schedule. The AFD paper's
    AFKD numbers are never attached to it.
    """

    reference = "RECONSTRUCTION: no definition found (methods.md §8)"

    version = 1
    reconstructed = True

    @dataclass
    class Params:
        lambda_kd: float = param(1.0, "weight of the distillation term", "reconstruction (methods.md §8)", NONNEGATIVE)
        temperature: float = param(1.0, "distillation temperature τ", "reconstruction (methods.md §8)", POSITIVE)
        attack_steps: int = param(10, "PGD steps of the training attack", "vAFT (AFD ARREST.py)", COUNT)
        attack_step_ratio: float = param((2 / 255) / CIFAR_EPS, "training attack step / eps (2/255 at 8/255)",
                                         "vAFT (AFD ARREST.py)", POSITIVE)
        attack_eps_ratio: float = param(1.0, "training attack eps / the run's eps", "vAFT (AFD ARREST.py)", POSITIVE)

    def prepare(self, model: nn.Module) -> None:
        self.student = copy.deepcopy(model)
        self.make_teacher(model)

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x, y, _ = batch
        p = self.params
        x_adv = pgd_attack(self.student, self.student, x, y, loss_fn=F.cross_entropy,
                           eps=p.attack_eps_ratio * self.eps, step_size=p.attack_step_ratio * self.eps,
                           steps=p.attack_steps, start="uniform", bn_mode="eval")
        with torch.no_grad():
            logits_teacher = self.teacher(x)
        logits_adversarial = self.student(x_adv)
        ce = F.cross_entropy(logits_adversarial, y)
        kd = distillation_kl(logits_teacher, logits_adversarial, p.temperature)
        return {"loss": ce + p.lambda_kd * kd, "ce_adversarial": ce, "kd": kd}

    def lr_at(self, epoch: int, total_epochs: int, base_lr: float) -> float:
        return arrest_lr(epoch, total_epochs, base_lr)
