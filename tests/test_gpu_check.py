"""benchmarks/gpu_check.sh --dry-run: the GPU check's steps, tiny and on the CPU, write a complete report."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_writes_every_section(tmp_path):
    output = tmp_path / "RESULTS-gpu.md"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--output", str(output)], capture_output=True,
                            text=True, timeout=1200, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    report = output.read_text()
    for heading in ("## Machine", "## Training throughput", "### Passes", "## One-epoch `bench run`, one process",
                    "## The same under `torchrun --standalone --nproc_per_node=1`"):
        assert heading in report, heading
    assert "| smallcnn | vaft " in report and "ours/floor" in report
    assert report.count("| afd | ") == 2 and report.count("| vaft | ") == 2  # timings of both runs
    assert "Dry run" in report


def test_gpu_check_refuses_unknown_options(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("gpu_check.sh: error: unknown option --fast "
                                     "(use --dry-run, --output FILE, --data DIR)")


TABLE1 = SCRIPT.parent / "table1_pair.sh"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_table1_pair_dry_run_writes_the_leaderboard_and_every_phase(tmp_path):
    output = tmp_path / "RESULTS-table1-pair.md"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(TABLE1), "--dry-run", "--output", str(output)], capture_output=True,
                            text=True, timeout=1200, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    report = output.read_text()
    for heading in ("## Natural model", "## Fine-tuning and evaluation", "Dry run", "--preset paper"):
        assert heading in report, heading
    # the leaderboard bench run printed, and one timing row per model with each attack's seconds
    assert "| afd " in report and "| vaft " in report and "| natural " in report
    assert "| model | fine-tuning s | images/s | aa-fast s | clean s | cw s | pgd s | cell wall s |" in report


@pytest.mark.parametrize("arguments, message", [
    (["--fast"], "unknown option --fast"),
    (["--natural-epochs", "x"], "--natural-epochs must be a positive whole number, got 'x'"),
    (["--output"], "--output needs a value"),
])
def test_table1_pair_refuses_bad_options_in_one_line(arguments, message):
    result = subprocess.run(["bash", str(TABLE1), *arguments], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
