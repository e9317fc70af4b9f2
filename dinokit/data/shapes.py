"""A held-out synthetic family for "does the recipe learn form?": flat shapes whose class is their outline only.

Eight classes (`SHAPES`): disk, ring, square, triangle, star, cross, bar, crescent. Each image is one shape at a
random position (inside the frame), size (30–60 % of the side), rotation and, for the anisotropic ones, aspect,
filled with a uniformly random RGB colour, over one of three backgrounds drawn independently of the class:
- a flat random colour;
- stripes of two random colours at a random orientation and period;
- smooth coloured noise (a random colour modulated by low-frequency noise) with pixel noise on top.
Colour therefore says nothing about the class, and a self-supervised run that tells images apart by their colours
learns nothing a shape classifier needs — which is the failure this family exists to expose (docs/training.md,
"A held-out family"). Edges are anti-aliased (the mask is rendered at 4× and averaged).

`dinokit data synth OUT --family shapes` (`write_shapes`) writes `pretrain/` (100 unlabelled images per class) and
ImageNet-style `classify/{train,val}/<shape>/` (60 and 50 per class) at 64 px, with a `manifest.json`.

Determinism: image i of each part is rendered from its own generator seeded with (seed, part, i), so the output
does not depend on the number of workers. Deviation from "real" data: no occlusion, lighting or texture on the
shape; the shape is always whole and in focus.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

SHAPES = ("disk", "ring", "square", "triangle", "star", "cross", "bar", "crescent")
SUPERSAMPLE = 4  # the mask is drawn at 4× and averaged: anti-aliased edges at 64 px


def _mask(shape: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Inside-ness of `shape` at shape coordinates (u, v) (unit radius, centred, already rotated) → bool mask."""
    r = np.hypot(u, v)
    if shape == "disk":
        return r <= 1
    if shape == "ring":
        return (r <= 1) & (r >= rng.uniform(0.55, 0.7))
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.75
    if shape == "triangle":  # equilateral, circumradius 1: three half-planes
        a = np.arctan2(v, u)
        return r * np.cos(((a + np.pi / 2) % (2 * np.pi / 3)) - np.pi / 3) <= 0.5
    if shape == "star":  # five points: the radius limit swings between an inner and the outer radius
        a = np.arctan2(v, u) + np.pi / 2
        inner = rng.uniform(0.38, 0.5)
        t = np.abs(((a % (2 * np.pi / 5)) / (2 * np.pi / 5)) * 2 - 1)  # 1 at a point, 0 between points
        return r <= inner + (1 - inner) * t**1.5
    if shape == "cross":
        w = rng.uniform(0.28, 0.38)
        return ((np.abs(u) <= w) & (np.abs(v) <= 1)) | ((np.abs(v) <= w) & (np.abs(u) <= 1))
    if shape == "bar":
        return (np.abs(u) <= 1) & (np.abs(v) <= rng.uniform(0.18, 0.3))
    if shape == "crescent":  # a disk minus a shifted disk
        shift = rng.uniform(0.45, 0.6)
        return (r <= 1) & (np.hypot(u - shift, v) > rng.uniform(0.75, 0.9))
    raise ValueError(f"unknown shape {shape!r}")


BACKGROUNDS = ("flat", "stripes", "noise")


def _background(rng: np.random.Generator, size: int, kinds: tuple[str, ...] = BACKGROUNDS) -> np.ndarray:
    """A class-independent background [size, size, 3] in [0, 1]: flat, striped or smooth coloured noise, one of
    `kinds` at random."""
    kind = BACKGROUNDS.index(kinds[rng.integers(len(kinds))])
    if kind == 0:
        return np.broadcast_to(rng.uniform(0, 1, 3), (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 1:
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.08, 0.3)
        stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
        a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        return np.where(stripes[..., None] > 0, a, b)
    coarse = rng.normal(size=(5, 5, 3))  # low-frequency noise, upsampled bilinearly
    idx = np.linspace(0, 4, size)
    i0 = np.minimum(idx.astype(int), 3)
    f = (idx - i0)[:, None]
    rows = coarse[i0] * (1 - f[..., None]) + coarse[i0 + 1] * f[..., None]  # [size, 5, 3]
    smooth = rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]  # [size, size, 3]
    return np.clip(rng.uniform(0.2, 0.8, 3) + 0.25 * smooth, 0, 1)


