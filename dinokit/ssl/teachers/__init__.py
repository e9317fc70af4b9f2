"""Teachers: objects that produce what the loss terms compare the student with, and decide what happens to
their weights as training goes on. The training loop knows only the protocol below; the kinds are a table.

- `ema` (`EMATeacher`): a copy of the student, DINO's self-distillation teacher; after each step
  `t ← m·t + (1 − m)·s`.
- `frozen` (`FrozenTeacher`): a trained model with its heads, loaded from a checkpoint (distillation); never
  changes.
- `gram` (`GramTeacher`): a frozen copy of the main teacher's backbone that the Gram loss consults (DINOv3 §4);
  refreshed on its schedule.

`teacher.kind` chooses the main teacher (`ema` or `frozen`); a `gram` section adds a Gram teacher. Builders take
their own config section and a `TeacherContext`. A distillation run (`distill` section) has its own teacher,
`DistillTeacher` (`distill.py`): one frozen model shared by several students, each of which keeps an EMA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from .distill import DistillTeacher
from .ema import EMATeacher
from .frozen import FrozenTeacher
from .gram import GramTeacher


class Teacher(Protocol):
    """What the meta-architecture and the loop rely on."""

    @property
    def backbone(self) -> nn.Module: ...  # what `dinokit train` exports at the end and evaluates on the way

    def __call__(self, batch) -> Any: ...  # no gradients

    def on_train_start(self, step: int) -> None: ...  # before the first step this process runs (weights loaded)

    def on_step_end(self, step: int) -> None: ...  # after the optimiser step of 0-based step `step`

    def state_dict(self) -> dict: ...  # what a checkpoint keeps of it

    def load_state_dict(self, state: dict) -> Any: ...


@dataclass(frozen=True)
class TeacherContext:
    student: nn.Module  # the SSLModel being trained
    momentum: Callable[[int], float] = lambda step: 1.0  # the `momentum` schedule
    teachers: dict[str, Any] = field(default_factory=dict)  # teachers built before this one (the Gram teacher's source)
    load_model: Callable[[str], nn.Module] | None = None  # a checkpoint's SSL model with its heads (frozen teacher)
    load_backbone: Callable[[str], nn.Module] | None = None  # any source `load_backbone` reads (Gram teacher)


TEACHERS: dict[str, Callable[[Any, TeacherContext], Teacher]] = {
    "ema": EMATeacher.build,
    "frozen": FrozenTeacher.build,
    "gram": GramTeacher.build,
}

__all__ = ["TEACHERS", "DistillTeacher", "EMATeacher", "FrozenTeacher", "GramTeacher", "Teacher", "TeacherContext"]
