"""The data path on the CPU, before and after the tensor cache, measured side by side in one run.

    python benchmarks/data_path.py [--cifar ../shared/data/cifar10-jpeg] [--baseline-rev c99d648]
                                   [--arch smallcnn] [--train-images 5000] [--finetune-images 2000]
                                   [--rounds 3] [--threads 2]

For CIFAR-10 (JPEG q75) as ``folder:`` (the first ``--train-images`` training images) and for digits,
prints natural pre-training images/s (one epoch of the dataset's recipe batch; digits:
``--digits-epochs`` of its recipe), the images/s of one vAFT fine-tuning epoch (``--finetune-images``,
no validation split) and the pre-training floor (the same step on one random batch with no data path,
which no data path can beat; :func:`pretrain_floor`), in three set-ups, each in a fresh process
with ``--threads`` torch threads:

- ``before``: the code of ``--baseline-rev`` (``git archive`` into a temporary folder): the per-image
  PIL/ToTensor DataLoader path with a host read of every loss term per batch;
- ``loader``: this tree with the tensor cache off (``$ROBUSTBENCH_AFT_DEVICE_DATA_GIB=0``): the same
  DataLoader path, the engine's device-side accumulation;
- ``cache``: this tree with the tensor cache (the first round builds it in an empty cache folder:
  its seconds are reported apart; later rounds read it).

The set-ups alternate within each round; the table holds the medians over ``--rounds`` and the
ratios to ``before``. Dataset loading (the folder's decode scan) is outside every timing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
SETUPS = ("before", "loader", "cache")
MEASURES = ("pretrain", "pretrain_floor", "finetune")


def measure(spec: str, arch: str, train_images: Optional[int], finetune_images: int, threads: int,
            epochs: Optional[int] = None) -> Dict[str, float]:
    """In this process (the code on ``sys.path``): pre-training and fine-tuning images/s on ``spec``."""
    import dataclasses

    import torch
    from torch.utils.data import Subset

    from robustbench_aft import load_dataset
    from robustbench_aft.config import TrainConfig
    from robustbench_aft.engine import fine_tune
    from robustbench_aft.models import build_model
    from robustbench_aft.pretrained import NaturalRecipe, default_recipe, pretrain

    torch.set_num_threads(threads)
    data = load_dataset(spec)
    recipe = default_recipe(data)
    if train_images is not None and train_images < len(data.train):
        keep = list(range(train_images))
        changes = {"train": Subset(data.train, keep)}
        if getattr(data, "plain_train", None) is not None:
            changes["plain_train"] = Subset(data.plain_train, keep)
        data = dataclasses.replace(data, **changes)
        recipe = NaturalRecipe(epochs=1, batch_size=recipe.batch_size, lr=recipe.lr)
    if epochs is not None:
        recipe = NaturalRecipe(epochs=epochs, batch_size=recipe.batch_size, lr=recipe.lr)
    result: Dict[str, float] = {}
    try:
        from robustbench_aft.tensorcache import tensor_cache
    except ImportError:  # the baseline has no tensor cache
        tensor_cache = None
    if tensor_cache is not None:
        start = time.perf_counter()
        built = tensor_cache(data, progress=False)
        result["cache_seconds"] = time.perf_counter() - start
        result["cached"] = float(built is not None)
    _, info = pretrain(data, arch, recipe, seed=0, device=torch.device("cpu"), progress=False)
    result["pretrain"] = info["images_per_second"]
    result["pretrain_floor"] = pretrain_floor(data, arch, recipe)
    model = build_model(arch, data.num_classes, data.input_shape[0], data.mean, data.std, data.input_shape)
    train = TrainConfig(epochs=1, batch_size=128, train_subset=min(finetune_images, len(data.train) - 1), val_size=0)
    tuned = fine_tune("vaft", model.eval(), data, train, eps=data.default_eps, seed=0, device=torch.device("cpu"),
                      progress=False)
    result["finetune"] = tuned.images_per_second
    return result


def pretrain_floor(data, arch: str, recipe, blocks: int = 3, steps: int = 10) -> float:
    """Images/s of natural pre-training's step alone, with no data path: forward, cross-entropy,
    backward and the recipe's SGD step on one fixed random batch of the dataset's shape, on the model
    pre-training builds. The fastest of ``blocks`` blocks of ``steps`` steps (the least disturbed),
    after two warm-up steps. Pre-training cannot run faster than this on the same threads."""
    import torch
    import torch.nn.functional as F

    from robustbench_aft.models import build_model

    generator = torch.Generator().manual_seed(0)
    model = build_model(arch, data.num_classes, data.input_shape[0], data.mean, data.std, data.input_shape).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    images = torch.rand((recipe.batch_size, *data.input_shape), generator=generator)
    labels = torch.randint(0, data.num_classes, (recipe.batch_size,), generator=generator)

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    fastest = float("inf")
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        fastest = min(fastest, time.perf_counter() - start)
    return steps * recipe.batch_size / fastest


def _run_setup(setup: str, source: Path, cache: Path, args: argparse.Namespace, spec: str,
               train_images: Optional[int]) -> Dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(source), "ROBUSTBENCH_AFT_CACHE": str(cache),
           "OMP_NUM_THREADS": str(args.threads)}
    if setup == "loader":
        env["ROBUSTBENCH_AFT_DEVICE_DATA_GIB"] = "0"
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", spec, "--arch", args.arch,
               "--finetune-images", str(args.finetune_images), "--threads", str(args.threads)]
    if train_images is not None:
        command += ["--train-images", str(train_images)]
    else:
        command += ["--digits-epochs", str(args.digits_epochs)]
    done = subprocess.run(command, env=env, cwd=str(source), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"data_path.py: the {setup} measurement of {spec} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _baseline_tree(rev: str, into: Path) -> Path:
    tree = into / "baseline"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=False)
    if archive.returncode != 0:
        sys.exit(f"data_path.py: git archive {rev} failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    if (tree / "baselines").is_dir() and not (tree / "robustbench_aft" / "baselines").exists():
        (tree / "robustbench_aft" / "baselines").symlink_to("../baselines")  # as in a development checkout
    return tree


def _row(dataset: str, measure_name: str, samples: Dict[str, List[float]]) -> List[str]:
    medians = {s: statistics.median(samples[s]) for s in SETUPS}
    return [dataset, measure_name, *(f"{medians[s]:,.0f}" for s in SETUPS),
            f"{medians['loader'] / medians['before']:.2f}", f"{medians['cache'] / medians['before']:.2f}"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cifar", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg"),
                        help="the CIFAR-10 (JPEG q75) ImageFolder copy")
    parser.add_argument("--baseline-rev", default="c99d648", help="the commit measured as 'before'")
    parser.add_argument("--arch", default="smallcnn")
    parser.add_argument("--train-images", type=int, default=5000, help="CIFAR training images pre-trained on")
    parser.add_argument("--finetune-images", type=int, default=2000, help="images of the fine-tuning epoch")
    parser.add_argument("--digits-epochs", type=int, default=30, help="digits pre-training epochs (recipe: 30)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure is not None:
        digits = args.measure == "digits"
        print(json.dumps(measure(args.measure, args.arch, None if digits else args.train_images,
                                 args.finetune_images, args.threads, args.digits_epochs if digits else None)))
        return 0
    cifar = Path(args.cifar).expanduser()
    if not (cifar / "train").is_dir():
        print(f"data_path.py: no CIFAR-10 (JPEG) copy at {cifar}/train (--cifar)", file=sys.stderr)
        return 2
    if min(args.rounds, args.digits_epochs) < 1 or args.train_images < 128 or args.finetune_images < 128:
        print("data_path.py: --rounds and --digits-epochs must be >= 1, --train-images and --finetune-images >= 128",
              file=sys.stderr)
        return 2
    datasets = [("CIFAR-10 (JPEG q75)", f"folder:{cifar}", args.train_images), ("digits", "digits", None)]
    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        sources = {"before": _baseline_tree(args.baseline_rev, scratch_dir), "loader": REPO, "cache": REPO}
        caches = {s: scratch_dir / f"cache-{s}" for s in SETUPS}
        samples: Dict[str, Dict[str, Dict[str, List[float]]]] = {
            name: {m: {s: [] for s in SETUPS} for m in MEASURES} for name, _, _ in datasets}
        build_seconds: Dict[str, float] = {}
        for round_number in range(args.rounds):
            for name, spec, train_images in datasets:
                for setup in SETUPS:
                    result = _run_setup(setup, sources[setup], caches[setup], args, spec, train_images)
                    for measure_name in MEASURES:
                        samples[name][measure_name][setup].append(result[measure_name])
                    if setup == "cache" and round_number == 0:
                        build_seconds[name] = result["cache_seconds"]
                    print(f"round {round_number + 1} {name} {setup}: " + json.dumps(result), file=sys.stderr)
    rows = [_row(name, label, samples[name][measure_name]) for name, _, _ in datasets
            for measure_name, label in (("pretrain", f"natural pre-training ({args.arch}), img/s"),
                                        ("finetune", f"vAFT fine-tuning epoch ({args.arch}), img/s"))]
    headers = ["dataset", "measure", "before", "loader", "cache", "loader/before", "cache/before"]
    print(_markdown(rows, headers))
    print()
    floor_rows = []
    for name, _, _ in datasets:
        pretrain_medians = {s: statistics.median(samples[name]["pretrain"][s]) for s in SETUPS}
        floor = statistics.median(samples[name]["pretrain_floor"]["cache"])
        floor_rows.append([name, f"{floor:,.0f}", f"{pretrain_medians['cache'] / floor:.2f}",
                           f"{floor / pretrain_medians['before']:.2f}"])
    print(_markdown(floor_rows, ["dataset", f"pre-training floor ({args.arch}), img/s", "cache/floor",
                                 "floor/before (the most any data path can gain)"]))
    for name, seconds in build_seconds.items():
        print(f"tensor cache build, {name}: {seconds:.1f} s (first round, empty cache folder; both splits)")
    print(f"{args.rounds} rounds, medians; {args.threads} threads; CIFAR: {args.train_images} training images for "
          f"pre-training (1 epoch, batch 128), {args.finetune_images} for the fine-tuning epoch; digits: "
          f"{args.digits_epochs} epochs of its natural recipe (batch 64) and {args.finetune_images} images; "
          f"before = {args.baseline_rev}")
    return 0


def _markdown(rows: List[List[str]], headers: List[str]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


if __name__ == "__main__":
    sys.exit(main())
