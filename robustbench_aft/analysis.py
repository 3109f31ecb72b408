"""See it: the feature-gap curve, robust accuracy against eps, and a self-contained HTML report.

Plots use matplotlib's Agg backend (no display needed). Every plot is written next to a CSV of
exactly the numbers it shows.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import torch

from .errors import ConfigError
from .files import atomic_write, atomic_write_text
from .registry import NATURAL
from .results import ResultsStore

log = logging.getLogger(__name__)

FIGURE_SIZE = (10.0, 4.0)  # inches; at FIGURE_DPI a plot is 1000 × 400 pixels
FIGURE_DPI = 100
CELL = ["method", "dataset", "arch", "eps", "seed"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def method_color(method: str):
    """One matplotlib colour per method, the same in every plot: black for the natural model, then
    the ten dark tab20 colours in registry order, then the ten light ones."""
    from matplotlib import colormaps

    from .registry import METHODS

    if method == NATURAL:
        return "black"
    names = METHODS.names()
    position = names.index(method) if method in names else len(names)
    return colormaps["tab20"]((2 * position) % 20 + (position // 10) % 2)


def _save_figure(figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=FIGURE_DPI))
    _pyplot().close(figure)
    return path


def _slug(*parts: Any) -> str:
    text = "-".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _latest_runs(rows: pd.DataFrame) -> pd.DataFrame:
    """Keep, for every (method, dataset, arch, eps, seed), the rows of its newest run (as the leaderboard does)."""
    if rows.empty:
        return rows
    newest = rows.groupby(CELL)["created_at"].transform("max")
    return rows[rows["created_at"] == newest]


# --- the feature gap --------------------------------------------------------------------------

GAP_COLUMNS = ("l2", "cosine", "head_l2", "head_cosine")
GAP_LABELS = {"l2": "‖φ(x) − φ(x_adv)‖₂", "cosine": "1 − cos(φ(x), φ(x_adv))",
              "head_l2": "at the head's input: ‖h(x) − h(x_adv)‖₂", "head_cosine": "at the head's input: 1 − cos"}


def feature_gap_frame(db: str, methods: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """One row per (method, dataset, arch, eps, seed, epoch) with the stored L2 and 1 − cos gaps."""
    rows = pd.DataFrame(ResultsStore(db).feature_gaps())
    if rows.empty:
        raise ConfigError(f"--db {db} has no feature-gap measurements; run `bench run` (the probe is on by default)")
    rows = _latest_runs(rows)
    if methods:
        missing = sorted(set(methods) - set(rows["method"]))
        if missing:
            raise ConfigError(f"no feature-gap rows for {', '.join(missing)} in {db}; "
                              f"available: {', '.join(sorted(set(rows['method'])))}")
        rows = rows[rows["method"].isin(list(methods) + [NATURAL])]
    if "head_l2" not in rows.columns:
        rows["head_l2"] = rows["head_cosine"] = float("nan")
    return rows[CELL + ["epoch", "l2", "cosine", "head_l2", "head_cosine", "seconds"]].reset_index(drop=True)


def feature_gap_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std over seeds per (method, dataset, arch, eps, epoch)."""
    grouped = frame.groupby(["method", "dataset", "arch", "eps", "epoch"], sort=False)
    summary = grouped.agg(seeds=("seed", "nunique"), l2=("l2", "mean"), l2_std=("l2", "std"),
                          cosine=("cosine", "mean"), cosine_std=("cosine", "std"),
                          head_l2=("head_l2", "mean"), head_l2_std=("head_l2", "std"),
                          head_cosine=("head_cosine", "mean"), head_cosine_std=("head_cosine", "std")).reset_index()
    return summary.fillna({f"{c}_std": 0.0 for c in GAP_COLUMNS})


