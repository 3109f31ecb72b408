"""Which process this is in a ``torchrun`` job, and its shard of an epoch: the two names
:mod:`.data` needs from data-parallel training, in a leaf module (torch only) so that the data layer
does not import :mod:`.distributed` (process groups, gradient averaging), which re-exports them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job: its rank among ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


class ShardedEpochSampler(DistributedSampler):
    """This rank's shard of the single-process order of one epoch (a pure function of seed, epoch).

    The order is the permutation :class:`~robustbench_aft.data.EpochOrderSampler` draws; rank r
    takes every world_size-th example from position r, so local batch k of every rank together
    form global batch k. ``skip`` drops this rank's first examples (a resumed epoch).
    """

    def __init__(self, size: int, order_seed: int, context: DistContext, skip: int = 0) -> None:
        super().__init__(range(size), num_replicas=context.world_size, rank=context.rank, shuffle=True,
                         seed=order_seed, drop_last=False)
        self.set_epoch(0)  # the seed already encodes the epoch
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)
