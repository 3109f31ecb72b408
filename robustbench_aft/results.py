"""The results store: one SQLite file, one row per run and one row per (run, metric).

WAL journal mode and a busy timeout let several ``bench run`` processes share one file; every
write is a transaction, so a killed run never leaves a half-written result.
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    group_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    method TEXT NOT NULL,
    method_version INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    arch TEXT NOT NULL,
    seed INTEGER NOT NULL,
    eps REAL NOT NULL,
    norm TEXT NOT NULL,
    n_eval INTEGER NOT NULL,
    status TEXT NOT NULL,
    config_json TEXT NOT NULL,
    flags_json TEXT NOT NULL,
    package_version TEXT NOT NULL,
    git_commit TEXT NOT NULL,
    torch_version TEXT NOT NULL,
    device TEXT NOT NULL,
    wall_seconds REAL NOT NULL,
    train_seconds REAL,
    images_per_second REAL
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (run_id, metric)
);
CREATE INDEX IF NOT EXISTS runs_key ON runs (method, dataset, arch, eps, seed);
CREATE TABLE IF NOT EXISTS samples (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    metric TEXT NOT NULL,
    correct TEXT NOT NULL,
    PRIMARY KEY (run_id, metric)
);
CREATE TABLE IF NOT EXISTS eval_points (
    run_id TEXT PRIMARY KEY REFERENCES runs(run_id),
    indices TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS head_gap (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    epoch INTEGER NOT NULL,
    l2 REAL NOT NULL,
    cosine REAL NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS validation (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    epoch INTEGER NOT NULL,
    clean REAL NOT NULL,
    pgd REAL NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS selection (
    run_id TEXT PRIMARY KEY REFERENCES runs(run_id),
    selection TEXT NOT NULL,
    epoch INTEGER
);
CREATE TABLE IF NOT EXISTS costs (
    run_id TEXT PRIMARY KEY REFERENCES runs(run_id),
    eval_seconds REAL,
    forward_per_image REAL,
    backward_per_image REAL
);
CREATE TABLE IF NOT EXISTS budgets (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    metric TEXT NOT NULL,
    budget_json TEXT NOT NULL,
    PRIMARY KEY (run_id, metric)
);
CREATE TABLE IF NOT EXISTS breakdown (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    metric TEXT NOT NULL,
    part TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (run_id, metric, part)
);
CREATE TABLE IF NOT EXISTS feature_gap (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    epoch INTEGER NOT NULL,
    l2 REAL NOT NULL,
    cosine REAL NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
"""
WRITE_ATTEMPTS = 6
# A run's status: finished (has metrics), interrupted (SIGINT/SIGTERM; resumable), failed (an error).
STATUSES = ("finished", "interrupted", "failed")


@dataclass
class RunRecord:
    """One evaluated model: a fine-tuned (method, seed) cell or the natural model."""

    group_id: str
    method: str
    method_version: int
    dataset: str
    arch: str
    seed: int
    eps: float
    norm: str
    n_eval: int
    metrics: Dict[str, float]
    config: Dict[str, Any]
    flags: List[str]
    provenance: Dict[str, str]
    wall_seconds: float
    train_seconds: Optional[float] = None
    images_per_second: Optional[float] = None
    status: str = "finished"
    # One dict per epoch (epoch 0 = the natural model): epoch, l2, cosine, seconds.
    feature_gap: List[Dict[str, float]] = field(default_factory=list)
    # The evaluated test-set indices, and per metric one character per point in that order: "1" where
    # the model is right under the attack (paired tests between models read these).
    indices: List[int] = field(default_factory=list)
    per_sample: Dict[str, str] = field(default_factory=dict)
    # Which weights were evaluated (validation.py): "last" or "best-val", and their epoch.
    selection: str = "last"
    selected_epoch: Optional[int] = None
    # One dict per fine-tuning epoch: epoch, clean, pgd (validation accuracies in %), seconds.
    validation: List[Dict[str, float]] = field(default_factory=list)
    eval_seconds: Optional[float] = None
    # Counted forward/backward passes per training image (passes.py).
    passes_per_image: Optional[Dict[str, float]] = None
    # When the row was first stored (None: now); kept when a record is moved between stores.
    created_at: Optional[float] = None
    # Per metric, the full budget its attack ran with (evaluator.EvalPlan.budget); empty for older rows.
    budgets: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # Per metric with parts (corruptions): accuracy in % per part (corruption, corruption@severity).
    breakdown: Dict[str, Dict[str, float]] = field(default_factory=dict)


