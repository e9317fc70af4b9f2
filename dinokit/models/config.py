"""`ViTConfig`: every architectural choice of a DINOv2 / DINOv3 vision transformer, as data.

The two generations differ only in values of this dataclass (position embedding kind, registers, FFN kind,
norm epsilon, key-bias mask, extra norms), so one `VisionTransformer` builds both. Sizes of the released
models live in `presets.py`; `weights.py` rebuilds a config from a checkpoint's tensor shapes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .layers.mlp import FFN_LAYERS, swiglu_hidden_dim

GENERATIONS = ("dinov2", "dinov3")


@dataclass(frozen=True)
class ViTConfig:
    kind = "vit"  # class attribute, not a field: tells configs of different backbone kinds apart

    generation: str = "dinov3"  # "dinov2" | "dinov3": checkpoint naming, licence, preprocessing
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    ffn: str = "mlp"  # "mlp" | "swiglu" (w1, w2, w3) | "swiglu_packed" (w12, w3; DINOv2 ViT-g)
    ffn_ratio: float = 4.0
    ffn_hidden_dim: int | None = None  # exact FFN width; overrides ffn_ratio (set when read from weights)
    swiglu_align: int = 8
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    mask_k_bias: bool = False
    layerscale_init: float | None = 1e-5  # None: no LayerScale
    num_registers: int = 0
    pos_embed: str = "rope"  # "learned" (DINOv2) | "rope" (DINOv3)
    pos_grid: int = 37  # learned: side of the pretrained position grid (37 = 518 px / 14)
    pos_interpolation: str = "antialias"  # learned: "legacy" (+0.1 offset) | "antialias" (size=, antialias)
    rope_base: float | None = 100.0
    rope_min_period: float | None = None
    rope_max_period: float | None = None
    rope_normalize_coords: str = "separate"
    rope_shift: float | None = None
    rope_jitter: float | None = None
    rope_rescale: float | None = None
    norm_eps: float = 1e-5
    cls_norm: bool = False  # an untied norm for CLS + registers
    local_cls_norm: bool = False  # an extra norm for CLS + registers of local crops (training only)
    drop_path_rate: float = 0.0
    drop_path_uniform: bool = True  # False: linearly increasing over depth
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # free-form notes (e.g. source)

    def __post_init__(self) -> None:
        problems = []
        if self.generation not in GENERATIONS:
            problems.append(f"generation must be one of {GENERATIONS}, got {self.generation!r}")
        if self.ffn not in FFN_LAYERS:
            problems.append(f"ffn must be one of {sorted(FFN_LAYERS)}, got {self.ffn!r}")
        if self.pos_embed not in ("learned", "rope"):
            problems.append(f"pos_embed must be 'learned' or 'rope', got {self.pos_embed!r}")
        if self.pos_interpolation not in ("legacy", "antialias"):
            problems.append(f"pos_interpolation must be 'legacy' or 'antialias', got {self.pos_interpolation!r}")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        elif self.pos_embed == "rope" and self.head_dim % 4:
            problems.append(f"RoPE needs a head dimension divisible by 4, got {self.head_dim}")
        if min(self.patch_size, self.depth, self.embed_dim, self.num_heads) < 1 or self.num_registers < 0:
            problems.append("patch_size, depth, embed_dim and num_heads must be positive; num_registers >= 0")
        if not 0.0 <= self.drop_path_rate < 1.0:
            problems.append(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if problems:
            raise ConfigError("invalid backbone config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = int(self.embed_dim * self.ffn_ratio)
        return hidden if self.ffn == "mlp" else swiglu_hidden_dim(hidden, self.swiglu_align)

    def replace(self, **overrides: Any) -> ViTConfig:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown backbone option(s) {unknown}; valid options: {sorted(self.to_dict())}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        return cls().replace(**d)
