"""The fine-tuning engine: the loop, devices, seeding, lr schedule, EMA, checkpoints, progress.

The method owns the maths (``Method.update``); the engine owns everything around it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from .capture import WARM_UP_BATCHES, CapturedUpdate, CudaGraphs, resolve_capture
from .config import TrainConfig
from .data import DataBundle, make_epoch_loader
from .devices import autocast, compile_bodies, in_preferred_memory_format, use_channels_last, without_buffer_donation
from .distributed import (
    SINGLE,
    DistContext,
    GradientAveraging,
    any_rank,
    average_over_ranks,
    broadcast_buffers,
    broadcast_parameters,
    convert_sync_batchnorm,
    gather_objects,
    local_batch_size,
    merge_per_example,
)
from .errors import CheckpointError, ConfigError, UserError
from .featuregap import FeatureGapProbe
from .files import atomic_torch_save
from .method import Method, OptimConfig
from .modes import eval_mode
from .passes import PassCounter, method_networks
from .registry import METHODS
from .reproducibility import rng_state, seed_everything, set_rng_state
from .signals import StopSignal
from .tensorcache import DeviceEpoch, TensorCache, tensor_cache
from .validation import VALIDATION_PGD_STEPS, ValidationSet, is_better, split_training_set

log = logging.getLogger(__name__)


class NumericalError(UserError):
    """A loss became NaN or infinite; the message names where."""


# Loss terms, counters and the NaN check stay on the device between these reads (a read waits for the
# device): every LOG_INTERVAL batches, before a checkpoint is written and at the end of an epoch.
LOG_INTERVAL = 25


def ema_decay(updates_done: int) -> float:
    """AFD's EMA decay min(0.999, (s + 1) / (s + 10)) after s updates (methods.md §1.5)."""
    return min(0.999, (updates_done + 1) / (updates_done + 10))


class EMA:
    """An exponential moving average of a module's parameters *and* buffers.

    ``shadow ← d·shadow + (1 − d)·current`` with AFD's warm-up decay. Integer buffers (BN's
    ``num_batches_tracked``) are copied rather than blended (methods.md §15).
    """

    def __init__(self, module: nn.Module) -> None:
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> float:
        decay = ema_decay(self.updates)
        for name, current in module.state_dict().items():
            average = self.shadow[name]
            if average.is_floating_point():
                average.mul_(decay).add_(current.detach(), alpha=1.0 - decay)
            else:
                average.copy_(current)
        self.updates += 1
        return decay

    def copy_to(self, module: nn.Module) -> None:
        module.load_state_dict(self.shadow)

    def state_dict(self) -> Dict[str, Any]:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("the EMA in the checkpoint averages different tensors")
        self.shadow = {k: v.to(device) for k, v in state["shadow"].items()}
        self.updates = state["updates"]


@dataclass
class FineTuneResult:
    """The exported model of a fine-tuning run and what it cost."""

    model: nn.Module
    seconds: float
    images_per_second: float
    epochs: int
    method_version: int
    params: Dict[str, Any]
    final_terms: Dict[str, float] = field(default_factory=dict)
    checkpoint: Optional[str] = None
    feature_gap: List[Dict[str, float]] = field(default_factory=list)
    history: List[Dict[str, float]] = field(default_factory=list)
    # One dict per epoch: epoch, clean, pgd (validation accuracies in %), seconds (validation.py).
    validation: List[Dict[str, float]] = field(default_factory=list)
    best_val_epoch: Optional[int] = None
    # With --select best-val: the export of the best validated epoch's weights (``model`` is the last).
    best_val_model: Optional[nn.Module] = None
    # Counted forward/backward passes per training image (passes.py); None for compiled runs.
    passes_per_image: Optional[Dict[str, float]] = None


def build_method(name: str, params: Optional[Dict[str, Any]], eps: float, train: TrainConfig,
                 norm: str = "Linf") -> Method:
    """Instantiate a registered method with its Params overridden by ``params``, attacking in ``norm``."""
    cls = METHODS.get(name)
    values = dict(params or {})
    known = {f.name for f in dataclasses.fields(cls.Params)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{METHODS.canonical(name)} has no parameter(s) {', '.join(unknown)}; "
                          f"parameters: {', '.join(sorted(known))}")
    method_params = cls.Params(**values)
    return cls(method_params, eps=eps, norm=norm,
               optim=OptimConfig(lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay))


