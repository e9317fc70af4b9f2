"""Multi-crop views of images for SSL training (DINO §3.1; the released DINOv2 / DINOv3 recipes).

Each image gives 2 global crops (RandomResizedCrop scale (0.32, 1), bicubic) and `local_number` local crops
(scale (0.05, 0.32)), each flipped with p 0.5, colour-jittered (0.4, 0.4, 0.2, 0.1) with p 0.8, turned grey
with p 0.2 (these colour settings are `crops.colour`), then blurred (kernel 9, sigma U(0.1, 2)) and, for global
crop 2, solarised (p 0.2), and finally normalised. The teacher sees the same global crops as the student. Extra
crop sets (DINOv3's Gram teacher crops) cover the same regions as the global crops, flipped alike but without
colour distortion, blur or solarisation, at their own size. Sizes can be given per batch (the high-resolution
stage draws them batch by batch).

Blur probabilities: the released code passes `1 − p` to torchvision's RandomApply, so the released models were
trained with global-1 blur *never*, global-2 blur 0.9 and locals 0.5 ("released", the default); the
intended values 1.0 / 0.1 / 0.5 are `probabilities: intended`.

Two phases: `plan` draws every random decision of one image's crops from that image's generator (in a fixed
order, so a sample's crops depend on its seed only); `render_slot` then does the pixel work for a whole batch, one
crop slot at a time (e.g. "global crop 2 of every image"), which is what makes small crops cheap on a CPU. A
sample's pixels do not depend on the other samples of its batch (see `augment.py`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import augment as A

BLUR_PROBABILITIES = {  # (global 1, global 2, local)
    "released": (0.0, 0.9, 0.5),
    "intended": (1.0, 0.1, 0.5),
}
SOLARIZE_P = 0.2  # global crop 2 only


@dataclass(frozen=True)
class ViewPlan:
    """The random decisions of one crop of one image."""

    box: tuple[int, int, int, int]  # top, left, height, width in the source image
    flip: bool
    jitter: A.JitterParams | None
    gray: bool
    blur_sigma: float | None
    solarize: bool


class MultiCrop:
    def __init__(
        self,
        global_size: int = 224,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_number: int = 8,
        local_size: int = 96,
        local_scale: tuple[float, float] = (0.05, 0.32),
        probabilities: str = "released",
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        hflip: float = 0.5,
        colour=None,
    ) -> None:
        """`colour`: a `ColourConfig` (jitter probability and strengths, grey probability); None: as released."""
        if probabilities not in BLUR_PROBABILITIES:
            raise ValueError(f"probabilities must be one of {sorted(BLUR_PROBABILITIES)}, got {probabilities!r}")
        self.global_size, self.global_scale = global_size, tuple(global_scale)
        self.local_number, self.local_size, self.local_scale = local_number, local_size, tuple(local_scale)
        self.blur_p = BLUR_PROBABILITIES[probabilities]
        self.mean, self.std = tuple(mean), tuple(std)
        self.hflip = hflip
        from ..config.schema import ColourConfig

        self.colour = colour if colour is not None else ColourConfig()

    @classmethod
    def from_config(cls, crops, data) -> MultiCrop:
        """From the `crops` and `data` sections of the training config."""
        return cls(
            crops.global_size, crops.global_scale, crops.local_number, crops.local_size, crops.local_scale,
            crops.probabilities, data.mean, data.std, crops.hflip, crops.colour,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------ random
    def _plan_view(self, height: int, width: int, scale, blur_p: float, solarize_p: float, rng) -> ViewPlan:
        box = A.random_resized_crop_box(height, width, scale, rng)
        flip = rng.random() < self.hflip
        c = self.colour
        jittered = rng.random() < c.jitter_p
        jitter = A.color_jitter_params(rng, c.brightness, c.contrast, c.saturation, c.hue) if jittered else None
        gray = rng.random() < c.grayscale_p
        blur_sigma = rng.uniform(0.1, 2.0) if rng.random() < blur_p else None
        solarize = rng.random() < solarize_p
        return ViewPlan(box, flip, jitter, gray, blur_sigma, solarize)

    def plan(self, height: int, width: int, rng: random.Random) -> list[ViewPlan]:
        """The decisions for one `height × width` image's crops: 2 global, then `local_number` local."""
        g1, g2, gl = self.blur_p
        return [
            self._plan_view(height, width, self.global_scale, g1, 0.0, rng),
            self._plan_view(height, width, self.global_scale, g2, SOLARIZE_P, rng),
            *(self._plan_view(height, width, self.local_scale, gl, 0.0, rng) for _ in range(self.local_number)),
        ]

    # ------------------------------------------------------------------------------------------ pixels
    def render_slot(self, images: Sequence[torch.Tensor], plans: Sequence[ViewPlan], size: int) -> torch.Tensor:
        """One crop of each image (uint8 `[3, H, W]`, with its plan) → normalised float `[N, 3, size, size]`."""
        x = torch.stack([A.resized_crop(img, p.box, size) for img, p in zip(images, plans)])  # [N, 3, S, S]
        flip = [i for i, p in enumerate(plans) if p.flip]
        if flip:
            x[flip] = x[flip].flip(-1)
        if any(p.jitter is not None for p in plans):
            x = A.apply_color_jitter(x, [p.jitter for p in plans])
        gray = [i for i, p in enumerate(plans) if p.gray]
        if gray:
            x[gray] = A.grayscale(x[gray]).expand(-1, 3, -1, -1)
        blur = [i for i, p in enumerate(plans) if p.blur_sigma is not None]
        if blur:
            x[blur] = A.gaussian_blur(x[blur], torch.tensor([plans[i].blur_sigma for i in blur]))
        solarize = [i for i, p in enumerate(plans) if p.solarize]
        if solarize:
            x[solarize] = A.solarize(x[solarize])
        return A.normalize(x, self.mean, self.std)

    def render_clean(self, images: Sequence[torch.Tensor], plans: Sequence[ViewPlan], size: int) -> torch.Tensor:
        """The crop regions of `plans`, flipped like them but without colour distortion → `[N, 3, size, size]`."""
        x = torch.stack([A.resized_crop(img, p.box, size) for img, p in zip(images, plans)])  # [N, 3, S, S]
        flip = [i for i, p in enumerate(plans) if p.flip]
        if flip:
            x[flip] = x[flip].flip(-1)
        return A.normalize(x, self.mean, self.std)

    def crops(
        self,
        images: Sequence[torch.Tensor],
        rngs: Sequence[random.Random],
        global_size: int | None = None,
        local_size: int | None = None,
        extra_sizes: dict[str, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """uint8 images `[3, H, W]`, one generator each → crop-major `global [2·B, 3, G, G]`, `local [L·B, 3, l, l]`
        (global crop 1 of every image, then global crop 2 of every image; likewise the local crops) and the
        extra sets `{name: [2·B, 3, S, S]}` of the global crops' regions without colour distortion ("teacher":
        with the same distortions as the global crops). Sizes default to the configured ones."""
        g_size, l_size = global_size or self.global_size, local_size or self.local_size
        plans = [self.plan(img.shape[-2], img.shape[-1], rng) for img, rng in zip(images, rngs)]
        slots = [
            self.render_slot(images, [p[k] for p in plans], g_size if k < 2 else l_size)
            for k in range(2 + self.local_number)
        ]
        empty = slots[0].new_zeros(0, 3, l_size, l_size)
        local = torch.cat(slots[2:]) if self.local_number else empty
        extra = {}
        for name, size in (extra_sizes or {}).items():
            # a distillation teacher sees the students' global crops, colours and all, at its own size; the Gram
            # teacher sees their regions undistorted
            render = self.render_slot if name == "teacher" else self.render_clean
            extra[name] = torch.cat([render(images, [p[k] for p in plans], size) for k in range(2)])
        return torch.cat(slots[:2]), local, extra

    def batch(
        self, images: Sequence[torch.Tensor], rngs: Sequence[random.Random]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`crops` at the configured sizes, without extra sets: `(global [2·B, 3, G, G], local [L·B, 3, l, l])`."""
        global_crops, local_crops, _ = self.crops(images, rngs)
        return global_crops, local_crops

    def __call__(self, img: torch.Tensor, rng: random.Random) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One uint8 image `[3, H, W]` → (2 global crops `[3, G, G]`, `local_number` local crops `[3, L, L]`)."""
        global_crops, local_crops = self.batch([img], [rng])
        return list(global_crops), list(local_crops)
