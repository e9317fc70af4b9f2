"""Reading a released dino.txt file (`dinov3_vitl16_dinotxt_vision_head_and_text_encoder-*.pth`): sizes inferred
from its tensors, the model built and loaded strictly.

The release (`dinov3/hub/dinotxt.py::dinov3_vitl16_dinotxt_tet1280d20h24l`) hard-codes the sizes (text width
1280, 20 heads, 24 layers, context 77, vocabulary 49,408, embedding 2048, 2 vision head blocks) and loads with
`strict=False`, which accepts a file that misses or misnames any tensor and leaves those weights uninitialised.
Here every size that a tensor shows is read from it, every key of the file must be used and every parameter
filled, and a mismatch is one CheckpointError naming the keys. What no tensor shows follows the released rules,
each an override: `text_heads` (width // 64), `vision_heads` (the backbone's heads), `causal` (True),
`text_head_causal` (False, for text head blocks, none released), `text_pool` ("argmax": the end-of-text token),
`patch_pool` ("mean").

The file does not hold the backbone: `backbone` is any `backbone_from_spec` source (a released DINOv3 ViT-L/16
file for the released model, `official:dinov3_vitl16`, or `random:<preset>` for tests). A file that does hold
one under `visual_model.backbone.` (a full training export) provides it when `backbone` is not given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, UserError
from .model import DinoTxt
from .text_transformer import POOLS, TextBackbone, TextEncoder, TextHead
from .tokenizer import Tokenizer
from .vision_head import PATCH_POOLS, VisionHead, VisionTower

StateDict = dict[str, torch.Tensor]
TEXT, HEAD = "text_model.backbone.", "text_model.head."
VISION, BACKBONE = "visual_model.head.", "visual_model.backbone."
OVERRIDES = {"text_heads": None, "vision_heads": None, "causal": True, "text_head_causal": False,
             "text_pool": "argmax", "patch_pool": "mean"}  # fmt: skip


def is_dinotxt_state_dict(sd: dict) -> bool:
    """Whether a state dict has the released dino.txt layout (text tower and vision head)."""
    return any(k.startswith(TEXT) for k in sd) and any(k.startswith(VISION) for k in sd)


def _count(sd: StateDict, prefix: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _shape(sd: StateDict, key: str) -> torch.Size:
    if key not in sd:
        raise CheckpointError(f"the dino.txt checkpoint lacks {key}, which gives the model's sizes; is this a "
                              "dino.txt vision-head-and-text-encoder file?")  # fmt: skip
    return sd[key].shape


def infer_sizes(sd: StateDict) -> dict[str, Any]:
    """Every size a released-layout state dict shows (no backbone needed)."""
    vocab, width = _shape(sd, TEXT + "token_embedding.weight")
    context = _shape(sd, TEXT + "positional_embedding")[0]
    proj = HEAD + "linear_projection.weight"
    dim = _shape(sd, VISION + "ln_final.weight")[0] if (VISION + "ln_final.weight") in sd else None
    vproj = VISION + "linear_projection.weight"
    n_vision = _count(sd, VISION)
    return {
        "vocab_size": vocab, "context_length": context, "width": width,
        "depth": _count(sd, TEXT), "text_hidden": _shape(sd, TEXT + "blocks.0.feed_forward.fc1.weight")[0],
        "text_layer_scale": (TEXT + "blocks.0.ls1.gamma") in sd,
        "text_qkv_bias": (TEXT + "blocks.0.attention.qkv.bias") in sd,
        "text_head_blocks": _count(sd, HEAD), "embed_dim": sd[proj].shape[0] if proj in sd else width,
        "text_projection": proj in sd,
        "vision_dim": dim, "vision_blocks": n_vision,
        "vision_hidden": _shape(sd, VISION + "blocks.0.mlp.w1.weight")[0] if n_vision else None,
        "vision_layer_scale": (VISION + "blocks.0.ls1.gamma") in sd,
        "vision_qkv_bias": (VISION + "blocks.0.attn.qkv.bias") in sd,
        "vision_out": sd[vproj].shape[0] if vproj in sd else None,
    }  # fmt: skip


def _read(source: str | os.PathLike | StateDict) -> StateDict:
    if isinstance(source, dict):
        sd = dict(source)
    else:
        from ..models.weights import _torch_load  # its errors name the file and the cause

        if not os.path.isfile(os.path.expanduser(str(source))):
            raise CheckpointError(f"no dino.txt checkpoint at {str(source)!r} (the released file is "
                                  "dinov3_vitl16_dinotxt_vision_head_and_text_encoder-<hash>.pth)")  # fmt: skip
        sd = _torch_load(Path(source).expanduser())
    if not isinstance(sd, dict):
        raise CheckpointError(f"not a dino.txt checkpoint: the file holds a {type(sd).__name__}, not a state dict")
    for key in ("model", "state_dict"):  # a training export wraps the weights once
        if isinstance(sd.get(key), dict) and not is_dinotxt_state_dict(sd):
            sd = sd[key]
    non_tensors = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(f"not a dino.txt state dict: non-tensor entries {non_tensors[:5]}")
    if not is_dinotxt_state_dict(sd):
        sample = ", ".join(list(sd)[:5])
        raise CheckpointError(f"not a dino.txt checkpoint: expected keys under {TEXT} and {VISION}, found {sample}"
                              " …; a backbone file is read with load_backbone")  # fmt: skip
    return sd


def _heads(value: int | None, width: int, default: int | None, name: str) -> int:
    heads = default if value is None else int(value)
    if heads is None or heads <= 0 or width % heads:
        raise ConfigError(f"{name}={heads} does not divide the width {width}; pass {name}=<a divisor>")
    return heads


def load_dinotxt(
    text_checkpoint: str | os.PathLike | StateDict,
    backbone: str | nn.Module | None = None,
    vocab: str | os.PathLike | None = None,
    seed: int = 0,
    **overrides: Any,
) -> DinoTxt:
    """A dino.txt model from the released vision-head-and-text-encoder file (or its state dict), strictly.

    `backbone`: a `backbone_from_spec` source (path, `official:dinov3_vitl16`, `random:<preset>` seeded by `seed`)
    or a backbone module; `vocab`: CLIP's `bpe_simple_vocab_16e6.txt.gz`, needed only for `model.tokenize`.
    Overrides (what no tensor shows): text_heads, vision_heads, causal, text_head_causal, text_pool, patch_pool."""
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ConfigError(f"unknown dino.txt option(s) {', '.join(unknown)}; valid: {', '.join(OVERRIDES)}")
    opt = {**OVERRIDES, **overrides}
    if opt["text_pool"] not in POOLS or opt["patch_pool"] not in PATCH_POOLS:
        raise ConfigError(f"text_pool must be one of {', '.join(POOLS)} and patch_pool one of "
                          f"{', '.join(PATCH_POOLS)}; got {opt['text_pool']!r}, {opt['patch_pool']!r}")  # fmt: skip
    sd = _read(text_checkpoint)
    backbone_sd = {k[len(BACKBONE) :]: v for k, v in sd.items() if k.startswith(BACKBONE)}
    sd = {k: v for k, v in sd.items() if not k.startswith(BACKBONE)}
    vision_backbone = _backbone(backbone, backbone_sd, seed)
    s = infer_sizes(sd)

    text_heads = _heads(opt["text_heads"], s["width"], s["width"] // 64 or None, "text_heads")
    text_backbone = TextBackbone(
        s["vocab_size"], s["context_length"], s["width"], s["depth"], text_heads, s["text_hidden"], opt["causal"],
        s["text_layer_scale"], s["text_qkv_bias"],
    )  # fmt: skip
    head_hidden = sd[HEAD + "blocks.0.feed_forward.fc1.weight"].shape[0] if s["text_head_blocks"] else 0
    text_head = TextHead(s["width"], s["embed_dim"] if s["text_projection"] else None, text_heads,
                         s["text_head_blocks"], head_hidden, opt["text_head_causal"],
                         (HEAD + "blocks.0.ls1.gamma") in sd, (HEAD + "blocks.0.attention.qkv.bias") in sd)  # fmt: skip

    dim = getattr(vision_backbone, "embed_dim", None)
    if s["vision_dim"] is not None and dim != s["vision_dim"]:
        raise CheckpointError(
            f"the dino.txt vision head expects backbone tokens of width {s['vision_dim']}, but the backbone gives "
            f"{dim}; the released head sits on dinov3_vitl16 (width 1024)"
        )
    config = getattr(vision_backbone, "config", None)
    vision_heads = _heads(opt["vision_heads"], dim, getattr(config, "num_heads", None), "vision_heads")
    vision_head = VisionHead(dim, vision_heads, s["vision_blocks"], s["vision_hidden"] or 0, s["vision_out"],
                             s["vision_layer_scale"], s["vision_qkv_bias"])  # fmt: skip
    image_dim = 2 * (s["vision_out"] or dim)
    if image_dim != s["embed_dim"]:
        raise CheckpointError(
            f"the dino.txt image embedding ([CLS ‖ pooled patches], {image_dim}) and the text embedding "
            f"({s['embed_dim']}) differ in width; the file is not a dino.txt model"
        )

    tokenizer = Tokenizer(vocab, s["context_length"]) if vocab is not None else None
    if tokenizer is not None and tokenizer.vocab_size != s["vocab_size"]:
        raise UserError(f"the vocabulary {vocab} has {tokenizer.vocab_size} tokens, the text encoder "
                        f"{s['vocab_size']}; pass CLIP's bpe_simple_vocab_16e6.txt.gz")  # fmt: skip
    model = DinoTxt(VisionTower(vision_backbone, vision_head, opt["patch_pool"]),
                    TextEncoder(text_backbone, text_head, opt["text_pool"]), tokenizer)  # fmt: skip
    _load_strict(model, sd)
    return model.eval()


def _backbone(spec: str | nn.Module | None, backbone_sd: StateDict, seed: int) -> nn.Module:
    from ..models.factory import backbone_from_spec, load_backbone

    if spec is not None and backbone_sd:
        raise UserError("this dino.txt file holds its own backbone (visual_model.backbone.*): drop backbone= or "
                        "strip those keys from the file")  # fmt: skip
    if isinstance(spec, nn.Module):
        backbone = spec
    elif spec is not None:
        backbone = backbone_from_spec(str(spec), seed=seed)
    elif backbone_sd:
        backbone = load_backbone(backbone_sd)
    else:
        raise UserError("the dino.txt file holds the vision head and the text encoder, not the backbone: pass "
                        "backbone= (e.g. the released dinov3_vitl16 .pth, or official:dinov3_vitl16)")  # fmt: skip
    if not hasattr(backbone, "forward_features"):
        raise UserError(f"the dino.txt backbone must be a dinokit backbone, got {type(backbone).__name__}")
    for p in backbone.parameters():  # frozen, as in the release
        p.requires_grad_(False)
    return backbone.eval()


def _load_strict(model: DinoTxt, sd: StateDict) -> None:
    """Every key of `sd` fills one parameter of the model outside the backbone, and every such parameter is filled
    (tensors are copied into the float32 parameters)."""
    from ..models.weights import check_state_dict

    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(BACKBONE)}
    check_state_dict(expected, sd, what="dino.txt checkpoint")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.startswith(BACKBONE) for k in missing), (missing, unexpected)


def describe_dinotxt(sd: StateDict) -> list[tuple[str, object]]:
    """Rows for `dinokit info`: the sizes of a dino.txt file."""
    s = infer_sizes({k: v for k, v in sd.items() if not k.startswith(BACKBONE)})
    n_text = sum(v.numel() for k, v in sd.items() if k.startswith("text_model."))
    n_head = sum(v.numel() for k, v in sd.items() if k.startswith(VISION))
    scale = sd.get("logit_scale")
    rows = [
        ("kind", "dino.txt vision head + text encoder (DINOv3)"),
        ("text encoder", f"width {s['width']} / depth {s['depth']} / heads {s['width'] // 64} (width // 64), "
                         f"context {s['context_length']}, vocabulary {s['vocab_size']}"),
        ("vision head", f"{s['vision_blocks']} blocks of width {s['vision_dim']}, SwiGLU hidden {s['vision_hidden']}"),
        ("embedding", f"{s['embed_dim']} = [head CLS ‖ mean of head patches]"),
        ("backbone", "included" if any(k.startswith(BACKBONE) for k in sd) else
                     f"not included: needs a width-{s['vision_dim']} backbone (released: dinov3_vitl16)"),
        ("logit scale", f"{float(scale.exp()):.2f} (exp of {float(scale):.4f})" if scale is not None else "absent"),
        ("parameters", f"{n_text / 1e6:.1f} M text + {n_head / 1e6:.1f} M vision head"),
        ("licence family", "DINOv3 License"),
    ]  # fmt: skip
    return rows