def outcome_bits(correct: Any) -> str:
    """A boolean vector (tensor, array or list) as the store keeps it: one "0"/"1" per point."""
    return "".join("1" if bool(value) else "0" for value in list(correct))


@dataclass
class PerSample:
    """One run's evaluated test-set indices and, per metric, a boolean array over them."""

    indices: List[int]
    correct: Dict[str, Any]


def new_group_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


class ResultsStore:
    """The SQLite store at ``path`` (created with its folder on first use)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ConfigError(f"--db {self.path} is a directory; give a file such as {self.path / 'results.db'}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._write(lambda connection: connection.executescript(SCHEMA))
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"--db {self.path} is not a results database ({exc})") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(str(self.path), timeout=60.0)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=60000")
            yield connection
        finally:
            connection.close()

    def _write(self, write: Callable[[sqlite3.Connection], None]) -> None:
        # The busy timeout covers ordinary contention; a retry with backoff covers the rare
        # "database is locked" that SQLite returns at once (e.g. a WAL checkpoint in progress).
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self._connect() as connection, connection:
                    write(connection)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or attempt == WRITE_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 * 2 ** attempt)

    def add(self, record: RunRecord, run_id: Optional[str] = None) -> str:
        """Store one run and its metrics in a single transaction; returns the run id.

        Giving the ``run_id`` of a stored run replaces it (a resumed cell turns its
        ``interrupted`` row into the finished one).
        """
        run_id = run_id or uuid.uuid4().hex

        def write(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            connection.execute("DELETE FROM feature_gap WHERE run_id = ?", (run_id,))
            connection.execute("DELETE FROM samples WHERE run_id = ?", (run_id,))
            connection.execute("DELETE FROM eval_points WHERE run_id = ?", (run_id,))
            for table in ("validation", "selection", "costs", "head_gap", "budgets", "breakdown"):
                connection.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            connection.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, record.group_id, record.created_at or time.time(), record.method, record.method_version,
                 record.dataset, record.arch, record.seed, record.eps, record.norm, record.n_eval, record.status,
                 json.dumps(record.config, default=str, sort_keys=True), json.dumps(record.flags),
                 record.provenance.get("package_version", ""), record.provenance.get("git_commit", ""),
                 record.provenance.get("torch_version", ""), record.provenance.get("device", ""),
                 record.wall_seconds, record.train_seconds, record.images_per_second),
            )
            connection.executemany("INSERT INTO metrics VALUES (?, ?, ?)",
                                   [(run_id, metric, float(value)) for metric, value in record.metrics.items()])
            connection.executemany("INSERT INTO feature_gap VALUES (?, ?, ?, ?, ?)",
                                   [(run_id, int(row["epoch"]), float(row["l2"]), float(row["cosine"]),
                                     float(row["seconds"])) for row in record.feature_gap])
            connection.executemany("INSERT INTO head_gap VALUES (?, ?, ?, ?)",
                                   [(run_id, int(row["epoch"]), float(row["head_l2"]), float(row["head_cosine"]))
                                    for row in record.feature_gap if "head_l2" in row])
            connection.executemany("INSERT INTO validation VALUES (?, ?, ?, ?, ?)",
                                   [(run_id, int(row["epoch"]), float(row["clean"]), float(row["pgd"]),
                                     float(row["seconds"])) for row in record.validation])
            connection.execute("INSERT INTO selection VALUES (?, ?, ?)",
                               (run_id, record.selection, record.selected_epoch))
            passes = record.passes_per_image or {}
            connection.execute("INSERT INTO costs VALUES (?, ?, ?, ?)",
                               (run_id, record.eval_seconds, passes.get("forward"), passes.get("backward")))
            connection.executemany("INSERT INTO budgets VALUES (?, ?, ?)",
                                   [(run_id, metric, json.dumps(budget, sort_keys=True, default=str))
                                    for metric, budget in record.budgets.items()])
            connection.executemany("INSERT INTO breakdown VALUES (?, ?, ?, ?)",
                                   [(run_id, metric, part, float(value)) for metric, parts in record.breakdown.items()
                                    for part, value in parts.items()])
            if record.indices:
                connection.execute("INSERT INTO eval_points VALUES (?, ?)", (run_id, json.dumps(record.indices)))
                connection.executemany("INSERT INTO samples VALUES (?, ?, ?)",
                                       [(run_id, metric, bits) for metric, bits in record.per_sample.items()])

        self._write(write)
        return run_id

    def rows(self, group_id: Optional[str] = None, selection: str = "last") -> List[Dict[str, Any]]:
        """One dict per (run, metric) of finished runs, optionally of one ``bench run`` invocation.

        ``selection`` picks the fine-tuned weights whose results count (``last`` or ``best-val``,
        see validation.py); the natural model has one set of weights and is always included. Runs
        stored before selection existed are ``last``; their cost columns are empty (None).
        """
        query = ("SELECT r.run_id, r.group_id, r.created_at, r.method, r.method_version, r.dataset, r.arch, r.seed, "
                 "r.eps, r.norm, r.n_eval, r.flags_json, m.metric, m.value, "
                 "COALESCE(s.selection, 'last') AS selection, s.epoch AS selected_epoch, "
                 "r.train_seconds, c.eval_seconds, c.forward_per_image, c.backward_per_image, b.budget_json "
                 "FROM runs r JOIN metrics m ON r.run_id = m.run_id "
                 "LEFT JOIN budgets b ON r.run_id = b.run_id AND m.metric = b.metric "
                 "LEFT JOIN selection s ON r.run_id = s.run_id LEFT JOIN costs c ON r.run_id = c.run_id "
                 "WHERE r.status = 'finished' AND (COALESCE(s.selection, 'last') = ? OR r.method = 'natural')")
        arguments: tuple = (selection,)
        if group_id is not None:
            query += " AND r.group_id = ?"
            arguments = (selection, group_id)
        with self._connect() as connection:
            connection.row_factory = sqlite3.Row
            rows = [dict(row) for row in connection.execute(query + " ORDER BY r.created_at", arguments)]
        protocols = self.protocols({row["run_id"] for row in rows})
        for row in rows:
            row["protocol_id"], row["protocol"] = protocols[row["run_id"]]
        return rows

    def protocols(self, run_ids: Optional[set] = None) -> Dict[str, Tuple[str, Dict[str, Any]]]:
        """(protocol id, protocol record) of each run (protocol.py): the stored record, or for runs
        stored before it existed the one derived from their configuration, points and budgets."""
        from .protocol import protocol_id, protocol_of

        with self._connect() as connection:
            connection.row_factory = sqlite3.Row
            runs = connection.execute("SELECT run_id, method, dataset, arch, eps, norm, n_eval, config_json "
                                      "FROM runs").fetchall()
            points = dict(connection.execute("SELECT run_id, indices FROM eval_points").fetchall())
            budgets: Dict[str, Dict[str, Any]] = {}
            for run_id, metric, text in connection.execute("SELECT run_id, metric, budget_json FROM budgets"):
                budgets.setdefault(run_id, {})[metric] = json.loads(text)
        found = {}
        for run in runs:
            if run_ids is not None and run["run_id"] not in run_ids:
                continue
            indices = json.loads(points[run["run_id"]]) if run["run_id"] in points else None
            record = protocol_of(run["method"], run["dataset"], run["arch"], run["eps"], run["norm"], run["n_eval"],
                                 json.loads(run["config_json"]), indices, budgets.get(run["run_id"], {}))
            found[run["run_id"]] = (protocol_id(record), record)
        return found

    def feature_gaps(self) -> List[Dict[str, Any]]:
        """One dict per (finished run, epoch) with the run's method, dataset, arch, eps and seed (the
        gap is measured during fine-tuning, so the ``best-val`` rows repeat it and are left out)."""
        # The gap at the head's input was added later: older rows have it empty (None).
        query = ("SELECT r.run_id, r.group_id, r.created_at, r.method, r.dataset, r.arch, r.eps, r.seed, g.epoch, "
                 "g.l2, g.cosine, g.seconds, h.l2 AS head_l2, h.cosine AS head_cosine "
                 "FROM runs r JOIN feature_gap g ON r.run_id = g.run_id "
                 "LEFT JOIN head_gap h ON g.run_id = h.run_id AND g.epoch = h.epoch "
                 "LEFT JOIN selection s ON r.run_id = s.run_id "
                 "WHERE r.status = 'finished' AND COALESCE(s.selection, 'last') = 'last' "
                 "ORDER BY r.created_at, g.epoch")
        with self._connect() as connection:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute(query)]

    def validation_curves(self, selection: str = "last") -> List[Dict[str, Any]]:
        """One dict per (finished fine-tuned run, epoch) of the validation curve, with the run's
        method, dataset, arch, eps and seed (runs of the given ``selection``; the curve is the same)."""
        query = ("SELECT r.run_id, r.group_id, r.created_at, r.method, r.dataset, r.arch, r.eps, r.seed, v.epoch, "
                 "v.clean, v.pgd, v.seconds FROM runs r JOIN validation v ON r.run_id = v.run_id "
                 "LEFT JOIN selection s ON r.run_id = s.run_id "
                 "WHERE r.status = 'finished' AND COALESCE(s.selection, 'last') = ? ORDER BY r.created_at, v.epoch")
        with self._connect() as connection:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute(query, (selection,))]

    def breakdowns(self) -> List[Dict[str, Any]]:
        """One dict per (run, metric, part) of the per-part accuracies (corruptions: per corruption and
        corruption@severity), with the run's method, seed and setting and the metric's budget JSON."""
        query = ("SELECT r.run_id, r.created_at, r.method, r.seed, r.dataset, r.arch, r.eps, r.norm, k.metric, k.part, "
                 "k.value, b.budget_json FROM runs r JOIN breakdown k ON r.run_id = k.run_id "
                 "LEFT JOIN budgets b ON k.run_id = b.run_id AND k.metric = b.metric "
                 "LEFT JOIN selection s ON r.run_id = s.run_id "
                 "WHERE r.status = 'finished' AND COALESCE(s.selection, 'last') = 'last' "
                 "ORDER BY r.created_at, k.rowid")
        with self._connect() as connection:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute(query)]

    def samples(self, run_id: str) -> Optional["PerSample"]:
        """The evaluated points and per-sample outcomes of one run (None for runs stored before they
        were kept, or without an evaluation)."""
        import numpy as np

        with self._connect() as connection:
            points = connection.execute("SELECT indices FROM eval_points WHERE run_id = ?", (run_id,)).fetchone()
            if points is None:
                return None
            rows = connection.execute("SELECT metric, correct FROM samples WHERE run_id = ?", (run_id,)).fetchall()
        return PerSample(indices=json.loads(points[0]),
                         correct={metric: np.frombuffer(bits.encode(), dtype=np.uint8) == ord("1")
                                  for metric, bits in rows})

    def replace_flags(self, run_id: str, prefix: str, flag: Optional[str]) -> int:
        """Replace the run's flags that begin with ``prefix`` by ``flag`` (none when None); returns how
        many were removed. A later check of the same kind (``bench audit`` of one attack) supersedes
        the earlier one instead of piling up."""
        removed = 0

        def write(connection: sqlite3.Connection) -> None:
            nonlocal removed
            row = connection.execute("SELECT flags_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(run_id)
            flags = json.loads(row[0])
            kept = [f for f in flags if not f.startswith(prefix)]
            removed = len(flags) - len(kept)
            connection.execute("UPDATE runs SET flags_json = ? WHERE run_id = ?",
                               (json.dumps(kept + ([flag] if flag else [])), run_id))

        self._write(write)
        return removed

    def record(self, run_id: str) -> RunRecord:
        """The stored run ``run_id`` as the RunRecord that would store it again (what ``bench dump`` writes)."""
        with self._connect() as connection:
            connection.row_factory = sqlite3.Row
            run = connection.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if run is None:
                raise ConfigError(f"no run {run_id} in {self.path}")
            metrics = dict(connection.execute("SELECT metric, value FROM metrics WHERE run_id = ?", (run_id,)))
            heads = {row["epoch"]: row for row in connection.execute("SELECT * FROM head_gap WHERE run_id = ?",
                                                                      (run_id,))}
            gaps = [{"epoch": row["epoch"], "l2": row["l2"], "cosine": row["cosine"], "seconds": row["seconds"],
                     **({"head_l2": heads[row["epoch"]]["l2"], "head_cosine": heads[row["epoch"]]["cosine"]}
                        if row["epoch"] in heads else {})}
                    for row in connection.execute("SELECT * FROM feature_gap WHERE run_id = ? ORDER BY epoch",
                                                  (run_id,))]
            validation = [{k: row[k] for k in ("epoch", "clean", "pgd", "seconds")} for row in connection.execute(
                "SELECT * FROM validation WHERE run_id = ? ORDER BY epoch", (run_id,))]
            selection = connection.execute("SELECT selection, epoch FROM selection WHERE run_id = ?",
                                           (run_id,)).fetchone()
            cost = connection.execute("SELECT * FROM costs WHERE run_id = ?", (run_id,)).fetchone()
            points = connection.execute("SELECT indices FROM eval_points WHERE run_id = ?", (run_id,)).fetchone()
            bits = dict(connection.execute("SELECT metric, correct FROM samples WHERE run_id = ?", (run_id,)))
            budgets = {metric: json.loads(text) for metric, text in connection.execute(
                "SELECT metric, budget_json FROM budgets WHERE run_id = ?", (run_id,))}
            breakdown: Dict[str, Dict[str, float]] = {}
            for metric, part, value in connection.execute(
                    "SELECT metric, part, value FROM breakdown WHERE run_id = ? ORDER BY rowid", (run_id,)):
                breakdown.setdefault(metric, {})[part] = value
        passes = (None if cost is None or cost["forward_per_image"] is None
                  else {"forward": cost["forward_per_image"], "backward": cost["backward_per_image"]})
        return RunRecord(
            group_id=run["group_id"], method=run["method"], method_version=run["method_version"],
            dataset=run["dataset"], arch=run["arch"], seed=run["seed"], eps=run["eps"], norm=run["norm"],
            n_eval=run["n_eval"], metrics=metrics, config=json.loads(run["config_json"]),
            flags=json.loads(run["flags_json"]),
            provenance={k: run[k] for k in ("package_version", "git_commit", "torch_version", "device")},
            wall_seconds=run["wall_seconds"], train_seconds=run["train_seconds"],
            images_per_second=run["images_per_second"], status=run["status"], feature_gap=gaps,
            indices=json.loads(points[0]) if points else [], per_sample=bits,
            selection=selection[0] if selection else "last", selected_epoch=selection[1] if selection else None,
            validation=validation, eval_seconds=cost["eval_seconds"] if cost else None, passes_per_image=passes,
            created_at=run["created_at"], budgets=budgets, breakdown=breakdown)

    def runs(self, selection: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every run with its stored configuration, provenance and ``selection`` (``last`` or
        ``best-val``; see :meth:`rows`), optionally only those of one selection (and the natural model)."""
        query = ("SELECT r.*, COALESCE(s.selection, 'last') AS selection, s.epoch AS selected_epoch FROM runs r "
                 "LEFT JOIN selection s ON r.run_id = s.run_id")
        arguments: tuple = ()
        if selection is not None:
            query += " WHERE COALESCE(s.selection, 'last') = ? OR r.method = 'natural'"
            arguments = (selection,)
        with self._connect() as connection:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute(query + " ORDER BY r.created_at", arguments)]
