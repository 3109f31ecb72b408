"""`bench leaderboard`: the leaderboard of a results store."""
from __future__ import annotations

import argparse
import sys

from ..config import DEFAULT_DB
from ..registry import FORMATS
from ._common import COLUMNS_HELP, SELECT_HELP, existing_store, human, selection


def add_to(commands: argparse._SubParsersAction) -> None:
    board = commands.add_parser("leaderboard", help="the leaderboard of a results store")
    board.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    board.add_argument("--format", default="md", choices=FORMATS.names(), help="output format")
    board.add_argument("--output", default=None, help="also write the table to this file (atomically)")
    board.add_argument("--with-published", action="store_true",
                       help="add the published numbers where method, dataset, arch, eps and norm match")
    board.add_argument("--published", default=None,
                       help="published numbers CSV (default: the packaged resources/published.csv)")
    board.add_argument("--rank-by", default=None, help="metric of the rank column (default: worst, else aa, else pgd)")
    board.add_argument("--select", default="last", help=SELECT_HELP)
    board.add_argument("--columns", default=None, help=COLUMNS_HELP)
    board.add_argument("--mix-budgets", action="store_true",
                       help="allow a column to hold numbers measured with different attack budgets (marked †)")
    board.add_argument("--all-protocols", action="store_true",
                       help="show the runs of every protocol, each as its own row with a setting label naming what "
                            "differs (default: the latest protocol of each method, and a line naming what was left "
                            "out)")
    board.set_defaults(handler=cmd_leaderboard)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from ..files import atomic_write_text
    from ..tables import leaderboard, left_out_line, parse_columns, render_leaderboard

    columns = parse_columns(args.columns)
    frame = leaderboard(existing_store(args.db), rank_by=args.rank_by, selection=selection(args.select),
                        mix_budgets=args.mix_budgets, all_protocols=args.all_protocols)
    left_out = left_out_line(frame) if not frame.empty else None
    if args.with_published and not frame.empty:
        from ..tables import load_published, with_published

        frame = with_published(frame, load_published(args.published))
    table = render_leaderboard(frame, args.format, columns)
    print(table)
    if left_out:
        print(("\n" + left_out) if human(args.format) else f"bench: {left_out}", file=None if human(args.format)
              else sys.stderr)
    if args.output:
        atomic_write_text(table + "\n", args.output)
    return 0
