"""Reliability: kill and resume, clean interruption, concurrent runs, atomic files, numerical faults.

The kill/resume tests run ``bench`` as a subprocess and SIGKILL it at a point read off the files
it writes (``last.pt`` during fine-tuning, ``eval-*/batch-*.pt`` during evaluation), then check
that ``--resume`` ends with exactly the metrics and weights of an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustbench_aft.cli import main
from robustbench_aft.config import TrainConfig
from robustbench_aft.engine import NumericalError, fine_tune, read_training_checkpoint
from robustbench_aft.errors import Interrupted
from robustbench_aft.files import atomic_torch_save, atomic_write, atomic_write_text
from robustbench_aft.registry import METHODS

from .conftest import StopAfter

CPU = torch.device("cpu")
# afd: three optimisers, D1/D2 and EMA; atas: per-example state. aa-fast makes the evaluation long
# enough (≈ 0.5 s per batch) to be killed in the middle.
RUN = ["run", "--methods", "afd,atas", "--preset", "ci", "--epochs", "3", "--attacks", "clean,pgd,aa-fast",
       "--n-eval", "40", "--eval-batch-size", "10", "--quiet"]
CELLS = ("natural", "afd-seed0", "atas-seed0")
POLL_S = 0.01
TIMEOUT_S = 300


def _bench(argv, threads: int = 0) -> subprocess.Popen:
    env = os.environ.copy()
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen([sys.executable, "-m", "robustbench_aft.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finish(process: subprocess.Popen):
    out, err = process.communicate(timeout=TIMEOUT_S)
    return process.returncode, out, err


def _wait_for(process: subprocess.Popen, ready) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        assert process.poll() is None, f"bench exited before the kill point: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(POLL_S)


def _results(out: Path) -> dict:
    accuracy = {cell: json.loads((out / cell / "done.json").read_text())["accuracy"] for cell in CELLS}
    weights = {cell: torch.load(out / cell / "final.pt", weights_only=True)["state_dict"] for cell in CELLS[1:]}
    return {"accuracy": accuracy, "weights": weights}


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every resumed run must reproduce exactly."""
    folder = tmp_path_factory.mktemp("reference")
    code, _, err = _finish(_bench(RUN + ["--db", str(folder / "results.db"), "--out", str(folder / "out")]))
    assert code == 0, err
    return _results(folder / "out")


@pytest.mark.slow
def test_sigkill_during_fine_tuning_and_evaluation_then_resume_matches(reference, tmp_path):
    out, db = tmp_path / "out", str(tmp_path / "results.db")
    argv = RUN + ["--db", db, "--out", str(out)]

    process = _bench(argv)
    _wait_for(process, lambda: (out / "afd-seed0" / "last.pt").is_file())
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "afd-seed0" / "final.pt").exists(), "the kill came after fine-tuning ended"
    assert read_training_checkpoint(out / "afd-seed0" / "last.pt")["next_epoch"] in (2, 3)

    process = _bench(argv + ["--resume"])
    _wait_for(process, lambda: len(list(out.glob("atas-seed0/eval-*/batch-*.pt"))) >= 2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "atas-seed0" / "done.json").exists(), "the kill came after the evaluation ended"
    assert (out / "afd-seed0" / "done.json").is_file()

    code, stdout, err = _finish(_bench(argv + ["--resume"]))
    assert code == 0, err
    resumed = _results(out)
    assert resumed["accuracy"] == reference["accuracy"]
    for cell in CELLS[1:]:
        assert _same_weights(resumed["weights"][cell], reference["weights"][cell]), cell
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT method, status FROM runs ORDER BY method").fetchall()
    assert rows == [("afd", "finished"), ("atas", "finished"), ("natural", "finished")]
    assert "| afd " in stdout


