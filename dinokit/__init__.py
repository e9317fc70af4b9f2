"""dinokit: DINOv2 / DINOv3 backbones, training, evaluation and frozen-feature tools.

The public API is re-exported here; see README.md for a tour. The names are imported on first use (PEP 562
module `__getattr__`), not when `dinokit` is: importing torch and the models takes seconds, which
`dinokit --help`, `dinokit --version` and a script that needs one small module should not pay. Submodules
(`dinokit.models`, `dinokit.eval` …) are imported on first use the same way.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# the one place the version is written: pyproject.toml reads it from here (setuptools `attr`)
__version__ = "0.1.0"

# public name → the module defining it (relative to this package)
_EXPORTS = {
    "BackboneOutput": ".models",
    "CheckpointError": ".models",
    "ConvNeXt": ".models",
    "ConvNeXtConfig": ".models",
    "ViTConfig": ".models",
    "VisionTransformer": ".models",
    "create_backbone": ".models",
    "load_backbone": ".models",
    "save_backbone": ".models",
    # frozen-feature tools
    "FeatureIndex": ".tools.index",
    "add_lora": ".tools.lora",
    "export_onnx": ".tools.export",
    "extract_features": ".tools.extract",
    "match_keypoints": ".tools.matching",
    "pca_rgb": ".tools.viz",
    "read_features": ".tools.extract",
    "similarity_map": ".tools.viz",
    # dino.txt: the text-aligned model
    "load_dinotxt": ".text",
    "zeroshot_classifier": ".eval.zeroshot",
}

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
    # dino.txt: the text-aligned model
    "load_dinotxt",
    "zeroshot_classifier",
]

if TYPE_CHECKING:  # what type checkers and editors see; at run time `__getattr__` below imports these
    from .eval.zeroshot import zeroshot_classifier
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
    from .text import load_dinotxt
    from .tools.export import export_onnx
    from .tools.extract import extract_features, read_features
    from .tools.index import FeatureIndex
    from .tools.lora import add_lora
    from .tools.matching import match_keypoints
    from .tools.viz import pca_rgb, similarity_map


def __getattr__(name: str):
    """Called only for a name not (yet) in the module: import it, and keep it so that this runs once per name."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif not name.startswith("_"):  # `dinokit.models` … without importing it first, as before the lazy imports
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":  # the submodule exists but something it imports does not
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
