"""Helpers for the tools' tests: small generated photos and trained-like LayerScale."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from dinokit.demo_photo import generated_scene


def write_png(path, size: int = 96, seed: int = 0, crop: tuple[int, int] | None = None) -> None:
    img = generated_scene(size, seed).permute(1, 2, 0).numpy()
    if crop is not None:
        img = img[: crop[0], : crop[1]]
    Image.fromarray(np.ascontiguousarray(img)).save(path)

def trained_like(model):
    """Set LayerScale gammas to trained-like values: at their 1e-5 initialisation every block is nearly the
    identity, which would hide errors in anything that changes the blocks (export, adapters)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, gamma in model.named_parameters():
            if name.endswith("gamma"):
                gamma.copy_(torch.rand(gamma.shape, generator=g) * 0.8 + 0.2)
    return model
