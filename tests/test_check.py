"""`bench check`: the regression rule, the exit codes and the report."""
import pandas as pd
import pytest

from robustbench_aft.check import allowed_drop, check_regression
from robustbench_aft.cli import main
from robustbench_aft.errors import ConfigError

COLUMNS = ["method", "dataset", "arch", "eps", "norm", "seeds", "version", "clean", "clean_std", "pgd", "pgd_std",
           "aa", "aa_std", "worst", "worst_std", "avg", "avg_std", "flagged_runs", "reconstructed"]


def table(pgd_afd=70.0, pgd_std_afd=0.5, with_trades=True):
    rows = [["natural", "digits", "smallcnn", 0.15, "Linf", 1, 0, 99.0, None, 1.0, None, 0.0, None, 0.0, None, 33.3,
             None, 0, False],
            ["afd", "digits", "smallcnn", 0.15, "Linf", 3, 1, 98.0, 0.2, pgd_afd, pgd_std_afd, 66.0, 0.4, 66.0, 0.4,
             78.0, 0.3, 0, False]]
    if with_trades:
        rows.append(["trades", "digits", "smallcnn", 0.15, "Linf", 3, 1, 95.0, 1.5, 46.0, 3.0, 32.0, 2.5, 32.0, 2.5,
                     57.0, 2.0, 3, False])
    return pd.DataFrame(rows, columns=COLUMNS)


def test_allowed_drop_is_the_larger_of_tolerance_and_twice_the_std():
    assert allowed_drop(2.0, 0.5) == 2.0
    assert allowed_drop(2.0, 3.0) == 6.0
    assert allowed_drop(2.0, float("nan")) == 2.0


def test_hand_made_pair_of_tables():
    baseline = table(pgd_afd=70.0, pgd_std_afd=0.5)
    # afd pgd: -2.5 with allowed 2.0 -> regressed; trades pgd: -5.0 with allowed 2 × 3.0 = 6.0 -> ok
    current = table(pgd_afd=67.5)
    current.loc[current["method"] == "trades", "pgd"] = 41.0
    result = check_regression(baseline, current, tolerance=2.0, metrics=["pgd"])
    verdicts = {row["method"]: row["verdict"] for row in result.rows}
    assert verdicts == {"natural": "ok", "afd": "REGRESSED", "trades": "ok"}
    assert result.exit_code == 1
    afd = next(r for r in result.rows if r["method"] == "afd")
    assert (afd["delta"], afd["allowed_drop"]) == (-2.5, 2.0)
    assert check_regression(baseline, current, tolerance=3.0, metrics=["pgd"]).exit_code == 0
    improved = check_regression(baseline, table(pgd_afd=80.0), metrics=["pgd"])
    assert improved.exit_code == 0 and any(r["verdict"] == "IMPROVED" for r in improved.rows)


def test_norms_are_kept_apart_and_old_baselines_read_as_linf():
    """An L2 row never stands in for the L∞ row of the same method and eps: a baseline holding both
    compares each with its own, and one without a norm column (written before L2) is L∞."""
    l2 = table(pgd_afd=40.0)
    l2["norm"] = "L2"
    baseline = pd.concat([table(pgd_afd=70.0), l2], ignore_index=True)
    current = pd.concat([table(pgd_afd=70.0), table(pgd_afd=30.0).assign(norm="L2")], ignore_index=True)
    result = check_regression(baseline, current, metrics=["pgd"])
    verdicts = {(row["method"], row["norm"]): row["verdict"] for row in result.rows}
    assert verdicts[("afd", "Linf")] == "ok" and verdicts[("afd", "L2")] == "REGRESSED"
    with pytest.raises(ConfigError, match="nothing to compare"):
        check_regression(l2, table())


def test_a_baseline_without_a_norm_column_is_linf(files, capsys):
    old = files("b.csv", table().drop(columns="norm"))
    assert main(["check", "--baseline", old, "--current", files("c.csv", table())]) == 0
    assert "check: ok" in capsys.readouterr().out


def test_no_overlap_and_unknown_metric_are_input_errors():
    other = table()
    other["dataset"] = "cifar10"
    with pytest.raises(ConfigError, match="nothing to compare"):
        check_regression(table(), other)
    with pytest.raises(ConfigError, match="--metrics cw not in the baseline"):
        check_regression(table(), table(), metrics=["cw"])


@pytest.fixture
def files(tmp_path):
    def write(name, frame):
        path = tmp_path / name
        frame.to_csv(path, index=False)
        return str(path)
    return write


def test_identical_tables_exit_0(files, capsys):
    assert main(["check", "--baseline", files("b.csv", table()), "--current", files("c.csv", table())]) == 0
    assert "check: ok" in capsys.readouterr().out


def test_baseline_pgd_raised_by_5_points_fails_naming_method_and_metric(files, capsys):
    baseline = table()
    baseline.loc[baseline["method"] == "afd", "pgd"] += 5
    code = main(["check", "--baseline", files("b.csv", baseline), "--current", files("c.csv", table())])
    out = capsys.readouterr().out
    assert code == 1
    assert ("REGRESSED: afd on digits/smallcnn Linf eps=0.15 pgd: 75.00 -> 70.00 (-5.00 points, allowed drop 2.00)"
            in out)


def test_missing_method_fails(files, capsys):
    code = main(["check", "--baseline", files("b.csv", table()), "--current", files("c.csv", table(with_trades=False))])
    out = capsys.readouterr().out
    assert code == 1 and "MISSING: trades on digits/smallcnn Linf eps=0.15 pgd" in out


@pytest.mark.parametrize("content", ["method,dataset\n\"unclosed,quote\n", "a,b\n1,2\n", ""])
def test_malformed_csv_is_exit_2_in_one_line(tmp_path, capsys, content, files):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    code = main(["check", "--baseline", str(bad), "--current", files("c.csv", table())])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("bench: error: --baseline")


def test_missing_files_are_exit_2(capsys, tmp_path):
    assert main(["check", "--baseline", str(tmp_path / "nope.csv"), "--current", str(tmp_path / "x.csv")]) == 2
    assert main(["check", "--baseline", str(tmp_path / "nope.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_duplicated_baseline_rows_are_one_line_naming_them(files, capsys):
    doubled = pd.concat([table(), table().iloc[[1]]], ignore_index=True)
    code = main(["check", "--baseline", files("b.csv", doubled), "--current", files("c.csv", table())])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "bench: error: --baseline" in captured.err
    assert "has duplicated rows: afd on digits/smallcnn Linf eps=0.15 (2 rows)" in captured.err
    with pytest.raises(ConfigError, match=r"the current table has duplicated rows: afd .* \(2 rows\)"):
        check_regression(table(), doubled)
    with pytest.raises(ConfigError, match=r"the baseline has duplicated rows: afd .* \(2 rows\)"):
        check_regression(doubled, table())
