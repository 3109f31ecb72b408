"""Build an architecture by name: a registered one (``MODELS``) or an external one (``timm:``,
``torchvision:``, ``py:``; :mod:`.external`).

Here rather than in :mod:`._base` so that the classifier contract stays a leaf: :mod:`.external`
builds on ``ImageClassifier``, and this dispatch builds on both.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..registry import MODELS
from ._base import ImageClassifier
from .external import build_external, canonical_external, is_external


def build_model(arch: str, num_classes: int, in_channels: int,
                mean: Sequence[float], std: Sequence[float],
                input_shape: Optional[Sequence[int]] = None,
                user_normalisation: bool = False) -> ImageClassifier:
    """Instantiate a registered architecture, or an external one (``timm:``, ``torchvision:``,
    ``py:``; see :mod:`.external`), for a dataset's shape and statistics. ``input_shape`` (C, H, W)
    lets an external network be checked on images of that size once, at build time.
    ``user_normalisation``: ``mean``/``std`` come from ``--mean``/``--std`` and win over the
    statistics an external model declares."""
    if is_external(arch):
        return build_external(arch, num_classes, in_channels, mean, std, input_shape, user_normalisation)
    builder = MODELS.get(arch)
    return builder(num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)


def canonical_arch(name: str) -> str:
    """The canonical name of a registered architecture or an external one's canonical string."""
    return canonical_external(name) if is_external(name) else MODELS.canonical(name)
