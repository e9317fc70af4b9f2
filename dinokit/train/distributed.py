"""Process groups for `torchrun`: one process per device, NCCL on GPUs, gloo on CPUs.

Without `torchrun` (no `WORLD_SIZE` in the environment) everything runs in one process and the helpers below
are no-ops, so the same code serves a laptop and a cluster. Data parallelism lives here too, out of the loop:
`wrap_student` puts the student behind DDP and `gradient_sync` says when its gradients are all-reduced.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group `torchrun` set up (or none); pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not is_enabled():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if is_enabled() else 0
    return DistInfo(rank, dist.get_world_size() if is_enabled() else 1, local_rank, device)


def is_enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def shutdown() -> None:
    if is_enabled():
        dist.destroy_process_group()


def barrier() -> None:
    if is_enabled():
        dist.barrier()


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Average scalar tensors over all ranks (one collective), as Python floats."""
    if not values:
        return {}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    if is_enabled():
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.tolist()))


def any_rank(flag: torch.Tensor) -> bool:
    """True when the boolean tensor `flag` is true on at least one rank (one collective, one sync)."""
    flag = flag.float().reshape(1)
    if is_enabled():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def gather_objects(obj) -> list:
    """`obj` of every rank (picklable), in rank order; `[obj]` in one process."""
    if not is_enabled():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@functools.cache
def subgroup(size: int):
    """This rank's group among groups of `size` consecutive ranks (as DINOv3 groups KoLeo's neighbours; all ranks
    when there are fewer); None in one process or when `size` is 1 (per device). Every rank must call it."""
    if not is_enabled() or size <= 1:
        return None
    world = dist.get_world_size()
    size = min(size, world)
    if world % size:
        raise ValueError(f"a group size of {size} ranks does not divide the {world} ranks of this run")
    group, _ = dist.new_subgroups(size)
    return group


def wrap_student(meta, info: DistInfo) -> None:
    """Multi-process runs: the student's forward goes through DDP (gradients all-reduced in the backward pass)."""
    if info.world_size > 1:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        meta.student_forward = DistributedDataParallel(meta.student, device_ids=device_ids, broadcast_buffers=False)


def gradient_sync(student_forward: nn.Module, micro_batch: int, n_micro_batches: int):
    """The context for the backward pass of one micro-batch: gradients are all-reduced on the last one only."""
    if isinstance(student_forward, DistributedDataParallel) and micro_batch < n_micro_batches - 1:
        return student_forward.no_sync()
    return contextlib.nullcontext()
