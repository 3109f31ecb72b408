"""The output-format contract."""
from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Optional


class OutputFormat:
    """Renders tables for the terminal or for files.

    ``human``: a format for people (Markdown); commands then add their headers, legends and
    summary lines around the table. Machine formats print the table alone, so it can be parsed.
    """

    human: ClassVar[bool] = False

    def table(self, rows: List[Dict[str, Any]], extra: Optional[Dict[str, Any]] = None,
              as_written: bool = False) -> str:
        """``rows`` (all with the same keys) as text. ``extra``: document-level facts (eps, flags) for
        formats that can carry them; ``as_written``: numbers are shown as given, not re-rounded."""
        raise NotImplementedError

    def leaderboard(self, frame, columns: Optional[List[str]] = None) -> str:
        """The aggregated leaderboard frame (never empty); ``columns``: the cost columns asked for.
        By default the display rows as a table."""
        from ..tables import display_rows

        return self.table(display_rows(frame, columns))
