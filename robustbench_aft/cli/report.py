"""`bench report`: one self-contained HTML page."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

from ..config import DEFAULT_DB
from ..errors import ConfigError
from ._common import existing_store


def add_to(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser("report", help="one self-contained HTML page: tables, plots, configs, flags")
    report.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    report.add_argument("--output", default="report.html", help="HTML file to write (default: report.html)")
    report.add_argument("--plots", action="append", default=[], metavar="DIR_OR_PNG",
                        help="also embed these PNGs (or every PNG in a folder), e.g. an eps-curve output; repeatable")
    report.add_argument("--title", default="robustbench-aft report", help="page title")
    report.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..analysis import render_report
    from ..files import check_writable

    output = Path(args.output)
    check_writable(output, "--output", folder=False)
    plots: List[Path] = []
    for item in args.plots:
        path = Path(item)
        if path.is_dir():
            plots.extend(sorted(path.glob("*.png")))
        elif path.is_file() and path.suffix.lower() == ".png":
            plots.append(path)
        else:
            raise ConfigError(f"--plots {item} is neither a folder nor a PNG file")
    render_report(existing_store(args.db), output, plots, title=args.title)
    print(f"wrote {output}")
    return 0
