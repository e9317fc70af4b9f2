"""FSDP2 (`train.parallel=fsdp`) with 2 gloo processes on CPU equals DDP and one process on the same global batch
(the tiny model and setup of `test_ddp.py`): the DINO and iBOT losses, the gradient norms (clipping engages: they
are far above 3) and the student and EMA-teacher weights after two optimiser steps agree to 1e-5, with one
micro-batch per step and with two (gradient accumulation without synchronisation on the first). Checkpoints
cross world sizes: one written after a step by 2 FSDP ranks, continued in one process, and one written by one
process, continued on 2 FSDP ranks, both end where an uninterrupted one-process run ends. Through `train()`:
2 FSDP ranks with gradient accumulation write a consolidated checkpoint that one process resumes, and the final
`teacher_backbone/` loads with `load_backbone`; a Gram teacher copies the (unsharded) EMA teacher on the way.

Only on GPU (not covered here): the bf16 `MixedPrecisionPolicy` (bf16 parameters in the forward, fp32 gradient
reduction; its results differ from DDP + autocast by bf16 rounding), NCCL, and FSDP combined with
`train.compile` or activation checkpointing. Everything else ran on CPU with gloo and torch 2.13; nothing is
skipped.
"""

import contextlib
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinokit.config import PretrainConfig, load_config
from dinokit.data.stream import SSLStream
from dinokit.models import load_backbone
from dinokit.train.build import build
from dinokit.train.checkpoint import consolidated, restore_training_state, save_checkpoint, training_state
from dinokit.train.distributed import DistInfo, gradient_sync, wrap_student
from dinokit.train.loop import train_step
from dinokit.train.monitor import HealthMonitor

from .test_ddp import OVERRIDES, TINY_CPU, _train_worker, config, merge

STEPS = 2
TARGET = "sinkhorn_knopp"  # sums over the ranks: the cross-rank path of the targets


def run_steps(cfg: PretrainConfig, info: DistInfo, parallel: str, micro_batches, steps=range(STEPS),
              resume_from: Path | None = None, save_to: Path | None = None) -> dict:  # fmt: skip
    """`steps` optimiser steps of `micro_batches(parts, step)` (a list); resumed from a checkpoint file, and
    saving one after the first step into `save_to`. Returns rank-local losses and norms, full weights."""
    torch.manual_seed(0)
    parts = build(cfg, info)
    meta = parts.meta
    if resume_from is not None:
        assert restore_training_state(parts, torch.load(resume_from, weights_only=True)) == ""
    wrap_student(meta, parts.optimizer, info, parallel)
    meta.train()
    initial = {k: v.clone() for k, v in meta.teacher.state_dict().items()}
    losses, norms = [], []
    for step in steps:
        r = train_step(meta, parts.optimizer, micro_batches(parts, step), step, 3.0, contextlib.nullcontext(),
                       info.device)  # fmt: skip
        losses.append({k: float(r.metrics[k]) for k in ("dino", "ibot")})
        norms.append({k: float(v) for k, v in r.norms.items()})
        if save_to is not None and step == steps[0]:
            state = training_state(cfg, parts, HealthMonitor(), info, step + 1, step + 1)  # every rank: a collective
            if state is not None:
                save_checkpoint(save_to, step + 1, state)
    teacher = meta.teacher.state_dict()
    moved = max((v - initial[k]).abs().max().item() for k, v in teacher.items())
    return {"losses": losses, "norms": norms, "student": consolidated(meta.student.state_dict(), main=True),
            "teacher": teacher, "moved": moved}  # fmt: skip


def own_batches(n_micro: int):
    """This rank's micro-batches of a step: batches `step·n … step·n + n − 1` of its stream."""
    return lambda parts, step: [SSLStream(**parts.stream_args).batch(step * n_micro + i) for i in range(n_micro)]


def global_batches(n_micro: int):
    """The one-process micro-batches holding both ranks' micro-batches of a step."""

    def batches(parts, step):
        args = {**parts.stream_args, "world_size": 2, "batch_size": 3}
        return [merge([SSLStream(**{**args, "rank": r}).batch(step * n_micro + i) for r in range(2)])
                for i in range(n_micro)]  # fmt: skip

    return batches


def first_micro_batch_stays_local(cfg: PretrainConfig, info: DistInfo) -> bool:
    """FSDP's backward pass of the first of 2 micro-batches leaves no sharded gradient: nothing was
    reduce-scattered (the gradients wait, unsharded, for the last micro-batch)."""
    parts = build(cfg, info)
    meta = parts.meta
    wrap_student(meta, parts.optimizer, info, "fsdp")
    with gradient_sync(meta.student_forward, 0, 2):
        loss, _ = meta(own_batches(1)(parts, 0)[0], meta.schedules(0))
        loss.backward()
    return all(p.grad is None for p in meta.student.parameters())