def default_val_size(dataset_default: int, n_train: int, train_subset: Optional[int]) -> int:
    """The validation split when ``--val-size`` is not given: the dataset's default where it fits,
    else a tenth of the images it may come from (a small dataset must not fail on a default)."""
    available = n_train - train_subset if train_subset is not None and train_subset < n_train else n_train
    whole_set = train_subset is None or train_subset >= n_train
    fits = dataset_default < available if whole_set else dataset_default <= available
    if fits:
        return dataset_default
    fallback = available // 10
    log.warning("the default validation split of %d images does not fit the %d available; using %d (a tenth)",
                dataset_default, available, fallback)
    return fallback


def check_method_fits(method_name: str, model: nn.Module, arch: Optional[str] = None) -> None:
    """A one-line ConfigError when the method cannot fine-tune this network (Method.unsupported_reason)."""
    reason = METHODS.get(method_name).unsupported_reason(model)
    if reason:
        raise ConfigError(f"{METHODS.canonical(method_name)} cannot fine-tune {arch or type(model).__name__}: {reason}")


@torch.no_grad()
def _check_finite_outputs(model: nn.Module, x: torch.Tensor, where: str) -> None:
    """The epoch's last update can leave a model whose logits overflow behind a finite loss (huge,
    still finite weights); catch it on the epoch's last batch before the model is validated,
    probed or checkpointed."""
    with eval_mode(model):
        finite = bool(torch.isfinite(model(x)).all())
    if not finite:
        raise NumericalError(f"{where}: the model's logits are not finite after the epoch's last update; "
                             "the last good checkpoint is kept")


class _EpochTerms:
    """An epoch's loss terms kept on the device: their running means and, per term, the first batch
    where it was not finite and its value then. Nothing here waits for the device but :meth:`read`."""

    def __init__(self, running: Dict[str, float], device: torch.device) -> None:
        self.device = device
        # float32 like the terms: a mean read into the checkpoint and restored on resume is the same number.
        self.means = {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in running.items()}
        self.first_bad: Dict[str, torch.Tensor] = {}
        self.bad_value: Dict[str, torch.Tensor] = {}

    def add(self, terms: Dict[str, torch.Tensor], batch_number: int) -> None:
        for name, value in terms.items():
            value = value.detach().float().sum()  # a scalar term is itself; NaN and inf survive the sum
            if name not in self.means:
                self.means[name] = torch.zeros((), device=self.device)
                self.first_bad[name] = torch.zeros((), dtype=torch.long, device=self.device)
                self.bad_value[name] = torch.zeros((), device=self.device)
            elif name not in self.first_bad:
                self.first_bad[name] = torch.zeros((), dtype=torch.long, device=self.device)
                self.bad_value[name] = torch.zeros((), device=self.device)
            mean = self.means[name]
            mean.add_((value - mean) / batch_number)
            newly_bad = (self.first_bad[name] == 0) & ~torch.isfinite(value)
            self.first_bad[name] = torch.where(newly_bad, batch_number, self.first_bad[name])
            self.bad_value[name] = torch.where(newly_bad, value, self.bad_value[name])

    def read(self, where: str) -> Dict[str, float]:
        """The running means as floats; a NumericalError naming the first batch (``where`` + its
        number) and term that was not finite, if any was."""
        names = list(self.first_bad)
        if names:
            firsts = torch.stack([self.first_bad[k] for k in names]).tolist()
            bad = [(batch, i) for i, batch in enumerate(firsts) if batch > 0]
            if bad:
                batch, i = min(bad)
                value = float(self.bad_value[names[i]])
                raise NumericalError(f"{where} batch {batch}: loss term {names[i]!r} is {value}; "
                                     "the last good checkpoint is kept")
        if not self.means:
            return {}
        names = list(self.means)
        return dict(zip(names, torch.stack([self.means[k] for k in names]).tolist()))


CHECKPOINT_FORMAT = "robustbench-aft-train/1"


