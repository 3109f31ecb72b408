"""``bench run``: natural model → fine-tune every (method, seed) → evaluate all → store → leaderboard.

The output folder (``--out``) is the unit of resumption. It holds ``run.json`` (the run's group
id, configuration and command), ``config.yaml`` (the resolved configuration, loadable with
``bench run --config``), a ``.lock`` while a process works in it, and one folder per
cell (``natural``, ``afd-seed0``, …) with the fine-tuning checkpoint ``last.pt``, the exported
``final.pt``, the per-sample evaluation results ``eval-*/batch-*.pt`` and, once the cell's row
is in the store, ``done.json``. ``resume=True`` skips done cells and continues the others from
whatever they left on disk.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .config import RunConfig
from .config_file import dump_run_config
from .data import DataBundle, load_dataset
from . import distributed
from .distributed import SINGLE, DistContext, barrier
from .engine import NumericalError, check_method_fits, fine_tune
from .models import build_model
from .errors import ConfigError, Interrupted
from .evaluate import EvalConfig, evaluate, select_subset
from .featuregap import FeatureGapProbe
from .pretrained import default_recipe, load_checkpoint, recipe_with, resolve, save_checkpoint
from .results import ResultsStore, RunRecord, new_group_id, outcome_bits
from .validation import catastrophic_overfitting
from .registry import NATURAL
from .runtime import (RunLock, StopSignal, atomic_write_text, check_writable, provenance, resolve_device,
                      resolve_precision)

log = logging.getLogger(__name__)

MANIFEST = "run.json"
BEST_VAL_CHECKPOINT = "best-val.pt"
CONFIG_FILE = "config.yaml"
# Fields that may differ between a run and its resumption (where it runs, not what it computes).
RESUMABLE_DIFFERENCES = ("device", "out")


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


def _read_manifest(out_root: Path) -> Optional[Dict[str, Any]]:
    path = out_root / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc}); it is not a bench run folder") from None


def _flatten(settings: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value and key != "method_params":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _configuration_differences(stored: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """Settings that differ between a stored run and the command resuming it (dotted names).

    A setting the stored run does not know was added by a newer version of the package; it keeps
    its default and is reported in the log, not as a difference.
    """
    old, new = _flatten(stored), _flatten(current)
    added = sorted(set(new) - set(old))
    if added:
        log.warning("settings unknown to the version that started this run take their current values: %s",
                    ", ".join(f"{key}={new[key]}" for key in added))
    keys = set(old) - {k for k in old if k.split(".")[0] in RESUMABLE_DIFFERENCES}
    return sorted(key for key in keys if old.get(key) != new.get(key))


def _open_group(out_root: Path, stored_config: Dict[str, Any], resume: bool, command: Optional[List[str]],
                group_id: str) -> str:
    """The group id of the run in ``out_root``: the stored one when resuming, else a new manifest."""
    manifest = _read_manifest(out_root)
    comparable = json.loads(json.dumps(stored_config, default=str))
    if manifest is not None:
        if not resume:
            raise ConfigError(f"--out {out_root} already holds run {manifest['group_id']}; add --resume to continue "
                              "it, or choose another --out")
        different = _configuration_differences(manifest["config"], comparable)
        if different:
            raise ConfigError(f"--resume with different settings than run {manifest['group_id']} in {out_root} "
                              f"({', '.join(different)}); repeat the original command: "
                              f"{' '.join(manifest.get('command') or [])}")
        log.info("resuming run %s in %s", manifest["group_id"], out_root)
        return manifest["group_id"]
    atomic_write_text(json.dumps({"group_id": group_id, "config": comparable, "command": command,
                                  "created_at": time.time()}, indent=2) + "\n", out_root / MANIFEST)
    return group_id


@dataclass
class _Context:
    config: RunConfig
    data: DataBundle
    eval_config: EvalConfig
    store: Optional[Any]  # a ResultsStore, or per-cell record files for jobs (launch.RecordFiles)
    group_id: str
    out_root: Path
    stored_config: Dict[str, Any]
    origin: Dict[str, str]
    source: str
    resume: bool
    progress: bool
    stop: Optional[StopSignal]
    device: torch.device
    probe: Optional[FeatureGapProbe]
    natural_gap: List[Dict[str, float]]
    dist: DistContext = SINGLE


def _cell_id(cell_dir: Path, selection: str = "last") -> str:
    """The store's run id of a cell's row for ``selection``, fixed on first use so that a resumed
    cell replaces its row (``cell.json`` keeps ``run_id`` for the last weights, ``run_id_best-val``
    for the best validated epoch's)."""
    path = cell_dir / "cell.json"
    ids = json.loads(path.read_text()) if path.is_file() else {}
    key = "run_id" if selection == "last" else f"run_id_{selection}"
    if key not in ids:
        ids[key] = uuid.uuid4().hex
        atomic_write_text(json.dumps(ids) + "\n", path)
    return ids[key]


def _evaluate(context: _Context, model: nn.Module, state_dir: Path):
    """Evaluate ``model`` with the run's protocol (every rank its shard under torchrun); the result on
    rank 0, None on the others."""
    dist = context.dist
    if dist.enabled:
        evaluate(model, context.data, context.eval_config, context.device, progress=context.progress and dist.is_main,
                 state_dir=state_dir, stop=context.stop, shard=(dist.rank, dist.world_size))
        barrier(dist)
        if not dist.is_main:
            return None
    return evaluate(model, context.data, context.eval_config, context.device, progress=context.progress,
                    state_dir=state_dir, stop=context.stop)


@dataclass
class _Tuned:
    """What fine-tuning left for the cell's rows (from this process's fine-tuning or from final.pt)."""

    version: int = 0
    train_seconds: Optional[float] = None
    images_per_second: Optional[float] = None
    validation: List[Dict[str, float]] = dataclasses.field(default_factory=list)
    best_val_epoch: Optional[int] = None
    passes_per_image: Optional[Dict[str, float]] = None


def cell_name(method: str, seed: int) -> str:
    """The folder of a cell inside ``--out``."""
    return NATURAL if method == NATURAL else f"{method}-seed{seed}"


def _run_cell(context: _Context, natural: nn.Module, method: str, seed: int, step: int, total: int) -> str:
    config, data = context.config, context.data
    cell_dir = context.out_root / cell_name(method, seed)
    done = cell_dir / "done.json"
    dist = context.dist
    if done.is_file():
        finished_id = json.loads(done.read_text())["run_id"]
        backfill = (not dist.enabled and isinstance(context.store, ResultsStore)
                    and context.store.samples(finished_id) is None)
        if not backfill:
            log.info("[%d/%d] %s seed %d: finished earlier, skipped", step, total, method, seed)
            return finished_id
        # Finished by a version that did not store per-sample outcomes: evaluating again reads the
        # cell's saved per-batch results (no attack runs) and stores them with the row.
        log.info("[%d/%d] %s seed %d: finished earlier; storing its per-sample results", step, total, method, seed)
    # Under torchrun every rank works on the cell; rank 0 alone writes its files and its row.
    run_id = _cell_id(cell_dir) if dist.is_main else ""
    if not dist.is_main:
        cell_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    extra: Dict[str, Any] = {"pretrained_source": context.source, "precision": {
        "fine_tuning": resolve_precision(config.train.precision, context.device),
        "clean_pgd_cw": resolve_precision(context.eval_config.precision, context.device),
        "autoattack": resolve_precision(context.eval_config.aa_precision, context.device)},
        "processes": dist.world_size, "input_shape": list(data.input_shape)}
    normalize = getattr(natural, "normalize", None)
    if normalize is not None:
        extra["normalisation"] = {"mean": [round(float(v), 6) for v in normalize.mean.flatten()],
                                  "std": [round(float(v), 6) for v in normalize.std.flatten()]}
    record = dict(group_id=context.group_id, method=method, dataset=data.name, arch=config.arch, seed=seed,
                  norm=context.eval_config.norm, provenance=context.origin)
    tuned_info = _Tuned()
    feature_gap = list(context.natural_gap)
    best_model: Optional[nn.Module] = None  # with --select best-val: the best validated epoch's weights
    try:
        if method == NATURAL:
            model = natural
            extra["checkpoint"] = context.source
            log.info("[%d/%d] evaluating the natural model (%s)", step, total, context.source)
        elif (cell_dir / "final.pt").is_file():
            model, info = load_checkpoint(str(cell_dir / "final.pt"), data, config.arch)
            metadata = info["metadata"]
            tuned_info = _Tuned(metadata["method_version"], metadata["train_seconds"], metadata["images_per_second"],
                                metadata.get("validation", []), metadata.get("best_val_epoch"),
                                metadata.get("passes_per_image"))
            extra["method_params_used"] = metadata["params"]
            extra["training_history"] = metadata.get("history", [])
            feature_gap += metadata.get("feature_gap", [])
            if config.train.select == "best-val" and tuned_info.best_val_epoch is not None:
                best_path = cell_dir / BEST_VAL_CHECKPOINT
                best_model = load_checkpoint(str(best_path), data, config.arch)[0] if best_path.is_file() else model
            log.info("[%d/%d] %s seed %d: fine-tuned earlier; evaluating", step, total, method, seed)
        else:
            log.info("[%d/%d] fine-tuning %s, seed %d", step, total, method, seed)
            tuned = fine_tune(method, natural, data, config.train, eps=context.eval_config.eps, seed=seed,
                              device=context.device, params=config.method_params.get(method),
                              out_dir=cell_dir, progress=context.progress, resume=context.resume, stop=context.stop,
                              probe=context.probe, dist=dist)
            tuned_info = _Tuned(tuned.method_version, tuned.seconds, tuned.images_per_second, tuned.validation,
                                tuned.best_val_epoch, tuned.passes_per_image)
            extra["method_params_used"] = tuned.params
            extra["training_history"] = tuned.history
            feature_gap += tuned.feature_gap
            metadata = dict(method=method, seed=seed, method_version=tuned.method_version, params=tuned.params,
                            train_seconds=tuned.seconds, images_per_second=tuned.images_per_second,
                            feature_gap=tuned.feature_gap, history=tuned.history, validation=tuned.validation,
                            best_val_epoch=tuned.best_val_epoch, passes_per_image=tuned.passes_per_image)
            best_model = tuned.best_val_model
            if dist.is_main:
                if best_model is not None and best_model is not tuned.model:
                    save_checkpoint(best_model, cell_dir / BEST_VAL_CHECKPOINT, config.arch, data,
                                    **{**metadata, "selected_epoch": tuned.best_val_epoch})
                # final.pt last: its presence means the cell's fine-tuning is complete.
                save_checkpoint(tuned.model, cell_dir / "final.pt", config.arch, data, **metadata)
            model = tuned.model.to(context.device)
            if best_model is tuned.model:
                best_model = model
            log.info("[%d/%d] %s seed %d: %.1f s, %.0f images/s; evaluating", step, total, method, seed,
                     tuned.seconds, tuned.images_per_second)
        if method != NATURAL:
            extra["checkpoint"] = str((cell_dir / "final.pt").resolve())  # usable from any working directory
        model = model.to(context.device)
        evaluation_start = time.perf_counter()
        result = _evaluate(context, model, cell_dir)
        eval_seconds = time.perf_counter() - evaluation_start
        best_result, best_seconds = None, None
        if best_model is model:
            best_result, best_seconds = result, eval_seconds  # the best epoch is the last: the same weights
        elif best_model is not None:
            log.info("[%d/%d] %s seed %d: evaluating the best validated epoch (%d)", step, total, method, seed,
                     tuned_info.best_val_epoch)
            evaluation_start = time.perf_counter()
            best_result = _evaluate(context, best_model.to(context.device), cell_dir / "best-val")
            best_seconds = time.perf_counter() - evaluation_start
        if not dist.is_main:
            return run_id
    except (Interrupted, NumericalError) as exc:
        if not dist.is_main:
            raise
        status = "interrupted" if isinstance(exc, Interrupted) else "failed"
        context.store.add(RunRecord(**record, method_version=tuned_info.version, eps=context.eval_config.eps,
                                    n_eval=len(select_subset(len(data.test), context.eval_config.n_eval,
                                                             context.eval_config.seed)),
                                    metrics={}, config={**context.stored_config, **extra}, flags=[str(exc)],
                                    wall_seconds=time.perf_counter() - start, status=status), run_id=run_id)
        raise
    overfitting = catastrophic_overfitting(tuned_info.validation)
    common = dict(record, method_version=tuned_info.version, config={**context.stored_config, **extra},
                  train_seconds=tuned_info.train_seconds, images_per_second=tuned_info.images_per_second,
                  feature_gap=feature_gap, validation=tuned_info.validation,
                  passes_per_image=tuned_info.passes_per_image)
    done_payload: Dict[str, Any] = {"run_id": run_id, "accuracy": result.accuracy}
    last_epoch = None if method == NATURAL else config.train.epochs
    for selection, evaluated, seconds, epoch, row_id in (
            ("last", result, eval_seconds, last_epoch, run_id),
            ("best-val", best_result, best_seconds, tuned_info.best_val_epoch,
             _cell_id(cell_dir, "best-val") if best_result is not None else None)):
        if evaluated is None:
            continue
        if selection == "best-val" and best_model is not model:
            common["config"] = {**common["config"], "checkpoint": str((cell_dir / BEST_VAL_CHECKPOINT).resolve())}
        context.store.add(RunRecord(**common, eps=evaluated.eps, n_eval=evaluated.n, metrics=evaluated.accuracy,
                                    flags=evaluated.flags + ([overfitting] if overfitting else []),
                                    wall_seconds=time.perf_counter() - start, eval_seconds=seconds,
                                    selection=selection, selected_epoch=epoch,
                                    indices=[int(i) for i in evaluated.indices],
                                    per_sample={name: outcome_bits(values)
                                                for name, values in evaluated.correct.items()}),
                          run_id=row_id)
        if selection != "last":
            done_payload[f"run_id_{selection}"] = row_id
    if overfitting:
        log.warning("%s seed %d: %s", method, seed, overfitting)
    atomic_write_text(json.dumps(done_payload) + "\n", done)
    return run_id


def run(config: RunConfig, progress: bool = True, resume: bool = False, stop: Optional[StopSignal] = None,
        command: Optional[List[str]] = None) -> RunSummary:
    """Run the whole AFT protocol described by ``config`` and store every result.

    Everything the user can get wrong is checked before anything is written. ``resume`` continues
    the run found in ``config.out`` (see the module docstring); ``stop`` turns SIGINT/SIGTERM into
    a clean :class:`Interrupted` after the current batch, with the state saved.
    """
    start = time.perf_counter()
    if resume and not config.out:
        raise ConfigError("--resume needs the --out folder of the run to continue")
    device = resolve_device(config.device)
    dist, device = distributed.initialize(device)
    try:
        data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download)
        eval_config = dataclasses.replace(config.eval,
                                          eps=data.default_eps if config.eval.eps is None else config.eval.eps)
        select_subset(len(data.test), eval_config.n_eval, eval_config.seed)
        check_writable(config.db, "--db", folder=False)
        group_id = distributed.gather_objects(new_group_id(), dist)[0]
        out_root = Path(config.out) if config.out else Path(config.db).parent / group_id
        check_writable(out_root, "--out", folder=True)
        manifest = _read_manifest(out_root) if dist.is_main else None
        if manifest is not None and not resume:
            raise ConfigError(f"--out {out_root} already holds run {manifest['group_id']}; add --resume to continue "
                              "it, or choose another --out")
        barrier(dist)  # rank 0 has checked the folder before anyone writes to it
        try:
            return _run_in(out_root, config, data, eval_config, device, group_id, progress, resume, stop, command,
                           start, dist)
        except Interrupted as exc:
            if (out_root / MANIFEST).is_file():
                exc.state_dir = str(out_root)
            raise
    finally:
        distributed.shutdown()


