"""bf16 vs fp32 feature extraction on one device: speed ratio and feature agreement, in one process.

    PYTHONPATH=. python benchmarks/extract_bf16.py [--backbone random:dinov3_vitb16] [--device cuda] [--n 64]

Writes `--n` generated 640×480 scenes to a temporary folder, extracts them at 448 px with `extract_features`
in fp32 and then under bf16 autocast (same batches), and prints images/s of each, the ratio bf16/fp32, and the
cosine similarity of bf16 to fp32 CLS and patch tokens (mean and minimum). Timings include decoding and
writing, i.e. what `dinokit extract` users see; the first (warm-up) pass is not timed. Random backbones get
LayerScale 0.5 so that every block contributes, as in trained models.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dinokit import read_features
from dinokit.demo_photo import generated_scene
from dinokit.models import backbone_from_spec
from dinokit.tools.extract import extract_features


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="random:dinov3_vitb16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    model = backbone_from_spec(args.backbone).to(args.device)
    if args.backbone.startswith("random:"):  # blocks that act, as trained ones do (LayerScale init is 1e-5)
        with torch.no_grad():
            for name, gamma in model.named_parameters():
                if name.endswith("gamma"):
                    gamma.fill_(0.5)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        for i in range(args.n):
            img = generated_scene(640, seed=i)[:, :480].permute(1, 2, 0).numpy()
            Image.fromarray(np.ascontiguousarray(img)).save(tmp / "images" / f"{i:04d}.png")
        speed = {}
        for dtype in ("fp32", "bf16", "fp32", "bf16"):  # first pair warms up
            out = tmp / f"{dtype}_{len(speed)}"
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            extract_features(model, tmp / "images", out, size=args.size, batch_size=args.batch_size,
                             device=args.device, dtype=dtype, progress=False)  # fmt: skip
            speed[dtype] = args.n / (time.perf_counter() - start)
            speed[f"{dtype}_dir"] = out
        f32, b16 = read_features(speed["fp32_dir"]), read_features(speed["bf16_dir"])
        cls = np.concatenate([cosine(f32[p]["cls"], b16[p]["cls"]) for p in f32])
        patches = np.concatenate([cosine(f32[p]["patches"], b16[p]["patches"]) for p in f32])
    print(f"{args.backbone} on {args.device}, {args.n} images at {args.size} px, batch {args.batch_size}")
    ratio = speed["bf16"] / speed["fp32"]
    print(f"fp32 {speed['fp32']:.1f} img/s, bf16 {speed['bf16']:.1f} img/s, ratio bf16/fp32 {ratio:.2f}×")
    print(f"cosine bf16 vs fp32: CLS mean {cls.mean():.4f} min {cls.min():.4f}; "
          f"patches mean {patches.mean():.4f} min {patches.min():.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
