"""Generated parts of the docs: the parameter table of every registered method in docs/methods.md.

Each table sits between marker comments named after the method::

    <!-- params:afd -->

    | parameter | default | meaning | source |
    ...

    <!-- /params:afd -->

(the blank lines keep Markdown from reading the table as part of the HTML comment's block).

``python -m robustbench_aft.docgen --write`` rewrites every block from the method's ``Params``
dataclass (and adds a block for a method that has none yet, at the end of the file, to be moved to
its section by hand); ``--check`` (the default) exits 1 naming each stale block. The test tier runs
the check (``tests/test_docs.py``), so a new method or a changed default cannot ship undocumented.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

METHODS_MD = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
WRITE_COMMAND = "python -m robustbench_aft.docgen --write"
_BLOCK = re.compile(r"<!-- params:(?P<name>[a-z0-9_-]+) -->\n(?P<body>.*?)<!-- /params:(?P=name) -->", re.S)


def _cell(text: str) -> str:
    # A '|' inside a help text would split the Markdown cell.
    return str(text).replace("|", "\\|")


def parameter_table(method: str) -> str:
    """The Markdown table of ``method``'s ``Params``: name, default, meaning and source per field."""
    from .params import param_docs
    from .registry import METHODS

    lines = ["| parameter | default | meaning | source |", "|---|---|---|---|"]
    for p in param_docs(METHODS.get(method).Params):
        # %g with six digits: what a reader types back with --set, without float noise.
        default = f"{p['default']:.6g}" if isinstance(p["default"], float) else str(p["default"])
        lines.append(f"| `{p['name']}` | {default} | {_cell(p['help'])} | {_cell(p['source'])} |")
    return "\n".join(lines) + "\n"


def _block(name: str) -> str:
    return f"<!-- params:{name} -->\n\n{parameter_table(name)}\n<!-- /params:{name} -->"


def blocks(text: str) -> Dict[str, str]:
    """The body of every ``params:NAME`` block in ``text``."""
    return {match.group("name"): match.group("body") for match in _BLOCK.finditer(text)}


def render(text: str, methods: Optional[List[str]] = None) -> str:
    """``text`` with every method's block regenerated; methods without a block get one appended."""
    from .registry import METHODS

    names = list(methods) if methods is not None else METHODS.names()
    present = blocks(text)

    def replace(match: "re.Match[str]") -> str:
        name = match.group("name")
        if name not in names:  # a block of a method no longer registered stays for a human to remove
            return match.group(0)
        return _block(name)

    updated = _BLOCK.sub(replace, text)
    missing = [name for name in names if name not in present]
    for name in missing:
        updated = updated.rstrip("\n") + (f"\n\nParameters of `{name}` (`--set {name}.NAME=VALUE`):\n\n"
                                          f"{_block(name)}\n")
    return updated


def stale(text: str, methods: Optional[List[str]] = None) -> List[str]:
    """Registered methods whose block is missing from ``text`` or differs from their ``Params``."""
    from .registry import METHODS

    present = blocks(text)
    names = list(methods) if methods is not None else METHODS.names()
    return [name for name in names if present.get(name) != f"\n{parameter_table(name)}\n"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robustbench_aft.docgen", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the blocks (default: only check them)")
    parser.add_argument("--file", type=Path, default=METHODS_MD, help="the Markdown file (default: docs/methods.md)")
    args = parser.parse_args(argv)
    text = args.file.read_text(encoding="utf-8")
    if args.write:
        updated = render(text)
        if updated != text:
            args.file.write_text(updated, encoding="utf-8")
        print(f"{args.file}: {len(blocks(updated))} parameter tables current")
        return 0
    outdated = stale(text)
    if outdated:
        print(f"{args.file}: parameter tables out of date for {', '.join(outdated)}; run: {WRITE_COMMAND}",
              file=sys.stderr)
        return 1
    print(f"{args.file}: every parameter table is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
