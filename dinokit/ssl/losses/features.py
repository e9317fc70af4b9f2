"""Feature distillation: a student regresses a frozen teacher's tokens, for teachers without DINO / iBOT heads
(the released backbone files carry none). Not in the papers, which distil through the teacher's heads; this is
dinokit's path from any `load_backbone` source. Three terms, each on the global crops both models see:

- `feature_cls`: `mean_i (1 − cos(P_c s_i, t_i))` over the G·B crops, `s` the student's final-normed CLS, `t`
  the teacher's, `P_c` a learned linear projection to the teacher's width (the student's `projector`);
- `feature_patches`: the same on every patch token, `P_p` applied to the student's patches and the teacher's
  patch map resampled to the student's grid (`teachers/distill.py`);
- `feature_relations`: the mean squared difference of the two patch-similarity (Gram) matrices of each image,
  computed on the L2-normalised patches of each model in its own space (no projection: it transfers the
  teacher's structure, not its coordinates; the Gram-anchoring formula, `losses/gram.py`).

`distance`: cosine (the default) or smooth-L1 on the tokens themselves; docs/stages.md has the comparison that
chose the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..schedules import CurveConfig
from .gram import gram_loss
from .term import BuildContext, LossTerm


@dataclass
class FeatureLossConfig:
    """`losses.feature_cls` / `losses.feature_patches` / `losses.feature_relations`."""

    weight: float | CurveConfig = 1.0
    distance: Literal["cosine", "smooth_l1"] = "cosine"  # feature_cls / feature_patches (relations: squared)

    def problems(self) -> list[str]:
        return []


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """`mean (1 − cos(s, t))` over the rows of `[..., D]` tensors, in float32."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


DISTANCES = {"cosine": cosine_distance, "smooth_l1": lambda s, t: F.smooth_l1_loss(s.float(), t.float())}


class FeatureClsTerm(LossTerm):
    def __init__(self, distance: str = "cosine") -> None:
        super().__init__()
        self.distance = DISTANCES[distance]

    def forward(self, student, teacher, batch, values) -> tuple[torch.Tensor, dict]:
        return self.distance(student.projected_cls, teacher.cls), {}  # [G, B, D_t] each

    @classmethod
    def build(cls, cfg: FeatureLossConfig, ctx: BuildContext) -> FeatureClsTerm:
        return cls(cfg.distance)


class FeaturePatchesTerm(FeatureClsTerm):
    def forward(self, student, teacher, batch, values) -> tuple[torch.Tensor, dict]:
        return self.distance(student.projected_patches, teacher.patches), {}  # [G·B, h·w, D_t] each


class FeatureRelationsTerm(LossTerm):
    def forward(self, student, teacher, batch, values) -> tuple[torch.Tensor, dict]:
        return gram_loss(student.global_patches, teacher.patches), {}  # Gram of [G·B, h·w, D_s] vs [·, ·, D_t]

    @classmethod
    def build(cls, cfg: FeatureLossConfig, ctx: BuildContext) -> FeatureRelationsTerm:
        return cls()
