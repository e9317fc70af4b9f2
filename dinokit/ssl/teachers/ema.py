"""The EMA teacher (self-distillation, DINO §3 / DINOv2 / DINOv3): a copy of the student — backbone and heads —
updated after every optimiser step as `t ← m·t + (1 − m)·s` over all parameters, m following the momentum
schedule (cosine 0.992 → 1 in DINOv2, constant in DINOv3). Always in eval mode (no stochastic depth, no RoPE
augmentation), never given gradients. `torch.lerp` keeps m = 1 (teacher unchanged) and m = 0 (teacher =
student) exact.

With an FSDP-sharded student (`train.parallel=fsdp`) the teacher stays a full, unsharded copy on every rank —
the simplest design that keeps its forward, its export, the Gram teacher's copies and the checkpoints as in
one process — and its update reads the student's full parameters: each sharded (DTensor) parameter is
gathered with `full_tensor()` (in fp32: the sharded parameters are the fp32 masters, whatever the compute
precision), one at a time so that no second full copy of the model is held, and lerped into the teacher. The
cost is one all-gather of the student per step, as in the forward pass. The parameter pairs are taken at the
first update, after the loop has sharded the student.

Forward, eval mode and checkpoint state are `ModelTeacher`'s.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch.distributed.tensor import DTensor

from ..model import SSLModel
from .model_teacher import ModelTeacher


class EMATeacher(ModelTeacher):
    def __init__(self, student: SSLModel, momentum: Callable[[int], float]) -> None:
        super().__init__(copy.deepcopy(student))
        self.momentum = momentum
        self._student = [student]  # a plain list: the student is not a sub-module of the teacher
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    @classmethod
    def build(cls, cfg, ctx) -> EMATeacher:
        return cls(ctx.student, ctx.momentum)

    def _parameter_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self._pairs is None:
            t = list(self.model.parameters())
            s = list(self._student[0].parameters())
            if len(t) != len(s) or any(a.shape != b.shape for a, b in zip(t, s)):
                raise RuntimeError("teacher and student parameters do not correspond")
            self._pairs = (t, s)
        return self._pairs

    @torch.no_grad()
    def update(self, m: float) -> None:
        """`t ← m·t + (1 − m)·s` for every parameter."""
        t, s = self._parameter_pairs()
        if isinstance(s[0], DTensor):  # sharded student (FSDP): gathered parameter by parameter
            for teacher_p, student_p in zip(t, s):
                teacher_p.lerp_(student_p.full_tensor(), 1.0 - m)
        else:
            torch._foreach_lerp_(t, s, 1.0 - m)

    def on_step_end(self, step: int) -> None:
        self.update(self.momentum(step))
