"""TWINS: two-wing normalisation fine-tuning (TWINS-AT and TWINS-TRADES)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_aft.method import Method, afd_lr, summed_kl
from robustbench_aft.params import NONNEGATIVE, POSITIVE, param, training_attack_params
from robustbench_aft.registry import METHODS


class TwoWingBatchNorm(nn.Module):
    """A BatchNorm2d with a second, frozen-statistics wing (TWINS ``MixBatchNorm2d``).

    The adaptive wing is the ordinary BN (batch statistics in training, running ones in eval).
    The frozen wing always normalises with the pre-trained running mean/var and never updates
    them; its affine γ/β start at the pre-trained values and are trainable. In train mode the
    first half of the batch goes through the frozen wing and the second half through the adaptive
    one; in eval mode everything goes through the adaptive wing (the Adaptive Net is evaluated).
    """

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.adaptive = copy.deepcopy(bn)
        self.register_buffer("frozen_mean", bn.running_mean.detach().clone())
        self.register_buffer("frozen_var", bn.running_var.detach().clone())
        self.frozen_weight = nn.Parameter(bn.weight.detach().clone())
        self.frozen_bias = nn.Parameter(bn.bias.detach().clone())
        self.bn_eps = bn.eps

    def frozen(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.frozen_mean, self.frozen_var, self.frozen_weight, self.frozen_bias,
                            training=False, eps=self.bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.adaptive(x)
        half = x.shape[0] // 2
        return torch.cat([self.frozen(x[:half]), self.adaptive(x[half:])])


def _replace_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, TwoWingBatchNorm(child))
        else:
            _replace_batchnorm(child)


def _adaptive_only(module: nn.Module) -> nn.Module:
    plain = copy.deepcopy(module)

    def strip(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, TwoWingBatchNorm):
                setattr(parent, name, child.adaptive)
            else:
                strip(child)

    strip(plain)
    return plain


def twins_at_loss(logits_frozen: torch.Tensor, labels_frozen: torch.Tensor, logits_adaptive: torch.Tensor,
                  labels_adaptive: torch.Tensor, lambda_twins: float) -> torch.Tensor:
    """λ·CE(frozen half) + CE(adaptive half), each a mean over its half.

    Liu et al., "TWINS: A Fine-Tuning Framework for Improved Transferability of Adversarial
    Robustness and Generalization", CVPR 2023 (arXiv 2303.11135), Eq. 6; ``train-TWINS-AT.py``.
    """
    return (lambda_twins * F.cross_entropy(logits_frozen, labels_frozen)
            + F.cross_entropy(logits_adaptive, labels_adaptive))


def twins_kl(logits_natural: torch.Tensor, logits_adversarial: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Σ_i KL(softmax(n_i) ‖ softmax(a_i)) / B over one half (``train-TWINS-TRADES.py`` divides by the full batch)."""
    return summed_kl(F.softmax(logits_natural, dim=1), logits_adversarial) / batch_size


class _TWINS(Method):
    """Shared parts of TWINS-AT and TWINS-TRADES: the two-wing BN, the attack, the export.

    L2 (the official code has none; our choice): the shared L2 PGD, its clipped uniform start
    drawn uniformly in the L2 ball.
    """

    # train.sh: high-resolution datasets use λ = 0.4 and weight decay 1e-3 (methods.md §5.5).
    paper_presets = {"tinyimagenet": {"lambda_twins": 0.4, "weight_decay": 1e-3}}
    attack_start = "uniform_clipped"

    @dataclass
    class Params(training_attack_params(steps=10, step="2/255", eps="0.0314", source="src/argument.py default",
                                        eps_source="TWINS_cifar/train.sh")):
        lambda_twins: float = param(1.0, "weight of the frozen wing's loss (λ)", "TWINS_cifar/train.sh", NONNEGATIVE)
        lr: float = param(0.003, "base learning rate (replaces the run's; AFD's schedule shape)",
                          "TWINS_cifar/train.sh", POSITIVE)
        weight_decay: float = param(1e-5, "weight decay (replaces the run's)", "TWINS_cifar/train.sh", NONNEGATIVE)

    @classmethod
    def unsupported_reason(cls, model: nn.Module) -> Optional[str]:
        if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
            return ("it splits every BatchNorm2d into a frozen and an adaptive wing, and this network has no "
                    "BatchNorm2d (a ViT, for instance)")
        return None

    def prepare(self, model: nn.Module) -> None:
        self.student = copy.deepcopy(model)
        _replace_batchnorm(self.student)

    def configure_optimizers(self) -> List[torch.optim.Optimizer]:
        # The frozen wing normalises with fixed statistics, so it diverges at the run's usual lr
        # (0.025 made the frozen-wing CE explode on digits); the official optimiser is kept.
        return [torch.optim.SGD(self.student.parameters(), lr=self.params.lr, momentum=self.optim.momentum,
                                weight_decay=self.params.weight_decay)]

    def lr_at(self, epoch: int, total_epochs: int, base_lr: float) -> float:
        return afd_lr(epoch, total_epochs, self.params.lr)

    def export(self) -> nn.Module:
        return _adaptive_only(self.student)


