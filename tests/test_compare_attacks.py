"""`bench compare MODEL --attacks A,B` (compare.compare_attacks): two attacks on one model, paired point by point,
with each one's counted passes and seconds; attacks evaluated on different points are refused in one line."""
import pytest

from robustbench_aft.cli import main
from robustbench_aft.compare import compare_attacks
from robustbench_aft.errors import ConfigError
from robustbench_aft.results import ResultsStore, RunRecord


def _record(indices, per_sample, costs, created_at):
    return RunRecord(group_id="g", method="afd", method_version=1, dataset="digits", arch="smallcnn", seed=0,
                     eps=0.15, norm="Linf", n_eval=len(indices),
                     metrics={m: 100.0 * bits.count("1") / len(bits) for m, bits in per_sample.items()}, config={},
                     flags=[], provenance={}, wall_seconds=1.0, indices=indices, per_sample=per_sample,
                     budgets={m: {"attack": m, "cost": cost} for m, cost in costs.items()}, created_at=created_at)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "r.db"
    store = ResultsStore(str(path))
    aa_cost = {"seconds": 30.0, "forward_per_image": 400.0, "backward_per_image": 120.0}
    a3_cost = {"seconds": 3.0, "forward_per_image": 40.0, "backward_per_image": 35.0}
    store.add(_record(list(range(10)), {"clean": "1111111111", "aa": "1111100000", "a3": "1111000000"},
                      {"aa": aa_cost, "a3": a3_cost}, created_at=1.0))
    return path


def test_two_attacks_on_one_model_print_delta_interval_p_and_each_cost(db, capsys):
    assert main(["compare", "--db", str(db), "afd", "--attacks", "aa,a3"]) == 0
    out = capsys.readouterr().out
    assert "aa − a3 on afd" in out and "Δ = +10.00 points" in out and "exact McNemar" in out
    assert "aa: 400.0 forward + 120.0 backward passes per image, 30.00 s" in out
    assert "a3: 40.0 forward + 35.0 backward passes per image, 3.00 s" in out
    comparison = compare_attacks(str(db), "afd", "a3", "aa")
    assert comparison.result.delta == pytest.approx(-10.0) and comparison.result.only_second == 1


def test_attacks_evaluated_on_different_points_are_refused_in_one_line(db, capsys):
    # A later run evaluates a3 again, on another subset: the latest a3 outcomes no longer pair with aa's.
    ResultsStore(str(db)).add(_record(list(range(5, 15)), {"clean": "1111111111", "a3": "1000000000"},
                                      {"a3": {"seconds": 1.0}}, created_at=2.0))
    assert main(["compare", "--db", str(db), "afd", "--attacks", "aa,a3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "aa and a3 were not evaluated on the same points of afd seed 0" in err[0]


@pytest.mark.parametrize("argv,message", [
    (["afd", "--attacks", "aa"], "two attacks"),
    (["afd", "natural", "--attacks", "aa,a3"], "one method"),
    (["afd", "--attacks", "aa,aa"], "twice"),
    (["afd", "--attacks", "aa,cw"], "no stored per-sample results of 'cw'"),
])
def test_bad_attack_comparisons_are_one_line_errors(db, capsys, argv, message):
    assert main(["compare", "--db", str(db), *argv]) == 2
    assert message in capsys.readouterr().err


def test_two_methods_still_compare_as_before(db, capsys):
    with pytest.raises(ConfigError, match="no finished run of natural"):
        from robustbench_aft.compare import compare_methods
        compare_methods(str(db), "afd", "natural")


def test_the_fidelity_benchmark_reads_both_attacks_and_their_cost_from_the_store(db):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "attack_fidelity.py"
    spec = importlib.util.spec_from_file_location("attack_fidelity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    row, = module.fidelity_rows(str(db))
    assert row["model"] == "afd" and row["Δ a3 − aa"] == -10.0 and row["agreement %"] == 90.0
    assert row["aa/a3 passes"] == round(520 / 75, 1) and row["target"] == "missed"


def test_a_column_whose_models_cost_differently_is_still_one_budget(db):
    from dataclasses import replace

    from robustbench_aft.tables import leaderboard_frame

    store = ResultsStore(str(db))
    other = _record(list(range(10)), {"clean": "1111111111", "aa": "1000000000", "a3": "1000000000"},
                    {"aa": {"seconds": 9.0, "forward_per_image": 900.0, "backward_per_image": 300.0},
                     "a3": {"seconds": 1.0, "forward_per_image": 90.0, "backward_per_image": 80.0}}, created_at=3.0)
    store.add(replace(other, method="vaft"))
    frame = leaderboard_frame(store.rows())  # would raise "column aa would mix attack budgets" if cost counted
    assert set(frame["method"]) == {"afd", "vaft"}
