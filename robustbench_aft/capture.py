"""Captured fine-tuning steps: one method update recorded as a CUDA graph and replayed per batch.

An update of an adversarial fine-tuning method is ~10 attack steps and an optimiser step of
small kernels: on a GPU its time goes to launching them from Python, not to arithmetic
(issue 32: an attack pass of ResNet-18 at batch 128 reached 7 % of an H200's bf16 rate). A CUDA
graph launches the whole update at once. What the graph records is fixed at capture time, so:

* the batch lives in static buffers that every replay reads (each new batch is copied in);
* Python values baked into the recorded kernels (the learning rate of the optimisers, a method's
  epoch-dependent rule) change only between epochs, so the update is captured again at the start
  of every epoch (one capture per epoch against hundreds of replays);
* a batch of another size (the epoch's last, partial batch) is run eagerly: the same maths on the
  same images, neither padded (padding would change BatchNorm's batch statistics and the mean
  losses) nor dropped (that would change what the run trains on);
* the first ``warm_up`` full batches run eagerly too, on a side stream, as CUDA graphs require
  (they allocate the optimisers' momentum buffers and choose the cuDNN kernels); they are real
  updates of the run, not extra work;
* only methods that declare ``Method.capturable`` are captured: a step that reads a tensor value
  in Python (``.item()``, ``if bool(...)``), keeps Python state between batches or indexes
  per-example state cannot be recorded once and replayed.

``--capture auto`` stays eager everywhere until capture has been measured on a GPU (no GPU has
been lent for it yet); ``--capture on`` asks for it and is refused, in one line, where it cannot
run (no CUDA device, a method that is not capturable, ``--compile``, torchrun).
The graph machinery is behind :class:`GraphBackend` so that the bookkeeping (static buffers,
recapture per epoch, eager partial batches, pass counts) is tested on a CPU with a backend that
runs the step instead of recording it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Protocol, Tuple

import torch

from .errors import ConfigError
from .passes import PassCounter

CAPTURE_CHOICES = ("auto", "on", "off")
WARM_UP_BATCHES = 3

Batch = Tuple[torch.Tensor, ...]
Terms = Dict[str, torch.Tensor]


def capture_refusal(choice: str, device: torch.device, method_name: str, capturable: bool, compiled: bool,
                    distributed: bool) -> Optional[str]:
    """Why ``--capture on`` cannot run here (None when it can)."""
    if device.type != "cuda":
        return f"--capture on needs a CUDA device (this run fine-tunes on {device.type}); use --capture off"
    if not capturable:
        return (f"--capture on: {method_name} is not capturable (its update reads tensor values in Python or keeps "
                "state between batches; see Method.capturable); use --capture off")
    if compiled:
        return "--capture on and --compile cannot be combined; choose one"
    if distributed:
        return "--capture on does not run under torchrun (the gradient all-reduce is not captured); use --capture off"
    return None


def resolve_capture(choice: str, device: torch.device, method_name: str, capturable: bool, compiled: bool = False,
                    distributed: bool = False) -> bool:
    """Whether this fine-tuning captures its update: ``on`` (refused with a ConfigError where it cannot
    run), ``off``, or ``auto`` = off until measured on a GPU."""
    if choice not in CAPTURE_CHOICES:
        raise ConfigError(f"--capture must be one of {', '.join(CAPTURE_CHOICES)}, got {choice!r}")
    if choice != "on":
        return False
    refusal = capture_refusal(choice, device, method_name, capturable, compiled, distributed)
    if refusal:
        raise ConfigError(refusal)
    return True


class GraphBackend(Protocol):
    def warm_up(self, step: Callable[[], Terms]) -> Terms: ...

    def capture(self, step: Callable[[], Terms]) -> Tuple[Callable[[], None], Terms]: ...

    def release(self) -> None: ...


class CudaGraphs:
    """Records steps with ``torch.cuda.graph``; every capture of a run shares one memory pool."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool = None
        self.graph: Optional[torch.cuda.CUDAGraph] = None

    def warm_up(self, step: Callable[[], Terms]) -> Terms:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            terms = step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        return terms

    def capture(self, step: Callable[[], Terms]) -> Tuple[Callable[[], None], Terms]:
        self.release()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            terms = step()
        self.pool = graph.pool()
        self.graph = graph
        return graph.replay, terms

    def release(self) -> None:
        if self.graph is not None:
            self.graph.reset()
            self.graph = None


@dataclass
class CaptureCounts:
    """How a captured fine-tuning ran its batches (logged at the end of the run)."""

    captures: int = 0
    replays: int = 0
    warm_up: int = 0
    eager_partial: int = 0


class CapturedUpdate:
    """``update(batch)`` run as a replayed graph; call :meth:`new_epoch` before every epoch.

    The returned terms are the graph's static output tensors: read (or accumulate) them before the
    next call, which overwrites them. ``counter`` (the run's pass counter) sees a captured update's
    passes on every replay: its hooks fire once while the step is recorded, which runs no kernel.
    """

    def __init__(self, update: Callable[[Batch], Terms], backend: GraphBackend,
                 counter: Optional[PassCounter] = None, warm_up: int = WARM_UP_BATCHES) -> None:
        self.update = update
        self.backend = backend
        self.counter = counter
        self.warm_up_batches = warm_up
        self.counts = CaptureCounts()
        self._static: Optional[Batch] = None
        self._replay: Optional[Callable[[], None]] = None
        self._terms: Terms = {}
        self._passes_per_update = (0, 0)

    def new_epoch(self) -> None:
        self._replay = None

    def _fits(self, batch: Batch) -> bool:
        return self._static is None or all(b.shape == s.shape and b.stride() == s.stride() and b.dtype == s.dtype
                                           for b, s in zip(batch, self._static))

    def __call__(self, batch: Batch) -> Terms:
        if not self._fits(batch):
            self.counts.eager_partial += 1
            return self.update(batch)
        if self.counts.warm_up < self.warm_up_batches and self.counts.captures == 0:
            self.counts.warm_up += 1
            if self._static is None:
                self._static = tuple(t.clone() for t in batch)
            return self.backend.warm_up(lambda: self.update(batch))
        if self._static is None:
            self._static = tuple(t.clone() for t in batch)
        for static, current in zip(self._static, batch):
            static.copy_(current)
        if self._replay is None:
            self._record()
        self._replay()
        self.counts.replays += 1
        if self.counter is not None and self.counter.enabled:
            self.counter.forward += self._passes_per_update[0]
            self.counter.backward += self._passes_per_update[1]
        return self._terms

    def _record(self) -> None:
        before = (self.counter.forward, self.counter.backward) if self.counter is not None else (0, 0)
        self._replay, self._terms = self.backend.capture(lambda: self.update(self._static))
        self.counts.captures += 1
        if self.counter is not None:
            # Recording ran the hooks but no kernel: the replay that follows is the update they count.
            self._passes_per_update = (self.counter.forward - before[0], self.counter.backward - before[1])
            self.counter.forward, self.counter.backward = before

    def close(self) -> None:
        self.backend.release()
