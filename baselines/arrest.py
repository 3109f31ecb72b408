"""ARREST: adversarial fine-tuning with representation guidance (RGKD) and noisy replay (NR)."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_aft.attacks import random_in_ball
from robustbench_aft.method import Method, afd_lr
from robustbench_aft.modes import eval_mode
from robustbench_aft.params import COUNT_OR_ZERO, FLAG, NONNEGATIVE, Range, param, training_attack_params
from robustbench_aft.registry import METHODS


def representation_distance(teacher_features: torch.Tensor, student_features: torch.Tensor) -> torch.Tensor:
    """1 − mean_i cos(φ_pre(x)_i, φ(x)_i): the RGKD penalty, also the NR trigger (ARREST, ICCV 2023, §3)."""
    return 1.0 - F.cosine_similarity(teacher_features, student_features, dim=1).mean()


def noisy_replay_threshold(angle_degrees: float) -> float:
    """NR switches to noisy inputs when the distance reaches 1 − cos(θ) (0.1339746 at θ = 30°)."""
    return 1.0 - math.cos(math.radians(angle_degrees))


@METHODS.register("arrest")
class ARREST(Method):
    """ARREST: AFT with representation-guided distillation and noisy replay (per AFD's re-implementation).

    Suzuki et al., "Adversarial Finetuning with Latent Representation Constraint to Mitigate
    Accuracy-Robustness Tradeoff", ICCV 2023 (arXiv 2308.16454). No official code exists; this
    follows the AFD authors' ``ARREST.py`` with ``--NR --RGKD`` (changzhang777/AFD, methods.md §7):
    per batch, if 1 − cos(φ_pre(x), φ(x)) ≥ 1 − cos 30° and epoch ≤ 10 (on the 20-epoch scale) the
    attack is skipped and clip01(x + U(−ε, ε)) is trained on; otherwise PGD-10 (2/255, eval mode).
    Loss CE + β_R·(1 − cos(φ_pre(x), φ(x_train))). Correction: the teacher runs in eval mode
    (the script leaves it in train mode, so its features used batch statistics and its BN
    statistics drifted); ``nr=False, rgkd=False`` is exactly vAFT's step. L2 (no official form; our
    choice): the shared L2 PGD training attack, and noisy replay draws uniformly in the L2 ball.
    """

    reference = "arXiv 2308.16454; AFD re-implementation ARREST.py (--NR --RGKD)"

    @dataclass
    class Params(training_attack_params(steps=10, step="2/255", eps="8/255", source="AFD ARREST.py default",
                                        eps_source="AFD ARREST.py (8/255)")):
        beta_r: float = param(50.0, "weight of the RGKD feature-distance penalty", "AFD ARREST.py default", NONNEGATIVE)
        angle: float = param(30.0, "noisy-replay angle θ in degrees (threshold 1 − cos θ)", "AFD ARREST.py default",
                             Range(0.0, 180.0, low_open=True))
        nr_epochs: int = param(10, "noisy replay only in epochs ≤ this (20-epoch scale)", "AFD ARREST.py",
                               COUNT_OR_ZERO)
        nr: bool = param(True, "enable noisy replay", "AFD ARREST.py --NR", FLAG)
        rgkd: bool = param(True, "enable the representation penalty", "AFD ARREST.py --RGKD", FLAG)

    def lr_at(self, epoch: int, total_epochs: int, base_lr: float) -> float:
        """AFD's schedule, the one this method has always trained on. AFD's ``ARREST.py`` itself uses
        :func:`arrest_lr`: equal up to rounding at the default base lr 0.025 (0.025·0.8 against 0.02
        from epoch 11), different for another base lr, since ``arrest_lr`` resets to 0.02 outright."""
        return afd_lr(epoch, total_epochs, base_lr)

    def prepare(self, model: nn.Module) -> None:
        self.student = copy.deepcopy(model)
        self.make_teacher(model)

    def _noisy_replay_due(self, x: torch.Tensor, teacher_features: torch.Tensor) -> bool:
        p = self.params
        if not p.nr or self.official_epoch() > p.nr_epochs:
            return False
        with eval_mode(self.student), torch.no_grad():
            distance = representation_distance(teacher_features, self.student.forward_features(x))
        return bool(distance >= noisy_replay_threshold(p.angle))

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x, y, _ = batch
        p = self.params
        eps = p.attack_eps_ratio * self.eps
        with torch.no_grad():
            teacher_features = self.teacher.forward_features(x)
        noisy = self._noisy_replay_due(x, teacher_features)
        if noisy:
            x_train = (x + random_in_ball(x, eps, self.norm)).clamp(0, 1)
        else:
            x_train = self.training_attack(x, y)
        features = self.student.forward_features(x_train)
        ce = F.cross_entropy(self.student.head(features), y)
        distance = representation_distance(teacher_features, features)
        weight = p.beta_r if p.rgkd else 0.0
        return {"loss": ce + weight * distance, "ce": ce, "rgkd": distance,
                "noisy_replay": torch.tensor(float(noisy), device=x.device)}
