"""The bench command: the documented happy path (the bad-input matrix is test_bad_input.py)."""
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
