"""`bench run`: the whole protocol (natural model, every method and seed, evaluation, store, leaderboard)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List

from ..attacks import NORMS
from ..config import DEFAULT_DB
from ..errors import ConfigError
from ..registry import FORMATS
from ._common import (ARCH_KWARGS_HELP, COLUMNS_HELP, add_data_arguments, add_precision_arguments, canonical_arch,
                      human, non_negative_float, non_negative_int, parse_seeds, positive_float, positive_int,
                      report_collect, resume_command)


def add_to(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="fine-tune with each method and seed, evaluate, store, print the leaderboard")
    add_data_arguments(run)
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
    run.add_argument("--epochs", type=positive_int, default=None, help="fine-tuning epochs (default: the preset's)")
    run.add_argument("--batch-size", type=positive_int, default=None, help="fine-tuning batch size")
    run.add_argument("--lr", type=positive_float, default=None, help="base learning rate")
    run.add_argument("--natural-epochs", type=positive_int, default=None,
                     help="epochs of the natural pre-training when --pretrained auto has to pre-train (default: the "
                          "preset's, else 30 on digits and 100 elsewhere); part of the cache key")
    run.add_argument("--train-subset", type=positive_int, default=None,
                     help="fine-tune on a seeded subset of this many training images")
    run.add_argument("--val-size", type=non_negative_int, default=None,
                     help="training images held out for validation, clean + PGD-10 after every epoch (default: 200 "
                          "on digits, 500 elsewhere; taken outside --train-subset; 0: no validation)")
    run.add_argument("--select", default=None,
                     help="weights to evaluate: last (default, what the papers report) or best-val (the epoch with "
                          "the highest validation PGD accuracy; the last weights are evaluated and stored too)")
    run.add_argument("--attacks", default=None, help="evaluation attacks (default: the preset's)")
    run.add_argument("--eps", default=None, help="budget, e.g. 8/255 or 0.5 in L2 (default: the dataset's for the norm)")
    run.add_argument("--norm", default=None, choices=NORMS,
                     help="threat model of the training attacks and the evaluation (default: Linf)")
    run.add_argument("--transfer-from", default=None, metavar="natural|PATH",
                     help="source model of the transfer attack (default: the run's natural model)")
    run.add_argument("--n-eval", type=positive_int, default=None, help="size of the seeded test subset")
    run.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                     help="override a method parameter, e.g. --set afd.alpha=0.1 (repeatable)")
    run.add_argument("--log", default=None, metavar="TRACKER,...",
                     help="experiment trackers, offline, under the run folder: tensorboard, mlflow, wandb "
                          "(default: none)")
    run.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    run.add_argument("--out", default=None,
                     help="folder for checkpoints and per-sample results (default: next to the store, per run)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out: skip finished cells, continue the others where they stopped")
    run.add_argument("--eval-batch-size", type=positive_int, default=None, help="evaluation batch size (default: 256)")
    _add_launch_and_speed_options(run)
    add_precision_arguments(run, "fine-tuning, clean, PGD and CW")
    _add_train_config_options(run)
    run.add_argument("--format", default="md", choices=FORMATS.names(), help="format of the printed leaderboard")
    run.add_argument("--rank-by", default=None, help="metric of the rank column (default: worst, else aa, else pgd)")
    run.add_argument("--columns", default=None, help=COLUMNS_HELP)
    run.set_defaults(handler=cmd_run)


def _add_launch_and_speed_options(run: argparse.ArgumentParser) -> None:
    """Where the cells run (this process, Slurm jobs) and how fast (memory format, compile, SyncBN)."""
    run.add_argument("--launcher", default="local", choices=("local", "slurm", "submitit-local"),
                     help="local: every cell in this process (default); slurm: one Slurm job per (method, seed) cell "
                          "through submitit; submitit-local: the same jobs as local processes")
    run.add_argument("--slurm-partition", default=None, help="Slurm partition of the jobs")
    run.add_argument("--slurm-gpus-per-job", type=non_negative_int, default=1, help="GPUs per job (default: 1)")
    run.add_argument("--slurm-time", type=positive_int, default=240, help="time limit per job in minutes (default: 240)")
    run.add_argument("--slurm-array-parallelism", type=positive_int, default=32,
                     help="at most this many jobs of the grid at once (default: 32)")
    run.add_argument("--channels-last", default=None, choices=("auto", "on", "off"),
                     help="fine-tune in channels_last memory format (default auto: on CUDA and on CPUs with oneDNN)")
    run.add_argument("--compile", action="store_true",
                     help="fine-tune with the networks compiled by torch.compile (off by default: the compilation "
                          "costs tens of seconds and did not pay on CPU; see benchmarks/RESULTS.md)")
    run.add_argument("--sync-bn", action="store_true",
                     help="under torchrun: BatchNorm statistics of the global batch (default: per process, like "
                          "the AFD official code's DataParallel)")


def _train_config_flags():
    """The TrainConfig fields that are `bench run` options by their ``flag`` metadata."""
    import dataclasses

    from ..config import TrainConfig

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
            kind = non_negative_float if spec.metadata.get("valid") == "non-negative" else float
        else:
            kind = non_negative_int if spec.metadata.get("valid") == "non-negative" else int
        parser.add_argument("--" + spec.name.replace("_", "-"), type=kind, default=None, help=spec.metadata["flag"])




def _run_config(args: argparse.Namespace):
    """The RunConfig of the command line (and --config file): the flags given over the preset."""
    from ..config import build_run_config, parse_set_options
    from ..evaluate import parse_attacks, parse_eps

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
                  "eps": parse_eps(args.eps, args.norm or "Linf") if args.eps is not None else None,
                  "norm": args.norm, "n_eval": args.n_eval, "eps_text": args.eps,
                  "transfer_from": args.transfer_from,
                  "batch_size": args.eval_batch_size, "precision": args.precision,
                  "aa_precision": args.aa_precision}
    config = build_run_config(
        [m.strip() for m in args.methods.split(",") if m.strip()], dataset=args.dataset,
        arch=canonical_arch(args.arch, args.arch_kwargs) if args.arch else None, preset=args.preset,
        train_overrides={**sections["train"], **{k: v for k, v in train_flags.items() if v is not None}},
        eval_overrides={**sections["eval"], **{k: v for k, v in eval_flags.items() if v is not None}},
        method_params=parse_set_options(args.set), natural_overrides={"epochs": args.natural_epochs},
        pretrained=args.pretrained, seeds=parse_seeds(args.seeds),
        db=args.db, out=args.out, device=args.device, data_dir=args.data_dir, download=args.download,
        pretrained_seed=getattr(args, "pretrained_seed", None),
    )
    import dataclasses

    from ..trackers import parse_trackers

    return dataclasses.replace(config, log=parse_trackers(args.log))


def cmd_run(args: argparse.Namespace) -> int:
    from ..leaderboard import parse_columns, render_leaderboard
    from ..pipeline import leaderboard, run

    config = _run_config(args)
    if args.print_config:
        from ..config_file import dump_run_config

        print(dump_run_config(config, "bench run --config: the resolved configuration"), end="")
        return 0
    if args.out is not None and Path(args.out).is_file():
        raise ConfigError(f"--out {args.out} is a file; give a folder")
    from ..errors import Interrupted
    from ..signals import StopSignal

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
                      f"bench: resume with: {resume_command(argv, exc.state_dir)}", file=sys.stderr)
            return exc.exit_code
    if summary.rank != 0:
        return 0
    print(render_leaderboard(leaderboard(config.db, summary.group_id, rank_by=args.rank_by,
                                         selection=config.train.select), args.format, parse_columns(args.columns)))
    if human(args.format):
        print(f"\n{len(summary.run_ids)} models evaluated in {summary.seconds:.1f} s; stored in {summary.db} "
              f"(run {summary.group_id}); checkpoints in {summary.out}")
    for cell in summary.diverged:
        print(f"bench: diverged, not in the leaderboard (stored as failed): {cell}", file=sys.stderr)
    return 0


def _run_grid(args: argparse.Namespace, config, argv: List[str]) -> int:
    from ..launch import SlurmOptions, submit_grid
    from ..leaderboard import render_leaderboard
    from ..pipeline import leaderboard

    options = SlurmOptions(partition=args.slurm_partition, gpus_per_job=args.slurm_gpus_per_job,
                           time_minutes=args.slurm_time, array_parallelism=args.slurm_array_parallelism)
    try:
        summary = submit_grid(config, args.launcher, options, resume=args.resume, command=["bench", *argv])
    except KeyboardInterrupt:
        print(f"bench: stopped waiting; the jobs keep running. Collect them later with: bench collect --out "
              f"{config.out} --db {config.db}", file=sys.stderr)
        return 130
    return report_collect(summary.collected, config.db, config.out, argv, args.format,
                           lambda: print(render_leaderboard(leaderboard(config.db), args.format)))
