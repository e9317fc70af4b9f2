"""The dino.txt text encoder: a causal transformer trained from scratch (DINOv3 paper §dino.txt; released
`dinov3/eval/text/text_transformer.py::TextTransformer`, `text_tower.py::TextTower / TextHead`, blocks from
`dinov3/layers/block.py::CausalSelfAttentionBlock`).

token embedding + learned positions (first N of `context_length`) → pre-norm blocks
`x + ls1(attn(LN(x)))`, `x + ls2(mlp(LN(x)))` (qkv without bias, exact-GELU MLP, causal SDPA, layer scale only
when the checkpoint holds gammas) → final LayerNorm → optional head blocks + LayerNorm → the token at the end of
text (argmax of the ids: the end token 49407 is the largest id) → optional linear projection without bias.

Parameter names are the released ones under `text_model.backbone.` / `text_model.head.`, so a released file
loads strictly. Deviations: the projection is applied to the pooled token only (the release projects every token
and then pools: the same numbers, as the projection acts per token); dropout is not built (0 in the release).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-5  # torch's LayerNorm default, which the release uses throughout the text tower
POOLS = ("argmax", "first", "last")


class LayerScale(nn.Module):
    """Per-channel scale `x · γ` (released name `gamma`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention; causal or not (the released text head blocks are not)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, is_causal: bool) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)  # [B, heads, N, D/heads]
        return self.proj(out.transpose(1, 2).reshape(B, N, D))  # [B, N, D]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TextBlock(nn.Module):
    """A pre-norm block with the released names (`attention_norm`, `attention`, `ffn_norm`, `feed_forward`)."""

    def __init__(self, dim: int, num_heads: int, hidden: int, causal: bool, layer_scale: bool, qkv_bias: bool):
        super().__init__()
        self.causal = causal
        self.attention_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.attention = CausalSelfAttention(dim, num_heads, qkv_bias)
        self.ffn_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.feed_forward = Mlp(dim, hidden)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attention(self.attention_norm(x), self.causal))  # [N, T, W]
        return x + self.ls2(self.feed_forward(self.ffn_norm(x)))


class TextBackbone(nn.Module):
    """Token ids `[N, T]` → final-normed tokens `[N, T, W]`."""

    def __init__(self, vocab_size: int, context_length: int, width: int, depth: int, num_heads: int, hidden: int,
                 causal: bool = True, layer_scale: bool = False, qkv_bias: bool = False):  # fmt: skip
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, width))
        self.blocks = nn.ModuleList(
            TextBlock(width, num_heads, hidden, causal, layer_scale, qkv_bias) for _ in range(depth)
        )
        self.ln_final = nn.LayerNorm(width, eps=LN_EPS)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]  # [N, T, W]
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)


class TextHead(nn.Module):
    """Optional extra blocks + LayerNorm (none in the released model), then an optional projection."""

    def __init__(self, width: int, embed_dim: int | None, num_heads: int, n_blocks: int, hidden: int, causal: bool,
                 layer_scale: bool = False, qkv_bias: bool = False):  # fmt: skip
        super().__init__()
        self.blocks = nn.ModuleList(
            TextBlock(width, num_heads, hidden, causal, layer_scale, qkv_bias) for _ in range(n_blocks)
        )
        self.ln_final = nn.LayerNorm(width, eps=LN_EPS) if n_blocks else nn.Identity()
        self.linear_projection = nn.Linear(width, embed_dim, bias=False) if embed_dim else nn.Identity()

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)  # [N, T, W]


class TextEncoder(nn.Module):
    """Token ids `[N, T]` → text embedding `[N, E]` (the released `TextTower`)."""

    def __init__(self, backbone: TextBackbone, head: TextHead, pool: str = "argmax"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown text pooling {pool!r}; use one of {', '.join(POOLS)}")
        self.backbone, self.head, self.pool = backbone, head, pool

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.head.tokens(self.backbone(ids))  # [N, T, W]
        if self.pool == "argmax":  # the end token has the largest id; argmax takes its first occurrence
            x = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]  # [N, W]
        else:
            x = x[:, 0] if self.pool == "first" else x[:, -1]  # [N, W]
        return self.head.linear_projection(x)  # [N, E]
