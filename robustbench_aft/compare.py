"""Paired comparisons between methods from the stored per-sample outcomes: ``bench compare`` and
the leaderboard's noise-aware ``rank`` column.

Two models are comparable point by point only when they were evaluated on the same test points
(same dataset, arch, eps, norm and evaluation subset); everything here refuses otherwise. Seeds pair
by number (seed s of one method with seed s of the other); the natural model has one run, which
pairs with every seed of the other side.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import ConfigError
from .registry import NATURAL
from .results import PerSample, ResultsStore
from .stats import CONFIDENCE, PairedComparison, holm, paired_comparison

ALPHA = 0.05
SETTING = ("dataset", "arch", "eps", "norm")
RANK_PREFERENCE = ("worst", "aa", "pgd")


def default_rank_metric(metrics: Sequence[str]) -> Optional[str]:
    """``worst`` when present, else ``aa``, else ``pgd`` (None when none of them is)."""
    return next((m for m in RANK_PREFERENCE if m in metrics), None)


def _setting_key(run: Dict[str, Any]) -> tuple:
    """(dataset, arch, eps, norm) of a stored run, eps rounded so that float noise still matches."""
    return tuple(round(run[k], 6) if k == "eps" else run[k] for k in SETTING)


def _latest_runs(store: ResultsStore, selection: str = "last") -> List[Dict[str, Any]]:
    """The finished runs of ``selection`` (validation.py), the latest of each (method, setting, seed)."""
    latest: Dict[tuple, Dict[str, Any]] = {}
    for run in store.runs(selection):
        if run["status"] != "finished":
            continue
        latest[(run["method"], *_setting_key(run), run["seed"])] = run
    return list(latest.values())


@dataclass
class MethodComparison:
    """``bench compare``'s answer: first − second on one setting and metric."""

    first: str
    second: str
    metric: str
    setting: Dict[str, Any]
    first_accuracy: float
    second_accuracy: float
    result: PairedComparison

    @property
    def significant(self) -> bool:
        """The exact McNemar verdict on the (pooled) points, which the leaderboard's ranks use too."""
        return self.result.p_value < ALPHA

    def verdict(self) -> str:
        """One phrase for the human output; with several seeds it says whether the difference also
        outlasts seed-to-seed variation, which a pooled McNemar test alone does not measure."""
        r = self.result
        points = "significant" if self.significant else "not significant"
        if r.seeds < 2:
            return f"{points} at α = {ALPHA}"
        if r.seed_interval_excludes_zero is None:
            return (f"{points} at α = {ALPHA} on the pooled points; every seed gives the same Δ, so there is no "
                    f"seed-to-seed spread to test it against (p seeds n/a; the interval is that of the pooled points)")
        if r.seed_interval_excludes_zero:
            return (f"{points} at α = {ALPHA} on the pooled points; the seed interval excludes 0 "
                    f"(p seeds = {r.seed_p_value:.3g})")
        return (f"{points} at α = {ALPHA} on the pooled points; the seed interval includes 0 (p seeds = "
                f"{r.seed_p_value:.3g}): not distinguishable from seed-to-seed variation with {r.seeds} seeds")

    def table(self) -> List[Dict[str, Any]]:
        r = self.result
        return [{"metric": self.metric, self.first: round(self.first_accuracy, 2),
                 self.second: round(self.second_accuracy, 2), "delta": round(r.delta, 2),
                 "ci95 low": round(r.ci_low, 2), "ci95 high": round(r.ci_high, 2), "p": f"{r.p_value:.3g}",
                 f"significant (p < {ALPHA})": "yes" if self.significant else "no",
                 "p seeds": _seed_p_text(r.seed_p_value),
                 "seeds": r.seeds, "points": r.points, f"only {self.first}": r.only_first,
                 f"only {self.second}": r.only_second}]


def _seed_p_text(seed_p_value: Optional[float]) -> str:
    if seed_p_value is None:
        return ""
    return "n/a" if math.isnan(seed_p_value) else f"{seed_p_value:.3g}"


