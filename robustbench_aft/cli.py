"""The ``bench`` command: thin sub-commands over the Python API.

Every user error (unknown name, missing file, bad value) ends as one line on stderr and exit
status 2; Ctrl-C exits 130. No maths and no table logic live here.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from .config import DEFAULT_DB
from .errors import ConfigError, UserError, not_a_file_reason
from .registry import FORMATS

log = logging.getLogger("robustbench_aft")


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (and exit 2) instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="digits",
                        help="dataset name or folder:PATH (default: digits, bundled with scikit-learn)")
    parser.add_argument("--data-dir", default=None, help="root folder of downloadable datasets (default: ./data)")
    parser.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    parser.add_argument("--image-size", type=_positive_int, default=None,
                        help="resize every split to N×N (e.g. 224 for an ImageNet model on CIFAR); the dataset is "
                             "then named DATASET@Npx and eps is in pixels of the resized images")
    parser.add_argument("--mean", default=None, metavar="M1,M2,M3", help=MEAN_HELP)
    parser.add_argument("--std", default=None, metavar="S1,S2,S3", help=STD_HELP)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")


def _add_precision_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--precision", default=None, choices=("auto", "fp32", "bf16"),
                        help=f"{what}: auto = bf16 autocast on CUDA, fp32 on CPU (default: auto)")
    parser.add_argument("--aa-precision", default=None, choices=("fp32", "bf16"),
                        help="AutoAttack (default: fp32, so that leaderboard AA numbers are full precision)")


ARCH_KWARGS_HELP = ("keyword arguments of an external --arch (timm:, torchvision:, py:), e.g. img_size=32; "
                    "they become part of the arch's name: timm:vit_tiny_patch16_224[img_size=32]")
SELECT_HELP = ("which weights of each fine-tuned model: last (default) or best-val (the best validated epoch; "
               "stored by runs with --select best-val)")
COLUMNS_HELP = ("cost columns to show in Markdown, comma-separated: cost (all), fine_tune_s, eval_s, forward_per_image, "
                "backward_per_image, epoch (CSV and JSON always carry them)")


MEAN_HELP = ("per-channel mean of the model's Normalize layer, overriding the dataset's and any the model "
             "declares (one value for every channel, or one per channel); the dataset is then named DATASET@mean=…")
STD_HELP = "per-channel std of the model's Normalize layer (as --mean); the dataset is then named DATASET@std=…"


def _human(fmt: str) -> bool:
    """Whether ``--format fmt`` is for people (headers and legends around the table) or for parsing."""
    from .leaderboard import output_format

    return output_format(fmt).human


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="bench", description="Benchmark adversarial fine-tuning of pre-trained classifiers.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"robustbench-aft {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    commands.required = True

    listing = commands.add_parser("list", help="list registered methods, datasets, archs or attacks")
    listing.add_argument("kind", nargs="?", choices=("methods", "datasets", "archs", "attacks"),
                         help="what to list (default: everything)")
    listing.set_defaults(handler=cmd_list)

    pretrain = commands.add_parser("pretrain", help="train a natural model and store it in the cache")
    _add_data_arguments(pretrain)
    pretrain.add_argument("--arch", default="smallcnn", help="architecture (see `bench list archs`)")
    pretrain.add_argument("--arch-kwargs", default=None, metavar="K=V,...", help=ARCH_KWARGS_HELP)
    pretrain.add_argument("--epochs", type=_positive_int, default=None, help="epochs (default: the dataset's recipe)")
    pretrain.add_argument("--batch-size", type=_positive_int, default=None, help="batch size (default: the recipe's)")
    pretrain.add_argument("--lr", type=_positive_float, default=None, help="peak learning rate (default: the recipe's)")
    pretrain.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default: 0)")
    pretrain.add_argument("--force", action="store_true", help="retrain even if the cache has this model")
    pretrain.set_defaults(handler=cmd_pretrain)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint under the uniform protocol")
    _add_data_arguments(evaluate)
    evaluate.add_argument("--checkpoint", required=True,
                          help="checkpoint path, 'auto' (the cached natural model) or robustbench:NAME")
    evaluate.add_argument("--arch", default="smallcnn", help="architecture of the checkpoint")
    evaluate.add_argument("--arch-kwargs", default=None, metavar="K=V,...", help=ARCH_KWARGS_HELP)
    evaluate.add_argument("--attacks", default="clean,pgd,cw",
                          help="comma-separated attacks (default: clean,pgd,cw; see `bench list attacks`)")
    evaluate.add_argument("--eps", default=None, help="budget, e.g. 8/255 or 0.2 (default: the dataset's)")
    evaluate.add_argument("--norm", default="Linf", choices=("Linf", "L2"), help="threat model (default: Linf)")
    evaluate.add_argument("--n-eval", type=_positive_int, default=None,
                          help="size of the seeded test subset (default: the whole test set)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=256, help="evaluation batch size")
    evaluate.add_argument("--seed", type=_non_negative_int, default=0, help="subset and attack seed (default: 0)")
    evaluate.add_argument("--no-sanity", action="store_true", help="skip the extra eps checks on the first batch")
    _add_precision_arguments(evaluate, "clean, PGD and CW")
    evaluate.add_argument("--format", default="md", choices=FORMATS.names(), help="output format")
    evaluate.add_argument("--output", default=None, help="also write the table to this file")
    evaluate.set_defaults(handler=cmd_eval)

    run = commands.add_parser("run", help="fine-tune with each method and seed, evaluate, store, print the leaderboard")
    _add_data_arguments(run)
    run.add_argument("--config", default=None, metavar="FILE.yaml",
                     help="read options from a YAML file (option names as keys, plus set/train/eval sections); "
                          "options given on the command line win")
    run.add_argument("--print-config", action="store_true",
                     help="print the resolved configuration as YAML (loadable with --config) and exit")
    run.add_argument("--methods", default=None,
                     help="comma-separated methods, e.g. ours,trades, or all (see `bench list methods`); required")
    run.add_argument("--arch", default=None, help="architecture (default: the preset's, else smallcnn)")
    run.add_argument("--arch-kwargs", default=None, metavar="K=V,...", help=ARCH_KWARGS_HELP)
    run.add_argument("--preset", default=None, help="quick (the digits default), paper (the default elsewhere), ci or cpu-cifar10")
    run.add_argument("--pretrained", default="auto", help="natural model: auto (cache or pre-train), a path, robustbench:NAME")
    run.add_argument("--seeds", default="0", help="comma-separated fine-tuning seeds (default: 0)")
    run.add_argument("--epochs", type=_positive_int, default=None, help="fine-tuning epochs (default: the preset's)")
    run.add_argument("--batch-size", type=_positive_int, default=None, help="fine-tuning batch size")
    run.add_argument("--lr", type=_positive_float, default=None, help="base learning rate")
    run.add_argument("--natural-epochs", type=_positive_int, default=None,
                     help="epochs of the natural pre-training when --pretrained auto has to pre-train (default: the "
                          "preset's, else 30 on digits and 100 elsewhere); part of the cache key")
    run.add_argument("--train-subset", type=_positive_int, default=None,
                     help="fine-tune on a seeded subset of this many training images")
    run.add_argument("--val-size", type=_non_negative_int, default=None,
                     help="training images held out for validation, clean + PGD-10 after every epoch (default: 200 "
                          "on digits, 500 elsewhere; taken outside --train-subset; 0: no validation)")
    run.add_argument("--select", default=None,
                     help="weights to evaluate: last (default, what the papers report) or best-val (the epoch with "
                          "the highest validation PGD accuracy; the last weights are evaluated and stored too)")
    run.add_argument("--attacks", default=None, help="evaluation attacks (default: the preset's)")
    run.add_argument("--eps", default=None, help="budget, e.g. 8/255 (default: the dataset's)")
    run.add_argument("--n-eval", type=_positive_int, default=None, help="size of the seeded test subset")
    run.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                     help="override a method parameter, e.g. --set afd.alpha=0.1 (repeatable)")
    run.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    run.add_argument("--out", default=None,
                     help="folder for checkpoints and per-sample results (default: next to the store, per run)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out: skip finished cells, continue the others where they stopped")
    run.add_argument("--eval-batch-size", type=_positive_int, default=None, help="evaluation batch size (default: 256)")
    run.add_argument("--launcher", default="local", choices=("local", "slurm", "submitit-local"),
                     help="local: every cell in this process (default); slurm: one Slurm job per (method, seed) cell "
                          "through submitit; submitit-local: the same jobs as local processes")
    run.add_argument("--slurm-partition", default=None, help="Slurm partition of the jobs")
    run.add_argument("--slurm-gpus-per-job", type=_non_negative_int, default=1, help="GPUs per job (default: 1)")
    run.add_argument("--slurm-time", type=_positive_int, default=240, help="time limit per job in minutes (default: 240)")
    run.add_argument("--slurm-array-parallelism", type=_positive_int, default=32,
                     help="at most this many jobs of the grid at once (default: 32)")
    run.add_argument("--channels-last", default=None, choices=("auto", "on", "off"),
                     help="fine-tune in channels_last memory format (default auto: on CUDA and on CPUs with oneDNN)")
    run.add_argument("--compile", action="store_true",
                     help="fine-tune with the networks compiled by torch.compile (off by default: the compilation "
                          "costs tens of seconds and did not pay on CPU; see benchmarks/RESULTS.md)")
    run.add_argument("--sync-bn", action="store_true",
                     help="under torchrun: BatchNorm statistics of the global batch (default: per process, like "
                          "the AFD official code's DataParallel)")
    _add_precision_arguments(run, "fine-tuning, clean, PGD and CW")
    _add_train_config_options(run)
    run.add_argument("--format", default="md", choices=FORMATS.names(), help="format of the printed leaderboard")
    run.add_argument("--rank-by", default=None, help="metric of the rank column (default: worst, else aa, else pgd)")
    run.add_argument("--columns", default=None, help=COLUMNS_HELP)
    run.set_defaults(handler=cmd_run)

    collect = commands.add_parser("collect", help="ingest the result records of a grid's jobs into the store")
    collect.add_argument("--out", required=True, help="the --out folder of a bench run submitted with --launcher")
    collect.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    collect.add_argument("--format", default="md", choices=FORMATS.names(), help="format of the leaderboard")
    collect.set_defaults(handler=cmd_collect)

    board = commands.add_parser("leaderboard", help="the leaderboard of a results store")
    board.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    board.add_argument("--format", default="md", choices=FORMATS.names(), help="output format")
    board.add_argument("--output", default=None, help="also write the table to this file (atomically)")
    board.add_argument("--with-published", action="store_true",
                       help="add the published numbers where method, dataset, arch and eps match")
    board.add_argument("--published", default=None, help="published numbers CSV (default: leaderboard/published.csv)")
    board.add_argument("--rank-by", default=None, help="metric of the rank column (default: worst, else aa, else pgd)")
    board.add_argument("--select", default="last", help=SELECT_HELP)
    board.add_argument("--columns", default=None, help=COLUMNS_HELP)
    board.set_defaults(handler=cmd_leaderboard)

    dump = commands.add_parser("dump", help="write every finished run of a store as one JSON file (metrics, "
                                            "per-sample outcomes, curves, costs, configuration)")
    dump.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    dump.add_argument("--output", required=True, help="folder for the run files")
    dump.set_defaults(handler=cmd_dump)
    load = commands.add_parser("load", help="store the run files written by bench dump (idempotent)")
    load.add_argument("folder", help="a folder of run files")
    load.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    load.set_defaults(handler=cmd_load)

    compare = commands.add_parser("compare", help="paired difference of two methods on the same points: "
                                                   "delta, 95 %% interval, exact McNemar p")
    compare.add_argument("first", help="a method (or natural)")
    compare.add_argument("second", help="the method to compare it with")
    compare.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    compare.add_argument("--metric", default="aa", help="the metric to compare (default: aa)")
    compare.add_argument("--dataset", default=None, help="the dataset, when the store holds several")
    compare.add_argument("--arch", default=None, help="the architecture, when the store holds several")
    compare.add_argument("--eps", default=None, help="the budget, when the store holds several (e.g. 8/255)")
    compare.add_argument("--select", default="last", help=SELECT_HELP)
    compare.add_argument("--format", default="md", choices=FORMATS.names(), help="output format")
    compare.set_defaults(handler=cmd_compare)

    check = commands.add_parser("check", help="fail (exit 1) when robust accuracy regressed against a baseline CSV")
    check.add_argument("--baseline", required=True, help="committed leaderboard CSV, e.g. leaderboard/ci_baseline.csv")
    source = check.add_mutually_exclusive_group()
    source.add_argument("--db", default=None, help=f"results store to compare (default: {DEFAULT_DB})")
    source.add_argument("--current", default=None, help="a leaderboard CSV to compare instead of a store")
    check.add_argument("--tolerance", type=_non_negative_float, default=2.0,
                       help="allowed drop in points; the rule is max(this, 2 × baseline seed std) (default: 2)")
    check.add_argument("--metrics", default=None, help="comma-separated metrics to check (default: all but avg)")
    check.set_defaults(handler=cmd_check)

    analyze = commands.add_parser("analyze", help="plots: the feature gap and training curves per epoch, robust "
                                                   "accuracy against eps, the clean-robust trade-off")
    analyses = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", parser_class=_ArgumentParser)
    analyses.required = True
    gap = analyses.add_parser("feature-gap", help="CSV + PNG of the natural/adversarial feature gap per epoch")
    gap.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    gap.add_argument("--methods", default=None, help="comma-separated methods (default: every method in the store)")
    gap.add_argument("--output", default="runs/analysis", help="output folder (default: runs/analysis)")
    gap.set_defaults(handler=cmd_analyze_feature_gap)
    curve = analyses.add_parser("eps-curve", help="CSV + PNG of robust accuracy against eps (PGD-20, AutoAttack)")
    source = curve.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", default=None, help="one model: a checkpoint path, auto or robustbench:NAME")
    source.add_argument("--db", default=None, help="every method's newest models in a results store")
    curve.add_argument("--methods", default=None, help="with --db: comma-separated methods (default: all)")
    curve.add_argument("--dataset", default="digits", help="with --checkpoint: the dataset (default: digits)")
    curve.add_argument("--image-size", type=_positive_int, default=None, help="with --checkpoint: resize to N×N")
    curve.add_argument("--mean", default=None, metavar="M1,M2,M3", help="with --checkpoint: " + MEAN_HELP)
    curve.add_argument("--std", default=None, metavar="S1,S2,S3", help="with --checkpoint: " + STD_HELP)
    curve.add_argument("--arch", default="smallcnn", help="with --checkpoint: the architecture (default: smallcnn)")
    curve.add_argument("--arch-kwargs", default=None, metavar="K=V,...", help=ARCH_KWARGS_HELP)
    curve.add_argument("--data-dir", default=None, help="root folder of downloadable datasets")
    curve.add_argument("--eps-values", default=None,
                       help="comma-separated budgets, e.g. 0,2/255,4/255,8/255 (default: 0 to 2× the dataset's eps)")
    curve.add_argument("--aa-eps", default="", help="budgets at which AutoAttack also runs (default: none)")
    curve.add_argument("--n-eval", type=_positive_int, default=None,
                       help="seeded test subset (default: 500 or the whole test set if smaller)")
    curve.add_argument("--output", default="runs/analysis", help="output folder (default: runs/analysis)")
    curve.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    curve.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    curve.set_defaults(handler=cmd_analyze_eps_curve)

    tradeoff = analyses.add_parser("tradeoff", help="CSV + PNG of clean against robust accuracy with 95 %% intervals")
    tradeoff.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    tradeoff.add_argument("--metric", default=None, help="the robust metric (default: worst, else aa, else pgd)")
    tradeoff.add_argument("--output", default="runs/analysis", help="output folder (default: runs/analysis)")
    tradeoff.set_defaults(handler=cmd_analyze_tradeoff)

    training = analyses.add_parser("training", help="CSV + PNG of every loss term and the validation accuracy per "
                                                    "fine-tuning epoch")
    training.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    training.add_argument("--output", default="runs/analysis", help="output folder (default: runs/analysis)")
    training.set_defaults(handler=cmd_analyze_training)

    report = commands.add_parser("report", help="one self-contained HTML page: tables, plots, configs, flags")
    report.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    report.add_argument("--output", default="report.html", help="HTML file to write (default: report.html)")
    report.add_argument("--plots", action="append", default=[], metavar="DIR_OR_PNG",
                        help="also embed these PNGs (or every PNG in a folder), e.g. an eps-curve output; repeatable")
    report.add_argument("--title", default="robustbench-aft report", help="page title")
    report.set_defaults(handler=cmd_report)
    return parser


def _existing_store(db: str, hint: str = "run `bench run --methods ...` first") -> str:
    reason = not_a_file_reason(db)
    if reason:
        raise ConfigError(f"--db {db} {reason}" + (f"; {hint}" if reason == "does not exist" else ""))
    return db


def _output_folder(text: str) -> Path:
    from .files import check_writable

    check_writable(text, "--output", folder=True)
    return Path(text)


def cmd_analyze_feature_gap(args: argparse.Namespace) -> int:
    from .analysis import analyze_feature_gap
    from .leaderboard import format_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    summary, plots = analyze_feature_gap(_existing_store(args.db), _output_folder(args.output), methods)
    print(format_table(summary.round(4).to_dict("records"), "md"))
    print(f"\nwrote {Path(args.output) / 'feature_gap.csv'} and " + ", ".join(str(p) for p in plots))
    return 0


def cmd_analyze_tradeoff(args: argparse.Namespace) -> int:
    from .analysis import analyze_tradeoff
    from .leaderboard import format_table

    frame, plots = analyze_tradeoff(_existing_store(args.db), _output_folder(args.output), args.metric)
    print(format_table(frame.round(2).to_dict("records"), "md"))
    print(f"\nwrote {Path(args.output) / 'tradeoff.csv'} and " + ", ".join(str(p) for p in plots))
    return 0


def cmd_analyze_training(args: argparse.Namespace) -> int:
    from .analysis import analyze_training
    from .leaderboard import format_table

    frame, plots = analyze_training(_existing_store(args.db), _output_folder(args.output))
    validation = frame[frame["quantity"].str.startswith("validation/")]
    if not validation.empty:
        table = validation.pivot_table(index=["method", "seed", "epoch"], columns="quantity", values="value")
        print(format_table(table.round(2).reset_index().to_dict("records"), "md"))
    print(f"\nwrote {Path(args.output) / 'training_curves.csv'} and " + ", ".join(str(p) for p in plots))
    return 0


def cmd_analyze_eps_curve(args: argparse.Namespace) -> int:
    from .analysis import eps_curve, models_from_store, parse_eps_values, plot_eps_curve
    from .data import load_dataset
    from .leaderboard import format_table
    from .pretrained import load_checkpoint, resolve
    from .devices import resolve_device
    from .files import atomic_write_text

    device = resolve_device(args.device)
    output = _output_folder(args.output)
    aa_eps = parse_eps_values(args.aa_eps) if args.aa_eps.strip() else []
    if args.db is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
        sources, dataset, arch = models_from_store(_existing_store(args.db), methods)
        data = load_dataset(dataset, data_dir=args.data_dir)
        models = {method: [load_checkpoint(path, data, arch)[0].to(device) for path, _, _ in entries]
                  for method, entries in sources.items()}
    else:
        arch = _canonical_arch(args.arch, args.arch_kwargs)
        data = load_dataset(args.dataset, data_dir=args.data_dir)
        model, info = resolve(args.checkpoint, data, arch, seed=0, device=device, progress=not args.quiet)
        models = {Path(info["source"]).stem: [model]}
    eps_values = (parse_eps_values(args.eps_values) if args.eps_values
                  else [data.default_eps * f for f in (0, 0.25, 0.5, 1, 1.5, 2)])
    eps_values = sorted(set(eps_values) | set(aa_eps))
    n_eval = args.n_eval if args.n_eval is not None else min(500, len(data.test))
    frame = eps_curve(models, data, eps_values, aa_eps, n_eval, device, progress=not args.quiet)
    atomic_write_text(frame.to_csv(index=False, float_format="%.6g"), output / "eps_curve.csv")
    title = f"Robust accuracy against eps: {data.name.rsplit('/', 1)[-1]}, {arch}, n={n_eval}"
    plot = plot_eps_curve(frame, output / "eps_curve.png", title)
    table = frame.groupby(["method", "attack", "eps"], sort=False)["accuracy"].mean().reset_index()
    table["eps×255"] = (table["eps"] * 255).round(3)
    print(format_table(table[["method", "attack", "eps×255", "accuracy"]].round(2).to_dict("records"), "md"))
    print(f"\nwrote {output / 'eps_curve.csv'} and {plot}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis import render_report
    from .files import check_writable

    output = Path(args.output)
    check_writable(output, "--output", folder=False)
    plots: List[Path] = []
    for item in args.plots:
        path = Path(item)
        if path.is_dir():
            plots.extend(sorted(path.glob("*.png")))
        elif path.is_file() and path.suffix.lower() == ".png":
            plots.append(path)
        else:
            raise ConfigError(f"--plots {item} is neither a folder nor a PNG file")
    render_report(_existing_store(args.db), output, plots, title=args.title)
    print(f"wrote {output}")
    return 0


def _setup_logging(quiet: bool) -> None:
    # Under torchrun only rank 0 reports progress; the other ranks keep warnings and errors.
    rank = int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    logging.basicConfig(level=logging.WARNING if quiet or rank > 0 else logging.INFO,
                        format="bench: %(message)s" if rank == 0 else f"bench[rank {rank}]: %(message)s",
                        stream=sys.stderr)


def cmd_list(args: argparse.Namespace) -> int:
    from .leaderboard import format_table
    from .registry import ATTACKS, DATASETS, METHODS, MODELS

    registries = {"methods": METHODS, "datasets": DATASETS, "archs": MODELS, "attacks": ATTACKS}
    kinds = [args.kind] if args.kind else list(registries)
    for kind in kinds:
        registry = registries[kind]
        rows = [{"name": e.name, "aliases": ", ".join(e.aliases), "description": e.description}
                for e in registry.entries()]
        if kind == "methods":
            from .method import param_docs

            for row, entry in zip(rows, registry.entries()):
                row["version"] = entry.obj.version
                row["source"] = entry.obj.reference
                row["defaults"] = ", ".join(f"{p['name']}={p['default']:.4g}" if isinstance(p["default"], float)
                                            else f"{p['name']}={p['default']}" for p in param_docs(entry.obj.Params))
        print(f"## {kind}")
        print(format_table(rows, "md") if rows else f"(no {kind} registered yet)")
        print()
        if kind == "methods" and rows:
            from .method import param_docs

            parameters = [{"method": entry.name, "parameter": p["name"],
                           "default": f"{p['default']:.4g}" if isinstance(p["default"], float) else str(p["default"]),
                           "valid values": p["valid"], "meaning": p["help"], "source": p["source"]}
                          for entry in registry.entries() for p in param_docs(entry.obj.Params)]
            from tabulate import tabulate

            print("## method parameters (--set METHOD.PARAMETER=VALUE)")
            # Defaults as written (an int stays an int), not reformatted as floats.
            print(tabulate(parameters, headers="keys", tablefmt="github", disable_numparse=True))
            print()
    return 0


def _parse_seeds(text: str) -> List[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or any(seed < 0 for seed in seeds):
        raise ConfigError(f"--seeds expects comma-separated integers >= 0 such as 0,1,2, got {text!r}")
    return seeds


def _resume_command(argv: List[str], out: str) -> str:
    """The command that continues an interrupted ``bench run``: the same one with --out and --resume."""
    import shlex

    arguments = list(argv)
    if "--out" not in arguments and not any(a.startswith("--out=") for a in arguments):
        arguments += ["--out", out]
    if "--resume" not in arguments:
        arguments.append("--resume")
    launcher = "bench "
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:  # resume with the same number of processes (last.pt requires it)
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        launcher = f"torchrun --nnodes={world_size // per_node} --nproc_per_node={per_node} --no-python bench "
    return launcher + " ".join(shlex.quote(a) for a in arguments)


def _train_config_flags():
    """The TrainConfig fields that are `bench run` options by their ``flag`` metadata."""
    import dataclasses

    from .config import TrainConfig

    return [f for f in dataclasses.fields(TrainConfig) if "flag" in f.metadata]


def _on_off(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return lowered == "on"


def _add_train_config_options(parser: argparse.ArgumentParser) -> None:
    """``--momentum``, ``--weight-decay``, ``--ema``, ... from the TrainConfig fields marked ``flag``:
    the option's name, type, range and help come from the field."""
    for spec in _train_config_flags():
        if "bool" in str(spec.type):
            kind = _on_off
        elif "float" in str(spec.type):
            kind = _non_negative_float if spec.metadata.get("valid") == "non-negative" else float
        else:
            kind = _non_negative_int if spec.metadata.get("valid") == "non-negative" else int
        parser.add_argument("--" + spec.name.replace("_", "-"), type=kind, default=None, help=spec.metadata["flag"])


