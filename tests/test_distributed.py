"""Data-parallel fine-tuning on CPU with gloo: the sharding, gradient averaging and SyncBN are exact,
and `bench run` under torchrun writes one set of results that matches a single-process run."""
import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F

import robustbench_aft
from robustbench_aft.cli import main
from robustbench_aft.data import EpochOrderSampler, epoch_seed
from robustbench_aft.distributed import (
    CPUSyncBatchNorm,
    DistContext,
    GradientAveraging,
    ShardedEpochSampler,
    convert_sync_batchnorm,
    merge_per_example,
)
from robustbench_aft.launch import local_job_threads
from robustbench_aft.models import build_model

REPO = Path(robustbench_aft.__file__).resolve().parents[1]


def test_shards_of_local_batch_k_together_are_the_single_process_batch_k():
    size, seed, epoch, global_batch, world = 50, 3, 2, 10, 2
    single = EpochOrderSampler(size, seed, epoch).order()
    shards = [list(ShardedEpochSampler(size, epoch_seed(seed, epoch), DistContext(rank, world, rank)))
              for rank in range(world)]
    local = global_batch // world
    for k in range(size // global_batch):
        union = sorted(i for shard in shards for i in shard[k * local:(k + 1) * local])
        assert union == sorted(single[k * global_batch:(k + 1) * global_batch])
    skipped = list(ShardedEpochSampler(size, epoch_seed(seed, epoch), DistContext(1, world, 1), skip=2 * local))
    assert skipped == shards[1][2 * local:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_step(model, x, y):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rank_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        context = DistContext(rank, world, rank)
        torch.manual_seed(0)
        model = build_model("smallcnn", 10, 1, (0.5,), (0.25,)).train()
        assert convert_sync_batchnorm(model, torch.device("cpu")) > 0
        x, y = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 10
        shard = list(ShardedEpochSampler(16, 7, context))
        with GradientAveraging(context):
            state = _one_step(model, x[shard], y[shard])
        per_example = torch.zeros(16, 2)
        seen = torch.zeros(16, dtype=torch.bool)
        seen[shard] = True
        per_example[shard] = float(rank + 1)
        merge_per_example(per_example, seen, context)
        torch.save({"state": state, "per_example": per_example, "shard": shard}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_take_exactly_the_single_process_step_with_sync_bn(tmp_path):
    """Gradient averaging + CPU SyncBN on two shards of a batch = one step on the whole batch."""
    mp.spawn(_rank_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    model = build_model("smallcnn", 10, 1, (0.5,), (0.25,)).train()
    x, y = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 10
    single = _one_step(model, x, y)
    assert sorted(ranks[0]["shard"] + ranks[1]["shard"]) == list(range(16))
    for key, value in single.items():
        for rank in ranks:  # both ranks hold the same weights and BN statistics as the single process
            torch.testing.assert_close(rank["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    expected = torch.zeros(16, 2)
    expected[ranks[0]["shard"]] = 1.0
    expected[ranks[1]["shard"]] = 2.0
    for rank in ranks:
        torch.testing.assert_close(rank["per_example"], expected)


def test_cpu_sync_batchnorm_is_plain_batchnorm_without_a_process_group():
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(3).train()
    synced = CPUSyncBatchNorm(3).train()
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced.running_var, plain.running_var)


def _history_and_metrics(db: Path):
    connection = sqlite3.connect(db)
    rows = connection.execute("select run_id, method, config_json from runs").fetchall()
    metrics = {run_id: dict(connection.execute("select metric, value from metrics where run_id = ?", (run_id,)))
               for run_id, _, _ in rows}
    connection.close()
    return {method: (json.loads(config).get("training_history", []), metrics[run_id])
            for run_id, method, config in rows}


# Measured on digits (ci preset, vaft, seed 0): single-process seeds 0, 1, 2 differ per epoch in
# mean training loss by up to 0.11 (epoch 1) and in PGD accuracy by up to 2.5 points; the 2-process
# run with --sync-bn differs from seed 0 by at most 0.066 in loss and 4.5 points in PGD. The two
# runs see the same global batches, but the random shift augmentation and the attack's random
# start are drawn per process, so they cannot agree bit for bit.
LOSS_TOLERANCE = 0.15
ACCURACY_TOLERANCE_PP = 8.0


@pytest.mark.slow
def test_bench_run_under_torchrun_writes_one_result_set_matching_one_process(tmp_path):
    arguments = ["run", "--methods", "vaft", "--seeds", "0", "--preset", "ci", "--attacks", "clean,pgd", "--quiet"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
         "robustbench_aft.cli", *arguments, "--sync-bn", "--db", str(tmp_path / "ddp.db"), "--out",
         str(tmp_path / "ddp")], env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("| vaft") == 1  # only rank 0 prints the leaderboard
    assert main([*arguments, "--db", str(tmp_path / "single.db"), "--out", str(tmp_path / "single")]) == 0

    ddp, single = _history_and_metrics(tmp_path / "ddp.db"), _history_and_metrics(tmp_path / "single.db")
    assert sorted(ddp) == ["natural", "vaft"]  # one row per cell: rank 1 wrote nothing
    assert sorted(p.name for p in (tmp_path / "ddp" / "vaft-seed0").glob("*.pt")) == ["final.pt", "last.pt"]
    ddp_history, ddp_metrics = ddp["vaft"]
    single_history, single_metrics = single["vaft"]
    assert [e["epoch"] for e in ddp_history] == [1, 2, 3, 4, 5]
    for ours, reference in zip(ddp_history, single_history):
        assert abs(ours["loss"] - reference["loss"]) <= LOSS_TOLERANCE, (ours, reference)
    for attack in ("clean", "pgd"):
        assert abs(ddp_metrics[attack] - single_metrics[attack]) <= ACCURACY_TOLERANCE_PP, attack
    assert ddp["natural"][1] == single["natural"][1]  # the same model, evaluated in two shards
    stored = json.loads(sqlite3.connect(tmp_path / "ddp.db").execute(
        "select config_json from runs where method = 'vaft'").fetchone()[0])
    assert stored["processes"] == 2 and stored["train"]["sync_bn"] is True


def test_local_grid_jobs_share_the_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert [local_job_threads(jobs) for jobs in (1, 4, 5, 16, 40)] == [16, 4, 3, 1, 1]
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert local_job_threads(3) == 1


@pytest.mark.slow
def test_submitit_local_grid_is_collected_and_a_failed_cell_resubmitted(tmp_path, capsys):
    pytest.importorskip("submitit")
    out, db = tmp_path / "grid", tmp_path / "grid.db"
    # One epoch and 40 test points: the orchestration is under test here, not the accuracy.
    arguments = ["run", "--methods", "vaft,trades", "--seeds", "0,1", "--preset", "ci", "--epochs", "1",
                 "--n-eval", "40", "--attacks", "clean,pgd", "--quiet", "--launcher", "submitit-local",
                 "--out", str(out), "--db", str(db)]
    assert main(arguments) == 0
    jobs = json.loads((out / "jobs.json").read_text())
    assert sorted(jobs) == ["natural", "trades-seed0", "trades-seed1", "vaft-seed0", "vaft-seed1"]
    # The four fine-tuning jobs ran side by side, sharing the cores instead of each taking all.
    assert f"{local_job_threads(4)} torch thread(s)" in Path(jobs["vaft-seed0"]["stderr"]).read_text()
    connection = sqlite3.connect(db)
    assert connection.execute("select count(*) from runs where status = 'finished'").fetchone()[0] == 5
    first_run_id = connection.execute("select run_id from runs where method = 'trades' and seed = 1").fetchone()[0]
    connection.close()

    # One cell breaks: its results are gone and its training checkpoint is cut short.
    cell = out / "trades-seed1"
    for name in ("done.json", "record.json", "final.pt"):
        (cell / name).unlink()
    (cell / "last.pt").write_bytes(b"truncated")
    capsys.readouterr()
    assert main([*arguments, "--resume"]) == 1
    report = capsys.readouterr().err
    failed_line = next(line for line in report.splitlines() if line.startswith("| trades-seed1"))
    assert "failed" in failed_line and "cannot resume" in failed_line
    resubmitted = json.loads((out / "jobs.json").read_text())
    assert resubmitted["trades-seed1"]["stderr"] in failed_line  # the log of the job that failed
    assert resubmitted["trades-seed1"]["job_id"] != jobs["trades-seed1"]["job_id"]
    assert all(resubmitted[name] == jobs[name] for name in jobs if name != "trades-seed1")  # only it was resubmitted
    assert main(["collect", "--out", str(out), "--db", str(db)]) == 1

    (cell / "last.pt").unlink()
    assert main([*arguments, "--resume"]) == 0
    assert main(["collect", "--out", str(out), "--db", str(db)]) == 0
    connection = sqlite3.connect(db)
    rows = connection.execute("select method, seed, status, run_id from runs").fetchall()
    connection.close()
    assert len(rows) == 5 and {status for _, _, status, _ in rows} == {"finished"}
    assert first_run_id in {run_id for *_, run_id in rows}  # the resubmitted cell replaced its own row
