"""The few `torch.distributed` calls the trainer needs for data parallelism, as no-ops in one process.

Every helper works whether or not a process group exists: without one (or with one process)
this process is rank 0 of 1, reductions and barriers do nothing, and code written for N
processes runs unchanged in one. `tasks/launch.py` starts the processes and the group.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints and models and logs metrics."""
    return rank() == 0


def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum each tensor over all processes, in place (every process ends with the same values)."""
    if world_size() == 1:
        return
    handles = [dist.all_reduce(t, op=dist.ReduceOp.SUM, async_op=True) for t in tensors]
    for h in handles:
        h.wait()


def broadcast_(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite each tensor, in place, with rank `src`'s value."""
    if world_size() == 1:
        return
    for t in tensors:
        dist.broadcast(t, src)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
