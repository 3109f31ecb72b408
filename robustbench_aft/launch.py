"""Grids on Slurm: one submitit job per (method, seed) cell of a ``bench run``, and ``bench collect``.

``bench run … --launcher slurm`` (or ``submitit-local``: submitit's LocalExecutor, the same code
path on one machine) writes the run's manifest to ``--out``, submits the natural cell first when
the natural model still has to be pre-trained (every other cell loads it from the cache), then
one job per remaining cell as one job array, and waits. Each job runs
:func:`robustbench_aft.pipeline.run_one_cell` and writes its result record as
``<cell>/record.json`` — jobs never write the SQLite store, which does not survive concurrent
writers on a network filesystem. ``bench collect --out DIR`` (also run when the submitter's wait
ends) ingests the records into ``--db`` and lists every cell that is not finished, with its
job's log files; ``bench run … --launcher slurm --resume`` resubmits exactly those.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import _compat
from .config import LAUNCHERS, RunConfig
from .errors import ConfigError
from .files import atomic_write_text, check_writable
from .pipeline import prepare_run, run_one_cell
from .pretrained import cache_path
from .registry import NATURAL
from .results import ResultsStore, RunRecord
from .runfolder import DONE, MANIFEST, cell_name, open_run_folder
from .signals import StopSignal

log = logging.getLogger(__name__)

RECORD = "record.json"
FAILED = "failed.json"
JOBS = "jobs.json"


@dataclass
class SlurmOptions:
    """Resources of every job of the grid (``--slurm-*``)."""

    partition: Optional[str] = None
    gpus_per_job: int = 1
    time_minutes: int = 240
    array_parallelism: int = 32
    cpus_per_job: int = 8


class RecordFiles:
    """The results sink of a job: ``<cell>/record.json`` instead of a row in the shared store."""

    def __init__(self, out_root: Path) -> None:
        self.out_root = out_root

    def add(self, record: RunRecord, run_id: Optional[str] = None) -> str:
        payload = {"run_id": run_id, "record": dataclasses.asdict(record)}
        atomic_write_text(json.dumps(payload, default=str) + "\n",
                          self.out_root / cell_name(record.method, record.seed) / record_file(record.selection))
        return run_id or ""


def record_file(selection: str) -> str:
    """The record file of a cell's row: ``record.json`` for the last weights (the only one before
    --select existed), ``record-best-val.json`` for the best validated epoch's."""
    return RECORD if selection == "last" else f"record-{selection}.json"


def run_cell_job(config: RunConfig, out_root: str, method: str, seed: int, threads: Optional[int] = None) -> str:
    """The body of one job: run the cell, or leave ``failed.json`` with the one-line reason.

    ``threads``: torch's intra-op threads for this job (None: torch's default, all the cores it sees).
    """
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s", stream=sys.stderr, force=True)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        log.info("%s seed %d: %d torch thread(s), as the grid runs its jobs side by side", method, seed, threads)
    root = Path(out_root)
    failed = root / cell_name(method, seed) / FAILED
    failed.unlink(missing_ok=True)
    try:
        with StopSignal() as stop:
            return run_one_cell(config, root, method, seed, RecordFiles(root), progress=False, stop=stop)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        atomic_write_text(json.dumps({"error": f"{type(exc).__name__}: {reason}", "at": time.time()}) + "\n", failed)
        raise


def _executor(launcher: str, folder: Path, options: SlurmOptions, name: str):
    submitit = _compat.import_submitit()
    if launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=options.time_minutes)
        return executor
    if shutil.which("sbatch") is None:
        raise ConfigError("--launcher slurm needs Slurm's sbatch on this machine (not found); run on the cluster's "
                          "login node, or use --launcher submitit-local to try the grid here")
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    parameters: Dict[str, Any] = {"timeout_min": options.time_minutes, "gpus_per_node": options.gpus_per_job,
                                  "cpus_per_task": options.cpus_per_job, "tasks_per_node": 1, "nodes": 1,
                                  "slurm_array_parallelism": options.array_parallelism, "name": name}
    if options.partition:
        parameters["slurm_partition"] = options.partition
    executor.update_parameters(**parameters)
    return executor


