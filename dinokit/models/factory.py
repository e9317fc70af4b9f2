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
from .convert_hf import dinokit_to_hf
from .weights import BackboneConfig, StateDict, check_state_dict, dinokit_to_official, infer_config, read_checkpoint


def create_backbone(name: str, weights: str | os.PathLike | StateDict | None = None, **overrides: Any):
    """A backbone from a preset name (e.g. "dinov3_vits16"), randomly initialised or loaded strictly from
    `weights` (any source `load_backbone` accepts). Overrides change config fields, e.g. `depth=2`."""
    arch = architecture_of(name)
    config = arch.config(**arch.presets[name]).replace(**overrides)
    if weights is None:
        return arch.model(config)
    sd, _, _ = read_checkpoint(weights)
    return _build(config, sd, dtype=torch.float32)


def load_backbone(
    source: str | os.PathLike | StateDict,
    preset: str | None = None,
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> nn.Module:
    """Load a backbone, inferring its architecture from the weights unless a `preset` is named.

    `source`: a released `.pth` (or training checkpoint), a dinokit folder or `.safetensors` file, an HF model
    folder, an explicit http(s) URL, or a state dict. Loading is strict; overrides change config fields
    that do not affect the weights (e.g. `drop_path_rate=0.1`). Floating-point tensors are cast to `dtype`.
    Returns a `VisionTransformer` or a `ConvNeXt`, whichever the checkpoint holds."""
    sd, stored, info = read_checkpoint(source)
    if preset is not None:
        arch = architecture_of(preset)
        config = arch.config(**arch.presets[preset])
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

    Every file is written atomically (temporary file, then rename). dinokit files record the backbone's kind."""
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
    else:
        raise ValueError(f"unknown format {format!r}; use 'dinokit', 'official' or 'hf'")
    return path


def _save_safetensors(sd: StateDict, path: Path, metadata: dict[str, str] | None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)


def backbone_from_spec(spec: str, seed: int = 0, **overrides: Any) -> nn.Module:
    """The command lines' `--backbone`: a checkpoint source, or `random:<preset>` for a randomly initialised
    model (seeded by `seed`), e.g. `random:dinov3_vits16` or `random:dinov3_convnext_tiny`."""
    if spec.startswith("random:"):
        torch.manual_seed(seed)
        return create_backbone(spec.split(":", 1)[1], **overrides).eval()
    return load_backbone(spec, **overrides)
