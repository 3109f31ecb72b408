"""The one place that names AutoAttack's and RobustBench's modules.

Why this module exists (ecosystem.md §1):

* AutoAttack (fra31/auto-attack) is not on PyPI. Its PyPI repackaging ``pyautoattack`` installs
  the same files under the module name ``pyautoattack`` with a keyword-only API
  (``attacks=`` instead of ``attacks_to_run``, ``batch_size=`` instead of ``bs=``, always returns
  ``(x_adv, y_adv)``). We depend on ``pyautoattack`` and also accept a git install of the original
  ``autoattack`` module, whose signature differs; :func:`run_autoattack` hides the difference.
* robustbench 1.1.1 does ``from autoattack import AutoAttack`` and
  ``from autoattack.state import EvaluationState`` at import time, so with only ``pyautoattack``
  installed ``import robustbench`` fails. Aliasing the top-level name alone is not enough: the
  submodules would then be imported a second time as different module objects (``EvaluationState``
  identity differs), so every submodule is aliased.
* robustbench's ``loaders.py`` imports ``pkg_resources``, which setuptools 82 removed. The ``zoo``
  extra therefore requires ``setuptools<82``; we only filter the deprecation warning it prints.

* submitit 1.5 (the ``slurm`` extra, for ``--launcher slurm``) imports ``pkg_resources`` in every
  job process before our code runs, so a job dies at start under setuptools ≥ 82; the extra pins
  ``setuptools<82`` and :func:`import_submitit` checks it in the submitting process.

* torchattacks 3.5.1 (our ``dev`` extra) installs an old vendored ``robustbench`` package with no
  distribution metadata; :func:`import_robustbench` tells it apart from the real one.

RobustBench is imported lazily (it costs seconds and pulls timm), only by :func:`import_robustbench`.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
import warnings
from typing import Iterator, List, Optional, Sequence

import torch

from .errors import DependencyError

# Submodules shared by fra31's ``autoattack`` package and ``pyautoattack`` (the TF ones are skipped:
# they import tensorflow).
_AUTOATTACK_SUBMODULES = ("autoattack", "autopgd_base", "checks", "fab_base", "fab_projections",
                          "fab_pt", "other_utils", "square", "state")

# pyautoattack reports its gradient-masking checks through this logger, at WARNING level.
AUTOATTACK_LOGGER = "auto-attack"


def _autoattack_module():
    """(module, is_keyword_api): pyautoattack preferred, the original git package accepted."""
    try:
        import pyautoattack

        return pyautoattack, True
    except ImportError:
        pass
    try:
        import autoattack

        return autoattack, False
    except ImportError:
        raise DependencyError(
            "AutoAttack is not installed: pip install pyautoattack (a dependency of robustbench-aft; "
            "reinstall the package)"
        ) from None


def run_autoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                   version: str, attacks: Optional[Sequence[str]], seed: int, device: torch.device,
                   batch_size: int, num_classes: int) -> torch.Tensor:
    """Run AutoAttack on (x, y) and return the adversarial images.

    Args:
        version: ``standard`` (APGD-CE, APGD-T, FAB-T, Square) or ``custom`` with ``attacks``.
        num_classes: caps the targeted attacks' number of target classes at ``num_classes - 1``.
    """
    module, keyword_api = _autoattack_module()
    if keyword_api:
        adversary = module.AutoAttack(model, attacks=list(attacks) if attacks else None, device=device,
                                      eps=eps, norm=norm, seed=seed, version=version)
    else:
        adversary = module.AutoAttack(model, norm=norm, eps=eps, seed=seed, version=version,
                                      device=str(device), verbose=False)
        if attacks:
            adversary.attacks_to_run = list(attacks)
    n_targets = max(1, min(9, num_classes - 1))
    adversary.apgd_targeted.n_target_classes = n_targets
    adversary.fab.n_target_classes = n_targets
    if keyword_api:
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    else:
        x_adv = adversary.run_standard_evaluation(x, y, bs=batch_size)
    return x_adv


class _RecordHandler(logging.Handler):
    def __init__(self, records: List[str]) -> None:
        super().__init__(level=logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(" ".join(record.getMessage().split()))


@contextlib.contextmanager
def captured_autoattack_flags() -> Iterator[List[str]]:
    """Collect AutoAttack's sanity-check warnings (gradient masking, randomness) into a list.

    The original package also emits them as Python warnings; those are collected too.
    """
    records: List[str] = []
    logger = logging.getLogger(AUTOATTACK_LOGGER)
    handler = _RecordHandler(records)
    logger.addHandler(handler)
    # The flags are reported with the results; progress messages stay out of the user's log.
    propagate = logger.propagate
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield records
        for warning in caught:
            message = " ".join(str(warning.message).split())
            if message not in records and "autoattack" in (warning.filename or "").lower():
                records.append(message)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _alias_autoattack_to_pyautoattack() -> None:
    if importlib.util.find_spec("autoattack") is not None:
        return  # the original package is installed under its own name
    try:
        pyautoattack = importlib.import_module("pyautoattack")
    except ImportError:
        raise DependencyError("robustbench needs AutoAttack: pip install pyautoattack") from None
    sys.modules["autoattack"] = pyautoattack
    for name in _AUTOATTACK_SUBMODULES:
        sys.modules[f"autoattack.{name}"] = importlib.import_module(f"pyautoattack.{name}")


def import_robustbench():
    """Import and return the ``robustbench`` package (the ``zoo`` extra), fixing its imports first."""
    install = "pip install 'robustbench-aft[zoo]' (from a checkout: pip install -e '.[zoo]')"
    try:
        importlib.metadata.version("robustbench")
    except importlib.metadata.PackageNotFoundError:
        if importlib.util.find_spec("robustbench") is not None:
            # torchattacks 3.5.1 installs an old vendored copy of robustbench as a top-level package
            # without distribution metadata; it is not the model zoo we need.
            raise DependencyError(
                "the importable 'robustbench' is the old copy vendored by torchattacks, not RobustBench 1.1: " + install
            ) from None
        raise DependencyError("robustbench models need the optional zoo extra: " + install) from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pkg_resources.*")
        try:
            importlib.import_module("pkg_resources")
        except ImportError:
            raise DependencyError(
                "robustbench 1.1.1 imports pkg_resources, which setuptools>=82 removed: pip install 'setuptools<82'"
            ) from None
        _alias_autoattack_to_pyautoattack()
        return importlib.import_module("robustbench")


def import_submitit():
    """submitit, or a DependencyError that says how to install what the jobs need."""
    try:
        import submitit
    except ImportError:
        raise DependencyError("--launcher slurm/submitit-local needs submitit: pip install 'robustbench-aft[slurm]'") \
            from None
    if importlib.util.find_spec("pkg_resources") is None:
        raise DependencyError("submitit's jobs import pkg_resources, which setuptools 82 removed: "
                              "pip install 'setuptools<82' (or the 'robustbench-aft[slurm]' extra)")
    return submitit
