"""`bench dump`: every finished run of a store as one JSON file each."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_DB
from ._common import existing_store


def add_to(commands: argparse._SubParsersAction) -> None:
    dump = commands.add_parser("dump", help="write every finished run of a store as one JSON file (metrics, "
                                            "per-sample outcomes, curves, costs, configuration)")
    dump.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    dump.add_argument("--output", required=True, help="folder for the run files")
    dump.set_defaults(handler=cmd_dump)


def cmd_dump(args: argparse.Namespace) -> int:
    from ..archive import dump_runs

    written = dump_runs(existing_store(args.db), Path(args.output))
    print(f"wrote {len(written)} run file(s) to {args.output}")
    return 0
