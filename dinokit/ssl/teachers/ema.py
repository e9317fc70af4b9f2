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

Its checkpoint state is the copied model's own state dict (`backbone.*`, `dino_head.*`, …), the layout of the
released training checkpoints' `teacher` entry, which `load_backbone` reads.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ..model import SSLModel, TeacherOutput


class EMATeacher(nn.Module):
    def __init__(self, student: SSLModel, momentum: Callable[[int], float]) -> None:
        super().__init__()
        self.model = copy.deepcopy(student).requires_grad_(False).eval()
        self.momentum = momentum
        self._student = [student]  # a plain list: the student is not a sub-module of the teacher
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    @classmethod
    def build(cls, cfg, ctx) -> EMATeacher:
        return cls(ctx.student, ctx.momentum)

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    def train(self, mode: bool = True) -> EMATeacher:
        return super().train(False)  # the teacher is always in eval mode

    @torch.no_grad()
    def forward(self, batch) -> TeacherOutput:
        return self.model.teacher_forward(batch)

    def state_dict(self, *args, **kwargs) -> dict:
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state, strict=strict, assign=assign)

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

    def on_train_start(self, step: int) -> None:
        pass

    def on_step_end(self, step: int) -> None:
        self.update(self.momentum(step))
