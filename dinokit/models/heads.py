"""DINO / iBOT projection heads (DINO arXiv:2104.14294 §3; DINOv2 §3; DINOv3 §3).

`x → Linear(D, hidden) → GELU → [Linear(hidden, hidden) → GELU]… → Linear(hidden, bottleneck) → L2-normalise
→ last layer to K prototypes (no bias)`. The last layer is weight-normalised in DINOv2 (`weight_g [K, 1]`
initialised to 1 and trained, `weight_v [K, bottleneck]`; row k of the weight is `g_k · v_k / ‖v_k‖`) and a
plain linear layer in DINOv3 (`weight`). Parameter names are those of the released training checkpoints
(`mlp.{0,2,4}.*`, `last_layer.weight_g/weight_v` or `last_layer.weight`).

Initialisation as released: truncated normal (std 0.02) for the MLP and, in DINOv3, the last layer; the
weight-normed last layer starts from `nn.Linear`'s default initialisation of `v`, as in DINOv2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight normalisation per output row: `W_k = g_k · v_k / ‖v_k‖`."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        v = nn.Linear(in_features, out_features, bias=False).weight.detach()  # nn.Linear's default init
        self.weight_v = nn.Parameter(v.clone())  # [K, bottleneck]
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))  # [K, 1]

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))  # [K, bottleneck]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    def __init__(
        self,
        in_dim: int,
        n_prototypes: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        last_layer: str = "weight_norm",  # "weight_norm" (DINOv2) | "plain" (DINOv3)
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if last_layer == "weight_norm":
            self.last_layer: nn.Module = WeightNormLinear(bottleneck_dim, n_prototypes)
        elif last_layer == "plain":
            self.last_layer = nn.Linear(bottleneck_dim, n_prototypes, bias=False)
            nn.init.trunc_normal_(self.last_layer.weight, std=0.02)
        else:
            raise ValueError(f"last_layer must be 'weight_norm' or 'plain', got {last_layer!r}")
        self.n_prototypes = n_prototypes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features `[N, D]` → prototype logits `[N, K]`."""
        x = self.mlp(x)  # [N, bottleneck]
        x = F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)  # [N, K]


class Projector(nn.Module):
    """Feature distillation's learned projections of a student's tokens to a teacher's width: one linear map for
    the CLS token and one for the patches (`losses/features.py`)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.cls = nn.Linear(in_dim, out_dim)
        self.patches = nn.Linear(in_dim, out_dim)
