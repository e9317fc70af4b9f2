"""Process groups for `torchrun`: one process per device, NCCL on GPUs, gloo on CPUs.

Without `torchrun` (no `WORLD_SIZE` in the environment) everything runs in one process and the helpers below
are no-ops, so the same code serves a laptop and a cluster. Data parallelism lives here too, out of the loop:
`wrap_student` puts the student behind DDP or shards it with FSDP2 (`train.parallel`), and `gradient_sync` says
when its gradients are synchronised (the last micro-batch of a step).

FSDP2 (`fully_shard`): each unit of `backbone.fsdp_units()` (the blocks), then each head, then the SSLModel at
the root (the patch embedding, tokens and final norm) — one all-gather per block in the forward, one
reduce-scatter per block in the backward. On GPU the units compute in bf16 (`MixedPrecisionPolicy`: bf16
parameters, fp32 gradient reduction; fp32 with `train.precision=fp32`); on CPU in fp32. The optimiser, built
before the wrapping, is pointed at the sharded parameters, and a state it already holds (a resumed run: full
tensors from the consolidated checkpoint) is sharded like them. Only the student is sharded: the teachers stay
full copies on every rank (`ssl/teachers/ema.py` gathers the student's parameters for its update), and
checkpoints gather the shards into the one-file layout (`checkpoint.py`). In one process `fsdp`, like `ddp`,
leaves the student as it is: plain training.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError


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
        raise ConfigError(f"losses.koleo.group_size={size} does not divide the {world} ranks of this run; choose a "
                          f"divisor of {world}")  # fmt: skip
    group, _ = dist.new_subgroups(size)
    return group


def wrap_student(meta, optimizer: torch.optim.Optimizer, info: DistInfo, parallel: str = "ddp",
                 precision: str = "auto") -> None:  # fmt: skip
    """Multi-process runs: the student's gradients are all-reduced by DDP, or its parameters, gradients and
    optimiser state sharded by FSDP2 (`parallel`; `precision`: `train.precision`). One process: nothing to do."""
    if info.world_size == 1:
        return
    if parallel == "fsdp":
        shard_student(meta.student, optimizer, info.device, precision)
        return
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    for name, module, group in meta.data_parallel_units():  # the student; or each distillation student, its group
        ddp = DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False, process_group=group)
        meta.set_student_forward(name, ddp)


def shard_student(student: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, precision: str) -> None:
    """FSDP2 over all ranks: the backbone's units, the heads, the root; the optimiser follows (module docstring)."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    bf16 = device.type == "cuda" and precision != "fp32"  # where the loop autocasts to bf16, on GPU only
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                  reduce_dtype=torch.float32 if bf16 else None)  # fmt: skip
    before = dict(student.named_parameters())
    for unit in [*student.backbone.fsdp_units(), student.dino_head, student.ibot_head]:
        if unit is not None:
            fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(student, mesh=mesh, mp_policy=policy)  # in place: `student_forward` is the student itself
    # The student's outputs are crop-major views (`unflatten`); FSDP2 warns, every step, that an in-place op on
    # them would lose its backward hook. The loss terms never modify them in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPSSLModel\) returned a view tensor")
    follow_parameters(optimizer, {before[name]: p for name, p in student.named_parameters()})


def follow_parameters(optimizer: torch.optim.Optimizer, new: dict[nn.Parameter, nn.Parameter]) -> None:
    """Point `optimizer` at the sharded parameters `new[old]`. Its state (restored from a checkpoint: the same
    full tensors on every rank) is sharded like them, each rank keeping its own slice (no communication)."""
    for group in optimizer.param_groups:
        group["params"] = [new[p] for p in group["params"]]
    state = {new[p]: {k: _shard_like(v, new[p]) for k, v in s.items()} for p, s in optimizer.state.items()}
    optimizer.state.clear()
    optimizer.state.update(state)


def _shard_like(value, param: DTensor):
    if not torch.is_tensor(value) or value.dim() == 0:  # AdamW's step count: one number, kept whole
        return value
    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def gradient_sync(student_forward: nn.Module, micro_batch: int, n_micro_batches: int):
    """The context for the backward pass of one micro-batch: gradients are synchronised (DDP: all-reduced;
    FSDP: reduce-scattered) on the last one only, accumulated locally before."""
    if micro_batch == n_micro_batches - 1:
        return contextlib.nullcontext()
    if isinstance(student_forward, FSDPModule):
        return _fsdp_no_sync(student_forward)
    stack = contextlib.ExitStack()  # the DDP wrapper, or one per distillation student
    for module in student_forward.modules():
        if isinstance(module, DistributedDataParallel):
            stack.enter_context(module.no_sync())
    return stack


@contextlib.contextmanager
def _fsdp_no_sync(module: FSDPModule):
    """FSDP2's `no_sync`: a switch rather than a context, turned back on after this backward pass."""
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)
