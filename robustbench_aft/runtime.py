"""Seeding, device selection, atomic file writes and run provenance."""
from __future__ import annotations

import logging
import os
import platform
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
import torch

from .errors import ConfigError, Interrupted

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def atomic_write(path: PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    A crash in the middle leaves the previous version of ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: PathLike) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    return atomic_write(path, write)


def git_commit() -> str:
    """The commit of the package's source tree, or '' when it is not a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(device: torch.device) -> Dict[str, str]:
    """What a result needs to be traced back: versions, commit, device."""
    from . import __version__

    return {
        "package_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
    }


def rng_state() -> Dict[str, Any]:
    """The states of every random generator a training step may draw from."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopSignal:
    """Turns SIGINT/SIGTERM into a request that loops honour at the next batch boundary.

    Used as a context manager around long work: the first signal sets :attr:`signum` (the loops
    call :meth:`check`, which saves nothing itself but raises :class:`Interrupted` so that the
    caller can write its state); a second signal restores the default handlers and stops at once.
    Outside the main thread (where handlers cannot be installed) it never fires.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is not None:
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: finishing the current batch and saving state (send it again to stop at once)",
                    signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Act as if ``signum`` had arrived (another process of a torchrun job received it)."""
        if self.signum is None:
            self.signum = signum

    def check(self, where: str) -> None:
        """Raise :class:`Interrupted` if a stop was requested."""
        if self.signum is not None:
            raise Interrupted(self.signum, where)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on an output folder: a file holding the owner's pid and host.

    A lock whose process is gone (same host, pid not alive) is stale and taken over with a
    warning; a live one makes the second process refuse with a one-line error.
    """

    def __init__(self, folder: PathLike) -> None:
        self.path = Path(folder) / ".lock"
        self._held = False

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n")
            self._held = True
            return self
        raise ConfigError(f"could not lock {self.path.parent}; remove {self.path} if no bench run uses it")

    def _take_over_if_stale(self) -> None:
        try:
            pid_text, host, started = self.path.read_text().split()[:3]
            pid = int(pid_text)
        except (OSError, ValueError):
            pid, host, started = -1, socket.gethostname(), "0"
        if host != socket.gethostname():
            raise ConfigError(f"{self.path.parent} is locked by bench run pid {pid} on host {host}; if that run is "
                              f"gone, remove {self.path}")
        if pid > 0 and _pid_alive(pid):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(started)))
            raise ConfigError(f"{self.path.parent} is in use by bench run pid {pid} (started {when}); wait for it "
                              "to finish or stop it first")
        log.warning("taking over the stale lock of pid %d on %s", pid, self.path.parent)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def __exit__(self, *exc_info: Any) -> None:
        if self._held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self._held = False


def check_writable(path: PathLike, what: str, folder: bool) -> None:
    """Fail early (ConfigError) if ``path`` cannot be created or written, without creating anything."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise ConfigError(f"{what} {path} is a file; give a folder")
        if not folder and path.is_dir():
            raise ConfigError(f"{what} {path} is a directory; give a file such as {path / 'results.db'}")
        target = path if folder else path.parent
        if not os.access(path, os.W_OK) or not os.access(target, os.W_OK | os.X_OK):
            raise ConfigError(f"{what} {path} is not writable")
        return
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{what} {path} cannot be created: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} cannot be created: {ancestor} is not writable")


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 autocast on CUDA, fp32 elsewhere (bf16 matmuls are slower than fp32 on most CPUs)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """A bf16 autocast context for ``precision`` (resolved on ``device``); a no-op for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve_precision(precision, device) == "bf16")


def use_channels_last(setting: str, device: torch.device) -> bool:
    """``auto`` → channels_last on CUDA (tensor cores prefer it) and on CPUs with oneDNN, whose NHWC
    convolutions ran every attack and update pass of our convnets faster than NCHW ones on the
    machines measured (benchmarks/RESULTS.md); NCHW elsewhere (e.g. MPS)."""
    if setting not in ("auto", "on", "off"):
        raise ConfigError(f"--channels-last must be auto, on or off, got {setting!r}")
    if setting != "auto":
        return setting == "on"
    return device.type == "cuda" or (device.type == "cpu" and torch.backends.mkldnn.is_available())


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
