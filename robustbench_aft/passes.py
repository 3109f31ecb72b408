"""Counting the forward and backward passes a method spends per training image.

The point of adversarial *fine*-tuning is robustness per unit of compute, so the cost column is
counted rather than estimated from the method's description: a PGD-10 method should show 11
forward and 11 backward passes per image, TRADES one more forward for its natural logits, a
teacher-distillation method one more forward through the teacher.

A network's pass is one image going through its stem, the first convolution it registers (the
first linear layer for a network without convolutions): every forward of a classifier or of its
feature extractor goes through the stem once, and a backward pass (to the weights or to the input)
reaches the stem's output once. Passes through layers after the stem only (AFD's heads on cached
features, for instance) are not passes of the network and are not counted.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn


def stem_of(network: nn.Module) -> Optional[nn.Module]:
    """The first ``Conv2d`` registered in ``network`` (else its first ``Linear``; None if neither)."""
    modules = list(network.modules())
    for kind in (nn.Conv2d, nn.Linear):
        for module in modules:
            if isinstance(module, kind):
                return module
    return None


class PassCounter:
    """Counts images through the stems of the given networks while :attr:`enabled`.

    ``forward`` and ``backward`` are image counts summed over the networks (a batch of 128 through
    the student and the teacher is 256 forward passes). Use as a context manager: the hooks are
    removed on exit.
    """

    def __init__(self, networks: List[nn.Module]) -> None:
        self.forward = 0
        self.backward = 0
        self.enabled = True
        self._handles = []
        for network in networks:
            stem = stem_of(network)
            if stem is not None:
                self._handles.append(stem.register_forward_hook(self._count))

    def _count(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        if not self.enabled:
            return
        images = int(output.shape[0])
        self.forward += images
        if output.requires_grad:
            output.register_hook(lambda grad, images=images: self._count_backward(images))

    def _count_backward(self, images: int) -> None:
        if self.enabled:
            self.backward += images

    def per_image(self, images: int) -> Dict[str, float]:
        """``{"forward", "backward"}`` passes per training image."""
        return {"forward": self.forward / max(images, 1), "backward": self.backward / max(images, 1)}

    def __enter__(self) -> "PassCounter":
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def method_networks(method: nn.Module) -> List[nn.Module]:
    """The networks a method runs images through: its direct sub-modules that hold a stem."""
    return [child for child in method.children() if stem_of(child) is not None]
