"""`bench compare`: the paired difference of two methods, or of two attacks on one model, on the same points."""
from __future__ import annotations

import argparse

from ..config import DEFAULT_DB
from ..errors import ConfigError
from ..registry import FORMATS
from ._common import SELECT_HELP, existing_store, human, selection


def add_to(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser("compare", help="paired difference of two methods (or of two attacks on one "
                                                   "model, --attacks) on the same points: delta, 95 %% interval, "
                                                   "exact McNemar p")
    compare.add_argument("first", help="a method (or natural)")
    compare.add_argument("second", nargs="?", default=None,
                         help="the method to compare it with (none with --attacks)")
    compare.add_argument("--attacks", default=None, metavar="A,B",
                         help="compare two attacks on the first method's model instead: A − B, with each one's "
                              "counted passes and seconds (e.g. aa,a3)")
    compare.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    compare.add_argument("--metric", default=None, help="the metric to compare two methods on (default: aa)")
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

    if args.attacks is not None:
        return _compare_attacks(args)
    if args.second is None:
        raise ConfigError("compare needs a second method, or --attacks A,B to compare two attacks on one model")
    comparison = compare_methods(existing_store(args.db), args.first, args.second, metric=args.metric or "aa",
                                 dataset=args.dataset, arch=args.arch,
                                 eps=parse_eps(args.eps) if args.eps is not None else None,
                                 selection=selection(args.select))
    setting, result = comparison.setting, comparison.result
    header = (f"{comparison.first} − {comparison.second} on {setting['dataset']}/{setting['arch']}, "
              f"{setting['norm']} eps={setting['eps']:.4g}, {comparison.metric}: {result.seeds} seed(s) × "
              f"{result.points} points")
    if args.format == "json":
        seed_p = None if result.seed_interval_excludes_zero is None else result.seed_p_value
        print(format_table(comparison.table(), "json", extra={"comparison": header, "test": result.test,
                                                               "per_seed_delta": result.per_seed_delta,
                                                               "seed_p_value": seed_p}))
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


def _compare_attacks(args: argparse.Namespace) -> int:
    from ..compare import compare_attacks
    from ..parsing import parse_eps
    from ..tables import format_table

    names = [part.strip() for part in args.attacks.split(",") if part.strip()]
    if len(names) != 2:
        raise ConfigError(f"--attacks takes two attacks such as aa,a3, got {args.attacks!r}")
    if args.second is not None or args.metric is not None:
        raise ConfigError("--attacks compares two attacks on one model: give one method and no --metric "
                          f"(got {args.first} {args.second or ''} {'--metric ' + args.metric if args.metric else ''})")
    comparison = compare_attacks(existing_store(args.db), args.first, names[0], names[1], dataset=args.dataset,
                                 arch=args.arch, eps=parse_eps(args.eps) if args.eps is not None else None,
                                 selection=selection(args.select))
    setting, result = comparison.setting, comparison.result
    header = (f"{comparison.first} − {comparison.second} on {comparison.method}, {setting['dataset']}/"
              f"{setting['arch']}, {setting['norm']} eps={setting['eps']:.4g}: {result.seeds} seed(s) × "
              f"{result.points} points")
    if args.format == "json":
        print(format_table(comparison.table(), "json", extra={"comparison": header, "test": result.test,
                                                               "costs": comparison.costs}))
        return 0
    print(format_table(comparison.table(), args.format, as_written=human(args.format)))
    if human(args.format):
        def cost(attack: str) -> str:
            c = comparison.costs[attack]
            passes = ("passes not recorded" if c["forward_per_image"] is None else
                      f"{c['forward_per_image']:.1f} forward + {c['backward_per_image']:.1f} backward passes per image")
            seconds = "" if c["seconds"] is None else f", {c['seconds']:.2f} s"
            return f"{attack}: {passes}{seconds}"

        print(f"\n{header}\nΔ = {result.delta:+.2f} points, 95 % interval [{result.ci_low:+.2f}, "
              f"{result.ci_high:+.2f}], p = {result.p_value:.4g} ({result.test}); "
              f"{'significant' if comparison.significant else 'not significant'} at α = 0.05\n"
              f"cost: {cost(comparison.first)}; {cost(comparison.second)}")
    return 0
