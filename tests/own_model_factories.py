"""Small ``py:`` models for the own-model checks (``py:tests.own_model_factories:NAME``, tests/test_own_models.py).

Each is valid PyTorch that a user might hand us; the adapter must either reproduce it exactly or
refuse it in one line that says why.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


def _features(in_channels: int = 3, width: int = 8) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


class TupleOutput(nn.Module):
    """Returns (logits, features), with no fc/classifier/head attribute (its Linear is ``out``)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = _features(in_channels)
        self.out = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.out(features), features


class FcThenLogSoftmax(nn.Module):
    """Its ``fc`` is followed by a LogSoftmax module: log-probabilities, not logits, come out."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = _features(in_channels)
        self.fc = nn.Linear(8, num_classes)
        self.post = nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.fc(self.features(x)))


class FcThenTemperature(nn.Module):
    """Its ``fc`` is followed by a functional temperature scale (no module to see)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, temperature: float = 2.0) -> None:
        super().__init__()
        self.features = _features(in_channels)
        self.fc = nn.Linear(8, num_classes)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)) / self.temperature


class FcThenDropoutAndView(nn.Module):
    """Its ``fc`` is followed only by operations that keep the logits (Dropout in eval, a view): valid."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = _features(in_channels)
        self.fc = nn.Linear(8, num_classes)
        self.drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.features(x))
        return self.drop(logits).view(x.shape[0], -1)


class OutputRegisteredFirst(nn.Module):
    """Its output Linear is registered before the hidden Linear that runs first: valid, and the
    classifier is ``out`` (the order of the forward), not ``hidden`` (the order of ``modules()``)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.out = nn.Linear(16, num_classes)
        self.features = _features(in_channels)
        self.hidden = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.features(x))))


class FcBeforeAnotherLinear(nn.Module):
    """Has an ``fc`` attribute, but it is a hidden layer: ``logits`` runs after it."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = _features(in_channels)
        self.fc = nn.Linear(8, 16)
        self.logits = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(torch.relu(self.fc(self.features(x))))


class UnusedFc(nn.Module):
    """Has an ``fc`` attribute that its forward never calls; ``out`` is the real output layer."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = _features(in_channels)
        self.fc = nn.Linear(8, num_classes)
        self.out = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def unused_fc(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return UnusedFc(num_classes, in_channels)


def tuple_output(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return TupleOutput(num_classes, in_channels)


def fc_then_logsoftmax(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return FcThenLogSoftmax(num_classes, in_channels)


def fc_then_temperature(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return FcThenTemperature(num_classes, in_channels)


def fc_then_dropout_and_view(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return FcThenDropoutAndView(num_classes, in_channels)


def output_registered_first(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return OutputRegisteredFirst(num_classes, in_channels)


def fc_before_another_linear(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return FcBeforeAnotherLinear(num_classes, in_channels)
