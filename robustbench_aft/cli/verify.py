"""`bench verify`: check a third-party adversarial-example tensor against a stored model."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..attacks import NORMS
from ..config import DEFAULT_DB
from ..parsing import non_negative_float, non_negative_int
from ..registry import FORMATS
from ._common import existing_store, human


def add_to(commands: argparse._SubParsersAction) -> None:
    verify = commands.add_parser("verify", help="check an adversarial-example tensor (.pt) against a stored model: "
                                                "shape, dtype, range, eps-ball, re-classification, agreement")
    verify.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    verify.add_argument("--method", default="natural", help="the method whose stored model to check against "
                                                            "(default: natural)")
    verify.add_argument("--seed", type=non_negative_int, default=None, help="which seed (default: the lowest stored)")
    verify.add_argument("--adversarial", required=True, metavar="FILE.pt",
                        help="one adversarial image per evaluated point, in the order of the run's test indices "
                             "(what `bench export --adversarial` writes)")
    verify.add_argument("--eps", default=None, help="the stated budget (default: the run's)")
    verify.add_argument("--norm", default=None, choices=NORMS, help="the stated norm (default: the run's)")
    verify.add_argument("--tolerance", type=non_negative_float, default=None,
                        help="slack on the ball and the [0, 1] range (default: 1e-5)")
    verify.add_argument("--metric", default="worst", help="the stored outcomes to agree with (default: worst)")
    verify.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    verify.add_argument("--format", default="md", choices=FORMATS.names(), help="output format")
    verify.add_argument("--quiet", action="store_true", help="no log lines")
    verify.set_defaults(handler=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..parsing import parse_eps
    from ..tables import format_table
    from ..verify import DEFAULT_TOLERANCE, describe, verify_adversarial

    report = verify_adversarial(existing_store(args.db), args.method, Path(args.adversarial),
                                resolve_device(args.device), seed=args.seed,
                                eps=parse_eps(args.eps, args.norm or "Linf") if args.eps is not None else None,
                                norm=args.norm, metric=args.metric,
                                tolerance=DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance)
    if args.format == "json":
        print(format_table(report.rows, "json", extra=describe(report)))
    else:
        print(format_table(report.rows, args.format))
        if human(args.format):
            print(f"\n{report.verdict()}")
    return 1 if report.failed else 0
