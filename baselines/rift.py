"""RiFT: robust critical fine-tuning of the least robustness-critical module, then interpolation."""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from robustbench_aft.method import Method, OptimConfig, afd_lr
from robustbench_aft.params import COUNT, NONNEGATIVE, POSITIVE, PROBABILITY, param, training_attack_params
from robustbench_aft.registry import METHODS
from robustbench_aft.threat import CIFAR_EPS

log = logging.getLogger(__name__)


def project_relative(weight: torch.Tensor, initial: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """Rescale W − W0 to relative Frobenius norm ``max_ratio`` when it is larger (RiFT Eq. 3 constraint)."""
    difference = weight - initial
    ratio = difference.norm() / initial.norm().clamp_min(1e-12)
    if ratio > max_ratio:
        return initial + difference * (max_ratio / ratio)
    return weight


def interpolate_states(start: Dict[str, torch.Tensor], end: Dict[str, torch.Tensor],
                       alpha: float) -> Dict[str, torch.Tensor]:
    """θ(α) = α·θ_end + (1 − α)·θ_start over the whole state dict; integer buffers from the nearer end.

    Zhu et al., "Improving Generalization of Adversarial Training via Robust Critical
    Fine-Tuning", ICCV 2023 (arXiv 2308.02533), Eq. 5. α = 0 and α = 1 return the end points exactly.
    """
    if alpha == 0:
        return {k: v.clone() for k, v in start.items()}
    if alpha == 1:
        return {k: v.clone() for k, v in end.items()}
    return {k: (alpha * end[k] + (1 - alpha) * v) if v.is_floating_point() else (end[k] if alpha >= 0.5 else v).clone()
            for k, v in start.items()}


def choose_alpha(scores: List[Tuple[float, float, float]], tolerance: float) -> float:
    """The α with the best clean accuracy among those whose PGD accuracy is ≥ PGD(α = 0) − tolerance.

    ``scores`` holds (α, clean, pgd). Ties go to the smaller α. This is our explicit rule; the
    official code leaves the choice to the user (methods.md §6.3).
    """
    robust_at_zero = next(pgd for alpha, _, pgd in scores if alpha == 0)
    admissible = [(clean, -alpha, alpha) for alpha, clean, pgd in scores if pgd >= robust_at_zero - tolerance]
    return max(admissible)[2]


@METHODS.register("rift")
class RiFT(Method):
    """RiFT: fine-tune the non-robust-critical module on clean data, then interpolate, ICCV 2023.

    Zhu et al., "Improving Generalization of Adversarial Training via Robust Critical
    Fine-Tuning", https://arxiv.org/abs/2308.02533; official code microsoft/robustlearn ``RiFT/``.
    RiFT starts from an adversarially trained model, so in the AFT pipeline it is chained after
    vAFT (INFERRED from AFD's tables, methods.md §6.4): the first ``1 − rift_fraction`` of the
    run's epochs are vAFT steps; then (1) module robust criticality: for every Conv2d/Linear weight,
    gradient ascent (SGD lr 1, ``mrc_epochs``) on CE over a fixed adversarial set, projected to
    relative norm 0.1; MRC = worst CE − CE before; (2) the module with the lowest MRC is the only
    one trained, on natural images with CE (lr 1e-3, ×0.1 half-way; BN statistics keep updating
    as in the official code); (3) export interpolates θ(α) = α·θ_ft + (1 − α)·θ_AT for α in
    0, 0.1, …, 1 and keeps the best clean accuracy among the α whose PGD-10 accuracy is within
    ``alpha_tolerance`` points of α = 0's, measured on seeded training images (never the test set).
    Corrections: the MRC set is built from training images, not the test split; the α rule is
    explicit; the epoch selection on test accuracy is dropped (the final epoch is used).

    L2 (the official code has none; our choice): the shared L2 PGD training attack in every stage.
    """

    reference = "arXiv 2308.02533; microsoft/robustlearn RiFT/"

    @dataclass
    class Params(training_attack_params(steps=10, step="2/255", source="RiFT/utils.py",
                                        step_source="vAFT; RiFT uses 2/225, a typo for 2/255",
                                        steps_help="PGD steps (upstream vAFT, MRC set, α selection)")):
        rift_fraction: float = param(0.5, "share of the run's epochs spent in RiFT's stage 2 (rest: vAFT)",
                                     "INFERRED (methods.md §6.4)", PROBABILITY)
        rift_lr: float = param(1e-3, "stage-2 learning rate (×0.1 half-way)", "RiFT/main.py default", POSITIVE)
        mrc_epochs: int = param(10, "gradient-ascent epochs per module for MRC", "RiFT/utils.py", COUNT)
        mrc_max_ratio: float = param(0.1, "relative-norm bound of the MRC perturbation", "RiFT/utils.py", POSITIVE)
        probe_size: int = param(512, "training images in the MRC set and the α-selection set",
                                "RiFT/utils.py (batch 512)", COUNT)
        alpha_tolerance: float = param(0.1, "allowed PGD drop (points) when choosing α", "our rule (methods.md §6.3)",
                                       NONNEGATIVE)

    def __init__(self, params: Optional[RiFT.Params] = None, eps: float = CIFAR_EPS,
                 optim: Optional[OptimConfig] = None, norm: str = "Linf") -> None:
        super().__init__(params, eps=eps, optim=optim, norm=norm)
        self.train_set: Optional[Dataset] = None
        self.adversarial_state: Optional[Dict[str, torch.Tensor]] = None
        self.critical_module: Optional[str] = None
        self.chosen_alpha: Optional[float] = None

    def on_fit_start(self, train_set: Dataset) -> None:
        self.train_set = train_set

    def _rift_start_epoch(self) -> int:
        return self.total_epochs - max(1, math.ceil(self.params.rift_fraction * self.total_epochs)) + 1

    def _in_rift_stage(self) -> bool:
        return self.epoch >= self._rift_start_epoch()

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        super().on_epoch_start(epoch, total_epochs)
        if epoch == self._rift_start_epoch() and self.adversarial_state is None:
            self._start_rift_stage()

    def lr_at(self, epoch: int, total_epochs: int, base_lr: float) -> float:
        start = self._rift_start_epoch()
        if epoch < start:
            return afd_lr(epoch, start - 1, base_lr)
        stage_epochs = total_epochs - start + 1
        return self.params.rift_lr * (0.1 if epoch - start >= stage_epochs / 2 else 1.0)

    def _probe(self, offset: int) -> Tuple[torch.Tensor, torch.Tensor]:
        device = next(self.student.parameters()).device
        if self.train_set is None:
            raise RuntimeError("RiFT needs the training set: the engine passes it to on_fit_start")
        generator = torch.Generator().manual_seed(1234 + offset)
        order = torch.randperm(len(self.train_set), generator=generator)[:self.params.probe_size].tolist()
        items = [self.train_set[i] for i in order]
        return (torch.stack([item[0] for item in items]).to(device),
                torch.tensor([item[1] for item in items], device=device))

    def module_robust_criticality(self, x_adv: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        """MRC of every Conv2d/Linear weight of the student on the fixed adversarial set (x_adv, y)."""
        p = self.params
        base = copy.deepcopy(self.student).eval()
        with torch.no_grad():
            reference = F.cross_entropy(base(x_adv), y).item()
        scores = {}
        for name, module in base.named_modules():
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            probe = copy.deepcopy(base).eval()
            weight = dict(probe.named_modules())[name].weight
            for parameter in probe.parameters():
                parameter.requires_grad_(parameter is weight)
            initial = weight.detach().clone()
            optimizer = torch.optim.SGD([weight], lr=1.0)
            worst = reference
            for _ in range(p.mrc_epochs):
                optimizer.zero_grad()
                (-F.cross_entropy(probe(x_adv), y)).backward()
                optimizer.step()
                with torch.no_grad():
                    weight.copy_(project_relative(weight, initial, p.mrc_max_ratio))
                    worst = max(worst, F.cross_entropy(probe(x_adv), y).item())
            scores[name] = worst - reference
        return scores

    def _start_rift_stage(self) -> None:
        self.adversarial_state = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        x, y = self._probe(offset=0)
        x_adv = self.training_attack(x, y)
        scores = self.module_robust_criticality(x_adv, y)
        self.critical_module = min(scores, key=scores.get)
        log.info("RiFT: least robust-critical module %s (MRC %.4f)", self.critical_module, scores[self.critical_module])
        self._train_only_critical_module()

    def _train_only_critical_module(self) -> None:
        trainable = list(dict(self.student.named_modules())[self.critical_module].parameters())
        for parameter in self.student.parameters():
            parameter.requires_grad_(False)
        for parameter in trainable:
            parameter.requires_grad_(True)
        self.optimizers = [torch.optim.SGD(trainable, lr=self.params.rift_lr, momentum=self.optim.momentum,
                                           weight_decay=self.optim.weight_decay)]

    def checkpoint_extras(self) -> Dict[str, Any]:
        if self.adversarial_state is None:
            return {}
        return {"adversarial_state": {k: v.cpu() for k, v in self.adversarial_state.items()},
                "critical_module": self.critical_module}

    def restore_checkpoint_extras(self, extras: Dict[str, Any]) -> None:
        if not extras:
            return
        device = next(self.student.parameters()).device
        self.adversarial_state = {k: v.to(device) for k, v in extras["adversarial_state"].items()}
        self.critical_module = extras["critical_module"]
        self._train_only_critical_module()

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x, y, _ = batch
        if self._in_rift_stage():
            ce = F.cross_entropy(self.student(x), y)
            return {"loss": ce, "ce": ce}
        ce = F.cross_entropy(self.student(self.training_attack(x, y)), y)
        return {"loss": ce, "ce": ce}

    def current_classifier(self) -> nn.Module:
        # The export's interpolation search attacks 11 models; the probe wants the weights as they are.
        return self.student

    def export(self) -> nn.Module:
        if self.adversarial_state is None:
            return self.student
        finetuned = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        x, y = self._probe(offset=1)
        model = copy.deepcopy(self.student).eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        scores = []
        for step in range(11):
            alpha = step / 10
            model.load_state_dict(interpolate_states(self.adversarial_state, finetuned, alpha))
            x_adv = self.training_attack(x, y, model=model)
            with torch.no_grad():
                clean = 100.0 * (model(x).argmax(1) == y).float().mean().item()
                robust = 100.0 * (model(x_adv).argmax(1) == y).float().mean().item()
            scores.append((alpha, clean, robust))
        self.chosen_alpha = choose_alpha(scores, self.params.alpha_tolerance)
        log.info("RiFT: interpolation α = %.1f (clean/PGD by α: %s)", self.chosen_alpha,
                 ", ".join(f"{a:.1f}:{c:.1f}/{r:.1f}" for a, c, r in scores))
        model.load_state_dict(interpolate_states(self.adversarial_state, finetuned, self.chosen_alpha))
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
