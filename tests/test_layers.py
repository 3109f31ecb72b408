"""Import layers: the leaves import nothing of the package, and the edges that made circles are gone.

Read from the source with ``ast`` (imports inside functions count too: a lazy import is still an
edge, it only hides the circle from the interpreter).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

PACKAGE = Path(__file__).resolve().parents[1] / "robustbench_aft"


def package_imports(path: Path) -> Set[str]:
    """The package modules ``path`` imports, as dotted names relative to the package (``models.external``)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    here = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
            target = base + (node.module.split(".") if node.module else [])
            names = [".".join(target)] if node.module else [".".join(target + [a.name]) for a in node.names]
            found.update(n for n in names if n)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found.update(n.split(".", 1)[1] for n in names if n.startswith("robustbench_aft."))
    return found


def test_the_classifier_contract_and_the_sharding_leaf_import_nothing_of_the_package():
    for leaf in ("models/_base.py", "models/_probe.py", "sharding.py"):
        assert package_imports(PACKAGE / leaf) == set(), leaf


def test_data_does_not_import_distributed():
    imported = package_imports(PACKAGE / "data.py")
    assert "distributed" not in imported and "sharding" in imported


def test_the_models_package_has_no_import_circle():
    graph: Dict[str, Set[str]] = {}
    for path in (PACKAGE / "models").glob("*.py"):
        name = "models." + path.stem if path.stem != "__init__" else "models"
        graph[name] = {m for m in package_imports(path) if m.startswith("models.")}

    def reaches(start: str, goal: str, seen: Set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    circles = sorted(name for name in graph if reaches(name, name, {name}))
    assert circles == [], circles
    assert "models.external" not in graph["models._base"]
