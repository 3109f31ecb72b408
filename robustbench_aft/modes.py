"""Train/eval mode switches that always restore the module's previous mode."""
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
