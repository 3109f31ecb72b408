"""LaTeX tables for papers: booktabs rules, the Markdown's cells, the rank-1 group in bold, the protocol
in the caption.

The cells are the Markdown's (``mean ± std [low, high]`` over seeds, ``value [low, high]`` for one
seed, see :func:`..leaderboard.display_rows`), with ``±`` as ``$\\pm$``, so a number in the paper is
the number on the terminal. Every other character LaTeX treats specially is escaped, and the few
non-ASCII symbols the tables use become math-mode commands, so the table compiles with pdfLaTeX
without ``inputenc`` tricks. It needs ``\\usepackage{booktabs}`` (stated in the first line).
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional

from ..registry import FORMATS
from ._base import OutputFormat

_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
             "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
             "<": r"\textless{}", ">": r"\textgreater{}"}
# The non-ASCII symbols of our tables and captions (pdfLaTeX without inputenc rejects them).
_SYMBOLS = {"±": r"$\pm$", "†": r"$^\dagger$", "−": r"$-$", "α": r"$\alpha$", "Δ": r"$\Delta$", "·": r"$\cdot$",
            "×": r"$\times$", "∞": r"$\infty$", "≥": r"$\geq$", "≤": r"$\leq$", "–": "--", "—": "---"}
_NUMBER = re.compile(r"^[-+]?\d[\d.,]*(e[-+]?\d+)?(\s|$)")


def escape(text: Any) -> str:
    """``text`` as LaTeX source that prints it literally."""
    return "".join(_SPECIALS.get(c, _SYMBOLS.get(c, c)) for c in str(text))


def _align(values: List[str]) -> str:
    """``r`` for a column whose non-empty cells all start with a number, else ``l``."""
    cells = [v for v in values if v not in ("", "-")]
    return "r" if cells and all(_NUMBER.match(v) for v in cells) else "l"


def render(rows: List[Dict[str, Any]], caption: str, bold: Optional[List[bool]] = None, label: str = "") -> str:
    """A ``table`` environment with one ``tabular`` of ``rows`` (all with the same keys)."""
    headers = list(rows[0]) if rows else []
    cells = [["" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
              for value in row.values()] for row in rows]
    columns = "".join(_align([row[i] for row in cells]) for i in range(len(headers)))
    lines = [r"% requires \usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{escape(caption)}}}"]
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{columns}}}", r"\toprule",
              " & ".join(escape(h) for h in headers) + r" \\", r"\midrule"]
    for position, row in enumerate(cells):
        strong = bool(bold and bold[position])
        lines.append(" & ".join(rf"\textbf{{{escape(c)}}}" if strong and c else escape(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def _evaluation_caption(extra: Dict[str, Any]) -> str:
    """``bench eval``'s protocol from its document facts (model, setting, points, each attack's budget)."""
    if "dataset" not in extra or "eps" not in extra:
        return ""
    from ..captions import describe_budget

    budgets = "; ".join(f"{metric}: {describe_budget(budget)}" for metric, budget in
                        (extra.get("budgets") or {}).items() if budget)
    return (f"{extra.get('arch', '')} on {extra['dataset']} ({extra.get('source', '')}), {extra.get('norm', '')} "
            f"eps = {float(extra['eps']):.4g}, {extra.get('n', '?')} test points." + (f" Attacks {budgets}." if budgets
                                                                                    else ""))


@FORMATS.register("latex", "tex")
class LaTeX(OutputFormat):
    """A booktabs ``table`` for papers: Markdown's cells, rank 1 in bold, the protocol as caption."""

    def table(self, rows: List[Dict[str, Any]], extra: Optional[Dict[str, Any]] = None,
              as_written: bool = False) -> str:
        extra = extra or {}
        if not as_written:
            rows = [{key: f"{value:.2f}" if isinstance(value, float) else value for key, value in row.items()}
                    for row in rows]
        caption = str(extra.get("caption") or extra.get("comparison") or _evaluation_caption(extra))
        return render(rows, caption, label=str(extra.get("label", "")))

    def leaderboard(self, frame, columns: Optional[List[str]] = None) -> str:
        from ..captions import protocol_sentence
        from ..tables import INTERVAL_LEGEND, display_rows

        rows = display_rows(frame, columns)
        bold = [row.get("rank") == 1 for row in rows]
        caption = f"Leaderboard. {protocol_sentence(frame.attrs.get('protocol', {}))} {INTERVAL_LEGEND}."
        if "rank" in frame.columns:
            caption += (f" Rank by {frame.attrs.get('rank_by', 'the first metric')}: methods not significantly "
                        "below the best (exact McNemar, Holm-corrected, α = 0.05) share a rank; rank 1 in bold.")
        return render(rows, " ".join(caption.split()), bold, label="tab:leaderboard")
