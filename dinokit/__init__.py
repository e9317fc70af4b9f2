"""dinokit: DINOv2 / DINOv3 backbones, training, evaluation and frozen-feature tools.

The public API is re-exported here; see README.md for a tour.
"""

from .models import (
    BackboneOutput,
    CheckpointError,
    ConvNeXt,
    ConvNeXtConfig,
    VisionTransformer,
    ViTConfig,
    create_backbone,
    load_backbone,
    save_backbone,
)
from .tools.export import export_onnx
from .tools.extract import extract_features, read_features
from .tools.index import FeatureIndex
from .tools.lora import add_lora
from .tools.matching import match_keypoints
from .tools.viz import pca_rgb, similarity_map

__version__ = "0.1.0"

__all__ = [
    "BackboneOutput",
    "CheckpointError",
    "ConvNeXt",
    "ConvNeXtConfig",
    "ViTConfig",
    "VisionTransformer",
    "create_backbone",
    "load_backbone",
    "save_backbone",
    # frozen-feature tools
    "FeatureIndex",
    "add_lora",
    "export_onnx",
    "extract_features",
    "match_keypoints",
    "pca_rgb",
    "read_features",
    "similarity_map",
]
