"""FGSM-GA: FGSM adversarial training with the GradAlign regulariser."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch.nn import functional as F

from robustbench_aft.attacks import ascent_direction, project, random_in_ball
from robustbench_aft.method import Method, afd_lr
from robustbench_aft.params import NONNEGATIVE, POSITIVE, param
from robustbench_aft.registry import METHODS


def gradient_alignment(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """1 − mean_i cos(vec(g1_i), vec(g2_i)) over the samples whose two gradients are both non-zero.

    Andriushchenko & Flammarion, "Understanding and Improving Fast Adversarial Training",
    NeurIPS 2020 (arXiv 2007.02617), Eq. 6; ``train.py`` of tml-epfl/understanding-fast-adv-training.
    """
    first, second = first.flatten(1), second.flatten(1)
    usable = (first.norm(dim=1) > 0) & (second.norm(dim=1) > 0)
    if not bool(usable.any()):
        return torch.zeros((), device=first.device, dtype=first.dtype)
    return 1.0 - F.cosine_similarity(first[usable], second[usable], dim=1).mean()


@METHODS.register("fgsm-ga")
class FGSMGA(Method):
    """FGSM-GA: FGSM-AT (zero init, step 1.25ε) + λ·GradAlign, all forwards in train mode, NeurIPS 2020.

    Andriushchenko & Flammarion, "Understanding and Improving Fast Adversarial Training",
    https://arxiv.org/abs/2007.02617; official code tml-epfl/understanding-fast-adv-training
    ``train.py`` (README command for ε = 8/255). Threat model L∞ (official); in L2 (our
    generalisation) the FGSM step is 1.25ε along the normalised gradient projected onto the L2 ball
    (so exactly ε along it) and GradAlign's noise is uniform in the L2 ball. Per batch: FGSM from zero,
    δ = clip_[−ε, ε](1.25ε·sign(g1)) then clipped to valid pixels; GradAlign between g1 and the
    input gradient at x + U(−ε, ε) (not clipped), with double backpropagation through the second
    gradient only; loss CE(f(x + δ)) + λ·(1 − cos). Three train-mode forwards per batch. Applied
    as fine-tuning with the run's budget instead of the official cyclic lr from scratch (INFERRED).
    """

    reference = "arXiv 2007.02617; tml-epfl/understanding-fast-adv-training train.py"

    compile_unsupported = ("GradAlign differentiates an input gradient (double backward), which torch.compile "
                           "does not support")

    @dataclass
    class Params:
        grad_align_lambda: float = param(0.2, "weight λ of the GradAlign regulariser", "README command (ε = 8/255)",
                                         NONNEGATIVE)
        fgsm_alpha: float = param(1.25, "FGSM step / eps", "train.py default", POSITIVE)

    def lr_at(self, epoch: int, total_epochs: int, base_lr: float) -> float:
        """AFD's schedule, the run's shared budget, instead of FGSM-GA's from-scratch schedule."""
        return afd_lr(epoch, total_epochs, base_lr)

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x, y, _ = batch
        eps = self.eps
        x_start = x.clone().requires_grad_(True)
        first_gradient, = torch.autograd.grad(F.cross_entropy(self.student(x_start), y), x_start)
        delta = project(self.params.fgsm_alpha * eps * ascent_direction(first_gradient, self.norm), eps, self.norm)
        x_adv = (x + delta).clamp(0, 1).detach()

        x_noisy = (x + random_in_ball(x, eps, self.norm)).requires_grad_(True)
        second_gradient, = torch.autograd.grad(F.cross_entropy(self.student(x_noisy), y), x_noisy, create_graph=True)
        alignment = gradient_alignment(first_gradient.detach(), second_gradient)

        ce = F.cross_entropy(self.student(x_adv), y)
        return {"loss": ce + self.params.grad_align_lambda * alignment, "ce_adversarial": ce,
                "grad_align": alignment}
