"""Backbones: the vision transformer and the ConvNeXt, their presets and their checkpoint formats."""

from .config import ViTConfig
from .convnext import ConvNeXt, ConvNeXtConfig
from .factory import backbone_from_spec, create_backbone, load_backbone, save_backbone
from .presets import PRESETS, preset_config
from .vit import BackboneOutput, VisionTransformer
from .weights import CheckpointError

__all__ = [
    "ViTConfig",
    "ConvNeXt",
    "ConvNeXtConfig",
    "PRESETS",
    "preset_config",
    "BackboneOutput",
    "VisionTransformer",
    "CheckpointError",
    "backbone_from_spec",
    "create_backbone",
    "load_backbone",
    "save_backbone",
]
