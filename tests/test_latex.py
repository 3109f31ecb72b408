"""`--format latex`: booktabs tables with the Markdown's cells, rank 1 in bold and the protocol as caption.

When a LaTeX engine is installed the table is compiled; otherwise its structure is checked: balanced
environments and braces, one cell per column in every row, the three booktabs rules in order.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

from robustbench_aft.cli import main
from robustbench_aft.formats.latex import escape
from robustbench_aft.results import ResultsStore, RunRecord, outcome_bits

PGD = {"attack": "PGD", "steps": 20, "restarts": 1, "step": "0.25·eps", "loss": "cross_entropy_loss",
       "start": "random", "precision": "fp32", "eps": 0.15, "eps_given": "0.15", "norm": "Linf"}
ENGINES = ("pdflatex", "lualatex", "xelatex", "tectonic")


def _record(method, seed, bits):
    correct = np.array([c == "1" for c in bits])
    return RunRecord(group_id="g", method=method, method_version=1, dataset="digits", arch="smallcnn", seed=seed,
                     eps=0.15, norm="Linf", n_eval=len(bits),
                     metrics={"clean": 100.0, "pgd": 100.0 * correct.mean(), "worst": 100.0 * correct.mean()},
                     config={}, flags=[], provenance={}, wall_seconds=1.0, indices=list(range(len(bits))),
                     per_sample={"clean": "1" * len(bits), "pgd": bits, "worst": bits},
                     budgets={"clean": {"attack": "Clean", "precision": "fp32"}, "pgd": PGD})


@pytest.fixture
def store_db(tmp_path):
    """afd ranks 1 and trades 2 over two seeds of 300 points each."""
    db = tmp_path / "results.db"
    store = ResultsStore(str(db))
    rng = np.random.default_rng(3)
    for seed in (0, 1):
        best = rng.random(300) < 0.6
        store.add(_record("afd", seed, outcome_bits(best)))
        store.add(_record("trades", seed, outcome_bits(best & (rng.random(300) < 0.5))))
    return db


def check_structure(tex: str) -> list:
    """Assert what a LaTeX engine would reject or booktabs would render wrongly; returns the body rows."""
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    unescaped = re.sub(r"\\.", "", tex)  # \{ \} \% are literal characters, not groups
    assert unescaped.count("{") == unescaped.count("}")
    assert not re.search(r"(?<!\\)[%_#$]", re.sub(r"\$(\\[a-zA-Z]+|-|\^\\dagger)\$", "",
                                                  tex.split("\n", 1)[1])), "an unescaped special character"
    assert all(ord(c) < 128 for c in tex), "non-ASCII left for pdfLaTeX"
    body = tex[tex.index(r"\begin{tabular}"):tex.index(r"\end{tabular}")]
    spec = re.match(r"\\begin\{tabular\}\{([lrc]+)\}", body).group(1)
    lines = body.splitlines()[1:]
    rules = [i for i, line in enumerate(lines) if line in (r"\toprule", r"\midrule", r"\bottomrule")]
    assert [lines[i] for i in rules] == [r"\toprule", r"\midrule", r"\bottomrule"] and rules[0] == 0
    rows = [line for line in lines if line.endswith(r"\\")]
    for row in rows:
        assert len(re.split(r"(?<!\\)&", row)) == len(spec), row
    return [[cell.strip().removesuffix(r"\\").strip() for cell in re.split(r"(?<!\\)&", row)] for row in rows]


def compile_if_possible(tex: str, tmp_path) -> None:
    engine = next((shutil.which(e) for e in ENGINES if shutil.which(e)), None)
    if engine is None:
        return  # no LaTeX engine installed: check_structure is the test
    document = "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + tex + "\n\\end{document}\n"
    (tmp_path / "table.tex").write_text(document)
    done = subprocess.run([engine, "-interaction=nonstopmode", "table.tex"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]


def test_leaderboard_latex_has_markdown_cells_bold_rank_one_and_protocol_caption(store_db, capsys, tmp_path):
    assert main(["leaderboard", "--db", str(store_db), "--format", "csv"]) == 0
    import io

    import pandas as pd

    numbers = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("method")
    assert main(["leaderboard", "--db", str(store_db), "--format", "latex"]) == 0
    tex = capsys.readouterr().out.strip()
    rows = check_structure(tex)
    header, body = rows[0], {row[1].replace(r"\textbf{", "").rstrip("}"): row for row in rows[1:]}
    afd, trades = body["afd"], body["trades"]
    assert afd[0] == r"\textbf{1}" and all(c.startswith(r"\textbf{") for c in afd if c)
    assert trades[0] == "2" and not any(r"\textbf" in c for c in trades)
    pgd = numbers.loc["afd"]
    expected = (f"{pgd['pgd']:.2f} $\\pm$ {pgd['pgd_std']:.2f} "
                f"[{pgd['pgd_ci_low']:.1f}, {pgd['pgd_ci_high']:.1f}]")
    assert afd[header.index("pgd")] == rf"\textbf{{{expected}}}"
    caption = re.search(r"\\caption\{(.*)\}\n", tex).group(1)
    for fact in ("digits, smallcnn, Linf eps = 0.15", "PGD (loss cross\\_entropy\\_loss, restarts 1, start random, "
                 "step 0.25$\\cdot$eps, steps 20, fp32)", "2 fine-tuning seed(s) (0, 1)", "300 evaluated test points",
                 "Rank by worst"):
        assert fact in caption, fact
    compile_if_possible(tex, tmp_path)


def test_compare_latex_states_the_comparison_and_the_budget(store_db, capsys, tmp_path):
    assert main(["compare", "--db", str(store_db), "afd", "trades", "--metric", "pgd", "--format", "json"]) == 0
    import json

    row, = json.loads(capsys.readouterr().out)["rows"]
    assert main(["compare", "--db", str(store_db), "afd", "trades", "--metric", "pgd", "--format", "latex"]) == 0
    tex = capsys.readouterr().out.strip()
    header, cells = check_structure(tex)
    assert cells[header.index("delta")] == f"{row['delta']:.2f}" and cells[header.index("p")] == row["p"]
    assert "significant (p \\textless{} 0.05)" in header
    caption = re.search(r"\\caption\{(.*)\}\n", tex).group(1)
    assert caption.startswith("afd $-$ trades on digits/smallcnn, Linf eps=0.15, pgd: 2 seed(s) $\\times$ 300 points")
    assert "Attack: PGD (loss cross\\_entropy\\_loss" in caption
    compile_if_possible(tex, tmp_path)


def test_escape_turns_every_special_into_literal_text():
    assert escape(r"a_b & 50% #1 $x$ {y} ~ ^ \ ±") == (r"a\_b \& 50\% \#1 \$x\$ \{y\} \textasciitilde{} "
                                                      r"\textasciicircum{} \textbackslash{} $\pm$")


def test_eval_table_caption_states_model_setting_points_and_budgets(tmp_path):
    from robustbench_aft.tables import format_table

    rows = [{"attack": "clean", "accuracy": 97.5, "correct": 195, "n": 200},
            {"attack": "pgd", "accuracy": 43.25, "correct": 87, "n": 200}]
    budgets = {"clean": {"attack": "Clean", "precision": "fp32"}, "pgd": PGD}
    tex = format_table(rows, "latex", extra={"source": "runs/afd_model", "dataset": "digits", "arch": "smallcnn",
                                             "eps": 0.15, "norm": "Linf", "n": 200, "budgets": budgets})
    header, clean, pgd = check_structure(tex)
    assert header == ["attack", "accuracy", "correct", "n"] and pgd == ["pgd", "43.25", "87", "200"]
    caption = re.search(r"\\caption\{(.*)\}\n", tex).group(1)
    assert caption == (r"smallcnn on digits (runs/afd\_model), Linf eps = 0.15, 200 test points. Attacks clean: Clean "
                       r"(fp32); pgd: PGD (loss cross\_entropy\_loss, restarts 1, start random, step 0.25$\cdot$eps, "
                       r"steps 20, fp32).")
    compile_if_possible(tex, tmp_path)
