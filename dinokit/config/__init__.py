"""Configuration of `dinokit train`: the machinery (`machinery.py`: YAML + `key=value` merging, strict types),
the schema (`schema.py`: `PretrainConfig` and its sections) and the recipes shipped with the package
(`recipes.py`: YAML files found by path or by name)."""

from ..errors import ConfigError
from ..ssl.schedules import CurveConfig
from .dinotxt import DinoTxtRunConfig
from .machinery import changed_keys, from_dict, load_config, parse_overrides, save_config, to_dict
from .recipes import find_recipe, load_train_config, recipe_names
from .schema import (
    CheckpointConfig,
    CropsConfig,
    DataConfig,
    DistillConfig,
    EvalConfig,
    HeadConfig,
    InitConfig,
    KnnEvalConfig,
    LossesConfig,
    MaskingConfig,
    ModelConfig,
    MonitorConfig,
    OptimConfig,
    PretrainConfig,
    ResolutionConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
)  # fmt: skip

__all__ = [
    "ConfigError", "CurveConfig", "changed_keys", "from_dict", "load_config", "parse_overrides", "save_config",
    "to_dict", "find_recipe", "load_train_config", "recipe_names", "CheckpointConfig", "CropsConfig", "DataConfig",
    "EvalConfig", "HeadConfig", "InitConfig", "KnnEvalConfig", "LossesConfig", "MaskingConfig", "ModelConfig",
    "MonitorConfig", "OptimConfig", "PretrainConfig", "ResolutionConfig", "TeacherConfig", "TrainConfig",
    "DistillConfig", "StudentConfig", "DinoTxtRunConfig",
]  # fmt: skip
