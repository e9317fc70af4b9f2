"""An offline benchmark for every evaluation protocol: procedurally rendered scenes written in the layouts users
already have (ImageNet class folders, ADE20K image + label maps, NYU RGB + 16-bit depth, a JSON of keypoint
pairs, an Oxford/Paris-style retrieval list). `dinokit data synth OUT --seed S`; docs/formats.md.

The world. A pinhole camera (focal length = image width) 1.6 m above a ground plane looks at a back wall 6–9.5 m
away. Flat "cards" stand on the ground at random depths, each cut to a shape (disc, triangle, square, hexagon,
blob) and painted with one of ten *materials*: binary patterns (stripes, bars, checker, dots, rings, grid,
chevron, bricks, diamonds, blobs) in two muted colours (random grey levels, faint random tints: a saturated
random colour pair is the cheapest cue for telling images apart, which a short self-supervised run learns
first and which says nothing about the material; docs/training.md). Patterns are drawn in world units (≈ 8
cycles per metre, the material's characteristic scale), so a far card shows a finer pattern than a near one.
The ground is isotropic "gravel" noise and the wall a vertical grain, both aperiodic and also in world units,
so the gravel gets finer towards the horizon: texture scale is a depth cue, as in real scenes.
Classification images are object-centric, like a photo of one thing: one card held up about a metre in front
of the camera fills most of the frame, its cut-out shape showing the room at the edges. Segmentation and
depth scenes are cluttered: three to six cards at 1.2–3.5 m.

Why a random network cannot solve it. Every colour is drawn independently of the class (two grey levels per
card that drift across it, swapped at random, pattern coverage 30–50 % for every material, per-image tint and
noise), so colour statistics — which a randomly initialised ViT's features mostly encode (its patch embedding
is a random linear map of the pixels) — say nothing about the material. Because colours drift across every
surface while patterns do not, two crops of one object share its pattern but not its colours: the invariance
that self-supervised training rewards is the one the benchmark asks for. Telling materials
apart needs features of spatial structure (orientation, periodicity, lattice type) that are invariant to the
colours and to the pattern's phase, scale and small rotations; a linear read-out of random pixel projections
does not have them. Depth needs the texture scale and the card's placement; correspondences are taken across
homographies with a photometric change (brightness, contrast, gamma, hue), which breaks raw-pixel matching.
Self-supervised training with colour jitter and multi-crop learns exactly these invariances.

A long-tailed pool with planted duplicates, for curation (`--long-tail S --duplicates F`; benchmarks/curation_gain.py).
With a Zipf exponent S the pretraining pool becomes object-centric images (no cluttered scenes) whose material
follows a Zipf law over the ten materials: the material of rank r (1…10) has probability ∝ r^−S, the rank order
drawn from the seed (S = 0: uniform; the default when `--long-tail` is given bare, 1.5, gives the first material
about half the pool and the last under 2 %). A fraction F of the pool (either pool) are planted near-duplicates:
edited copies of earlier, original pool images — one or more of a small crop (85–95 % of the side, resized
back), a down- and up-resize (50–80 %), a colour change (per-channel gains 0.9–1.1 and an offset of ±0.04), a
JPEG re-encode (quality 40–90), in that order, chosen at random (saved as PNG like every other image).
`pretrain.json` records the material of every pool image and, for each copy, the image it copies and the edits
with their parameters, so that a benchmark can score deduplication. classify/ stays class-balanced. Without
these options the output is byte for byte what it was before they existed.

Determinism: image i of each part is rendered from its own generator seeded with (seed, part, i), so the output
is the same for any number of worker processes (the long-tail plan — materials, which images are copies of which
— is drawn up front from its own generator, and a copy renders its original again from the original's seed).
Everything is vectorised numpy: hundreds of 128-px images per second per core, most of it PNG encoding.
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

from .captions import CAPTION_STREAM, CAPTIONS_README, VOCAB_FILE, caption, write_vocabulary

MATERIALS = ("stripes", "bars", "checker", "dots", "rings", "grid", "chevron", "bricks", "diamonds", "blobs")
GROUND, WALL = len(MATERIALS), len(MATERIALS) + 1  # segmentation classes of the background
SEG_CLASSES = (*MATERIALS, "ground", "wall")
SHAPES = ("disc", "triangle", "square", "hexagon", "blob")
IGNORE = 255  # segmentation label of the one-pixel band along each boundary
CAMERA_HEIGHT = 1.6  # metres
MATERIAL_FREQUENCY = 8.0  # cycles per metre (± 12 % per card)
MAX_DEPTH = 10.0  # metres; the wall is nearer
GROUND_FREQUENCY = 2.5  # cycles per metre of the ground's gravel texture (× 0.8–1.25 per scene)
WALL_FREQUENCY = 1.2  # cycles per metre of the wall's grain


@dataclass(frozen=True)
class SynthConfig:
    """How much to write. Sizes are square images in pixels."""

    size: int = 128
    pretrain: int = 2000  # unlabelled scenes for self-supervised training
    train_per_class: int = 60
    val_per_class: int = 20
    dense_train: int = 300  # scenes with segmentation labels and depth (each of seg/ and depth/)
    dense_val: int = 60
    pairs: int = 100
    landmarks: int = 20  # retrieval: landmarks × views, plus distractors
    views: int = 5
    distractors: int = 40
    long_tail: float | None = None  # Zipf exponent of the pretraining pool's materials (None: today's mixed pool)
    duplicates: float = 0.0  # fraction of the pretraining pool that are edited copies of earlier pool images
    captions: bool = False  # a same-named .txt caption beside every object image (`captions.py`), + captions_vocab.txt

    def __post_init__(self) -> None:
        if self.long_tail is not None and not (math.isfinite(self.long_tail) and self.long_tail >= 0):
            raise ValueError(f"the Zipf exponent (--long-tail) must be a finite number ≥ 0, got {self.long_tail}")
        if not 0 <= self.duplicates < 1:  # also refuses nan
            raise ValueError(f"the duplicate fraction (--duplicates) must be in [0, 1), got {self.duplicates}")

    def scaled(self, factor: float) -> SynthConfig:
        """Every count multiplied by `factor` (at least one of each)."""
        counts = {k: max(1, round(v * factor)) for k, v in asdict(self).items() if k not in NOT_COUNTS}
        return replace(self, **counts)

    @property
    def pool_plan(self) -> bool:
        """Whether the pretraining pool is long-tailed or holds planted duplicates (then pretrain.json is written)."""
        return self.long_tail is not None or self.duplicates > 0

    def manifest(self) -> dict:
        """The config as manifest.json records it: the long-tail fields only when set, so that a default set's
        manifest (and its reuse) is what it was before they existed."""
        d = asdict(self)
        if self.long_tail is None:
            del d["long_tail"]
        if self.duplicates == 0:
            del d["duplicates"]
        if not self.captions:
            del d["captions"]
        return d


NOT_COUNTS = ("size", "views", "long_tail", "duplicates", "captions")
DEFAULT_LONG_TAIL = 1.5  # `--long-tail` given bare


# ------------------------------------------------------------------------------------------ materials
def _material(name: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A scalar field over pattern coordinates (u, v in cycles); thresholding it draws the material."""
    tau = 2 * np.pi
    if name == "stripes":
        return np.sin(tau * v)
    if name == "bars":
        return np.sin(tau * u)
    if name == "checker":
        return np.sin(tau * u) * np.sin(tau * v)
    if name == "dots":
        return np.cos(tau * u) + np.cos(tau * v)
    if name == "rings":
        cu, cv = rng.uniform(-1, 1, 2)
        return np.sin(tau * np.hypot(u - cu, v - cv))
    if name == "grid":
        return np.maximum(np.cos(tau * u), np.cos(tau * v))
    if name == "chevron":
        return np.sin(tau * (v + np.abs((u % 1.0) - 0.5)))
    if name == "bricks":
        row = np.floor(v * 2)
        mortar_v = np.abs((v * 2) % 1.0 - 0.5)
        mortar_u = np.abs((u + 0.5 * row) % 1.0 - 0.5)
        return np.maximum(mortar_v, mortar_u)
    if name == "diamonds":
        return np.sin(tau * (u + v) / math.sqrt(2)) * np.sin(tau * (u - v) / math.sqrt(2))
    if name == "blobs":
        angles = rng.uniform(0, np.pi, 5)
        phases = rng.uniform(0, tau, 5)
        return sum(np.cos(tau * (u * np.cos(a) + v * np.sin(a)) + p) for a, p in zip(angles, phases))
    raise ValueError(f"unknown material {name!r}")


