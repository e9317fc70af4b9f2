"""The backbone kinds dinokit can build and train, as one table, and the protocol the trainer relies on.

`ARCHITECTURES` maps a kind ("vit"; "convnext" for DINOv3's distilled ConvNeXts) to its config class, its
module class and its presets. `create_backbone` and `dinokit train` find a preset's kind here, and the checkpoint
code rebuilds a config from the kind it stored (`config.kind`, a class attribute of each config class), so a new
kind of backbone is one module and one row.

What training needs from a backbone beyond `forward_features(x, masks=None) → BackboneOutput` and
`embed_dim` / `patch_size` (`TrainableBackbone`):
- `layer_id(parameter_name)` and `num_layers`: the depth of a parameter for layer-wise learning-rate decay
  (0 for the embeddings, `num_layers − 1` for what follows the last block);
- `set_activation_checkpointing(enabled)`: recompute each block's activations in the backward pass;
- `fsdp_units()`: the sub-modules that FSDP shards one by one (the blocks; a ConvNeXt adds its downsampling layers).

A ConvNeXt also differs where the trainer looks: it has no registers, its `patch_size` is its stride (32), and it
refuses iBOT masks (it is trained only as a distillation student, on unmasked crops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import nn

from ..errors import ConfigError
from .config import ViTConfig
from .convnext import CONVNEXT_PRESETS, ConvNeXt, ConvNeXtConfig
from .presets import PRESETS
from .vit import VisionTransformer


@runtime_checkable
class TrainableBackbone(Protocol):
    embed_dim: int
    patch_size: int

    @property
    def num_layers(self) -> int: ...

    def layer_id(self, name: str) -> int: ...

    def set_activation_checkpointing(self, enabled: bool = True) -> None: ...

    def fsdp_units(self) -> list[nn.Module]: ...


@dataclass(frozen=True)
class Architecture:
    config: type  # a frozen dataclass with `replace(**overrides)`
    model: type  # its module: `model(config)`
    presets: dict[str, dict[str, Any]]  # preset name → config fields


ARCHITECTURES: dict[str, Architecture] = {
    "vit": Architecture(ViTConfig, VisionTransformer, PRESETS),
    "convnext": Architecture(ConvNeXtConfig, ConvNeXt, CONVNEXT_PRESETS),
}


def architecture_of(preset: str) -> Architecture:
    """The row of the preset's kind; a `ConfigError` listing the known presets for an unknown name."""
    for arch in ARCHITECTURES.values():
        if preset in arch.presets:
            return arch
    known = ", ".join(name for arch in ARCHITECTURES.values() for name in arch.presets)
    raise ConfigError(f"unknown backbone preset {preset!r}; known presets: {known}")
