"""``bench run``: natural model → fine-tune every (method, seed) → evaluate all → store → leaderboard.

:func:`prepare_run` turns a :class:`RunConfig` into a :class:`PreparedRun` (the data, the resolved
threat model and evaluation settings, the cells); local runs (:func:`run`) and grid jobs
(:func:`run_one_cell`) work on its cells through the same :class:`_Context`. The run folder's
bookkeeping (manifest, config.yaml, per-cell ids, ``done.json``) lives in runfolder.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from . import distributed
from .capture import resolve_capture
from .config import RunConfig
from .config_file import dump_run_config
from .data import DataBundle, default_eps, load_dataset
from .devices import evaluation_precision_label, in_preferred_memory_format, resolve_device, resolve_precision
from .distributed import SINGLE, DistContext, barrier
from .engine import NumericalError, check_method_fits, default_val_size, fine_tune
from .errors import ConfigError, Interrupted
from .evaluator import EvalConfig, evaluate, select_subset
from .featuregap import FeatureGapProbe
from .files import RunLock, atomic_write_text, check_writable
from .models import build_model
from .pretrained import (
    NaturalRecipe,
    default_recipe,
    load_checkpoint,
    recipe_with,
    resolve,
    save_checkpoint,
    transfer_source,
)
from .protocol import dataset_fingerprint, encode_indices, protocol_of
from .registry import ATTACKS, METHODS, NATURAL
from .reproducibility import provenance
from .results import ResultsStore, RunRecord, new_group_id, outcome_bits
from .runfolder import (
    BEST_VAL_CHECKPOINT,
    CONFIG_FILE,
    DONE,
    MANIFEST,
    RUN_LOG,
    cell_id,
    cell_name,
    open_group,
    read_manifest,
)
from .signals import StopSignal
from .threat import ThreatModel
from .trackers import NO_TRACKERS, CellLogger, Trackers, finish_tracked_cell, open_trackers
from .validation import catastrophic_overfitting, split_training_set

log = logging.getLogger(__name__)



@dataclass
class RunSummary:
    """What ``run`` did: its group id in the store, the output folder and the run ids."""

    group_id: str
    db: str
    out: str
    run_ids: List[str]
    seconds: float
    rank: int = 0
    # Cells whose fine-tuning diverged (a loss became NaN/inf): stored as failed rows, not in the leaderboard.
    diverged: List[str] = dataclasses.field(default_factory=list)


@dataclass
class PreparedRun:
    """A run's configuration with what it resolves to once the data is loaded: the threat model of
    both its training attacks and its evaluation, the evaluator's settings and the cells to work on."""

    config: RunConfig
    data: DataBundle
    threat: ThreatModel
    eval_config: EvalConfig

    @property
    def cells(self) -> List[Tuple[str, int]]:
        """(method, seed) of every cell: the natural model first, then each method for each seed."""
        config = self.config
        return [(NATURAL, config.pretrained_seed)] + [(m, s) for m in config.methods for s in config.seeds]

    @property
    def natural_recipe(self) -> NaturalRecipe:
        """The pre-training recipe of ``--pretrained auto``: the dataset's, with ``--natural-*`` over it."""
        return recipe_with(default_recipe(self.data), **self.config.natural)

    @functools.cached_property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.data)

    def split(self, method: str, seed: int) -> Dict[str, Any]:
        """Which training images fine-tuned and validated the (method, seed) cell, as the engine
        draws them (validation.split_training_set), compactly; the test points are the row's indices."""
        data, train = self.data, self.config.train
        record: Dict[str, Any] = {"dataset_fingerprint": self.fingerprint, "train_size": len(data.train)}
        if method == NATURAL:
            return {**record, "fine_tune": "every training image (the natural model's pre-training)"}
        val_size = train.val_size if train.val_size is not None else default_val_size(
            data.default_val_size, len(data.train), train.train_subset)
        fine_tune_indices, val_indices = split_training_set(len(data.train), train.train_subset, val_size, seed)
        if fine_tune_indices is None:
            fine_tune_indices = list(range(len(data.train)))
        return {**record, "fine_tune": encode_indices(fine_tune_indices, len(data.train)),
                "n_fine_tune": len(fine_tune_indices), "validation": encode_indices(val_indices, len(data.train)),
                "n_validation": len(val_indices)}

    @property
    def stored_config(self) -> Dict[str, Any]:
        """The configuration stored with every row and in the manifest (eps and norm resolved)."""
        return {**self.config.to_dict(), "threat": dataclasses.asdict(self.threat),
                "eval": dataclasses.asdict(self.eval_config)}


