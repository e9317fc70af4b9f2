"""Teachers: objects that produce the targets' logits for a batch and decide what happens at the end of a step.

The training loop only calls `teacher(batch)` (through the meta-architecture) and `teacher.on_step_end(step)`.

- `EMATeacher` (self-distillation, DINO §3 / DINOv2): a copy of the student updated after every optimiser step
  as `t ← m·t + (1 − m)·s` over all parameters (backbone and heads), m following the momentum schedule
  (cosine 0.992 → 1 in DINOv2). Always in eval mode (no stochastic depth, no RoPE augmentation), never given
  gradients. `torch.lerp` keeps m = 1 (teacher unchanged) and m = 0 (teacher = student) exact.

DINOv3 adds a `FrozenTeacher` (distillation from a checkpoint; `on_step_end` does nothing) and a `GramTeacher`
(periodically refreshed from the EMA teacher) with the same two methods.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..data.collate import Batch
from .model import SSLModel, TeacherOutput


class EMATeacher(nn.Module):
    def __init__(self, student: SSLModel, momentum: Callable[[int], float]) -> None:
        super().__init__()
        self.model = copy.deepcopy(student).requires_grad_(False).eval()
        self.momentum = momentum
        self._student = [student]  # a plain list: the student is not a sub-module of the teacher
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def train(self, mode: bool = True) -> EMATeacher:
        return super().train(False)  # the teacher is always in eval mode

    @torch.no_grad()
    def forward(self, batch: Batch) -> TeacherOutput:
        return self.model.teacher_forward(batch)

    def _parameter_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self._pairs is None:
            t = [p for p in self.model.parameters()]
            s = [p for p in self._student[0].parameters()]
            if len(t) != len(s) or any(a.shape != b.shape for a, b in zip(t, s)):
                raise RuntimeError("teacher and student parameters do not correspond")
            self._pairs = (t, s)
        return self._pairs

    @torch.no_grad()
    def update(self, m: float) -> None:
        """`t ← m·t + (1 − m)·s` for every parameter."""
        t, s = self._parameter_pairs()
        torch._foreach_lerp_(t, s, 1.0 - m)

    def on_step_end(self, step: int) -> None:
        self.update(self.momentum(step))
