"""Typed configuration: dataclass schemas, YAML files and `key=value` command-line overrides.

Defaults live once, in the dataclasses below. `load_config(cls, yaml, overrides)` merges
defaults ← YAML ← command line, rejects unknown keys and values of the wrong type with one clear message
(a `ConfigError`, exit status 2 on the command line) before anything is built, and returns the typed tree.
`save_config` writes the resolved tree back as YAML (atomically), so a run folder always holds the exact
configuration it ran with.

Merging rules:
- a nested dataclass merges key by key; a missing key keeps its default;
- an optional section (`X | None`) is switched off with `null` and on with a mapping (its defaults fill the
  rest); sections marked "whole" (the loss terms) are replaced as a whole by the YAML, so a loss term left
  out of the YAML file is off — on the command line `losses.koleo=null` turns one off and
  `losses.koleo.weight=0.2` sets (or adds) one;
- command-line values are parsed as YAML (`train.steps=100`, `crops.global_scale=[0.4,1.0]`, `init.backbone=null`).

The schema of `dinokit train` is `PretrainConfig` (bottom of this file); objects receive their own sub-config.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .atomic import atomic_write_text
from .errors import UserError
from .models.weights import IMAGENET_MEAN, IMAGENET_STD


class ConfigError(UserError):
    """An unknown key, a value of the wrong type, or an inconsistent combination of values."""


# ================================================================================================ machinery
def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a mapping, strictly: unknown keys and wrong types raise `ConfigError`."""
    return _convert(cls, data, where)


