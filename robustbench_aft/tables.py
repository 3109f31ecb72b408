"""Leaderboards from the results store, and plain table rendering.

Rows are method × dataset × arch × eps; columns are every registered attack (clean, pgd, cw, aa, …
in ``column_position`` order, :func:`.attacks.metric_columns`), worst and avg, as mean ± std over
seeds (sample std, ddof = 1). ``avg`` is AFD's Avg: the mean of clean, pgd and aa
(of those present) per run, then over seeds. When the same (method, dataset, arch, eps, norm, seed)
was run more than once, the latest run counts.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from .attacks import avg_metrics, metric_columns
from .captions import table_protocol
from .errors import ConfigError
from .protocol import setting_label
from .registry import FORMATS, NATURAL

KEY = ["method", "dataset", "arch", "eps", "norm"]
# A leaderboard row: one method × setting measured under one protocol (protocol.py).
ROW_KEY = [*KEY, "protocol_id"]
RUN_ATTRIBUTES = ("selection", "selected_epoch", "train_seconds", "eval_seconds", "forward_per_image",
                  "backward_per_image")
# The cost columns ``--columns`` can add (name → the per-run attribute averaged over seeds): the point
# of AFT is robustness per unit of compute.
COST_COLUMNS = {"fine_tune_s": "train_seconds", "eval_s": "eval_seconds", "forward_per_image": "forward_per_image",
                "backward_per_image": "backward_per_image", "epoch": "selected_epoch"}


def output_format(fmt: str):
    """The registered :class:`.formats.OutputFormat` named ``fmt``; unknown names are a ConfigError."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS.names())}")
    return FORMATS.get(fmt)()


def format_table(rows: List[Dict[str, Any]], fmt: str, extra: Optional[Dict[str, Any]] = None,
                 as_written: bool = False) -> str:
    """Render ``rows`` (all with the same keys) in the output format ``fmt`` (``md``, ``csv``, ``json``,
    or any registered one). ``extra`` goes into formats that carry document-level facts (JSON);
    ``as_written``: numbers are shown as given (p-values), not rounded by the table."""
    return output_format(fmt).table(rows, extra, as_written)


def latest_runs_frame(store_rows: List[Dict[str, Any]], all_protocols: bool = False):
    """One row per counted run (the latest of each method × setting × protocol × seed), metrics as
    columns. Unless ``all_protocols``, only the latest protocol of each method × setting counts; the
    frame's ``attrs["left_out"]`` then names the runs of the others (protocol.py)."""
    import pandas as pd

    long = pd.DataFrame(store_rows)
    if "protocol_id" not in long.columns:  # rows built by hand (tests, older callers): one protocol
        long["protocol_id"] = ""
    per_run = long.pivot_table(index=["run_id", "created_at", "method_version", "seed", "flags_json", "n_eval", *KEY,
                                      "protocol_id"],
                               columns="metric", values="value", aggfunc="first").reset_index()
    per_run.columns.name = None
    # Per-run attributes that may be empty (runs stored before they existed) join by run id:
    # as pivot index columns, an empty value would drop the run.
    attributes = [c for c in RUN_ATTRIBUTES if c in long.columns]
    if attributes:
        per_run = per_run.merge(long[["run_id", *attributes]].drop_duplicates("run_id"), on="run_id", how="left")
    per_run = per_run.sort_values("created_at")
    left_out: List[Dict[str, Any]] = []
    if not all_protocols:
        latest = per_run.groupby(KEY, sort=False)["protocol_id"].transform("last")
        left_out = per_run[per_run["protocol_id"] != latest][[*KEY, "seed", "protocol_id"]].to_dict(
            "records")
        per_run = per_run[per_run["protocol_id"] == latest]
    per_run = per_run.drop_duplicates([*ROW_KEY, "seed"], keep="last")
    per_run.attrs["left_out"] = left_out
    per_run.attrs["protocols"] = {row["protocol_id"]: row.get("protocol") for row in store_rows
                                  if "protocol_id" in row}
    return per_run


def left_out_line(frame) -> Optional[str]:
    """One line naming the runs a leaderboard left out because their method has a later protocol."""
    left_out = frame.attrs.get("left_out") or []
    if not left_out:
        return None
    from .protocol import describe_difference

    protocols = frame.attrs.get("protocols", {})
    latest = frame.attrs.get("latest_protocols", {})
    parts = []
    for (method, protocol), runs in _grouped(left_out):
        seeds = ",".join(str(seed) for seed in sorted({run["seed"] for run in runs}))
        current = latest.get(tuple(runs[0][k] for k in KEY))
        why = describe_difference(protocols.get(protocol) or {}, protocols.get(current) or {}) if current else ""
        parts.append(f"{method} seed {seeds}" + (f" ({why})" if why else ""))
    return ("left out, measured under an earlier protocol than their method's latest: " + "; ".join(parts)
            + " (--all-protocols shows each protocol as its own row)")


