"""Backbones: the vision transformer, its presets and its checkpoint formats."""

from .config import ViTConfig
from .factory import backbone_from_spec, create_backbone, load_backbone, save_backbone
from .presets import PRESETS, preset_config
from .vit import BackboneOutput, VisionTransformer
from .weights import CheckpointError

__all__ = [
    "ViTConfig",
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
