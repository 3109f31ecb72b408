"""Every `bench` command the README and the docs show exists: its `--help` exits 0.

The commands are read from the Markdown itself (fenced code blocks and inline code spans), so a
page that shows a renamed or removed sub-command fails here, not in a reader's terminal."""
import argparse
import re
from pathlib import Path

import pytest

from robustbench_aft.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
SPAN = re.compile(r"`([^`\n]+)`")
# `bench` at the start of a command (a line, a shell prompt, `--no-python bench`), then its words;
# `bench: error: …` (a message, no space after the name) does not match.
INVOCATION = re.compile(r"(?:^|[\s$(])bench[ \t]+([a-z][a-z-]*)(?:[ \t]+([a-z][a-z-]*))?", re.M)


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _code(text: str) -> list:
    blocks = FENCE.findall(text)
    prose = FENCE.sub("", text)
    return blocks + SPAN.findall(prose)


def documented_commands() -> dict:
    """(sub-command, [its sub-command]) → the pages showing it. A second word counts only under a
    command that has sub-commands (`bench analyze tradeoff`), not as an argument (`bench list formats`)."""
    commands = _subparsers(build_parser())
    found: dict = {}
    for page in PAGES:
        for snippet in _code(page.read_text(encoding="utf-8")):
            for first, second in INVOCATION.findall(snippet):
                path = (first,)
                if first in commands and second and _subparsers(commands[first]):
                    path = (first, second)
                found.setdefault(path, set()).add(str(page.relative_to(ROOT)))
    return found


DOCUMENTED = documented_commands()


def test_the_docs_show_most_commands():
    """The parser above must find something real, or the test below checks nothing."""
    assert len(DOCUMENTED) >= 12, sorted(DOCUMENTED)
    for path in [("run",), ("eval",), ("list",), ("compare",), ("leaderboard",), ("analyze", "feature-gap")]:
        assert path in DOCUMENTED, path


@pytest.mark.parametrize("path", sorted(DOCUMENTED), ids=" ".join)
def test_documented_command_answers_help(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, f"`bench {' '.join(path)}` shown in {sorted(DOCUMENTED[path])}: {err.strip()}"
    assert out.startswith(f"usage: bench {' '.join(path)}")


def test_list_formats_and_presets(capsys):
    from robustbench_aft.config import PRESETS
    from robustbench_aft.registry import FORMATS

    assert main(["list", "formats"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## formats") and "## methods" not in out
    for entry in FORMATS.entries():
        assert f"| {entry.name} " in out and entry.description in out
    assert main(["list", "presets"]) == 0
    out = capsys.readouterr().out
    for name, preset in PRESETS.items():
        assert f"| {name} " in out and preset["description"] in out
    quick = next(line for line in out.splitlines() if line.startswith("| quick "))
    assert "| digits " in quick  # the preset digits runs with when none is given