def shape_image(rng: np.random.Generator, size: int, shape: int, backgrounds: tuple[str, ...] = BACKGROUNDS,
                rotate: bool = True) -> np.ndarray:  # fmt: skip
    """One image [size, size, 3] uint8 of class `shape` (an index into SHAPES). Diagnostics: `backgrounds` keeps
    only some kinds (e.g. "flat": no background texture to tell images apart by); `rotate=False` draws every shape
    upright, as most objects appear in photographs (multi-crop teaches no rotation invariance)."""
    s = size * SUPERSAMPLE
    radius = rng.uniform(0.15, 0.3) * s  # the shape spans 30–60 % of the side
    stretch = rng.uniform(0.8, 1.25)  # a mild aspect change: form, not exact proportions
    reach = radius * max(stretch, 1 / stretch)  # how far the stretched shape can extend from its centre
    cx, cy = rng.uniform(reach, s - reach, 2)
    angle = rng.uniform(0, 2 * np.pi)
    angle = angle if rotate else 0.0  # drawn either way: the rest of the image is the same
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    dx, dy = (xx - cx) / radius, (yy - cy) / radius
    u = (dx * math.cos(angle) + dy * math.sin(angle)) * stretch  # [s, s] shape coordinates
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / stretch
    mask = _mask(SHAPES[shape], u, v, rng).astype(np.float32)
    cover = mask.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean((1, 3))[..., None]  # [size, size, 1]
    image = cover * rng.uniform(0, 1, 3) + (1 - cover) * _background(rng, size, backgrounds)
    image = image + rng.normal(0, 0.03, image.shape)  # sensor noise
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------- the set
@dataclass(frozen=True)
class ShapesConfig:
    """How much `write_shapes` writes: per class, unlabelled pretraining images and labelled train / val ones."""

    size: int = 64
    pretrain_per_class: int = 100
    train_per_class: int = 60
    val_per_class: int = 50

    def scaled(self, factor: float) -> ShapesConfig:
        """Every count multiplied by `factor` (at least one of each)."""
        counts = {k: max(1, round(v * factor)) for k, v in asdict(self).items() if k != "size"}
        return replace(self, **counts)


PARTS = ("pretrain", "train", "val")  # part p, image i is drawn from the generator seeded with (seed, p, i)


def _job(args) -> None:
    root, seed, size, part, index, shape = args
    image = shape_image(np.random.default_rng([seed, PARTS.index(part), index]), size, shape)
    folder = root / "pretrain" if part == "pretrain" else root / "classify" / part / SHAPES[shape]
    Image.fromarray(image).save(folder / f"{index:06d}.png", compress_level=1)


def write_shapes(out: str | os.PathLike, seed: int = 0, config: ShapesConfig = ShapesConfig(),
                 workers: int | None = None, progress: bool = True) -> Path:  # fmt: skip
    """Write the shape family under `out`: `pretrain/` (unlabelled, classes in turn) and ImageNet-style
    `classify/{train,val}/<shape>/`, atomically (a temporary folder renamed at the end). An existing `out` written
    with the same seed and config is kept as it is; another one is refused (FileExistsError)."""
    out = Path(out)
    manifest = {"generator": "dinokit.data.shapes", "version": 1, "seed": seed, "config": asdict(config),
                "classes": list(SHAPES)}  # fmt: skip
    if (out / "manifest.json").exists():
        if json.loads((out / "manifest.json").read_text()) == manifest:
            return out
        raise FileExistsError(f"{out} holds a different synthetic set; choose another folder or remove it")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "pretrain").mkdir(parents=True)
    for part in ("train", "val"):
        for name in SHAPES:
            (tmp / "classify" / part / name).mkdir(parents=True)
    per_part = {"pretrain": config.pretrain_per_class, "train": config.train_per_class, "val": config.val_per_class}
    jobs = [(tmp, seed, config.size, part, i, i % len(SHAPES))  # classes in turn: balanced in every part
            for part, n in per_part.items() for i in range(n * len(SHAPES))]  # fmt: skip
    bar = dict(total=len(jobs), desc="shape images", unit="img", disable=not progress)
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in tqdm(pool.map(_job, jobs, chunksize=32), **bar):
                pass
    else:
        for job in tqdm(jobs, **bar):
            _job(job)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out
