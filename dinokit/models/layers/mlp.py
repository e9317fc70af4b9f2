"""Feed-forward layers of the released models.

- `Mlp`: fc1 → exact GELU → fc2 (all DINOv2 models but ViT-g, DINOv3 S/B/L).
- `SwiGLUPacked`: DINOv2 ViT-g; one projection `w12` whose output halves are (x1, x2), then
  `w3(silu(x1) * x2)`.
- `SwiGLU`: DINOv3 "plus" models and ViT-7B; separate `w1`, `w2`, `w3` with `w3(silu(w1 x) * w2 x)`.

The hidden width is decided by the caller (`swiglu_hidden_dim` reproduces the released rounding), so a
checkpoint's exact shapes can always be rebuilt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fused import apply_linear


def swiglu_hidden_dim(hidden: int, align: int = 8) -> int:
    """The released SwiGLU width for a nominal MLP width: 2/3 of it, rounded up to a multiple of `align`."""
    d = int(hidden * 2 / 3)
    return d + (-d % align)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_linear(self.fc2, apply_linear(self.fc1, x, gelu=True))


class SwiGLUPacked(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = apply_linear(self.w12, x).chunk(2, dim=-1)  # [..., hidden] each
        return apply_linear(self.w3, F.silu(x1) * x2)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_linear(self.w3, F.silu(apply_linear(self.w1, x)) * apply_linear(self.w2, x))


FFN_LAYERS: dict[str, type[nn.Module]] = {"mlp": Mlp, "swiglu": SwiGLU, "swiglu_packed": SwiGLUPacked}
