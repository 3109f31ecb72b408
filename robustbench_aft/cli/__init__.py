"""The ``bench`` command: thin sub-commands over the Python API, one module each.

Every user error (unknown name, missing file, bad value) ends as one line on stderr and exit
status 2; Ctrl-C exits 130. No maths and no table logic live here. A sub-command is a module with
``add_to(commands)`` (its parser, with ``handler=`` its function) listed in :data:`SUBCOMMANDS`,
which is also the order of ``bench --help``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ..errors import UserError
from . import (  # the sub-commands of issue 31
    analyze,
    audit,
    check,
    collect,
    compare,
    dump,
    evaluate,
    export,
    leaderboard,
    listing,
    load,
    pretrain,
    report,
    run,
    verify,
)
from ._common import BenchArgumentParser, setup_logging

SUBCOMMANDS = (listing, pretrain, evaluate, run, collect, leaderboard, dump, load, compare, check, analyze, report,
               export, audit, verify)


def build_parser() -> argparse.ArgumentParser:
    parser = BenchArgumentParser(prog="bench",
                                 description="Benchmark adversarial fine-tuning of pre-trained classifiers.")
    from .._version import __version__

    parser.add_argument("--version", action="version", version=f"robustbench-aft {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=BenchArgumentParser)
    commands.required = True
    for command in SUBCOMMANDS:
        command.add_to(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = list(argv) if argv is not None else sys.argv[1:]
        input_options = [getattr(args, name, None) for name in ("image_size", "mean", "std")]
        # `bench run` folds them into its configuration itself (they may come from its --config file).
        if any(v is not None for v in input_options) and getattr(args, "dataset", None) and args.command != "run":
            from ..data import with_input_options

            args.dataset = with_input_options(args.dataset, *input_options)
        setup_logging(getattr(args, "quiet", False))
        return args.handler(args)
    except UserError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`bench leaderboard | head`): what it wanted is printed; stay quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