def pair_seeds(first: Sequence[Optional[int]],
               second: Sequence[Optional[int]]) -> List[Tuple[Optional[int], Optional[int]]]:
    """Which seed of ``first`` pairs with which of ``second``: seed with the same seed, in order. The
    natural model is one run without a seed of its own (every fine-tuned seed starts from it), given
    as the seed None; it pairs with every seed of the other side. Two methods that both have seeds
    are never paired across different seeds: that would count one side's run twice and call the
    difference between two seeds a difference between two methods."""
    if None in first and None in second:
        return [(None, None)]
    if None in first:
        return [(None, seed) for seed in sorted(second)]
    if None in second:
        return [(seed, None) for seed in sorted(first)]
    return [(seed, seed) for seed in sorted(set(first) & set(second))]


def _pairs(first_runs: List[Dict[str, Any]], second_runs: List[Dict[str, Any]]) -> List[Tuple[dict, dict]]:
    def by_seed(runs: List[Dict[str, Any]]) -> Dict[Optional[int], dict]:
        if runs[0]["method"] == NATURAL:
            return {None: runs[-1]}
        return {run["seed"]: run for run in runs}

    first, second = by_seed(first_runs), by_seed(second_runs)
    return [(first[a], second[b]) for a, b in pair_seeds(list(first), list(second))]


def paired_outcomes(store: ResultsStore, pairs: List[Tuple[dict, dict]], metric: str,
                    names: Tuple[str, str]) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """The per-sample outcome vectors of ``metric`` for each pair of runs, checked to cover the same points."""
    first, second = [], []
    for run_a, run_b in pairs:
        samples: List[PerSample] = []
        for run, name in ((run_a, names[0]), (run_b, names[1])):
            stored = store.samples(run["run_id"])
            if stored is None:
                raise ConfigError(f"{name} seed {run['seed']} has no stored per-sample results (evaluated by an "
                                  "older version); `bench run ... --resume` on its --out folder stores them")
            if metric not in stored.correct:
                raise ConfigError(f"{name} seed {run['seed']} was not evaluated with {metric!r} (it has "
                                  f"{', '.join(sorted(stored.correct))})")
            samples.append(stored)
        if samples[0].indices != samples[1].indices:
            raise ConfigError(f"{names[0]} and {names[1]} were not evaluated on the same points "
                              f"({len(samples[0].indices)} vs {len(samples[1].indices)} test points, different "
                              "subsets); compare runs made with the same --n-eval and evaluation seed")
        first.append(samples[0].correct[metric])
        second.append(samples[1].correct[metric])
    return first, second


def compare_methods(db: str, first: str, second: str, metric: str = "aa", dataset: Optional[str] = None,
                    arch: Optional[str] = None, eps: Optional[float] = None,
                    selection: str = "last") -> MethodComparison:
    """The paired difference ``first − second`` in ``metric`` (see :func:`stats.paired_comparison`),
    on the ``last`` or the ``best-val`` weights of each model."""
    from .registry import METHODS

    names = tuple(name if name == NATURAL else METHODS.canonical(name) for name in (first, second))
    refuse_unpaired_metric(metric)
    if names[0] == names[1]:
        raise ConfigError(f"compare two different methods, got {names[0]} twice")
    store = ResultsStore(db)
    runs = [run for run in _latest_runs(store, selection)
            if (dataset is None or run["dataset"] == dataset) and (arch is None or run["arch"] == arch)
            and (eps is None or abs(run["eps"] - eps) < 1e-6)]
    settings: Dict[str, set] = {}
    for name in names:
        settings[name] = {_setting_key(run) for run in runs if run["method"] == name}
        if not settings[name]:
            raise ConfigError(f"no finished run of {name} in {db}" + (" with the given --dataset/--arch/--eps"
                                                                      if dataset or arch or eps is not None else ""))
    common = settings[names[0]] & settings[names[1]]
    if not common:
        raise ConfigError(f"{names[0]} and {names[1]} were not evaluated on the same points: no common dataset, "
                          f"arch, eps and norm ({_describe(settings[names[0]])} vs {_describe(settings[names[1]])})")
    if len(common) > 1:
        raise ConfigError(f"{names[0]} and {names[1]} share several settings ({_describe(common)}); choose one with "
                          "--dataset, --arch and --eps")
    key = next(iter(common))
    setting = dict(zip(SETTING, key))

    def of(name: str) -> List[Dict[str, Any]]:
        return [run for run in runs if run["method"] == name and _setting_key(run) == key]

    pairs = _pairs(of(names[0]), of(names[1]))
    if not pairs:
        raise ConfigError(f"{names[0]} and {names[1]} have no seed in common to pair")
    first_outcomes, second_outcomes = paired_outcomes(store, pairs, metric, names)
    result = paired_comparison(first_outcomes, second_outcomes, CONFIDENCE)
    return MethodComparison(first=names[0], second=names[1], metric=metric, setting=setting,
                            first_accuracy=100.0 * float(np.mean([o.mean() for o in first_outcomes])),
                            second_accuracy=100.0 * float(np.mean([o.mean() for o in second_outcomes])),
                            result=result)


