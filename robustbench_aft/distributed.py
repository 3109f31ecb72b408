"""Data-parallel fine-tuning under ``torchrun``: process group, sharding, gradient averaging, SyncBN.

``bench run`` started by ``torchrun --nproc_per_node=N`` (one or several nodes) finds the
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables torchrun sets and joins the process group (NCCL
on CUDA, gloo on CPU). Then:

* every rank trains on its shard of each global batch (a :class:`ShardedEpochSampler`, i.e. a
  ``DistributedSampler`` over the single-process order), so the recipe's global batch holds and the
  union of the shards of global batch k is exactly the single-process batch k;
* gradients are averaged over ranks with one flat ``all_reduce`` before every optimiser step
  (:class:`GradientAveraging`), as DDP's reducer does. The reducer itself is not used because it
  only sees gradients that ``backward()`` accumulates into ``.grad``: AFD takes three gradients
  from one graph with ``torch.autograd.grad`` and GradAlign differentiates twice, which DDP does
  not support. Averaging at the optimiser step covers every method, including AFD's three
  optimisers (each step averages its own gradients) and RiFT's stage-two optimiser;
* BatchNorm statistics are per shard unless ``--sync-bn`` (like the AFD official code's
  DataParallel); the running statistics of rank 0 are broadcast after every update, as DDP's
  ``broadcast_buffers`` does;
* tensors a method keeps per training example (ATAS) are merged across ranks after every epoch
  (:func:`merge_per_example`), since the shards change from epoch to epoch;
* every rank uses the same seed, so decisions a method takes outside the data (RiFT's choice of
  module, ATAS' lazily drawn perturbations) agree across ranks; the data, and so the attacks,
  differ per shard;
* evaluation batches are split round-robin over ranks, each writes its per-sample files, and
  rank 0 gathers them; only rank 0 writes checkpoints, results and tables.
"""
from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .errors import ConfigError

# Defined in the leaf module sharding.py so that data.py can shard an epoch without importing this
# one (process groups, optimiser hooks); re-exported here, where engine, pipeline and tests import them.
from .sharding import SINGLE, DistContext
from .sharding import ShardedEpochSampler as ShardedEpochSampler

log = logging.getLogger(__name__)



def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def initialize(device: torch.device) -> tuple:
    """Join the process group torchrun describes; returns (DistContext, this rank's device).

    Without torchrun's variables (or with WORLD_SIZE=1) nothing happens and ``device`` is kept.
    """
    if not launched_by_torchrun():
        return SINGLE, device
    context = DistContext(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                          local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=60))
    return context, device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def local_batch_size(global_batch: int, context: DistContext) -> int:
    """The per-process batch that keeps the recipe's global batch; it must divide evenly."""
    if global_batch % context.world_size:
        raise ConfigError(f"the batch size {global_batch} does not divide over {context.world_size} processes; "
                          f"choose a multiple of {context.world_size} (--set batch_size=...)")
    return global_batch // context.world_size


def _flat_gradients(parameters: List[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters])


class GradientAveraging:
    """While active, every optimiser step first averages its parameters' gradients over all ranks.

    One flat all_reduce per step (a parameter without a gradient on this rank contributes zeros,
    so every rank makes the same call whatever its branch). Registered as a global optimiser
    step pre-hook for the duration of the ``with`` block only.
    """

    def __init__(self, context: DistContext) -> None:
        self.context = context
        self._handle: Optional[Any] = None

    def _average(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        if not parameters:
            return
        flat = _flat_gradients(parameters)
        dist.all_reduce(flat)
        flat /= self.context.world_size
        offset = 0
        for p in parameters:
            size = p.numel()
            p.grad = flat[offset:offset + size].view_as(p).clone()
            offset += size

    def __enter__(self) -> "GradientAveraging":
        if self.context.enabled:
            self._handle = register_optimizer_step_pre_hook(self._average)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def broadcast_buffers(module: nn.Module, context: DistContext) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank, as DDP's broadcast_buffers."""
    if not context.enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def broadcast_parameters(module: nn.Module, context: DistContext) -> None:
    """Start every rank from rank 0's weights (DDP does the same when it wraps a model)."""
    if not context.enabled:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor, src=0)


