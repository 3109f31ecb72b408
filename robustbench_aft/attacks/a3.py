"""A3, Adaptive Auto Attack (Liu et al., "Practical Evaluation of Adversarial Robustness via Adaptive Auto
Attack", CVPR 2022, arXiv 2203.05154; official code liuye6666/adaptive_auto_attack,
``Adaptive_Auto_Attack_main.py``), re-implemented from the paper and that file's algorithm (methods.md §17).

Its own column ``a3``: never reported as (or averaged into) ``aa``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..registry import ATTACKS
from ._base import Attack, ascent_direction, into_ball_and_box, random_in_ball

# The official schedule of the 13 outer rounds when the adaptive directions rarely succeed (its
# non-"bias" branch): the share alpha of the still-robust points attacked in the round (the rest are
# discarded, lowest best margin first) and the cap on margin steps. Round 0 runs 8 plain margin steps
# from a random start; every later round starts with ADI_STEPS adaptive-direction steps.
ALPHAS = (1.0, 1.0, 1.0, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.065, 0.03)
MAX_STEPS = (8, 8, 8, 25, 30, 30, 35, 40, 45, 50, 50, 55, 60)
ADI_STEPS = 7
# Every restart takes at least this many steps (the official floor of 15 iterations), unless its
# round's cap is lower (round 0).
MIN_STEPS = 15
# The weight of the biased entries of an adaptive direction, times num_classes / 10 (official values).
TARGET_WEIGHT = 0.8


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample margin max_{j≠y} z_j − z_y: positive exactly where the point is misclassified."""
    logits = logits.float()
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, labels[:, None], float("-inf"))
    return other.max(dim=1).values - true_logit


def cosine_step(step: int, steps: int, eps: float) -> float:
    """The step size of margin step ``step`` of ``steps``: cosine decay from eps to eps/1000 (eps/10 for
    restarts of at most 10 steps), the official ``min + (max − min)(1 + cos(π s / (K + 1))) / 2``."""
    smallest = eps * (0.1 if steps <= 10 else 0.001)
    return smallest + (eps - smallest) * (1 + math.cos(math.pi * step / (steps + 1))) / 2


@ATTACKS.register("a3")
class AdaptiveAutoAttack(Attack):
    """A3, Adaptive Auto Attack (Liu et al., CVPR 2022): margin PGD from adaptive ODI starts, own column.

    Margin-loss PGD restarts from adaptive output-diversified starts, cosine step decay, early stop per
    point, and online discarding of the points least likely to break.

    Threat model L∞ or L2, white-box. Defaults are the official ones: 100 backward passes per image on
    average over the batch, 13 rounds (:data:`ALPHAS`, :data:`MAX_STEPS`), 7 ADI steps of size eps.
    Differs from the official code (methods.md §17): statistics and discarding are per evaluation
    batch, not over the whole test set; the direction signs use the simplified statistic of §17.3;
    one forward per step (the gradient's forward also checks the iterate) instead of two.
    """

    column_position = 35

    def __init__(self, eps: float, norm: str = "Linf", batch_size: int = 256, average_backward: float = 100.0,
                 rounds: int = len(ALPHAS), adi_steps: int = ADI_STEPS, min_kept: int = 1) -> None:
        super().__init__(eps, norm, batch_size)
        if not 1 <= rounds <= len(ALPHAS):
            raise ValueError(f"rounds must be in 1..{len(ALPHAS)}, got {rounds}")
        if average_backward < 0 or adi_steps < 0 or min_kept < 1:
            raise ValueError("average_backward and adi_steps must be >= 0 and min_kept >= 1")
        self.average_backward = float(average_backward)
        self.rounds = int(rounds)
        self.adi_steps = int(adi_steps)
        self.min_kept = int(min_kept)

    def budget(self, num_classes: int = 10) -> Dict[str, Any]:
        return {"average_backward_per_image": self.average_backward, "rounds": self.rounds,
                "adi_steps": self.adi_steps, "adi_step": "1·eps", "step": "cosine eps → eps/1000",
                "loss": "margin", "discard": "lowest best margin, alpha 1 → 0.03", "min_kept": self.min_kept,
                "source": "Liu et al., CVPR 2022 (liuye6666/adaptive_auto_attack), re-implemented"}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.eps == 0 or len(y) == 0:
            return x.clone()
        state = _State(model, x, y, self)
        state.check_start(generator)
        for round_number in range(self.rounds):
            if not bool(state.robust.any()) or state.used_backward >= state.total_backward:
                break
            state.run_round(round_number, generator)
        return state.x_adv


