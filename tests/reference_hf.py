"""Hugging Face transformers models used as the reference implementation in parity tests.

`Dinov2WithRegistersModel` and `DINOv3ViTModel` reproduce the released code. `Dinov2Model` does not at
non-native resolutions (it resizes the position embedding with `size=` instead of the released
`scale_factor = (n + 0.1) / 37` rule), so `legacy_dinov2` patches its resizing with the released rule written
out independently here; everything else in that model stays HF's own code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights with every part mattering: LayerScale gains ~0.5 (not 1e-5), norms around 1, tokens non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "lambda" in name else 0.05))
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)
    return model.eval()


def dinov2(registers: bool, swiglu: bool = False, width: int = 64, depth: int = 2, heads: int = 2, seed: int = 0):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    kw = dict(
        num_hidden_layers=depth, hidden_size=width, num_attention_heads=heads, image_size=518, patch_size=14,
        use_swiglu_ffn=swiglu,
    )  # fmt: skip
    if registers:
        return randomize(Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**kw, num_register_tokens=4)), seed)
    model = randomize(Dinov2Model(Dinov2Config(**kw)), seed)
    model.embeddings.interpolate_pos_encoding = _legacy_interpolation(model.embeddings)
    return model


def dinov3(gated: bool, width: int = 64, depth: int = 2, heads: int = 2, seed: int = 0):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    cfg = DINOv3ViTConfig(
        num_hidden_layers=depth, hidden_size=width, num_attention_heads=heads, num_register_tokens=4,
        intermediate_size=(6 * width * 2 // 3 + 7) // 8 * 8 if gated else 4 * width, use_gated_mlp=gated,
        hidden_act="silu" if gated else "gelu",
    )  # fmt: skip
    return randomize(DINOv3ViTModel(cfg), seed)


def _legacy_interpolation(embeddings):
    """The released DINOv2 rule for models without registers, as a replacement for HF's method."""

    def interpolate(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        pos = embeddings.position_embeddings
        n = pos.shape[1] - 1
        side = int(math.sqrt(n))
        h, w = height // 14, width // 14
        if n == x.shape[1] - 1 and height == width:
            return pos
        grid = pos[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic")
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([pos[:, :1], grid.to(pos.dtype)], dim=1)

    return interpolate


@torch.inference_mode()
def reference_outputs(hf_model, x: torch.Tensor, n_registers: int) -> dict[str, torch.Tensor]:
    """Final-normed CLS / registers / patches, pre-norm tokens and each block's normed output."""
    out = hf_model(pixel_values=x, output_hidden_states=True)
    last = out.last_hidden_state
    norm = hf_model.layernorm if hasattr(hf_model, "layernorm") else hf_model.norm
    ref = {
        "cls": last[:, 0],
        "registers": last[:, 1 : 1 + n_registers],
        "patches": last[:, 1 + n_registers :],
        "prenorm": out.hidden_states[-1],
    }
    for i, hidden in enumerate(out.hidden_states[1:]):
        ref[f"block{i}"] = norm(hidden)
    return ref