def to_dict(obj: Any) -> Any:
    """A dataclass tree → plain dicts / lists / scalars (YAML-safe)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


def parse_overrides(items: Sequence[str]) -> list[tuple[list[str], Any]]:
    """`["a.b=1", "c=[1,2]"]` → `[(["a", "b"], 1), (["c"], [1, 2])]` with values parsed as YAML."""
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"override {item!r} is not of the form key.sub=value (e.g. train.steps=100)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse the value of override {item!r}: {e}") from None
        parsed.append((key.strip().split("."), value))
    return parsed


def load_config(cls: type, path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Any:
    """defaults ← YAML file ← `key=value` overrides, key- and type-checked; returns an instance of `cls`.
    (Checks across fields are the schema's own `validate()`.)"""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p} must hold a mapping of sections (got {type(data).__name__})")
    # Resolve the YAML first so that an override edits the resolved tree (e.g. one loss term of the defaults).
    try:
        tree = to_dict(from_dict(cls, data))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    for keys, value in parse_overrides(overrides):
        node = tree
        for i, k in enumerate(keys[:-1]):
            if node.get(k) is None and _is_section(cls, keys[: i + 1]):
                node[k] = {}  # switching an optional section on
            node = node.get(k)
            if not isinstance(node, dict):
                raise ConfigError(f"override {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is not a section")
        node[keys[-1]] = value
    return from_dict(cls, tree)


def save_config(obj: Any, path: str | os.PathLike) -> Path:
    """Write the resolved configuration as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None))


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees (dataclasses or dicts)."""
    a, b = to_dict(old), to_dict(new)
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [prefix]
    out = []
    for k in sorted(set(a) | set(b)):
        out += changed_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
    return out


def _is_section(cls: type, keys: list[str]) -> bool:
    tp: Any = cls
    for k in keys:
        tp = _strip_optional(tp)
        if not dataclasses.is_dataclass(tp):
            return False
        hints = typing.get_type_hints(tp)
        if k not in hints:
            return False
        tp = hints[k]
    return dataclasses.is_dataclass(_strip_optional(tp))


def _strip_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if _is_union(tp) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _kind_matches(tp: Any, value: Any) -> bool:
    """Whether a union member is the kind of thing `value` is (mapping, list or scalar)."""
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if isinstance(value, Mapping):
        return dataclasses.is_dataclass(tp) or origin in (dict, Mapping)
    if isinstance(value, list | tuple):
        return origin in (list, tuple, Sequence)
    return not (dataclasses.is_dataclass(tp) or origin in (dict, Mapping, list, tuple, Sequence))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if _is_union(tp):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where)
            except ConfigError as e:
                if _kind_matches(option, value):
                    errors.append(str(e))
        if len(errors) == 1:  # the member of the right kind explains best what is wrong
            raise ConfigError(errors[0])
        raise ConfigError(f"{where or 'config'}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where or 'config'}: expected {_type_name(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, where)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where or 'config'}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where or 'config'}: expected a list of {len(args)} values, got {value!r}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where or 'config'}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): _convert(vt, v, _join(where, k)) for k, v in value.items()}
    return _convert_scalar(tp, value, where)


def _convert_scalar(tp: Any, value: Any, where: str) -> Any:
    bad = ConfigError(f"{where or 'config'}: expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float | str):  # 1e5 (YAML reads it as a string) or 1000.0
            try:
                f = float(value)
            except ValueError:
                raise bad from None
            if f.is_integer():
                return int(f)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    raise TypeError(f"config schema uses an unsupported type {tp!r} at {where}")


def _convert_dataclass(cls: type, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(value) and isinstance(value, cls):
        value = to_dict(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping of options, got {value!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    whole = getattr(cls, "_replace_as_whole", False)
    for name in fields:
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], _join(where, name))
        elif whole:
            kwargs[name] = None  # a term left out of the section is off
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where or 'config'}: {e}") from None
    return obj


# ================================================================================================ schema
# Units: every length is in optimiser steps (the released recipes count 1250 steps per "epoch").

@dataclass
class DataConfig:
    path: str = ""  # image folder (recursive), .txt/.csv list, .tar shard, folder of .tar, or "x-{000..009}.tar"
    num_workers: int = 4  # data-loading processes per device (0: in the main process)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class CropsConfig:
    """Multi-crop (DINOv2 §3 / REFERENCE §3). Sizes must be multiples of the patch size for learned pos-embeds."""

    global_size: int = 224
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_number: int = 8
    local_size: int = 98  # 96 for patch-16 models
    local_scale: tuple[float, float] = (0.05, 0.32)
    # "released": the effective blur probabilities the released models trained with (global-1 never, global-2
    # 0.9, locals 0.5); "intended": the values the released code meant (1.0 / 0.1 / 0.5). Solarize 0.2 on global-2.
    probabilities: Literal["released", "intended"] = "released"


@dataclass
class MaskingConfig:
    """iBOT block masking of the global crops (BEiT blocks, stratified ratios)."""

    sample_probability: float = 0.5  # fraction of global crops that get a mask
    ratio_min_max: tuple[float, float] = (0.1, 0.5)
    min_aspect: float = 0.3
    min_block_patches: int = 4
    max_block_fraction: float = 0.5  # one block covers at most this fraction of the patches
    style: Literal["dinov2", "dinov3"] = "dinov2"  # dinov3: exactly int(N·upper ratio) patches, topped up at random


@dataclass
class HeadConfig:
    """Projection head: MLP → L2-normalise → K prototypes (weight-normed last layer in DINOv2, plain in DINOv3)."""

    n_prototypes: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    last_layer: Literal["weight_norm", "plain"] = "weight_norm"


@dataclass
class ModelConfig:
    backbone: str = "dinov2_vits14"  # a preset name of dinokit.models.presets
    backbone_options: dict[str, Any] = field(default_factory=dict)  # ViTConfig overrides, e.g. drop_path_rate: 0.1
    dino_head: HeadConfig = field(default_factory=HeadConfig)
    ibot_head: HeadConfig | None = None  # null: iBOT shares the DINO head (DINOv2 default)


@dataclass
class TeacherConfig:
    kind: Literal["ema"] = "ema"
    momentum: float = 0.992  # cosine from `momentum` to `final_momentum` over the run
    final_momentum: float = 1.0
    target: Literal["centering", "sinkhorn_knopp"] = "centering"
    center_momentum: float = 0.9
    sinkhorn_iterations: int = 3
    temp: float = 0.07
    warmup_temp: float = 0.04  # linear warm-up warmup_temp → temp
    warmup_temp_steps: int = 37500  # 30 epochs of 1250 steps


@dataclass
class CurveConfig:
    """A value over steps: 0 for `zero_steps`, linear `start → peak` over `warmup_steps`, then `shape` to `end`."""

    peak: float
    end: float | None = None  # None: stay at peak
    start: float = 0.0
    warmup_steps: int = 0
    shape: Literal["cosine", "constant", "linear"] = "cosine"
    zero_steps: int = 0


@dataclass
class DinoLossConfig:
    weight: float | CurveConfig = 1.0
    student_temp: float = 0.1
    local_weight: float | CurveConfig = 1.0  # extra factor on the local-crop part (DINOv3 down-weights it)
    global_ignore_diagonal: bool = True  # no (crop i, crop i) pairs between the global crops, as released


@dataclass
class IbotLossConfig:
    weight: float | CurveConfig = 1.0
    student_temp: float = 0.1


@dataclass
class KoleoLossConfig:
    weight: float | CurveConfig = 0.1


@dataclass
class LossesConfig:
    """The loss terms. In a YAML file this section is replaced as a whole: a term left out is off."""

    _replace_as_whole = True
    dino: DinoLossConfig | None = field(default_factory=DinoLossConfig)
    ibot: IbotLossConfig | None = field(default_factory=IbotLossConfig)
    koleo: KoleoLossConfig | None = field(default_factory=KoleoLossConfig)

    def enabled(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass
class OptimConfig:
    base_lr: float = 0.004  # for a global batch of 1024 (see lr_scaling)
    lr_scaling: Literal["sqrt_wrt_1024", "linear_wrt_256", "none"] = "sqrt_wrt_1024"
    min_lr: float = 1.0e-6
    warmup_steps: int = 12500
    schedule: Literal["cosine", "constant"] = "cosine"  # after warm-up (DINOv3: constant)
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    layerwise_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = 3.0  # per sub-module (backbone, each head); null: no clipping
    freeze_last_layer_steps: int = 1250


@dataclass
class TrainConfig:
    steps: int = 125000  # total optimiser steps
    batch_size: int = 64  # images per device and micro-batch
    grad_accumulation: int = 1  # micro-batches per optimiser step
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False  # torch.compile the backbones
    activation_checkpointing: bool = False
    log_every: int = 10


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps
    keep: int = 3  # newest complete checkpoints kept


@dataclass
class MonitorConfig:
    max_bad_steps: int = 5  # consecutive non-finite steps before aborting
    min_target_entropy: float = 0.5  # nats, of the batch-average DINO target; below: collapse warning
    min_feature_std: float = 1.0e-3  # of the L2-normalised CLS across the batch; below: collapse warning


@dataclass
class KnnEvalConfig:
    train: str | None = None  # labelled images (class sub-folders or a `path,label` list): the k-NN gallery
    val: str | None = None  # labelled images to classify
    size: int = 224  # evaluation crop (resize to size·256/224, centre crop)
    ks: list[int] = field(default_factory=lambda: [10, 20])
    batch_size: int = 64


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations of the teacher (0: never)
    knn: KnnEvalConfig = field(default_factory=KnnEvalConfig)  # k-NN on CLS, logged as knn/top1_k<k>


@dataclass
class InitConfig:
    backbone: str | None = None  # a checkpoint load_backbone reads: initialises student and teacher backbones


@dataclass
class PretrainConfig:
    output_dir: str = "runs/pretrain"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    crops: CropsConfig = field(default_factory=CropsConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    losses: LossesConfig = field(default_factory=LossesConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    init: InitConfig = field(default_factory=InitConfig)

    def validate(self) -> None:
        """Cross-field checks that need no computation; raises `ConfigError` listing every problem."""
        problems = []
        if not self.data.path:
            problems.append("data.path is required (an image folder, a file list or tar shards)")
        problems += self._out_of_range()
        for name in ("train.steps", "train.batch_size", "train.grad_accumulation", "train.log_every"):
            section, key = name.split(".")
            if getattr(getattr(self, section), key) < 1:
                problems.append(f"{name} must be at least 1")
        if self.checkpoint.every < 0 or self.checkpoint.keep < 1 or self.eval.every < 0:
            problems.append("checkpoint.every and eval.every must be >= 0 and checkpoint.keep >= 1")
        knn = self.eval.knn
        if bool(knn.train) != bool(knn.val):
            problems.append("eval.knn needs both train and val (labelled image folders or lists), or neither")
        if knn.train and not self.eval.every:
            problems.append("eval.knn is set but eval.every is 0: give the steps between evaluations")
        if not knn.ks or min(knn.ks) < 1 or knn.size < 1 or knn.batch_size < 1:
            problems.append("eval.knn.ks must be a non-empty list of k >= 1; eval.knn.size and batch_size >= 1")
        if not self.losses.enabled():
            problems.append("losses: at least one loss term is needed")
        if self.losses.koleo is not None and self.train.batch_size < 2:
            problems.append("the KoLeo loss needs train.batch_size >= 2 (a nearest neighbour in the batch)")
        lo, hi = self.masking.ratio_min_max
        if not 0.0 <= lo <= hi <= 1.0 or not 0.0 <= self.masking.sample_probability <= 1.0:
            problems.append("masking.ratio_min_max must satisfy 0 <= min <= max <= 1; sample_probability in [0, 1]")
        for name in ("global_scale", "local_scale"):
            a, b = getattr(self.crops, name)
            if not 0.0 < a <= b <= 1.0:
                problems.append(f"crops.{name} must satisfy 0 < min <= max <= 1, got {(a, b)}")
        if self.crops.local_number < 0:
            problems.append("crops.local_number must be >= 0")
        try:
            vit = self.backbone_config()
        except (ValueError, ConfigError) as e:
            problems.append(str(e))
        else:
            p = vit.patch_size
            for name in ("global_size", "local_size"):
                if getattr(self.crops, name) < p:
                    problems.append(f"crops.{name}={getattr(self.crops, name)} is smaller than one {p}×{p} patch "
                                    f"of {self.model.backbone}")  # fmt: skip
            if vit.pos_embed == "learned":
                for name in ("global_size", "local_size"):
                    size = getattr(self.crops, name)
                    if size % p:
                        problems.append(
                            f"crops.{name}={size} is not a multiple of the patch size {p} of {self.model.backbone} "
                            f"(learned position embedding); use e.g. {round(size / p) * p}"
                        )
        if problems:
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))

    def _out_of_range(self) -> list[str]:
        """Numbers outside their meaningful range (a negative learning rate, a zero temperature, a momentum above
        1): each would train without an error, to nonsense or NaN."""
        o, t = self.optim, self.teacher

        def weight_ok(w) -> bool:
            return (w.peak >= 0 and (w.end is None or w.end >= 0)) if isinstance(w, CurveConfig) else w >= 0

        checks = [
            ("seed", self.seed, ">= 0", self.seed >= 0),
            ("data.num_workers", self.data.num_workers, ">= 0", self.data.num_workers >= 0),
            ("optim.base_lr", o.base_lr, "> 0", o.base_lr > 0),
            ("optim.min_lr", o.min_lr, ">= 0", o.min_lr >= 0),
            ("optim.warmup_steps", o.warmup_steps, ">= 0", o.warmup_steps >= 0),
            ("optim.weight_decay", o.weight_decay, ">= 0", o.weight_decay >= 0),
            ("optim.weight_decay_end", o.weight_decay_end, ">= 0", o.weight_decay_end >= 0),
            ("optim.layerwise_decay", o.layerwise_decay, "in (0, 1]", 0 < o.layerwise_decay <= 1),
            ("optim.patch_embed_lr_mult", o.patch_embed_lr_mult, ">= 0", o.patch_embed_lr_mult >= 0),
            ("optim.betas", list(o.betas), "in [0, 1)", all(0 <= b < 1 for b in o.betas)),
            ("optim.clip_grad", o.clip_grad, "> 0 or null", o.clip_grad is None or o.clip_grad > 0),
            ("optim.freeze_last_layer_steps", o.freeze_last_layer_steps, ">= 0", o.freeze_last_layer_steps >= 0),
            ("teacher.momentum", t.momentum, "in [0, 1]", 0 <= t.momentum <= 1),
            ("teacher.final_momentum", t.final_momentum, "in [0, 1]", 0 <= t.final_momentum <= 1),
            ("teacher.center_momentum", t.center_momentum, "in [0, 1]", 0 <= t.center_momentum <= 1),
            ("teacher.sinkhorn_iterations", t.sinkhorn_iterations, ">= 1", t.sinkhorn_iterations >= 1),
            ("teacher.temp", t.temp, "> 0", t.temp > 0),
            ("teacher.warmup_temp", t.warmup_temp, "> 0", t.warmup_temp > 0),
            ("teacher.warmup_temp_steps", t.warmup_temp_steps, ">= 0", t.warmup_temp_steps >= 0),
            ("masking.min_aspect", self.masking.min_aspect, "> 0", self.masking.min_aspect > 0),
        ]
        heads = {"model.dino_head": self.model.dino_head, "model.ibot_head": self.model.ibot_head}
        for name, head in ((n, h) for n, h in heads.items() if h is not None):
            for key in ("n_prototypes", "hidden_dim", "bottleneck_dim", "nlayers"):
                value = getattr(head, key)
                checks.append((f"{name}.{key}", value, ">= 1", value >= 1))
        for term, loss in self.losses.enabled().items():
            w = loss.weight
            shown = f"{{peak: {w.peak}, end: {w.end}}}" if isinstance(w, CurveConfig) else w
            checks.append((f"losses.{term}.weight", shown, ">= 0", weight_ok(w)))
            if hasattr(loss, "student_temp"):
                checks.append((f"losses.{term}.student_temp", loss.student_temp, "> 0", loss.student_temp > 0))
        return [f"{name} must be {rule}, got {value}" for name, value, rule, ok in checks if not ok]

    def backbone_config(self):
        """The student/teacher `ViTConfig`: the preset with `model.backbone_options`, type-checked."""
        from .models.config import ViTConfig
        from .models.presets import PRESETS, preset_config

        if self.model.backbone not in PRESETS:
            raise ConfigError(f"model.backbone: unknown preset {self.model.backbone!r}; known: {', '.join(PRESETS)}")
        options = dict(self.model.backbone_options)
        hints = typing.get_type_hints(ViTConfig)
        unknown = sorted(set(options) - set(hints))
        if unknown:
            raise ConfigError(f"model.backbone_options: unknown option(s) {unknown}; valid: {sorted(hints)}")
        for k, v in options.items():
            options[k] = _convert(hints[k], v, f"model.backbone_options.{k}")
        return preset_config(self.model.backbone, **options)
