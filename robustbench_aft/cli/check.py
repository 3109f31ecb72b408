"""`bench check`: exit 1 when robust accuracy regressed against a baseline CSV."""
from __future__ import annotations

import argparse

from ..config import DEFAULT_DB
from ..parsing import non_negative_float
from ._common import existing_store


def add_to(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser("check", help="fail (exit 1) when robust accuracy regressed against a baseline CSV")
    check.add_argument("--baseline", required=True, help="committed leaderboard CSV, e.g. leaderboard/ci_baseline.csv")
    source = check.add_mutually_exclusive_group()
    source.add_argument("--db", default=None, help=f"results store to compare (default: {DEFAULT_DB})")
    source.add_argument("--current", default=None, help="a leaderboard CSV to compare instead of a store")
    check.add_argument("--tolerance", type=non_negative_float, default=2.0,
                       help="allowed drop in points; the rule is max(this, 2 × baseline seed std) (default: 2)")
    check.add_argument("--metrics", default=None, help="comma-separated metrics to check (default: all but avg)")
    check.set_defaults(handler=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from ..check import check_regression, read_leaderboard_csv, render_check
    from ..tables import leaderboard

    baseline = read_leaderboard_csv(args.baseline, "--baseline")
    if args.current is not None:
        current = read_leaderboard_csv(args.current, "--current")
    else:
        current = leaderboard(existing_store(args.db or DEFAULT_DB,
                                              "run `bench run` first or pass --current FILE"))
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    result = check_regression(baseline, current, tolerance=args.tolerance, metrics=metrics)
    print(render_check(result))
    return result.exit_code