@dataclass
class RunOptions:
    """How a run is worked on (not what it computes): progress output, resumption, the stop signal."""

    progress: bool = True
    resume: bool = False
    stop: Optional[StopSignal] = None
    command: Optional[List[str]] = None


@dataclass
class _Context:
    run: PreparedRun
    options: RunOptions
    store: Optional[Any]  # a ResultsStore, or per-cell record files for jobs (launch.RecordFiles)
    group_id: str
    out_root: Path
    device: torch.device
    source: str  # where the natural model came from
    origin: Dict[str, str]
    probe: Optional[FeatureGapProbe]
    natural_gap: List[Dict[str, float]]
    dist: DistContext = SINGLE
    # The model the transfer attack crafts on (``--transfer-from``); None when it does not run.
    transfer_source: Optional[nn.Module] = None
    # The --log trackers (trackers/): one tracked run per cell.
    trackers: Trackers = NO_TRACKERS

    # Shorthands for the fields of the run that nearly every step reads.
    @property
    def config(self) -> RunConfig:
        return self.run.config

    @property
    def data(self) -> DataBundle:
        return self.run.data

    @property
    def eval_config(self) -> EvalConfig:
        return self.run.eval_config

    @property
    def progress(self) -> bool:
        return self.options.progress

    @property
    def stop(self) -> Optional[StopSignal]:
        return self.options.stop

    @property
    def resume(self) -> bool:
        return self.options.resume


def _context(run: PreparedRun, options: RunOptions, natural: nn.Module, source: str, store: Any, group_id: str,
             out_root: Path, device: torch.device, dist: DistContext = SINGLE) -> _Context:
    """The context every cell of ``run`` is worked in, the same for local runs and grid jobs."""
    probe, natural_gap = _feature_gap_probe(run, natural) if dist.is_main else (None, [])
    return _Context(run=run, options=options, store=store, group_id=group_id, out_root=out_root, device=device,
                    source=source, origin=provenance(device), probe=probe, natural_gap=natural_gap, dist=dist,
                    transfer_source=_transfer_source(run, natural, device))


def _evaluate(context: _Context, model: nn.Module, state_dir: Path):
    """Evaluate ``model`` with the run's protocol (every rank its shard under torchrun); the result on
    rank 0, None on the others."""
    dist = context.dist
    in_preferred_memory_format(model, context.run.config.train.channels_last, context.device)
    if dist.enabled:
        evaluate(model, context.data, context.eval_config, context.device, progress=context.progress and dist.is_main,
                 state_dir=state_dir, stop=context.stop, shard=(dist.rank, dist.world_size),
                 source_model=context.transfer_source)
        barrier(dist)
        if not dist.is_main:
            return None
    return evaluate(model, context.data, context.eval_config, context.device, progress=context.progress,
                    state_dir=state_dir, stop=context.stop, source_model=context.transfer_source)


@dataclass
class _Tuned:
    """What fine-tuning left for the cell's rows (from this process's fine-tuning or from final.pt)."""

    version: int = 0
    train_seconds: Optional[float] = None
    images_per_second: Optional[float] = None
    validation: List[Dict[str, float]] = dataclasses.field(default_factory=list)
    best_val_epoch: Optional[int] = None
    passes_per_image: Optional[Dict[str, float]] = None