def read_training_checkpoint(path: Path) -> Dict[str, Any]:
    """Load ``last.pt``; a truncated or foreign file is a CheckpointError naming it."""
    try:
        # Our own file (it holds RNG states, which weights_only loading refuses).
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a bad file; all mean "unreadable"
        reason = " ".join(str(exc).split())[:160]
        raise CheckpointError(f"cannot resume from {path}: truncated or not a training checkpoint ({reason}); "
                              "delete it to restart this cell from scratch") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"cannot resume from {path}: not a {CHECKPOINT_FORMAT} checkpoint; "
                              "delete it to restart this cell from scratch")
    return state


def _check_same_cell(state: Dict[str, Any], path: Path, name: str, seed: int, params: Dict[str, Any],
                     train: TrainConfig) -> None:
    # A training setting added by a newer version is the same cell when it keeps its default.
    defaults = asdict(TrainConfig())
    stored_train = {**{k: v for k, v in defaults.items() if k not in state.get("train", {})}, **state.get("train", {})}
    expected = {"method": name, "seed": seed, "params": params, "train": asdict(train)}
    stored = {**state, "train": stored_train}
    different = [key for key, value in expected.items() if stored.get(key) != value]
    if different:
        raise CheckpointError(f"cannot resume from {path}: it was written with a different {', '.join(different)}; "
                              "use another --out or delete the file")


@dataclass
class _Progress:
    """What a fine-tuning run has accumulated: all of it goes into ``last.pt`` and comes back on resume."""

    next_epoch: int = 1
    next_batch: int = 0
    images: int = 0
    seconds_before: float = 0.0
    running: Dict[str, float] = field(default_factory=dict)
    feature_gap: List[Dict[str, float]] = field(default_factory=list)
    history: List[Dict[str, float]] = field(default_factory=list)
    curve: List[Dict[str, float]] = field(default_factory=list)
    best: Optional[Dict[str, Any]] = None  # the best validated epoch's point and trainable weights
    passes: Dict[str, int] = field(default_factory=lambda: {"forward": 0, "backward": 0})


@dataclass
class _FineTuning:
    """One method fine-tuning one model: what :func:`fine_tune`'s steps share."""

    name: str
    seed: int
    method: Method
    train: TrainConfig
    device: torch.device
    dist: DistContext
    dataset: Dataset
    batch_size: int
    memory_format: torch.memory_format
    compiled: int
    ema: Optional["EMA"]
    validation: Optional[ValidationSet]
    probe: Optional[FeatureGapProbe]
    checkpoint: Optional[Path]
    stop: Optional[StopSignal]
    progress_bars: bool
    on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None
    progress: _Progress = field(default_factory=_Progress)
    counter: Optional[PassCounter] = None
    # The update as run per batch: ``method.update`` or its captured replay (--capture on).
    step: Optional[Callable[[Tuple[torch.Tensor, ...]], Dict[str, torch.Tensor]]] = None
    start: float = 0.0
    # The training split on the device (tensorcache.py), or None: the DataLoader path.
    device_data: Optional[TensorCache] = None
    # The fine-tuning subset's indices into the training split (None: all of it).
    train_indices: Optional[List[int]] = None

    def elapsed(self) -> float:
        return self.progress.seconds_before + time.perf_counter() - self.start


