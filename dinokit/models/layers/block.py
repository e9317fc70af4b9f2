"""Pre-norm transformer block: `x += ls1(attn(norm1(x)))`, then `x += ls2(ffn(norm2(x)))`.

Stochastic depth is the released "batch-subset residual": in training, each branch runs on
`max(int(B·(1 − p)), 1)` randomly chosen samples only and its output is added back to those samples scaled by
`B / kept`; the attention and FFN branches draw independent subsets. This saves the compute of the dropped
samples, unlike per-sample DropPath masks, and is what DINOv2 and DINOv3 trained with.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention
from .layer_scale import LayerScale
from .mlp import FFN_LAYERS

Rope = tuple[torch.Tensor, torch.Tensor] | None


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn: str = "mlp",
        ffn_hidden: int = 3072,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        mask_k_bias: bool = False,
        layerscale_init: float | None = 1e-5,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, mask_k_bias=mask_k_bias)
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = FFN_LAYERS[ffn](dim, ffn_hidden, bias=ffn_bias)
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        self.drop_path = drop_path
        self.checkpointing = False  # recompute the activations in the backward pass (training memory)

    @staticmethod
    def _residual(x: torch.Tensor, branch: torch.Tensor, ls: nn.Module) -> torch.Tensor:
        # x + branch·gamma in one pass over memory (addcmul) instead of a multiply and an add
        return torch.addcmul(x, branch, ls.gamma) if isinstance(ls, LayerScale) else x + branch

    def forward(self, x: torch.Tensor, rope: Rope = None) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, rope, use_reentrant=False)
        return self._forward(x, rope)

    def _forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        if not (self.training and self.drop_path > 0):
            x = self._residual(x, self.attn(self.norm1(x), rope), self.ls1)
            return self._residual(x, self.mlp(self.norm2(x)), self.ls2)
        B = x.shape[0]
        kept = max(int(B * (1 - self.drop_path)), 1)
        scale = B / kept
        idx = torch.randperm(B, device=x.device)[:kept]
        branch = self.ls1(self.attn(self.norm1(x[idx]), rope))  # [kept, N, D]
        x = torch.index_add(x, 0, idx, branch.to(x.dtype), alpha=scale)
        idx = torch.randperm(B, device=x.device)[:kept]
        branch = self.ls2(self.mlp(self.norm2(x[idx])))
        return torch.index_add(x, 0, idx, branch.to(x.dtype), alpha=scale)
