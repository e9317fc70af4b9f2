"""DDP with 2 gloo processes equals 1 process on the same global batch and crops: same DINO and iBOT losses and
the same weights after two optimiser steps (to 1e-5), for both teacher targets (Sinkhorn-Knopp sums over the
ranks; the centre is averaged over them). KoLeo (per-rank by design) and stochastic depth / RoPE jitter (random
per rank) are off for this comparison."""

import contextlib
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from dinokit.config import PretrainConfig, load_config
from dinokit.data.collate import Batch
from dinokit.data.stream import SSLStream
from dinokit.train.build import build
from dinokit.train.distributed import DistInfo
from dinokit.train.loop import train_step

TINY_CPU = Path(__file__).parents[2] / "configs" / "pretrain" / "tiny_cpu.yaml"
STEPS = 2
OVERRIDES = [
    "model.backbone=dinov3_test",
    "model.backbone_options={drop_path_rate: 0.0, rope_rescale: null}",
    "crops.global_size=64",
    "crops.local_size=32",
    "crops.local_number=2",
    "model.dino_head={n_prototypes: 64, hidden_dim: 64, bottleneck_dim: 32}",
    "model.ibot_head={n_prototypes: 48, hidden_dim: 64, bottleneck_dim: 32}",
    "losses={dino: {}, ibot: {}}",
    "optim.warmup_steps=1",
    "optim.freeze_last_layer_steps=0",
    "teacher.momentum=0.9",
    "data.num_workers=0",
]


def config(data: str, target: str, batch_size: int) -> PretrainConfig:
    return load_config(PretrainConfig, TINY_CPU, [*OVERRIDES, f"data.path={data}", f"teacher.target={target}",
                                                  f"train.batch_size={batch_size}"])  # fmt: skip


def run_steps(cfg: PretrainConfig, info: DistInfo, batches_of_step) -> dict:
    torch.manual_seed(0)
    parts = build(cfg, info)
    meta = parts.meta
    if info.world_size > 1:
        meta.student_forward = DistributedDataParallel(meta.student, broadcast_buffers=False)
    meta.train()
    initial = {k: v.clone() for k, v in meta.student.state_dict().items()}
    losses = []
    for step in range(STEPS):
        r = train_step(meta, parts.optimizer, [batches_of_step(parts, step)], step, 3.0, contextlib.nullcontext(),
                       info.device)  # fmt: skip
        losses.append({k: float(r.metrics[k]) for k in ("dino", "ibot")})
    moved = max((v - initial[k]).abs().max().item() for k, v in meta.student.state_dict().items())
    return {"losses": losses, "student": meta.student.state_dict(), "teacher": meta.teacher.model.state_dict(),
            "moved": moved}  # fmt: skip


def _worker(rank: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    info = DistInfo(rank=rank, world_size=2, local_rank=rank)
    results = {}
    for target in ("sinkhorn_knopp", "centering"):
        cfg = config(data, target, batch_size=3)
        results[target] = run_steps(cfg, info, lambda parts, step: SSLStream(**parts.stream_args).batch(step))
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def merge(parts: list[Batch]) -> Batch:
    """The one-process batch holding the ranks' batches: crop-major over all ranks' images."""
    G = parts[0].n_global_crops
    L = parts[0].local_crops.shape[0] // parts[0].batch_size

    def crop_major(name: str, n_crops: int) -> torch.Tensor:
        return torch.cat([getattr(p, name).unflatten(0, (n_crops, -1)) for p in parts], dim=1).flatten(0, 1)

    masks = crop_major("masks", G)
    weight = (1.0 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    return Batch(crop_major("global_crops", G), crop_major("local_crops", L), masks,
                 masks.flatten().nonzero().flatten(), weight, G)  # fmt: skip


def test_two_gloo_processes_equal_one_process(image_folder, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(image_folder), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for target in ("sinkhorn_knopp", "centering"):

        def global_batch(parts, step):
            args = {**parts.stream_args, "world_size": 2, "batch_size": 3}
            return merge([SSLStream(**{**args, "rank": r}).batch(step) for r in range(2)])

        single = run_steps(config(str(image_folder), target, batch_size=6), DistInfo(), global_batch)
        assert single["moved"] > 1e-4  # the steps changed the weights: the comparison below means something
        for step in range(STEPS):
            for term in ("dino", "ibot"):
                ddp = sum(r[target]["losses"][step][term] for r in ranks) / 2
                assert abs(ddp - single["losses"][step][term]) < 1e-5, (target, step, term)
        for key in ("student", "teacher"):
            assert ranks[0][target][key].keys() == single[key].keys()
            for name, value in single[key].items():
                torch.testing.assert_close(ranks[0][target][key][name], value, rtol=1e-5, atol=1e-5, msg=name)
                assert torch.equal(ranks[0][target][key][name], ranks[1][target][key][name])


def _train_worker(rank: int, port: int, overrides: list[str]) -> None:
    from dinokit.train import distributed as D
    from dinokit.train.loop import train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))  # what torchrun sets  # fmt: skip
    torch.set_num_threads(1)
    train(load_config(PretrainConfig, TINY_CPU, overrides))
    D.shutdown()


@pytest.mark.slow
def test_a_two_process_run_resumes_on_one_process(image_folder, tmp_path):
    from dinokit.train.checkpoint import checkpoint_files
    from dinokit.train.logging import read_metrics
    from dinokit.train.loop import train

    overrides = [*OVERRIDES[:-1], f"data.path={image_folder}", f"output_dir={tmp_path}", "train.batch_size=2",
                 "train.log_every=1", "losses={dino: {}, ibot: {}, koleo: {}}", "data.num_workers=1"]  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_train_worker, args=(port, [*overrides, "train.steps=2"]), nprocs=2, join=True)
    state = torch.load(checkpoint_files(tmp_path / "checkpoints")[-1], weights_only=True)
    assert state["step"] == 2 and state["world_size"] == 2 and len(state["rng"]) == 2
    train(load_config(PretrainConfig, TINY_CPU, [*overrides, "train.steps=3"]))  # one process continues
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    resumed = torch.load(checkpoint_files(tmp_path / "checkpoints")[-1], weights_only=True)
    assert resumed["world_size"] == 1
    # 2 ranks × 2 images × 2 steps = 8 images seen → the single process continued at its batch 4 (of 2 images)
    assert resumed["data"]["next_batch"] == 5
    assert (tmp_path / "teacher_backbone" / "model.safetensors").is_file()
