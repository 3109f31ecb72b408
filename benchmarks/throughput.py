"""Training and evaluation throughput, measured against the official code's step structure.

    python benchmarks/throughput.py [--archs smallcnn,resnet18] [--batch 32] [--rounds 3] [--device cpu]
                                    [--precision auto|fp32|bf16] [--channels-last auto|on|off]
                                    [--compile]

Prints, for the machine it runs on:

1. per registered method, training images/s of our ``Method.update`` and, where
   ``benchmarks/reference_steps.py`` has one, of a step written the way the official code
   structures it (same model, batch, attack steps and seed, measured alternately in one process;
   the reference is always fp32 and NCHW, ours runs with ``--precision`` and ``--channels-last``,
   whose ``auto`` resolves as in ``bench run``: what a user gets by default on that device);
   their ratio; the method's floor (``FloorStep``: the passes of ``FLOOR_PASSES`` it must do and
   nothing else, run as one block in our precision and layout, timed alternately with ours) and
   ours/floor (≤ 1 up to noise; the seconds of one pass of each kind are printed first); with
   ``--compile``, also ours with the networks compiled as ``bench run --compile`` does, its ratio
   to eager, and the seconds of its first step (the compilation; a fresh inductor cache per run,
   shared by the methods of one arch);
   with ``--real-data SPEC``, also the real-pipeline rate: one epoch of ``bench run``'s fine-tuning
   (``fine_tune``) on ``--real-images`` images of that dataset per method, and its ratio to the
   synthetic step's rate (what the data path and the loop cost beyond the step);
2. evaluator images/s per attack, the full protocol against running every attack separately, and
   our ``aa`` against calling AutoAttack directly;
3. peak memory per method (CPU: peak RSS since the method started; GPU: max allocated).

Synthetic CIFAR-shaped batches (3×32×32, 10 classes): timing does not depend on the pixels.
Timings are medians over ``--rounds``; ratios come from the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_steps import REFERENCE_STEPS  # noqa: E402

from robustbench_aft.config import TrainConfig  # noqa: E402
from robustbench_aft.data import DataBundle, TensorImageDataset  # noqa: E402
from robustbench_aft.devices import (  # noqa: E402
    autocast,
    compile_bodies,
    resolve_precision,
    use_channels_last,
    without_buffer_donation,
)
from robustbench_aft.engine import build_method  # noqa: E402
from robustbench_aft.evaluator import EvalConfig, evaluate, plan_evaluation  # noqa: E402
from robustbench_aft.method import Method  # noqa: E402
from robustbench_aft.models import build_model  # noqa: E402
from robustbench_aft.registry import ATTACKS, METHODS  # noqa: E402
from robustbench_aft.tables import format_table  # noqa: E402

EPS = 8 / 255
# Per training batch, what each method cannot avoid with its official settings, in the passes that
# `FloorStep` runs: attack steps (an eval-mode forward + a backward to the input only),
# update passes (a train-mode forward + backward into the weights, one per distinct input it trains
# on), forward-only passes (a frozen teacher, a no-grad target) and GradAlign passes (a forward, the
# input gradient with its graph, and the backward through that gradient into the weights).
FLOOR_PASSES: Dict[str, Dict[str, int]] = {
    "vaft": {"attack": 10, "update": 1}, "rift": {"attack": 10, "update": 1}, "twins-at": {"attack": 10, "update": 1},
    "mart": {"attack": 10, "update": 2},
    # the natural target of the KL attack: one forward, reused for 10 steps
    "trades": {"attack": 10, "update": 2, "forward": 1}, "twins-trades": {"attack": 10, "update": 2, "forward": 1},
    # + the frozen teacher on the natural input
    "afd": {"attack": 10, "update": 1, "forward": 1},
    "arrest": {"attack": 10, "update": 1, "forward": 1}, "afkd": {"attack": 10, "update": 1, "forward": 1},
    "free-at": {"update": 8},    # m = 8 replays, each one update pass that also yields the input gradient
    "fgsm-ga": {"attack": 1, "update": 1, "gradalign": 1},  # FGSM from x (its gradient is GradAlign's first)
    "atas": {"attack": 1, "update": 1},  # the one-step attack and the update
}
DEFAULT_FLOOR = {"attack": 10, "update": 1}
# The epoch (of 20) whose step is timed. ARREST's noisy replay may replace PGD by random noise in
# epochs ≤ 10, and on synthetic inputs it always does; epoch 11 times the PGD step its floor counts.
TIMED_EPOCH = {"arrest": 11}


def peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif Path("/proc/self/clear_refs").exists():
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS (Linux)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


class FloorStep:
    """The passes a method must do per training batch (``FLOOR_PASSES``), and nothing else, run as
    one block on the same model, batch, precision and memory format as our step.

    * attack step: eval-mode forward + backward to the input only (no weight gradients; BN on its
      running statistics), chained as PGD chains them (each step starts from the last one's output);
    * update pass: train-mode forward + backward into the weights;
    * forward: an inference-mode forward (a frozen teacher, a no-grad target);
    * GradAlign pass: forward, the input gradient with its graph, backward through it into the weights.

    Everything else our step does (projection, clipping, loss terms, optimiser steps, EMA) is
    absent, so the block is a lower bound of our step's work: ours/floor = floor seconds / our
    seconds is at most 1 up to timing noise, which both sides share (alternate rounds, minimum).
    """

    def __init__(self, arch: str, passes: Dict[str, int], batch: torch.Tensor, labels: torch.Tensor,
                 device: torch.device, precision: str, channels_last: bool, num_classes: int = 10) -> None:
        channels = batch.shape[1]
        self.model = build_model(arch, num_classes, channels, (0.5,) * channels, (0.25,) * channels,
                                 tuple(batch.shape[1:])).to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
            batch = batch.contiguous(memory_format=torch.channels_last)
        self.batch, self.labels, self.passes = batch, labels, passes
        self.device, self.precision = device, precision
        self.reference_gradient = torch.randn_like(batch)

    def _attack_steps(self, count: int) -> None:
        self.model.eval()
        x = self.batch
        for _ in range(count):
            x = x.detach().requires_grad_(True)
            gradient, = torch.autograd.grad(F.cross_entropy(self.model(x), self.labels), [x])
            x = x + gradient.sign()

    def _update_passes(self, count: int) -> None:
        self.model.train()
        for _ in range(count):
            F.cross_entropy(self.model(self.batch), self.labels).backward()

    def _forwards(self, count: int) -> None:
        self.model.eval()
        with torch.inference_mode():
            for _ in range(count):
                self.model(self.batch)

    def _gradalign_passes(self, count: int) -> None:
        self.model.train()
        for _ in range(count):
            x = self.batch.clone().requires_grad_(True)
            gradient, = torch.autograd.grad(F.cross_entropy(self.model(x), self.labels), [x], create_graph=True)
            (1 - F.cosine_similarity(gradient.flatten(1), self.reference_gradient.flatten(1), dim=1).mean()).backward()

    def __call__(self) -> None:
        kinds = {"attack": self._attack_steps, "update": self._update_passes, "forward": self._forwards,
                 "gradalign": self._gradalign_passes}
        with autocast(self.device, self.precision):
            for kind, count in self.passes.items():
                kinds[kind](count)
        self.model.zero_grad(set_to_none=True)


def one_pass_times(arch: str, batch: torch.Tensor, labels: torch.Tensor, device: torch.device, rounds: int,
                   precision: str = "fp32", channels_last: bool = False) -> Dict[str, float]:
    """Seconds of one pass of each kind (the minimum over rounds of ten chained passes, divided by ten)."""
    times = {}
    for kind in ("attack", "update", "forward", "gradalign"):
        block = FloorStep(arch, {kind: 10}, batch, labels, device, precision, channels_last)
        block()
        times[kind] = min(timed(block, device) for _ in range(rounds)) / 10
    return times


def _prepared_method(name: str, natural: torch.nn.Module, batch_size: int, device: torch.device,
                     channels_last: bool, train_set: TensorImageDataset) -> Method:
    method = build_method(name, None, EPS, TrainConfig(batch_size=batch_size))
    method.prepare(natural)
    method.to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    method.optimizers = method.configure_optimizers()
    method.on_fit_start(train_set)
    method.on_epoch_start(TIMED_EPOCH.get(name, 5), 20)
    method.train()
    return method


def training_table(arch: str, methods: List[str], batch_size: int, rounds: int, device: torch.device,
                   precision: str = "fp32", channels_last: bool = False, compiled_too: bool = False,
                   input_shape: Tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> List[dict]:
    torch.manual_seed(0)
    x = torch.rand(batch_size, *input_shape, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    index = torch.arange(batch_size, device=device)
    channels = input_shape[0]
    natural = build_model(arch, num_classes, channels, (0.5,) * channels, (0.25,) * channels, input_shape).to(device)
    train_set = TensorImageDataset(x.cpu(), y.cpu())
    x_ours = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    rows = []
    for name in methods:
        peak_memory_reset(device)
        ours = _prepared_method(name, natural, batch_size, device, channels_last, train_set)

        def ours_step(method=ours):
            with autocast(device, precision):
                method.update((x_ours, y, index))

        compiled_step, first_compiled_seconds = None, None
        if compiled_too and not ours.compile_unsupported:
            compiled = _prepared_method(name, natural, batch_size, device, channels_last, train_set)
            compile_bodies(compiled)

            def compiled_step(method=compiled):
                with autocast(device, precision), without_buffer_donation():
                    method.update((x_ours, y, index))

            first_compiled_seconds = timed(compiled_step, device)
            compiled_step()  # a second warm-up: guards settled, allocator warm
        reference = REFERENCE_STEPS.get(name)
        reference_step = reference(natural, EPS, device) if reference else None
        floor_step = FloorStep(arch, FLOOR_PASSES.get(name, DEFAULT_FLOOR), x, y, device, precision, channels_last,
                               num_classes)
        ours_step()  # warm-up (lazy buffers, allocator)
        floor_step()
        if reference_step:
            reference_step(x, y)
        times: Dict[str, List[float]] = {"ours": [], "floor": [], "reference": [], "compiled": []}
        for _ in range(rounds):  # alternately, so that drifts in machine load hit all of them
            times["ours"].append(timed(ours_step, device))
            times["floor"].append(timed(floor_step, device))
            if reference_step:
                times["reference"].append(timed(lambda: reference_step(x, y), device))
            if compiled_step:
                times["compiled"].append(timed(compiled_step, device))
        # Medians for the throughput columns; minima (the least disturbed round of each) for ours/floor,
        # so that background load cannot make ours look faster than the work it has to do.
        ours_ips = batch_size / statistics.median(times["ours"])
        floor_seconds = min(times["floor"])
        row = {"arch": arch, "method": name, "ours img/s": round(ours_ips, 1)}
        if reference_step:
            reference_ips = batch_size / statistics.median(times["reference"])
            row["reference img/s"] = round(reference_ips, 1)
            row["ours/reference"] = round(ours_ips / reference_ips, 2)
        else:
            row["reference img/s"] = "-"
            row["ours/reference"] = "-"
        row["floor img/s"] = round(batch_size / floor_seconds, 1)
        row["ours/floor"] = round(floor_seconds / min(times["ours"]), 2)
        if compiled_too:
            if compiled_step:
                compiled_ips = batch_size / statistics.median(times["compiled"])
                row["compiled img/s"] = round(compiled_ips, 1)
                row["compiled/ours"] = round(compiled_ips / ours_ips, 2)
                row["first compiled step s"] = round(first_compiled_seconds, 1)
            else:
                row["compiled img/s"] = row["compiled/ours"] = row["first compiled step s"] = "-"
        row["peak MB"] = round(peak_memory_mb(device), 1)
        rows.append(row)
        print(f"  {arch} {name}: {row}", file=sys.stderr, flush=True)
    return rows


def real_pipeline_rates(arch: str, methods: List[str], data_spec: str, images: int, batch_size: int,
                        device: torch.device, precision: str, channels_last: bool) -> Dict[str, float]:
    """Images/s of one epoch of ``bench run``'s fine-tuning (:func:`fine_tune`: the data path, the loop,
    EMA, checks; no validation or probe) on ``images`` training images of the real dataset, per method."""
    from robustbench_aft.data import load_dataset
    from robustbench_aft.engine import fine_tune

    data = load_dataset(data_spec)
    channels, *size = data.input_shape
    natural = build_model(arch, data.num_classes, channels, data.mean, data.std, tuple(data.input_shape))
    train = TrainConfig(epochs=1, batch_size=batch_size, train_subset=min(images, len(data.train)), val_size=0,
                        feature_gap_probe=0, precision=precision, channels_last="on" if channels_last else "off")
    # One short unmeasured epoch first: the process's one-time costs (kernel selection, allocator,
    # lazy imports) would otherwise fall on the first method's rate.
    warm_up = dataclasses.replace(train, train_subset=min(2 * batch_size, len(data.train)))
    fine_tune(methods[0], natural, data, warm_up, eps=EPS, seed=0, device=device, progress=False)
    rates = {}
    for name in methods:
        result = fine_tune(name, natural, data, train, eps=EPS, seed=0, device=device, progress=False)
        rates[name] = result.images_per_second
        print(f"  {arch} {name}: real pipeline {rates[name]:.1f} img/s on {data_spec}", file=sys.stderr, flush=True)
    return rates


def add_real_pipeline(rows: List[dict], rates: Dict[str, float]) -> None:
    """The real-pipeline rate next to the synthetic step's, and their ratio (1.0: the data path and the
    loop cost nothing beyond the step)."""
    for row in rows:
        rate = rates.get(row["method"])
        row["real img/s"] = "-" if rate is None else round(rate, 1)
        row["real/synthetic"] = "-" if rate is None else round(rate / row["ours img/s"], 2)


def synthetic_bundle(model: torch.nn.Module, n: int, device: torch.device, clean_accuracy: float) -> DataBundle:
    """n random images labelled by ``model`` itself, except a share (1 − clean_accuracy) given
    another label, so the model is right on about ``clean_accuracy`` of them, as an adversarially
    fine-tuned CIFAR-10 model is on about half of its test set."""
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, 32, 32, generator=generator)
    with torch.no_grad():
        labels = model.eval()(images.to(device)).argmax(1).cpu()
    wrong = torch.rand(n, generator=generator) >= clean_accuracy
    labels[wrong] = (labels[wrong] + 1) % 10
    dataset = TensorImageDataset(images, labels)
    return DataBundle(name="synthetic", key="synthetic", train=dataset, test=dataset, num_classes=10,
                      input_shape=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, default_eps=EPS,
                      class_names=[str(i) for i in range(10)])


def naive_protocol(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   attacks: List[str]) -> Dict[str, torch.Tensor]:
    """Every attack on every point, each attack on its own (the usual evaluation script), then the
    convention that a point misclassified clean is broken."""
    correct = {}
    for name in attacks:
        x_adv = ATTACKS.get(name)(EPS, "Linf", len(y))(model, x, y, seed=0)
        with torch.no_grad():
            correct[name] = model(x_adv).argmax(1) == y
    return {name: values & correct["clean"] for name, values in correct.items()}


def median_time(step: Callable[[], None], device: torch.device, rounds: int) -> float:
    return statistics.median(timed(step, device) for _ in range(rounds))


def evaluation_table(arch: str, n: int, device: torch.device, clean_accuracy: float, rounds: int) -> List[dict]:

    torch.manual_seed(0)
    model = build_model(arch, 10, 3, (0.5,) * 3, (0.25,) * 3).to(device).eval()
    data = synthetic_bundle(model, n, device, clean_accuracy)
    x = torch.stack([data.test[i][0] for i in range(n)]).to(device)
    y = torch.tensor([data.test[i][1] for i in range(n)], device=device)
    evaluate(model, data, EvalConfig(attacks=["pgd"], eps=EPS, batch_size=n, sanity=False), device, progress=False)
    rows = []
    for attack in ("pgd", "cw", "aa"):
        config = EvalConfig(attacks=[attack], eps=EPS, batch_size=n, sanity=False)
        seconds = median_time(lambda: evaluate(model, data, config, device, progress=False), device, rounds)
        rows.append({"arch": arch, "what": f"evaluate {attack}", "images/s": round(n / seconds, 1),
                     "seconds": round(seconds, 2)})
    for attacks in (["clean", "pgd", "cw"], ["clean", "pgd", "cw", "aa"]):
        naive: Dict[str, torch.Tensor] = {}
        config = EvalConfig(attacks=attacks, eps=EPS, batch_size=n, sanity=False)
        results = []
        naive_times, together_times = [], []
        for _ in range(rounds):  # alternately, so that drifts in machine load hit both
            naive_times.append(timed(lambda: naive.update(naive_protocol(model, x, y, attacks)), device))
            together_times.append(timed(lambda: results.append(evaluate(model, data, config, device, progress=False)),
                                        device))
        naive_seconds, together = statistics.median(naive_times), statistics.median(together_times)
        same = all(torch.equal(results[-1].correct[a].to(device), naive[a]) for a in attacks)
        label = ",".join(attacks)
        rows.append({"arch": arch, "what": f"{label}, each attack on every point",
                     "images/s": round(n / naive_seconds, 1), "seconds": round(naive_seconds, 2)})
        rows.append({"arch": arch, "what": f"{label} in one evaluate call", "images/s": round(n / together, 1),
                     "seconds": round(together, 2),
                     "ratio": f"{naive_seconds / together:.2f}× naive, per-sample outcomes "
                              f"{'equal' if same else 'DIFFERENT'}"})
    rows.append(direct_autoattack_row(model, data, x, y, device, rounds, arch))
    return rows


def direct_autoattack_row(model: torch.nn.Module, data: DataBundle, x: torch.Tensor, y: torch.Tensor,
                          device: torch.device, rounds: int, arch: str) -> dict:
    """Our ``aa`` (an ``evaluate`` call) against pyautoattack called directly on the same points with the
    seed our evaluation gives it, timed alternately; their per-sample outcomes must be equal."""
    from robustbench_aft import _compat
    from robustbench_aft.attacks import AutoAttackVersion

    config = EvalConfig(attacks=["aa"], eps=EPS, batch_size=len(y), sanity=False)
    plan = plan_evaluation(data, config)
    generator = torch.Generator(device=device).manual_seed(plan.seed(0))
    seed = AutoAttackVersion.library_seed(generator, device)
    ours, direct, results, direct_images = [], [], [], []
    for _ in range(rounds):
        direct.append(timed(lambda: direct_images.append(_compat.run_autoattack(
            model, x, y, eps=EPS, norm="Linf", version="standard", attacks=None, seed=seed, device=device,
            batch_size=len(y), num_classes=10)), device))
        ours.append(timed(lambda: results.append(evaluate(model, data, config, device, progress=False)), device))
    with torch.no_grad():
        direct_correct = model(direct_images[-1].to(device)).argmax(1) == y
    same = torch.equal(results[-1].correct["aa"].to(device), direct_correct)
    ours_seconds, direct_seconds = statistics.median(ours), statistics.median(direct)
    return {"arch": arch, "what": "pyautoattack called directly (same points, same seed)",
            "images/s": round(len(y) / direct_seconds, 1), "seconds": round(direct_seconds, 2),
            "ratio": f"our aa ({ours_seconds:.2f} s, alternated) at {direct_seconds / ours_seconds:.2f}× its speed, "
                     f"per-sample outcomes {'equal' if same else 'DIFFERENT'}"}


def training_tables(args: argparse.Namespace, archs: List[str], methods: List[str], device: torch.device,
                    precision: str, channels_last: bool) -> None:
    """The pass and training tables of ``archs``, printed."""
    print(f"\nbatch {args.batch}, eps 8/255, official training attacks (PGD-10 for most methods), "
          f"median of {args.rounds} rounds, 3×32×32 synthetic inputs; ours (and the floor's passes) in {precision}, "
          f"{'channels_last' if channels_last else 'NCHW'}; the reference in fp32, NCHW\n")
    print("## Passes\n")
    print("Seconds of one pass of each kind the floors are built from (minimum over rounds of ten chained "
          "passes, divided by ten), batch as below:\n")
    pass_rows = []
    for arch in archs:
        torch.manual_seed(0)
        x = torch.rand(args.batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        seconds = one_pass_times(arch, x, y, device, args.rounds, precision, channels_last)
        pass_rows.append({"arch": arch, **{f"{kind} ms": round(1000 * value, 2) for kind, value in seconds.items()}})
    print(format_table(pass_rows, "md"))
    print("\n## Training\n")
    # With --real-data the synthetic batches take that dataset's image shape and classes, so that the
    # real/synthetic ratio compares the same step.
    shape, classes = (3, 32, 32), 10
    if args.real_data:
        from robustbench_aft.data import load_dataset

        real = load_dataset(args.real_data)
        shape, classes = tuple(real.input_shape), real.num_classes
    rows = []
    for arch in archs:
        arch_rows = training_table(arch, methods, args.batch, args.rounds, device, precision, channels_last,
                                   args.compile, shape, classes)
        if args.real_data:
            rates = real_pipeline_rates(arch, methods, args.real_data, args.real_images, args.batch, device,
                                        precision, channels_last)
            add_real_pipeline(arch_rows, rates)
            if args.json and arch == archs[0]:
                Path(args.json).write_text(json.dumps({name: round(rate, 1) for name, rate in rates.items()}))
        rows += arch_rows
    if args.real_data:
        print(f"real img/s: one epoch of `bench run`'s fine-tuning (fine_tune: data path, loop, EMA, checks; no "
              f"validation or probe) on {args.real_images} training images of {args.real_data}, batch {args.batch}; "
              "real/synthetic: its ratio to the synthetic step's median rate\n")
    print(format_table(rows, "md"))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default="smallcnn,resnet18",
                        help="archs for the pass and training tables; empty: only the evaluation table")
    parser.add_argument("--methods", default="all", help="comma-separated methods (default: all)")
    parser.add_argument("--batch", type=int, default=32, help="training batch size")
    parser.add_argument("--rounds", type=int, default=3, help="timed repetitions (the median is reported)")
    parser.add_argument("--eval-n", type=int, default=32, help="images for the evaluator timings")
    parser.add_argument("--eval-archs", default="smallcnn",
                        help="archs for the evaluator timings (AutoAttack on resnet18 takes many minutes on a CPU)")
    parser.add_argument("--eval-clean-accuracy", type=float, default=0.5,
                        help="share of the evaluation images the model classifies correctly")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="our training steps in fp32 or under bf16 autocast (default auto, as bench run: "
                             "bf16 on CUDA, fp32 on CPU); the reference stays fp32")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                        help="our training steps in channels_last memory format (default auto, as bench run); "
                             "the reference stays NCHW")
    parser.add_argument("--real-data", default=None, metavar="SPEC",
                        help="also time one epoch of real fine-tuning on this dataset (e.g. folder:PATH) per method")
    parser.add_argument("--real-images", type=int, default=5000,
                        help="training images of that epoch (default: 5000)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="with --real-data: write the real-pipeline rates {method: img/s} of the first arch there "
                             "(benchmarks/grid_estimate.py reads it)")
    parser.add_argument("--compile", action="store_true",
                        help="also time our steps with the networks compiled by torch.compile")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    channels_last = use_channels_last(args.channels_last, device)
    if args.compile and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        # A fresh cache, so the first compiled step shows the compilation a new user pays.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="throughput-inductor-")
    methods = METHODS.names() if args.methods == "all" else [METHODS.canonical(m) for m in args.methods.split(",")]
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    print(f"# Throughput: {platform.node() or 'machine'}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}")
    if archs:
        training_tables(args, archs, methods, device, precision, channels_last)
    eval_archs = [a.strip() for a in args.eval_archs.split(",") if a.strip()]
    if not eval_archs:
        return 0
    print("\n## Evaluation\n")
    print(f"An untrained model labels its own inputs, except {100 * (1 - args.eval_clean_accuracy):.0f} % of them "
          "given another label (its clean accuracy). Its near-constant outputs keep most correct points robust "
          "to APGD, so every AutoAttack component runs on nearly all of them (the slowest case).\n")
    rows = [row for arch in eval_archs
            for row in evaluation_table(arch, args.eval_n, device, args.eval_clean_accuracy, args.rounds)]
    print(format_table(rows, "md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
