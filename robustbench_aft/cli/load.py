"""`bench load`: store the run files written by `bench dump` (idempotent)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_DB


def add_to(commands: argparse._SubParsersAction) -> None:
    load = commands.add_parser("load", help="store the run files written by bench dump (idempotent)")
    load.add_argument("folder", help="a folder of run files")
    load.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    load.set_defaults(handler=cmd_load)


def cmd_load(args: argparse.Namespace) -> int:
    from ..archive import load_runs

    run_ids = load_runs(Path(args.folder), args.db)
    print(f"stored {len(run_ids)} run(s) from {args.folder} in {args.db}")
    return 0
