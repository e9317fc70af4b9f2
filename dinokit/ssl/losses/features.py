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

Cosine rather than L2: the two models' token norms differ by architecture (a ConvNeXt's tokens are not a ViT's)
and the downstream tools normalise anyway; measured against smooth-L1 in docs/stages.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..schedules import CurveConfig
from .gram import gram_loss
from .term import BuildContext, LossTerm


@dataclass
class FeatureLossConfig:
    """`losses.feature_cls` / `losses.feature_patches` / `losses.feature_relations`."""

    weight: float | CurveConfig = 1.0

    def problems(self) -> list[str]:
        return []


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """`mean (1 − cos(s, t))` over the rows of `[..., D]` tensors, in float32."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


class FeatureClsTerm(LossTerm):
    def forward(self, student, teacher, batch, values) -> tuple[torch.Tensor, dict]:
        return cosine_distance(student.projected_cls, teacher.cls), {}  # [G, B, D_t] each

    @classmethod
    def build(cls, cfg: FeatureLossConfig, ctx: BuildContext) -> FeatureClsTerm:
        return cls()


class FeaturePatchesTerm(LossTerm):
    def forward(self, student, teacher, batch, values) -> tuple[torch.Tensor, dict]:
        return cosine_distance(student.projected_patches, teacher.patches), {}  # [G·B, h·w, D_t] each

    @classmethod
    def build(cls, cfg: FeatureLossConfig, ctx: BuildContext) -> FeaturePatchesTerm:
        return cls()


class FeatureRelationsTerm(LossTerm):
    def forward(self, student, teacher, batch, values) -> tuple[torch.Tensor, dict]:
        return gram_loss(student.global_patches, teacher.patches), {}  # Gram of [G·B, h·w, D_s] vs [·, ·, D_t]

    @classmethod
    def build(cls, cfg: FeatureLossConfig, ctx: BuildContext) -> FeatureRelationsTerm:
        return cls()