def fine_tune(method_name: str, model: nn.Module, data: DataBundle, train: TrainConfig, *, eps: float, seed: int,
              device: torch.device, norm: str = "Linf", params: Optional[Dict[str, Any]] = None,
              out_dir: Optional[Path] = None,
              progress: bool = True, resume: bool = False, stop: Optional[StopSignal] = None,
              probe: Optional[FeatureGapProbe] = None, dist: DistContext = SINGLE,
              on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None) -> FineTuneResult:
    """Fine-tune the natural ``model`` with a registered method against the ``norm`` ball of radius
    ``eps`` (its training attacks and the validation PGD); returns the exported classifier.

    ``model`` is not modified. With ``out_dir``, ``last.pt`` (method state, optimisers, EMA, RNG
    states, position in the data order) is written atomically after every epoch and, when
    ``stop`` reports SIGINT/SIGTERM, after the current batch (then :class:`Interrupted` is
    raised). With ``resume`` an existing ``last.pt`` is continued from where it stopped; the
    result is bit-identical to an uninterrupted run on CPU (see :func:`make_epoch_loader` for
    the one exception, mid-epoch resumes with DataLoader workers). With ``probe``, the feature
    gap of the model being fine-tuned (its current weights, not the EMA) is measured after every
    epoch and returned in ``feature_gap``; ``history`` holds every epoch's mean loss terms.

    Under torchrun (``dist``), every rank calls this with the same arguments; each trains on its
    shard of the global batch ``train.batch_size`` and only rank 0 writes ``last.pt`` and probes the
    feature gap (see :mod:`robustbench_aft.distributed`).

    ``on_epoch`` (rank 0) receives after every epoch its number, lr, loss terms, cumulative images and
    seconds and validation point: what ``--log`` trackers record (:mod:`robustbench_aft.trackers`).
    """
    check_method_fits(method_name, model)
    seed_everything(seed)
    method, compiled = _build(method_name, model, params, eps, norm, train, device, dist)
    use_ema = method.uses_ema if train.ema is None else train.ema
    ema = EMA(method.trainable_state()) if use_ema else None
    val_size = train.val_size if train.val_size is not None else default_val_size(
        data.default_val_size, len(data.train), train.train_subset)
    train_indices, val_indices = split_training_set(len(data.train), train.train_subset, val_size, seed)
    # With --num-workers the user asked for DataLoader workers: that path stays theirs.
    cache = tensor_cache(data, progress=progress and dist.is_main) if train.num_workers == 0 else None
    validation = ValidationSet(data.train, val_indices, eps, norm, seed, cache=cache) if val_indices else None
    if validation is None and train.select == "best-val":
        raise ConfigError("--select best-val needs a validation split; --val-size 0 turns it off")
    method.on_fit_start(data.train)
    run = _FineTuning(
        name=METHODS.canonical(method_name), seed=seed, method=method, train=train, device=device, dist=dist,
        dataset=data.train if train_indices is None else Subset(data.train, train_indices),
        batch_size=local_batch_size(train.batch_size, dist),
        memory_format=torch.channels_last if use_channels_last(train.channels_last, device) else torch.preserve_format,
        compiled=compiled, ema=ema, validation=validation, probe=probe,
        checkpoint=out_dir / "last.pt" if out_dir is not None else None, stop=stop, progress_bars=progress,
        on_epoch=on_epoch, device_data=cache.to(device) if cache is not None else None,
        train_indices=train_indices)
    if cache is not None:
        log.info("%s seed %d: the training split is on %s (tensor cache, batched augmentation)", run.name, seed,
                 device)
    if resume and run.checkpoint is not None and run.checkpoint.is_file():
        _resume(run)
    run.start = time.perf_counter()
    method.train()
    seen = torch.zeros(len(data.train), dtype=torch.bool, device=device)
    # Hooks inside compiled bodies would break their graphs: compiled runs are not counted.
    run.counter = PassCounter([] if compiled else method_networks(method))
    captured = _captured_update(run)
    run.step = captured or method.update
    with run.counter, GradientAveraging(dist), without_buffer_donation() if compiled else contextlib.nullcontext():
        for epoch in range(run.progress.next_epoch, train.epochs + 1):
            last_batch, lr = _train_epoch(run, epoch, seen)
            _end_epoch(run, epoch, seen, last_batch, lr)
    if captured is not None:
        captured.close()
        log.info("%s seed %d: --capture on: %d capture(s), %d replayed update(s), %d eager (%d warm-up, %d partial "
                 "batches)", run.name, seed, captured.counts.captures, captured.counts.replays,
                 captured.counts.warm_up + captured.counts.eager_partial, captured.counts.warm_up,
                 captured.counts.eager_partial)
    return _finish(run)


def _captured_update(run: _FineTuning) -> Optional[CapturedUpdate]:
    """The run's update recorded as a CUDA graph when ``--capture`` resolves on (capture.py)."""
    method = run.method
    if not resolve_capture(run.train.capture, run.device, run.name, method.capturable, compiled=bool(run.compiled),
                           distributed=run.dist.enabled):
        return None
    log.info("%s seed %d: --capture on: each epoch's update is recorded once as a CUDA graph after %d eager "
             "warm-up batches; partial batches run eagerly", run.name, run.seed, WARM_UP_BATCHES)
    return CapturedUpdate(method.update, CudaGraphs(run.device), run.counter)