def _describe(settings: set) -> str:
    return "; ".join(f"{d}/{a} {n} eps {e:g}" for d, a, e, n in sorted(settings)) or "none"


def rank_groups(methods: List[str], means: List[float],
                outcomes_of: Callable[[str], Optional[Dict[Optional[int], np.ndarray]]],
                alpha: float = ALPHA) -> List[Optional[int]]:
    """Noise-aware ranks: the best method by mean and every method not significantly below it (exact
    McNemar on the pooled per-sample outcomes against the best, Holm-corrected over the group)
    share rank 1; the rest are ranked the same way, and so on.

    ``outcomes_of(method)`` gives the outcome vector of each seed (``{seed: vector}``; the natural
    model's one run under the key None, see :func:`pair_seeds`) or None when the per-sample results
    are missing; then no method of the group gets a rank. Two methods without a seed in common
    cannot be tested against each other and count as not significantly different.
    """
    from .stats import mcnemar_exact

    outcomes = {m: outcomes_of(m) for m in methods}
    if any(not v for v in outcomes.values()) or len({len(x) for v in outcomes.values() for x in v.values()}) != 1:
        return [None] * len(methods)  # missing per-sample results, or not the same points
    order = sorted(range(len(methods)), key=lambda i: -means[i])
    ranks: List[Optional[int]] = [None] * len(methods)
    remaining, rank = order, 1

    def p_value(i: int, j: int) -> float:
        a, b = outcomes[methods[i]], outcomes[methods[j]]
        pairs = pair_seeds(list(a), list(b))
        if not pairs:
            return 1.0
        return mcnemar_exact(np.concatenate([a[x] for x, _ in pairs]), np.concatenate([b[y] for _, y in pairs]))

    while remaining:
        best, others = remaining[0], remaining[1:]
        p_values = [p_value(best, other) for other in others]
        adjusted = holm(p_values) if p_values else []
        tied = [best] + [other for other, p in zip(others, adjusted) if p >= alpha]
        for i in tied:
            ranks[i] = rank
        remaining = [i for i in remaining if i not in tied]
        rank += 1
    return ranks


def refuse_unpaired_metric(metric: str) -> None:
    """Paired tests need one outcome per test point; a corruption metric has one per (variant, point),
    75 correlated outcomes per image, which McNemar would treat as independent."""
    from .registry import ATTACKS

    if metric in ATTACKS and ATTACKS.get(metric).kind == "corruption":
        raise ConfigError(f"{metric} has one outcome per corrupted variant of each point, not one per point, so "
                          "paired tests and ranks do not apply; compare or rank by clean, pgd, aa or worst")


