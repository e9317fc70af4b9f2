"""What does a second student cost? The time of a distillation step with two students (one teacher pass shared)
against the two single-student runs it replaces (each with its own teacher pass), measured in one process on the
same batches, alternating between the three set-ups so that the machine's drift hits them alike.

Peer: two separate single-student runs (the sum of their step times). Reported: the two-student step as a fraction
of that sum, images/s of each set-up, and the teacher passes per step (1 with two students). The teacher is a
randomly initialised backbone (timing only; feature distillation, as from a released backbone file).

    PYTHONPATH=. python benchmarks/distill_step.py                     # CPU: the tiny_cpu recipe's models, 64 px
    PYTHONPATH=. python benchmarks/distill_step.py --teacher dinov3_vitl16 --students dinov3_vits16 \
        dinov3_convnext_tiny --size 224 --local-size 96 --batch 64 --device cuda     # the GPU case (bf16)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dinokit.config import load_train_config
from dinokit.data.stream import SSLStream
from dinokit.models import create_backbone, save_backbone
from dinokit.train.build import build
from dinokit.train.distributed import DistInfo
from dinokit.train.loop import train_step

TINY_STUDENTS = {
    "dinov3_vitt16": {"embed_dim": 128, "num_heads": 2, "depth": 3, "layerscale_init": 0.1},
    "dinov3_convnext_tiny": {"depths": [1, 1, 2, 1], "dims": [32, 64, 128, 256], "layerscale_init": 0.1},
}


def setup(names: list[str], args, folder: Path, teacher: Path, device: torch.device):
    students = [{"name": f"s{i}", "backbone": n, "backbone_options": TINY_STUDENTS.get(n, {}) if args.tiny else {}}
                for i, n in enumerate(names)]  # fmt: skip
    overrides = [f"data.path={folder}", f"distill.teacher={teacher}", "distill.students=" + json.dumps(students),
                 f"crops.global_size={args.size}", f"crops.local_size={args.local_size}",
                 f"train.batch_size={args.batch}", "data.num_workers=0", "optim.warmup_steps=0",
                 "optim.freeze_last_layer_steps=0"]  # fmt: skip
    cfg = load_train_config("distill/tiny_cpu" if args.tiny else "distill/dinov3_vitl16_to_small", overrides)
    torch.manual_seed(0)
    parts = build(cfg, DistInfo(device=device))
    parts.meta.train()
    return parts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="dinov3_vitt16")
    p.add_argument("--teacher-options", default=None, help='JSON (default: the demo\'s 4 blocks for the tiny teacher)')
    p.add_argument("--students", nargs=2, default=["dinov3_vitt16", "dinov3_convnext_tiny"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--local-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per set-up and round")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    args.tiny = args.teacher == "dinov3_vitt16"
    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    for i in range(2 * args.batch):
        side = args.size + 32
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(tmp / f"{i}.png")
    torch.manual_seed(0)
    options = json.loads(args.teacher_options or ('{"depth": 4, "layerscale_init": 0.1}' if args.tiny else "{}"))
    save_backbone(create_backbone(args.teacher, **options), tmp / "teacher")
    setups = {"both": args.students, "first": args.students[:1], "second": args.students[1:]}
    parts = {k: setup(v, args, tmp, tmp / "teacher", device) for k, v in setups.items()}
    batches = [SSLStream(**parts["both"].stream_args).batch(i).to(device) for i in range(args.steps)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    times: dict[str, list[float]] = {k: [] for k in setups}
    forwards = {}
    for rnd in range(args.rounds + 1):  # round 0 warms up
        for name, part in parts.items():
            before = part.meta.teacher.forwards
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i, batch in enumerate(batches):
                train_step(part.meta, part.optimizer, [batch], rnd * args.steps + i, 3.0, autocast, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rnd:
                times[name].append((time.perf_counter() - t0) / args.steps)
            forwards[name] = (part.meta.teacher.forwards - before) / args.steps
    step = {k: statistics.median(v) for k, v in times.items()}
    separate = step["first"] + step["second"]
    print(f"teacher {args.teacher}, students {args.students}, {args.size} px, batch {args.batch}, {device}, "
          f"threads {torch.get_num_threads()}")  # fmt: skip
    for k, v in step.items():
        print(f"  {k:7s} {v * 1000:8.1f} ms/step  {args.batch / v:8.1f} img/s  teacher passes/step {forwards[k]:.0f}")
    print(f"two students in one run / two single-student runs: {step['both'] / separate:.3f} "
          f"(second student costs {(step['both'] - step['first']) / step['second']:.2f} of its own run)")
    with contextlib.suppress(OSError):
        import shutil

        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