@dataclass
class _Cell:
    """One (method, seed) of a run while it is worked on."""

    method: str
    seed: int
    folder: Path
    run_id: str
    start: float
    label: str  # "[3/13] afd seed 0", for the log
    record: Dict[str, Any]  # the fields every row of the cell shares
    extra: Dict[str, Any]  # configuration facts stored with the rows
    feature_gap: List[Dict[str, float]]
    tuned: _Tuned = dataclasses.field(default_factory=_Tuned)
    tracker: CellLogger = dataclasses.field(default_factory=lambda: CellLogger([]))


def _run_cell(context: _Context, natural: nn.Module, method: str, seed: int, step: int, total: int) -> str:
    """Fine-tune (or load) and evaluate one cell and store its rows; returns its run id. A cell that
    finished earlier is skipped; one stopped by a signal or a NaN is stored as interrupted/failed."""
    folder = context.out_root / cell_name(method, seed)
    label = f"[{step}/{total}] {method} seed {seed}"
    finished_id = _finished_earlier(context, folder / DONE, label)
    if finished_id is not None:
        return finished_id
    dist = context.dist
    # Under torchrun every rank works on the cell; rank 0 alone writes its files and its row.
    run_id = cell_id(folder) if dist.is_main else ""
    if not dist.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    cell = _Cell(method=method, seed=seed, folder=folder, run_id=run_id, start=time.perf_counter(), label=label,
                 record=dict(group_id=context.group_id, method=method, dataset=context.data.name,
                             arch=context.config.arch, seed=seed, norm=context.run.threat.norm,
                             provenance=context.origin),
                 extra=_cell_extra(context, natural), feature_gap=list(context.natural_gap),
                 tracker=context.trackers.cell(cell_name(method, seed)) if dist.is_main else CellLogger([]))
    try:
        model, best_model = _cell_model(context, cell, natural)
        if method != NATURAL:
            cell.extra["checkpoint"] = str((folder / "final.pt").resolve())  # usable from any working directory
        evaluations = _evaluate_cell(context, cell, model, best_model)
        if not dist.is_main:
            return run_id
    except (Interrupted, NumericalError) as exc:
        if dist.is_main:
            _store_stopped_cell(context, cell, exc)
        cell.tracker.close()
        raise
    _store_cell(context, cell, evaluations)
    finish_tracked_cell(cell.tracker, context.config.db, run_id, {**context.run.stored_config, **cell.extra},
                        evaluations[0][1], cell.folder)
    return run_id


def _finished_earlier(context: _Context, done: Path, label: str) -> Optional[str]:
    """The run id of a cell whose ``done.json`` exists, unless its row lacks per-sample outcomes
    (stored by an older version): then None, and evaluating again reads the cell's saved per-batch
    results (no attack runs) and stores them with the row."""
    if not done.is_file():
        return None
    finished_id = json.loads(done.read_text())["run_id"]
    backfill = (not context.dist.enabled and isinstance(context.store, ResultsStore)
                and context.store.samples(finished_id) is None)
    if not backfill:
        log.info("%s: finished earlier, skipped", label)
        return finished_id
    log.info("%s: finished earlier; storing its per-sample results", label)
    return None


def _cell_extra(context: _Context, natural: nn.Module) -> Dict[str, Any]:
    """Configuration facts stored with every row of a cell: precisions, processes, input shape and the
    natural model's normalisation."""
    device = context.device
    extra: Dict[str, Any] = {"pretrained_source": context.source, "precision": {
        "fine_tuning": resolve_precision(context.config.train.precision, device),
        "clean_pgd_cw": evaluation_precision_label(context.eval_config.precision),
        "autoattack": evaluation_precision_label(context.eval_config.aa_precision)},
        "processes": context.dist.world_size, "input_shape": list(context.data.input_shape),
        "skipped_bad_images": context.data.metadata.get("skipped_bad_images"),
        "dataset_fingerprint": context.run.fingerprint}
    normalize = getattr(natural, "normalize", None)
    if normalize is not None:
        extra["normalisation"] = {"mean": [round(float(v), 6) for v in normalize.mean.flatten()],
                                  "std": [round(float(v), 6) for v in normalize.std.flatten()]}
    return extra