def _muted(rng: np.random.Generator, grey: float) -> np.ndarray:
    """A colour of the given grey level with a faint random tint (±0.08 per channel)."""
    return np.clip(grey + rng.uniform(-0.08, 0.08, 3), 0.0, 1.0)


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two muted colours whose grey levels differ by at least 0.3, so every pattern is visible."""
    g1 = rng.uniform(0.1, 0.9)
    while True:
        g2 = rng.uniform(0.1, 0.9)
        if abs(g1 - g2) >= 0.3:
            return _muted(rng, g1), _muted(rng, g2)


def _drifting_pair(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two colours per pixel `[..., 3]` that drift across a surface (about one cycle over `x, y ∈ [−1, 1]`):
    lighting and wear change an object's colours from place to place, not its pattern, so two crops of one
    object share the pattern but not the colours."""
    (a1, a2), (b1, b2) = _colour_pair(rng), _colour_pair(rng)
    if np.dot(a2 - a1, b2 - b1) < 0:  # keep the two ends' contrasts aligned: the pattern never fades out
        b1, b2 = b2, b1
    s = _soft_field(x, y, 0.5, rng)[..., None]
    return a1 * (1 - s) + b1 * s, a2 * (1 - s) + b2 * s


def _noise_field(
    x: np.ndarray, y: np.ndarray, freq: float, rng: np.random.Generator, grain: float | None = None, waves: int = 12
) -> np.ndarray:
    """Aperiodic band-limited noise, about zero mean and unit variance: `waves` sinusoids of random phase at
    0.7–1.4 × `freq` cycles per unit, plus a second octave at half the amplitude. Directions are uniform
    (isotropic "gravel"), or within ±12° of `grain` radians (streaks across that direction, like wood grain).
    No two places look alike, unlike the periodic materials."""
    total = 0.0
    for octave, amplitude in ((1.0, 1.0), (2.0, 0.5)):
        for _ in range(waves):
            angle = rng.uniform(0, np.pi) if grain is None else grain + rng.uniform(-0.2, 0.2)
            f = octave * freq * rng.uniform(0.7, 1.4)
            phase = rng.uniform(0, 2 * np.pi)
            total = total + amplitude * np.cos(2 * np.pi * f * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    return total / math.sqrt(waves * 1.25 / 2)


def _soft_field(x: np.ndarray, y: np.ndarray, freq: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field in [0, 1]: three sinusoids of random direction at `freq` cycles per unit."""
    total = 0.0
    for a, p in zip(rng.uniform(0, np.pi, 3), rng.uniform(0, 2 * np.pi, 3)):
        total = total + np.cos(2 * np.pi * freq * (x * np.cos(a) + y * np.sin(a)) + p)
    return 0.5 + total / 6


# ---------------------------------------------------------------------------------------------- scenes
@dataclass
class Card:
    material: int  # index into MATERIALS, or -1 for a plain (untextured) card
    shape: str
    depth: float  # metres
    x: float  # image column of the card's centre, pixels
    height: float  # metres
    width: float
    lift: float = 0.0  # metres between the ground and the card's lower edge (held up in front of the camera)


@dataclass
class Scene:
    image: np.ndarray  # [H, W, 3] float32 in [0, 1]
    labels: np.ndarray  # [H, W] uint8 segmentation classes (IGNORE on boundaries)
    depth: np.ndarray  # [H, W] float32 metres
    shape: str | None = None  # object images: the cut-out shape of the main card (for captions)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Inside test of a shape in normalised card coordinates (dx, dy ∈ [−1, 1], y down)."""
    rho, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    if shape == "disc":
        return rho <= 1.0
    if shape == "blob":
        k, phase = rng.integers(3, 6), rng.uniform(0, 2 * np.pi)
        return rho <= 0.8 + 0.2 * np.sin(k * theta + phase)
    n = {"triangle": 3, "square": 4, "hexagon": 6}[shape]
    spin = rng.uniform(0, 2 * np.pi / n)
    sector = 2 * np.pi / n
    return rho * np.cos((theta - spin) % sector - sector / 2) <= math.cos(math.pi / n)


def random_horizon(rng: np.random.Generator, height: int) -> float:
    """Image row of the horizon: the camera looks slightly downwards."""
    return height / 2 - height * rng.uniform(0.05, 0.3)


def render_scene(
    rng: np.random.Generator, height: int, width: int, focal: float, cards: list[Card], horizon: float | None = None
) -> Scene:
    """Render ground, wall and cards (far to near) for a camera with principal point at the image centre."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # pixel centres
    cx = width / 2
    horizon = random_horizon(rng, height) if horizon is None else horizon
    wall_depth = rng.uniform(6.0, 9.5)
    below = yy - horizon
    ground_depth = np.where(below > 0, focal * CAMERA_HEIGHT / np.maximum(below, 1e-3), np.inf)
    depth = np.minimum(ground_depth, wall_depth).astype(np.float32)
    labels = np.where(ground_depth < wall_depth, GROUND, WALL).astype(np.uint8)
    # ground: a soft pattern in world coordinates (finer towards the horizon); wall: the same at one depth
    world_x = (xx - cx) * depth / focal
    world_y = np.where(labels == GROUND, depth, (horizon - yy) * depth / focal + CAMERA_HEIGHT)
    image = np.empty((height, width, 3), np.float32)
    # ground: gravel (isotropic noise) in world units, finer towards the horizon; wall: vertical grain
    for cls, freq, grain in ((GROUND, GROUND_FREQUENCY, None), (WALL, WALL_FREQUENCY, 0.0)):
        a, b = _colour_pair(rng)
        sel = labels == cls
        wx, wy = world_x[sel], world_y[sel]  # only the pixels of this surface
        noise = _noise_field(wx, wy, freq * rng.uniform(0.8, 1.25), rng, grain)
        t = np.clip(0.5 + 0.2 * noise + 0.6 * (_soft_field(wx, wy, 0.15, rng) - 0.5), 0, 1)[:, None]
        image[sel] = (a * (1 - t) + b * t).astype(np.float32)

    for card in sorted(cards, key=lambda c: -c.depth):
        half_h = focal * card.height / (2 * card.depth)
        half_w = focal * card.width / (2 * card.depth)
        base = horizon + focal * (CAMERA_HEIGHT - card.lift) / card.depth  # image row of the card's lower edge
        top, bottom = int(max(base - 2 * half_h, 0)), int(min(base, height - 1)) + 1
        left, right = int(max(card.x - half_w, 0)), int(min(card.x + half_w, width - 1)) + 1
        if top >= bottom or left >= right:
            continue
        box = (slice(top, bottom), slice(left, right))
        dx = (xx[box] - card.x) / half_w
        dy = (yy[box] - (base - half_h)) / half_h
        inside = _shape_mask(card.shape, dx, dy, rng)
        if not inside.any():
            continue
        c1, c2 = _drifting_pair(rng, dx, dy)
        if card.material >= 0:
            freq = MATERIAL_FREQUENCY * rng.uniform(0.88, 1.12)
            angle = rng.uniform(-0.25, 0.25)  # ±15° orientation jitter
            u0 = dx * card.width / 2 * freq
            v0 = dy * card.height / 2 * freq
            u = u0 * math.cos(angle) - v0 * math.sin(angle) + rng.uniform(0, 1)
            v = u0 * math.sin(angle) + v0 * math.cos(angle) + rng.uniform(0, 1)
            field = _material(MATERIALS[card.material], u, v, rng)
            coverage = rng.uniform(0.3, 0.5)
            t = (field > np.quantile(field[inside], 1 - coverage)).astype(np.float32)
        else:
            t = _soft_field(dx, dy, 0.3, rng)
        shade = 1 + 0.2 * (dx * rng.uniform(-1, 1) + dy * rng.uniform(-1, 1))  # light from one side
        colour = (c1 * (1 - t[..., None]) + c2 * t[..., None]) * shade[..., None]  # [h, w, 3]
        image[box][inside] = colour[inside]
        depth[box][inside] = card.depth
        labels[box][inside] = card.material if card.material >= 0 else WALL

    image = image * rng.uniform(0.85, 1.15, 3).astype(np.float32)  # illumination tint
    image = 0.5 * image + 0.125 * (  # slight blur: anti-aliases edges and fine patterns
        np.roll(image, 1, 0) + np.roll(image, -1, 0) + np.roll(image, 1, 1) + np.roll(image, -1, 1)
    )
    image = image + rng.normal(0, 0.015, image.shape).astype(np.float32)
    boundary = np.zeros_like(labels, dtype=bool)
    boundary[:-1] |= labels[:-1] != labels[1:]
    boundary[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    labels[boundary] = IGNORE
    return Scene(np.clip(image, 0, 1), labels, depth)


def _card(rng, size: int, material: int, near: float, far: float, scale: tuple[float, float], x_range) -> Card:
    height = rng.uniform(*scale)
    return Card(
        material=material,
        shape=SHAPES[rng.integers(len(SHAPES))],
        depth=rng.uniform(near, far),
        x=size * rng.uniform(*x_range),
        height=height,
        width=height * math.exp(rng.uniform(-0.4, 0.4)),
    )


def object_scene(rng: np.random.Generator, size: int, material: int) -> Scene:
    """A classification image, object-centric like a photo of one thing: a card of `material` held up about a
    metre in front of the camera, filling most of the frame (its cut-out shape shows the room behind it at the
    edges), and up to two plain cards standing further back."""
    main = _card(rng, size, material, 1.0, 1.4, (1.3, 1.8), (0.4, 0.6))
    horizon = random_horizon(rng, size)
    centre = CAMERA_HEIGHT - (size / 2 - horizon) * main.depth / size  # height in the world of the image centre
    main.lift = max(centre - main.height / 2 + rng.uniform(-0.1, 0.1), 0.0)
    plain = [_card(rng, size, -1, 3.5, 6.0, (0.5, 1.2), (0.1, 0.9)) for _ in range(rng.integers(0, 3))]
    scene = render_scene(rng, size, size, float(size), [main, *plain], horizon)
    scene.shape = main.shape
    return scene


def dense_scene(rng: np.random.Generator, height: int, width: int, focal: float, cards=(3, 6)) -> Scene:
    """A segmentation / depth scene: `cards` (a range, inclusive) cards of random materials at random depths."""
    cards = [
        _card(rng, width, int(rng.integers(len(MATERIALS))), 1.2, 3.5, (0.7, 1.5), (0.05, 0.95))
        for _ in range(rng.integers(cards[0], cards[1] + 1))
    ]
    return render_scene(rng, height, width, focal, cards)


# --------------------------------------------------------------------------------------- homographies
def random_homography(rng: np.random.Generator, size: int, strength: float = 1.0) -> np.ndarray:
    """A 3×3 map of pixel coordinates (x, y) about the image centre: rotation up to ±20°, scale ×1.25^±1,
    mild anisotropy and perspective, shift up to 8 % — all multiplied by `strength`."""
    c = size / 2
    theta = strength * rng.uniform(-0.35, 0.35)
    scale = math.exp(strength * rng.uniform(-0.22, 0.22))
    aspect = math.exp(strength * rng.uniform(-0.08, 0.08))
    p = strength * rng.uniform(-0.3, 0.3, 2) / size
    t = strength * rng.uniform(-0.08, 0.08, 2) * size
    to_origin = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1]])
    back = np.array([[1, 0, c + t[0]], [0, 1, c + t[1]], [0, 0, 1]])
    rot = np.array([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]])
    affine = np.diag([scale * aspect, scale / aspect, 1.0])
    persp = np.array([[1, 0, 0], [0, 1, 0], [p[0], p[1], 1]])
    return back @ rot @ affine @ persp @ to_origin


def apply_homography(hom: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points `[N, 2]` (x, y) → `[N, 2]`."""
    ph = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ hom.T
    return ph[:, :2] / ph[:, 2:]


def warp(canvas: np.ndarray, pad: int, hom: np.ndarray, size: int) -> np.ndarray:
    """The `size × size` view B with B(q) = A(H⁻¹ q), where A is the canvas without its `pad` margin.
    Bilinear; coordinates are pixel corners (pixel i spans [i, i+1))."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    src = apply_homography(np.linalg.inv(hom), np.stack([xx.ravel(), yy.ravel()], 1)) + pad - 0.5
    h, w = canvas.shape[:2]
    x = np.clip(src[:, 0], 0, w - 1.001)
    y = np.clip(src[:, 1], 0, h - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    out = (
        canvas[y0, x0] * (1 - fx) * (1 - fy)
        + canvas[y0, x0 + 1] * fx * (1 - fy)
        + canvas[y0 + 1, x0] * (1 - fx) * fy
        + canvas[y0 + 1, x0 + 1] * fx * fy
    )
    return out.reshape(size, size, -1).astype(np.float32)


def photometric(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A change of lighting and camera: brightness, contrast, gamma and a hue rotation about the grey axis."""
    angle = rng.uniform(-0.6, 0.6)  # radians, about ±35° of hue
    k = np.ones(3) / math.sqrt(3)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross  # Rodrigues
    x = np.clip(image @ rot.T.astype(np.float32), 0, 1)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.7, 1.3) + mean * rng.uniform(0.7, 1.3)
    return np.clip(np.clip(x, 0, 1) ** rng.uniform(0.75, 1.33), 0, 1)


def view_pair(rng: np.random.Generator, size: int, n_keypoints: int = 64):
    """Two views of one scene related by a known homography, with keypoints in A and their positions in B."""
    pad = size // 2
    scene = dense_scene(rng, size + 2 * pad, size + 2 * pad, float(size), cards=(5, 10))
    image_a = scene.image[pad : pad + size, pad : pad + size]
    hom = random_homography(rng, size)
    image_b = photometric(rng, warp(scene.image, pad, hom, size))
    # keypoints where a matcher has something to go by: three in four on cards, the rest anywhere
    margin = size / 32
    kp_a = rng.uniform(margin, size - margin, (8 * n_keypoints, 2))
    on_card = scene.labels[(kp_a[:, 1] + pad).astype(int), (kp_a[:, 0] + pad).astype(int)] < len(MATERIALS)
    kp_a = np.concatenate([kp_a[on_card][: 3 * n_keypoints // 4], kp_a[~on_card]])
    kp_b = apply_homography(hom, kp_a)
    inside = np.all((kp_b >= margin) & (kp_b <= size - margin), axis=1)
    return image_a, image_b, kp_a[inside][:n_keypoints], kp_b[inside][:n_keypoints]


# ------------------------------------------------------------------------------------------- writing
def _rng(seed: int, part: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, part, index])


def _save(array: np.ndarray, path: Path) -> None:
    if array.dtype in (np.float32, np.float64):
        array = (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(array).save(path, compress_level=1)


def _depth_png(depth: np.ndarray) -> np.ndarray:
    return np.clip(np.round(depth * 1000), 0, 65535).astype(np.uint16)  # millimetres


PARTS = ("pretrain", "classify", "dense", "pairs", "landmarks", "retrieval", "distractors")
PLAN = len(PARTS)  # the generator of the long-tail plan: (seed, PLAN, 0)
EDITS = ("crop", "resize", "colour", "jpeg")  # edits of a planted duplicate, applied in this order


def zipf_probabilities(exponent: float, n: int = len(MATERIALS)) -> np.ndarray:
    """p(rank r) ∝ r^−exponent for ranks 1…n."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return w / w.sum()


def pool_plan(seed: int, config: SynthConfig) -> list[dict]:
    """Per pretraining image: `material` (an index, or None: drawn by the image's own generator as in the default
    pool), `copy_of` (the index of the original it copies, or None) and, for the record, nothing else. Drawn from
    one generator seeded with (seed, PLAN, 0): the rank order of the materials, every image's material, which
    images are copies (never the first) and of which earlier original each is."""
    n = config.pretrain
    rng = _rng(seed, PLAN, 0)
    order = rng.permutation(len(MATERIALS))  # order[r] = the material of rank r + 1
    materials: list[int | None] = [None] * n
    if config.long_tail is not None:
        ranks = rng.choice(len(MATERIALS), size=n, p=zipf_probabilities(config.long_tail))
        materials = [int(order[r]) for r in ranks]
    copies = min(round(config.duplicates * n), n - 1)
    is_copy = np.zeros(n, bool)
    if copies > 0:
        is_copy[1 + rng.choice(n - 1, size=copies, replace=False)] = True
    originals = np.flatnonzero(~is_copy)  # sorted; index 0 is always one
    plan = []
    for i in range(n):
        source = None
        if is_copy[i]:
            source = int(originals[rng.integers(np.searchsorted(originals, i))])  # an earlier original
        plan.append({"material": materials[i], "copy_of": source})
    for entry in plan:  # a copy shows its original's material
        if entry["copy_of"] is not None:
            entry["material"] = plan[entry["copy_of"]]["material"]
    return plan


def _pretrain_image(seed: int, size: int, index: int, material: int | None, captions: bool = False):
    """Pretraining image `index` as uint8, and its material (None for a cluttered scene). `material` None: the
    default pool, three object images to one cluttered scene, like an uncurated pile. With `captions` also the
    caption of an object image (None for a scene)."""
    rng = _rng(seed, PARTS.index("pretrain"), index)
    if material is None:
        if index % 4:
            material = int(rng.integers(len(MATERIALS)))
            scene = object_scene(rng, size, material)
        else:
            scene = dense_scene(rng, size, size, float(size), cards=(4, 8))
    else:
        scene = object_scene(rng, size, material)
    image = (np.clip(scene.image, 0, 1) * 255 + 0.5).astype(np.uint8)
    if not captions:
        return image, material
    text = None if material is None else caption(scene, material, _caption_rng(seed, "pretrain", index))
    return image, material, text


def near_duplicate(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """An edited copy of a uint8 image `[H, W, 3]`: a random non-empty subset of `EDITS`, in that order; returns it
    and the edits with their parameters."""
    import io

    size = image.shape[1], image.shape[0]
    chosen = rng.random(len(EDITS)) < 0.5
    if not chosen.any():
        chosen[rng.integers(len(EDITS))] = True
    pil = Image.fromarray(image)
    edits: list[dict] = []
    for name, on in zip(EDITS, chosen):
        if not on:
            continue
        if name == "crop":
            keep = rng.uniform(0.85, 0.95)
            w, h = max(1, round(size[0] * keep)), max(1, round(size[1] * keep))
            left, top = int(rng.integers(size[0] - w + 1)), int(rng.integers(size[1] - h + 1))
            box = (left, top, left + w, top + h)
            pil = pil.crop(box).resize(size, Image.BICUBIC)
            edits.append({"edit": "crop", "box": list(box)})
        elif name == "resize":
            scale = rng.uniform(0.5, 0.8)
            small = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            pil = pil.resize(small, Image.BILINEAR).resize(size, Image.BILINEAR)
            edits.append({"edit": "resize", "scale": round(float(scale), 4)})
        elif name == "colour":
            gains, offset = rng.uniform(0.9, 1.1, 3), rng.uniform(-0.04, 0.04)
            x = np.asarray(pil, np.float32) / 255 * gains.astype(np.float32) + np.float32(offset)
            pil = Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8))
            edits.append({"edit": "colour", "gains": np.round(gains, 4).tolist(), "offset": round(float(offset), 4)})
        else:
            quality = int(rng.integers(40, 91))
            buffer = io.BytesIO()
            pil.save(buffer, format="JPEG", quality=quality)
            pil = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
            edits.append({"edit": "jpeg", "quality": quality})
    return np.asarray(pil), edits


def _caption_rng(seed: int, part: str, index: int) -> np.random.Generator:
    """The captions' own generator (the images' generators are untouched, so pixels do not depend on captions)."""
    return np.random.default_rng([seed, PARTS.index(part), index, CAPTION_STREAM])


def _write_caption(path: Path, text: str | None) -> None:
    if text is not None:
        path.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")


def _job(root: Path, seed: int, size: int, part: str, index: int, arg, captions: bool = False) -> dict | None:
    """Render and write one item; returns what the manifests need to know about it."""
    if part == "pretrain":
        if arg is None and captions:  # the same images, and a caption beside each object image
            image, _, text = _pretrain_image(seed, size, index, None, captions=True)
            _save(image, root / "pretrain" / f"{index:06d}.png")
            _write_caption(root / "pretrain" / f"{index:06d}.png", text)
            return None
        if arg is None:  # the default pool: three object images to one cluttered scene, like an uncurated pile
            image, _ = _pretrain_image(seed, size, index, None)
            _save(image, root / "pretrain" / f"{index:06d}.png")
            return None
        # a long-tailed pool and/or planted duplicates: arg is this image's entry of pool_plan
        record: dict = {"name": f"{index:06d}.png", "material": None}
        source = index if arg["copy_of"] is None else arg["copy_of"]
        image, material, *text = _pretrain_image(seed, size, source, arg["material"], captions)
        if arg["copy_of"] is not None:  # the original rendered again (its own generator: the same pixels), edited
            image, edits = near_duplicate(image, _rng(seed, PARTS.index("pretrain"), index))
            record.update(copy_of=f"{arg['copy_of']:06d}.png", edits=edits)
        record["material"] = None if material is None else MATERIALS[material]
        _save(image, root / "pretrain" / f"{index:06d}.png")
        if text:  # a copy keeps its original's caption
            _write_caption(root / "pretrain" / f"{index:06d}.png", text[0])
        return record
    rng = _rng(seed, PARTS.index(part), index)
    if part == "classify":
        split, material = arg
        scene = object_scene(rng, size, material)
        path = root / "classify" / split / MATERIALS[material] / f"{index:06d}.png"
        _save(scene.image, path)
        if captions:
            _write_caption(path, caption(scene, material, _caption_rng(seed, part, index)))
        return None
    if part == "dense":
        seg_split, depth_split = arg
        scene = dense_scene(rng, size, size, float(size))
        _save(scene.image, root / "seg" / "images" / seg_split / f"{index:06d}.png")
        _save(scene.labels, root / "seg" / "annotations" / seg_split / f"{index:06d}.png")
        _save(scene.image, root / "depth" / depth_split / "rgb" / f"{index:06d}.png")
        _save(_depth_png(scene.depth), root / "depth" / depth_split / "depth" / f"{index:06d}.png")
        return None
    if part == "pairs":
        a, b, kp_a, kp_b = view_pair(rng, size)
        _save(a, root / "pairs" / "images" / f"{index:04d}_a.png")
        _save(b, root / "pairs" / "images" / f"{index:04d}_b.png")
        return {
            "image_a": f"images/{index:04d}_a.png",
            "image_b": f"images/{index:04d}_b.png",
            "keypoints_a": np.round(kp_a, 2).tolist(),
            "keypoints_b": np.round(kp_b, 2).tolist(),
        }
    if part == "landmarks":  # retrieval: arg = number of views; the last view is a junk close-up
        pad = size // 2
        canvas = dense_scene(rng, size + 2 * pad, size + 2 * pad, float(size), cards=(5, 10)).image
        names = []
        for v in range(arg + 1):
            if v == arg:  # zoomed ×3 into a corner: too little of the landmark to count either way
                corner = rng.uniform(-0.3, 0.3, 2) * size
                hom = np.array(
                    [[3.0, 0, -2 * size / 2 - 3 * corner[0]], [0, 3.0, -2 * size / 2 - 3 * corner[1]], [0, 0, 1]]
                )
            else:
                hom = random_homography(rng, size, strength=0.7)
            names.append(f"images/landmark{index:03d}_view{v}.png")
            _save(photometric(rng, warp(canvas, pad, hom, size)), root / "retrieval" / names[-1])
        return {"views": names[:-1], "junk": names[-1]}
    if part == "distractors":
        name = f"images/distractor{index:04d}.png"
        _save(dense_scene(rng, size, size, float(size)).image, root / "retrieval" / name)
        return {"name": name}
    raise ValueError(part)


def _tasks(config: SynthConfig, seed: int = 0) -> list[tuple[str, int, object]]:
    c = config
    plan = pool_plan(seed, c) if c.pool_plan else [None] * c.pretrain
    tasks: list[tuple[str, int, object]] = [("pretrain", i, plan[i]) for i in range(c.pretrain)]
    i = 0
    for split, n in (("train", c.train_per_class), ("val", c.val_per_class)):
        for material in range(len(MATERIALS)):
            for _ in range(n):
                tasks.append(("classify", i, (split, material)))
                i += 1
    tasks += [("dense", i, ("training", "train")) for i in range(c.dense_train)]
    tasks += [("dense", c.dense_train + i, ("validation", "test")) for i in range(c.dense_val)]
    tasks += [("pairs", i, None) for i in range(c.pairs)]
    tasks += [("landmarks", i, c.views) for i in range(c.landmarks)]
    tasks += [("distractors", i, None) for i in range(c.distractors)]
    return tasks


def _run(args):
    return _job(*args)


def write_synthetic(
    out: str | os.PathLike,
    seed: int = 0,
    config: SynthConfig = SynthConfig(),
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the whole benchmark under `out` (atomically: a temporary folder renamed at the end).

    An existing `out` written with the same seed and config is kept as is (the work is deterministic)."""
    out = Path(out)
    manifest = {"generator": "dinokit.data.synthetic", "version": 1, "seed": seed, "config": config.manifest()}
    if (out / "manifest.json").exists():
        if json.loads((out / "manifest.json").read_text()) == {**manifest, "classes": list(MATERIALS)}:
            return out
        raise FileExistsError(f"{out} holds a different synthetic set; choose another folder or remove it")
    existing = next(p for p in (out, *out.parents) if p.exists())  # the output or its nearest existing parent
    if not existing.is_dir():
        raise FileExistsError(f"{existing} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tasks = _tasks(config, seed)
    for d in _folders(config):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    workers = workers or min(os.cpu_count() or 1, 8)
    jobs = [(tmp, seed, config.size, part, i, arg, config.captions) for part, i, arg in tasks]
    bar = dict(total=len(jobs), desc="synthetic images", unit="item", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_run, jobs, chunksize=16), **bar))
    else:
        results = [_run(j) for j in tqdm(jobs, **bar)]
    _write_manifests(tmp, tasks, results, config)
    if config.pool_plan:
        (tmp / "pretrain.json").write_text(json.dumps(_pool_manifest(seed, config, results[: config.pretrain])))
    (tmp / "manifest.json").write_text(json.dumps({**manifest, "classes": list(MATERIALS)}, indent=2))
    (tmp / "README.md").write_text(_readme(seed, config))
    if config.captions:
        write_vocabulary(tmp / VOCAB_FILE)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out


def _folders(config: SynthConfig) -> list[str]:
    dirs = ["pretrain", "pairs/images", "retrieval/images"]
    dirs += [f"classify/{s}/{m}" for s in ("train", "val") for m in MATERIALS]
    dirs += [f"seg/{k}/{s}" for k in ("images", "annotations") for s in ("training", "validation")]
    dirs += [f"depth/{s}/{k}" for s in ("train", "test") for k in ("rgb", "depth")]
    return dirs


def _write_manifests(root: Path, tasks, results, config: SynthConfig) -> None:
    by_part: dict[str, list] = {}
    for (part, _, _), r in zip(tasks, results):
        by_part.setdefault(part, []).append(r)
    pairs = {
        "image_size": config.size,
        "coordinates": "pixels, (x, y), origin at the top-left image corner",
        "pairs": by_part.get("pairs", []),
    }
    (root / "pairs" / "pairs.json").write_text(json.dumps(pairs))
    landmarks, distractors = by_part.get("landmarks", []), by_part.get("distractors", [])
    gallery = [v for lm in landmarks for v in lm["views"][1:] + [lm["junk"]]] + [d["name"] for d in distractors]
    queries = [{"image": lm["views"][0], "positives": lm["views"][1:], "junk": [lm["junk"]]} for lm in landmarks]
    (root / "retrieval" / "retrieval.json").write_text(json.dumps({"gallery": gallery, "queries": queries}, indent=1))
    (root / "seg" / "classes.json").write_text(json.dumps(list(SEG_CLASSES)))


def _pool_manifest(seed: int, c: SynthConfig, records: list[dict]) -> dict:
    """pretrain.json: how the long-tailed pool was drawn and, per image, its material and what it copies."""
    order = _rng(seed, PLAN, 0).permutation(len(MATERIALS))  # the first draw of pool_plan
    counts = {m: 0 for m in MATERIALS}
    for r in records:
        if r["material"] is not None:
            counts[r["material"]] += 1
    pool: dict = {
        "long_tail": c.long_tail,
        "duplicates": c.duplicates,
        "images": len(records),
        "copies": sum("copy_of" in r for r in records),
        "counts": counts,
    }
    if c.long_tail is not None:
        pool["ranks"] = [MATERIALS[m] for m in order]  # most frequent first
        pool["probabilities"] = {MATERIALS[m]: round(float(p), 6)
                                 for m, p in zip(order, zipf_probabilities(c.long_tail))}  # fmt: skip
    pool["items"] = records  # name, material (null: a cluttered scene), and for a copy: copy_of, edits
    return pool


def _pool_readme(c: SynthConfig) -> str:
    if not c.pool_plan:
        return f"- pretrain/: {c.pretrain} unlabelled images, for self-supervised training."
    what = "images (three objects to one scene)"
    if c.long_tail is not None:
        what = f"object-centric images whose material follows a Zipf law (exponent {c.long_tail:g})"
    return (f"- pretrain/: {c.pretrain} unlabelled {what},\n  for self-supervised training; "
            f"{c.duplicates:.0%} of them are planted near-duplicates (edited copies of earlier ones).\n"
            "  pretrain.json: every image's material and, per copy, the image it copies and the edits.")  # fmt: skip


def _readme(seed: int, c: SynthConfig) -> str:
    options = f" --long-tail {c.long_tail:g}" if c.long_tail is not None else ""
    options += f" --duplicates {c.duplicates:g}" if c.duplicates else ""
    options += " --captions" if c.captions else ""
    return f"""# dinokit synthetic benchmark (seed {seed})

Written by `dinokit data synth` (dinokit/data/synthetic.py explains the world and why a random network cannot
solve it; docs/formats.md describes each layout). {c.size}×{c.size} px PNG images.
Classes (materials): {", ".join(MATERIALS)}.

{_pool_readme(c)}
- classify/{{train,val}}/<class>/: ImageNet style, {c.train_per_class} / {c.val_per_class} images per class
  (k-NN, linear, logreg).
- seg/images/{{training,validation}}/ + seg/annotations/…: ADE20K style label PNGs; classes in
  seg/classes.json (materials 0–9, ground 10, wall 11), 255 = ignore (seg).
- depth/{{train,test}}/rgb/ + depth/…/depth/: NYU style, 16-bit PNG depth in millimetres (depth).
- pairs/pairs.json + pairs/images/: pairs related by homographies, keypoints (x, y) in pixels (correspondence).
- retrieval/retrieval.json + retrieval/images/: queries with positives and junk, a gallery with distractors
  (retrieval).

{CAPTIONS_README if c.captions else ""}Regenerate: `dinokit data synth OUT --seed {seed} --size {c.size}{options}`.
"""
