"""Images per second of a full SSL training step on one GPU, bf16 autocast (for the lead; needs CUDA).

Default work: ViT-L/16 (`dinov3_vitl16`: RoPE, 4 registers) at the released per-GPU batch of the DINOv2 ViT-L/16
recipe (64 images; 2 global crops at 224 and 8 local crops at 96; drop path 0.3; iBOT masking as released),
separate DINO / iBOT heads with K = 65536, Sinkhorn-Knopp targets, KoLeo, AdamW, per-module clipping, EMA.
Synthetic pixels (no decoding): this measures the training step, not the data loader. About 1–2 minutes on an
H100 (model build, 3 warm-up steps, 10 timed steps).

`--parallel fsdp` shards the student with FSDP2 as `train.parallel=fsdp` does (`distributed.shard_student`) over
a process group of this one process: on one GPU that measures what FSDP's machinery (per-block all-gathers and
reduce-scatters, bf16 parameters with fp32 gradient reduction) costs against plain DDP-style training, not
the memory it saves on several GPUs.

    PYTHONPATH=. python benchmarks/train_step_gpu.py      # [--batch 64] [--steps 10] [--compile] [--parallel fsdp]
    PYTHONPATH=. python benchmarks/train_step_gpu.py --device cpu --backbone dinov3_test --batch 2 --steps 1 \\
        --global-size 64 --local-size 32 [--parallel fsdp]     # a smoke test of the script itself

Prints the median step time, images/s (images of the batch per second, as the released logs count them) and
the peak GPU memory.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="dinov3_vitl16")
    p.add_argument("--batch", type=int, default=64, help="images per GPU")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--local-number", type=int, default=8)
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone blocks")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    p.add_argument("--parallel", choices=("ddp", "fsdp"), default="ddp", help="fsdp: FSDP2 over this one process")
    args = p.parse_args()

    from dinokit.config import PretrainConfig, load_config
    from dinokit.data.collate import collate_views, make_masks
    from dinokit.data.masking import BlockMaskGenerator
    from dinokit.train.build import build
    from dinokit.train.distributed import DistInfo, shard_student
    from dinokit.train.loop import train_step

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(Path(tmp) / "x.png")  # the builder opens a source
        cfg = load_config(PretrainConfig, None, [
            f"data.path={tmp}", f"output_dir={tmp}/run", f"model.backbone={args.backbone}",
            "model.backbone_options={drop_path_rate: 0.3}",
            "model.dino_head={n_prototypes: 65536}", "model.ibot_head={n_prototypes: 65536}",
            "teacher.target=sinkhorn_knopp", f"crops.global_size={args.global_size}",
            f"crops.local_size={args.local_size}", f"crops.local_number={args.local_number}",
            f"train.batch_size={args.batch}", f"train.compile={str(args.compile).lower()}",
            f"train.activation_checkpointing={str(args.checkpointing).lower()}",
            "optim.warmup_steps=0", "optim.freeze_last_layer_steps=0",
        ])  # fmt: skip
        cfg.validate()
        parts = build(cfg, DistInfo(device=device))
    B, G, L = args.batch, 2, args.local_number
    grid = (args.global_size // 16, args.global_size // 16)
    views = [([torch.randn(3, args.global_size, args.global_size) for _ in range(G)],
              [torch.randn(3, args.local_size, args.local_size) for _ in range(L)]) for _ in range(B)]  # fmt: skip
    masks = make_masks(G * B, BlockMaskGenerator(grid), random.Random(0), 0.5, (0.1, 0.5))
    batch = collate_views(views, masks).to(device)
    meta, opt = parts.meta, parts.optimizer
    if args.parallel == "fsdp":
        import os

        import torch.distributed as dist

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
        shard_student(meta.student, opt, device, "auto")
    meta.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for step in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        train_step(meta, opt, [batch], step, 3.0, autocast, device)
        sync()
        times.append(time.perf_counter() - t0)
    timed = times[args.warmup :]
    med = statistics.median(timed)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{name}; step times (s): " + ", ".join(f"{t:.3f}" for t in timed))
    print(f"{args.backbone} B={B} {G}×{args.global_size}+{L}×{args.local_size} K=65536 bf16 {args.parallel}: "
          f"{med:.3f} s/step, {B / med:.1f} images/s, peak GPU memory {peak:.1f} GiB")  # fmt: skip


if __name__ == "__main__":
    main()