class _State:
    """One batch under attack: the best iterate and margin per point, which points are broken, the
    backward passes spent, and the statistics that make the directions adaptive."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AdaptiveAutoAttack) -> None:
        self.model, self.x, self.y, self.attack = model, x, y, attack
        self.eps, self.norm = attack.eps, attack.norm
        with torch.no_grad():
            logits = model(x)
        self.num_classes = logits.shape[1]
        self.best_margin = margin(logits, y)
        self.robust = self.best_margin <= 0  # already misclassified points are never attacked
        self.x_adv = x.clone()
        self.total_backward = attack.average_backward * len(y)
        self.used_backward = 0.0
        # Summed direction weights, over points the adaptive steps broke, on the class each one ended
        # up in (wrong) and on its true class (true): their signs orient the biased entries (§17.3).
        self.wrong_weight = 0.0
        self.true_weight = 0.0
        self.ranked: Optional[torch.Tensor] = None

    def _record(self, index: torch.Tensor, x_new: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Keep the best iterate of points ``index`` (global positions) at ``x_new``; returns the mask of
        those now misclassified, which leave the attack."""
        values = margin(logits.detach(), self.y[index])
        better = values > self.best_margin[index]
        self.best_margin[index[better]] = values[better]
        self.x_adv[index[better]] = x_new[better].detach().to(self.x_adv.dtype)
        broken = values > 0
        self.robust[index[broken]] = False
        return broken

    def check_start(self, generator: torch.Generator) -> None:
        """The official first look: (L∞) a random corner of the ball, which breaks the weakest points at
        one forward; its logits rank every point's classes, the order adaptive targets cycle through."""
        index = self.robust.nonzero().flatten()
        if self.norm == "Linf":
            signs = torch.rand(self.x.shape, generator=generator, device=self.x.device, dtype=self.x.dtype) * 2 - 1
            start = into_ball_and_box(self.x + self.eps * signs.sign(), self.x, self.eps, self.norm)
        else:
            start = self.x
        with torch.no_grad():
            logits = self.model(start)
        self.ranked = logits.float().argsort(dim=1, descending=True)
        if len(index):
            self._record(index, start[index], logits[index])

    def _directions(self, index: torch.Tensor, round_number: int, generator: torch.Generator) -> torch.Tensor:
        """ODI's random output direction w ~ U(−1, 1)^C per point; from round 2 on (when statistics of
        earlier rounds exist), biased: the true class's weight drawn from (C/10)·U(−0.1, 0.5) or
        (C/10)·U(−0.5, 0.1), and the weight of one target class (the k-th most likely other class,
        k cycling with the round) set to ±0.8·C/10, signs from the successful directions so far."""
        n, classes = len(index), self.num_classes
        device = self.x.device
        w = torch.rand((n, classes), generator=generator, device=device) * 2 - 1
        if round_number < 2 or self.ranked is None or classes < 2:
            return w
        scale = classes / 10
        low, high = (-0.1, 0.5) if self.true_weight > 0 else (-0.5, 0.1)
        rows = torch.arange(n, device=device)
        true_draw = low + (high - low) * torch.rand(n, generator=generator, device=device)
        w[rows, self.y[index]] = scale * true_draw
        cycle = min(classes - 1, 9 if classes <= 10 else 14 if classes <= 100 else 20)
        rank = 1 + (round_number - 2) % cycle
        target = self.ranked[index, rank]
        # The rank-1 class of a point the start already moved is its true class: skip to the next one.
        target = torch.where(target == self.y[index], self.ranked[index, 0], target)
        w[rows, target] = scale * TARGET_WEIGHT * (1.0 if self.wrong_weight >= 0 else -1.0)
        return w

    def run_round(self, round_number: int, generator: torch.Generator) -> None:
        attack = self.attack
        robust = self.robust.nonzero().flatten()
        # Online discarding: only the share alpha of the still-robust points with the highest best margin
        # (the closest to breaking) is attacked; the rest are unlikely to break in the remaining budget.
        keep = min(len(robust), max(attack.min_kept, math.ceil(ALPHAS[round_number] * len(robust))))
        order = self.best_margin[robust].argsort(descending=True)
        index = robust[order[:keep]].sort().values
        adi = 0 if round_number == 0 else attack.adi_steps
        rounds_left = attack.rounds - round_number
        remaining = self.total_backward - self.used_backward
        affordable = int(remaining / (rounds_left * max(1, keep)))
        steps = min(max(affordable - adi, MIN_STEPS), MAX_STEPS[round_number])
        directions = self._directions(index, round_number, generator)
        x_start = self.x[index]
        noise = random_in_ball(x_start, self.eps, self.norm, generator)
        # Draw the start for the whole restart before any step, so the random stream does not depend on
        # how many points break early.
        self._restart(index, (x_start + noise).clamp(0, 1), directions, adi, steps)

    def _restart(self, index: torch.Tensor, x_now: torch.Tensor, directions: torch.Tensor, adi: int,
                 steps: int) -> None:
        active = torch.ones(len(index), dtype=torch.bool, device=self.x.device)
        for step in range(adi + steps):
            if not bool(active.any()):
                return
            where = active.nonzero().flatten()
            points = index[where]
            x_var = x_now[where].detach().requires_grad_(True)
            logits = self.model(x_var)
            broken = self._record(points, x_var, logits)
            if step < adi:
                objective = (logits.float() * directions[where]).sum()
            else:
                objective = margin(logits, self.y[points]).sum()
            grad, = torch.autograd.grad(objective, x_var)
            self.used_backward += len(points)
            if adi and bool(broken.any()):  # what the adaptive directions of this round achieved
                hit = where[broken]
                wrong = logits.detach().argmax(dim=1)[broken]
                self.wrong_weight += float(directions[hit, :].gather(1, wrong[:, None]).sum())
                self.true_weight += float(directions[hit, :].gather(1, self.y[points[broken]][:, None]).sum())
            size = self.eps if step < adi else cosine_step(step - adi, steps, self.eps)
            with torch.no_grad():
                moved = into_ball_and_box(x_var + size * ascent_direction(grad, self.norm), self.x[points],
                                          self.eps, self.norm)
            x_now = x_now.clone()
            x_now[where] = moved
            active[where[broken]] = False
        where = active.nonzero().flatten()
        if len(where):  # the last step's iterate, checked once
            with torch.no_grad():
                logits = self.model(x_now[where])
            self._record(index[where], x_now[where], logits)


__all__: List[str] = ["AdaptiveAutoAttack", "cosine_step", "margin"]