def local_job_threads(concurrent_jobs: int) -> int:
    """Threads per job when ``concurrent_jobs`` run at once on this machine (submitit-local).

    Every job would otherwise start one OpenMP thread per core: on 2 cores, 4 jobs of 2 spinning
    threads each ran a digits fine-tuning at 13 images/s instead of hundreds.
    """
    return max(1, (os.cpu_count() or 1) // max(1, concurrent_jobs))


def _job_threads(launcher: str, concurrent_jobs: int) -> Optional[int]:
    # LocalExecutor starts every job at once on this machine; Slurm gives each job its own cores.
    return local_job_threads(concurrent_jobs) if launcher == "submitit-local" else None


def _job_entry(job: Any) -> Dict[str, str]:
    return {"job_id": str(job.job_id), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
            "submitted_at": time.strftime("%Y-%m-%d %H:%M:%S")}


def _wait(jobs: Dict[str, Any]) -> None:
    from tqdm.auto import tqdm

    pending = dict(jobs)
    with tqdm(total=len(jobs), desc="jobs", unit="cell", disable=None) as bar:
        while pending:
            for name, job in list(pending.items()):
                if job.done():
                    del pending[name]
                    bar.update(1)
                    if job.exception() is not None:
                        log.warning("cell %s: job %s failed (see %s)", name, job.job_id, job.paths.stderr)
            if pending:
                time.sleep(2)


@dataclass
class GridSummary:
    out: str
    db: str
    submitted: List[str] = field(default_factory=list)
    collected: Optional["CollectReport"] = None


def submit_grid(config: RunConfig, launcher: str, options: SlurmOptions, resume: bool,
                command: Optional[List[str]], wait: bool = True) -> GridSummary:
    """Submit every cell of ``config`` that is not done as a submitit job; wait and collect."""
    if launcher not in LAUNCHERS[1:]:
        raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if not config.out:
        raise ConfigError(f"--launcher {launcher} needs --out: a folder every job can reach (a shared filesystem "
                          "on a cluster)")
    out_root = Path(config.out).resolve()
    check_writable(out_root, "--out", folder=True)
    prepared = prepare_run(config)
    executor = _executor(launcher, out_root / "logs", options, name=f"bench-{prepared.data.key}")
    open_run_folder(config.db, out_root, prepared.stored_config, resume, command)
    jobs_file = out_root / JOBS
    registry: Dict[str, Dict[str, str]] = json.loads(jobs_file.read_text()) if jobs_file.is_file() else {}
    todo = [(m, s) for m, s in prepared.cells if not (out_root / cell_name(m, s) / DONE).is_file()]
    summary = GridSummary(out=str(out_root), db=config.db)
    if not todo:
        log.info("every cell of %s is done already", out_root)
    jobs: Dict[str, Any] = {}

    def remember(name: str, job: Any) -> None:
        jobs[name] = job
        registry[name] = _job_entry(job)
        atomic_write_text(json.dumps(registry, indent=2) + "\n", jobs_file)
        summary.submitted.append(name)

    natural_cached = config.pretrained != "auto" or cache_path(prepared.data, config.arch, config.pretrained_seed,
                                                                   prepared.natural_recipe).is_file()
    if (NATURAL, config.pretrained_seed) in todo and not natural_cached:
        # Every cell fine-tunes the same natural model: pre-train it once, before the grid.
        todo.remove((NATURAL, config.pretrained_seed))
        job = executor.submit(run_cell_job, config, str(out_root), NATURAL, config.pretrained_seed,
                              _job_threads(launcher, 1))
        remember(NATURAL, job)
        log.info("submitted the natural cell (job %s), which pre-trains the natural model; the grid follows it",
                 job.job_id)
        _wait({NATURAL: job})
        if not (out_root / NATURAL / RECORD).is_file():
            summary.collected = collect(out_root, config.db)
            return summary
    if todo:
        threads = _job_threads(launcher, len(todo))
        with executor.batch():
            pending = [(cell_name(m, s), executor.submit(run_cell_job, config, str(out_root), m, s, threads))
                       for m, s in todo]
        for name, job in pending:
            remember(name, job)
        log.info("submitted %d job(s) with %s; logs in %s", len(pending), launcher, out_root / "logs")
    if wait and jobs:
        _wait({name: job for name, job in jobs.items() if not job.done()})
    summary.collected = collect(out_root, config.db)
    return summary


@dataclass
class CellStatus:
    cell: str
    status: str  # ingested | failed | interrupted | missing
    detail: str = ""
    logs: str = ""


@dataclass
class CollectReport:
    cells: List[CellStatus]

    @property
    def complete(self) -> bool:
        return all(c.status == "ingested" for c in self.cells)

    def table(self) -> str:
        from tabulate import tabulate

        rows = [[c.cell, c.status, c.detail, c.logs] for c in self.cells]
        return tabulate(rows, headers=["cell", "status", "detail", "logs"], tablefmt="github")


def collect(out_root: Path, db: str) -> CollectReport:
    """Ingest every ``<cell>/record.json`` under ``out_root`` into the store ``db`` (idempotent: a
    cell's run id is fixed) and report the cells that have none, with their jobs' logs."""
    out_root = Path(out_root)
    manifest_path = out_root / MANIFEST
    if not manifest_path.is_file():
        raise ConfigError(f"--out {out_root} holds no {MANIFEST}; give the --out folder of a bench run")
    try:
        manifest = json.loads(manifest_path.read_text())
        settings = manifest["config"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{manifest_path} is unreadable ({exc})") from None
    jobs = json.loads((out_root / JOBS).read_text()) if (out_root / JOBS).is_file() else {}
    cells = [(NATURAL, settings["pretrained_seed"])] + [(m, s) for m in settings["methods"] for s in settings["seeds"]]
    store = ResultsStore(db)
    report: List[CellStatus] = []
    for method, seed in cells:
        name = cell_name(method, seed)
        folder = out_root / name
        job = jobs.get(name, {})
        logs = f"{job['stdout']} {job['stderr']}" if job else ""
        record_path = folder / RECORD
        if record_path.is_file():
            try:
                payload = json.loads(record_path.read_text())
                record = RunRecord(**payload["record"])
            except (OSError, ValueError, TypeError, KeyError) as exc:
                report.append(CellStatus(name, "failed", f"unreadable {RECORD}: {exc}", logs))
                continue
            store.add(record, run_id=payload["run_id"])
            selected = folder / record_file("best-val")
            if selected.is_file():
                try:
                    extra = json.loads(selected.read_text())
                    store.add(RunRecord(**extra["record"]), run_id=extra["run_id"])
                except (OSError, ValueError, TypeError, KeyError) as exc:
                    report.append(CellStatus(name, "failed", f"unreadable {selected.name}: {exc}", logs))
                    continue
            if record.status == "finished":
                report.append(CellStatus(name, "ingested", f"{len(record.metrics)} metrics"))
            else:
                report.append(CellStatus(name, record.status, "; ".join(record.flags)[:200], logs))
        elif (folder / FAILED).is_file():
            reason = json.loads((folder / FAILED).read_text()).get("error", "")
            report.append(CellStatus(name, "failed", reason[:200], logs))
        elif (folder / "done.json").is_file():
            report.append(CellStatus(name, "ingested", "finished by an in-process run"))
        else:
            report.append(CellStatus(name, "missing", "no record yet: still running, or the job died", logs))
    return CollectReport(report)


__all__ = ["LAUNCHERS", "CollectReport", "RecordFiles", "SlurmOptions", "collect", "run_cell_job", "submit_grid"]