def _grouped(runs: List[Dict[str, Any]]):
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["method"], run["protocol_id"]), []).append(run)
    return groups.items()


# Budget fields that identify a row (its eps and norm columns), not the column's attack, and what the
# attack spent on or measured of the row's model (``cost``: seconds and passes per image, which differ by
# model; ``verification``: verified bf16's fp32 check, a measurement, not a setting).
ROW_BUDGET_FIELDS = ("eps", "eps_given", "norm", "cost", "verification")
MIXED_MARK = "†"


def column_budgets(store_rows: List[Dict[str, Any]], counted_runs: set) -> Dict[str, Dict[str, set]]:
    """Per metric, each distinct attack budget (as sorted JSON, without eps and norm) of the counted runs
    and the (method, dataset, arch, eps, norm) rows that used it. Runs stored before budgets were
    recorded have none and are not compared."""
    budgets: Dict[str, Dict[str, set]] = {}
    for row in store_rows:
        text = row.get("budget_json")
        if row["run_id"] not in counted_runs or not isinstance(text, str):
            continue
        budget = {k: v for k, v in json.loads(text).items() if k not in ROW_BUDGET_FIELDS}
        key = tuple(row.get(k, "") for k in ROW_KEY)
        budgets.setdefault(row["metric"], {}).setdefault(json.dumps(budget, sort_keys=True), set()).add(key)
    return budgets


def _budget_difference(first: str, second: str) -> tuple:
    a, b = json.loads(first), json.loads(second)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return (", ".join(f"{k}={a.get(k)}" for k in keys), ", ".join(f"{k}={b.get(k)}" for k in keys))


def _mixed_budget_cells(store_rows: List[Dict[str, Any]], per_run, mix_budgets: bool) -> Dict[tuple, List[str]]:
    """The metrics of each leaderboard row whose budget differs from its column's most common one;
    without ``mix_budgets`` any such difference is a one-line ConfigError naming both budgets."""
    marked: Dict[tuple, List[str]] = {}
    for metric, budgets in column_budgets(store_rows, set(per_run["run_id"])).items():
        if len(budgets) < 2:
            continue
        ranked = sorted(budgets, key=lambda text: -len(budgets[text]))
        common, other = ranked[0], ranked[1]
        precisions = _column_precisions(ranked)
        if not mix_budgets:
            mine, theirs = _budget_difference(common, other)
            methods = {text: ", ".join(sorted({key[0] for key in budgets[text]})) for text in (common, other)}
            # Verified bf16 against fp32 is said in so many words: it is the difference people act on.
            what = f"precisions ({' and '.join(precisions)}) and attack budgets" if len(precisions) > 1 else \
                "attack budgets"
            raise ConfigError(f"column {metric} would mix {what}: {mine} ({methods[common]}) vs {theirs} "
                              f"({methods[other]}); evaluate them alike, or pass --mix-budgets to show them marked")
        for text in ranked[1:]:
            for key in budgets[text]:
                marked.setdefault(key, []).append(metric)
    return marked


def _column_precisions(budget_texts: List[str]) -> List[str]:
    """The distinct precisions (``fp32``, ``verified-bf16``…) of a column's budgets, most common first."""
    return list(dict.fromkeys(str(json.loads(text).get("precision", "unknown")) for text in budget_texts))


def mixed_precisions(store_rows: List[Dict[str, Any]], counted_runs: set) -> Dict[str, List[str]]:
    """Per metric whose counted cells were measured at more than one precision, those precisions (most
    common first): what a leaderboard with ``--mix-budgets`` states under the table."""
    mixed = {}
    for metric, budgets in column_budgets(store_rows, counted_runs).items():
        precisions = _column_precisions(sorted(budgets, key=lambda text: -len(budgets[text])))
        if len(precisions) > 1:
            mixed[metric] = precisions
    return mixed