def _cell_model(context: _Context, cell: _Cell, natural: nn.Module) -> Tuple[nn.Module, Optional[nn.Module]]:
    """The model to evaluate (the natural one, ``final.pt`` of an earlier run, or a fresh fine-tuning)
    and, with ``--select best-val``, the best validated epoch's (``None`` without it)."""
    config, data = context.config, context.data
    if cell.method == NATURAL:
        cell.extra["checkpoint"] = context.source
        log.info("%s: evaluating the natural model (%s)", cell.label, context.source)
        return natural.to(context.device), None
    if (cell.folder / "final.pt").is_file():
        model, info = load_checkpoint(str(cell.folder / "final.pt"), data, config.arch)
        _record_tuning(cell, info["metadata"])
        best_model = None
        if config.train.select == "best-val" and cell.tuned.best_val_epoch is not None:
            best_path = cell.folder / BEST_VAL_CHECKPOINT
            best_model = load_checkpoint(str(best_path), data, config.arch)[0] if best_path.is_file() else model
        log.info("%s: fine-tuned earlier; evaluating", cell.label)
        return model.to(context.device), best_model  # .to() moves in place: best_model may be model itself
    log.info("%s: fine-tuning", cell.label)
    tuned = fine_tune(cell.method, natural, data, config.train, eps=context.run.threat.eps,
                      norm=context.run.threat.norm, seed=cell.seed, device=context.device,
                      params=config.method_params.get(cell.method), out_dir=cell.folder, progress=context.progress,
                      resume=context.resume, stop=context.stop, probe=context.probe, dist=context.dist,
                      on_epoch=cell.tracker.epoch if cell.tracker else None)
    metadata = dict(method=cell.method, seed=cell.seed, method_version=tuned.method_version, params=tuned.params,
                    train_seconds=tuned.seconds, images_per_second=tuned.images_per_second,
                    feature_gap=tuned.feature_gap, history=tuned.history, validation=tuned.validation,
                    best_val_epoch=tuned.best_val_epoch, passes_per_image=tuned.passes_per_image)
    _record_tuning(cell, metadata)
    best_model = tuned.best_val_model
    if context.dist.is_main:
        if best_model is not None and best_model is not tuned.model:
            save_checkpoint(best_model, cell.folder / BEST_VAL_CHECKPOINT, config.arch, data,
                            **{**metadata, "selected_epoch": tuned.best_val_epoch})
        # final.pt last: its presence means the cell's fine-tuning is complete.
        save_checkpoint(tuned.model, cell.folder / "final.pt", config.arch, data, **metadata)
    model = tuned.model.to(context.device)
    log.info("%s: %.1f s, %.0f images/s; evaluating", cell.label, tuned.seconds, tuned.images_per_second)
    return model, (model if best_model is tuned.model else best_model)


def _record_tuning(cell: _Cell, metadata: Dict[str, Any]) -> None:
    """What fine-tuning left (a fresh run's result or final.pt's metadata) into the cell's rows."""
    cell.tuned = _Tuned(metadata["method_version"], metadata["train_seconds"], metadata["images_per_second"],
                        metadata.get("validation", []), metadata.get("best_val_epoch"),
                        metadata.get("passes_per_image"))
    cell.extra["method_params_used"] = metadata["params"]
    cell.extra["training_history"] = metadata.get("history", [])
    cell.feature_gap += metadata.get("feature_gap", [])


def _evaluate_cell(context: _Context, cell: _Cell, model: nn.Module,
                   best_model: Optional[nn.Module]) -> List[Tuple[str, Any, float, Optional[int], str]]:
    """Evaluate the last weights and, when they differ, the best validated epoch's; one
    (selection, result, seconds, epoch, row id) per row to store (rank 0; empty on the others)."""
    evaluation_start = time.perf_counter()
    result = _evaluate(context, model, cell.folder)
    eval_seconds = time.perf_counter() - evaluation_start
    last_epoch = None if cell.method == NATURAL else context.config.train.epochs
    rows = [("last", result, eval_seconds, last_epoch, cell.run_id)]
    if best_model is None:
        return rows
    if best_model is model:
        best_result, best_seconds = result, eval_seconds  # the best epoch is the last: the same weights
    else:
        log.info("%s: evaluating the best validated epoch (%d)", cell.label, cell.tuned.best_val_epoch)
        evaluation_start = time.perf_counter()
        best_result = _evaluate(context, best_model.to(context.device), cell.folder / "best-val")
        best_seconds = time.perf_counter() - evaluation_start
        cell.extra["best_val_checkpoint"] = str((cell.folder / BEST_VAL_CHECKPOINT).resolve())
    if context.dist.is_main:
        rows.append(("best-val", best_result, best_seconds, cell.tuned.best_val_epoch,
                     cell_id(cell.folder, "best-val")))
    return rows


