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

* imagecorruptions 1.1.2 (the ``corruptions`` extra; Hendrycks & Dietterich's code packaged by
  Michaelis et al.), its latest release, predates numpy 2 and scikit-image 0.19: ``fog`` uses
  ``np.float_`` (removed in numpy 2.0) and ``glass_blur``/``gaussian_blur`` pass ``multichannel=``
  to ``skimage.filters.gaussian`` (removed in 0.19, now ``channel_axis=``); ``impulse_noise`` calls
  ``skimage.util.random_noise``, which since scikit-image 0.21 draws from a fresh generator instead
  of numpy's global one, so seeding could not make it reproducible; it also imports
  ``pkg_resources``. :func:`import_imagecorruptions` rebinds those names inside that module only
  (numpy and scikit-image themselves are untouched), so all 15 corruptions run, reproducibly.

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


class _ToDebug(logging.Handler):
    """Re-emits a third-party logger's messages at DEBUG under ours: they reach the run's log file
    (pipeline.py), not the user's terminal."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.target = logging.getLogger(f"robustbench_aft.thirdparty.{name}")

    def emit(self, record: logging.LogRecord) -> None:
        self.target.debug("%s", record.getMessage())


def _third_party_to_debug(name: str) -> None:
    logger = logging.getLogger(name)
    if not any(isinstance(handler, _ToDebug) for handler in logger.handlers):
        logger.addHandler(_ToDebug(name))
    logger.propagate = False
    logger.setLevel(logging.DEBUG)  # whatever the terminal shows, the run's log gets every line


def _adversary(model: torch.nn.Module, *, eps: float, norm: str, version: str, attacks: Optional[Sequence[str]],
               seed: Optional[int], device: torch.device, num_classes: int):
    """AutoAttack set up as we run it: the version's own settings, targets capped at ``num_classes - 1``."""
    # pyautoattack logs its progress ("setting parameters for standard version") at INFO.
    _third_party_to_debug(AUTOATTACK_LOGGER)
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
    return adversary, keyword_api


def autoattack_budget(*, eps: float, norm: str, version: str, attacks: Optional[Sequence[str]],
                      num_classes: int) -> dict:
    """The budget AutoAttack runs with, read from the library's own objects after its version set
    them (so a changed default in pyautoattack shows up in the stored budget)."""
    adversary, _ = _adversary(torch.nn.Identity(), eps=eps, norm=norm, version=version, attacks=attacks, seed=None,
                              device=torch.device("cpu"), num_classes=num_classes)
    apgd, targeted = adversary.apgd, adversary.apgd_targeted
    return {"attacks": list(adversary.attacks_to_run), "apgd_steps": apgd.n_iter, "apgd_restarts": apgd.n_restarts,
            "apgd_eot": getattr(apgd, "eot_iter", 1), "apgd_t_target_classes": targeted.n_target_classes,
            "fab_restarts": adversary.fab.n_restarts, "fab_t_target_classes": adversary.fab.n_target_classes,
            "square_queries": adversary.square.n_queries}


def run_autoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                   version: str, attacks: Optional[Sequence[str]], seed: int, device: torch.device,
                   batch_size: int, num_classes: int) -> torch.Tensor:
    """Run AutoAttack on (x, y) and return the adversarial images.

    Args:
        version: ``standard`` (APGD-CE, APGD-T, FAB-T, Square) or ``custom`` with ``attacks``.
        num_classes: caps the targeted attacks' number of target classes at ``num_classes - 1``.
    """
    adversary, keyword_api = _adversary(model, eps=eps, norm=norm, version=version, attacks=attacks, seed=seed,
                                        device=device, num_classes=num_classes)
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


class _NumpyWithFloatAlias:
    """numpy as imagecorruptions' ``corruptions`` module sees it: numpy plus the ``float_`` alias."""

    def __init__(self, numpy_module) -> None:
        self._numpy = numpy_module
        self.float_ = numpy_module.float64

    def __getattr__(self, name: str):
        return getattr(self._numpy, name)


class _SkimageWithSeededNoise:
    """scikit-image as imagecorruptions sees it: ``util.random_noise`` seeded from numpy's global
    generator (which the caller seeds), as it was before scikit-image 0.21."""

    def __init__(self, skimage_module) -> None:
        import inspect

        self._skimage = skimage_module
        random_noise = skimage_module.util.random_noise
        keyword = "rng" if "rng" in inspect.signature(random_noise).parameters else "seed"

        class _Util:
            def __getattr__(self, name: str):
                return getattr(skimage_module.util, name)

            @staticmethod
            def random_noise(image, **kwargs):
                import numpy

                kwargs.setdefault(keyword, int(numpy.random.randint(0, 2**31 - 1)))
                return random_noise(image, **kwargs)

        self.util = _Util()

    def __getattr__(self, name: str):
        return getattr(self._skimage, name)


def _gaussian_with_channel_axis(gaussian):
    def call(image, *args, multichannel: Optional[bool] = None, **kwargs):
        if multichannel is not None and "channel_axis" not in kwargs:
            kwargs["channel_axis"] = -1 if multichannel else None
        return gaussian(image, *args, **kwargs)
    return call


def import_imagecorruptions():
    """The imagecorruptions package (its ``corrupt`` function), patched for numpy 2 and scikit-image
    ≥ 0.19 (see above); a DependencyError naming the extra when it is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pkg_resources.*", category=UserWarning)
            # Its corruptions module imports map_coordinates from the deprecated scipy.ndimage.interpolation.
            warnings.filterwarnings("ignore", message=".*scipy.ndimage.interpolation.*", category=DeprecationWarning)
            import imagecorruptions
            from imagecorruptions import corruptions
    except ImportError as exc:
        raise DependencyError(f"the corruptions attack needs imagecorruptions ({exc}); "
                              "install it with: pip install -e \".[corruptions]\"") from None
    if not isinstance(corruptions.np, _NumpyWithFloatAlias) and not hasattr(corruptions.np, "float_"):
        corruptions.np = _NumpyWithFloatAlias(corruptions.np)
    if not isinstance(corruptions.sk, _SkimageWithSeededNoise):
        corruptions.sk = _SkimageWithSeededNoise(corruptions.sk)
    if not getattr(corruptions.gaussian, "_channel_axis_shim", False):
        corruptions.gaussian = _gaussian_with_channel_axis(corruptions.gaussian)
        corruptions.gaussian._channel_axis_shim = True
    return imagecorruptions


def package_version(distribution: str) -> str:
    """The installed version of ``distribution`` ("not installed" when absent): recorded in budgets."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
