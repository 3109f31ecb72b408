"""The bench command: the documented happy path, and one clear line + exit 2 for each bad input."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from robustbench_aft.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_shows_every_registry(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for heading in ("## methods", "## datasets", "## archs", "## attacks"):
        assert heading in out
    for name in ("digits", "folder", "smallcnn", "wrn-34-10", "pgd", "aa-fast"):
        assert f"| {name} " in out
    code, out, _ = run(capsys, "list", "attacks")
    assert code == 0 and "## datasets" not in out and "CW-∞" in out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits_model, digits):
    from robustbench_aft.pretrained import save_checkpoint

    return str(save_checkpoint(digits_model, tmp_path_factory.mktemp("ckpt") / "natural.pt", "smallcnn", digits))


def test_pretrain_then_eval_prints_a_table(capsys, tmp_path):
    code, out, _ = run(capsys, "pretrain", "--dataset", "digits", "--arch", "smallcnn", "--epochs", "3", "--quiet")
    assert code == 0 and "test accuracy" in out and "saved:" in out
    code, out, _ = run(capsys, "pretrain", "--dataset", "digits", "--arch", "smallcnn", "--epochs", "3", "--quiet")
    assert code == 0 and out.startswith("cached:")

    table_file = tmp_path / "table.md"
    code, out, _ = run(capsys, "eval", "--checkpoint", "auto", "--dataset", "digits", "--arch", "smallcnn",
                       "--attacks", "clean,pgd,cw,aa", "--eps", "0.2", "--n-eval", "40", "--quiet",
                       "--output", str(table_file))
    assert code == 0, out
    assert "| attack" in out and "| worst" in out and "sanity flags" in out
    assert table_file.read_text().strip() == out.strip()


def test_eval_json_and_csv(capsys, checkpoint):
    code, out, _ = run(capsys, "eval", "--checkpoint", checkpoint, "--attacks", "pgd", "--eps", "8/255",
                       "--n-eval", "30", "--format", "json", "--quiet")
    assert code == 0
    document = json.loads(out)
    assert document["n"] == 30 and document["eps"] == pytest.approx(8 / 255)
    assert [row["attack"] for row in document["rows"]] == ["clean", "pgd", "worst"]
    assert document["accuracy"]["pgd"] <= document["accuracy"]["clean"]
    code, out, _ = run(capsys, "eval", "--checkpoint", checkpoint, "--attacks", "clean", "--n-eval", "30",
                       "--format", "csv", "--quiet")
    assert code == 0
    assert out.splitlines()[0] == "attack,accuracy,correct,n,seconds"


BAD_INPUTS = {
    "unknown dataset": (["eval", "--checkpoint", "auto", "--dataset", "digitz"], "Did you mean 'digits'"),
    "unknown arch": (["eval", "--checkpoint", "auto", "--arch", "resnet81"], "Did you mean 'resnet18'"),
    "unknown attack": (["eval", "--checkpoint", "auto", "--attacks", "clean,pdg"], "unknown attack 'pdg'"),
    "bad eps": (["eval", "--checkpoint", "auto", "--eps", "big"], "--eps must be a number"),
    "negative eps": (["eval", "--checkpoint", "auto", "--eps", "-0.1"], "--eps must be a finite number >= 0"),
    "zero n-eval": (["eval", "--checkpoint", "auto", "--n-eval", "0"], "expected a positive integer"),
    "missing checkpoint": (["eval", "--checkpoint", "/nonexistent/model.pt"], "does not exist"),
    "missing --checkpoint": (["eval"], "required: --checkpoint"),
    "bad format": (["eval", "--checkpoint", "auto", "--format", "xml"], "invalid choice: 'xml'"),
    "unknown command": (["train"], "invalid choice: 'train'"),
    "unknown list kind": (["list", "models"], "invalid choice: 'models'"),
    "missing data": (["pretrain", "--dataset", "cifar10", "--data-dir", "/nonexistent"], "--download"),
    "folder without path": (["pretrain", "--dataset", "folder"], "needs a path"),
    "bad epochs": (["pretrain", "--epochs", "-3"], "expected a positive integer"),
    "bad device": (["pretrain", "--device", "tpu9"], "invalid device"),
    "unknown method": (["run", "--methods", "ours,tradez"], "Did you mean 'trades'"),
    "missing --methods": (["run"], "required: --methods"),
    "bad seeds": (["run", "--methods", "ours", "--seeds", "0,x"], "--seeds expects comma-separated integers"),
    "duplicate seeds": (["run", "--methods", "ours", "--seeds", "1,1"], "duplicates"),
    "unknown preset": (["run", "--methods", "ours", "--preset", "fast"], "unknown preset 'fast'"),
    "unknown --set key": (["run", "--methods", "ours", "--set", "afd.delta=1"], "afd has no parameter 'delta'"),
    "--set for a method not run": (["run", "--methods", "ours", "--set", "nope.beta=1"], "unknown method 'nope'"),
    "--set for a method not in --methods": (["run", "--methods", "ours", "--set", "mart.beta=1"],
                                            "mart is not among --methods"),
    "missing store": (["leaderboard", "--db", "/nonexistent/results.db"], "does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(capsys, case):
    argv, expected = BAD_INPUTS[case]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bench: error: ")
    assert expected in lines[0]
    assert "Traceback" not in err


def test_wrong_checkpoint_arch_is_one_line(capsys, checkpoint):
    code, _, err = run(capsys, "eval", "--checkpoint", checkpoint, "--arch", "resnet18")
    assert code == 2 and "saved for arch 'smallcnn'" in err and len(err.strip().splitlines()) == 1


def test_output_to_a_directory_is_refused_before_any_work(capsys, checkpoint, tmp_path):
    code, _, err = run(capsys, "eval", "--checkpoint", checkpoint, "--output", str(tmp_path))
    assert code == 2 and "is a directory" in err


@pytest.mark.skipif(shutil.which("bench") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "bench")),
                    reason="the bench console script is not installed in this environment")
def test_console_script_reports_errors_without_traceback():
    bench = shutil.which("bench") or os.path.join(os.path.dirname(sys.executable), "bench")
    result = subprocess.run([bench, "eval", "--checkpoint", "auto", "--dataset", "nope"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("bench: error: unknown dataset 'nope'")
    assert "Traceback" not in result.stderr
