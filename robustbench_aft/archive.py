"""Finished runs as small JSON files, and back: results that outlive the store that measured them.

A long measurement (the CIFAR-10 CPU table takes hours per seed) is spread over sessions and
machines, and a store is a binary file that must not be committed. ``bench dump`` writes every
finished run of a store as one JSON file (metrics, per-sample outcomes and evaluated indices,
validation curve, costs, configuration, provenance, flags), named after its cell; ``bench load``
puts such files into a store, keeping each run's id and creation time, so loading twice changes
nothing and the leaderboard, ``bench compare`` and ranks work on the loaded runs as on the originals.
Checkpoints are not part of a dump: analyses that re-evaluate models need the original run folder.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import List

from .errors import ConfigError
from .files import atomic_write_text
from .results import ResultsStore, RunRecord

FORMAT = "robustbench-aft-run/1"


def run_file_name(record: RunRecord) -> str:
    """``<method>-seed<seed>`` plus ``-best-val`` for the best validated epoch's row (the dump adds the run id)."""
    selection = "" if record.selection == "last" else f"-{record.selection}"
    return f"{record.method}-seed{record.seed}{selection}"


def dump_runs(db: str, folder: Path) -> List[Path]:
    """Write every finished run of the store ``db`` to ``folder``; returns the files written."""
    store = ResultsStore(db)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for run in store.runs():
        if run["status"] != "finished":
            continue
        record = store.record(run["run_id"])
        path = folder / f"{run_file_name(record)}-{run['run_id'][:8]}.json"
        payload = {"format": FORMAT, "run_id": run["run_id"], "record": dataclasses.asdict(record)}
        atomic_write_text(json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n", path)
        written.append(path)
    return written


def load_runs(folder: Path, db: str) -> List[str]:
    """Store every ``*.json`` run file of ``folder`` in ``db``; returns the run ids. A file that is
    not a run file is a ConfigError naming it, raised before anything is stored."""
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise ConfigError(f"{folder} holds no run files (*.json written by bench dump)")
    payloads = []
    for path in files:
        try:
            payload = json.loads(path.read_text())
            if payload.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            payloads.append((payload["run_id"], RunRecord(**payload["record"])))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{path} is not a run file written by bench dump ({exc})") from None
    store = ResultsStore(db)
    return [store.add(record, run_id=run_id) for run_id, record in payloads]
