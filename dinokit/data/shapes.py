"""A held-out synthetic family for "does the recipe learn form?": flat shapes whose class is their outline only.

Eight classes (`SHAPES`): disk, ring, square, triangle, star, cross, bar, crescent. Each image is one shape at a
random position (inside the frame), size (30–60 % of the side), rotation and, for the anisotropic ones, aspect,
filled with a uniformly random RGB colour, over one of three backgrounds drawn independently of the class:
- a flat random colour;
- stripes of two random colours at a random orientation and period;
- smooth coloured noise (a random colour modulated by low-frequency noise) with pixel noise on top.
Colour therefore says nothing about the class, and a self-supervised run that tells images apart by their colours
learns nothing a shape classifier needs — which is the failure this family exists to expose (issue: the small
recipe on colourful data). Edges are anti-aliased (the mask is rendered at 4× and averaged).

Determinism: image i is rendered from its own generator seeded with (seed, part, i), so the output does not
depend on the number of workers. Deviation from "real" data: no occlusion, lighting or texture on the shape;
the shape is always whole and in focus.
"""

from __future__ import annotations

import math

import numpy as np

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
