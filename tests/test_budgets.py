"""Attack fidelity: every metric keeps its attack's budget, and a leaderboard column never mixes
budgets silently (refused in one line, or marked † with --mix-budgets)."""
import pytest

from robustbench_aft.cli import main
from robustbench_aft.errors import ConfigError
from robustbench_aft.results import ResultsStore, RunRecord
from robustbench_aft.tables import leaderboard


def _pgd_budget(steps):
    return {"attack": "PGD", "steps": steps, "restarts": 1, "step": "0.25·eps", "loss": "cross_entropy_loss",
            "start": "random", "precision": "fp32", "eps": 0.15, "eps_given": "0.15", "norm": "Linf"}


def _record(method, steps, with_budget=True):
    return RunRecord(group_id="g", method=method, method_version=1, dataset="digits", arch="smallcnn", seed=0,
                     eps=0.15, norm="Linf", n_eval=4, metrics={"clean": 100.0, "pgd": 50.0}, config={}, flags=[],
                     provenance={}, wall_seconds=1.0, indices=[0, 1, 2, 3],
                     per_sample={"clean": "1111", "pgd": "1100"},
                     budgets={"pgd": _pgd_budget(steps), "clean": {"attack": "Clean", "precision": "fp32"}}
                     if with_budget else {})


@pytest.fixture
def store(tmp_path):
    return ResultsStore(str(tmp_path / "r.db"))


def test_equal_budgets_and_rows_without_a_budget_make_one_column(store):
    for method, steps, known in (("afd", 20, True), ("vaft", 20, True), ("trades", 10, False)):
        store.add(_record(method, steps, known))
    frame = leaderboard(str(store.path))
    assert not frame["mixed_budgets"].astype(bool).any()


def test_two_budgets_in_one_column_are_refused_naming_both_then_marked_with_mix_budgets(store, capsys):
    for method, steps in (("afd", 20), ("vaft", 20), ("trades", 10)):
        store.add(_record(method, steps))
    with pytest.raises(ConfigError, match=r"column pgd would mix attack budgets: steps=20 \(afd, vaft\) vs "
                                          r"steps=10 \(trades\)"):
        leaderboard(str(store.path))
    assert main(["leaderboard", "--db", str(store.path)]) == 2
    assert "steps=10 (trades)" in capsys.readouterr().err
    assert main(["leaderboard", "--db", str(store.path), "--mix-budgets"]) == 0
    out = capsys.readouterr().out
    trades_line = next(line for line in out.splitlines() if "| trades" in line)
    afd_line = next(line for line in out.splitlines() if "| afd" in line)
    assert "†" in trades_line and "†" not in afd_line and "another attack budget" in out