def _worker(rank: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    info = DistInfo(rank=rank, world_size=2, local_rank=rank)
    cfg = config(data, TARGET, batch_size=3)
    out = Path(out)
    one_process_checkpoint = out / "single_checkpoints" / "step_00000001.pt"
    results = {
        "fsdp": run_steps(cfg, info, "fsdp", own_batches(1), save_to=out / "fsdp_checkpoints"),
        "ddp": run_steps(cfg, info, "ddp", own_batches(1)),
        "accumulated": run_steps(cfg, info, "fsdp", own_batches(2)),
        "from_one_process": run_steps(cfg, info, "fsdp", own_batches(1), range(1, STEPS), one_process_checkpoint),
        "first_micro_batch_stays_local": first_micro_batch_stays_local(cfg, info),
    }
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def assert_same_run(ranks: list[dict], single: dict, steps=range(STEPS)) -> None:
    """2-rank results (losses averaged over the ranks) against one process's, to 1e-5."""
    for i, _ in enumerate(steps):
        for term in ("dino", "ibot"):
            two = sum(r["losses"][i][term] for r in ranks) / 2
            assert abs(two - single["losses"][i][term]) < 1e-5, (i, term)
        for name, norm in single["norms"][i].items():
            assert all(abs(r["norms"][i][name] - norm) <= 1e-5 * max(norm, 1.0) for r in ranks), (i, name)
    for key in ("student", "teacher"):
        assert max_difference(ranks[0][key], single[key]) < 1e-5, key
        assert max_difference(ranks[0][key], ranks[1][key]) == 0.0, key


def test_fsdp_equals_ddp_and_one_process_and_checkpoints_cross_world_sizes(image_folder, tmp_path):
    data = str(image_folder)
    single_cfg = config(data, TARGET, batch_size=6)
    # one process ("fsdp" there is plain training), checkpointing after its first step for the 2 ranks to resume
    single = run_steps(single_cfg, DistInfo(), "fsdp", global_batches(1), save_to=tmp_path / "single_checkpoints")
    assert single["moved"] > 1e-4  # the steps changed the weights: the comparisons below mean something
    assert min(single["norms"][0].values()) > 3.0  # the gradients were clipped
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, data, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    assert_same_run([r["fsdp"] for r in ranks], single)
    assert_same_run([r["ddp"] for r in ranks], single)
    for key in ("student", "teacher"):
        assert max_difference(ranks[0]["fsdp"][key], ranks[0]["ddp"][key]) < 1e-5, key

    assert all(r["first_micro_batch_stays_local"] for r in ranks)
    accumulated = run_steps(single_cfg, DistInfo(), "fsdp", global_batches(2))
    assert_same_run([r["accumulated"] for r in ranks], accumulated)

    later = range(1, STEPS)
    from_one_process = [r["from_one_process"] for r in ranks]
    assert_same_run(from_one_process, {**single, "losses": single["losses"][1:], "norms": single["norms"][1:]}, later)
    fsdp_checkpoint = torch.load(tmp_path / "fsdp_checkpoints" / "step_00000001.pt", weights_only=True)
    assert fsdp_checkpoint["world_size"] == 2
    assert not any(isinstance(v, torch.distributed.tensor.DTensor) for v in fsdp_checkpoint["student"].values())
    from_two_ranks = run_steps(single_cfg, DistInfo(), "fsdp", global_batches(1), steps=later,
                               resume_from=tmp_path / "fsdp_checkpoints" / "step_00000001.pt")  # fmt: skip
    for key in ("student", "teacher"):
        assert max_difference(from_two_ranks[key], single[key]) < 1e-5, key


def test_a_two_rank_fsdp_run_with_accumulation_and_gram_resumes_on_one_process(image_folder, tmp_path):
    from dinokit.train.checkpoint import checkpoint_files
    from dinokit.train.logging import read_metrics
    from dinokit.train.loop import train

    overrides = [*OVERRIDES, f"data.path={image_folder}", f"output_dir={tmp_path}", "train.batch_size=2",
                 "train.log_every=1", "train.parallel=fsdp", "train.grad_accumulation=2",
                 "losses={dino: {}, ibot: {}, gram: {}}", "gram={first_update: 0, update_every: 1}"]  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_train_worker, args=(port, [*overrides, "train.steps=2"]), nprocs=2, join=True)
    state = torch.load(checkpoint_files(tmp_path / "checkpoints")[-1], weights_only=True)
    assert state["step"] == 2 and state["world_size"] == 2
    assert int(state["extra_teachers"]["gram"]["copies"]) == 3  # of the EMA teacher: at the start, after each step
    train(load_config(PretrainConfig, TINY_CPU, [*overrides, "train.steps=3"]))  # one process continues
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    backbone = load_backbone(tmp_path / "teacher_backbone")
    resumed = torch.load(checkpoint_files(tmp_path / "checkpoints")[-1], weights_only=True)
    assert resumed["world_size"] == 1
    shapes = [[s["exp_avg"].shape for s in c["optimizer"]["state"].values()] for c in (state, resumed)]
    assert shapes[0] == shapes[1]  # the 2 ranks saved whole moments, not one rank's shard
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, resumed["teacher"][f"backbone.{name}"]), name
