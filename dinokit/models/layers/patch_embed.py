"""Patch embedding: a convolution with kernel = stride = patch size, flattened row-major.

Same parameters (`proj.weight`, `proj.bias`) as the released DINOv2 / DINOv3 models. Pixels beyond the last
whole patch are dropped by the strided convolution, which is what the DINOv3 code does for any input size;
DINOv2 requires sides that are multiples of the patch size and the backbone checks that before calling this.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)  # [B, D, h, w]
        h, w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), (h, w)  # [B, h·w, D]
