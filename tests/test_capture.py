"""Captured updates (capture.py): the bookkeeping around the graph, on a CPU stand-in for CUDA graphs,
and where ``--capture`` is refused. Captured against eager on a real GPU: test_capture_matches_eager_on_cuda."""
import copy

import pytest
import torch

from robustbench_aft.capture import CapturedUpdate, CudaGraphs, resolve_capture
from robustbench_aft.config import TrainConfig
from robustbench_aft.data import make_epoch_loader
from robustbench_aft.engine import build_method
from robustbench_aft.errors import ConfigError
from robustbench_aft.passes import PassCounter, method_networks
from robustbench_aft.registry import METHODS

CPU = torch.device("cpu")


class RecordingStandIn:
    """Behaves as CUDA graphs do, on the CPU: recording runs the step's Python (hooks fire) but leaves
    no effect behind (weights, optimiser state and RNG are restored, as no kernel ran); a replay runs
    the step again with the hooks silent (a replay runs no Python) and writes into the recorded
    output tensors."""

    def __init__(self, method, counter):
        self.method, self.counter = method, counter
        self.captures = 0

    def warm_up(self, step):
        return step()

    def capture(self, step):
        state = copy.deepcopy(self.method.state_dict())
        optimizer_states = [copy.deepcopy(o.state_dict()) for o in self.method.optimizers]
        rng = torch.get_rng_state()
        recorded = {name: value.clone() for name, value in step().items()}
        self.method.load_state_dict(state)
        for optimizer, saved in zip(self.method.optimizers, optimizer_states):
            optimizer.load_state_dict(saved)
        torch.set_rng_state(rng)
        self.captures += 1

        def replay():
            self.counter.enabled = False
            try:
                for name, value in step().items():
                    recorded[name].copy_(value)
            finally:
                self.counter.enabled = True

        return replay, recorded

    def release(self):
        pass


def _train(method_name, digits_model, digits, captured, epochs=2, batch_size=48, subset=200):
    torch.manual_seed(0)
    train = TrainConfig(epochs=epochs, batch_size=batch_size)
    method = build_method(method_name, None, 0.15, train)
    method.prepare(copy.deepcopy(digits_model))
    method.optimizers = method.configure_optimizers()
    method.train()
    dataset = torch.utils.data.Subset(digits.train, range(subset))
    counter = PassCounter(method_networks(method))
    step = CapturedUpdate(method.update, RecordingStandIn(method, counter), counter) if captured else method.update
    losses = []
    with counter:
        for epoch in range(1, epochs + 1):
            if captured:
                step.new_epoch()
            for group in method.optimizers[0].param_groups:
                group["lr"] = 0.025 / epoch
            for x, y, index in make_epoch_loader(dataset, batch_size, seed=0, epoch=epoch):
                losses.append(step((x, y, index))["loss"].clone())
    return method, torch.stack(losses), (counter.forward, counter.backward), step


@pytest.mark.parametrize("method_name", ["vaft", "afd"])
def test_captured_updates_follow_the_eager_trajectory_and_count_every_pass(method_name, digits_model, digits):
    eager, eager_losses, eager_passes, _ = _train(method_name, digits_model, digits, captured=False)
    captured, captured_losses, captured_passes, step = _train(method_name, digits_model, digits, captured=True)
    # 200 images in batches of 48: 4 full batches and one of 8 per epoch; 3 full ones warm up.
    assert (step.counts.captures, step.counts.warm_up, step.counts.eager_partial) == (2, 3, 2)
    assert step.counts.replays == 2 * 4 - 3
    assert torch.equal(eager_losses, captured_losses)
    for a, b in zip(eager.state_dict().values(), captured.state_dict().values()):
        assert torch.equal(a, b)
    assert captured_passes == eager_passes and eager_passes[0] > 0


def test_the_returned_terms_are_the_recorded_outputs_overwritten_by_each_replay(digits_model, digits):
    _, losses, _, step = _train("vaft", digits_model, digits, captured=True, epochs=1, batch_size=40, subset=200)
    # 5 full batches: 3 warm-ups, then one recording replayed twice into the same tensors.
    assert step.counts.replays == 2 and len(set(losses.tolist())) == 5


def test_capture_auto_stays_eager_and_on_is_refused_where_it_cannot_run():
    assert not resolve_capture("auto", torch.device("cuda"), "vaft", capturable=True)
    assert not resolve_capture("off", torch.device("cuda"), "vaft", capturable=True)
    assert resolve_capture("on", torch.device("cuda"), "vaft", capturable=True)
    with pytest.raises(ConfigError, match=r"^--capture on needs a CUDA device \(this run fine-tunes on cpu\)"):
        resolve_capture("on", CPU, "vaft", capturable=True)
    with pytest.raises(ConfigError, match="atas is not capturable"):
        resolve_capture("on", torch.device("cuda"), "atas", capturable=METHODS.get("atas").capturable)
    with pytest.raises(ConfigError, match="cannot be combined"):
        resolve_capture("on", torch.device("cuda"), "vaft", capturable=True, compiled=True)
    with pytest.raises(ConfigError, match="torchrun"):
        resolve_capture("on", torch.device("cuda"), "vaft", capturable=True, distributed=True)


def test_only_methods_without_python_decisions_per_batch_are_capturable():
    capturable = sorted(name for name in METHODS.names() if METHODS.get(name).capturable)
    assert capturable == ["afd", "afkd", "mart", "trades", "twins-at", "twins-trades", "vaft"]


def test_bench_run_capture_on_without_cuda_is_one_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "robustbench_aft.cli", "run", "--methods", "vaft", "--capture",
                             "on", "--device", "cpu", "--epochs", "1", "--out", str(tmp_path / "out"), "--db",
                             str(tmp_path / "r.db")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("bench: error: --capture on needs a CUDA device")
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_capture_matches_eager_on_cuda(digits_model, digits):
    device = torch.device("cuda")

    def run(captured):
        torch.manual_seed(0)
        method = build_method("vaft", None, 0.15, TrainConfig(batch_size=64))
        method.prepare(copy.deepcopy(digits_model).to(device))
        method.to(device)
        method.optimizers = method.configure_optimizers()
        method.train()
        step = CapturedUpdate(method.update, CudaGraphs(device)) if captured else method.update
        losses = []
        for x, y, index in make_epoch_loader(digits.train, 64, seed=0, epoch=1):
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                losses.append(step((x.to(device), y.to(device), index.to(device)))["loss"].float().clone())
        return torch.stack(losses).cpu()

    eager, captured = run(False), run(True)
    # Same maths, other kernels' rounding and RNG offsets: the trajectories agree within bf16 noise.
    assert (eager - captured).abs().max() < 0.15 * eager.abs().max()
