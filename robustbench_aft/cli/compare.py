"""`bench compare`: the paired difference of two methods on the same points."""
from __future__ import annotations

import argparse

from ..config import DEFAULT_DB
from ..registry import FORMATS
from ._common import SELECT_HELP, existing_store, human, selection


def add_to(commands: argparse._SubParsersAction) -> None:
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


def cmd_compare(args: argparse.Namespace) -> int:
    from ..compare import compare_methods
    from ..parsing import parse_eps
    from ..tables import format_table

    comparison = compare_methods(existing_store(args.db), args.first, args.second, metric=args.metric,
                                 dataset=args.dataset, arch=args.arch,
                                 eps=parse_eps(args.eps) if args.eps is not None else None,
                                 selection=selection(args.select))
    setting, result = comparison.setting, comparison.result
    header = (f"{comparison.first} − {comparison.second} on {setting['dataset']}/{setting['arch']}, "
              f"{setting['norm']} eps={setting['eps']:.4g}, {comparison.metric}: {result.seeds} seed(s) × "
              f"{result.points} points")
    if args.format == "json":
        print(format_table(comparison.table(), "json", extra={"comparison": header, "test": result.test,
                                                               "per_seed_delta": result.per_seed_delta,
                                                               "seed_p_value": None if result.seed_interval_excludes_zero is None
                                                               else result.seed_p_value}))
        return 0
    if human(args.format):
        # p-values as written (3.5e-09), not rounded to 0.00 by the table's number format.
        print(format_table(comparison.table(), args.format, as_written=True))
    else:
        from ..captions import comparison_caption

        # Formats that carry a caption (LaTeX) state the protocol with the table; CSV ignores it.
        caption = comparison_caption(existing_store(args.db), comparison, header, selection(args.select))
        print(format_table(comparison.table(), args.format, extra={"caption": caption}))
    if human(args.format):
        per_seed = ", ".join(f"{d:+.2f}" for d in result.per_seed_delta)
        print(f"\n{header}\nΔ = {result.delta:+.2f} points, 95 % interval [{result.ci_low:+.2f}, "
              f"{result.ci_high:+.2f}], p = {result.p_value:.4g} ({result.test}); per-seed Δ: {per_seed}; "
              f"{comparison.verdict()}")
    return 0