def leaderboard_frame(store_rows: List[Dict[str, Any]], mix_budgets: bool = False, all_protocols: bool = False):
    """The aggregated leaderboard as a pandas DataFrame with ``<metric>``, ``<metric>_std`` and
    ``<metric>_ci_low``/``_ci_high`` columns; one row per method × setting × protocol, where only the
    latest protocol of each method counts unless ``all_protocols`` (then a ``setting`` column names
    what differs). A column whose cells were measured with different attack budgets (steps,
    AutoAttack version, precision...) is refused unless ``mix_budgets``; then ``mixed_budgets``
    lists, per row, the metrics that differ from the column's usual budget."""
    import pandas as pd

    if not store_rows:
        return pd.DataFrame()
    per_run = latest_runs_frame(store_rows, all_protocols)
    marked = _mixed_budget_cells(store_rows, per_run, mix_budgets)
    present_avg = [m for m in avg_metrics() if m in per_run.columns]
    per_run["avg"] = per_run[present_avg].mean(axis=1)
    per_run["flagged"] = per_run["flags_json"].map(lambda text: bool(json.loads(text)))
    # A column none of the counted runs measured (its runs were left out) is not shown.
    metrics = [m for m in metric_columns() if m in per_run.columns and per_run[m].notna().any()]
    first_seen = per_run.groupby(ROW_KEY, sort=False)["created_at"].min().rename("first_seen")
    grouped = per_run.groupby(ROW_KEY, sort=False)
    table = grouped[metrics].mean()
    std = grouped[metrics].std(ddof=1).add_suffix("_std")
    table = table.join(std)
    table = table.join(_intervals(grouped, metrics))
    costs = {name: attribute for name, attribute in COST_COLUMNS.items() if attribute in per_run.columns}
    for name, attribute in costs.items():
        table[name] = grouped[attribute].mean()
    table["seeds"] = grouped["seed"].nunique()
    table["version"] = grouped["method_version"].max()
    table["flagged_runs"] = grouped["flagged"].sum()
    table = table.join(first_seen).reset_index()
    table["reconstructed"] = table["method"].map(_is_reconstructed)
    # The natural model first, then methods in the order they were first run.
    table["natural_last"] = table["method"] != NATURAL
    table = table.sort_values(["natural_last", "first_seen"]).drop(columns=["natural_last", "first_seen"])
    protocols = per_run.attrs.get("protocols", {})
    if all_protocols:
        table["setting"] = [setting_label(protocols.get(row["protocol_id"]) or {},
                                          [protocols.get(other) or {} for other in
                                           table[(table[KEY] == pd.Series({k: row[k] for k in KEY})).all(axis=1)][
                                               "protocol_id"] if other != row["protocol_id"]])
                            for row in table.to_dict("records")]
    ordered = [*KEY, "seeds", "version"] + (["setting"] if all_protocols else [])
    for metric in metrics:
        ordered += [metric, f"{metric}_std", f"{metric}_ci_low", f"{metric}_ci_high"]
    table["mixed_budgets"] = [",".join(marked.get(tuple(record[k] for k in ROW_KEY), []))
                              for record in table.to_dict("records")]
    # The record itself travels with the row (CSV, JSON), so that a committed table carries the
    # protocol it was measured under and `bench check` can name a difference (check.py).
    table["protocol"] = [json.dumps(protocols.get(pid), sort_keys=True) if protocols.get(pid) else ""
                         for pid in table["protocol_id"]]
    table = table[ordered + ["flagged_runs", "reconstructed", *costs, "mixed_budgets", "protocol_id", "protocol"]]
    table = table.reset_index(drop=True)
    table.attrs["left_out"] = per_run.attrs.get("left_out", [])
    table.attrs["protocols"] = protocols
    table.attrs["mixed_precisions"] = mixed_precisions(store_rows, set(per_run["run_id"]))
    # The protocol of the counted runs, for formats that state it with the table (LaTeX's caption).
    table.attrs["protocol"] = table_protocol(store_rows, set(per_run["run_id"]))
    table.attrs["latest_protocols"] = {tuple(row[k] for k in KEY): row["protocol_id"]
                                       for row in table.to_dict("records")}
    return table





def _intervals(grouped, metrics: List[str]):
    """``<metric>_ci_low``/``_ci_high`` per row: the Wilson interval on the evaluated points for one
    seed, the t-interval of the mean over several (``stats.interval_for``); ``avg`` is not a
    proportion, so it gets one only over seeds."""
    import pandas as pd

    from .stats import interval_for

    rows = {}
    for key, runs in grouped:
        row = {}
        for metric in metrics:
            values = [v for v in runs[metric].tolist() if not (isinstance(v, float) and math.isnan(v))]
            n_points = int(runs["n_eval"].iloc[0]) if metric != "avg" and runs["n_eval"].nunique() == 1 else None
            low, high = interval_for(values, n_points) if values else (math.nan, math.nan)
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = low, high
        rows[key] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=ROW_KEY)
    return frame