def _build(method_name: str, model: nn.Module, params: Optional[Dict[str, Any]], eps: float, norm: str,
           train: TrainConfig, device: torch.device, dist: DistContext) -> Tuple[Method, int]:
    """The method with its networks on ``device`` (SyncBN, channels-last, compiled as asked), the
    parameters equal on every rank, its optimisers built; returns it and the number of compiled bodies."""
    method = build_method(method_name, params, eps, train, norm)
    method.prepare(copy.deepcopy(model).to(device))
    if train.sync_bn and dist.enabled:
        replaced = convert_sync_batchnorm(method.trainable_state(), device)
        log.info("--sync-bn: %d BatchNorm layer(s) use the statistics of the global batch", replaced)
    in_preferred_memory_format(method.to(device), train.channels_last, device)
    compiled = 0
    if train.compile:
        if method.compile_unsupported:
            log.warning("%s: --compile ignored, fine-tuning runs eagerly: %s", METHODS.canonical(method_name),
                        method.compile_unsupported)
        else:
            compiled = compile_bodies(method)
            log.info("--compile: %d network(s) compiled with torch.compile; the first batches of each BN mode "
                     "include the compilation", compiled)
    broadcast_parameters(method.trainable_state(), dist)
    method.optimizers = method.configure_optimizers()
    return method, compiled


def _resume(run: _FineTuning) -> None:
    """Load ``last.pt`` into the method, its optimisers, the EMA, the RNGs and ``run.progress``."""
    state = read_training_checkpoint(run.checkpoint)
    _check_same_cell(state, run.checkpoint, run.name, run.seed, asdict(run.method.params), run.train)
    saved_world = state.get("world_size", 1)
    if saved_world != run.dist.world_size:
        raise CheckpointError(f"cannot resume from {run.checkpoint}: it was written by {saved_world} process(es), "
                              f"this run has {run.dist.world_size}; resume with the same number of processes")
    method_state = dict(state["method_state"])
    if run.dist.enabled:
        method_state["extras"] = state["rank_extras"][run.dist.rank]
    try:
        run.method.load_resume_state(method_state)
        for optimizer, optimizer_state in zip(run.method.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(optimizer_state)
        if run.ema is not None:
            run.ema.load_state_dict(state["ema"], run.device)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"cannot resume from {run.checkpoint}: {' '.join(str(exc).split())[:200]}") from None
    set_rng_state(state["rng"])
    run.progress = _Progress(
        next_epoch=state["next_epoch"], next_batch=state["next_batch"], images=state["images"],
        seconds_before=state["seconds"], running=dict(state["running"]),
        feature_gap=list(state.get("feature_gap", [])), history=list(state.get("history", [])),
        curve=list(state.get("validation", [])), best=state.get("best_val"),
        passes=dict(state.get("passes", _Progress().passes)))
    log.info("%s seed %d: resuming from %s at epoch %d, batch %d", run.name, run.seed, run.checkpoint,
             run.progress.next_epoch, run.progress.next_batch + 1)


def _save(run: _FineTuning, epoch: int, batch: int) -> None:
    """Write ``last.pt`` (rank 0) so that the run continues at ``epoch``, ``batch`` + 1."""
    if run.checkpoint is None:
        return
    method, progress = run.method, run.progress
    method_state = method.resume_state()
    rank_extras = gather_objects(method_state["extras"], run.dist)
    if not run.dist.is_main:
        return
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT, "next_epoch": epoch, "next_batch": batch, "method": run.name,
        "method_version": method.version, "seed": run.seed, "params": asdict(method.params),
        "train": asdict(run.train), "method_state": method_state,
        "optimizers": [o.state_dict() for o in method.optimizers],
        "ema": run.ema.state_dict() if run.ema is not None else None, "rng": rng_state(), "images": progress.images,
        "seconds": run.elapsed(), "running": progress.running, "feature_gap": progress.feature_gap,
        "history": progress.history, "world_size": run.dist.world_size, "validation": progress.curve,
        "best_val": progress.best, "passes": _counted_passes(run),
        **({"rank_extras": rank_extras} if run.dist.enabled else {}),
    }, run.checkpoint)


def _counted_passes(run: _FineTuning) -> Dict[str, int]:
    return {"forward": run.progress.passes["forward"] + run.counter.forward,
            "backward": run.progress.passes["backward"] + run.counter.backward}