@METHODS.register("twins-at")
class TWINSAT(_TWINS):
    """TWINS-AT: PGD-AT where half of each batch uses the frozen pre-trained BN statistics, CVPR 2023.

    Liu et al., "TWINS: A Fine-Tuning Framework for Improved Transferability of Adversarial
    Robustness and Generalization", https://arxiv.org/abs/2303.11135; official code
    ziquanliu/CVPR2023-TWINS ``TWINS_cifar/train-TWINS-AT.py``. Threat model L∞. Every
    BatchNorm2d becomes two wings sharing the convolutions: the frozen wing (pre-trained running
    statistics, never updated; trainable affine) and the adaptive wing; both start as the
    pre-trained BN. Attack: eval mode (adaptive wing), start clip01(x + U(−ε, ε)), 10 steps of
    2/255, eps 0.0314. The Adaptive Net is exported. INFERRED toolkit setting (methods.md §5.5):
    the pre-trained head is kept; the official optimiser (lr 0.003, wd 1e-5) is kept with AFD's
    schedule shape over the run's epochs instead of the transfer recipe's 60 epochs with steps at
    30 and 50 (at the run's lr 0.025 the frozen wing diverged on digits). Recorded with every run.
    """

    reference = "arXiv 2303.11135; ziquanliu/CVPR2023-TWINS train-TWINS-AT.py"
    capturable = True

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x, y, _ = batch
        x_adv = self.training_attack(x, y)
        logits = self.student(x_adv)
        half = x.shape[0] // 2
        frozen = F.cross_entropy(logits[:half], y[:half])
        adaptive = F.cross_entropy(logits[half:], y[half:])
        loss = twins_at_loss(logits[:half], y[:half], logits[half:], y[half:], self.params.lambda_twins)
        return {"loss": loss, "ce_frozen": frozen, "ce_adaptive": adaptive}


@METHODS.register("twins-trades")
class TWINSTRADES(_TWINS):
    """TWINS-TRADES: TRADES with the two-wing BN (frozen and adaptive halves), CVPR 2023.

    Liu et al., https://arxiv.org/abs/2303.11135; official code ziquanliu/CVPR2023-TWINS
    ``TWINS_cifar/train-TWINS-TRADES.py``. Same two-wing BN and the same CE attack as
    TWINS-AT (not TRADES' KL attack). Loss λ·CE(n_F) + CE(n_A) + β·[λ·S(n_F, a_F) + S(n_A, a_A)]
    with S the summed KL of a half divided by the batch size; natural softmax not detached.
    Deviation: the official script divides by the *configured* batch size (128) also on the last,
    smaller batch; we divide by the actual batch size (identical on every full batch).
    """

    reference = "arXiv 2303.11135; ziquanliu/CVPR2023-TWINS train-TWINS-TRADES.py"
    capturable = True

    @dataclass
    class Params(_TWINS.Params):
        beta: float = param(6.0, "weight of the KL terms", "train-TWINS-TRADES.py default (beta_trades)", NONNEGATIVE)

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x, y, _ = batch
        p = self.params
        x_adv = self.training_attack(x, y)
        natural = self.student(x)
        adversarial = self.student(x_adv)
        half, size = x.shape[0] // 2, x.shape[0]
        ce = twins_at_loss(natural[:half], y[:half], natural[half:], y[half:], p.lambda_twins)
        kl = (p.lambda_twins * twins_kl(natural[:half], adversarial[:half], size)
              + twins_kl(natural[half:], adversarial[half:], size))
        return {"loss": ce + p.beta * kl, "ce_natural": ce, "kl_robust": kl}