def _is_reconstructed(method: str) -> bool:
    from .registry import METHODS

    return method in METHODS and bool(getattr(METHODS.get(method), "reconstructed", False))


# Package data (setup.cfg `package_data`), found through importlib.resources so that an installed
# wheel has it too: a path beside the source tree exists only in a checkout.
PUBLISHED_RESOURCE = "resources/published.csv"
PUBLISHED_METRICS = ("clean", "pgd", "aa")
EPS_MATCH = 1e-4


def published_csv() -> Path:
    """Where the packaged published numbers are (``robustbench_aft/resources/published.csv``)."""
    import importlib.resources

    # The package is installed as plain files (never zipped: setup.cfg sets zip_safe = False),
    # so the resource is a real path that pandas can open.
    return Path(str(importlib.resources.files("robustbench_aft").joinpath(PUBLISHED_RESOURCE)))


def load_published(path: Optional[str] = None):
    """The published numbers (``robustbench_aft/resources/published.csv``, or ``path``) as a DataFrame;
    a bad file is a ConfigError."""
    import pandas as pd

    source = Path(path) if path else published_csv()
    if not source.is_file():
        hint = "" if path else " (the package is incomplete: reinstall it)"
        raise ConfigError(f"published numbers not found at {source}{hint}; pass --published PATH to a published CSV")
    try:
        table = pd.read_csv(source)
    except Exception as exc:  # pandas raises several parser errors for a malformed file
        raise ConfigError(f"cannot read {source}: {' '.join(str(exc).split())[:160]}") from None
    required = {"method", "dataset", "arch", "eps", "metric", "value", "setting", "source"}
    if not required <= set(table.columns):
        raise ConfigError(f"{source} lacks columns {', '.join(sorted(required - set(table.columns)))}")
    if "norm" not in table.columns:  # files written before the L2 track held L∞ numbers only
        table["norm"] = "Linf"
    return table


def with_published(frame, published):
    """Add ``published_<metric>`` and ``published_source`` where method, dataset, arch, eps and norm match.

    Reconstructed methods (AFKD) never get the paper's numbers. Where a method has several
    published settings, the fine-tuning one is preferred.
    """
    from .registry import METHODS

    frame = frame.copy()
    for metric in PUBLISHED_METRICS:
        frame[f"published_{metric}"] = float("nan")
    frame["published_source"] = ""
    for position, record in frame.iterrows():
        method = record["method"]
        if method not in METHODS or getattr(METHODS.get(method), "reconstructed", False):
            continue
        candidates = published[(published["method"] == method) & (published["dataset"] == record["dataset"])
                               & (published["arch"] == record["arch"]) & (published["norm"] == record["norm"])
                               & ((published["eps"] - record["eps"]).abs() < EPS_MATCH)]
        if candidates.empty:
            continue
        preferred = candidates[candidates["setting"] == "fine-tuning"]
        candidates = preferred if not preferred.empty else candidates
        for metric in PUBLISHED_METRICS:
            values = candidates[candidates["metric"] == metric]["value"]
            if not values.empty:
                frame.at[position, f"published_{metric}"] = float(values.iloc[0])
        first = candidates.iloc[0]
        frame.at[position, "published_source"] = f"{first['source']} ({first['setting']})"
    return frame


INTERVAL_LEGEND = ("95 % intervals in brackets: one seed, the Wilson score interval over the evaluated points; "
                   "several seeds, mean ± sample std and the Student-t interval of the mean (the Wilson "
                   "interval of the pooled points when every seed has the same accuracy)")


def _cell(mean: float, std: float, low: float, high: float, seeds: int) -> str:
    interval = "" if low is None or math.isnan(low) else f" [{low:.1f}, {high:.1f}]"
    if seeds < 2 or std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.2f}{interval}"
    return f"{mean:.2f} ± {std:.2f}{interval}"


def parse_columns(text: Optional[str]) -> List[str]:
    """``--columns``: comma-separated cost columns for Markdown (``cost`` = all of them)."""
    if not text:
        return []
    names: List[str] = []
    for name in (part.strip() for part in text.split(",") if part.strip()):
        if name == "cost":
            names += [c for c in COST_COLUMNS if c not in names]
        elif name in COST_COLUMNS:
            names.append(name)
        else:
            raise ConfigError(f"--columns: unknown column {name!r}; choose from cost, {', '.join(COST_COLUMNS)}")
    return names


