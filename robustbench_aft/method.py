"""The Method contract, the shared training attack and the shared KL.

A Method is an ``nn.Module`` that owns the maths of one AFT method (style.md §9):

* ``Params``: a dataclass of hyper-parameters; every field has a default, a ``help`` and a
  ``source`` in its metadata (``bench list methods`` and ``--set method.field=value`` read them;
  the field machinery is :mod:`.params`).
  A method with a PGD training attack inherits its three fields from
  :func:`training_attack_params` and attacks with :meth:`Method.training_attack` (start rule:
  ``attack_start``), so each baseline file keeps only its own maths.
* ``prepare(model)``: builds what the method trains from the natural pre-trained model. The
  default trains a copy of it; AFD adds its disentangler and a frozen teacher.
* ``training_step(batch) -> dict``: **the one required hook**; ``loss`` plus every named term.
* ``configure_optimizers()`` / ``update(batch)``: by default one SGD over the student and
  zero_grad → backward(loss) → step. A method with an unusual update (AFD's three optimisers)
  overrides both.
* ``lr_at(epoch, total_epochs, base_lr)``: the method's learning-rate rule, **required**: every
  method states its own schedule (:func:`afd_lr`, :func:`arrest_lr` or its own rule).
* ``on_fit_start(train_set)`` / ``on_epoch_start(epoch, total_epochs)``: optional hooks for
  per-example state (ATAS) and epoch-dependent rules (ARREST's noisy replay, ATAS' warm-up).
* ``export() -> nn.Module``: the plain classifier that is evaluated; ``current_classifier()`` a
  cheap one for the per-epoch feature-gap probe (default: the export).
* ``per_example_state()``: tensors indexed by training example, merged across torchrun processes.
* ``checkpoint_extras()`` / ``restore_checkpoint_extras(extras)``: state that is not a parameter
  or buffer (Free-AT's replayed perturbation, ATAS' per-example steps, RiFT's stage) so that a
  resumed run is bit-identical; ``on_epoch_start`` must be idempotent for the same epoch (a run
  resumed inside an epoch calls it again).

The engine owns everything else: devices, the loop, EMA, checkpoints, progress. A method never
moves tensors between devices, writes files or draws progress bars.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from .attacks import NORMS, pgd_steps, random_in_ball
from .errors import ConfigError
from .modes import module_mode
from .params import check_params
from .threat import CIFAR_EPS


@dataclass
class OptimConfig:
    """What the engine hands a method for building its optimisers."""

    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 5e-4


class Method(nn.Module):
    """Base class of AFT methods; see the module docstring for the contract.

    Args:
        params: the method's hyper-parameters (``Params()`` when omitted).
        eps: the run's budget; training attacks scale their eps and step from it.
        optim: optimiser settings for :meth:`configure_optimizers`.
        norm: the run's threat model, ``Linf`` or ``L2``: every training attack runs in it (steps
            along :func:`.attacks.ascent_direction`, projection onto that ball, starts drawn by
            :func:`.attacks.random_in_ball`), with the same step and eps ratios in both norms.
    """

    # Stored with every result (the leaderboard's version column): a method whose maths change
    # declares the next number, so old and new rows are never mixed silently.
    version: ClassVar[int] = 1
    # Paper and official code the implementation follows (shown by `bench list methods`).
    reference: ClassVar[str] = ""
    # True for a method whose definition had to be reconstructed (no official one exists).
    reconstructed: ClassVar[bool] = False
    # Parameter overrides the ``paper`` preset applies per dataset (empty: the defaults are the
    # official values for every dataset).
    paper_presets: ClassVar[Dict[str, Dict[str, Any]]] = {}
    # Whether the evaluated model is an EMA of the weights (the engine keeps the EMA).
    uses_ema: ClassVar[bool] = False
    # Why torch.compile cannot run this method's step (empty: it can); `--compile` then runs it eagerly.
    compile_unsupported: ClassVar[str] = ""
    # Whether ``update`` may be recorded once as a CUDA graph and replayed per batch (``--capture on``,
    # capture.py): true only for an update that reads no tensor value in Python (no ``.item()``, no
    # branching on a tensor), keeps no Python state between batches and indexes no per-example state.
    # Off by default: a step that breaks these rules would replay its first batch's decisions silently.
    capturable: ClassVar[bool] = False
    # The start rule of :meth:`training_attack` (see :func:`pgd_attack`).
    attack_start: ClassVar[str] = "uniform"

    @dataclass
    class Params:
        pass

    def __init__(self, params: Optional[Any] = None, eps: float = CIFAR_EPS,
                 optim: Optional[OptimConfig] = None, norm: str = "Linf") -> None:
        super().__init__()
        self.params = params if params is not None else self.Params()
        check_params(type(self).__name__, self.params)
        if norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.eps = eps
        self.norm = norm
        self.optim = optim or OptimConfig()
        self.optimizers: List[torch.optim.Optimizer] = []
        self.student: nn.Module = nn.Identity()
        self.epoch = 1
        self.total_epochs = 20

    @classmethod
    def unsupported_reason(cls, model: nn.Module) -> Optional[str]:
        """Why this method cannot fine-tune ``model`` (e.g. it needs BatchNorm layers), or None.
        Checked before any work: ``bench run`` asks it of every method before pre-training."""
        return None

    def prepare(self, model: nn.Module) -> None:
        """Build the trainable network from the natural pre-trained ``model`` (left untouched)."""
        self.student = copy.deepcopy(model)

    def make_teacher(self, model: nn.Module) -> None:
        """Keep a frozen copy of the pre-trained model as ``self.teacher`` (always in eval mode)."""
        self.teacher = copy.deepcopy(model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Method":
        super().train(mode)
        # A frozen teacher always runs on its running statistics, whatever the student's mode.
        teacher = self._modules.get("teacher")
        if teacher is not None:
            teacher.eval()
        return self

    def on_fit_start(self, train_set: Dataset) -> None:
        """Called once after ``prepare`` with the indexed training set (per-example state, probe sets)."""

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """Called before each epoch (1-based); methods with epoch-dependent rules read these."""
        self.epoch = epoch
        self.total_epochs = total_epochs

    def official_epoch(self) -> int:
        """The current epoch on the official 20-epoch scale (see :func:`afd_lr`)."""
        return _epoch_on_20_scale(self.epoch, self.total_epochs)

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def training_attack(self, x: torch.Tensor, y: torch.Tensor,
                        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                        model: Optional[nn.Module] = None) -> torch.Tensor:
        """The method's PGD training attack on ``model`` (default: the student) with BN on running
        statistics: ``attack_steps`` steps of ``attack_step_ratio``·eps in the ball of
        ``attack_eps_ratio``·eps (the run's eps when the method has no such field), starting by
        :attr:`attack_start` (``Params`` from :func:`training_attack_params`)."""
        model = self.student if model is None else model
        p = self.params
        eps = p.attack_eps_ratio * self.eps if hasattr(p, "attack_eps_ratio") else self.eps
        return pgd_attack(model, model, x, y, loss_fn=loss_fn, eps=eps, step_size=p.attack_step_ratio * self.eps,
                          steps=p.attack_steps, start=self.attack_start, bn_mode="eval", norm=self.norm)

    def configure_optimizers(self) -> List[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.student.parameters(), lr=self.optim.lr, momentum=self.optim.momentum,
                                weight_decay=self.optim.weight_decay)]

    def update(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """One optimisation step on ``batch``; returns the detached terms of :meth:`training_step`."""
        terms = self.training_step(batch)
        optimizer, = self.optimizers
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        return {name: value.detach() for name, value in terms.items()}

    def lr_at(self, epoch: int, total_epochs: int, base_lr: float) -> float:
        """The learning rate of ``epoch`` (1-based) of ``total_epochs``, from the run's ``base_lr``.

        No default: the official schedules differ from method to method (AFD's table, ARREST's
        reset to 0.02, RiFT's stages), so a method that inherited one would train on another
        method's schedule without saying so."""
        raise NotImplementedError(f"{type(self).__name__} states no learning-rate schedule: define lr_at, e.g. "
                                  "`return afd_lr(epoch, total_epochs, base_lr)` (AFD's) or arrest_lr (vAFT's)")

    def export(self) -> nn.Module:
        """The plain classifier to evaluate."""
        return self.student

    def current_classifier(self) -> nn.Module:
        """A plain classifier with the current weights, cheap enough to call after every epoch
        (the feature-gap probe); by default the export. Must not change the method's state."""
        return self.export()

    def head_input(self) -> Optional[nn.Module]:
        """The map from the features φ to what the head reads while training (AFD: D1), for the
        feature-gap probe; None when the head reads φ itself."""
        return None

    def trainable_state(self) -> nn.Module:
        """The module whose weights the engine averages (EMA) and checkpoints."""
        return self.student

    def per_example_state(self) -> Dict[str, torch.Tensor]:
        """Tensors indexed by training-set position along dim 0 (ATAS' perturbations and step
        statistics). Under torchrun each process updates the rows of its shard; the engine merges
        them across processes after every epoch."""
        return {}

    def checkpoint_extras(self) -> Dict[str, Any]:
        """State outside parameters and buffers that training depends on (replayed perturbations,
        per-example statistics of variable shape, stage switches); saved in every checkpoint."""
        return {}

    def restore_checkpoint_extras(self, extras: Dict[str, Any]) -> None:
        """Inverse of :meth:`checkpoint_extras`; called after ``prepare``, ``configure_optimizers`` and
        ``on_fit_start`` and before the optimiser states are loaded (a method that switches optimisers
        mid-run rebuilds them here)."""

    def resume_state(self) -> Dict[str, Any]:
        """Everything needed to continue training bit for bit, except the optimisers (the engine
        saves those) and the frozen teacher, which is rebuilt from the pre-trained source."""
        modules = {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}
        return {"modules": modules, "extras": self.checkpoint_extras()}

    def load_resume_state(self, state: Dict[str, Any]) -> None:
        self.restore_checkpoint_extras(state["extras"])
        missing, unexpected = self.load_state_dict(state["modules"], strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit {type(self).__name__}: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")


def _epoch_on_20_scale(epoch: int, total_epochs: int) -> int:
    # The official schedules are written for 20 epochs; a shorter or longer run follows the same
    # shape by mapping its epoch onto that scale.
    return epoch if total_epochs == 20 else max(1, math.ceil(epoch * 20 / total_epochs))


def afd_lr(epoch: int, total_epochs: int, base_lr: float) -> float:
    """AFD ``tl+sl.py``: unchanged for e ≤ 10, ×0.8 at e = 11, halved at every odd e ≥ 13 (cumulative)."""
    e = _epoch_on_20_scale(epoch, total_epochs)
    lr = base_lr
    if e >= 11:
        lr *= 0.8
    for odd in range(13, e + 1, 2):
        lr *= 0.5
    return lr


def arrest_lr(epoch: int, total_epochs: int, base_lr: float) -> float:
    """AFD's ``ARREST.py`` (vAFT): base lr for e ≤ 10, lr set to 0.02 at e = 11, halved at every odd e ≥ 13."""
    e = _epoch_on_20_scale(epoch, total_epochs)
    if e <= 10:
        return base_lr
    lr = 0.02
    for odd in range(13, e + 1, 2):
        lr *= 0.5
    return lr


START_RULES = ("uniform", "uniform_clipped", "gaussian", "zero")


def pgd_attack(forward: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, x: torch.Tensor,
               y: torch.Tensor, *, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], eps: float,
               step_size: float, steps: int, start: str, bn_mode: str, norm: str = "Linf") -> torch.Tensor:
    """The training-time PGD attack, with the start rule, BN mode and norm named explicitly.

    Args:
        forward: maps images to logits (e.g. AFD's C∘D1∘φ); gradients flow through it to the input.
        module: the module whose train/eval mode is set to ``bn_mode`` for the attack and restored.
        loss_fn: ``loss_fn(logits, y)`` to ascend; only the direction of its input gradient is used
            (its sign in L∞, the normalised gradient in L2).
        start: ``uniform`` (x + U(−ε, ε), not clipped before the first step: AFD, vAFT; in L2 a
            uniform random point of the L2 ball), ``uniform_clipped`` (clip01 of that: TWINS),
            ``gaussian`` (x + 0.001·N(0, I): TRADES, MART; the same in both norms, as TRADES'
            official ``l_2`` branch starts) or ``zero``.
        bn_mode: ``eval`` (BN running statistics, untouched) or ``train``.
        norm: ``Linf`` or ``L2`` (normalised-gradient steps, radial projection).

    The steps are :func:`.attacks.pgd_steps` (ascend, project onto the ε-ball, clip to [0, 1]), the
    loop the evaluation attacks run too; a final clip as the official scripts do. Random starts
    draw from torch's global generator (seeded by the engine).
    """
    if start not in START_RULES:
        raise ValueError(f"start must be one of {START_RULES}, got {start!r}")
    if bn_mode not in ("eval", "train"):
        raise ValueError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")
    with module_mode(module, bn_mode == "train"):
        x = x.detach()
        if start == "uniform":
            x_adv = x + random_in_ball(x, eps, norm)
        elif start == "uniform_clipped":
            x_adv = (x + random_in_ball(x, eps, norm)).clamp(0, 1)
        elif start == "gaussian":
            x_adv = x + 0.001 * torch.randn_like(x)
        else:
            x_adv = x.clone()
        x_adv = pgd_steps(forward, x, y, x_adv, loss_fn=loss_fn, eps=eps, step_size=step_size, steps=steps, norm=norm)
        # The official scripts clip once more, which matters only when steps = 0 (an unclipped start).
        return x_adv.clamp(0, 1)


def summed_kl(target_probabilities: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Σ over the batch and the classes of KL(target ‖ softmax(logits)), as PyTorch's
    ``kl_div(log_softmax(logits), target, reduction="sum")``: the one KL that TRADES (Zhang et al.,
    ICML 2019, Eq. 5), TWINS-TRADES (Liu et al., CVPR 2023) and knowledge distillation (Hinton et
    al. 2015, Eq. 2) compute; each divides it by its own batch size."""
    return F.kl_div(F.log_softmax(logits, dim=1), target_probabilities, reduction="sum")
