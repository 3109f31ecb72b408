"""The classifier contract shared by every architecture.

``forward(x) == head(forward_features(x))`` where ``forward_features`` returns the pooled last
hidden layer, shape (B, D) (design.md §4; note that timm's ``forward_features`` is unpooled), and
``head`` is a plain ``nn.Linear``. Inputs are images in [0, 1]; :class:`Normalize` is the first
layer, so attacks and eps work in pixel space.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..registry import MODELS


class Normalize(nn.Module):
    """(x - mean) / std per channel, with the statistics stored as buffers (saved in checkpoints)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageClassifier(nn.Module):
    """Normalize → body (pooled features, (B, D)) → linear head.

    Args:
        body: maps normalised images to pooled features of size ``feature_dim``.
    """

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = body
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.head = nn.Linear(feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled last-hidden-layer features, shape (B, feature_dim)."""
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def build_model(arch: str, num_classes: int, in_channels: int,
                mean: Sequence[float], std: Sequence[float],
                input_shape: Optional[Sequence[int]] = None,
                user_normalisation: bool = False) -> ImageClassifier:
    """Instantiate a registered architecture, or an external one (``timm:``, ``torchvision:``,
    ``py:``; see :mod:`.external`), for a dataset's shape and statistics. ``input_shape`` (C, H, W)
    lets an external network be checked on images of that size once, at build time.
    ``user_normalisation``: ``mean``/``std`` come from ``--mean``/``--std`` and win over the
    statistics an external model declares."""
    from .external import build_external, is_external

    if is_external(arch):
        return build_external(arch, num_classes, in_channels, mean, std, input_shape, user_normalisation)
    builder = MODELS.get(arch)
    return builder(num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)


def canonical_arch(name: str) -> str:
    """The canonical name of a registered architecture or an external one's canonical string."""
    from .external import canonical_external, is_external

    return canonical_external(name) if is_external(name) else MODELS.canonical(name)