def _train_epoch(run: _FineTuning, epoch: int, seen: torch.Tensor) -> Tuple[Tuple[torch.Tensor, ...], float]:
    """One epoch of updates (from the saved batch when resuming into it); returns the last batch and
    the epoch's learning rate."""
    method, train, progress, dist = run.method, run.train, run.progress, run.dist
    method.on_epoch_start(epoch, train.epochs)
    if isinstance(run.step, CapturedUpdate):
        run.step.new_epoch()  # the lr and the method's epoch rules are baked into a recorded update
    lr = method.lr_at(epoch, train.epochs, train.lr)
    for optimizer in method.optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr
    skip = progress.next_batch if epoch == progress.next_epoch else 0
    if skip == 0:
        progress.running = {}
    seen.zero_()
    if run.device_data is not None:
        loader: Any = DeviceEpoch(run.device_data, run.train_indices, run.batch_size, run.seed, epoch,
                                  skip_batches=skip, dist=dist)
    else:
        loader = make_epoch_loader(run.dataset, run.batch_size, run.seed, epoch, skip_batches=skip,
                                   num_workers=train.num_workers, dist=dist, pin_memory=run.device.type == "cuda")
    where = f"{run.name} seed {run.seed} epoch {epoch}"
    accumulated = _EpochTerms(progress.running, run.device)

    def read_terms() -> None:
        progress.running = accumulated.read(where)
        bar.set_postfix({k: f"{v:.3f}" for k, v in progress.running.items()}, refresh=False)
    bar = tqdm(loader, desc=f"{run.name} seed {run.seed} epoch {epoch}/{train.epochs}", unit="batch", leave=False,
               disable=None if run.progress_bars and dist.is_main else True, initial=skip, total=skip + len(loader))
    for batch_number, (x, y, index) in enumerate(bar, start=skip + 1):
        batch = (x.to(run.device, non_blocking=True, memory_format=run.memory_format) if x.dim() == 4
                 else x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True), index.to(run.device))
        with autocast(run.device, train.precision, cache=not isinstance(run.step, CapturedUpdate)):
            terms = run.step(batch)
        accumulated.add(terms, batch_number)
        if dist.enabled and not train.sync_bn:
            broadcast_buffers(method.trainable_state(), dist)
        if run.ema is not None:
            run.ema.update(method.trainable_state())
        progress.images += len(y) * dist.world_size
        seen[batch[2]] = True
        if batch_number % LOG_INTERVAL == 0:
            read_terms()
        if run.stop is not None and any_rank(run.stop.requested, dist):
            bar.close()
            read_terms()  # a non-finite term stops here, before the checkpoint
            run.stop.request()
            _save(run, epoch, batch_number)
            run.stop.check(f"fine-tuning {run.name} seed {run.seed} (epoch {epoch}, batch {batch_number})")
    read_terms()
    bar.close()
    return batch, lr


def _end_epoch(run: _FineTuning, epoch: int, seen: torch.Tensor, last_batch: Tuple[torch.Tensor, ...],
               lr: float) -> None:
    """After an epoch: merge per-example state, log its terms, check, validate, probe, save."""
    method, progress, name, seed = run.method, run.progress, run.name, run.seed
    for tensor in method.per_example_state().values():
        merge_per_example(tensor, seen, run.dist)
    epoch_terms = average_over_ranks(progress.running, run.dist)
    progress.history.append({"epoch": epoch, **epoch_terms})
    log.info("%s seed %d epoch %d/%d lr %.5g %s (%.0f images/s)", name, seed, epoch, run.train.epochs, lr,
             " ".join(f"{k}={v:.4f}" for k, v in epoch_terms.items()), progress.images / max(run.elapsed(), 1e-9))
    run.counter.enabled = False
    _check_finite_outputs(method.current_classifier(), last_batch[0], f"{name} seed {seed} epoch {epoch}")
    point = None
    if run.validation is not None:
        point, weights = _validate(method, run.ema, run.validation, epoch)
        progress.curve.append(point)
        if is_better(point, progress.best and progress.best["point"]):
            progress.best = {"point": point, "state": weights}
        log.info("%s seed %d epoch %d: validation clean %.2f %%, PGD-%d %.2f %% (%.1f s on %d images)", name,
                 seed, epoch, point["clean"], VALIDATION_PGD_STEPS, point["pgd"], point["seconds"],
                 len(run.validation))
    if run.probe is not None and run.dist.is_main:
        gap = run.probe.measure(method.current_classifier(), method.head_input())
        progress.feature_gap.append({"epoch": epoch, **gap})
        log.info("%s seed %d epoch %d: feature gap L2 %.4f, 1-cos %.4f; at the head's input L2 %.4f, "
                 "1-cos %.4f (%.1f s on %d probe images)", name, seed, epoch, gap["l2"], gap["cosine"],
                 gap["head_l2"], gap["head_cosine"], gap["seconds"], len(run.probe))
    if run.on_epoch is not None and run.dist.is_main:
        run.on_epoch({"epoch": epoch, "lr": lr, "terms": epoch_terms, "images": progress.images,
                      "seconds": run.elapsed(), "validation": point})
    run.counter.enabled = True
    _save(run, epoch + 1, 0)
    if run.stop is not None:
        run.stop.check(f"fine-tuning {name} seed {seed} (after epoch {epoch})")