def merge_per_example(tensor: torch.Tensor, seen: torch.Tensor, context: DistContext) -> None:
    """In place: row i of ``tensor`` becomes the value of the rank that trained on example i this
    epoch (their mean for an example two ranks saw, DistributedSampler's padding); rows no rank
    saw keep their value. ``seen`` is this rank's boolean mask over the examples."""
    if not context.enabled or tensor.numel() == 0:
        return
    mask = seen.to(tensor.device, tensor.dtype).view(-1, *([1] * (tensor.dim() - 1)))
    total = tensor * mask
    count = seen.to(tensor.device, torch.float32).clone()
    dist.all_reduce(total)
    dist.all_reduce(count)
    count = count.view(-1, *([1] * (tensor.dim() - 1)))
    merged = torch.where(count > 0, total / count.clamp_min(1).to(tensor.dtype), tensor)
    tensor.copy_(merged)


def gather_objects(obj: Any, context: DistContext) -> List[Any]:
    """Every rank's ``obj``, in rank order (a one-element list without torchrun)."""
    if not context.enabled:
        return [obj]
    gathered: List[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def average_over_ranks(values: Dict[str, float], context: DistContext) -> Dict[str, float]:
    """The mean over ranks of each named value (every rank has the same names)."""
    if not context.enabled or not values:
        return dict(values)
    names = sorted(values)
    tensor = torch.tensor([values[name] for name in names], dtype=torch.float64)
    dist.all_reduce(tensor)
    tensor /= context.world_size
    return {name: float(value) for name, value in zip(names, tensor.tolist())}


def any_rank(flag: bool, context: DistContext) -> bool:
    """True on every rank when ``flag`` is true on one (a stop request must stop all ranks at the
    same batch, or the others would wait forever in the next all_reduce)."""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value)
    return bool(value.item() > 0)


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) that gradients flow through: the gradient of a sum over ranks is the sum of
    every rank's gradient."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch over all ranks.

    ``torch.nn.SyncBatchNorm`` only runs on accelerators (torch 2.14 refuses CPU tensors), so on
    CPU (gloo) the per-channel sum, sum of squares and count are all-reduced with the
    differentiable :class:`_SumOverRanks`; the gradient then flows through
    the global statistics as in SyncBatchNorm. Eval mode is plain BatchNorm2d.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        count = torch.tensor([input.numel() / input.shape[1]], dtype=input.dtype, device=input.device)
        stats = torch.cat([input.sum(dim=(0, 2, 3)), (input * input).sum(dim=(0, 2, 3)), count])
        stats = _SumOverRanks.apply(stats)
        channels = input.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels:2 * channels] / total - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * total / (total - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        shape = (1, channels, 1, 1)
        normalised = (input - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            normalised = normalised * self.weight.view(shape) + self.bias.view(shape)
        return normalised


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> int:
    """Replace every BatchNorm2d inside ``module`` in place by a synchronised one (torch's
    SyncBatchNorm on accelerators, :class:`CPUSyncBatchNorm` on CPU), keeping its state; returns
    how many were replaced. The state dict keys are unchanged, so checkpoints load into the plain
    architecture."""
    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, (CPUSyncBatchNorm, nn.SyncBatchNorm)):
            cls = CPUSyncBatchNorm if device.type == "cpu" else nn.SyncBatchNorm
            synced = cls(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine,
                         track_running_stats=child.track_running_stats).to(device)
            synced.load_state_dict(child.state_dict())
            synced.train(child.training)
            setattr(module, name, synced)
            replaced += 1
        else:
            replaced += convert_sync_batchnorm(child, device)
    return replaced
