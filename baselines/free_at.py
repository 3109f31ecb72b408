"""Free-AT: adversarial training "for free" by replaying each minibatch m times."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch.nn import functional as F

from robustbench_aft.attacks import ascent_direction, project
from robustbench_aft.method import Method, OptimConfig, afd_lr
from robustbench_aft.params import COUNT, POSITIVE, param
from robustbench_aft.registry import METHODS
from robustbench_aft.threat import CIFAR_EPS


def free_perturbation_step(delta: torch.Tensor, input_gradient: torch.Tensor, step: float, eps: float,
                           norm: str = "Linf") -> torch.Tensor:
    """δ ← clip_[−ε, ε](δ + step·sign(∇_δ CE)): the stored δ is clipped to the ε-box only, not to [0, 1].

    Shafahi et al., "Adversarial Training for Free!", NeurIPS 2019 (arXiv 1904.12843), Algorithm 1.
    In L2 (the official code has none; our generalisation): δ + step·∇/‖∇‖₂, projected onto the L2 ball.
    """
    return project(delta + step * ascent_direction(input_gradient, norm), eps, norm)


@METHODS.register("free-at")
class FreeAT(Method):
    """Free-AT: each minibatch replayed m times, one forward/backward giving both gradients, NeurIPS 2019.

    Shafahi et al., "Adversarial Training for Free!", https://arxiv.org/abs/1904.12843; official
    code ashafahi/free_adv_train (TF, CIFAR) and mahyarnajibi/FreeAdversarialTraining (PyTorch).
    Threat model L∞ (the official one); in L2 the step is ε along the normalised gradient and δ is
    projected onto the L2 ball (:func:`free_perturbation_step`). A persistent perturbation with the
    shape of one minibatch (indexed by position in the batch) starts at zero and carries over
    minibatches and epochs; every replay trains on clip01(x + δ) in train mode, updates δ with step
    ε, then steps the weights with the gradient taken at the old δ. Applied as fine-tuning from the
    natural model (INFERRED toolkit setting, methods.md §9.2): every training image is seen
    ``epochs`` times, each minibatch replayed m = 8 times, so Free-AT makes m× the optimiser steps
    of the other methods at a cost of m forward/backward passes per minibatch (PGD-10 AT needs 11).
    The budget is recorded with the run.
    """

    reference = "arXiv 1904.12843; ashafahi/free_adv_train"

    @dataclass
    class Params:
        replays: int = param(8, "replays m of each minibatch", "free_adv_train config.py (CIFAR)", COUNT)
        step_ratio: float = param(1.0, "perturbation step / eps", "free_adv_train config.py (step = ε)", POSITIVE)

    def __init__(self, params: Optional[FreeAT.Params] = None, eps: float = CIFAR_EPS,
                 optim: Optional[OptimConfig] = None, norm: str = "Linf") -> None:
        super().__init__(params, eps=eps, optim=optim, norm=norm)
        self.delta: Optional[torch.Tensor] = None

    def lr_at(self, epoch: int, total_epochs: int, base_lr: float) -> float:
        """AFD's schedule, the run's shared budget, instead of Free-AT's from-scratch schedule."""
        return afd_lr(epoch, total_epochs, base_lr)

    def checkpoint_extras(self) -> Dict[str, Any]:
        return {"delta": None if self.delta is None else self.delta.detach().cpu()}

    def restore_checkpoint_extras(self, extras: Dict[str, Any]) -> None:
        device = next(self.student.parameters()).device
        self.delta = None if extras["delta"] is None else extras["delta"].to(device)

    def _perturbation(self, x: torch.Tensor) -> torch.Tensor:
        if self.delta is None or self.delta.shape[1:] != x.shape[1:] or self.delta.shape[0] < x.shape[0]:
            self.delta = torch.zeros_like(x)
        return self.delta[:x.shape[0]]

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """One replay: CE on clip01(x + δ); δ is updated from the same backward pass in ``update``."""
        x, y, _ = batch
        x_perturbed = (x + self._perturbation(x)).clamp(0, 1).requires_grad_(True)
        ce = F.cross_entropy(self.student(x_perturbed), y)
        return {"loss": ce, "ce_replay": ce, "_input": x_perturbed}

    def update(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x = batch[0]
        optimizer, = self.optimizers
        eps = self.eps
        total = torch.zeros((), device=x.device)
        for _ in range(self.params.replays):
            terms = self.training_step(batch)
            x_perturbed = terms.pop("_input")
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            with torch.no_grad():
                self.delta[:x.shape[0]] = free_perturbation_step(self.delta[:x.shape[0]], x_perturbed.grad,
                                                                 self.params.step_ratio * eps, eps, self.norm)
            optimizer.step()
            total = total + terms["loss"].detach()
        mean = total / self.params.replays
        return {"loss": mean, "ce_replay": mean}
