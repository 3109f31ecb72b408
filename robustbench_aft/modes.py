"""Train/eval mode and gradient switches that always restore the module's previous state."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def module_mode(module: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Run a block with ``module`` in train (``True``) or eval (``False``) mode, then put it back in the
    mode it was in, also when the block raises. Attacks, probes and checks must not leave a model
    in a mode its caller did not choose (BatchNorm would then use or update the wrong statistics)."""
    was_training = module.training
    module.train(training)
    try:
        yield module
    finally:
        module.train(was_training)


def eval_mode(module: nn.Module):
    """``module_mode(module, False)``: BatchNorm on running statistics, dropout off, for the block."""
    return module_mode(module, False)


@contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[nn.Module]:
    """Run a block with none of ``module``'s parameters requiring gradients, then restore the ones that
    did, also when the block raises. An attack needs the gradient to its input only; a library that
    calls ``backward()`` (pyautoattack's FAB) would otherwise also compute every weight gradient and
    leave it accumulated in the parameters' ``.grad`` (18 % of FAB-T's time on the digits smallcnn)."""
    trainable = [parameter for parameter in module.parameters() if parameter.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield module
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
