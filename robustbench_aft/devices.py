"""Where and how tensors run: device selection, precision (autocast), memory format, torch.compile."""
from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device, validated."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine; use --device cpu")
    return device


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 autocast on CUDA, fp32 elsewhere (bf16 matmuls are slower than fp32 on most CPUs)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def evaluation_precision(precision: str) -> str:
    """An evaluation attack's precision: fp32 on every device unless bf16 is asked for, so that a GPU
    run's columns are measured as a CPU run's are (``auto`` is read as fp32)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return "bf16" if precision == "bf16" else "fp32"


# How a budget names an evaluation attack run in bf16: always verified in fp32 (evaluator.py), so never
# the bare "bf16" of fine-tuning.
VERIFIED_BF16 = "verified-bf16"


def evaluation_precision_label(precision: str) -> str:
    """``fp32`` or ``verified-bf16``: an evaluation precision as budgets and run records name it."""
    return VERIFIED_BF16 if evaluation_precision(precision) == "bf16" else "fp32"


def autocast(device: torch.device, precision: str, cache: bool = True):
    """A bf16 autocast context for ``precision`` (resolved on ``device``); a no-op for fp32.

    ``cache=False`` for a step recorded as a CUDA graph: autocast's cache of bf16 weight copies made
    before the recording would be replayed stale after the weights change."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve_precision(precision, device) == "bf16",
                          cache_enabled=cache)


def use_channels_last(setting: str, device: torch.device) -> bool:
    """``auto`` → channels_last on CUDA (tensor cores prefer it) and on CPUs with oneDNN, whose NHWC
    convolutions ran every attack and update pass of our convnets faster than NCHW ones on the
    machines measured (benchmarks/RESULTS.md); NCHW elsewhere (e.g. MPS)."""
    if setting not in ("auto", "on", "off"):
        raise ConfigError(f"--channels-last must be auto, on or off, got {setting!r}")
    if setting != "auto":
        return setting == "on"
    return device.type == "cuda" or (device.type == "cpu" and torch.backends.mkldnn.is_available())


def in_preferred_memory_format(module: torch.nn.Module, setting: str, device: torch.device) -> torch.nn.Module:
    """``module``, converted in place to channels_last where :func:`use_channels_last` says so for
    ``setting`` on ``device``. Evaluation puts every model in it, natural and loaded ones as well as
    fine-tuned ones (which train in it), so every row of a run is computed alike; on 2 CPU cores
    AutoAttack on the natural digits smallcnn took 12.3 s in NCHW and 10.0 s in channels_last."""
    if use_channels_last(setting, device):
        module.to(memory_format=torch.channels_last)
    return module


def compile_bodies(module: torch.nn.Module) -> int:
    """Compile, in place, the body of every classifier in ``module`` (our architectures'
    :class:`~robustbench_aft.models.ImageClassifier`); returns how many were compiled.

    The body is where nearly all the time goes, and every way a method calls a classifier
    (``forward``, ``forward_features``, AFD's branches) passes through it. ``nn.Module.compile``
    keeps the state-dict keys, so checkpoints and exports are unchanged; a deep copy is eager.
    External models (robustbench, user checkpoints) are left eager: their feature hook is
    registered per call, which would make torch.compile recompile at every batch.
    """
    from .models import ImageClassifier

    bodies = [m.body for m in module.modules() if isinstance(m, ImageClassifier)]
    for body in bodies:
        body.compile()
    return len(bodies)


def without_buffer_donation():
    """A context in which torch.compile's backward graphs keep their saved tensors.

    AOTAutograd may let a compiled backward free ("donate") its saved tensors, which then fails
    on a second differentiation of the same graph (AFD's three ``autograd.grad`` calls with
    ``retain_graph``). Whether it does is fixed when the graph is first compiled, and graphs are
    shared by every module of one architecture in the process, so a graph compiled by vAFT would
    break AFD fine-tuned after it in the same ``bench run``: compile every graph without it.
    """
    return torch._functorch.config.patch(donated_buffer=False)
