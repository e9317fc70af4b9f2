"""The frozen teacher (distillation, DINOv2 §5 / DINOv3 §5.2): a trained model with its DINO / iBOT heads,
loaded from `teacher.checkpoint` (a dinokit training checkpoint or run folder: its teacher and the architecture
recorded beside it) and never changed. Its outputs are what an EMA teacher's would be: the targets of the same
loss terms.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model import SSLModel, TeacherOutput


class FrozenTeacher(nn.Module):
    def __init__(self, model: SSLModel) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()

    @classmethod
    def build(cls, cfg, ctx) -> FrozenTeacher:
        """`cfg`: the `teacher` section; the model comes from `ctx.load_model(cfg.checkpoint)`."""
        return cls(ctx.load_model(cfg.checkpoint))

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    @torch.no_grad()
    def forward(self, batch) -> TeacherOutput:
        return self.model.teacher_forward(batch)

    def state_dict(self, *args, **kwargs) -> dict:
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state, strict=strict, assign=assign)

    def on_train_start(self, step: int) -> None:
        pass

    def on_step_end(self, step: int) -> None:
        pass
