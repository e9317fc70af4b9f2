"""Multi-crop augmentation: one batch rendered crop slot by crop slot (`MultiCrop.batch`, what training uses)
against the same augmentations one image at a time (`MultiCrop.__call__` per image, then stacked: how a
per-sample dataset pipeline such as torchvision's transforms runs), in one process, alternating.

Both paths draw the same random decisions from the same per-sample generators, so their crops must agree
exactly; the script checks that before it times anything.

    python benchmarks/multicrop_throughput.py                  # the demo's settings (the docs/benchmarks.md rows)
    python benchmarks/multicrop_throughput.py --size 256 --global-size 224 --local-size 96 --local-number 8
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from dinokit.data.multicrop import MultiCrop


def one_at_a_time(views: MultiCrop, images, seeds) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-sample path, stacked crop-major like `MultiCrop.batch`."""
    crops = [views(img, random.Random(s)) for img, s in zip(images, seeds)]
    global_crops = torch.stack([c[0][k] for k in range(2) for c in crops])
    local_crops = torch.stack([c[1][k] for k in range(views.local_number) for c in crops])
    return global_crops, local_crops


def batched(views: MultiCrop, images, seeds) -> tuple[torch.Tensor, torch.Tensor]:
    return views.batch(images, [random.Random(s) for s in seeds])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=96, help="side of the source images")
    p.add_argument("--global-size", type=int, default=96)
    p.add_argument("--local-size", type=int, default=48)
    p.add_argument("--local-number", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    views = MultiCrop(args.global_size, (0.5, 1.0), args.local_number, args.local_size, (0.15, 0.5))
    g = torch.Generator().manual_seed(0)
    shape = (3, args.size, args.size)
    images = [torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) for _ in range(args.batch)]
    seeds = [f"bench:{i}" for i in range(args.batch)]

    a, b = batched(views, images, seeds), one_at_a_time(views, images, seeds)
    diff = max((x - y).abs().max().item() for x, y in zip(a, b))
    print(f"max abs difference between the two paths: {diff:.1e}")

    times = {"batched": [], "one at a time": []}
    for r in range(args.repeats):
        for name, fn in (("batched", batched), ("one at a time", one_at_a_time)):
            seeds = [f"bench:{r}:{i}" for i in range(args.batch)]
            start = time.perf_counter()
            fn(views, images, seeds)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"batch {args.batch} of {args.size} px → 2 × {args.global_size} px + {args.local_number} × "
          f"{args.local_size} px, {torch.get_num_threads()} threads, median of {args.repeats}:")  # fmt: skip
    for name, t in med.items():
        print(f"  {name:14s} {1000 * t:8.1f} ms per batch  ({args.batch / t:7.1f} images/s)")
    print(f"  ratio: batched is {med['one at a time'] / med['batched']:.2f}× the one-at-a-time throughput")


if __name__ == "__main__":
    main()