def _store_stopped_cell(context: _Context, cell: _Cell, exc: Exception) -> None:
    """A row with no metrics for a cell stopped by a signal (interrupted) or a NaN (failed)."""
    status = "interrupted" if isinstance(exc, Interrupted) else "failed"
    n_eval = len(select_subset(len(context.data.test), context.eval_config.n_eval, context.eval_config.seed))
    context.store.add(RunRecord(**cell.record, method_version=cell.tuned.version, eps=context.run.threat.eps,
                                n_eval=n_eval, metrics={}, config={**context.run.stored_config, **cell.extra},
                                flags=[str(exc)], wall_seconds=time.perf_counter() - cell.start, status=status),
                      run_id=cell.run_id)


def _store_cell(context: _Context, cell: _Cell, evaluations: List[Tuple[str, Any, float, Optional[int], str]]) -> None:
    """One row per evaluated selection, the catastrophic-overfitting flag, then ``done.json``."""
    overfitting = catastrophic_overfitting(cell.tuned.validation)
    tuned = cell.tuned
    best_checkpoint = cell.extra.pop("best_val_checkpoint", None)
    config = {**context.run.stored_config, **cell.extra, "split": context.run.split(cell.method, cell.seed)}
    done_payload: Dict[str, Any] = {"run_id": cell.run_id, "accuracy": evaluations[0][1].accuracy}
    for selection, evaluated, seconds, epoch, row_id in evaluations:
        if selection == "best-val" and best_checkpoint is not None:
            config = {**config, "checkpoint": best_checkpoint}
        config = {**config, "protocol": protocol_of(
            cell.method, context.data.name, context.config.arch, evaluated.eps, context.run.threat.norm, evaluated.n,
            {k: v for k, v in config.items() if k != "protocol"}, evaluated.indices, evaluated.budgets)}
        context.store.add(RunRecord(**cell.record, method_version=tuned.version, config=config,
                                    train_seconds=tuned.train_seconds, images_per_second=tuned.images_per_second,
                                    feature_gap=cell.feature_gap, validation=tuned.validation,
                                    passes_per_image=tuned.passes_per_image, eps=evaluated.eps, n_eval=evaluated.n,
                                    metrics=evaluated.accuracy,
                                    flags=evaluated.flags + ([overfitting] if overfitting else []),
                                    wall_seconds=time.perf_counter() - cell.start, eval_seconds=seconds,
                                    selection=selection, selected_epoch=epoch,
                                    indices=[int(i) for i in evaluated.indices],
                                    per_sample={name: outcome_bits(values)
                                                for name, values in evaluated.correct.items()},
                                    budgets=evaluated.budgets, breakdown=evaluated.breakdown),
                          run_id=row_id)
        if selection != "last":
            done_payload[f"run_id_{selection}"] = row_id
    if overfitting:
        log.warning("%s seed %d: %s", cell.method, cell.seed, overfitting)
    atomic_write_text(json.dumps(done_payload) + "\n", cell.folder / DONE)


