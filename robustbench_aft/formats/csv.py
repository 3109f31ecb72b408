"""CSV: numbers, not display strings (the leaderboard keeps its ``_std`` and interval columns)."""
from __future__ import annotations

import csv
import io
from typing import Any, Dict, List, Optional

from ..registry import FORMATS
from ._base import OutputFormat


@FORMATS.register("csv")
class CSV(OutputFormat):
    """Comma-separated values with a header row; what `bench check --baseline` reads."""

    def table(self, rows: List[Dict[str, Any]], extra: Optional[Dict[str, Any]] = None,
              as_written: bool = False) -> str:
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return buffer.getvalue().rstrip("\n")

    def leaderboard(self, frame, columns: Optional[List[str]] = None) -> str:
        return frame.to_csv(index=False, float_format="%.4f").rstrip("\n")
