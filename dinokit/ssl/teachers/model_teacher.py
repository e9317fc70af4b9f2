"""What the EMA and the frozen teacher share: a whole SSL model (backbone and heads) kept in eval mode, without
gradients, whose `teacher_forward` gives the targets' logits, and whose checkpoint state is that model's own
state dict (`backbone.*`, `dino_head.*`, …: the layout of the released training checkpoints' `teacher` entry,
which `load_backbone` reads). Subclasses decide what happens at the end of a step.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model import SSLModel, TeacherOutput


class ModelTeacher(nn.Module):
    def __init__(self, model: SSLModel) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    def train(self, mode: bool = True) -> ModelTeacher:
        return super().train(False)  # a teacher is always in eval mode (no drop path, no RoPE augmentation)

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