def run(config: RunConfig, progress: bool = True, resume: bool = False, stop: Optional[StopSignal] = None,
        command: Optional[List[str]] = None) -> RunSummary:
    """Run the whole AFT protocol described by ``config`` and store every result.

    Everything the user can get wrong is checked before anything is written. ``resume`` continues
    the run found in ``config.out`` (see runfolder.py); ``stop`` turns SIGINT/SIGTERM into a clean
    :class:`Interrupted` after the current batch, with the state saved.
    """
    start = time.perf_counter()
    if resume and not config.out:
        raise ConfigError("--resume needs the --out folder of the run to continue")
    options = RunOptions(progress=progress, resume=resume, stop=stop, command=command)
    device = resolve_device(config.device)
    dist, device = distributed.initialize(device)
    try:
        prepared = prepare_run(config)
        check_writable(config.db, "--db", folder=False)
        group_id = distributed.gather_objects(new_group_id(), dist)[0]
        out_root = Path(config.out) if config.out else Path(config.db).parent / group_id
        check_writable(out_root, "--out", folder=True)
        manifest = read_manifest(out_root) if dist.is_main else None
        if manifest is not None and not resume:
            raise ConfigError(f"--out {out_root} already holds run {manifest['group_id']}; add --resume to continue "
                              "it, or choose another --out")
        barrier(dist)  # rank 0 has checked the folder before anyone writes to it
        try:
            summary = _run_in(prepared, options, out_root, device, group_id, dist)
        except Interrupted as exc:
            if (out_root / MANIFEST).is_file():
                exc.state_dir = str(out_root)
            raise
    finally:
        distributed.shutdown()
    summary.seconds = time.perf_counter() - start
    return summary


def _check_methods_fit(run: PreparedRun, device: torch.device, dist: DistContext) -> None:
    """Refuse, before any pre-training, a method that cannot fine-tune the run's architecture or be
    captured as ``--capture on`` asks."""
    data = run.data
    shape_only = build_model(run.config.arch, data.num_classes, data.input_shape[0], data.mean, data.std,
                             data.input_shape)
    train = run.config.train
    for method in run.config.methods:
        check_method_fits(method, shape_only, run.config.arch)
        resolve_capture(train.capture, device, METHODS.canonical(method), METHODS.get(method).capturable,
                        compiled=train.compile and not METHODS.get(method).compile_unsupported,
                        distributed=dist.enabled)


def _run_in(run: PreparedRun, options: RunOptions, out_root: Path, device: torch.device, group_id: str,
            dist: DistContext) -> RunSummary:
    config = run.config
    _check_methods_fit(run, device, dist)
    if not dist.is_main:
        barrier(dist)  # rank 0 pre-trains (or loads) the natural model first; the others load its cache
    natural, info = _natural_model(run, device, options.progress and dist.is_main, options.stop)
    if dist.is_main:
        barrier(dist)
    with RunLock(out_root) if dist.is_main else contextlib.nullcontext(), _run_log(out_root, dist):
        if dist.is_main:
            group_id = open_group(out_root, run.stored_config, options.resume, options.command, group_id)
            atomic_write_text(dump_run_config(config, f"run {group_id}: load with bench run --config"),
                              out_root / CONFIG_FILE)
        store = ResultsStore(config.db) if dist.is_main else None
        cells = run.cells
        if dist.enabled:
            log.info("torchrun: %d processes, global batch %d (%d per process)%s", dist.world_size,
                     config.train.batch_size, config.train.batch_size // dist.world_size,
                     ", synchronised BatchNorm" if config.train.sync_bn else ", BatchNorm statistics per process")
        log.info("run %s: %s on %s/%s, %s, %d model(s) to evaluate, results in %s, state in %s", group_id,
                 ",".join(config.methods), run.data.name, config.arch, run.threat.describe(), len(cells), config.db,
                 out_root)
        context = _context(run, options, natural, info["source"], store, group_id, out_root, device, dist)
        context.trackers = open_trackers(config.log, out_root, group_id)
        run_ids, diverged = [], []
        for step, (method, seed) in enumerate(cells, start=1):
            try:
                run_ids.append(_run_cell(context, natural, method, seed, step, len(cells)))
            except NumericalError as exc:
                # A method that diverges under this setting is a measured outcome, not a broken run:
                # its row is stored as failed (with the reason) and the other cells go on.
                log.error("[%d/%d] %s seed %d diverged: %s; going on with the other cells", step, len(cells),
                          method, seed, exc)
                diverged.append(f"{method} seed {seed}: {exc}")
    return RunSummary(group_id=group_id, db=config.db, out=str(out_root), run_ids=run_ids, seconds=0.0,
                      rank=dist.rank, diverged=diverged)


