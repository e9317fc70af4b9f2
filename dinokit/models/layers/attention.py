"""Multi-head self-attention with a fused qkv projection, optional RoPE and PyTorch's fused SDPA kernel.

DINOv3 trains with `mask_k_bias`: the qkv bias is multiplied by a buffer `bias_mask` that is 1 for the query
and value thirds and 0 for the key third (a key bias cannot change a softmax over keys, so it is kept at
zero). The buffer is part of the released checkpoints (`attn.qkv.bias_mask`) and is loaded as such.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fused import apply_linear, linear
from .rope import apply_rope


class MaskedKeyBiasLinear(nn.Linear):
    """A qkv `Linear` whose bias is multiplied by `bias_mask` (1 / 0 / 1 over the q / k / v thirds)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if out_features % 3:
            raise ValueError("a qkv projection needs an output size divisible by 3")
        if bias:
            mask = torch.ones(out_features)
            mask[out_features // 3 : 2 * out_features // 3] = 0
            self.register_buffer("bias_mask", mask)
        else:
            self.bias_mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.bias_mask.to(self.bias.dtype)
        return linear(x, self.weight, bias)


class Attention(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True, mask_k_bias: bool = False
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = (MaskedKeyBiasLinear if mask_k_bias else nn.Linear)(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def _qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None):
        B, N, D = x.shape
        qkv = apply_linear(self.qkv, x).reshape(B, N, 3, self.num_heads, D // self.num_heads)  # [B, N, 3, H, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, d] each
        if rope is not None:
            sin, cos = rope
            q, k = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
        return q, k, v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self._qkv(x, rope)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, d]
        return apply_linear(self.proj, out.transpose(1, 2).reshape(B, N, D))

    def attention_map(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The softmax attention weights `[B, H, N, N]` that `forward` applies (for visualisation)."""
        q, k, _ = self._qkv(x, rope)
        return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
