"""The run folder (``--out``), the unit of resumption, and its bookkeeping.

It holds ``run.json`` (the manifest: the run's group id, configuration and command),
``config.yaml`` (the resolved configuration, loadable with ``bench run --config``), ``run.log``
(every log line of the run, third-party progress messages included), a ``.lock``
while a process works in it, and one folder per cell (``natural``, ``afd-seed0``, …) with the
fine-tuning checkpoint ``last.pt``, the exported ``final.pt``, the per-sample evaluation results
``eval-*/batch-*.pt``, ``cell.json`` (the store's row ids of the cell) and, once the cell's rows are
in the store, ``done.json``.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

from .errors import ConfigError
from .files import atomic_write_text, check_writable
from .registry import NATURAL
from .results import new_group_id

log = logging.getLogger(__name__)

MANIFEST = "run.json"
BEST_VAL_CHECKPOINT = "best-val.pt"
CONFIG_FILE = "config.yaml"
DONE = "done.json"
RUN_LOG = "run.log"
# Fields that may differ between a run and its resumption (where it runs, not what it computes).
RESUMABLE_DIFFERENCES = ("device", "out", "log")
# Settings a stored configuration may hold under another name (written by an earlier version).
_RENAMED = {"threat.eps": "eval.eps", "threat.norm": "eval.norm", "threat.eps_text": "eval.eps_text"}


def read_manifest(out_root: Path) -> Optional[Dict[str, Any]]:
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


def configuration_differences(stored: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """Settings that differ between a stored run and the command resuming it (dotted names).

    A setting stored under its earlier name (``_RENAMED``) is compared under its current one. A
    setting the stored run does not know was added by a newer version of the package; it keeps its
    default and is reported in the log, not as a difference.
    """
    old, new = _flatten(stored), _flatten(current)
    for key, earlier_name in _RENAMED.items():
        if key not in old and earlier_name in old:
            old[key] = old[earlier_name]
    added = sorted(set(new) - set(old))
    if added:
        log.warning("settings unknown to the version that started this run take their current values: %s",
                    ", ".join(f"{key}={new[key]}" for key in added))
    keys = set(old) - {k for k in old if k.split(".")[0] in RESUMABLE_DIFFERENCES}
    return sorted(key for key in keys if old.get(key) != new.get(key))


def open_group(out_root: Path, stored_config: Dict[str, Any], resume: bool, command: Optional[List[str]],
                group_id: str) -> str:
    """The group id of the run in ``out_root``: the stored one when resuming, else a new manifest."""
    manifest = read_manifest(out_root)
    comparable = json.loads(json.dumps(stored_config, default=str))
    if manifest is not None:
        if not resume:
            raise ConfigError(f"--out {out_root} already holds run {manifest['group_id']}; add --resume to continue "
                              "it, or choose another --out")
        different = configuration_differences(manifest["config"], comparable)
        if different:
            raise ConfigError(f"--resume with different settings than run {manifest['group_id']} in {out_root} "
                              f"({', '.join(different)}); repeat the original command: "
                              f"{' '.join(manifest.get('command') or [])}")
        log.info("resuming run %s in %s", manifest["group_id"], out_root)
        return manifest["group_id"]
    atomic_write_text(json.dumps({"group_id": group_id, "config": comparable, "command": command,
                                  "created_at": time.time()}, indent=2) + "\n", out_root / MANIFEST)
    return group_id



def cell_id(cell_dir: Path, selection: str = "last") -> str:
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



def cell_name(method: str, seed: int) -> str:
    """The folder of a cell inside ``--out``."""
    return NATURAL if method == NATURAL else f"{method}-seed{seed}"



def open_run_folder(db: str, out_root: Path, stored_config: Dict[str, Any], resume: bool,
                    command: Optional[List[str]]) -> str:
    """Create (or, with ``resume``, reopen) the run folder's manifest; returns the run's group id."""
    check_writable(db, "--db", folder=False)
    check_writable(out_root, "--out", folder=True)
    return open_group(out_root, stored_config, resume, command, new_group_id())
