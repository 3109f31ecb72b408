"""The feature gap behind AFD: how far adversarial features drift from natural ones.

AFD's motivation (Zhou et al., AAAI 2025, https://arxiv.org/abs/2401.14707, §1 and Fig. 1): during
adversarial fine-tuning the distance between the last-hidden-layer features of natural and
adversarial samples *grows* for the existing methods; AFD is built to shrink it. The engine
measures it at the end of every epoch on a fixed probe set with :class:`FeatureGapProbe`.
"""
from __future__ import annotations

import time
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .attacks import PGD, attacked_chunks

PROBE_SEED = 20240123
CHUNK = 256


def feature_l2_gap(natural_features: torch.Tensor, adversarial_features: torch.Tensor) -> torch.Tensor:
    """Mean over samples of ‖φ(x) − φ(x_adv)‖₂ (the distance plotted in AFD's Fig. 1)."""
    return (natural_features - adversarial_features).norm(dim=1).mean()


def feature_cosine_gap(natural_features: torch.Tensor, adversarial_features: torch.Tensor) -> torch.Tensor:
    """Mean over samples of 1 − cos(φ(x), φ(x_adv)): the gap in direction, blind to feature scale."""
    return (1.0 - F.cosine_similarity(natural_features, adversarial_features, dim=1)).mean()


class FeatureGapProbe:
    """A fixed, seeded set of training images and the PGD that measures the gap on them.

    The images are drawn once (the training split's augmentation, if any, is applied once under a
    fixed seed and then frozen) so that every epoch and every method is measured on the same
    inputs. The attack is the evaluation's PGD-20 (step eps/4, seeded), run in eval mode; it does
    not touch any global random generator, so measuring does not change training.
    """

    def __init__(self, train_set: Dataset, size: int, eps: float, norm: str = "Linf", seed: int = PROBE_SEED) -> None:
        size = min(size, len(train_set))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            order = torch.randperm(len(train_set))[:size].tolist()
            items = [train_set[i] for i in order]
        self.x = torch.stack([item[0] for item in items])
        self.y = torch.tensor([int(item[1]) for item in items])
        self.eps = eps
        self.attack = PGD(eps, norm)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.y)

    def measure(self, model: nn.Module, head_input: Optional[nn.Module] = None) -> Dict[str, float]:
        """``{"l2", "cosine", "head_l2", "head_cosine", "seconds"}`` for ``model`` (an ImageClassifier);
        its mode is restored.

        ``l2``/``cosine`` are measured on φ (``forward_features``), ``head_*`` on what the classifier's
        head reads: ``head_input(φ)`` for a method that puts a map between the two during training
        (AFD's D1, before it is folded into the head), else φ itself, so the two agree.
        """
        start = time.perf_counter()
        device = next(model.parameters()).device
        natural, adversarial = [], []
        for x, _, x_adv in attacked_chunks(self.attack, model, self.x, self.y, self.seed, CHUNK):
            with torch.no_grad():
                natural.append(model.forward_features(x).float())
                adversarial.append(model.forward_features(x_adv).float())
        natural_features, adversarial_features = torch.cat(natural), torch.cat(adversarial)
        natural_input, adversarial_input = natural_features, adversarial_features
        if head_input is not None:
            with torch.no_grad():
                natural_input = head_input(natural_features.to(device)).float()
                adversarial_input = head_input(adversarial_features.to(device)).float()
        return {"l2": float(feature_l2_gap(natural_features, adversarial_features)),
                "cosine": float(feature_cosine_gap(natural_features, adversarial_features)),
                "head_l2": float(feature_l2_gap(natural_input, adversarial_input)),
                "head_cosine": float(feature_cosine_gap(natural_input, adversarial_input)),
                "seconds": time.perf_counter() - start}
