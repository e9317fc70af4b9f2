"""Axial rotary position embedding of DINOv3 (no learned weights).

Patch (i, j) of an h×w grid has centre coordinates `((i + 0.5) / h, (j + 0.5) / w)` ("separate"
normalisation; "min"/"max" divide both by min(h, w) / max(h, w)), mapped to [-1, 1] by `2c - 1`. For head
dimension d the angles are `2π · coord / periods` with `periods[k] = base^(2k / (d/2))`, k < d/4, giving a
vector `[y-angles ‖ x-angles]` of d/2 entries that is tiled twice to length d. A query or key is rotated as
`x·cos + rotate_half(x)·sin`, `rotate_half([a, b]) = [-b, a]`, i.e. dimension j is paired with j + d/2. CLS and
register tokens are not rotated.

`periods` is a persistent buffer (`rope_embed.periods` in the released checkpoints) and is loaded, not
recomputed. Training-only coordinate augmentations: a shift U(-s, s) per axis, a jitter ×exp(U(±ln J)) per
axis and a rescale ×exp(U(±ln R)) shared by both axes; one draw per call, so a forward that recomputes the
embedding in every block (as the released code does) draws per block. Computed in float32.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn


class RopeEmbedding(nn.Module):
    def __init__(
        self,
        head_dim: int,
        base: float | None = 100.0,
        min_period: float | None = None,
        max_period: float | None = None,
        normalize_coords: Literal["separate", "min", "max"] = "separate",
        shift: float | None = None,
        jitter: float | None = None,
        rescale: float | None = None,
    ) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4, got {head_dim}")
        if (base is None) == (min_period is None or max_period is None):
            raise ValueError("give either `base` or both `min_period` and `max_period`")
        self.head_dim = head_dim
        self.base, self.min_period, self.max_period = base, min_period, max_period
        self.normalize_coords = normalize_coords
        self.shift, self.jitter, self.rescale = shift, jitter, rescale
        self.register_buffer("periods", torch.empty(head_dim // 4), persistent=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        n = self.head_dim // 4
        if self.base is not None:
            periods = self.base ** (2 * torch.arange(n, dtype=torch.float32) / (self.head_dim // 2))
        else:  # geometric progression from min_period to max_period
            ratio = self.max_period / self.min_period
            periods = ratio ** torch.linspace(0, 1, n, dtype=torch.float32) / ratio * self.max_period
        with torch.no_grad():
            self.periods.copy_(periods.to(self.periods.device))

    @property
    def augments(self) -> bool:
        """Whether a call in the current mode draws random coordinate augmentations."""
        return self.training and any(v is not None for v in (self.shift, self.jitter, self.rescale))

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return `(sin, cos)`, each `[h·w, head_dim]` in float32."""
        dd = {"device": self.periods.device, "dtype": torch.float32}
        if self.normalize_coords == "separate":
            denom_h, denom_w = h, w
        elif self.normalize_coords == "max":
            denom_h = denom_w = max(h, w)
        elif self.normalize_coords == "min":
            denom_h = denom_w = min(h, w)
        else:
            raise ValueError(f"unknown RoPE coordinate normalisation {self.normalize_coords!r}")
        coords_h = torch.arange(0.5, h, **dd) / denom_h  # [h]
        coords_w = torch.arange(0.5, w, **dd) / denom_w  # [w]
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)  # [h·w, 2]
        coords = 2.0 * coords - 1.0
        if self.training:
            if self.shift is not None:
                coords = coords + torch.empty(2, **dd).uniform_(-self.shift, self.shift)
            if self.jitter is not None:
                log_j = math.log(self.jitter)
                coords = coords * torch.empty(2, **dd).uniform_(-log_j, log_j).exp()
            if self.rescale is not None:
                log_r = math.log(self.rescale)
                coords = coords * torch.empty(1, **dd).uniform_(-log_r, log_r).exp()
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float()[None, None, :]  # [h·w, 2, d/4]
        angles = angles.flatten(1, 2).tile(2)  # [h·w, d]
        return torch.sin(angles), torch.cos(angles)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate the last `sin.shape[-2]` tokens of `x [B, H, N, d]` in float32; earlier (prefix) tokens pass."""
    n_prefix = x.shape[-2] - sin.shape[-2]
    if x.dtype != torch.float32 or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        prefix, patches = x[..., :n_prefix, :], x[..., n_prefix:, :].float()  # [B, H, h·w, d]
        rotated = patches * cos + _rotate_half(patches) * sin
        return torch.cat([prefix, rotated.to(x.dtype)], dim=-2)
    # Eager float32 inference: the same rotation written into one output buffer, without the temporaries of
    # rotate-half and the concatenation (these passes over q and k are memory-bound on CPU; 4-6 % of a
    # ViT-S/16 forward here). Exporters and autograd take the plain path above.
    half = x.shape[-1] // 2
    out = torch.empty_like(x, memory_format=torch.contiguous_format)  # [B, H, N, d]
    out[..., :n_prefix, :] = x[..., :n_prefix, :]
    patches, rotated = x[..., n_prefix:, :], out[..., n_prefix:, :]  # [B, H, h·w, d]
    torch.mul(patches, cos, out=rotated)
    rotated[..., :half].addcmul_(patches[..., half:], sin[..., :half], value=-1.0)
    rotated[..., half:].addcmul_(patches[..., :half], sin[..., half:])
    return out
