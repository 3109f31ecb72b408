"""``bench check``: the robust-accuracy regression check of a leaderboard against a committed baseline.

The metric columns come from the attack registry (:func:`..attacks.metric_columns`), so a new
attack's column is checked, and a new method's row is reported, without editing this module.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from .attacks import metric_columns
from .errors import ConfigError, not_a_file_reason
from .tables import format_table

ROW_KEY = ["method", "dataset", "arch", "eps", "norm"]


def read_leaderboard_csv(path: str, what: str):
    """A leaderboard CSV written by ``bench leaderboard --format csv``; any problem is a ConfigError."""
    import pandas as pd

    source = Path(path)
    reason = not_a_file_reason(source)
    if reason:
        raise ConfigError(f"{what} {source} {reason}")
    try:
        table = pd.read_csv(source)
    except Exception as exc:  # pandas has several parser errors; all mean "not a leaderboard CSV"
        raise ConfigError(f"{what} {source} is not a CSV file ({' '.join(str(exc).split())[:120]})") from None
    if "norm" not in table.columns and "eps" in table.columns:  # leaderboards from before the L2 track
        table["norm"] = "Linf"
    missing = [c for c in ROW_KEY if c not in table.columns]
    if missing or not any(m in table.columns for m in metric_columns()):
        raise ConfigError(f"{what} {source} is not a leaderboard CSV: it lacks "
                          f"{', '.join(missing) if missing else 'every metric column'} "
                          "(write one with `bench leaderboard --format csv`)")
    for metric in metric_columns():
        if metric in table.columns and table[metric].dtype.kind not in "fi":
            raise ConfigError(f"{what} {source}: column {metric!r} holds non-numbers")
    refuse_duplicates(table, f"{what} {source}")
    return table


def _row_key(record) -> tuple:
    return (record["method"], record["dataset"], record["arch"], round(float(record["eps"]), 6), record["norm"])


def _where(row) -> str:
    return f"{row['method']} on {row['dataset']}/{row['arch']} {row['norm']} eps={row['eps']:g}"


def refuse_duplicates(table, what: str) -> None:
    """One row per (method, dataset, arch, eps, norm), or a ConfigError naming the repeated ones.

    A leaderboard never repeats a key, so a repeat is a hand-edited or concatenated file; the check
    would otherwise compare and print each copy (every failure twice) and, for the current table,
    silently keep the last copy.
    """
    counts: Dict[tuple, int] = {}
    first: Dict[tuple, Dict[str, Any]] = {}
    for record in table.to_dict("records"):
        key = _row_key(record)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, record)
    repeated = [f"{_where(first[key])} ({count} rows)" for key, count in counts.items() if count > 1]
    if repeated:
        shown = "; ".join(repeated[:3]) + (f"; +{len(repeated) - 3} more" if len(repeated) > 3 else "")
        raise ConfigError(f"{what} has duplicated rows: {shown}; keep one row per (method, dataset, arch, eps, norm)")


def _protocol(record: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    text = record.get("protocol")
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{_where(record)}: its protocol column is not JSON; rewrite the table with "
                          "`bench leaderboard --format csv`") from None


def refuse_other_protocols(baseline, current_rows: Dict[tuple, Dict[str, Any]]) -> None:
    """A one-line ConfigError when a row of the current table was measured under another protocol
    than the baseline's row (protocol.py): a verdict on such a pair would compare unlike numbers.
    Baselines written before protocols were stored carry none and are compared as before."""
    from .protocol import describe_difference, protocol_id

    for record in baseline.to_dict("records"):
        now = current_rows.get(_row_key(record))
        wanted, measured = _protocol(record), _protocol(now) if now is not None else None
        if wanted is None or measured is None or protocol_id(wanted) == protocol_id(measured):
            continue
        raise ConfigError(f"{_where(record)} was measured under another protocol than the baseline's "
                          f"({describe_difference(measured, wanted)}, current vs baseline); measure it as the "
                          "baseline was, or rewrite the baseline with `bench leaderboard --format csv --output FILE`")


@dataclass
class CheckResult:
    """The regression report: one row per (method, dataset, arch, eps, metric) of the baseline."""

    rows: List[Dict[str, Any]]
    # False for baselines written before protocols were stored: their rows are compared unchecked.
    baseline_has_protocol: bool = True

    @property
    def failures(self) -> List[Dict[str, Any]]:
        return [row for row in self.rows if row["verdict"] in ("REGRESSED", "MISSING")]

    @property
    def compared(self) -> List[Dict[str, Any]]:
        return [row for row in self.rows if row["verdict"] != "NEW"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


def allowed_drop(tolerance: float, baseline_std: float) -> float:
    """max(tolerance, 2 × the baseline's seed std); a single-seed baseline has no std (→ tolerance)."""
    if baseline_std is None or math.isnan(baseline_std):
        return tolerance
    return max(tolerance, 2.0 * baseline_std)


def check_regression(baseline, current, tolerance: float = 2.0, metrics: Optional[List[str]] = None) -> CheckResult:
    """Compare ``current`` with ``baseline`` (both leaderboard frames) per row and metric.

    A drop larger than :func:`allowed_drop` is REGRESSED; a rise that large is IMPROVED (the
    baseline is stale); a baseline row or metric absent from ``current`` is MISSING. A current row
    (a method registered since) or metric (a new attack) the baseline lacks is NEW: guarded by nothing
    yet, which the report says, but not a failure. No overlap at all is a ConfigError (the two tables
    describe different things).
    """
    chosen = list(metrics) if metrics else [m for m in metric_columns() if m in baseline.columns and m != "avg"]
    unknown = [m for m in chosen if m not in baseline.columns]
    if unknown:
        raise ConfigError(f"--metrics {', '.join(unknown)} not in the baseline (it has "
                          f"{', '.join(m for m in metric_columns() if m in baseline.columns)})")

    refuse_duplicates(baseline, "the baseline")
    refuse_duplicates(current, "the current table")
    current_rows = {_row_key(r): r for r in current.to_dict("records")}
    refuse_other_protocols(baseline, current_rows)
    if not any(_row_key(r) in current_rows for r in baseline.to_dict("records")):
        raise ConfigError("no (method, dataset, arch, eps, norm) row of the baseline is in the current table: "
                          "nothing to compare")
    rows = []
    for record in baseline.to_dict("records"):
        now = current_rows.get(_row_key(record))
        for metric in chosen:
            base_value = float(record[metric])
            if math.isnan(base_value):
                continue
            std = float(record.get(f"{metric}_std", float("nan")))
            allowed = allowed_drop(tolerance, std)
            value = float("nan") if now is None or metric not in now else float(now[metric])
            if math.isnan(value):
                verdict, delta = "MISSING", float("nan")
            else:
                delta = value - base_value
                verdict = "REGRESSED" if delta < -allowed else "IMPROVED" if delta > allowed else "ok"
            rows.append({"method": record["method"], "dataset": record["dataset"], "arch": record["arch"],
                         "eps": round(float(record["eps"]), 6), "norm": record["norm"], "metric": metric,
                         "baseline": round(base_value, 2), "current": round(value, 2),
                         "delta": round(delta, 2) + 0.0, "allowed_drop": round(allowed, 2), "verdict": verdict})
    baseline_keys = {_row_key(r) for r in baseline.to_dict("records")}
    for record in current.to_dict("records"):
        known_row = _row_key(record) in baseline_keys
        for metric in (m for m in metric_columns() if m != "avg" and m in current.columns):
            value = float(record[metric])
            if math.isnan(value) or (known_row and metric in baseline.columns) or (metrics and metric not in metrics):
                continue
            rows.append({"method": record["method"], "dataset": record["dataset"], "arch": record["arch"],
                         "eps": round(float(record["eps"]), 6), "norm": record["norm"], "metric": metric,
                         "baseline": float("nan"), "current": round(value, 2), "delta": float("nan"),
                         "allowed_drop": float("nan"), "verdict": "NEW"})
    has_protocol = "protocol" in baseline.columns and any(_protocol(r) for r in baseline.to_dict("records"))
    return CheckResult(rows, has_protocol)


def render_check(result: CheckResult) -> str:
    """The report table, then one line per failure and improvement, then the verdict."""
    lines = [format_table(result.rows, "md"), ""]
    for row in result.rows:
        where = _where(row)
        if row["verdict"] == "REGRESSED":
            lines.append(f"REGRESSED: {where} {row['metric']}: {row['baseline']:.2f} -> {row['current']:.2f} "
                         f"({row['delta']:+.2f} points, allowed drop {row['allowed_drop']:.2f})")
        elif row["verdict"] == "MISSING":
            lines.append(f"MISSING: {where} {row['metric']} is in the baseline but not in the current table")
        elif row["verdict"] == "IMPROVED":
            lines.append(f"IMPROVED: {where} {row['metric']}: {row['baseline']:.2f} -> {row['current']:.2f} "
                         f"({row['delta']:+.2f} points): the baseline is stale; rewrite it with "
                         "`bench leaderboard --format csv --output <baseline>`")
    new = [row for row in result.rows if row["verdict"] == "NEW"]
    for where in dict.fromkeys(_where(row) for row in new):
        metrics = ", ".join(row["metric"] for row in new if _where(row) == where)
        lines.append(f"NEW: {where} {metrics}: not in the baseline, so not guarded; add it by rewriting the "
                     "baseline with `bench leaderboard --format csv --output <baseline>`")
    if not result.baseline_has_protocol:
        lines.append("note: the baseline carries no protocol (it was written before protocols were stored), so how "
                     "its rows were measured is not checked; rewrite it with `bench leaderboard --format csv "
                     "--output <baseline>` to hold the protocol too")
    failures = len(result.failures)
    compared = len(result.compared)
    lines.append(f"check: {failures} failure(s) in {compared} comparisons" if failures
                 else f"check: ok ({compared} comparisons)")
    return "\n".join(lines)
