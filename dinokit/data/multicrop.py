"""Multi-crop views of one image for SSL training (DINO §3.1; DINOv2 / DINOv3 recipes, REFERENCE §3).

Each image gives 2 global crops (RandomResizedCrop scale (0.32, 1), bicubic) and `local_number` local crops
(scale (0.05, 0.32)), each flipped with p 0.5, colour-jittered (0.4, 0.4, 0.2, 0.1) with p 0.8, turned grey
with p 0.2, then blurred (kernel 9, sigma U(0.1, 2)) and, for global crop 2, solarised (p 0.2), and finally
normalised. The teacher sees the same global crops as the student.

Blur probabilities: the released code passes `1 − p` to torchvision's RandomApply, so the released models were
trained with global-1 blur *never*, global-2 blur 0.9 and locals 0.5 ("released", the default); the
intended values 1.0 / 0.1 / 0.5 are `probabilities: intended`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from . import augment as A

BLUR_PROBABILITIES = {  # (global 1, global 2, local)
    "released": (0.0, 0.9, 0.5),
    "intended": (1.0, 0.1, 0.5),
}
SOLARIZE_P = 0.2  # global crop 2 only


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
    ) -> None:
        if probabilities not in BLUR_PROBABILITIES:
            raise ValueError(f"probabilities must be one of {sorted(BLUR_PROBABILITIES)}, got {probabilities!r}")
        self.global_size, self.global_scale = global_size, tuple(global_scale)
        self.local_number, self.local_size, self.local_scale = local_number, local_size, tuple(local_scale)
        self.blur_p = BLUR_PROBABILITIES[probabilities]
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def from_config(cls, crops, data) -> MultiCrop:
        """From the `crops` and `data` sections of the training config."""
        return cls(
            crops.global_size, crops.global_scale, crops.local_number, crops.local_size, crops.local_scale,
            crops.probabilities, data.mean, data.std,
        )  # fmt: skip

    def _view(self, img: torch.Tensor, size: int, scale, blur_p: float, solarize_p: float, rng: random.Random):
        x = A.resized_crop(img, A.random_resized_crop_box(img.shape[-2], img.shape[-1], scale, rng), size)
        x = A.hflip(x, rng)
        if rng.random() < 0.8:
            x = A.color_jitter(x, rng)
        if rng.random() < 0.2:
            x = A.grayscale(x).expand(3, -1, -1)
        if rng.random() < blur_p:
            x = A.gaussian_blur(x, rng.uniform(0.1, 2.0))
        if rng.random() < solarize_p:
            x = A.solarize(x)
        return A.normalize(x, self.mean, self.std)

    def __call__(self, img: torch.Tensor, rng: random.Random) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """uint8 `[3, H, W]` → (2 global crops `[3, G, G]`, `local_number` local crops `[3, L, L]`), float32."""
        g1, g2, gl = self.blur_p
        globals_ = [
            self._view(img, self.global_size, self.global_scale, g1, 0.0, rng),
            self._view(img, self.global_size, self.global_scale, g2, SOLARIZE_P, rng),
        ]
        locals_ = [self._view(img, self.local_size, self.local_scale, gl, 0.0, rng) for _ in range(self.local_number)]
        return globals_, locals_
