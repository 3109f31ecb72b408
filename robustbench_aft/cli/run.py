"""`bench run`: the whole protocol (natural model, every method and seed, evaluation, store, leaderboard)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List

from ..config import LAUNCHERS
from ..errors import ConfigError
from ..parsing import non_negative_float, non_negative_int, on_off, positive_float, positive_int
from ..registry import FORMATS
from ._common import COLUMNS_HELP, human, report_collect, resume_command

# Options of this command that are not part of the run's configuration: how it runs and prints.
# A --config file may set them too (the command line wins).
COMMAND_OPTIONS = ("launcher", "slurm_partition", "slurm_gpus_per_job", "slurm_time", "slurm_array_parallelism",
                   "format", "rank_by", "columns", "resume", "quiet")


def add_to(commands: argparse._SubParsersAction) -> None:
    from ..config import OPTIONS

    run = commands.add_parser("run", help="fine-tune with each method and seed, evaluate, store, print the leaderboard")
    run.add_argument("--config", default=None, metavar="FILE.yaml",
                     help="read options from a YAML file (option names as keys, plus set/train/eval/threat "
                          "sections); options given on the command line win")
    run.add_argument("--print-config", action="store_true",
                     help="print the resolved configuration as YAML (loadable with --config) and exit")
    # Every configuration option defaults to None ("not given"), so that RunConfig.from_cli alone
    # decides what a missing value means (the preset's, the file's, the dataset's).
    for option in OPTIONS.values():
        flag = "--" + option.name.replace("_", "-")
        if option.switch:
            run.add_argument(flag, action="store_true", default=None, help=option.help)
        elif option.name == "set":
            run.add_argument(flag, action="append", default=None, metavar=option.metavar, help=option.help)
        else:
            number_like = option.parse in (positive_int, non_negative_int, positive_float, non_negative_float, on_off)
            run.add_argument(flag, default=None, type=option.parse if number_like else None, choices=option.choices,
                             metavar=option.metavar, help=option.help)
    run.add_argument("--quiet", action="store_true", default=None, help="no progress bars or log lines")
    run.add_argument("--resume", action="store_true", default=None,
                     help="continue the run in --out: skip finished cells, continue the others where they stopped")
    _add_launch_options(run)
    run.add_argument("--format", default=None, choices=FORMATS.names(), help="format of the printed leaderboard")
    run.add_argument("--rank-by", default=None, help="metric of the rank column (default: worst, else aa, else pgd)")
    run.add_argument("--columns", default=None, help=COLUMNS_HELP)
    run.set_defaults(handler=cmd_run, command_parser=run)


def _add_launch_options(run: argparse.ArgumentParser) -> None:
    """Where the cells run: this process, or Slurm jobs."""
    run.add_argument("--launcher", default=None, choices=LAUNCHERS,
                     help="local: every cell in this process (default); slurm: one Slurm job per (method, seed) cell "
                          "through submitit; submitit-local: the same jobs as local processes")
    run.add_argument("--slurm-partition", default=None, help="Slurm partition of the jobs")
    run.add_argument("--slurm-gpus-per-job", type=non_negative_int, default=None, help="GPUs per job (default: 1)")
    run.add_argument("--slurm-time", type=positive_int, default=None,
                     help="time limit per job in minutes (default: 240)")
    run.add_argument("--slurm-array-parallelism", type=positive_int, default=None,
                     help="at most this many jobs of the grid at once (default: 32)")


COMMAND_DEFAULTS = {"launcher": "local", "slurm_gpus_per_job": 1, "slurm_time": 240, "slurm_array_parallelism": 32,
                    "format": "md", "resume": False, "quiet": False}


def _command_options(args: argparse.Namespace, content: dict, path: str) -> dict:
    """Move the file's command options (launcher, format, …) out of ``content`` into ``args`` where
    the command line did not give them, and fill the rest with their defaults."""
    from ..config import Option, _parse_option

    parser_actions = {a.dest: a for a in args.command_parser._actions}
    for key in list(content):
        name = str(key).replace("-", "_")
        if name not in COMMAND_OPTIONS:
            continue
        value = content.pop(key)
        if getattr(args, name) is None and value is not None:
            action = parser_actions[name]
            option = Option(name, "", action.type, tuple(action.choices) if action.choices else None,
                            action.nargs == 0)
            setattr(args, name, _parse_option(option, value, f"--config {path}: "))
    for name, default in COMMAND_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    return content


def _run_config(args: argparse.Namespace):
    """The RunConfig of the command line over its --config file."""
    from ..config import RunConfig
    from ..config_file import load_config_file

    content = load_config_file(args.config) if args.config else {}
    content = _command_options(args, dict(content), args.config or "")
    if args.quiet:  # the file may ask for it after logging was set up from the command line
        logging.getLogger().setLevel(logging.WARNING)
    return RunConfig.from_cli(vars(args), content, args.config or "")


def cmd_run(args: argparse.Namespace) -> int:
    from ..pipeline import run
    from ..tables import leaderboard, parse_columns, render_leaderboard

    config = _run_config(args)
    if args.print_config:
        from ..config_file import dump_run_config

        print(dump_run_config(config, "bench run --config: the resolved configuration"), end="")
        return 0
    if config.out is not None and Path(config.out).is_file():
        raise ConfigError(f"--out {config.out} is a file; give a folder")
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
    from ..tables import leaderboard, render_leaderboard

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
