"""The public entry points for backbones: create from a preset, load any checkpoint, save in any format.

Every backbone kind of `architectures.ARCHITECTURES` (ViTs, DINOv3 ConvNeXts) goes through the same functions; the
config's `kind` picks the module class.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..atomic import atomic_write, atomic_write_text
from ..integrity import tensors_sha256
from .architectures import ARCHITECTURES, architecture_of
from .convert_hf import dinokit_to_hf, hf_image_processor_config
from .hub import official_weights
from .weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneConfig,
    StateDict,
    check_state_dict,
    dinokit_to_official,
    infer_config,
    normalization_of,
    read_checkpoint,
)


def create_backbone(name: str, weights: str | os.PathLike | StateDict | None = None, **overrides: Any):
    """A backbone from a preset name (e.g. "dinov3_vits16"), randomly initialised, or loaded strictly from `weights`:

    - "official": the preset's released file, from torch's hub cache (`$TORCH_HOME/hub/checkpoints/`); DINOv2 files
      are downloaded into it on first use, DINOv3 files (signed links per user) must be passed once or put there
      (the error says how);
    - any source `load_backbone` accepts: a path, an http(s) URL (kept in the same cache), "hf:<org>/<name>",
      a state dict.

    Without `weights` nothing is read or downloaded. Overrides change config fields, e.g. `depth=2`; the weights
    must fit the result."""
    arch = architecture_of(name)
    config = arch.config(**arch.presets[name]).replace(**overrides)
    if weights is None:
        return arch.model(config)
    if weights == "official":
        weights = official_weights(name)
    sd, _, info = read_checkpoint(weights)
    # the satellite models expect their own input statistics; the file's name is what tells them apart
    return _build(config.replace(extra={**normalization_of(info.get("path", "")), **config.extra}), sd, torch.float32)


def load_backbone(
    source: str | os.PathLike | StateDict,
    preset: str | None = None,
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> nn.Module:
    """Load a backbone, inferring its architecture from the weights unless a `preset` is named.

    `source`: a released `.pth` (or training checkpoint), a dinokit folder or `.safetensors` file, an HF model
    folder, an explicit http(s) URL (downloaded once into torch's hub cache), a Hugging Face Hub id
    `hf:<org>/<name>[@revision]` (through huggingface_hub's cache), or a state dict. Loading is strict; overrides
    change config fields that do not affect the weights (e.g. `drop_path_rate=0.1`). Floating-point tensors are
    cast to `dtype`. Returns a `VisionTransformer` or a `ConvNeXt`, whichever the checkpoint holds."""
    sd, stored, info = read_checkpoint(source)
    if preset is not None:
        arch = architecture_of(preset)
        config = arch.config(**arch.presets[preset], extra=normalization_of(info.get("path", "")))
    elif stored is not None:
        config = stored
    else:
        config = infer_config(sd, info.get("path", ""))
    if "path" in info:
        config = config.replace(extra={**config.extra, "source": info["path"]})
    return _build(config.replace(**overrides), sd, dtype=dtype)


def _build(config: BackboneConfig, sd: StateDict, dtype: torch.dtype) -> nn.Module:
    with torch.device("meta"):
        model = ARCHITECTURES[config.kind].model(config)
    check_state_dict(model.state_dict(), sd)
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    if "rope_embed.periods" in sd:
        sd["rope_embed.periods"] = sd["rope_embed.periods"].float()
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------ saving
def save_backbone(
    model: nn.Module, path: str | os.PathLike, format: Literal["dinokit", "official", "hf"] = "dinokit"
) -> Path:
    """Write `model` as a dinokit folder (or `.safetensors` file), a released-layout `.pth`, or an HF folder.

    Every file is written atomically (temporary file, then rename). dinokit files record the backbone's kind. An HF
    folder also holds the `preprocessor_config.json` of the released HF models (with this model's mean / std), so
    transformers' `AutoModel` and `AutoImageProcessor` both load it."""
    path = Path(path)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config: BackboneConfig = model.config
    if format == "dinokit":
        digest = tensors_sha256(sd)  # verified when the file is read (`weights.py`)
        meta = {"format": "dinokit", "version": "1", "kind": config.kind, "backbone": json.dumps(config.to_dict()),
                "tensors_sha256": digest}  # fmt: skip
        if path.suffix == ".safetensors":
            atomic_write(path, lambda tmp: _save_safetensors(sd, tmp, meta))
        else:
            path.mkdir(parents=True, exist_ok=True)
            atomic_write(path / "model.safetensors", lambda tmp: _save_safetensors(sd, tmp, None))
            cfg = {"format": "dinokit", "version": 1, "kind": config.kind, "backbone": config.to_dict(),
                   "tensors_sha256": digest}  # fmt: skip
            atomic_write_text(path / "config.json", json.dumps(cfg, indent=2))
    elif format == "official":
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(dinokit_to_official(sd, config), tmp))
    elif format == "hf":
        hf_sd, hf_config = dinokit_to_hf(sd, config)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / "model.safetensors", lambda tmp: _save_safetensors(hf_sd, tmp, {"format": "pt"}))
        atomic_write_text(path / "config.json", json.dumps(hf_config, indent=2))
        mean, std = config.extra.get("mean", IMAGENET_MEAN), config.extra.get("std", IMAGENET_STD)
        processor = hf_image_processor_config(config, mean, std)  # for AutoImageProcessor.from_pretrained(path)
        atomic_write_text(path / "preprocessor_config.json", json.dumps(processor, indent=2))
    else:
        raise ValueError(f"unknown format {format!r}; use 'dinokit', 'official' or 'hf'")
    return path


def _save_safetensors(sd: StateDict, path: Path, metadata: dict[str, str] | None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)


def backbone_from_spec(spec: str, seed: int = 0, **overrides: Any) -> nn.Module:
    """The command lines' `--backbone`: a checkpoint source (see `load_backbone`), `official:<preset>` for a preset
    with its released weights (`create_backbone(preset, weights="official")`), or `random:<preset>` for a randomly
    initialised model (seeded by `seed`), e.g. `random:dinov3_vits16` or `random:dinov3_convnext_tiny`."""
    if spec.startswith("random:"):
        torch.manual_seed(seed)
        return create_backbone(spec.split(":", 1)[1], **overrides).eval()
    if spec.startswith("official:"):
        return create_backbone(spec.split(":", 1)[1], weights="official", **overrides)
    return load_backbone(spec, **overrides)
