"""A3 and verified-bf16 AutoAttack against AutoAttack, model by model, on the same points: agreement, Δ, cost.

    python benchmarks/attack_fidelity.py --db RESULTS.db [--bf16]
    python benchmarks/attack_fidelity.py --run OUT [--methods afd,trades,vaft]   # bench run --preset ci first

For every model in the store evaluated with both ``aa`` and ``a3`` (the latest finished run of each
method × seed; ``bench compare MODEL --attacks a3,aa`` pairs them): the points, both accuracies, the
per-point agreement, Δ = a3 − aa accuracy with its paired 95 % interval and exact McNemar p, and each
attack's counted passes per image (forward + backward, passes.py) and seconds. The target of issue 31:
a3 at least 5× fewer passes than aa, |Δ| ≤ 0.5 points and p ≥ 0.05 on every model.

With ``--bf16`` each model's checkpoint is evaluated again with ``aa`` in verified bf16
(``--aa-precision bf16``: AutoAttack under bf16 autocast, every break re-classified in fp32; a seeded
share of the points, ``--check-share``/``--check-min``, attacked in fp32 too), on the stored points and
seed, and set against the stored fp32 ``aa`` point by point: agreement, Δ = verified bf16 − fp32 with
McNemar p, passes and seconds (without the fp32 check, whose seconds and Δ are their own columns), and
the ratio of fp32 to bf16 seconds per forward+backward pass of the model on the evaluated points,
timed alternately here (the two attacks ran at different times on a possibly shared machine; passes
per image are nearly equal, so the per-pass ratio is the speed bf16 buys).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from robustbench_aft.compare import AttackComparison, compare_attacks
from robustbench_aft.results import ResultsStore
from robustbench_aft.stats import paired_comparison
from robustbench_aft.tables import format_table

TARGET_RATIO = 5.0
TARGET_DELTA = 0.5
TARGET_P = 0.05

PASS_TIMING_REPEATS = 5


def _passes(comparison: AttackComparison, attack: str) -> Optional[float]:
    cost = comparison.costs[attack]
    if cost["forward_per_image"] is None:
        return None
    return cost["forward_per_image"] + cost["backward_per_image"]


def _agreement(store: ResultsStore, comparison: AttackComparison) -> float:
    """The share of points where a3 and aa give the same outcome (pooled over the paired seeds)."""
    r = comparison.result
    return 100.0 * (r.points - r.only_first - r.only_second) / max(1, r.points)


def _latest_aa_run(store: ResultsStore, method: str) -> Optional[Dict[str, Any]]:
    """The latest finished run of ``method`` (lowest seed) that holds per-sample ``aa`` outcomes."""
    runs = [run for run in store.runs("last") if run["status"] == "finished" and run["method"] == method
            and (samples := store.samples(run["run_id"])) is not None and "aa" in samples.correct]
    if not runs:
        return None
    seed = min(run["seed"] for run in runs)
    return [run for run in runs if run["seed"] == seed][-1]


def _pass_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> float:
    """Seconds of one forward + backward pass (to the input, as attacks take it) of ``model`` on (x, y)."""
    x = x.clone().requires_grad_(True)
    start = time.perf_counter()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    torch.autograd.grad(loss, x)
    return time.perf_counter() - start


def pass_speed_ratio(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """fp32 seconds / bf16 seconds per forward + backward pass, the median of alternated timings after one
    warm-up of each (above 1: bf16 is faster)."""
    for bf16 in (False, True):
        _pass_seconds(model, x, y, bf16)
    ratios = [_pass_seconds(model, x, y, False) / _pass_seconds(model, x, y, True) for _ in range(PASS_TIMING_REPEATS)]
    return float(np.median(ratios))


_DATASETS: Dict[Tuple[str, Optional[str], bool], Any] = {}


def _model_and_data(run: Dict[str, Any]):
    """A stored run's model and dataset, the dataset read once per benchmark (60,000 JPEGs for CIFAR)."""
    from robustbench_aft.data import load_dataset
    from robustbench_aft.errors import ConfigError
    from robustbench_aft.pretrained import load_checkpoint

    config = json.loads(run["config_json"])
    checkpoint = config.get("checkpoint") or config.get("pretrained_source")
    if not checkpoint or not Path(checkpoint).is_file():
        raise ConfigError(f"the checkpoint of {run['method']} is gone ({checkpoint})")
    key = (run["dataset"], config.get("data_dir"), bool(config.get("skip_bad_images")))
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(run["dataset"], data_dir=key[1], skip_bad_images=key[2])
    model, _ = load_checkpoint(checkpoint, _DATASETS[key], run["arch"])
    return config, _DATASETS[key], model.eval()


