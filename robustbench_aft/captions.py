"""The evaluation protocol behind a table, in words: setting, attacks with their budgets, seeds, points.

A published table is only comparable with another when its protocol is stated next to it (RobustBench
states the threat model and AutoAttack version with every entry), so the LaTeX tables put it in their
caption and the model cards of :mod:`.modelfolder` in their text. The facts come from the store's rows
(``ResultsStore.rows``: one per run and metric, with the metric's ``budget_json``).
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Optional

# Budget fields the setting already states (eps and norm are columns of every row) and what an attack
# spent on one model (``cost``, which differs from model to model): neither describes how it was run.
SETTING_FIELDS = ("eps", "eps_given", "norm", "cost")


def describe_budget(budget: Dict[str, Any]) -> str:
    """One attack's budget as ``PGD (steps 20, step 0.25·eps, restarts 1, loss cross_entropy_loss, fp32)``."""
    name = str(budget.get("attack", "?"))
    details = [f"{key} {value}" for key, value in sorted(budget.items())
               if key not in ("attack", "precision", *SETTING_FIELDS)]
    if budget.get("precision"):
        details.append(str(budget["precision"]))
    return f"{name} ({', '.join(details)})" if details else name


def table_protocol(store_rows: Iterable[Dict[str, Any]], run_ids: Optional[set] = None) -> Dict[str, Any]:
    """The protocol of the store rows of ``run_ids`` (all when None): ``settings`` (dataset, arch, norm,
    eps), ``budgets`` (metric → its distinct budget descriptions), ``seeds`` and ``points`` (distinct
    evaluated-subset sizes). The natural model has a seed column of its own but no fine-tuning seed,
    so its seed is not counted."""
    settings, seeds, points = set(), set(), set()
    budgets: Dict[str, List[str]] = {}
    for row in store_rows:
        if run_ids is not None and row["run_id"] not in run_ids:
            continue
        settings.add((row["dataset"], row["arch"], row["norm"], round(float(row["eps"]), 6)))
        if row.get("method") != "natural" and row.get("seed") is not None:
            seeds.add(int(row["seed"]))
        if row.get("n_eval") is not None:
            points.add(int(row["n_eval"]))
        text = row.get("budget_json")
        if isinstance(text, str):
            described = describe_budget(json.loads(text))
            if described not in budgets.setdefault(row["metric"], []):
                budgets[row["metric"]].append(described)
    return {"settings": sorted(settings), "budgets": budgets, "seeds": sorted(seeds), "points": sorted(points)}


def protocol_sentence(protocol: Dict[str, Any]) -> str:
    """The protocol as one plain-text paragraph (no markup; callers escape it for their format)."""
    settings = "; ".join(f"{dataset}, {arch}, {norm} eps = {eps:.4g}" for dataset, arch, norm, eps in
                         protocol.get("settings", []))
    budgets = "; ".join(f"{metric}: {' / '.join(texts)}" for metric, texts in protocol.get("budgets", {}).items())
    seeds = protocol.get("seeds") or []
    points = protocol.get("points") or []
    parts = [settings] if settings else []
    if budgets:
        parts.append(f"attacks {budgets}")
    if seeds:
        parts.append(f"{len(seeds)} fine-tuning seed(s) ({', '.join(str(s) for s in seeds)})")
    if points:
        parts.append(f"{' / '.join(str(p) for p in points)} evaluated test points")
    return ". ".join(parts) + "." if parts else ""


def comparison_caption(db: str, comparison: Any, header: str, selection: str = "last") -> str:
    """``bench compare``'s caption: its header line, the verdict, and the compared metric's attack
    budget as the store holds it for the two methods in that setting."""
    from .results import ResultsStore

    setting = comparison.setting
    rows = [row for row in ResultsStore(db).rows(selection=selection)
            if row["method"] in (comparison.first, comparison.second) and row["metric"] == comparison.metric
            and row["dataset"] == setting["dataset"] and row["arch"] == setting["arch"]
            and row["norm"] == setting["norm"] and abs(float(row["eps"]) - float(setting["eps"])) < 1e-6]
    budgets = table_protocol(rows)["budgets"].get(comparison.metric, [])
    r = comparison.result
    budget = f" Attack: {' / '.join(budgets)}." if budgets else ""
    return (f"{header}.{budget} Paired difference with its 95 % interval ({r.test}); {comparison.verdict()}.")


__all__ = ["comparison_caption", "describe_budget", "protocol_sentence", "table_protocol"]
