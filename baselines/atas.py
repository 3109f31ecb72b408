"""ATAS: one-step adversarial training with a per-example adaptive step size."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from robustbench_aft.attacks import ascent_direction, into_ball_and_box, random_in_ball
from robustbench_aft.method import Method, afd_lr
from robustbench_aft.modes import eval_mode
from robustbench_aft.params import COUNT, COUNT_OR_ZERO, POSITIVE, PROBABILITY, param
from robustbench_aft.registry import METHODS
from robustbench_aft.threat import CIFAR_EPS


def adaptive_step_size(gradient_norm_ema: torch.Tensor, c: float, numerator: float, low: float,
                       high: float) -> torch.Tensor:
    """η_i = clip_[low, high](numerator / (1 + √v_i / c)).

    Huang et al., "Fast Adversarial Training with Adaptive Step Size", IEEE TIP 2023
    (arXiv 2206.02417), Eq. 9; ``adv_attack.py`` of HuangZhiChao95/ATAS.
    """
    return (numerator / (1.0 + gradient_norm_ema.sqrt() / c)).clamp(low, high)


@METHODS.register("atas")
class ATAS(Method):
    """ATAS: one adaptive-step attack from a stored per-example perturbation, IEEE TIP 2023.

    Huang et al., "Fast Adversarial Training with Adaptive Step Size",
    https://arxiv.org/abs/2206.02417; official code HuangZhiChao95/ATAS ``ATAS.py``,
    ``adv_attack.py``. Threat model L∞ (official; in L2, our generalisation: δ_i starts uniform in
    the L2 ball, the step runs along the normalised gradient and is projected onto the L2 ball, the
    step bounds stay the same ratios of eps). Every training example keeps a perturbation δ_i
    (initialised U(−ε, ε), re-initialised every 10 epochs except the last) and a running squared
    input-gradient norm v_i (β_h = 0.5). One eval-mode step from clip01(x + δ_i): size ε in the
    5 warm-up epochs, then clip_[4/255, 14/255](2·8/255 / (1 + √v_i / c)) with c = 0.01 (the
    bounds and numerator are written as ratios of eps, so they are the official values at 8/255;
    the official code hard-codes 8/255). The result is written back to δ_i; the model trains on it
    in train mode with CE. Epoch rules are on the 20-epoch scale of the run.

    Deviation: our data pipeline crops and flips before the method sees a batch, so δ_i is stored
    at the training resolution and not re-aligned with each epoch's random crop/flip (the official
    code pads to 40×40 and applies the same crop/flip to δ_i). Evaluation is on plain test
    images, not on the zero-padded ones of the official evaluation script.
    """

    reference = "arXiv 2206.02417; HuangZhiChao95/ATAS ATAS.py"

    @dataclass
    class Params:
        c: float = param(0.01, "step-size constant c", "ATAS_CIFAR.sh", POSITIVE)
        beta_h: float = param(0.5, "decay of the running squared gradient norm", "ATAS_CIFAR.sh", PROBABILITY)
        warmup_epochs: int = param(5, "epochs with the constant step ε (20-epoch scale)", "ATAS_CIFAR.sh",
                                   COUNT_OR_ZERO)
        reset_every: int = param(10, "re-initialise δ every this many epochs (20-epoch scale)", "ATAS.py", COUNT)
        numerator_ratio: float = param(2.0, "step numerator / eps (2·8/255 at 8/255)", "adv_attack.py", POSITIVE)
        min_step_ratio: float = param((4 / 255) / CIFAR_EPS, "smallest step / eps (4/255 at 8/255)", "ATAS_CIFAR.sh",
                                      POSITIVE)
        max_step_ratio: float = param((14 / 255) / CIFAR_EPS, "largest step / eps (14/255 at 8/255)", "ATAS_CIFAR.sh",
                                      POSITIVE)

    def lr_at(self, epoch: int, total_epochs: int, base_lr: float) -> float:
        """AFD's schedule, the run's shared budget, instead of ATAS' from-scratch schedule."""
        return afd_lr(epoch, total_epochs, base_lr)

    def on_fit_start(self, train_set: Dataset) -> None:
        # Indices are positions in the full training set, also when training on a subset of it.
        self.num_examples = len(train_set)
        num_examples = self.num_examples
        device = next(self.student.parameters()).device
        self.register_buffer("gradient_norm_ema", torch.zeros(num_examples, device=device))
        self.perturbations = torch.empty(0, device=device)
        self._last_reset = 0

    def per_example_state(self) -> Dict[str, torch.Tensor]:
        return {"perturbations": self.perturbations, "gradient_norm_ema": self.gradient_norm_ema}

    def checkpoint_extras(self) -> Dict[str, Any]:
        return {"perturbations": self.perturbations.detach().cpu(), "last_reset": self._last_reset}

    def restore_checkpoint_extras(self, extras: Dict[str, Any]) -> None:
        self.perturbations = extras["perturbations"].to(self.gradient_norm_ema.device)
        self._last_reset = extras["last_reset"]

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        super().on_epoch_start(epoch, total_epochs)
        official = self.official_epoch()
        block = (official - 1) // self.params.reset_every
        if block != self._last_reset and epoch != total_epochs:
            self._last_reset = block
            self.perturbations = torch.empty(0, device=self.perturbations.device)

    def _stored(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.perturbations.numel() == 0 or self.perturbations.shape[1:] != x.shape[1:]:
            shape = (self.num_examples, *x.shape[1:])
            self.perturbations = random_in_ball(torch.empty(shape, device=x.device), self.eps, self.norm)
        return self.perturbations[index]

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x, y, index = batch
        p, eps = self.params, self.eps
        x_start = (x + self._stored(x, index)).clamp(0, 1).requires_grad_(True)
        with eval_mode(self.student):
            gradient, = torch.autograd.grad(F.cross_entropy(self.student(x_start), y), x_start)
        with torch.no_grad():
            if self.official_epoch() <= p.warmup_epochs:
                step = torch.full((len(x),), eps, device=x.device)
            else:
                squared_norm = gradient.flatten(1).norm(dim=1) ** 2
                self.gradient_norm_ema[index] = p.beta_h * self.gradient_norm_ema[index] + (1 - p.beta_h) * squared_norm
                step = adaptive_step_size(self.gradient_norm_ema[index], p.c, p.numerator_ratio * eps,
                                          p.min_step_ratio * eps, p.max_step_ratio * eps)
            x_adv = x_start + step.view(-1, *([1] * (x.dim() - 1))) * ascent_direction(gradient, self.norm)
            x_adv = into_ball_and_box(x_adv, x, eps, self.norm)
            self.perturbations[index] = x_adv - x
        ce = F.cross_entropy(self.student(x_adv), y)
        return {"loss": ce, "ce_adversarial": ce, "step_mean": step.mean()}
