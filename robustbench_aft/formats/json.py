"""JSON: tables as ``{"rows": [...]}`` plus document-level facts; leaderboards as RobustBench entries."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from ..registry import FORMATS
from ._base import OutputFormat


@FORMATS.register("json")
class JSON(OutputFormat):
    """JSON documents; a leaderboard is a list of RobustBench-style model entries."""

    def table(self, rows: List[Dict[str, Any]], extra: Optional[Dict[str, Any]] = None,
              as_written: bool = False) -> str:
        return json.dumps({**(extra or {}), "rows": rows}, indent=2, default=str)

    def leaderboard(self, frame, columns: Optional[List[str]] = None) -> str:
        from ..attacks import metric_columns
        from ..tables import robustbench_entry

        metrics = [m for m in metric_columns() if m in frame.columns]
        return json.dumps([robustbench_entry(record, metrics) for record in frame.to_dict("records")], indent=2)