def add_rank_column(frame, store: ResultsStore, per_run, rank_by: Optional[str]) -> Any:
    """``frame`` with a ``rank`` column per (dataset, arch, eps, norm) group (see :func:`rank_groups`)."""
    if rank_by:
        refuse_unpaired_metric(rank_by)
    metric = rank_by or default_rank_metric([c for c in frame.columns])
    if metric is None or metric not in frame.columns:
        if rank_by:
            raise ConfigError(f"--rank-by {rank_by}: no such metric in the table (it has "
                              f"{', '.join(m for m in frame.columns if f'{m}_std' in frame.columns)})")
        return frame
    ranks = [math.nan] * len(frame)
    for _, group in frame.groupby(["dataset", "arch", "eps", "norm"], sort=False):
        methods = group["method"].tolist()
        protocol_of_method = dict(zip(group["method"], group["protocol_id"])) if "protocol_id" in group else {}
        if len(protocol_of_method) < len(methods):  # --all-protocols: a method in several rows is not ranked
            continue

        def outcomes_of(method: str, group=group) -> Optional[Dict[Optional[int], np.ndarray]]:
            runs = per_run[(per_run["method"] == method) & (per_run["dataset"] == group["dataset"].iloc[0])
                           & (per_run["arch"] == group["arch"].iloc[0]) & (per_run["eps"] == group["eps"].iloc[0])
                           & (per_run["norm"] == group["norm"].iloc[0])]
            if method in protocol_of_method and "protocol_id" in per_run:
                runs = runs[runs["protocol_id"] == protocol_of_method[method]]
            runs = runs.sort_values("seed")
            vectors: Dict[Optional[int], np.ndarray] = {}
            for run_id, seed in zip(runs["run_id"], runs["seed"]):
                stored = store.samples(run_id)
                if stored is None or metric not in stored.correct:
                    return None
                vectors[None if method == NATURAL else int(seed)] = stored.correct[metric]
            return vectors

        group_ranks = rank_groups(methods, group[metric].tolist(), outcomes_of)
        for position, value in zip(group.index, group_ranks):
            ranks[frame.index.get_loc(position)] = math.nan if value is None else value
    frame = frame.copy()
    frame.insert(0, "rank", ranks)
    frame.attrs["rank_by"] = metric
    return frame


COST_KEYS = ("forward_per_image", "backward_per_image", "seconds")


@dataclass
class AttackComparison:
    """``bench compare MODEL --attacks A,B``'s answer: attack A's accuracy − attack B's on one model, point by
    point, with what each attack cost (means over the paired seeds of the counted passes and seconds)."""

    method: str
    first: str
    second: str
    setting: Dict[str, Any]
    first_accuracy: float
    second_accuracy: float
    result: PairedComparison
    costs: Dict[str, Dict[str, Optional[float]]]

    @property
    def significant(self) -> bool:
        return self.result.p_value < ALPHA

    def table(self) -> List[Dict[str, Any]]:
        r = self.result

        def cost(attack: str, key: str) -> Any:
            value = self.costs[attack].get(key)
            return "" if value is None else round(value, 1 if key != "seconds" else 2)

        return [{"model": self.method, self.first: round(self.first_accuracy, 2),
                 self.second: round(self.second_accuracy, 2), "delta": round(r.delta, 2),
                 "ci95 low": round(r.ci_low, 2), "ci95 high": round(r.ci_high, 2), "p": f"{r.p_value:.3g}",
                 f"significant (p < {ALPHA})": "yes" if self.significant else "no", "seeds": r.seeds,
                 "points": r.points, f"only {self.first}": r.only_first, f"only {self.second}": r.only_second,
                 **{f"{attack} {label}": cost(attack, key) for attack in (self.first, self.second)
                    for key, label in zip(COST_KEYS, ("fwd/img", "bwd/img", "s"))}}]


def _stored_cost(store: ResultsStore, run_id: str, metric: str) -> Dict[str, Optional[float]]:
    """What ``metric``'s attack cost on one run, from its stored budget (empty for runs stored before)."""
    cost = store.record(run_id).budgets.get(metric, {}).get("cost", {})
    return {key: cost.get(key) for key in COST_KEYS}


