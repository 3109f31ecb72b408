"""The classifier contract shared by every architecture.

``forward(x) == head(forward_features(x))`` where ``forward_features`` returns the pooled last
hidden layer, shape (B, D) (design.md §4; note that timm's ``forward_features`` is unpooled), and
``head`` is a plain ``nn.Linear``. Inputs are images in [0, 1]; :class:`Normalize` is the first
layer, so attacks and eps work in pixel space.

A leaf: it imports nothing from the package, so every architecture file (and :mod:`.external`)
can build on it; building by name is :mod:`.factory`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


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