def _check_methods_fit(config: RunConfig, data: DataBundle) -> None:
    """Refuse, before any pre-training, a method that cannot fine-tune the run's architecture."""
    shape_only = build_model(config.arch, data.num_classes, data.input_shape[0], data.mean, data.std,
                             data.input_shape)
    for method in config.methods:
        check_method_fits(method, shape_only, config.arch)


def _run_in(out_root: Path, config: RunConfig, data: DataBundle, eval_config: EvalConfig, device: torch.device,
            group_id: str, progress: bool, resume: bool, stop: Optional[StopSignal], command: Optional[List[str]],
            start: float, dist: DistContext) -> RunSummary:
    _check_methods_fit(config, data)
    recipe = recipe_with(default_recipe(data), **config.natural)
    if not dist.is_main:
        barrier(dist)  # rank 0 pre-trains (or loads) the natural model first; the others load its cache
    natural, info = resolve(config.pretrained, data, config.arch, seed=config.pretrained_seed, device=device,
                            recipe=recipe, progress=progress and dist.is_main, stop=stop)
    if dist.is_main:
        barrier(dist)
    with RunLock(out_root) if dist.is_main else contextlib.nullcontext():
        stored_config = {**config.to_dict(), "eval": dataclasses.asdict(eval_config)}
        if dist.is_main:
            group_id = _open_group(out_root, stored_config, resume, command, group_id)
            atomic_write_text(dump_run_config(config, f"run {group_id}: load with bench run --config"),
                              out_root / CONFIG_FILE)
        store = ResultsStore(config.db) if dist.is_main else None
        cells = [(NATURAL, config.pretrained_seed)] + [(m, s) for m in config.methods for s in config.seeds]
        if dist.enabled:
            log.info("torchrun: %d processes, global batch %d (%d per process)%s", dist.world_size,
                     config.train.batch_size, config.train.batch_size // dist.world_size,
                     ", synchronised BatchNorm" if config.train.sync_bn else ", BatchNorm statistics per process")
        log.info("run %s: %s on %s/%s, eps %.4g, %d model(s) to evaluate, results in %s, state in %s", group_id,
                 ",".join(config.methods), data.name, config.arch, eval_config.eps, len(cells), config.db, out_root)
        probe, natural_gap = None, []
        if config.train.feature_gap_probe > 0 and dist.is_main:
            probe = FeatureGapProbe(data.train, config.train.feature_gap_probe, eval_config.eps, eval_config.norm)
            natural_gap = [{"epoch": 0, **probe.measure(natural)}]
            log.info("feature gap of the natural model on %d probe images: L2 %.4f, 1-cos %.4f (%.1f s)", len(probe),
                     natural_gap[0]["l2"], natural_gap[0]["cosine"], natural_gap[0]["seconds"])
        context = _Context(config=config, data=data, eval_config=eval_config, store=store, group_id=group_id,
                           out_root=out_root, stored_config=stored_config, origin=provenance(device),
                           source=info["source"], resume=resume, progress=progress, stop=stop,
                           device=device, probe=probe, natural_gap=natural_gap, dist=dist)
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
    return RunSummary(group_id=group_id, db=config.db, out=str(out_root), run_ids=run_ids,
                      seconds=time.perf_counter() - start, rank=dist.rank, diverged=diverged)


