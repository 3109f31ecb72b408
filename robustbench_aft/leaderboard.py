"""Tables: rows of dicts rendered as Markdown (tabulate), CSV or JSON."""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Dict, List, Optional

from .errors import ConfigError

FORMATS = ("md", "csv", "json")


def format_table(rows: List[Dict[str, Any]], fmt: str, extra: Optional[Dict[str, Any]] = None) -> str:
    """Render ``rows`` (all with the same keys) as ``md``, ``csv`` or ``json``.

    ``extra`` is added to the JSON document as top-level keys (e.g. flags, eps); Markdown and CSV
    carry only the rows.
    """
    if fmt == "md":
        from tabulate import tabulate

        return tabulate(rows, headers="keys", tablefmt="github", floatfmt=".2f")
    if fmt == "csv":
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return buffer.getvalue().rstrip("\n")
    if fmt == "json":
        return json.dumps({**(extra or {}), "rows": rows}, indent=2, default=str)
    raise ConfigError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
