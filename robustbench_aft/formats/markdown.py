"""GitHub Markdown tables (tabulate), with the leaderboard's interval legend."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..registry import FORMATS
from ._base import OutputFormat


@FORMATS.register("md")
class Markdown(OutputFormat):
    """GitHub Markdown: mean ± std [95 % interval] cells, then a legend."""

    human = True

    def table(self, rows: List[Dict[str, Any]], extra: Optional[Dict[str, Any]] = None,
              as_written: bool = False) -> str:
        from tabulate import tabulate

        if as_written:
            return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True)
        return tabulate(rows, headers="keys", tablefmt="github", floatfmt=".2f")

    def leaderboard(self, frame, columns: Optional[List[str]] = None) -> str:
        from ..tables import INTERVAL_LEGEND, display_rows

        legend = INTERVAL_LEGEND
        if "rank" in frame.columns:
            from ..compare import default_rank_metric

            rank_by = frame.attrs.get("rank_by") or default_rank_metric(list(frame.columns))
            legend += (f"; rank by {rank_by}: methods not significantly below the best "
                       "(exact McNemar on the per-sample outcomes, Holm-corrected, α = 0.05) share a rank")
        if columns:
            legend += ("; fine_tune_s and eval_s are seconds per model, forward/backward_per_image the counted "
                       "passes per training image, epoch the evaluated epoch (means over seeds)")
        if "mixed_budgets" in frame.columns and frame["mixed_budgets"].astype(bool).any():
            legend += ("; † measured with another attack budget than the rest of its column (--mix-budgets; "
                       "the budgets are in the store)")
        for metric, precisions in (frame.attrs.get("mixed_precisions") or {}).items():
            legend += (f"; column {metric} mixes precisions: {precisions[0]} cells and † {', '.join(precisions[1:])} "
                       "cells")
        return self.table(display_rows(frame, columns)) + "\n\n" + legend