def prepare_run(config: RunConfig) -> tuple:
    """The dataset and the evaluation settings of ``config``, checked (shared by the launchers)."""
    data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download)
    eval_config = dataclasses.replace(config.eval, eps=data.default_eps if config.eval.eps is None else config.eval.eps)
    select_subset(len(data.test), eval_config.n_eval, eval_config.seed)
    return data, eval_config


def open_run_folder(config: RunConfig, out_root: Path, eval_config: EvalConfig, resume: bool,
                    command: Optional[List[str]]) -> str:
    """Create (or, with ``resume``, reopen) the run folder's manifest; returns the run's group id."""
    check_writable(config.db, "--db", folder=False)
    check_writable(out_root, "--out", folder=True)
    stored_config = {**config.to_dict(), "eval": dataclasses.asdict(eval_config)}
    return _open_group(out_root, stored_config, resume, command, new_group_id())


def run_one_cell(config: RunConfig, out_root: Path, method: str, seed: int, sink: Any, progress: bool = False,
                 stop: Optional[StopSignal] = None) -> str:
    """Run one (method, seed) cell of the run in ``out_root`` in this process, continuing whatever
    the cell left on disk, and hand its record to ``sink`` (what a Slurm job of the grid does)."""
    manifest = _read_manifest(out_root)
    if manifest is None:
        raise ConfigError(f"{out_root} holds no {MANIFEST}; it is not the folder of a submitted run")
    device = resolve_device(config.device)
    data, eval_config = prepare_run(config)
    recipe = recipe_with(default_recipe(data), **config.natural)
    natural, info = resolve(config.pretrained, data, config.arch, seed=config.pretrained_seed, device=device,
                            recipe=recipe, progress=progress, stop=stop)
    stored_config = {**config.to_dict(), "eval": dataclasses.asdict(eval_config)}
    probe, natural_gap = None, []
    if config.train.feature_gap_probe > 0:
        probe = FeatureGapProbe(data.train, config.train.feature_gap_probe, eval_config.eps, eval_config.norm)
        natural_gap = [{"epoch": 0, **probe.measure(natural)}]
    context = _Context(config=config, data=data, eval_config=eval_config, store=sink, group_id=manifest["group_id"],
                       out_root=out_root, stored_config=stored_config, origin=provenance(device), source=info["source"],
                       resume=True, progress=progress, stop=stop, device=device, probe=probe,
                       natural_gap=natural_gap)
    with RunLock(out_root / cell_name(method, seed)):
        return _run_cell(context, natural, method, seed, 1, 1)


def leaderboard(db: str, group_id: Optional[str] = None, rank_by: Optional[str] = None, selection: str = "last"):
    """The aggregated leaderboard of a results store as a pandas DataFrame (see leaderboard.py),
    with the noise-aware ``rank`` column of compare.py; ``selection`` picks the ``last`` or the
    ``best-val`` weights of each fine-tuned model (validation.py)."""
    from .compare import add_rank_column
    from .leaderboard import latest_runs_frame, leaderboard_frame

    store = ResultsStore(db)
    rows = store.rows(group_id, selection=selection)
    frame = leaderboard_frame(rows)
    if frame.empty:
        return frame
    return add_rank_column(frame, store, latest_runs_frame(rows), rank_by)


__all__ = ["RunSummary", "leaderboard", "run"]
