"""Uncertainty of accuracies and of differences between two models, from scipy.stats.

* one model on n points: the 95 % Wilson score interval of the proportion
  (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``);
* several seeds: mean, sample std and the 95 % Student-t interval of the mean (``scipy.stats.t``);
* two models on the same points: the paired difference with a t-interval on the per-point
  differences, and the exact McNemar test (a two-sided binomial test on the discordant points,
  ``scipy.stats.binomtest``);
* several comparisons at once: Holm's step-down correction (scipy has no Holm; it is four lines).

All accuracies are in percent, as everywhere in the tool.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

CONFIDENCE = 0.95


def wilson_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> Tuple[float, float]:
    """The Wilson score interval of ``correct / n``, in percent."""
    from scipy.stats import binomtest

    if n <= 0:
        return (math.nan, math.nan)
    interval = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (100.0 * interval.low, 100.0 * interval.high)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Tuple[float, float]:
    """The Student-t interval of the mean of ``values`` (NaN with fewer than two values)."""
    from scipy.stats import t

    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return (math.nan, math.nan)
    mean, sem = float(data.mean()), float(data.std(ddof=1) / math.sqrt(len(data)))
    if sem == 0.0:
        return (mean, mean)
    low, high = t.interval(confidence, len(data) - 1, loc=mean, scale=sem)
    return (float(low), float(high))


def mcnemar_exact(first: np.ndarray, second: np.ndarray) -> float:
    """Exact two-sided McNemar p-value of two paired boolean outcome vectors (1.0 when they agree
    everywhere): under the null the discordant points split 50/50 between the two models."""
    from scipy.stats import binomtest

    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    only_first = int(np.sum(first & ~second))
    only_second = int(np.sum(~first & second))
    if only_first + only_second == 0:
        return 1.0
    return float(binomtest(only_first, only_first + only_second, 0.5).pvalue)


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


@dataclass
class PairedComparison:
    """``first`` minus ``second`` on the same points, in percentage points."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    seeds: int
    points: int
    # Per-point discordance counts pooled over seeds: right only for the first / only for the second.
    only_first: int
    only_second: int
    per_seed_delta: List[float]
    test: str
    # Several seeds: the one-sample t-test of the per-seed Δ against 0 (the test behind the
    # t-interval: it excludes 0 exactly when this p < 1 − confidence). None for one seed, NaN when
    # every seed gives the same Δ.
    seed_p_value: Optional[float] = None

    @property
    def seed_interval_excludes_zero(self) -> Optional[bool]:
        """Several seeds: whether the difference holds beyond seed-to-seed variation; None for one seed
        and for per-seed Δ that are all equal (no spread to measure it by)."""
        if self.seeds < 2 or self.seed_p_value is None or math.isnan(self.seed_p_value):
            return None
        return bool(self.ci_low > 0.0 or self.ci_high < 0.0)


def _pointwise_interval(first: np.ndarray, second: np.ndarray, confidence: float) -> Tuple[float, float]:
    """The t-interval of the mean per-point difference (percentage points) of two outcome vectors."""
    from scipy.stats import t

    differences = 100.0 * (first.astype(float) - second.astype(float))
    delta, n = float(differences.mean()), len(differences)
    sem = float(differences.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    if sem == 0:
        return (delta, delta)
    low, high = t.interval(confidence, n - 1, loc=delta, scale=sem)
    return (float(low), float(high))


def paired_comparison(first: Sequence[np.ndarray], second: Sequence[np.ndarray],
                      confidence: float = CONFIDENCE) -> PairedComparison:
    """Compare two models evaluated on the same points, seed by seed (``first[s]`` pairs with
    ``second[s]``, boolean vectors of equal length).

    One seed: Δ with a t-interval on the per-point differences, exact McNemar p. Several seeds: the
    mean of the per-seed Δ with a t-interval over seeds, the exact McNemar test on the pooled
    per-point outcomes of every seed, and the t-test of the per-seed Δ (``seed_p_value``). The two
    tests answer different questions: McNemar whether the two sets of trained models differ on these
    points (evaluation noise only), the seed test whether the difference outlasts retraining with
    another seed (training noise too), which with 2–3 seeds needs a large, steady Δ. Several seeds
    with exactly the same Δ have no spread to build a t-interval on: then the interval is the
    per-point one of the pooled points and the seed p-value is NaN.
    """
    from scipy.stats import ttest_1samp

    if len(first) != len(second) or not first:
        raise ValueError("paired_comparison needs the same number (≥ 1) of seeds on both sides")
    deltas, pooled_first, pooled_second = [], [], []
    for a, b in zip(first, second):
        a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
        if a.shape != b.shape:
            raise ValueError("paired outcomes must cover the same points")
        deltas.append(100.0 * (a.mean() - b.mean()))
        pooled_first.append(a)
        pooled_second.append(b)
    a, b = np.concatenate(pooled_first), np.concatenate(pooled_second)
    p_value = mcnemar_exact(a, b)
    if len(deltas) == 1:
        delta = float(deltas[0])
        low, high = _pointwise_interval(a, b, confidence)
        test = "exact McNemar, one seed"
        seed_p_value: Optional[float] = None
    else:
        delta = float(np.mean(deltas))
        test = f"t-interval over {len(deltas)} seeds; exact McNemar on the pooled points"
        if np.std(deltas) > 0:
            low, high = t_interval(deltas, confidence)
            seed_p_value = float(ttest_1samp(deltas, 0.0).pvalue)
        else:
            # Identical per-seed Δ (accuracies are counts, so with 2–3 seeds it happens) leave the t
            # statistic undefined and the t-interval a point: NaN, not the p = 0 of an infinite t,
            # and the interval of the pooled points, the evaluation noise left when the seeds show none
            # (as the leaderboard's cells do).
            low, high = _pointwise_interval(a, b, confidence)
            test = f"{len(deltas)} seeds with the same Δ: interval of the pooled points; exact McNemar on them"
            seed_p_value = math.nan
    return PairedComparison(delta=delta, ci_low=float(low), ci_high=float(high), p_value=p_value,
                            seeds=len(deltas), points=len(first[0]), only_first=int(np.sum(a & ~b)),
                            only_second=int(np.sum(~a & b)), per_seed_delta=[float(d) for d in deltas], test=test,
                            seed_p_value=seed_p_value)


def interval_for(values: Sequence[float], n_points: Optional[int]) -> Tuple[float, float]:
    """The interval of a leaderboard cell: Wilson for one seed (accuracy in percent of n points),
    the t-interval of the mean for several, cut to [0, 100] (with two or three seeds the t
    quantile is large and would reach past the possible accuracies). Several seeds with exactly the
    same accuracy (counts out of n, so with 2–3 seeds it happens) give a t-interval of zero width,
    which would claim certainty; then the cell gets the Wilson interval of the pooled points, the
    evaluation noise that is left when the seeds show none."""
    if len(values) == 1:
        if not n_points or math.isnan(values[0]):
            return (math.nan, math.nan)
        return wilson_interval(round(values[0] * n_points / 100.0), n_points)
    if n_points and float(np.std(values)) == 0.0:
        pooled = n_points * len(values)
        return wilson_interval(round(values[0] * pooled / 100.0), pooled)
    low, high = t_interval(values)
    return (max(0.0, low), min(100.0, high))
