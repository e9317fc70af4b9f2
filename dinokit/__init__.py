"""dinokit: DINOv2 / DINOv3 backbones, training, evaluation and frozen-feature tools.

The public API is re-exported here; see README.md for a tour.
"""

from .models import (
    BackboneOutput,
    CheckpointError,
    VisionTransformer,
    ViTConfig,
    create_backbone,
    load_backbone,
    save_backbone,
)
from .tools.extract import extract_features, read_features

__version__ = "0.1.0"

__all__ = [
    "BackboneOutput",
    "CheckpointError",
    "ViTConfig",
    "VisionTransformer",
    "create_backbone",
    "load_backbone",
    "save_backbone",
    # frozen-feature tools
    "extract_features",
    "read_features",
]
