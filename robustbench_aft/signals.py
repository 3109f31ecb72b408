"""SIGINT/SIGTERM as a request that loops honour at the next batch boundary."""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any, Dict, Optional

from .errors import Interrupted

log = logging.getLogger(__name__)



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