@contextlib.contextmanager
def _run_log(out_root: Path, dist: DistContext):
    """Every log line of the run, DEBUG included (third-party progress messages land there), appended
    to ``run.log`` in the run folder while the run works in it."""
    if not dist.is_main:
        yield
        return
    handler = logging.FileHandler(out_root / RUN_LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    package = logging.getLogger("robustbench_aft")
    previous = package.level
    package.addHandler(handler)
    package.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(previous)
        handler.close()


def _natural_model(run: PreparedRun, device: torch.device, progress: bool,
                   stop: Optional[StopSignal]) -> Tuple[nn.Module, Dict[str, Any]]:
    """The run's starting point: ``--pretrained`` (``auto``: the cached natural model, pre-trained by the
    dataset's recipe and ``--natural-*`` when missing)."""
    config = run.config
    return resolve(config.pretrained, run.data, config.arch, seed=config.pretrained_seed, device=device,
                   recipe=run.natural_recipe, progress=progress, stop=stop)


def _feature_gap_probe(run: PreparedRun, natural: nn.Module) -> Tuple[Optional[FeatureGapProbe],
                                                                        List[Dict[str, float]]]:
    """The per-epoch feature-gap probe (``--feature-gap-probe N`` training images) and the natural
    model's gap on it (epoch 0); (None, []) when the probe is off."""
    size = run.config.train.feature_gap_probe
    if size <= 0:
        return None, []
    probe = FeatureGapProbe(run.data.train, size, run.threat.eps, run.threat.norm)
    natural_gap = [{"epoch": 0, **probe.measure(natural)}]
    log.info("feature gap of the natural model on %d probe images: L2 %.4f, 1-cos %.4f (%.1f s)", len(probe),
             natural_gap[0]["l2"], natural_gap[0]["cosine"], natural_gap[0]["seconds"])
    return probe, natural_gap


def _transfer_source(run: PreparedRun, natural: nn.Module, device: torch.device) -> Optional[nn.Module]:
    if not any(ATTACKS.get(name).needs_source for name in run.eval_config.attacks):
        return None
    return transfer_source(run.eval_config.transfer_from, run.data, run.config.arch, device, natural=natural)


def prepare_run(config: RunConfig) -> PreparedRun:
    """The dataset, the resolved threat model and the evaluation settings of ``config``, checked
    (shared by local runs and the launchers)."""
    data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                        skip_bad_images=config.skip_bad_images)
    threat = config.threat.resolved(default_eps(data, config.threat.norm))
    eval_config = config.eval_config(threat)
    if any(ATTACKS.get(name).needs_source for name in eval_config.attacks) and eval_config.transfer_from is None:
        eval_config = dataclasses.replace(eval_config, transfer_from="natural")
    select_subset(len(data.test), eval_config.n_eval, eval_config.seed)
    return PreparedRun(config=config, data=data, threat=threat, eval_config=eval_config)


def run_one_cell(config: RunConfig, out_root: Path, method: str, seed: int, sink: Any, progress: bool = False,
                 stop: Optional[StopSignal] = None) -> str:
    """Run one (method, seed) cell of the run in ``out_root`` in this process, continuing whatever
    the cell left on disk, and hand its record to ``sink`` (what a Slurm job of the grid does)."""
    manifest = read_manifest(out_root)
    if manifest is None:
        raise ConfigError(f"{out_root} holds no {MANIFEST}; it is not the folder of a submitted run")
    device = resolve_device(config.device)
    prepared = prepare_run(config)
    options = RunOptions(progress=progress, resume=True, stop=stop)
    natural, info = _natural_model(prepared, device, progress, stop)
    context = _context(prepared, options, natural, info["source"], sink, manifest["group_id"], out_root, device)
    with RunLock(out_root / cell_name(method, seed)):
        return _run_cell(context, natural, method, seed, 1, 1)


__all__ = ["PreparedRun", "RunSummary", "prepare_run", "run"]