def compare_attacks(db: str, method: str, first: str, second: str, dataset: Optional[str] = None,
                    arch: Optional[str] = None, eps: Optional[float] = None,
                    selection: str = "last") -> AttackComparison:
    """The paired difference ``first − second`` between two attacks on the stored model(s) of ``method``:
    per seed, the latest finished run holding each attack's per-sample outcomes (one run, or two runs that
    must have evaluated the same points)."""
    from .registry import ATTACKS, METHODS

    name = method if method == NATURAL else METHODS.canonical(method)
    attacks = tuple(metric if metric in ("worst", "clean") else ATTACKS.canonical(metric) for metric in (first, second))
    for metric in attacks:
        refuse_unpaired_metric(metric)
    if attacks[0] == attacks[1]:
        raise ConfigError(f"compare two different attacks, got {attacks[0]} twice")
    store = ResultsStore(db)
    runs = [run for run in store.runs(selection) if run["status"] == "finished" and run["method"] == name
            and (dataset is None or run["dataset"] == dataset) and (arch is None or run["arch"] == arch)
            and (eps is None or abs(run["eps"] - eps) < 1e-6)]
    settings = {_setting_key(run) for run in runs}
    if not settings:
        raise ConfigError(f"no finished run of {name} in {db}" + (" with the given --dataset/--arch/--eps"
                                                                  if dataset or arch or eps is not None else ""))
    if len(settings) > 1:
        raise ConfigError(f"{name} has runs in several settings ({_describe(settings)}); choose one with --dataset, "
                          "--arch and --eps")
    key = next(iter(settings))
    # The natural model is one run without a seed of its own (pair_seeds): its latest runs pair as one.
    seeds = [None] if name == NATURAL else sorted({run["seed"] for run in runs})
    first_outcomes, second_outcomes = [], []
    costs: Dict[str, List[Dict[str, Optional[float]]]] = {attack: [] for attack in attacks}
    for seed in seeds:
        chosen = []
        for attack in attacks:
            holding = [(run, stored) for run in runs if seed is None or run["seed"] == seed
                       for stored in [store.samples(run["run_id"])] if stored is not None and attack in stored.correct]
            if not holding:
                raise ConfigError(f"{name}{'' if seed is None else f' seed {seed}'} has no stored per-sample results "
                                  f"of {attack!r}; evaluate it with --attacks ...,{attack}")
            chosen.append(holding[-1])  # runs come oldest first
        (run_a, samples_a), (run_b, samples_b) = chosen
        if samples_a.indices != samples_b.indices:
            raise ConfigError(f"{attacks[0]} and {attacks[1]} were not evaluated on the same points of {name}"
                              f"{'' if seed is None else f' seed {seed}'} ({len(samples_a.indices)} vs "
                              f"{len(samples_b.indices)} test points, different subsets); evaluate both in one run, "
                              "or with the same --n-eval and evaluation seed")
        first_outcomes.append(samples_a.correct[attacks[0]])
        second_outcomes.append(samples_b.correct[attacks[1]])
        costs[attacks[0]].append(_stored_cost(store, run_a["run_id"], attacks[0]))
        costs[attacks[1]].append(_stored_cost(store, run_b["run_id"], attacks[1]))
    result = paired_comparison(first_outcomes, second_outcomes, CONFIDENCE)

    def mean_cost(values: List[Dict[str, Optional[float]]]) -> Dict[str, Optional[float]]:
        return {k: None if any(v[k] is None for v in values) else float(np.mean([v[k] for v in values]))
                for k in COST_KEYS}

    return AttackComparison(method=name, first=attacks[0], second=attacks[1], setting=dict(zip(SETTING, key)),
                            first_accuracy=100.0 * float(np.mean([o.mean() for o in first_outcomes])),
                            second_accuracy=100.0 * float(np.mean([o.mean() for o in second_outcomes])),
                            result=result, costs={attack: mean_cost(values) for attack, values in costs.items()})
