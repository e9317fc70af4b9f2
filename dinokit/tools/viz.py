"""Pictures of features: the PCA colouring of patch features used throughout the DINO papers.

`pca_rgb` projects patch features on their first three principal components and maps them to RGB. Fitting
one PCA jointly over several images gives them consistent colours. The sign of each component is fixed
(largest loading positive) so the picture is deterministic, and each channel is scaled by robust
percentiles (1 %, 99 %) rather than min/max so a few outlier patches (e.g. high-norm artefact tokens) do not
wash out the image. An optional foreground mask keeps patches whose first component exceeds a threshold, as
in the papers' figures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def pca_rgb(
    patches: torch.Tensor | Sequence[torch.Tensor],
    foreground_threshold: float | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """Patch features `[h, w, D]` (or a list of them, fitted jointly) → RGB maps `[h, w, 3]` in [0, 1].

    With `foreground_threshold`, patches whose normalised first component is below it are painted black."""
    single = isinstance(patches, torch.Tensor)
    maps = [patches] if single else list(patches)
    flat = torch.cat([m.reshape(-1, m.shape[-1]) for m in maps]).double()  # [N, D]
    centred = flat - flat.mean(0)
    _, eigvecs = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues; deterministic, unlike SVD sampling
    components = eigvecs[:, -3:].flip(-1)  # [D, 3], largest first
    signs = torch.sign(components.gather(0, components.abs().argmax(0, keepdim=True)))
    proj = centred @ (components * signs)  # [N, 3]
    lo, hi = torch.quantile(proj, 0.01, dim=0), torch.quantile(proj, 0.99, dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1).float()  # [N, 3]
    if foreground_threshold is not None:
        rgb = rgb * (rgb[:, :1] >= foreground_threshold)
    out, start = [], 0
    for m in maps:
        n = m.shape[0] * m.shape[1]
        out.append(rgb[start : start + n].reshape(m.shape[0], m.shape[1], 3))
        start += n
    return out[0] if single else out


def upsample_map(rgb: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """`[h, w, C]` → `[H, W, C]`."""
    return F.interpolate(rgb.permute(2, 0, 1)[None].float(), size=size, mode=mode)[0].permute(1, 2, 0)


def save_side_by_side(
    image: torch.Tensor, feature_rgb: torch.Tensor, path: str | os.PathLike, gap: int = 8
) -> None:
    """Save `image` (uint8 `[3, H, W]`) beside a feature map `[h, w, 3]` upsampled to the same size."""
    H, W = image.shape[-2:]
    left = image.permute(1, 2, 0).numpy()
    right = (upsample_map(feature_rgb, (H, W)).numpy() * 255 + 0.5).astype(np.uint8)
    canvas = np.full((H, 2 * W + gap, 3), 255, dtype=np.uint8)
    canvas[:, :W], canvas[:, W + gap :] = left, right
    tmp = f"{path}.tmp.png"
    Image.fromarray(canvas).save(tmp)
    os.replace(tmp, path)