def plot_feature_gap(summary: pd.DataFrame, path: Path, title: str) -> Tuple[Path, Dict[Tuple[str, str], list]]:
    """AFD Fig. 1 style: gap per epoch, one line per method with a ±std band; natural dashed. Top row
    on the features φ, bottom row on the head's input h (AFD: D1 φ before folding; the others: φ),
    when the store has it.

    Returns the PNG and the (epoch, value) points actually drawn, per (method, column).
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    drawn: Dict[Tuple[str, str], list] = {}
    columns = [c for c in GAP_COLUMNS if c in summary.columns and summary[c].notna().any()]
    rows_of_panels = 2 if "head_l2" in columns else 1
    figure, axes = plt.subplots(rows_of_panels, 2, figsize=(FIGURE_SIZE[0], FIGURE_SIZE[1] * rows_of_panels),
                                squeeze=False)
    for axis, column in zip([a for row in axes for a in row], columns):
        label = GAP_LABELS[column]
        for method, rows in summary.groupby("method", sort=False):
            rows = rows.sort_values("epoch")
            if method == NATURAL:
                line = axis.axhline(rows[column].iloc[0], color="black", linestyle="--", linewidth=1, label=NATURAL)
                drawn[(method, column)] = [(0, float(line.get_ydata()[0]))]
                continue
            line, = axis.plot(rows["epoch"], rows[column], marker="o", markersize=3, label=method,
                              color=method_color(method))
            drawn[(method, column)] = [(int(x), float(y)) for x, y in line.get_xydata()]
            axis.fill_between(rows["epoch"], rows[column] - rows[f"{column}_std"],
                              rows[column] + rows[f"{column}_std"], color=line.get_color(), alpha=0.2)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("fine-tuning epoch (0 = natural model)")
        axis.set_ylabel(label, fontsize=8)
        axis.grid(alpha=0.3)
    axes[0][1].legend(fontsize=8, loc="best")
    figure.suptitle(title)
    figure.tight_layout()
    return _save_figure(figure, path), drawn


def analyze_feature_gap(db: str, output: Path,
                        methods: Optional[Sequence[str]] = None) -> Tuple[pd.DataFrame, List[Path]]:
    """Write ``feature_gap.csv`` (per seed) and one PNG per (dataset, arch, eps); returns the summary and PNGs."""
    frame = feature_gap_frame(db, methods)
    summary = feature_gap_summary(frame)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(frame.to_csv(index=False, float_format="%.6g"), output / "feature_gap.csv")
    plots = []
    for (dataset, arch, eps), rows in summary.groupby(["dataset", "arch", "eps"], sort=False):
        title = f"Feature gap during fine-tuning: {dataset}, {arch}, PGD-20 at eps={eps:.4g}"
        plot, _ = plot_feature_gap(rows, output / f"feature_gap-{_slug(dataset.rsplit('/', 1)[-1], arch)}.png", title)
        plots.append(plot)
    return summary, plots


# --- per-epoch training curves: loss terms and validation accuracy -----------------------------

def training_curves_frame(db: str) -> pd.DataFrame:
    """One row per (fine-tuned run, epoch, quantity): every mean loss term the method logged
    (``loss/<term>``) and the validation accuracies (``validation/clean``, ``validation/pgd``)."""
    store = ResultsStore(db)
    runs = pd.DataFrame([r for r in store.runs(selection="last") if r["status"] == "finished"
                         and r["method"] != NATURAL])
    if runs.empty:
        raise ConfigError(f"--db {db} has no finished fine-tuned runs")
    runs = _latest_runs(runs)
    records = []
    for run in runs.to_dict("records"):
        cell = {key: run[key] for key in CELL}
        for epoch_terms in json.loads(run["config_json"]).get("training_history", []):
            records += [{**cell, "epoch": int(epoch_terms["epoch"]), "quantity": f"loss/{term}", "value": value}
                        for term, value in epoch_terms.items() if term != "epoch"]
    kept = set(runs["run_id"])
    for point in store.validation_curves():
        if point["run_id"] in kept:
            cell = {key: point[key] for key in CELL}
            records += [{**cell, "epoch": int(point["epoch"]), "quantity": f"validation/{name}", "value": point[name]}
                        for name in ("clean", "pgd")]
    if not records:
        raise ConfigError(f"--db {db} holds no per-epoch training curves (runs stored before they were kept)")
    return pd.DataFrame(records)


def plot_training_curves(frame: pd.DataFrame, path: Path, title: str) -> Path:
    """Validation clean and PGD accuracy per epoch (one line per method, mean over seeds with a ±std
    band), then one small panel per method with each of its loss terms."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    summary = frame.groupby(["method", "quantity", "epoch"], sort=False)["value"].agg(["mean", "std"]).reset_index()
    summary["std"] = summary["std"].fillna(0.0)
    methods = list(dict.fromkeys(frame["method"]))
    columns = 4
    rows = 1 + math.ceil(len(methods) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(FIGURE_SIZE[0], 2.4 * rows), squeeze=False)
    for axis, name in ((axes[0][0], "clean"), (axes[0][1], "pgd")):
        for method in methods:
            points = summary[(summary["method"] == method) & (summary["quantity"] == f"validation/{name}")]
            if points.empty:
                continue
            line, = axis.plot(points["epoch"], points["mean"], marker="o", markersize=3, label=method,
                              color=method_color(method))
            axis.fill_between(points["epoch"], points["mean"] - points["std"], points["mean"] + points["std"],
                              color=line.get_color(), alpha=0.2)
        axis.set_title(f"validation {'clean' if name == 'clean' else 'PGD-10'} accuracy (%)", fontsize=9)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    handles, labels = axes[0][1].get_legend_handles_labels()
    axes[0][2].axis("off")
    axes[0][3].axis("off")
    if handles:
        axes[0][2].legend(handles, labels, fontsize=7, loc="center left", ncol=2)
    for position, method in enumerate(methods):
        axis = axes[1 + position // columns][position % columns]
        terms = summary[(summary["method"] == method) & summary["quantity"].str.startswith("loss/")]
        for quantity, points in terms.groupby("quantity", sort=False):
            axis.plot(points["epoch"], points["mean"], marker="o", markersize=2, label=quantity[len("loss/"):])
        axis.set_title(f"{method}: loss terms", fontsize=9, color=method_color(method))
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
        if not terms.empty:
            axis.legend(fontsize=6, loc="best")
    for position in range(len(methods), (rows - 1) * columns):
        axes[1 + position // columns][position % columns].axis("off")
    figure.supxlabel("fine-tuning epoch", fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    return _save_figure(figure, path)


def analyze_training(db: str, output: Path) -> Tuple[pd.DataFrame, List[Path]]:
    """``training_curves.csv`` (per seed) and one PNG per dataset × arch × eps in ``output``."""
    frame = training_curves_frame(db)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(frame.to_csv(index=False, float_format="%.6g"), output / "training_curves.csv")
    plots = []
    for (dataset, arch, eps), group in frame.groupby(["dataset", "arch", "eps"], sort=False):
        title = f"Fine-tuning curves on {dataset}/{arch}, eps {eps:.4g} (means over seeds)"
        plots.append(plot_training_curves(group, output / f"training-{_slug(dataset.rsplit('/', 1)[-1], arch)}.png",
                                          title))
    return frame, plots


# --- robust accuracy against eps --------------------------------------------------------------

def parse_eps_values(text: str) -> List[float]:
    from .parsing import parse_eps

    values = [parse_eps(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise ConfigError("--eps-values is empty; give e.g. 0,2/255,4/255,8/255")
    return sorted(set(values))


def eps_curve(models: Dict[str, List[torch.nn.Module]], data, eps_values: Sequence[float], aa_eps: Sequence[float],
              n_eval: Optional[int], device: torch.device, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Robust accuracy of every model at every eps: PGD-20 everywhere, AutoAttack where asked.

    ``models`` maps a label (a method) to one model per seed; one row per (label, seed, eps, attack).
    """
    from .evaluator import EvalConfig, evaluate

    rows = []
    for label, seeds in models.items():
        for seed_index, model in enumerate(seeds):
            for eps in eps_values:
                attacks = ["clean", "pgd"] + (["aa"] if any(abs(eps - a) < 1e-9 for a in aa_eps) else [])
                result = evaluate(model, data, EvalConfig(attacks=attacks, eps=eps, n_eval=n_eval, seed=seed,
                                                          sanity=False), device, progress=progress)
                for attack in attacks[1:]:
                    rows.append({"method": label, "seed_index": seed_index, "eps": eps, "attack": attack,
                                 "accuracy": result.accuracy[attack], "n": result.n})
                log.info("eps curve: %s #%d eps %.4g: %s", label, seed_index, eps,
                         ", ".join(f"{a} {result.accuracy[a]:.2f}" for a in attacks))
    return pd.DataFrame(rows)


def plot_eps_curve(frame: pd.DataFrame, path: Path, title: str) -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=FIGURE_SIZE)
    summary = frame.groupby(["method", "attack", "eps"], sort=False)["accuracy"].agg(["mean", "std"]).reset_index()
    for method, rows in summary.groupby("method", sort=False):
        pgd = rows[rows["attack"] == "pgd"].sort_values("eps")
        line, = axis.plot(pgd["eps"] * 255, pgd["mean"], marker="o", markersize=3, label=f"{method} PGD-20",
                          color=method_color(method))
        aa = rows[rows["attack"] == "aa"].sort_values("eps")
        if not aa.empty:
            axis.plot(aa["eps"] * 255, aa["mean"], marker="s", linestyle="--", color=line.get_color(),
                      label=f"{method} AutoAttack")
    axis.set_xlabel("eps × 255 (L∞)")
    axis.set_ylabel("robust accuracy (%)")
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    axis.set_title(title)
    figure.tight_layout()
    return _save_figure(figure, path)


def models_from_store(db: str, methods: Optional[Sequence[str]] = None
                      ) -> Tuple[Dict[str, List[Tuple[str, str, str]]], str, str]:
    """The checkpoints of the newest run of every (method, seed) in ``db``: {method: [(path, dataset, arch)]}."""
    runs = pd.DataFrame(ResultsStore(db).runs(selection="last"))
    if runs.empty:
        raise ConfigError(f"--db {db} holds no runs")
    runs = runs[runs["status"] == "finished"]
    runs = _latest_runs(runs)
    if methods:
        runs = runs[runs["method"].isin(methods)]
    if runs.empty:
        raise ConfigError(f"--db {db} has no finished runs of {', '.join(methods or [])}")
    datasets = sorted(set(zip(runs["dataset"], runs["arch"])))
    if len(datasets) > 1:
        raise ConfigError(f"--db {db} mixes {', '.join(f'{d}/{a}' for d, a in datasets)}; choose with --methods")
    chosen: Dict[str, List[Tuple[str, str, str]]] = {}
    for record in runs.sort_values(["method", "seed"]).to_dict("records"):
        checkpoint = json.loads(record["config_json"]).get("checkpoint")
        if not checkpoint or not Path(checkpoint).is_file():
            raise ConfigError(f"the checkpoint of {record['method']} seed {record['seed']} is gone ({checkpoint}); "
                              "pass --checkpoint instead")
        chosen.setdefault(record["method"], []).append((checkpoint, record["dataset"], record["arch"]))
    return chosen, datasets[0][0], datasets[0][1]


# --- the HTML report --------------------------------------------------------------------------

def _image_tag(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{encoded}"><figcaption>' \
           f'{html.escape(path.name)}</figcaption></figure>'


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; } figure { margin: 1em 0; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.flag { color: #a40; } details { margin: 0.3em 0; }
"""


def tradeoff_frame(db: str, robust: Optional[str] = None) -> Tuple[pd.DataFrame, str]:
    """The leaderboard rows with clean and the robust metric (default as the rank: worst, else aa,
    else pgd) and their 95 % intervals, one row per method × dataset × arch × eps."""
    from .compare import default_rank_metric
    from .tables import leaderboard_frame

    frame = leaderboard_frame(ResultsStore(db).rows(), mix_budgets=True)
    if frame.empty:
        raise ConfigError(f"--db {db} has no finished runs")
    metric = robust or default_rank_metric(list(frame.columns))
    if metric is None or metric not in frame.columns or "clean" not in frame.columns:
        raise ConfigError(f"--metric {metric}: the store has no such metric next to clean accuracy")
    columns = ["method", "dataset", "arch", "eps", "seeds"]
    for name in ("clean", metric):
        columns += [name, f"{name}_ci_low", f"{name}_ci_high"]
    return frame[columns].reset_index(drop=True), metric


def plot_tradeoff(frame: pd.DataFrame, metric: str, path: Path, title: str) -> Path:
    """Clean against robust accuracy, one point per method with its 95 % intervals as error bars."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(FIGURE_SIZE[1] * 1.6, FIGURE_SIZE[1] * 1.2))
    for record in frame.to_dict("records"):
        x, y = record["clean"], record[metric]
        x_error = [[max(0.0, x - record["clean_ci_low"])], [max(0.0, record["clean_ci_high"] - x)]]
        y_error = [[max(0.0, y - record[f"{metric}_ci_low"])], [max(0.0, record[f"{metric}_ci_high"] - y)]]
        if any(math.isnan(v[0]) for v in x_error + y_error):
            x_error = y_error = None
        axis.errorbar(x, y, xerr=x_error, yerr=y_error, fmt="o", capsize=3, color=method_color(record["method"]),
                      label=record["method"])
    axis.set_xlabel("clean accuracy (%)")
    axis.set_ylabel(f"{metric} accuracy (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", loc="best")
    figure.tight_layout()
    return _save_figure(figure, path)


def analyze_tradeoff(db: str, output: Path, robust: Optional[str] = None) -> Tuple[pd.DataFrame, List[Path]]:
    """``tradeoff.csv`` and one clean-vs-robust PNG per dataset × arch × eps in ``output``."""
    frame, metric = tradeoff_frame(db, robust)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(frame.to_csv(index=False, float_format="%.4f"), output / "tradeoff.csv")
    plots = []
    for (dataset, arch, eps), group in frame.groupby(["dataset", "arch", "eps"], sort=False):
        title = f"clean vs {metric} on {dataset}/{arch}, eps {eps:.4g} (95 % intervals)"
        plots.append(plot_tradeoff(group, metric, output / f"tradeoff-{_slug(dataset, arch, f'{eps:.4g}')}.png",
                                   title))
    return frame, plots


def breakdown_tables(store: ResultsStore, counted_runs: set) -> List[Tuple[str, "pd.DataFrame"]]:
    """Per (metric, dataset, arch, norm): a table of each method's accuracy per part (each
    corruption, over its severities; the mean over seeds of the counted runs), with a caption naming
    the metric's source (e.g. "CIFAR-10-C-like (generated)")."""
    rows = [row for row in store.breakdowns() if row["run_id"] in counted_runs and "@" not in row["part"]]
    if not rows:
        return []
    frame = pd.DataFrame(rows)
    tables = []
    for (metric, dataset, arch, norm), group in frame.groupby(["metric", "dataset", "arch", "norm"], sort=False):
        budget = next((json.loads(text) for text in group["budget_json"] if isinstance(text, str)), {})
        table = group.pivot_table(index="method", columns="part", values="value", aggfunc="mean", sort=False)
        table.insert(0, "mean", table.mean(axis=1))
        seeds = group.groupby("method")["seed"].nunique()
        table.insert(0, "seeds", seeds.reindex(table.index))
        caption = (f"{metric} on {dataset}/{arch}: {budget.get('source', '')}"
                   f"{', ' + budget['library'] if budget.get('library') else ''}; accuracy in % per corruption "
                   f"(mean over its severities and the seeds)")
        tables.append((caption, table.round(2).reset_index()))
    return tables


def _breakdown_section(store: ResultsStore, counted_runs: set) -> List[str]:
    tables = breakdown_tables(store, counted_runs)
    if not tables:
        return []
    parts = ["<h2>Common corruptions</h2>"]
    for caption, table in tables:
        parts += [f"<p>{html.escape(caption)}</p>", table.to_html(index=False, escape=True)]
    return parts


def _folder_link(folder: str, output: Path) -> str:
    """An ``<a>`` to a model folder's card, relative to the report when it can be, so that the page and
    the folders can move together."""
    card = Path(folder) / "README.md"
    try:
        target = os.path.relpath(card, Path(output).resolve().parent)
    except ValueError:  # another drive on Windows
        target = card.as_uri()
    return f"<a href='{html.escape(target)}'>{html.escape(Path(folder).name)}</a>"


def _leaderboard_with_model_links(db: str, frame, display: List[Dict[str, Any]], store_rows: List[Dict[str, Any]],
                                  output: Path) -> str:
    """The leaderboard table with a ``model folder`` column: a link per counted seed whose model was
    exported (``bench export --model``, or a ``--log`` tracker with artifacts); empty otherwise."""
    from .modelfolder import exported_folders
    from .tables import KEY, latest_runs_frame

    folders = exported_folders(db)
    per_run = latest_runs_frame(store_rows)
    cells = []
    for record in frame.to_dict("records"):
        runs = per_run[(per_run[KEY[0]] == record[KEY[0]]) & (per_run["dataset"] == record["dataset"])
                       & (per_run["arch"] == record["arch"]) & (per_run["norm"] == record["norm"])
                       & ((per_run["eps"] - record["eps"]).abs() < 1e-9)].sort_values("seed")
        links = [_folder_link(folders[run_id], output) for run_id in runs["run_id"] if run_id in folders]
        cells.append(", ".join(links))
    table = pd.DataFrame([{k: html.escape(str(v)) for k, v in row.items()} for row in display])
    if any(cells):
        table["model folder"] = cells
    # Every other cell is escaped above; the links are markup.
    return table.to_html(index=False, escape=False)


def _report_head(db: str, output: Path, title: str, store: ResultsStore, rows: List[Dict[str, Any]]) -> List[str]:
    """The page's head, title, store line and the leaderboard with its legend."""
    from ._version import __version__
    from .compare import add_rank_column
    from .tables import INTERVAL_LEGEND, display_rows, latest_runs_frame, leaderboard_frame

    frame = leaderboard_frame(rows, mix_budgets=True)  # a report shows every run; mixed cells are marked †
    if frame.empty:
        raise ConfigError(f"--db {db} has no finished runs to report")
    frame = add_rank_column(frame, store, latest_runs_frame(rows), None)
    return [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f"<p>Store <code>{html.escape(str(db))}</code>, generated {time.strftime('%Y-%m-%d %H:%M:%S')} by "
            f"robustbench-aft {html.escape(__version__)}. Accuracies in %, mean ± sample std over seeds; "
            "<code>worst</code> = robust against every attack run.</p>",
            "<h2>Leaderboard</h2>", _leaderboard_with_model_links(db, frame, display_rows(frame), rows, output),
            f"<p>{html.escape(INTERVAL_LEGEND)}; rank: methods not significantly below the best share a rank "
            "(exact McNemar, Holm-corrected, α = 0.05).</p>"]


def _plot_sections(db: str, scratch: Path, extra_plots: Sequence[Path]) -> Tuple[List[str], List[Path]]:
    """The plot sections of the page, and the plots drawn into ``scratch`` for them (to delete once written)."""
    parts: List[str] = []
    plots: List[Path] = []
    _, tradeoff_plots = analyze_tradeoff(db, scratch)
    parts.append("<h2>Clean against robust accuracy</h2><p>One point per method, 95 % intervals as bars "
                 "(Wilson over the evaluated points for one seed, Student-t over seeds).</p>")
    parts.extend(_image_tag(p) for p in tradeoff_plots)
    plots += tradeoff_plots
    try:
        _, gap_plots = analyze_feature_gap(db, scratch)
        plots += gap_plots
    except ConfigError:
        gap_plots = []
        parts.append("<p>No feature-gap measurements in this store.</p>")
    if gap_plots:
        parts.append("<h2>Feature gap during fine-tuning</h2><p>Mean distance between the features of natural "
                     "and PGD-20 adversarial probe images after every epoch (AFD's motivation, Fig. 1).</p>")
        parts.extend(_image_tag(p) for p in gap_plots)
    try:
        _, training_plots = analyze_training(db, scratch)
    except ConfigError:
        training_plots = []
    if training_plots:
        parts.append("<h2>Fine-tuning curves</h2><p>Per epoch: clean and PGD-10 accuracy on the validation "
                     "split (training images held out from fine-tuning, never the test set) and every loss "
                     "term each method logged (means over seeds).</p>")
        parts.extend(_image_tag(p) for p in training_plots)
        plots += training_plots
    # The feature-gap plots are drawn fresh above; a copy of one in an --plots folder is skipped.
    extra = [p for p in extra_plots if p.suffix.lower() == ".png" and p.name not in {q.name for q in plots}]
    if extra:
        parts.append("<h2>More plots</h2>")
        parts.extend(_image_tag(p) for p in extra)
    return parts, plots


def _flags_section(runs: List[Dict[str, Any]]) -> List[str]:
    """The "Sanity flags" section: every flag of every finished run, or a line saying none fired."""
    flagged = [(r, json.loads(r["flags_json"])) for r in runs if json.loads(r["flags_json"])]
    parts = ["<h2>Sanity flags</h2>"]
    if flagged:
        parts.append("<ul>" + "".join(f"<li class='flag'><b>{html.escape(r['method'])} seed {r['seed']}</b>: "
                                      f"{html.escape(flag)}</li>" for r, flags in flagged for flag in flags) + "</ul>")
    else:
        parts.append("<p>None fired.</p>")
    return parts


def _runs_section(db: str, runs: List[Dict[str, Any]], output: Path) -> List[str]:
    """The "Runs" section: one collapsible block per finished run with its provenance and config."""
    from .modelfolder import exported_folders

    model_folders = exported_folders(db)
    parts = [f"<h2>Runs ({len(runs)})</h2>"]
    for run in runs:
        provenance = {k: run[k] for k in ("package_version", "git_commit", "torch_version", "device", "wall_seconds",
                                          "train_seconds", "images_per_second")}
        config = json.loads(run["config_json"])
        folder = model_folders.get(run["run_id"])
        link = f", model folder {_folder_link(folder, output)}" if folder else ""
        parts.append(f"<details><summary>{html.escape(run['method'])} seed {run['seed']} on "
                     f"{html.escape(run['dataset'])}/{html.escape(run['arch'])}, eps {run['eps']:.4g} "
                     f"(run {html.escape(run['group_id'])}{link})</summary><pre>"
                     f"{html.escape(json.dumps({'provenance': provenance, 'config': config}, indent=2, default=str))}"
                     "</pre></details>")
    return parts


def _remove_plots(plots: Sequence[Path], scratch: Path) -> None:
    """Delete the plots drawn for the page and their scratch folder (the page holds them inline)."""
    for plot in plots:
        plot.unlink(missing_ok=True)
    if scratch.is_dir():
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()


def render_report(db: str, output: Path, extra_plots: Sequence[Path] = (),
                  title: str = "robustbench-aft report") -> Path:
    """One self-contained HTML page: leaderboard, feature-gap plots, extra plots, every run's config."""
    from .tables import latest_runs_frame

    store = ResultsStore(db)
    rows = store.rows()
    parts = _report_head(db, output, title, store, rows)
    scratch = output.parent / f".{output.stem}-plots"
    plot_parts, plots = _plot_sections(db, scratch, extra_plots)
    parts.extend(plot_parts)
    parts.extend(_breakdown_section(store, set(latest_runs_frame(rows)["run_id"])))
    runs = [r for r in store.runs() if r["status"] == "finished"]
    parts.extend(_flags_section(runs))
    parts.extend(_runs_section(db, runs, output))
    parts.append("</body></html>")
    atomic_write_text("\n".join(parts) + "\n", output)
    _remove_plots(plots, scratch)
    return output
