"""One table: preset name → `ViTConfig`, for every released model plus small sizes for CPU work and tests.

(The DINOv3 ConvNeXt sizes are the table `CONVNEXT_PRESETS` in `convnext.py`; `match_preset` names both kinds.)

The released values are those of the official hub constructors (DINOv2: 518 px learned position grid,
LayerNorm eps 1e-6; DINOv3: RoPE base 100 with train-time rescale 2, eps 1e-5, key-bias mask, 4 registers).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .config import ViTConfig
from .convnext import ConvNeXtConfig, match_convnext_preset

_V2 = dict(generation="dinov2", patch_size=14, pos_embed="learned", pos_grid=37, norm_eps=1e-6)
_V2_LEGACY = dict(_V2, num_registers=0, pos_interpolation="legacy")
_V2_REG = dict(_V2, num_registers=4, pos_interpolation="antialias")
_V3 = dict(
    generation="dinov3", patch_size=16, pos_embed="rope", rope_base=100.0, rope_rescale=2.0, norm_eps=1e-5,
    mask_k_bias=True, num_registers=4,
)  # fmt: skip

_SIZES = {  # embed_dim, depth, num_heads
    "s": dict(embed_dim=384, depth=12, num_heads=6),
    "b": dict(embed_dim=768, depth=12, num_heads=12),
    "l": dict(embed_dim=1024, depth=24, num_heads=16),
    "g": dict(embed_dim=1536, depth=40, num_heads=24),
    "h": dict(embed_dim=1280, depth=32, num_heads=20),
    "7b": dict(embed_dim=4096, depth=40, num_heads=32),
    "t": dict(embed_dim=192, depth=12, num_heads=3),  # ViT-Ti: laptop-sized training
    # unit tests: milliseconds per forward; head dim 64 like every released model, so shapes identify it
    "test": dict(embed_dim=128, depth=2, num_heads=2),
}
_SWIGLU6 = dict(ffn="swiglu", ffn_ratio=6.0)

PRESETS: dict[str, dict[str, Any]] = {
    # DINOv2 (arXiv:2304.07193) and DINOv2 with registers (arXiv:2309.16588)
    "dinov2_vits14": dict(_V2_LEGACY, **_SIZES["s"]),
    "dinov2_vitb14": dict(_V2_LEGACY, **_SIZES["b"]),
    "dinov2_vitl14": dict(_V2_LEGACY, **_SIZES["l"]),
    "dinov2_vitg14": dict(_V2_LEGACY, **_SIZES["g"], ffn="swiglu_packed"),
    "dinov2_vits14_reg4": dict(_V2_REG, **_SIZES["s"]),
    "dinov2_vitb14_reg4": dict(_V2_REG, **_SIZES["b"]),
    "dinov2_vitl14_reg4": dict(_V2_REG, **_SIZES["l"]),
    "dinov2_vitg14_reg4": dict(_V2_REG, **_SIZES["g"], ffn="swiglu_packed"),
    # DINOv3 (arXiv:2508.10104)
    "dinov3_vits16": dict(_V3, **_SIZES["s"]),
    "dinov3_vits16plus": dict(_V3, **_SIZES["s"], **_SWIGLU6),
    "dinov3_vitb16": dict(_V3, **_SIZES["b"]),
    "dinov3_vitl16": dict(_V3, **_SIZES["l"]),
    "dinov3_vitl16_sat": dict(_V3, **_SIZES["l"], local_cls_norm=True),  # satellite (SAT-493M) ViT-L
    "dinov3_vitl16plus": dict(_V3, **_SIZES["l"], **_SWIGLU6),
    "dinov3_vith16plus": dict(_V3, **_SIZES["h"], **_SWIGLU6),
    "dinov3_vit7b16": dict(
        _V3, **_SIZES["7b"], ffn="swiglu", ffn_ratio=3.0, swiglu_align=64, qkv_bias=False, local_cls_norm=True
    ),
    # small sizes (not released): CPU training and tests
    "dinov2_vitt14": dict(_V2_LEGACY, **_SIZES["t"]),
    "dinov2_vitt14_reg4": dict(_V2_REG, **_SIZES["t"]),
    "dinov3_vitt16": dict(_V3, **_SIZES["t"]),
    "dinov2_test": dict(_V2_LEGACY, **_SIZES["test"]),
    "dinov2_test_reg4": dict(_V2_REG, **_SIZES["test"]),
    "dinov2_test_swiglu": dict(_V2_REG, **_SIZES["test"], ffn="swiglu_packed"),
    "dinov3_test": dict(_V3, **_SIZES["test"]),
    "dinov3_test_swiglu": dict(_V3, **_SIZES["test"], **_SWIGLU6),
}

RELEASED = [name for name in PRESETS if "_test" not in name and "vitt" not in name]


def preset_config(name: str, **overrides: Any) -> ViTConfig:
    """The config of a preset, with overrides (e.g. `depth=2`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown backbone preset {name!r}; known presets: {', '.join(PRESETS)}")
    return ViTConfig(**PRESETS[name]).replace(**overrides)


def match_preset(config: ViTConfig | ConvNeXtConfig) -> str | None:
    """The released preset with exactly this architecture (ignoring training-only options), if any."""
    if config.kind == "convnext":  # ConvNeXt sizes live in their own table (convnext.py)
        return match_convnext_preset(config)
    ignored = dict(  # training-only options, notes, and the FFN width's derivation (the exact width decides)
        drop_path_rate=0.0, drop_path_uniform=True, rope_shift=None, rope_jitter=None, rope_rescale=None, extra={},
        ffn_ratio=4.0, swiglu_align=8,
    )  # fmt: skip

    def canonical(c: ViTConfig) -> ViTConfig:  # a key-bias mask means nothing without a qkv bias
        return c.replace(ffn_hidden_dim=c.ffn_hidden, mask_k_bias=c.mask_k_bias and c.qkv_bias, **ignored)

    probe = canonical(config)
    return next((name for name in RELEASED if canonical(preset_config(name)) == probe), None)
