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
from typing import Any, Callable, Dict, Iterator, List, Optional

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
            connection.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, record.group_id, time.time(), record.method, record.method_version, record.dataset,
                 record.arch, record.seed, record.eps, record.norm, record.n_eval, record.status,
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
            if record.indices:
                connection.execute("INSERT INTO eval_points VALUES (?, ?)", (run_id, json.dumps(record.indices)))
                connection.executemany("INSERT INTO samples VALUES (?, ?, ?)",
                                       [(run_id, metric, bits) for metric, bits in record.per_sample.items()])

        self._write(write)
        return run_id

    def rows(self, group_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """One dict per (run, metric) of finished runs, optionally of one ``bench run`` invocation."""
        query = ("SELECT r.run_id, r.group_id, r.created_at, r.method, r.method_version, r.dataset, r.arch, r.seed, "
                 "r.eps, r.norm, r.n_eval, r.flags_json, m.metric, m.value FROM runs r JOIN metrics m "
                 "ON r.run_id = m.run_id WHERE r.status = 'finished'")
        arguments: tuple = ()
        if group_id is not None:
            query += " AND r.group_id = ?"
            arguments = (group_id,)
        with self._connect() as connection:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute(query + " ORDER BY r.created_at", arguments)]

    def feature_gaps(self) -> List[Dict[str, Any]]:
        """One dict per (finished run, epoch) with the run's method, dataset, arch, eps and seed."""
        query = ("SELECT r.run_id, r.group_id, r.created_at, r.method, r.dataset, r.arch, r.eps, r.seed, g.epoch, "
                 "g.l2, g.cosine, g.seconds FROM runs r JOIN feature_gap g ON r.run_id = g.run_id "
                 "WHERE r.status = 'finished' ORDER BY r.created_at, g.epoch")
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

    def runs(self) -> List[Dict[str, Any]]:
        """Every run with its stored configuration and provenance."""
        with self._connect() as connection:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute("SELECT * FROM runs ORDER BY created_at")]
