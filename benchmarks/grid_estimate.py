"""What a grid costs on the machine that measured the rates: the ``paper`` preset's whole grid in
hours and one Table-1 pair in minutes, from measured rates only.

    python benchmarks/grid_estimate.py --natural-rate IMG_S --rates RATES.json --db RESULTS.db
                                       [--methods all] [--seeds 3] [--pair-natural-epochs 30]

``--natural-rate``: natural pre-training images/s (``bench pretrain``); ``--rates``: a JSON object
``{method: images/s}`` of real-pipeline fine-tuning rates (``throughput.py --real-data … --json``);
``--db``: a results store whose runs give the evaluation's seconds per test point of every attack
(the most expensive run's, per attack: the seconds an attack spends grow with the points that stay
robust, so the estimate is only as good as that run is robust; its accuracy is printed with it).

The paper grid (``--preset paper``, CIFAR-10): one natural ResNet-18 (the 100-epoch recipe on the
50,000 training images), every method × ``--seeds`` seeds fine-tuned 20 epochs on the 49,500 images
outside the 500-image validation split, which is validated (clean + PGD-10) and probed (PGD-20 on 512
images) after every epoch, and every model (the natural one too) evaluated with clean, PGD-20, CW-20
and AutoAttack standard on the 10,000 test images. The Table-1 pair: the same for AFD and vAFT, one
seed, a natural model of ``--pair-natural-epochs`` epochs, 1,000 test points.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

TRAIN_IMAGES = 50_000
VAL_IMAGES = 500
PROBE_IMAGES = 512
PAPER_EPOCHS = 20
NATURAL_EPOCHS = 100
TEST_POINTS = 10_000
PAIR_TEST_POINTS = 1_000
# Validation runs PGD-10 and the probe PGD-20, priced from the evaluation's PGD-20 seconds per point.
VALIDATION_PGD_SHARE = 10 / 20


@dataclass
class Rates:
    """Measured rates: natural pre-training images/s, fine-tuning images/s per method, evaluation
    seconds per test point per attack (``pgd`` also prices validation and the feature-gap probe)."""

    natural: float
    fine_tuning: Dict[str, float]
    eval_seconds_per_point: Dict[str, float]
    note: Dict[str, str] = field(default_factory=dict)


def evaluation_seconds(rates: Rates, points: int) -> float:
    return points * sum(rates.eval_seconds_per_point.values())


def fine_tuning_seconds(rates: Rates, method: str, epochs: int = PAPER_EPOCHS) -> float:
    """One fine-tuning run: its epochs over the training images, plus the validation and the probe after
    every epoch (each a PGD pass over its images, priced at the PGD column's seconds per point)."""
    pgd = rates.eval_seconds_per_point.get("pgd", 0.0)
    per_epoch_checks = VAL_IMAGES * pgd * VALIDATION_PGD_SHARE + PROBE_IMAGES * pgd
    return epochs * ((TRAIN_IMAGES - VAL_IMAGES) / rates.fine_tuning[method] + per_epoch_checks)


def grid_seconds(rates: Rates, methods: List[str], seeds: int, natural_epochs: int = NATURAL_EPOCHS,
                 points: int = TEST_POINTS) -> float:
    """The natural model once, every method × seed fine-tuned, every model evaluated on ``points``."""
    natural = natural_epochs * TRAIN_IMAGES / rates.natural
    tuning = seeds * sum(fine_tuning_seconds(rates, method) for method in methods)
    models = seeds * len(methods) + 1
    return natural + tuning + models * evaluation_seconds(rates, points)


def rates_from(natural_rate: float, fine_tuning: Dict[str, float], db: str) -> Rates:
    """Rates from the measured natural rate, the fine-tuning rates and a results store's evaluations."""
    connection = sqlite3.connect(db)
    runs = {run_id: (method, n_eval) for run_id, method, n_eval in connection.execute(
        "SELECT run_id, method, n_eval FROM runs")}
    accuracy = {(run_id, metric): value for run_id, metric, value in connection.execute(
        "SELECT run_id, metric, value FROM metrics")}
    seconds: Dict[str, float] = {}
    note: Dict[str, str] = {}
    for run_id, metric, budget_json in connection.execute("SELECT run_id, metric, budget_json FROM budgets"):
        method, n_eval = runs.get(run_id, ("?", 0))
        cost = (json.loads(budget_json) or {}).get("cost") or {}
        if metric == "clean" or "seconds" not in cost or not n_eval:
            continue
        per_point = cost["seconds"] / n_eval
        if per_point > seconds.get(metric, -1.0):
            seconds[metric] = per_point
            measured = accuracy.get((run_id, metric))
            note[metric] = f"{method}, {measured:.1f} % accuracy" if measured is not None else method
    if not seconds:
        raise SystemExit(f"grid_estimate.py: error: no run in {db} stores its evaluation seconds (budgets' cost)")
    return Rates(natural_rate, fine_tuning, seconds, note)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--natural-rate", type=float, required=True, help="natural pre-training images/s")
    parser.add_argument("--rates", required=True, help="JSON file {method: fine-tuning images/s}")
    parser.add_argument("--db", required=True, help="results store with evaluation seconds per attack")
    parser.add_argument("--methods", default="all", help="methods of the grid (default: every one in --rates)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pair-natural-epochs", type=int, default=30)
    parser.add_argument("--device-name", default="this GPU", help="how the printed lines name the machine")
    args = parser.parse_args(argv)
    with open(args.rates) as handle:
        fine_tuning = {name: float(rate) for name, rate in json.load(handle).items()}
    methods = sorted(fine_tuning) if args.methods == "all" else args.methods.split(",")
    missing = [m for m in methods + ["afd", "vaft"] if m not in fine_tuning]
    if missing:
        print(f"grid_estimate.py: error: no fine-tuning rate for {', '.join(sorted(set(missing)))} in {args.rates}",
              file=sys.stderr)
        return 2
    rates = rates_from(args.natural_rate, fine_tuning, args.db)
    evaluation = ", ".join(f"{metric} {1000 * value:.1f} ms ({rates.note[metric]})"
                           for metric, value in sorted(rates.eval_seconds_per_point.items()))
    tuning = ", ".join(f"{m} {fine_tuning[m]:.0f}" for m in methods)
    print(f"Rates: natural pre-training {rates.natural:.0f} img/s; fine-tuning {tuning} img/s; evaluation per test "
          f"point: {evaluation}")
    hours = grid_seconds(rates, methods, args.seeds) / 3600
    print(f"Estimate: the paper preset's grid ({len(methods)} methods × {args.seeds} seeds, ResNet-18, 20 epochs on "
          f"50,000 images, natural 100 epochs, AutoAttack on 10,000) takes {hours:.1f} {args.device_name}-hours")
    pair_rates = Rates(rates.natural, {m: fine_tuning[m] for m in ("afd", "vaft")}, rates.eval_seconds_per_point)
    minutes = grid_seconds(pair_rates, ["afd", "vaft"], 1, args.pair_natural_epochs, PAIR_TEST_POINTS) / 60
    print(f"Estimate: a Table-1 pair (natural {args.pair_natural_epochs} epochs on 50,000 images, AFD and vAFT 20 "
          f"epochs each, clean/PGD/CW/AutoAttack on 1,000 test points) takes {minutes:.1f} minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