@pytest.mark.slow
@pytest.mark.parametrize("signum, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interruption_saves_state_records_it_and_resumes(reference, tmp_path, signum, exit_code):
    out, db = tmp_path / "out", str(tmp_path / "results.db")
    argv = RUN + ["--db", db, "--out", str(out)]
    process = _bench(argv)
    _wait_for(process, lambda: (out / "afd-seed0" / "last.pt").is_file())
    process.send_signal(signum)
    code, _, err = _finish(process)
    assert code == exit_code, err
    assert "resume with: bench run" in err and "--resume" in err and "Traceback" not in err
    assert (out / "afd-seed0" / "last.pt").is_file()
    assert not (out / ".lock").exists()
    with sqlite3.connect(db) as connection:
        status = dict(connection.execute("SELECT method, status FROM runs").fetchall())
    assert status["afd"] == "interrupted"
    if signum == signal.SIGTERM:
        return  # resuming after SIGTERM is the same path as after SIGINT, tested below for SIGINT

    code, _, err = _finish(_bench(argv + ["--resume"]))
    assert code == 0, err
    resumed = _results(out)
    assert resumed["accuracy"] == reference["accuracy"]
    assert _same_weights(resumed["weights"]["afd-seed0"], reference["weights"]["afd-seed0"])
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT method, status FROM runs WHERE method = 'afd'").fetchall()
    assert rows == [("afd", "finished")]


@pytest.mark.slow  # two bench run processes side by side: ~50 s
def test_two_concurrent_runs_share_one_store(tmp_path):
    db = str(tmp_path / "results.db")
    argv = ["run", "--methods", "vaft", "--preset", "ci", "--epochs", "1", "--attacks", "clean,pgd",
            "--n-eval", "50", "--quiet", "--db", db]
    # One thread each: two multi-threaded torch processes on a 2-core machine slow each other 10×.
    processes = [_bench(argv + ["--out", str(tmp_path / f"out{i}")], threads=1) for i in range(2)]
    for process in processes:
        code, _, err = _finish(process)
        assert code == 0, err
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        groups = connection.execute("SELECT group_id, COUNT(*) FROM runs WHERE status = 'finished' "
                                    "GROUP BY group_id").fetchall()
        metrics = connection.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    assert [count for _, count in groups] == [2, 2]
    assert metrics == 4 * 3  # 4 models × (clean, pgd, worst)


def _tiny_run(tmp_path: Path, out: Path) -> list:
    """A one-epoch vAFT run on 20 test points: seconds, for tests about the run folder itself."""
    return ["run", "--methods", "vaft", "--preset", "ci", "--epochs", "1", "--attacks", "clean", "--n-eval", "20",
            "--quiet", "--db", str(tmp_path / "results.db"), "--out", str(out)]


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    argv = _tiny_run(tmp_path, out) + ["--resume"]
    import socket

    (out / ".lock").write_text(f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"is in use by bench run pid {os.getpid()}" in err and len(err.strip().splitlines()) == 1

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".lock").write_text(f"{int(gone.stdout)} {socket.gethostname()} {time.time():.0f}\n")
    assert main(argv) == 0
    assert not (out / ".lock").exists()


def test_out_holding_another_run_needs_resume_and_the_same_settings(capsys, tmp_path):
    out = tmp_path / "out"
    argv = _tiny_run(tmp_path, out)
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert "add --resume" in capsys.readouterr().err
    assert main([*argv[:-2], "--epochs", "2", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "train" in err
    assert main(argv + ["--resume"]) == 0  # everything done: every cell is skipped


def test_unreadable_training_checkpoint_names_the_file(capsys, tmp_path):
    out = tmp_path / "out"
    argv = _tiny_run(tmp_path, out)
    assert main(argv) == 0
    capsys.readouterr()
    for name in ("done.json", "final.pt"):
        (out / "vaft-seed0" / name).unlink()
    last = out / "vaft-seed0" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    assert main(argv + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume from {last}: truncated" in err and len(err.strip().splitlines()) == 1


def test_nan_keeps_the_last_good_checkpoint_and_names_the_place(digits_model, digits, tmp_path, monkeypatch):
    vaft = METHODS.get("vaft")
    update = vaft.update

    def poisoned(self, batch):
        terms = update(self, batch)
        if self.epoch == 2:
            terms["ce"] = torch.tensor(float("nan"))
        return terms

    monkeypatch.setattr(vaft, "update", poisoned)
    with pytest.raises(NumericalError, match=r"vaft seed 3 epoch 2 batch 1: loss term 'ce' is nan"):
        fine_tune("vaft", digits_model, digits, TrainConfig(epochs=3, batch_size=128), eps=0.1, seed=3, device=CPU,
                  out_dir=tmp_path, progress=False)
    assert read_training_checkpoint(tmp_path / "last.pt")["next_epoch"] == 2


def test_resume_inside_an_epoch_is_bit_identical(digits_model, digits, tmp_path):
    """In-process: a checkpoint written after batch 5 of epoch 2, resumed, equals the straight run."""
    train = TrainConfig(epochs=3, batch_size=128, train_subset=900)
    straight = fine_tune("free-at", digits_model, digits, train, eps=0.1, seed=1, device=CPU, progress=False)

    with pytest.raises(Interrupted):
        fine_tune("free-at", digits_model, digits, train, eps=0.1, seed=1, device=CPU, progress=False,
                  out_dir=tmp_path, stop=StopAfter(8 + 5))
    state = read_training_checkpoint(tmp_path / "last.pt")
    assert (state["next_epoch"], state["next_batch"]) == (2, 5)
    resumed = fine_tune("free-at", digits_model, digits, train, eps=0.1, seed=1, device=CPU, progress=False,
                        out_dir=tmp_path, resume=True)
    assert _same_weights(resumed.model.state_dict(), straight.model.state_dict())


def test_an_interrupted_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "table.md"
    atomic_write_text("good\n", path)

    def half_then_crash(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_crash)
    assert path.read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]

    checkpoint = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1}, checkpoint)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_torch_save({"epoch": 2, "bad": Unpicklable()}, checkpoint)
    assert torch.load(checkpoint)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "table.md"]


def test_a_diverging_method_is_stored_as_failed_and_the_run_goes_on(tmp_path, capsys):
    from robustbench_aft.cli import main
    from robustbench_aft.results import ResultsStore

    db = tmp_path / "r.db"
    # β = 1e38 blows TRADES' weights up on its one batch; vAFT is untouched.
    assert main(["run", "--methods", "trades,vaft", "--set", "trades.beta=1e38", "--epochs", "1",
                 "--train-subset", "64", "--attacks", "clean", "--n-eval", "20", "--db", str(db), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "bench: diverged, not in the leaderboard (stored as failed): trades seed 0: trades seed 0 epoch 1: " \
           "the model's logits are not finite after the epoch's last update" in captured.err
    rows = [line for line in captured.out.splitlines() if line.startswith("| ")]
    assert [row.split("|")[2].strip() for row in rows[1:]] == ["natural", "vaft"]
    statuses = {run["method"]: run["status"] for run in ResultsStore(str(db)).runs()}
    assert statuses == {"natural": "finished", "trades": "failed", "vaft": "finished"}
