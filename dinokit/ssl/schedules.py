"""Every value that changes over training, as one object queried by step.

A `Curve` is 0 for `zero_steps` (overlaid, as the released last-layer freeze), a linear warm-up
`start → peak` over `warmup_steps` (`numpy.linspace` semantics: the last warm-up step reaches the peak), then
cosine / linear / constant `peak → end` until `total` steps, and `end` after. This is the released
`CosineScheduler` (DINOv2 §3, 'linear warmup, cosine decay'), value for value.

`Schedules` holds the named curves of a run (lr, last_layer_lr, wd, momentum, teacher_temp and, for each loss
term, `weight/<term>` and one `<term>_<field>` per other weight-like field of its config, such as
`dino_local_weight`) and returns them all for a step. The loop evaluates them once per step.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Literal


@dataclass
class CurveConfig:
    """A value over steps: 0 for `zero_steps`, linear `start → peak` over `warmup_steps`, then `shape` to `end`."""

    peak: float
    end: float | None = None  # None: stay at peak
    start: float = 0.0
    warmup_steps: int = 0
    shape: Literal["cosine", "constant", "linear"] = "cosine"
    zero_steps: int = 0


Weight = float | CurveConfig  # a loss weight in a config: a number, or a curve over steps


@dataclass(frozen=True)
class Curve:
    peak: float
    end: float | None = None  # None: stay at `peak`
    start: float = 0.0
    warmup_steps: int = 0
    total: int = 0
    shape: str = "cosine"  # "cosine" | "linear" | "constant"
    zero_steps: int = 0

    @classmethod
    def constant(cls, value: float) -> Curve:
        return cls(peak=value, shape="constant")

    def __call__(self, step: int) -> float:
        if step < self.zero_steps:
            return 0.0
        end = self.peak if self.end is None else self.end
        if step < self.warmup_steps:
            if self.warmup_steps == 1:
                return self.start
            return self.start + (self.peak - self.start) * step / (self.warmup_steps - 1)
        if self.shape == "constant":
            return self.peak
        if step >= self.total:
            return end
        progress = (step - self.warmup_steps) / (self.total - self.warmup_steps)
        if self.shape == "linear":
            return self.peak + (end - self.peak) * progress
        if self.shape == "cosine":
            return end + 0.5 * (self.peak - end) * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"unknown curve shape {self.shape!r}")


class Schedules:
    def __init__(self, curves: dict[str, Curve]) -> None:
        self.curves = dict(curves)

    def __getitem__(self, name: str) -> Curve:
        return self.curves[name]

    def __call__(self, step: int) -> dict[str, float]:
        return {name: curve(step) for name, curve in self.curves.items()}


def scaled_lr(base_lr: float, rule: str, global_batch: int) -> float:
    """The LR scaling rules: `sqrt_wrt_1024` (DINOv2: base · sqrt(B / 1024)), `dinov3_sqrt_wrt_1024` (the rule
    of the DINOv3 code under the same name: 4 · base · sqrt(B / 1024), so DINOv3's 1e-3 is DINOv2's 4e-3),
    `linear_wrt_256`, `none`."""
    if rule == "sqrt_wrt_1024":
        return base_lr * math.sqrt(global_batch / 1024.0)
    if rule == "dinov3_sqrt_wrt_1024":
        return 4.0 * base_lr * math.sqrt(global_batch / 1024.0)
    if rule == "linear_wrt_256":
        return base_lr * global_batch / 256.0
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling rule {rule!r}")


def curve_from(value, total: int) -> Curve:
    """A loss weight from the config: a number (constant) or a `CurveConfig` section."""
    if isinstance(value, int | float):
        return Curve.constant(float(value))
    return Curve(value.peak, value.end, value.start, value.warmup_steps, total, value.shape, value.zero_steps)


def weight_fields(term_config) -> list[str]:
    """The fields of a loss term's config that are weights over steps (`float | CurveConfig`)."""
    hints = typing.get_type_hints(type(term_config))
    return [f.name for f in dataclasses.fields(term_config) if CurveConfig in typing.get_args(hints[f.name])]


def term_schedule_name(term: str, field: str) -> str:
    return f"weight/{term}" if field == "weight" else f"{term}_{field}"


def build_schedules(optim, teacher, terms: dict, total_steps: int, global_batch: int) -> Schedules:
    """From the `optim` and `teacher` config sections and the enabled loss terms' configs (name → section);
    `global_batch` = images per optimiser step."""
    lr = scaled_lr(optim.base_lr, optim.lr_scaling, global_batch)
    lr_end = optim.min_lr if optim.schedule == "cosine" else None
    shape = "cosine" if optim.schedule == "cosine" else "constant"
    curves = {
        "lr": Curve(lr, lr_end, 0.0, optim.warmup_steps, total_steps, shape),
        "last_layer_lr": Curve(lr, lr_end, 0.0, optim.warmup_steps, total_steps, shape, optim.freeze_last_layer_steps),
        "wd": Curve(optim.weight_decay, optim.weight_decay_end, total=total_steps),
        "momentum": Curve(teacher.momentum, teacher.final_momentum, total=total_steps),
        "teacher_temp": Curve(
            teacher.temp, None, teacher.warmup_temp, teacher.warmup_temp_steps, total_steps, shape="constant"
        ),
    }
    for name, term in terms.items():
        for field in weight_fields(term):
            curves[term_schedule_name(name, field)] = curve_from(getattr(term, field), total_steps)
    return Schedules(curves)
