"""The dino.txt vision tower: trainable head blocks on top of a frozen backbone (DINOv3 paper §dino.txt; released
`dinov3/eval/text/vision_tower.py::VisionTower / VisionHead`, blocks from
`dinov3/layers/block.py::SelfAttentionBlock` with `SwiGLUFFN(align_to=64)` and layer scale).

Input of the head, as released (`get_intermediate_layers(n=1, norm=True, return_class_token=True,
return_extra_tokens=True)`): the last block's tokens after the backbone's final norm(s), in the order
[CLS, registers, patches]; here they come from `forward_features` (normed CLS, registers and patches, with the
untied CLS norm where the backbone has one, as the released method applies it).
Head: pre-norm blocks `x + ls1(attn(LN(x)))`, `x + ls2(swiglu(LN(x)))` (qkv without bias, no RoPE, non-causal
SDPA, as many heads as the backbone), a final LayerNorm, an optional linear projection (absent in the released
model). Image embedding = [head CLS ‖ mean (or max) of the head patch tokens]; registers feed the attention but
not the pooling. Parameter names are the released ones under `visual_model.head.`.

Training (`dinokit/train/dinotxt.py`) builds the head with `drop_path` (0.3 as released): in training mode each
residual branch then runs on a random subset of `max(int(B·(1 − rate)), 1)` samples of the batch and is added
back scaled by B / subset, the released `drop_add_residual_stochastic_depth`; in eval mode, or at rate 0, the
forward is the plain one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers.mlp import SwiGLU
from .text_transformer import LN_EPS, LayerScale

PATCH_POOLS = ("mean", "max")


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, D/heads]
        return self.proj(out.transpose(1, 2).reshape(B, N, D))  # [B, N, D]


def subset_residual(x: torch.Tensor, branch, rate: float) -> torch.Tensor:
    """`x + branch(x)` computed on a random subset of the batch (stochastic depth as released), scaled up."""
    b = x.shape[0]
    keep = max(int(b * (1 - rate)), 1)
    idx = torch.randperm(b, device=x.device)[:keep]
    return torch.index_add(x, 0, idx, branch(x[idx]).to(x.dtype), alpha=b / keep)


class HeadBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int, layer_scale: bool = True, qkv_bias: bool = False,
                 drop_path: float = 0.0):  # fmt: skip
        super().__init__()
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = SelfAttention(dim, num_heads, qkv_bias)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = SwiGLU(dim, hidden)
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop_path > 0:
            x = subset_residual(x, lambda t: self.ls1(self.attn(self.norm1(t))), self.drop_path)
            return subset_residual(x, lambda t: self.ls2(self.mlp(self.norm2(t))), self.drop_path)
        x = x + self.ls1(self.attn(self.norm1(x)))  # [B, 1 + R + h·w, D]
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionHead(nn.Module):
    """Backbone tokens `[B, 1 + R + h·w, D]` → head tokens `[B, 1 + R + h·w, E/2]`."""

    def __init__(self, dim: int, num_heads: int, n_blocks: int, hidden: int, out_dim: int | None = None,
                 layer_scale: bool = True, qkv_bias: bool = False, drop_path: float = 0.0):  # fmt: skip
        super().__init__()
        self.blocks = nn.ModuleList(HeadBlock(dim, num_heads, hidden, layer_scale, qkv_bias, drop_path)
                                    for _ in range(n_blocks))  # fmt: skip
        self.ln_final = nn.LayerNorm(dim, eps=LN_EPS) if n_blocks else nn.Identity()
        self.linear_projection = nn.Linear(dim, out_dim, bias=False) if out_dim else nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.linear_projection(self.ln_final(tokens))


class VisionTower(nn.Module):
    """Images `[B, 3, H, W]` → (image embedding `[B, E]`, head patch tokens `[B, h·w, E/2]`, grid (h, w))."""

    def __init__(self, backbone: nn.Module, head: VisionHead, patch_pool: str = "mean"):
        super().__init__()
        if patch_pool not in PATCH_POOLS:
            raise ValueError(f"unknown patch pooling {patch_pool!r}; use one of {', '.join(PATCH_POOLS)}")
        self.backbone, self.head, self.patch_pool = backbone, head, patch_pool

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        out = self.backbone.forward_features(images)
        n_prefix = 1 + out.registers.shape[1]
        tokens = torch.cat([out.cls[:, None], out.registers, out.patches], dim=1)  # [B, 1 + R + h·w, D]
        tokens = self.head(tokens)  # [B, 1 + R + h·w, E/2]
        patches = tokens[:, n_prefix:]  # [B, h·w, E/2]
        pooled = patches.mean(dim=1) if self.patch_pool == "mean" else patches.max(dim=1).values  # [B, E/2]
        return torch.cat([tokens[:, 0], pooled], dim=-1), patches, out.grid  # [B, E]
