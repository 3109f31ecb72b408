"""`bench audit`: the binarization test of an attack on a stored model (Zimmermann et al., NeurIPS 2022)."""
from __future__ import annotations

import argparse

from ..config import DEFAULT_DB
from ..parsing import non_negative_int, positive_int
from ..registry import FORMATS
from ._common import existing_store, human


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def add_to(commands: argparse._SubParsersAction) -> None:
    from ..audit import DEFAULT_INNER, DEFAULT_THRESHOLD

    audit = commands.add_parser("audit", help="binarization test: does the attack find adversarial examples that "
                                              "provably exist? (Zimmermann et al., NeurIPS 2022)")
    audit.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    audit.add_argument("--method", default="natural", help="the method whose stored model to audit (default: natural)")
    audit.add_argument("--seed", type=non_negative_int, default=None, help="which seed (default: the lowest stored)")
    audit.add_argument("--attack", default="pgd", help="the registered attack to audit (default: pgd)")
    audit.add_argument("--points", type=positive_int, default=50,
                       help="binarized tests, on the first N of the run's evaluated points (default: 50)")
    audit.add_argument("--inner", type=positive_int, default=DEFAULT_INNER,
                       help=f"inner samples per test (default: {DEFAULT_INNER})")
    audit.add_argument("--threshold", type=_fraction, default=DEFAULT_THRESHOLD,
                       help=f"the share of feasible tests the attack must break (default: {DEFAULT_THRESHOLD})")
    audit.add_argument("--eps", default=None, help="the budget (default: the run's)")
    audit.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    audit.add_argument("--format", default="md", choices=FORMATS.names(), help="output format")
    audit.add_argument("--quiet", action="store_true", help="no log lines")
    audit.set_defaults(handler=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from ..audit import audit_stored, store_verdict
    from ..devices import resolve_device
    from ..parsing import parse_eps
    from ..tables import format_table

    result = audit_stored(existing_store(args.db), args.method, args.attack, resolve_device(args.device),
                          seed=args.seed, points=args.points, inner=args.inner, threshold=args.threshold,
                          eps=parse_eps(args.eps) if args.eps is not None else None)
    flag = result.flag()
    stored = store_verdict(args.db, result)
    if args.format == "json":
        print(format_table([result.row()], "json", extra={"flag": flag, "inner": result.inner,
                                                           "tests": [t.__dict__ for t in result.tests]}))
    else:
        print(format_table([result.row()], args.format))
        if human(args.format):
            print(f"\nsanity flag: {flag}" if flag else
                  f"\nsanity flags: none ({result.attack} found the guaranteed adversarial example on "
                  f"{result.found} of {result.feasible} feasible binarized points)")
            if stored:
                print(stored)
            elif not result.at_run_eps:
                print(f"not stored: audited at eps {result.eps:.4g}, not the run's eps")
    return 0 if result.passed else 1