def cmd_run(args: argparse.Namespace) -> int:
    from .config import build_run_config, parse_set_options
    from .evaluate import parse_attacks, parse_eps
    from .leaderboard import parse_columns, render_leaderboard
    from .pipeline import leaderboard, run

    if args.methods is None:
        raise ConfigError("the following arguments are required: --methods (or methods: in the --config file)")
    sections = getattr(args, "config_sections", {"train": {}, "eval": {}})
    train_flags = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                   "train_subset": args.train_subset, "val_size": args.val_size, "select": args.select,
                   "precision": args.precision,
                   "sync_bn": True if args.sync_bn else None, "channels_last": args.channels_last,
                   "compile": True if args.compile else None,
                   **{spec.name: getattr(args, spec.name) for spec in _train_config_flags()}}
    eval_flags = {"attacks": parse_attacks(args.attacks) if args.attacks else None,
                  "eps": parse_eps(args.eps) if args.eps is not None else None, "n_eval": args.n_eval,
                  "batch_size": args.eval_batch_size, "precision": args.precision,
                  "aa_precision": args.aa_precision}
    config = build_run_config(
        [m.strip() for m in args.methods.split(",") if m.strip()], dataset=args.dataset,
        arch=_canonical_arch(args.arch, args.arch_kwargs) if args.arch else None, preset=args.preset,
        train_overrides={**sections["train"], **{k: v for k, v in train_flags.items() if v is not None}},
        eval_overrides={**sections["eval"], **{k: v for k, v in eval_flags.items() if v is not None}},
        method_params=parse_set_options(args.set), natural_overrides={"epochs": args.natural_epochs},
        pretrained=args.pretrained, seeds=_parse_seeds(args.seeds),
        db=args.db, out=args.out, device=args.device, data_dir=args.data_dir, download=args.download,
        pretrained_seed=getattr(args, "pretrained_seed", None),
    )
    if args.print_config:
        from .config_file import dump_run_config

        print(dump_run_config(config, "bench run --config: the resolved configuration"), end="")
        return 0
    if args.out is not None and Path(args.out).is_file():
        raise ConfigError(f"--out {args.out} is a file; give a folder")
    from .errors import Interrupted
    from .signals import StopSignal

    argv = getattr(args, "argv", None) or sys.argv[1:]
    if args.launcher != "local":
        return _run_grid(args, config, argv)
    with StopSignal() as stop:
        try:
            summary = run(config, progress=not args.quiet, resume=args.resume, stop=stop, command=["bench", *argv])
        except Interrupted as exc:
            if int(os.environ.get("RANK", "0")) > 0:
                return exc.exit_code  # rank 0 tells the user how to resume
            if exc.state_dir is None:
                print(f"bench: {exc}; nothing was saved yet, run the same command again", file=sys.stderr)
            else:
                print(f"bench: {exc}; the state is saved in {exc.state_dir}\n"
                      f"bench: resume with: {_resume_command(argv, exc.state_dir)}", file=sys.stderr)
            return exc.exit_code
    if summary.rank != 0:
        return 0
    print(render_leaderboard(leaderboard(config.db, summary.group_id, rank_by=args.rank_by,
                                         selection=config.train.select), args.format, parse_columns(args.columns)))
    if _human(args.format):
        print(f"\n{len(summary.run_ids)} models evaluated in {summary.seconds:.1f} s; stored in {summary.db} "
              f"(run {summary.group_id}); checkpoints in {summary.out}")
    for cell in summary.diverged:
        print(f"bench: diverged, not in the leaderboard (stored as failed): {cell}", file=sys.stderr)
    return 0