def _finish(run: _FineTuning) -> FineTuneResult:
    """Export the last weights (the EMA's when kept) and, with ``--select best-val``, the best
    validated epoch's; the result with the run's costs and curves."""
    method, progress, train = run.method, run.progress, run.train
    seconds = run.elapsed()
    if run.ema is not None:
        run.ema.copy_to(method.trainable_state())
    exported = method.export().eval()
    if run.compiled:
        # The evaluator runs many batch sizes and point subsets, each a recompilation: evaluate an eager copy.
        exported = copy.deepcopy(exported)
    best = progress.best
    chosen_epoch = int(best["point"]["epoch"]) if best is not None else None
    best_val_model = None
    if train.select == "best-val" and best is None:
        log.warning("%s seed %d: --select best-val, but no epoch was validated (the run was fine-tuned by a version "
                    "without validation): the last weights are the only ones", run.name, run.seed)
    elif train.select == "best-val":
        best_val_model = exported
        if chosen_epoch != train.epochs:
            # export() may hand out the trainable module itself: keep the last weights' export apart.
            exported = copy.deepcopy(exported)
            method.trainable_state().load_state_dict(best["state"])
            best_val_model = copy.deepcopy(method.export()).eval()
        log.info("%s seed %d: --select best-val: epoch %d of %d (validation PGD %.2f %%)", run.name, run.seed,
                 chosen_epoch, train.epochs, best["point"]["pgd"])
    counted = None if run.compiled else _counted_passes(run)
    history = progress.history
    return FineTuneResult(model=exported, seconds=seconds, images_per_second=progress.images / max(seconds, 1e-9),
                          epochs=train.epochs, method_version=method.version, params=asdict(method.params),
                          final_terms={k: v for k, v in history[-1].items() if k != "epoch"} if history
                          else progress.running,
                          checkpoint=str(run.checkpoint) if run.checkpoint is not None else None,
                          feature_gap=progress.feature_gap, history=history, validation=progress.curve,
                          best_val_epoch=chosen_epoch, best_val_model=best_val_model,
                          passes_per_image=None if counted is None else {k: v / max(progress.images, 1)
                                                                         for k, v in counted.items()})


def _validate(method: Method, ema: Optional[EMA], validation: ValidationSet,
              epoch: int) -> tuple:
    """Validate the weights that would be exported now (the EMA's, when the method keeps one);
    returns the validation point and a copy of those trainable weights. The method is left as it was."""
    trainable = method.trainable_state()
    current = {k: v.detach().clone() for k, v in trainable.state_dict().items()}
    if ema is not None:
        ema.copy_to(trainable)
    weights = {k: v.detach().clone() for k, v in trainable.state_dict().items()}
    point = validation.measure(method.current_classifier(), epoch)
    trainable.load_state_dict(current)
    return point, weights


def lr_table(method: Method, total_epochs: int, base_lr: float) -> List[float]:
    """The learning rate of every epoch (1-based) under ``method``'s rule."""
    return [method.lr_at(e, total_epochs, base_lr) for e in range(1, total_epochs + 1)]

