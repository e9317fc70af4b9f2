"""The teacher of a distillation run (DINOv2 §5, DINOv3 §5.2): a frozen, trained model that runs once per batch
for all the students, and gives each student its targets on the student's own patch grid.

- With DINO / iBOT heads (a dinokit run or training checkpoint, an official training checkpoint): the DINO head's
  logits of the global crops' CLS tokens (shared by every student), and per student the iBOT head's logits at
  the patches that student predicts. The targets themselves (Sinkhorn-Knopp or centering) are made by each
  student's loss terms, over that student's process group.
- Without heads (a released backbone file, any `load_backbone` source): the final-normed CLS and patch tokens,
  which the feature-distillation terms regress.

Patch grids: the teacher's patch map is resampled to each student's grid (bilinear, antialiased when shrinking)
whenever they differ — patch 14 against 16, a ConvNeXt's stride 32, or a teacher that sees larger crops
(`distill.teacher_scale`: the data renders the global crops' regions at that scale as `extra_crops["teacher"]`).
The released code reads that scale with `getattr(self, "crops.teacher_to_student_resolution_scale", 1.0)`, which is
always 1.0, so its teachers saw the students' crops; here the setting is applied.

Deviations: the iBOT head runs on the resampled backbone tokens at the student's positions (the released code runs
the head's MLP on every teacher token and its last layer at the masked ones; the same numbers when the grids
agree). The state dict is empty: the teacher is read again from `distill.teacher` when a run resumes, so
checkpoints do not carry a copy of a large frozen model. `forwards` counts the backbone passes (the
`teacher_forwards` metric).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SharedTeacherOutput:
    """What one teacher pass gives every student."""

    cls: torch.Tensor  # [G, B, D] final-normed
    patch_map: torch.Tensor  # [G·B, D, h, w] final-normed
    cls_logits: torch.Tensor | None  # [G, B, K] (teachers with heads)


class DistillTeacher(nn.Module):
    def __init__(self, backbone: nn.Module, dino_head: nn.Module | None = None, ibot_head: nn.Module | None = None):
        super().__init__()
        self.model = nn.ModuleDict({"backbone": backbone, "dino_head": dino_head, "ibot_head": ibot_head})
        self.model.requires_grad_(False).eval()
        self.forwards = 0

    @property
    def backbone(self) -> nn.Module:
        return self.model["backbone"]

    @property
    def has_heads(self) -> bool:
        return self.model["dino_head"] is not None

    def n_prototypes(self) -> dict[str, int]:
        """"dino" / "ibot" → the number of prototypes of the teacher's heads (the students' heads get the same)."""
        dino, ibot = self.model["dino_head"], self.model["ibot_head"]
        return {"dino": dino.n_prototypes, "ibot": (ibot or dino).n_prototypes}

    def train(self, mode: bool = True) -> DistillTeacher:
        return super().train(False)

    @torch.no_grad()
    def forward(self, batch) -> SharedTeacherOutput:
        G, B = batch.n_global_crops, batch.batch_size
        out = self.backbone.forward_features(batch.extra_crops.get("teacher", batch.global_crops))
        self.forwards += 1
        dino = self.model["dino_head"]
        logits = dino(out.cls).unflatten(0, (G, B)) if dino is not None else None  # [G, B, K]
        return SharedTeacherOutput(out.cls.unflatten(0, (G, B)), out.patch_map(), logits)

    @torch.no_grad()
    def for_student(self, shared: SharedTeacherOutput, grid: tuple[int, int], mask_indices: torch.Tensor):
        """The teacher's output as a student with patch `grid` reads it (a `TeacherOutput`): patches on that grid,
        and — with heads — the iBOT logits at the student's predicted patches `mask_indices [M]`."""
        from ..model import TeacherOutput

        patches = resample(shared.patch_map, grid).flatten(2).transpose(1, 2)  # [G·B, h·w, D]
        patch_logits = None
        if self.has_heads and mask_indices.numel():
            head = self.model["ibot_head"] or self.model["dino_head"]
            patch_logits = head(patches.flatten(0, 1)[mask_indices])  # [M, K]
        return TeacherOutput(shared.cls, shared.cls_logits, patch_logits, patches)

    def state_dict(self, *args, **kwargs) -> dict:
        return {}

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False):
        return nn.modules.module._IncompatibleKeys([], [])

    def on_train_start(self, step: int) -> None:
        pass

    def on_step_end(self, step: int) -> None:
        pass


def resample(patch_map: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`[N, D, h, w]` → `[N, D, *grid]`, bilinear (antialiased when shrinking); unchanged when the grids agree."""
    if tuple(patch_map.shape[-2:]) == tuple(grid):
        return patch_map
    shrink = patch_map.shape[-2] > grid[0] or patch_map.shape[-1] > grid[1]
    out = F.interpolate(patch_map.float(), size=grid, mode="bilinear", align_corners=False, antialias=shrink)
    return out.to(patch_map.dtype)
