"""docs/methods.md is the reference the code cites: every `methods.md §N` citation resolves to a
section of it, and its parameter tables are generated from the methods' Params dataclasses
(`python -m robustbench_aft.docgen --write`)."""
import re
from dataclasses import fields
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
    """The table between the method's marker comments is the one docgen writes from its Params."""
    from robustbench_aft import docgen

    block = docgen.blocks(DOC).get(method)
    assert block is not None, (f"docs/methods.md has no parameter table for {method}: run `{docgen.WRITE_COMMAND}` "
                               "and move the appended block into the method's section")
    assert block == f"\n{docgen.parameter_table(method)}\n", (
        f"the parameter table of {method} in docs/methods.md is out of date: run `{docgen.WRITE_COMMAND}`")


def test_generated_table_has_every_field_with_its_default():
    """The generator itself: one row per Params field, the default as `--set` takes it back."""
    from robustbench_aft import docgen

    table = docgen.parameter_table("afd")
    rows = {line.split("|")[1].strip().strip("`"): line.split("|")[2].strip() for line in table.splitlines()[2:]}
    params = METHODS.get("afd").Params
    assert list(rows) == [f.name for f in fields(params)]
    assert rows["alpha"] == "0.05" and rows["attack_steps"] == "10"


def test_write_repairs_a_stale_table_and_appends_a_missing_one():
    from robustbench_aft import docgen

    stale_doc = DOC.replace("| `gamma` | 25 |", "| `gamma` | 24 |")
    without_vaft = re.sub(r"<!-- params:vaft -->.*?<!-- /params:vaft -->", "", stale_doc, flags=re.S)
    assert docgen.stale(without_vaft) == ["afd", "vaft"]
    repaired = docgen.render(without_vaft)
    assert docgen.stale(repaired) == []
    assert "| `gamma` | 25 |" in repaired and repaired.rstrip().endswith("<!-- /params:vaft -->")
    assert docgen.render(DOC) == DOC  # the committed file is a fixed point
