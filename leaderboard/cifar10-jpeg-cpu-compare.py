"""The paired comparisons behind the paragraph on the AFD paper's Table 1 in cifar10-jpeg-cpu.md.

Each claim is what `bench compare FIRST SECOND --metric M` computes on the CIFAR-10 (JPEG) CPU store,
printed one line each, next to the same difference in the AFD paper's Table 1 (ResNet-18, official
CIFAR-10; the packaged robustbench_aft/resources/published.csv, its fine-tuning row where a method has
two: TRADES' row is from-scratch training). Usage: python leaderboard/cifar10-jpeg-cpu-compare.py [DB] (default
runs/cifar10-jpeg-cpu/results.db; rebuild it with `bench load leaderboard/cifar10-jpeg-cpu-runs`).
"""
import csv
import sys

from robustbench_aft.compare import compare_methods
from robustbench_aft.errors import ConfigError
from robustbench_aft.tables import published_csv

CLAIMS = [("afd", "vaft", "aa,clean"), ("afd", "trades", "aa,clean"), ("arrest", "afd", "clean,aa"),
          ("free-at", "afd", "aa,clean"), ("fgsm-ga", "afd", "aa"), ("afd", "rift", "aa,clean"),
          ("vaft", "rift", "aa"), ("trades", "vaft", "aa"), ("twins-at", "vaft", "aa"), ("afkd", "afd", "aa,clean")]


def table1() -> dict:
    """(method, metric) → the AFD paper's Table 1 number; a fine-tuning row wins over a from-scratch one."""
    with open(published_csv(), newline="") as handle:
        rows = list(csv.DictReader(handle))
    values = {}
    for row in sorted(rows, key=lambda row: row["setting"] == "fine-tuning"):
        if row["dataset"] == "cifar10" and row["arch"] == "resnet18" and "Table 1" in row["source"]:
            values[row["method"], row["metric"]] = float(row["value"])
    return values


def main(db: str) -> None:
    paper = table1()
    for first, second, metrics in CLAIMS:
        for metric in metrics.split(","):
            try:
                c = compare_methods(db, first, second, metric=metric)
            except ConfigError as error:
                print(f"{first} − {second} {metric}: {error}")
                continue
            r = c.result
            seeds_p = c.table()[0]["p seeds"] or "-"
            per_seed = ", ".join(f"{d:+.1f}" for d in r.per_seed_delta)
            if (first, metric) in paper and (second, metric) in paper:
                paper_text = f"{paper[first, metric] - paper[second, metric]:+.2f}"
            else:
                paper_text = "not in it"
            print(f"{c.first} − {c.second} {metric}: {c.first_accuracy:.2f} vs {c.second_accuracy:.2f}, "
                  f"Δ {r.delta:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}], McNemar p {r.p_value:.3g}, "
                  f"p seeds {seeds_p}, {r.seeds} seed(s) (per-seed Δ {per_seed}); Table 1: {paper_text}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/cifar10-jpeg-cpu/results.db")
