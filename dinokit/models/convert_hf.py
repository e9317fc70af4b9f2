"""Conversion between dinokit state dicts and Hugging Face transformers' DINOv2 / DINOv3 layouts.

Covers `Dinov2Model`, `Dinov2WithRegistersModel`, `DINOv3ViTModel` and `DINOv3ConvNextModel`, and the image
processor configs of the released HF models (`hf_image_processor_config`). Written files
use the layout of the models published on the Hub (`attention.attention.query`, `mlp.weights_in`, `layer.{i}` …),
which every transformers release reads (v5 renames it on load); reading accepts that layout and transformers v5's
in-memory one (`q_proj`, `gate_proj`/`up_proj`, `model.layer.{i}` …).

Differences the conversion bridges:
- HF splits qkv into query / key / value; DINOv3's key bias is masked to zero, so HF has no key bias.
- DINOv2 ViT-g's packed `w12` is HF's `weights_in` (v5: `gate_proj` ‖ `up_proj`).
- HF has no RoPE `periods` buffer; it is rebuilt from `rope_theta` with the released formula.
- HF's DINOv3 has no untied `cls_norm`; `local_cls_norm` (training only) is dropped on export.
- ConvNeXt: HF nests each downsampling layer in its stage (`stages.{s}.downsample_layers.{k}` ↔ released
  `downsample_layers.{s}.{k}`, same order inside), renames the block's layers (`depthwise_conv`, `layer_norm`,
  `pointwise_conv1/2` ↔ `dwconv`, `norm`, `pwconv1/2`) and the final norm (`layer_norm` ↔ `norm`); transformers v5
  holds the stages under `model.` in memory. HF always has γ, so a model without one cannot be exported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from .config import ViTConfig
from .convnext import N_STAGES, ConvNeXtConfig
from .layers.mlp import swiglu_hidden_dim

Tensor = torch.Tensor

_V5_TO_HUB_V2 = [  # transformers v5 in-memory names → Hub names (DINOv2 families)
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
    (".mlp.down_proj.", ".mlp.weights_out."),
]
_PREFIXES = ("dinov2_with_registers.", "dinov2.", "dinov3_vit.", "backbone.")


def released_head_dim(width: int) -> int:
    """Head dim of the released models of this width (what shapes alone cannot tell): 64, but 128 for 7B."""
    return 128 if width == 4096 else 64


def is_hf_state_dict(sd: dict[str, Tensor]) -> bool:
    vit_prefixes = ("embeddings.", *(p + "embeddings." for p in _PREFIXES))
    return any(k.startswith(vit_prefixes) for k in sd) or _is_hf_convnext(sd)


def _strip_prefix(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    for p in _PREFIXES:
        if any(k.startswith(p + "embeddings.") for k in sd):
            return {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
    return dict(sd)


def _n_layers(sd: dict[str, Tensor], pattern: str) -> int:
    found = [int(m.group(1)) for k in sd if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


# ------------------------------------------------------------------------------------------ HF → dinokit
def hf_to_dinokit(sd: dict[str, Tensor], hf_config: dict[str, Any] | None = None):
    """An HF DINOv2/DINOv3 state dict (+ its config.json, if any) → (dinokit state dict, ViTConfig or None).

    The config is None when `hf_config` is missing; `weights.infer_config` then reads the shapes."""
    if _is_hf_convnext(sd):
        return _hf_convnext_to_dinokit(sd, hf_config)
    sd = _strip_prefix(sd)
    is_v3 = "embeddings.patch_embeddings.weight" in sd
    return (_hf_v3_to_dinokit if is_v3 else _hf_v2_to_dinokit)(sd, hf_config)


def _hf_v2_to_dinokit(sd, hf_config):
    for old, new in _V5_TO_HUB_V2:
        sd = {k.replace(old, new): v for k, v in sd.items()}
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "mask_token": sd["embeddings.mask_token"].reshape(1, -1),
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    if "embeddings.register_tokens" in sd:
        out["register_tokens"] = sd["embeddings.register_tokens"]
    depth = _n_layers(sd, r"encoder\.layer\.(\d+)\.")
    for i in range(depth):
        h, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for suffix in ("weight", "bias"):
            for name in ("norm1", "norm2"):
                out[b + f"{name}.{suffix}"] = sd[h + f"{name}.{suffix}"]
            qkv = [h + f"attention.attention.{p}.{suffix}" for p in ("query", "key", "value")]
            if qkv[0] in sd:
                out[b + f"attn.qkv.{suffix}"] = torch.cat([sd[k] for k in qkv])
            if h + f"attention.output.dense.{suffix}" in sd:
                out[b + f"attn.proj.{suffix}"] = sd[h + f"attention.output.dense.{suffix}"]
            if h + f"mlp.fc1.{suffix}" in sd:
                out[b + f"mlp.fc1.{suffix}"] = sd[h + f"mlp.fc1.{suffix}"]
                out[b + f"mlp.fc2.{suffix}"] = sd[h + f"mlp.fc2.{suffix}"]
            elif h + f"mlp.gate_proj.{suffix}" in sd:  # transformers v5 splits the packed projection
                out[b + f"mlp.w12.{suffix}"] = torch.cat(
                    [sd[h + f"mlp.gate_proj.{suffix}"], sd[h + f"mlp.up_proj.{suffix}"]]
                )
                out[b + f"mlp.w3.{suffix}"] = sd[h + f"mlp.weights_out.{suffix}"]
            elif h + f"mlp.weights_in.{suffix}" in sd:
                out[b + f"mlp.w12.{suffix}"] = sd[h + f"mlp.weights_in.{suffix}"]
                out[b + f"mlp.w3.{suffix}"] = sd[h + f"mlp.weights_out.{suffix}"]
        out[b + "ls1.gamma"] = sd[h + "layer_scale1.lambda1"]
        out[b + "ls2.gamma"] = sd[h + "layer_scale2.lambda1"]
    config = None
    if hf_config is not None:
        c = hf_config
        regs = int(c.get("num_register_tokens", 0)) if c.get("model_type") == "dinov2_with_registers" else 0
        D, patch = int(c["hidden_size"]), int(c["patch_size"])
        hidden = int(D * c.get("mlp_ratio", 4))
        swiglu = bool(c.get("use_swiglu_ffn", False))
        config = ViTConfig(
            generation="dinov2",
            patch_size=patch,
            in_chans=int(c.get("num_channels", 3)),
            embed_dim=D,
            depth=int(c["num_hidden_layers"]),
            num_heads=int(c["num_attention_heads"]),
            ffn="swiglu_packed" if swiglu else "mlp",
            ffn_hidden_dim=swiglu_hidden_dim(hidden) if swiglu else hidden,
            qkv_bias=bool(c.get("qkv_bias", True)),
            num_registers=regs,
            pos_embed="learned",
            pos_grid=int(c.get("image_size", 518)) // patch,
            # Registers → the released antialias rule. Without registers HF resizes differently from the
            # released code; dinokit follows the released (legacy) rule, which is what these weights expect.
            pos_interpolation="antialias" if regs else "legacy",
            norm_eps=float(c.get("layer_norm_eps", 1e-6)),
        )
    return out, config


def _hf_v3_to_dinokit(sd, hf_config):
    sd = {re.sub(r"^model\.layer\.", "layer.", k): v for k, v in sd.items()}
    D = sd["embeddings.cls_token"].shape[-1]
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "mask_token": sd["embeddings.mask_token"].reshape(1, D),
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.bias"],
        "norm.weight": sd["norm.weight"],
        "norm.bias": sd["norm.bias"],
    }
    if sd["embeddings.register_tokens"].shape[1]:
        out["register_tokens"] = sd["embeddings.register_tokens"]
    depth = _n_layers(sd, r"layer\.(\d+)\.")
    masked_key_bias = False
    for i in range(depth):
        h, b = f"layer.{i}.", f"blocks.{i}."
        for suffix in ("weight", "bias"):
            for name in ("norm1", "norm2"):
                out[b + f"{name}.{suffix}"] = sd[h + f"{name}.{suffix}"]
            if h + f"attention.o_proj.{suffix}" in sd:
                out[b + f"attn.proj.{suffix}"] = sd[h + f"attention.o_proj.{suffix}"]
            for name in ("up_proj", "down_proj", "gate_proj"):
                if h + f"mlp.{name}.{suffix}" in sd:
                    out[b + f"mlp.{_V3_MLP[name, h + 'mlp.gate_proj.weight' in sd]}.{suffix}"] = sd[
                        h + f"mlp.{name}.{suffix}"
                    ]
        out[b + "attn.qkv.weight"] = torch.cat([sd[h + f"attention.{p}_proj.weight"] for p in "qkv"])
        biases = [sd.get(h + f"attention.{p}_proj.bias") for p in "qkv"]
        if biases[0] is not None or biases[2] is not None:
            if biases[1] is None:  # the released key bias is masked to zero: restore it with its mask
                masked_key_bias = True
                biases[1] = torch.zeros_like(biases[0])
                mask = torch.ones(3 * D)
                mask[D : 2 * D] = 0
                out[b + "attn.qkv.bias_mask"] = mask
            out[b + "attn.qkv.bias"] = torch.cat(biases)
        out[b + "ls1.gamma"] = sd[h + "layer_scale1.lambda1"]
        out[b + "ls2.gamma"] = sd[h + "layer_scale2.lambda1"]
    config = None
    if hf_config is not None:
        c = hf_config
        gated = bool(c.get("use_gated_mlp", False))
        config = ViTConfig(
            generation="dinov3",
            patch_size=int(c["patch_size"]),
            in_chans=int(c.get("num_channels", 3)),
            embed_dim=D,
            depth=int(c["num_hidden_layers"]),
            num_heads=int(c["num_attention_heads"]),
            ffn="swiglu" if gated else "mlp",
            ffn_hidden_dim=int(c["intermediate_size"]),
            qkv_bias="blocks.0.attn.qkv.bias" in out,
            mask_k_bias=masked_key_bias,
            proj_bias=bool(c.get("proj_bias", True)),
            ffn_bias=bool(c.get("mlp_bias", True)),
            num_registers=int(c.get("num_register_tokens", 0)),
            pos_embed="rope",
            rope_base=float(c.get("rope_theta", 100.0)),
            rope_shift=c.get("pos_embed_shift"),
            rope_jitter=c.get("pos_embed_jitter"),
            rope_rescale=c.get("pos_embed_rescale"),
            norm_eps=float(c.get("layer_norm_eps", 1e-5)),
        )
    head_dim = config.head_dim if config is not None else released_head_dim(D)
    out["rope_embed.periods"] = _periods(config.rope_base if config is not None else 100.0, head_dim)
    return out, config


_V3_MLP = {  # (HF name, gated) → dinokit name
    ("up_proj", False): "fc1",
    ("down_proj", False): "fc2",
    ("gate_proj", True): "w1",
    ("up_proj", True): "w2",
    ("down_proj", True): "w3",
}


def _periods(base: float, head_dim: int) -> Tensor:
    return base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))


# ------------------------------------------------------------------------------------------ dinokit → HF
def dinokit_to_hf(sd: dict[str, Tensor], config: ViTConfig | ConvNeXtConfig) -> tuple[dict[str, Tensor], dict]:
    """A dinokit state dict → (Hub-layout HF state dict, HF config.json dict)."""
    if config.kind == "convnext":
        return _dinokit_convnext_to_hf(sd, config)
    if config.cls_norm:
        raise ValueError("HF transformers' DINOv3 has no untied CLS norm; this model cannot be exported to it")
    if (config.pos_embed == "learned") != (config.generation == "dinov2"):
        raise ValueError(f"HF has no {config.generation} model with a {config.pos_embed} position embedding")
    return (_dinokit_to_hf_v2 if config.generation == "dinov2" else _dinokit_to_hf_v3)(sd, config)


def _split_qkv(t: Tensor) -> list[Tensor]:
    return list(t.chunk(3, dim=0))


def _dinokit_to_hf_v2(sd, c: ViTConfig):
    # HF derives the FFN width from `mlp_ratio` (and, for SwiGLU, the released rounding of 2/3 of it).
    ratio = c.ffn_hidden / c.embed_dim if c.ffn == "mlp" else 4
    representable = {
        "mlp": int(c.embed_dim * ratio) == c.ffn_hidden,
        "swiglu_packed": swiglu_hidden_dim(c.embed_dim * 4) == c.ffn_hidden,
    }.get(c.ffn, False)
    if not representable or c.layerscale_init is None or not c.proj_bias:
        raise ValueError("this DINOv2 variant (FFN width, LayerScale or biases) has no HF transformers equivalent")
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": sd["mask_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    if c.num_registers:
        out["embeddings.register_tokens"] = sd["register_tokens"]
    for i in range(c.depth):
        h, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for suffix in ("weight", "bias"):
            for name in ("norm1", "norm2"):
                out[h + f"{name}.{suffix}"] = sd[b + f"{name}.{suffix}"]
            if b + f"attn.qkv.{suffix}" in sd:
                for p, t in zip(("query", "key", "value"), _split_qkv(sd[b + f"attn.qkv.{suffix}"])):
                    out[h + f"attention.attention.{p}.{suffix}"] = t
            out[h + f"attention.output.dense.{suffix}"] = sd[b + f"attn.proj.{suffix}"]
            mlp = ("fc1", "fc2") if c.ffn == "mlp" else ("w12", "w3")
            hf_mlp = ("fc1", "fc2") if c.ffn == "mlp" else ("weights_in", "weights_out")
            for ours, theirs in zip(mlp, hf_mlp):
                if b + f"mlp.{ours}.{suffix}" in sd:
                    out[h + f"mlp.{theirs}.{suffix}"] = sd[b + f"mlp.{ours}.{suffix}"]
        out[h + "layer_scale1.lambda1"] = sd[b + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = sd[b + "ls2.gamma"]
    with_regs = c.num_registers > 0
    hf_config = {
        "model_type": "dinov2_with_registers" if with_regs else "dinov2",
        "architectures": ["Dinov2WithRegistersModel" if with_regs else "Dinov2Model"],
        "hidden_size": c.embed_dim,
        "num_hidden_layers": c.depth,
        "num_attention_heads": c.num_heads,
        "mlp_ratio": int(ratio) if float(ratio).is_integer() else ratio,
        "hidden_act": "gelu",
        "layer_norm_eps": c.norm_eps,
        "image_size": c.pos_grid * c.patch_size,
        "patch_size": c.patch_size,
        "num_channels": c.in_chans,
        "qkv_bias": c.qkv_bias,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": c.ffn == "swiglu_packed",
        "torch_dtype": "float32",
    }
    if with_regs:
        hf_config["num_register_tokens"] = c.num_registers
    return out, hf_config


def _dinokit_to_hf_v3(sd, c: ViTConfig):
    if c.rope_base is None or c.layerscale_init is None or (c.qkv_bias and not c.mask_k_bias):
        raise ValueError("this DINOv3 variant (RoPE periods, LayerScale or key bias) has no HF equivalent")
    D = c.embed_dim
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": sd["mask_token"].reshape(1, 1, D),
        "embeddings.register_tokens": sd.get("register_tokens", torch.zeros(1, 0, D)),
        "embeddings.patch_embeddings.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.bias": sd["patch_embed.proj.bias"],
        "norm.weight": sd["norm.weight"],
        "norm.bias": sd["norm.bias"],
    }
    gated = c.ffn == "swiglu"
    for i in range(c.depth):
        h, b = f"layer.{i}.", f"blocks.{i}."
        q, k, v = _split_qkv(sd[b + "attn.qkv.weight"])
        out.update({h + "attention.q_proj.weight": q, h + "attention.k_proj.weight": k})
        out[h + "attention.v_proj.weight"] = v
        if c.qkv_bias:
            qb, _, vb = _split_qkv(sd[b + "attn.qkv.bias"])  # the key bias is masked to zero
            out.update({h + "attention.q_proj.bias": qb, h + "attention.v_proj.bias": vb})
        for suffix in ("weight", "bias"):
            for name in ("norm1", "norm2"):
                out[h + f"{name}.{suffix}"] = sd[b + f"{name}.{suffix}"]
            if b + f"attn.proj.{suffix}" in sd:
                out[h + f"attention.o_proj.{suffix}"] = sd[b + f"attn.proj.{suffix}"]
            for (theirs, is_gated), ours in _V3_MLP.items():
                if is_gated == gated and b + f"mlp.{ours}.{suffix}" in sd:
                    out[h + f"mlp.{theirs}.{suffix}"] = sd[b + f"mlp.{ours}.{suffix}"]
        out[h + "layer_scale1.lambda1"] = sd[b + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = sd[b + "ls2.gamma"]
    hf_config = {
        "model_type": "dinov3_vit",
        "architectures": ["DINOv3ViTModel"],
        "hidden_size": D,
        "intermediate_size": c.ffn_hidden,
        "num_hidden_layers": c.depth,
        "num_attention_heads": c.num_heads,
        "hidden_act": "silu" if gated else "gelu",
        "layer_norm_eps": c.norm_eps,
        "rope_theta": c.rope_base,
        "image_size": 224,
        "patch_size": c.patch_size,
        "num_channels": c.in_chans,
        "query_bias": c.qkv_bias,
        "key_bias": False,
        "value_bias": c.qkv_bias,
        "proj_bias": c.proj_bias,
        "mlp_bias": c.ffn_bias,
        "layerscale_value": 1.0,
        "use_gated_mlp": gated,
        "num_register_tokens": c.num_registers,
        "pos_embed_shift": c.rope_shift,
        "pos_embed_jitter": c.rope_jitter,
        "pos_embed_rescale": c.rope_rescale,
        "torch_dtype": "float32",
    }
    return out, hf_config


# --------------------------------------------------------------------------------------------- ConvNeXt
_HF_CONVNEXT_STAGE = re.compile(r"^(?:model\.)?stages\.(\d+)\.(downsample_layers|layers)\.(.+)$")
_CONVNEXT_BLOCK = {  # HF name in a block → released name
    "depthwise_conv": "dwconv",
    "layer_norm": "norm",
    "pointwise_conv1": "pwconv1",
    "pointwise_conv2": "pwconv2",
    "gamma": "gamma",
}


def _is_hf_convnext(sd: dict[str, Tensor]) -> bool:
    # the released layout has `stages.{s}.{j}.…` (a block index after the stage), HF a named sub-module
    return any(_HF_CONVNEXT_STAGE.match(k) for k in sd)


def _hf_convnext_to_dinokit(sd: dict[str, Tensor], hf_config: dict[str, Any] | None):
    """An HF `DINOv3ConvNextModel` state dict (Hub or v5 in-memory names) → (dinokit state dict, config or None).
    Keys it does not know are kept under their own names, so the strict load names them."""
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if m := _HF_CONVNEXT_STAGE.match(k):
            s, kind, rest = m.groups()
            if kind == "downsample_layers":  # `{k}.weight`: the same order inside as released
                out[f"downsample_layers.{s}.{rest}"] = v
            else:  # `{j}.{layer}.{weight,bias}` or `{j}.gamma`
                j, layer, *tail = rest.split(".")
                out[".".join([f"stages.{s}.{j}", _CONVNEXT_BLOCK.get(layer, layer), *tail])] = v
        elif k.removeprefix("model.").startswith("layer_norm."):
            out["norm." + k.removeprefix("model.")[len("layer_norm.") :]] = v
        else:
            out[k] = v
    config = None
    if hf_config is not None:
        c = hf_config
        if c.get("hidden_act", "gelu") != "gelu":
            act = c["hidden_act"]
            raise ConfigError(f"this HF ConvNeXt uses activation {act!r}; dinokit's ConvNeXt has exact GELU only")
        gamma = float(c.get("layer_scale_init_value", 1e-6))
        config = ConvNeXtConfig(
            generation="dinov3",
            in_chans=int(c.get("num_channels", 3)),
            depths=[int(d) for d in c.get("depths", (3, 3, 9, 3))],
            dims=[int(d) for d in c.get("hidden_sizes", (96, 192, 384, 768))],
            drop_path_rate=float(c.get("drop_path_rate", 0.0)),
            layerscale_init=gamma if gamma > 0 else 1e-6,  # HF always has γ, whatever its initial value
            norm_eps=float(c.get("layer_norm_eps", 1e-6)),
        )
    return out, config


def _dinokit_convnext_to_hf(sd: dict[str, Tensor], c: ConvNeXtConfig):
    if not c.has_layerscale:
        raise ValueError("HF transformers' DINOv3ConvNext always has LayerScale γ; this ConvNeXt has none")
    out = {"layer_norm.weight": sd["norm.weight"], "layer_norm.bias": sd["norm.bias"]}
    for s in range(N_STAGES):
        for k in (0, 1):
            for suffix in ("weight", "bias"):
                out[f"stages.{s}.downsample_layers.{k}.{suffix}"] = sd[f"downsample_layers.{s}.{k}.{suffix}"]
        for j in range(c.depths[s]):
            b, h = f"stages.{s}.{j}.", f"stages.{s}.layers.{j}."
            out[h + "gamma"] = sd[b + "gamma"]
            for theirs, ours in _CONVNEXT_BLOCK.items():
                if theirs != "gamma":
                    out[h + f"{theirs}.weight"] = sd[b + f"{ours}.weight"]
                    out[h + f"{theirs}.bias"] = sd[b + f"{ours}.bias"]
    hf_config = {
        "model_type": "dinov3_convnext",
        "architectures": ["DINOv3ConvNextModel"],
        "num_channels": c.in_chans,
        "hidden_sizes": list(c.dims),
        "depths": list(c.depths),
        "hidden_act": "gelu",
        "initializer_range": 0.02,
        "layer_norm_eps": c.norm_eps,
        "layer_scale_init_value": c.layerscale_init,
        "drop_path_rate": c.drop_path_rate,
        "image_size": 224,
        "torch_dtype": "float32",
    }
    return out, hf_config


# ------------------------------------------------------------------------------------------ preprocessing
def hf_image_processor_config(
    config: ViTConfig | ConvNeXtConfig, mean: Sequence[float], std: Sequence[float]
) -> dict[str, Any]:
    """The `preprocessor_config.json` the released HF models of this generation carry, with `mean` / `std`.

    DINOv2: `BitImageProcessor`, shorter side to 256 (bicubic), centre crop 224 — dinokit's
    `EvalTransform.for_model(model)`. DINOv3 (ViTs and ConvNeXts): `DINOv3ViTImageProcessorFast`, resize to
    224×224 (bilinear, antialiased) — `EvalTransform.for_model(model, size=224)` (dinokit's default for DINOv3 is
    256, the official README's). Both scale pixels by 1/255, then normalise."""
    common = {"do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "image_mean": list(mean), "image_std": list(std)}  # fmt: skip
    if config.generation == "dinov2":
        return {"image_processor_type": "BitImageProcessor", **common, "size": {"shortest_edge": 256}, "resample": 3,
                "do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "do_convert_rgb": True}  # fmt: skip
    return {"image_processor_type": "DINOv3ViTImageProcessorFast", **common, "size": {"height": 224, "width": 224},
            "resample": 2}  # fmt: skip
