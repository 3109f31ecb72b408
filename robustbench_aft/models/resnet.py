"""CIFAR-style ResNet-18, PreAct ResNet-18 and Wide ResNets (3x3 stem, no max-pool).

The definitions follow the ones used throughout the adversarial-training literature (TRADES, MART,
AFD, RobustBench's ``Standard``): ResNet-18 of He et al. 2016 with a CIFAR stem, PreAct ResNet-18
of He et al. 2016b, and WRN-d-k of Zagoruyko & Komodakis 2016 (dropout 0).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import MODELS
from ._base import ImageClassifier


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class ResNetBody(nn.Module):
    """Stem + four stages of blocks + (for pre-activation) a final BN-ReLU + global average pool."""

    def __init__(self, block: type, num_blocks: List[int], in_channels: int, preact: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = None if preact else nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            stage = []
            for j in range(blocks):
                stage.append(block(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.final_bn = nn.BatchNorm2d(512) if preact else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if self.bn1 is not None:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.final_bn is not None:
            out = F.relu(self.final_bn(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


@MODELS.register("resnet18", min_input_size=1)  # padded stride-2 convs keep >= 1 pixel
def resnet18(num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float]) -> ImageClassifier:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool), 11.2 M parameters; 512-d features."""
    return ImageClassifier(ResNetBody(BasicBlock, [2, 2, 2, 2], in_channels, preact=False), 512, num_classes, mean, std)


@MODELS.register("preactresnet18", min_input_size=1)
def preactresnet18(num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float]) -> ImageClassifier:
    """Pre-activation ResNet-18, CIFAR variant (the fast-AT papers' backbone); 512-d features."""
    return ImageClassifier(ResNetBody(PreActBlock, [2, 2, 2, 2], in_channels, preact=True), 512, num_classes, mean, std)


class WideResNetBody(nn.Module):
    def __init__(self, depth: int, widen_factor: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], widths[0]
        for i, planes in enumerate(widths[1:]):
            blocks = []
            for j in range(n):
                # A WRN block is a pre-activation block (BN-ReLU-conv twice, 1x1 conv shortcut).
                blocks.append(PreActBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(widths[3])
        self.feature_dim = widths[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


@MODELS.register("wrn-28-10", min_input_size=1)
def wrn_28_10(num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float]) -> ImageClassifier:
    """WideResNet-28-10 (36.5 M parameters), RobustBench's CIFAR backbone; 640-d features."""
    body = WideResNetBody(28, 10, in_channels)
    return ImageClassifier(body, body.feature_dim, num_classes, mean, std)


@MODELS.register("wrn-34-10", min_input_size=1)
def wrn_34_10(num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float]) -> ImageClassifier:
    """WideResNet-34-10 (46.2 M parameters), the TRADES/MART/AFD large backbone; 640-d features."""
    body = WideResNetBody(34, 10, in_channels)
    return ImageClassifier(body, body.feature_dim, num_classes, mean, std)