def verified_bf16_columns(store: ResultsStore, method: str, check_share: float, check_min: int) -> Dict[str, Any]:
    """Verified-bf16 ``aa`` on the stored points of ``method``'s model, against its stored fp32 ``aa``."""
    import dataclasses

    from robustbench_aft.evaluator import evaluate
    from robustbench_aft.export import stored_eval_config

    run = _latest_aa_run(store, method)
    if run is None:
        return {}
    config, data, model = _model_and_data(run)
    stored = store.samples(run["run_id"])
    # The stored points, seed, batches and threat model; only aa's precision (and its check) changes.
    eval_config = dataclasses.replace(stored_eval_config(config), attacks=["clean", "aa"], aa_precision="bf16",
                                      eps=run["eps"], norm=run["norm"], bf16_check_share=check_share,
                                      bf16_check_min=check_min, sanity=False)
    result = evaluate(model, data, eval_config, torch.device("cpu"), progress=False)
    if result.indices != stored.indices:
        raise RuntimeError(f"{method}: the verified-bf16 evaluation did not cover the stored points")
    verified, fp32 = result.correct["aa"].numpy(), stored.correct["aa"]
    r = paired_comparison([verified], [fp32])
    cost, check = result.budgets["aa"]["cost"], result.verification.get("aa")
    passes = (cost["forward_per_image"] + cost["backward_per_image"]
              - cost["check_forward_per_image"] - cost["check_backward_per_image"])
    x = torch.stack([data.test[i][0] for i in stored.indices])
    y = torch.tensor([int(data.test[i][1]) for i in stored.indices])
    return {"vbf16 aa %": round(100.0 * float(verified.mean()), 2),
            "vbf16 agreement %": round(100.0 * float(np.mean(verified == fp32)), 1),
            "Δ vbf16 − aa": round(r.delta, 2), "vbf16 p": f"{r.p_value:.3g}",
            "vbf16 passes/img": round(passes),
            "vbf16 s": round(cost["seconds"] - cost["check_seconds"], 1),
            "fp32 check": "" if check is None else
            f"{check['points']} pts, Δ {check['delta']:+.2f} [{check['ci95'][0]:+.2f}, {check['ci95'][1]:+.2f}]",
            "check s": round(cost["check_seconds"], 1),
            "fp32/bf16 s per pass": round(pass_speed_ratio(model, x, y), 2)}


def fidelity_rows(db: str, bf16: bool = False, check_share: float = 0.1, check_min: int = 20) -> List[Dict[str, Any]]:
    store = ResultsStore(db)
    methods = sorted({run["method"] for run in store.runs("last") if run["status"] == "finished"},
                     key=lambda m: (m != "natural", m))
    rows = []
    for method in methods:
        try:
            comparison = compare_attacks(db, method, "a3", "aa")
        except Exception as exc:  # noqa: BLE001 - a model without both attacks is reported, not fatal
            print(f"{method}: skipped ({exc})", file=sys.stderr)
            continue
        r = comparison.result
        aa_passes, a3_passes = _passes(comparison, "aa"), _passes(comparison, "a3")
        ratio = aa_passes / a3_passes if aa_passes and a3_passes else None
        meets = (ratio is not None and ratio >= TARGET_RATIO and abs(round(r.delta, 6)) <= TARGET_DELTA
                 and r.p_value >= TARGET_P)
        row = {"model": method, "seeds": r.seeds, "points": r.points, "aa %": round(comparison.second_accuracy, 2),
               "a3 %": round(comparison.first_accuracy, 2), "agreement %": round(_agreement(store, comparison), 1),
               "Δ a3 − aa": round(r.delta, 2), "95 % interval": f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]",
               "McNemar p": f"{r.p_value:.3g}", "aa passes/img": None if aa_passes is None else round(aa_passes),
               "a3 passes/img": None if a3_passes is None else round(a3_passes, 1),
               "aa/a3 passes": None if ratio is None else round(ratio, 1),
               "aa s": round(comparison.costs["aa"]["seconds"] or 0.0, 1),
               "a3 s": round(comparison.costs["a3"]["seconds"] or 0.0, 1), "target": "met" if meets else "missed"}
        if bf16:
            row.update(verified_bf16_columns(store, method, check_share, check_min))
        rows.append(row)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="a results store holding aa and a3 for each model")
    parser.add_argument("--run", default=None, metavar="OUT",
                        help="first run `bench run --preset ci --attacks clean,pgd,aa,a3` into OUT/results.db")
    parser.add_argument("--methods", default="afd,trades,vaft", help="methods of --run (default: afd,trades,vaft)")
    parser.add_argument("--format", default="md", help="md, csv or json")
    parser.add_argument("--bf16", action="store_true",
                        help="also evaluate each model's aa in verified bf16 and add its columns")
    parser.add_argument("--check-share", type=float, default=0.1,
                        help="verified bf16: share of the points also attacked in fp32 (default: 0.1)")
    parser.add_argument("--check-min", type=int, default=20,
                        help="verified bf16: the fewest fp32-checked points (default: 20; bench's own is 200, which "
                             "on a 200-point benchmark would check every point and hide the speed)")
    args = parser.parse_args(argv)
    if (args.db is None) == (args.run is None):
        parser.error("give --db (an existing store) or --run OUT (evaluate the ci preset first)")
    db = args.db
    if args.run is not None:
        db = str(Path(args.run) / "results.db")
        subprocess.run([sys.executable, "-m", "robustbench_aft.cli", "run", "--preset", "ci", "--methods",
                        args.methods, "--attacks", "clean,pgd,aa,a3", "--db", db, "--out", args.run, "--quiet"],
                       check=True)
    torch.manual_seed(0)
    rows = fidelity_rows(db, args.bf16, args.check_share, args.check_min)
    if not rows:
        print(f"no model in {db} was evaluated with both aa and a3", file=sys.stderr)
        return 1
    print(format_table(rows, args.format))
    ratios = [row["aa/a3 passes"] for row in rows if row["aa/a3 passes"] is not None]
    deltas = [abs(row["Δ a3 − aa"]) for row in rows]
    print(f"\n{sum(row['target'] == 'met' for row in rows)} of {len(rows)} models meet the target "
          f"(aa/a3 passes ≥ {TARGET_RATIO:g}, |Δ| ≤ {TARGET_DELTA:g} points, p ≥ {TARGET_P:g}); passes ratio "
          f"{min(ratios) if ratios else float('nan'):.1f}–{max(ratios) if ratios else float('nan'):.1f}×, "
          f"largest |Δ| {max(deltas):.2f} points (median {float(np.median(deltas)):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
