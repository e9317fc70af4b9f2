"""Every value that changes over training, as one object queried by step.

A `Curve` is 0 for `zero_steps` (overlaid, as the released last-layer freeze), a linear warm-up
`start → peak` over `warmup_steps` (`numpy.linspace` semantics: the last warm-up step reaches the peak), then
cosine / linear / constant `peak → end` until `total` steps, and `end` after. This is the released
`CosineScheduler` (DINOv2 §3, 'linear warmup, cosine decay'), value for value.

`Schedules` holds the named curves of a run (lr, last_layer_lr, wd, momentum, teacher_temp and one
`weight/<term>` per loss term, plus term extras such as `dino_local_weight`) and returns them all for a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
    """The LR scaling rules: `sqrt_wrt_1024` (DINOv2: base · sqrt(B / 1024)), `linear_wrt_256`, `none`."""
    if rule == "sqrt_wrt_1024":
        return base_lr * math.sqrt(global_batch / 1024.0)
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


def build_schedules(optim, teacher, losses, total_steps: int, global_batch: int) -> Schedules:
    """From the `optim`, `teacher` and `losses` config sections; `global_batch` = images per optimiser step."""
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
    for name, term in losses.enabled().items():
        curves[f"weight/{name}"] = curve_from(term.weight, total_steps)
    if losses.dino is not None:
        curves["dino_local_weight"] = curve_from(losses.dino.local_weight, total_steps)
    return Schedules(curves)