def _run_grid(args: argparse.Namespace, config, argv: List[str]) -> int:
    from .launch import SlurmOptions, submit_grid
    from .leaderboard import render_leaderboard
    from .pipeline import leaderboard

    options = SlurmOptions(partition=args.slurm_partition, gpus_per_job=args.slurm_gpus_per_job,
                           time_minutes=args.slurm_time, array_parallelism=args.slurm_array_parallelism)
    try:
        summary = submit_grid(config, args.launcher, options, resume=args.resume, command=["bench", *argv])
    except KeyboardInterrupt:
        print(f"bench: stopped waiting; the jobs keep running. Collect them later with: bench collect --out "
              f"{config.out} --db {config.db}", file=sys.stderr)
        return 130
    return _report_collect(summary.collected, config.db, config.out, argv, args.format,
                           lambda: print(render_leaderboard(leaderboard(config.db), args.format)))


def _report_collect(report, db: str, out: str, argv: Optional[List[str]], fmt: str, show_leaderboard) -> int:
    print(report.table(), file=sys.stderr)
    if not report.complete:
        unfinished = [c.cell for c in report.cells if c.status != "ingested"]
        hint = (f"resubmit them with: {_resume_command(argv, out)}" if argv
                else "resubmit them with the same bench run command plus --resume")
        print(f"bench: {len(unfinished)} cell(s) not finished ({', '.join(unfinished)}); {hint}", file=sys.stderr)
        return 1
    show_leaderboard()
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from .launch import collect
    from .leaderboard import render_leaderboard
    from .pipeline import leaderboard

    if not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is not a folder; give the --out folder of a bench run")
    report = collect(Path(args.out), args.db)
    return _report_collect(report, args.db, args.out, None, args.format,
                           lambda: print(render_leaderboard(leaderboard(args.db), args.format)))


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from .leaderboard import parse_columns, render_leaderboard
    from .pipeline import leaderboard
    from .files import atomic_write_text

    columns = parse_columns(args.columns)
    frame = leaderboard(_existing_store(args.db), rank_by=args.rank_by, selection=_selection(args.select))
    if args.with_published and not frame.empty:
        from .leaderboard import load_published, with_published

        frame = with_published(frame, load_published(args.published))
    table = render_leaderboard(frame, args.format, columns)
    print(table)
    if args.output:
        atomic_write_text(table + "\n", args.output)
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    from .archive import dump_runs

    written = dump_runs(_existing_store(args.db), Path(args.output))
    print(f"wrote {len(written)} run file(s) to {args.output}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from .archive import load_runs

    run_ids = load_runs(Path(args.folder), args.db)
    print(f"stored {len(run_ids)} run(s) from {args.folder} in {args.db}")
    return 0


def _selection(value: str) -> str:
    from .validation import SELECTIONS

    if value not in SELECTIONS:
        raise ConfigError(f"--select must be one of {', '.join(SELECTIONS)}, got {value!r}")
    return value


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_methods
    from .evaluate import parse_eps
    from .leaderboard import format_table

    comparison = compare_methods(_existing_store(args.db), args.first, args.second, metric=args.metric,
                                 dataset=args.dataset, arch=args.arch,
                                 eps=parse_eps(args.eps) if args.eps is not None else None,
                                 selection=_selection(args.select))
    setting, result = comparison.setting, comparison.result
    header = (f"{comparison.first} − {comparison.second} on {setting['dataset']}/{setting['arch']}, "
              f"{setting['norm']} eps={setting['eps']:.4g}, {comparison.metric}: {result.seeds} seed(s) × "
              f"{result.points} points")
    if args.format == "json":
        print(format_table(comparison.table(), "json", extra={"comparison": header, "test": result.test,
                                                               "per_seed_delta": result.per_seed_delta}))
        return 0
    if _human(args.format):
        # p-values as written (3.5e-09), not rounded to 0.00 by the table's number format.
        print(format_table(comparison.table(), args.format, as_written=True))
    else:
        print(format_table(comparison.table(), args.format))
    if _human(args.format):
        per_seed = ", ".join(f"{d:+.2f}" for d in result.per_seed_delta)
        print(f"\n{header}\nΔ = {result.delta:+.2f} points, 95 % interval [{result.ci_low:+.2f}, "
              f"{result.ci_high:+.2f}], p = {result.p_value:.4g} ({result.test}); per-seed Δ: {per_seed}; "
              f"{'significant' if comparison.significant else 'not significant'} at α = 0.05")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .check import check_regression, read_leaderboard_csv, render_check
    from .pipeline import leaderboard

    baseline = read_leaderboard_csv(args.baseline, "--baseline")
    if args.current is not None:
        current = read_leaderboard_csv(args.current, "--current")
    else:
        current = leaderboard(_existing_store(args.db or DEFAULT_DB,
                                              "run `bench run` first or pass --current FILE"))
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    result = check_regression(baseline, current, tolerance=args.tolerance, metrics=metrics)
    print(render_check(result))
    return result.exit_code


def _canonical_arch(name: str, kwargs_text: Optional[str] = None) -> str:
    from .models import canonical_arch
    from .models.external import canonical_external, is_external, parse_kwargs

    if kwargs_text and not is_external(name):
        raise ConfigError(f"--arch-kwargs is for external architectures (timm:, torchvision:, py:), not {name}")
    return canonical_external(name, parse_kwargs(kwargs_text)) if is_external(name) else canonical_arch(name)


def cmd_pretrain(args: argparse.Namespace) -> int:
    import torch  # noqa: F401

    from .data import load_dataset
    from .pretrained import cache_path, default_recipe, pretrain, recipe_with, save_checkpoint
    from .devices import resolve_device
    from .reproducibility import provenance
    from dataclasses import asdict

    arch = _canonical_arch(args.arch, args.arch_kwargs)
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, data_dir=args.data_dir, download=args.download)
    recipe = recipe_with(default_recipe(data), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    path = cache_path(data, arch, args.seed, recipe)
    if path.is_file() and not args.force:
        print(f"cached: {path} (use --force to retrain)")
        return 0
    model, info = pretrain(data, arch, recipe, args.seed, device, progress=not args.quiet)
    save_checkpoint(model, path, arch, data, recipe=asdict(recipe), seed=args.seed,
                    provenance=provenance(device), **info)
    print(f"natural {arch} on {data.name}: test accuracy {info['test_accuracy']:.2f}% "
          f"({info['seconds']:.1f} s, {info['images_per_second']:.0f} images/s)")
    print(f"saved: {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .evaluate import EvalConfig, evaluate, parse_attacks, parse_eps
    from .leaderboard import format_table
    from .pretrained import resolve
    from .devices import resolve_device
    from .files import atomic_write_text

    arch = _canonical_arch(args.arch, args.arch_kwargs)
    attacks = parse_attacks(args.attacks)
    eps = parse_eps(args.eps, args.norm) if args.eps is not None else None
    output = Path(args.output) if args.output else None
    if output is not None and output.is_dir():
        raise ConfigError(f"--output {output} is a directory; give a file name")
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, data_dir=args.data_dir, download=args.download)
    model, info = resolve(args.checkpoint, data, arch, seed=args.seed, device=device, progress=not args.quiet)
    config = EvalConfig(attacks=attacks, eps=eps, norm=args.norm, n_eval=args.n_eval, seed=args.seed,
                        batch_size=args.batch_size, sanity=not args.no_sanity, precision=args.precision or "auto",
                        aa_precision=args.aa_precision or "fp32")
    start = time.perf_counter()
    result = evaluate(model, data, config, device, progress=not args.quiet)
    seconds = time.perf_counter() - start
    table = format_table(result.rows(), args.format,
                         extra={"source": info["source"], "dataset": data.name, "arch": arch, **result.to_dict()})
    if _human(args.format):
        table = (f"{arch} on {data.name} ({info['source']}), {result.norm} eps={result.eps:.4g}, "
                 f"n={result.n}, {seconds:.1f} s\n\n{table}")
        if result.flags:
            table += "\n\nsanity flags:\n" + "\n".join(f"- {flag}" for flag in result.flags)
        else:
            table += "\n\nsanity flags: none"
    print(table)
    if output is not None:
        atomic_write_text(table + "\n", output)
    return 0


def _with_config_file(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      argv: Optional[List[str]]) -> argparse.Namespace:
    """Parse again with the --config file's values as the defaults of `bench run`'s options."""
    from .config_file import file_defaults, load_config_file

    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run_parser = commands.choices["run"]
    defaults, sections = file_defaults(run_parser, load_config_file(args.config), args.config)
    run_parser.set_defaults(**defaults)
    reparsed = parser.parse_args(argv)
    reparsed.config_sections = sections
    return reparsed


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "config", None):
            args = _with_config_file(parser, args, argv)
        args.argv = list(argv) if argv is not None else sys.argv[1:]
        input_options = [getattr(args, name, None) for name in ("image_size", "mean", "std")]
        if any(v is not None for v in input_options) and getattr(args, "dataset", None):
            from .data import with_input_options

            args.dataset = with_input_options(args.dataset, *input_options)
        _setup_logging(getattr(args, "quiet", False))
        return args.handler(args)
    except UserError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`bench leaderboard | head`): what it wanted is printed; stay quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
