"""docs/methods.md is the reference the code cites: every `methods.md §N` citation resolves to a
section of it, and its parameter tables are the methods' Params dataclasses, default for default."""
import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from robustbench_aft.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
CITATION = re.compile(r"methods\.md (§[\d.]+(?:,? §[\d.]+)*)")


def _sections():
    return {match.group(1) for match in re.finditer(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", DOC, re.M)}


def _citations():
    found = []
    for folder in ("robustbench_aft", "baselines", "benchmarks", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for match in CITATION.finditer(path.read_text(encoding="utf-8")):
                for number in re.findall(r"§([\d.]+)", match.group(1)):
                    found.append((f"{path.relative_to(ROOT)}", number.rstrip(".")))
    return found


def test_every_citation_resolves_to_a_section():
    citations = _citations()
    assert len(citations) > 30  # the code does cite it
    sections = _sections()
    missing = [(where, number) for where, number in citations if number not in sections]
    assert not missing, f"cited sections not in docs/methods.md: {missing}"


@pytest.mark.parametrize("method", METHODS.names())
def test_parameter_table_matches_the_params_dataclass(method):
    heading = f"Parameters of `{method}` "
    assert heading in DOC, f"docs/methods.md has no parameter table for {method}"
    table = DOC.split(heading, 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1:3] for line in table.splitlines()[2:]]
    documented = {name.strip().strip("`"): default.strip() for name, default in rows}
    params = METHODS.get(method).Params
    expected = {}
    for f in fields(params):
        default = f.default if f.default is not MISSING else f.default_factory()
        expected[f.name] = f"{default:.6g}" if isinstance(default, float) else str(default)
    assert documented == expected
