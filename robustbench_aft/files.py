"""Files that survive crashes and concurrent runs: atomic writes, the run-folder lock, writability checks."""
from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable, Union

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def _create_temporary(path: Path) -> str:
    """An empty, new file next to ``path`` whose mode is 0666 minus the umask, as ``open()`` gives.

    Not ``tempfile.mkstemp``: it creates 0600 files, and the rename would then hand every result,
    table and checkpoint that mode, unreadable by the user's group whatever their umask says.
    Asking for 0666 lets the kernel apply the umask (reading it with ``os.umask`` would change it
    for the whole process for a moment); ``O_EXCL`` keeps the name ours alone.
    """
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {path}")


def cache_dir() -> Path:
    """Where natural models, tensor caches and folder scans are kept: ``$ROBUSTBENCH_AFT_CACHE`` or
    ``~/.cache/robustbench_aft``."""
    return Path(os.environ.get("ROBUSTBENCH_AFT_CACHE", "~/.cache/robustbench_aft")).expanduser()


def atomic_write(path: PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    A crash in the middle leaves the previous version of ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(path)
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
