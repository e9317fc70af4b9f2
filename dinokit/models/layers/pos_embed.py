"""Learned absolute position embedding of DINOv2 and its resizing to other patch grids.

The released DINOv2 models were trained with a 37×37 grid (518 px) plus one CLS slot. For any other grid the
patch part is bicubically resized in float32 (align_corners=False), with one of two rules that the released
models depend on:

- "legacy" (models without registers): `scale_factor = ((h + 0.1) / 37, (w + 0.1) / 37)`, no antialias. The
  0.1 offset is a historical guard against floor() rounding the output size down; because the scale factor
  (not the size) drives the sampling grid, the result differs from `size=(h, w)`.
- "antialias" (models with registers): `size=(h, w)`, antialias on.

Hugging Face's `Dinov2Model` applies neither to models without registers (it uses `size=` without antialias),
so its outputs differ from the released code away from 518 px; this module follows the released code.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

PosInterpolation = Literal["legacy", "antialias"]


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], rule: PosInterpolation, legacy_offset: float = 0.1
) -> torch.Tensor:
    """Resize `pos_embed [1, 1 + M·M, D]` (CLS slot first) to `[1, 1 + h·w, D]` for the patch grid (h, w)."""
    n_pos = pos_embed.shape[1] - 1
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        raise ValueError(f"position embedding has {n_pos} patch slots, which is not a square grid")
    h, w = grid
    if (h, w) == (side, side):
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_pos = pos_embed[:, :1].float()  # [1, 1, D]
    patch_pos = pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)  # [1, D, M, M]
    if rule == "legacy":
        scale = ((h + legacy_offset) / side, (w + legacy_offset) / side)
        patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", antialias=False)
    elif rule == "antialias":
        patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", antialias=True)
    else:
        raise ValueError(f"unknown position-embedding interpolation rule {rule!r}")
    if patch_pos.shape[-2:] != (h, w):  # the legacy rule could round a size down; the released code asserts too
        raise RuntimeError(f"interpolated grid {tuple(patch_pos.shape[-2:])} != requested {(h, w)}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, dim)  # [1, h·w, D]
    return torch.cat([cls_pos, patch_pos], dim=1).to(pos_embed.dtype)