def render_leaderboard(frame, fmt: str, columns: Optional[List[str]] = None) -> str:
    """The leaderboard in output format ``fmt``: Markdown (mean ± std strings and a legend), CSV
    (numbers, ``_std`` columns) or RobustBench-style JSON (:mod:`.formats`).

    ``columns``: cost columns (:data:`COST_COLUMNS`) that Markdown shows after the metrics; CSV always
    carries every column."""
    renderer = output_format(fmt)
    if frame.empty:
        return "(no results yet)"
    return renderer.leaderboard(frame, columns)


def display_rows(frame, columns: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """The leaderboard as rows of display strings (mean ± std, labels), for Markdown and HTML, with
    the cost ``columns`` asked for."""
    metrics = [m for m in metric_columns() if m in frame.columns]
    rows = []
    for record in frame.to_dict("records"):
        label = f"{record['method']} (reconstructed)" if record.get("reconstructed") else record["method"]
        row = {"rank": "-" if _missing(record.get("rank")) else int(record["rank"])} if "rank" in record else {}
        mixed = str(record.get("mixed_budgets") or "").split(",")
        row.update({"method": label, "dataset": record["dataset"], "arch": record["arch"],
               "norm": record.get("norm", "Linf"), "eps": f"{record['eps']:.4g}", "seeds": int(record["seeds"]),
               "version": "-" if record["method"] == NATURAL else int(record["version"])})
        if "setting" in record:
            row["setting"] = record["setting"] or "-"
        for metric in metrics:
            row[metric] = ("" if isinstance(record[metric], float) and math.isnan(record[metric])
                           else _cell(record[metric], record[f"{metric}_std"], record.get(f"{metric}_ci_low"),
                                      record.get(f"{metric}_ci_high"), int(record["seeds"]))
                           + (f" {MIXED_MARK}" if metric in mixed else ""))
        for name in columns or []:
            value = record.get(name)
            row[name] = "" if _missing(value) else f"{value:.0f}" if name.endswith("_s") or name == "epoch" \
                else f"{value:.2f}"
        row["flags"] = int(record["flagged_runs"]) or ""
        for metric in PUBLISHED_METRICS:
            if f"published_{metric}" in record:
                value = record[f"published_{metric}"]
                row[f"published {metric}"] = "" if math.isnan(value) else f"{value:.2f}"
        if "published_source" in record:
            row["published source"] = record["published_source"]
        rows.append(row)
    return rows


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def robustbench_entry(record: Dict[str, Any], metrics: List[str]) -> Dict[str, Any]:
    """One leaderboard row in the shape of RobustBench's ``model_info`` JSON (numbers as numbers)."""

    def number(name: str) -> Optional[float]:
        value = record.get(name)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 2)

    return {
        "name": record["method"],
        "dataset": record["dataset"],
        "architecture": record["arch"],
        "threat_model": record["norm"],
        "eps": record["eps"],
        "clean_acc": number("clean"),
        "autoattack_acc": number("aa"),
        "pgd_acc": number("pgd"),
        "cw_acc": number("cw"),
        "worst_acc": number("worst"),
        "avg_acc": number("avg"),
        "std": {m: number(f"{m}_std") for m in metrics},
        "ci95": {m: [number(f"{m}_ci_low"), number(f"{m}_ci_high")] for m in metrics},
        "seeds": int(record["seeds"]),
        "method_version": int(record["version"]),
        "additional_data": False,
        "number_forward_passes": 1,
        "unreliable": bool(record["flagged_runs"]),
        "reconstructed": bool(record.get("reconstructed", False)),
        "rank": None if _missing(record.get("rank")) else int(record["rank"]),
    }


def leaderboard(db: str, group_id: Optional[str] = None, rank_by: Optional[str] = None, selection: str = "last",
                mix_budgets: bool = False, all_protocols: bool = False):
    """The aggregated leaderboard of a results store as a pandas DataFrame (see leaderboard.py),
    with the noise-aware ``rank`` column of compare.py; ``selection`` picks the ``last`` or the
    ``best-val`` weights of each fine-tuned model (validation.py). One row per method × setting and
    protocol: the latest protocol of each method unless ``all_protocols`` (``frame.attrs["left_out"]``
    names the runs left out; leaderboard.left_out_line words them)."""
    from .compare import add_rank_column
    from .results import ResultsStore

    store = ResultsStore(db)
    rows = store.rows(group_id, selection=selection)
    frame = leaderboard_frame(rows, mix_budgets=mix_budgets, all_protocols=all_protocols)
    if frame.empty:
        return frame
    ranked = add_rank_column(frame, store, latest_runs_frame(rows, all_protocols), rank_by)
    ranked.attrs.update(frame.attrs)
    return ranked
