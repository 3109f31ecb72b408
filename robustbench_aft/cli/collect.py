"""`bench collect`: ingest the result records of a Slurm grid's jobs into the store."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_DB
from ..errors import ConfigError
from ..registry import FORMATS
from ._common import report_collect


def add_to(commands: argparse._SubParsersAction) -> None:
    collect = commands.add_parser("collect", help="ingest the result records of a grid's jobs into the store")
    collect.add_argument("--out", required=True, help="the --out folder of a bench run submitted with --launcher")
    collect.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    collect.add_argument("--format", default="md", choices=FORMATS.names(), help="format of the leaderboard")
    collect.set_defaults(handler=cmd_collect)


def cmd_collect(args: argparse.Namespace) -> int:
    from ..launch import collect
    from ..tables import leaderboard, render_leaderboard

    if not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is not a folder; give the --out folder of a bench run")
    report = collect(Path(args.out), args.db)
    return report_collect(report, args.db, args.out, None, args.format,
                           lambda: print(render_leaderboard(leaderboard(args.db), args.format)))
