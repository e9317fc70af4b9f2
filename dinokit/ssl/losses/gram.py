"""Gram anchoring loss (DINOv3, Siméoni et al., arXiv:2508.10104, §4 "Gram anchoring"): the student's patch
features are kept close, in their pairwise similarities, to those of a frozen "Gram teacher", which fixes the
degradation of dense features in long trainings without constraining the features themselves.

With `X_s`, `X_t` the patch features of the student and the teacher, L2-normalised along the feature dimension
(`F.normalize`, eps 1e-12), and one Gram matrix per image:

    L = mean over (image, i, j) of ( X_s X_sᵀ − X_t X_tᵀ )²_ij

This reproduces the released `GramLoss` module exactly, including these behaviours:

- Options. Its constructor defaults (`remove_neg=True`) are not the recipe's: the config defaults are
  `normalized: true`, `remove_neg: false`, `remove_only_teacher_neg: false`, and the Gram stages
  (`dinov3_vit7b16_gram_anchor`, `dinov3_vit7b16_high_res_adapt`) set `img_level: true` (the base
  `ssl_default_config` says `img_level: false`). The constructor also takes an `img_level` argument that it
  ignores: only the one passed to `forward` counts. The defaults here are those of the Gram stages.
- `img_level=False` flattens `[B, N, D]` to `[B·N, D]` and builds one `(B·N)²` Gram matrix over every patch
  of the batch (patches of different images are compared too); inputs may also already be `[M, D]` (the
  released recipe passes the masked or unmasked patches that way). `img_level=True` requires `[B, N, D]`.
- The MSE is a mean over all Gram entries, `B·N²` of them (or `M²`), diagonal included.
- `remove_neg` sets the negative similarities of both Gram matrices to 0 (those student entries get no
  gradient). `remove_only_teacher_neg` zeroes the teacher's negatives *before* it evaluates the student mask
  `(student < 0) & (teacher < 0)`, which is therefore always empty: the student's negatives are kept, and the
  option only clamps the target at 0.
- Everything is computed in float32 (inputs are cast with `.float()`, float64 ones included).
- `normalized=False` compares raw dot products.

Deviations, none of which changes a value the released module returns: the teacher side carries no gradient
(in training the Gram teacher is frozen); setting both `remove_neg` and `remove_only_teacher_neg` raises a
ValueError (released: an assert); inputs of the wrong rank or whose Gram matrices differ in shape raise a
ValueError (released: an assert, or an MSE broadcast). As in the released module, the student and the teacher
may differ in feature dimension: only their Gram matrices are compared.

`GramTerm` is the loss term of the recipe: the student side is the final-normed patch tokens of its (masked)
global crops, the teacher side the Gram teacher's (`ssl/teachers/gram.py`) on the same regions, resized to the
student's grid; `tokens_used` picks all patches, or only the masked or unmasked ones (then `img_level` must be
false, as released). Until the Gram teacher holds weights, and at steps where the term's weight is 0, the term
is 0 and the Gram teacher is not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..schedules import CurveConfig
from .term import BuildContext, LossTerm


@dataclass
class GramLossConfig:
    """`losses.gram` (the Gram teacher is configured in the `gram` section)."""

    weight: float | CurveConfig = 1.0
    normalized: bool = True
    img_level: bool = True  # one Gram matrix per image (false: one over all selected patches of the batch)
    remove_neg: bool = False
    remove_only_teacher_neg: bool = False
    tokens_used: Literal["all", "masked", "unmasked"] = "all"

    def problems(self) -> list[str]:
        out = []
        if self.remove_neg and self.remove_only_teacher_neg:
            out.append("remove_neg and remove_only_teacher_neg are exclusive")
        if self.tokens_used != "all" and self.img_level:
            out.append(f"tokens_used={self.tokens_used} needs img_level: false (as released)")
        return out


def _gram(features: Tensor, normalized: bool, img_level: bool) -> Tensor:
    x = features.float()  # [B, N, D] or [M, D]
    if normalized:
        x = F.normalize(x, dim=-1)
    if not img_level and x.dim() == 3:
        x = x.flatten(0, 1)  # [B·N, D]
    return x @ x.transpose(-1, -2)  # [B, N, N] or [M, M]


def gram_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    normalized: bool = True,
    img_level: bool = True,
    remove_neg: bool = False,
    remove_only_teacher_neg: bool = False,
) -> Tensor:
    """Mean squared difference between the Gram matrices of the student's and the teacher's patch features
    `[B, N, D]` (or `[M, D]` when `img_level` is False), a float32 scalar; differentiable w.r.t. `student`."""
    if remove_neg and remove_only_teacher_neg:
        raise ValueError("gram_loss: remove_neg and remove_only_teacher_neg are exclusive; set at most one")
    ranks = (3,) if img_level else (2, 3)
    for name, x in (("student", student), ("teacher", teacher)):
        if x.dim() not in ranks:
            expected = "[B, N, D]" if img_level else "[B, N, D] or [M, D]"
            raise ValueError(
                f"gram_loss: {name} must be {expected} with img_level={img_level}, got shape {tuple(x.shape)}"
            )
    s_rows = student.shape[:-1] if img_level else (student.shape[:-1].numel(),)
    t_rows = teacher.shape[:-1] if img_level else (teacher.shape[:-1].numel(),)
    if tuple(s_rows) != tuple(t_rows):
        raise ValueError(
            f"gram_loss: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} do not have the same "
            f"patches (img_level={img_level})"
        )

    with torch.no_grad():
        target = _gram(teacher, normalized, img_level)  # [B, N, N] or [M, M]
        if remove_neg or remove_only_teacher_neg:
            target = target.masked_fill(target < 0, 0.0)
    sims = _gram(student, normalized, img_level)  # [B, N, N] or [M, M]
    if remove_neg:
        sims = sims.masked_fill(sims < 0, 0.0)
    # remove_only_teacher_neg: the released student mask (sims < 0) & (target < 0) is empty once target ≥ 0
    return F.mse_loss(sims, target)


class GramTerm(LossTerm):
    def __init__(self, cfg: GramLossConfig, teacher) -> None:
        super().__init__()
        self.cfg = cfg
        self._teacher = [teacher]  # a plain list: the Gram teacher belongs to the meta-architecture's teachers

    @classmethod
    def build(cls, cfg: GramLossConfig, ctx: BuildContext) -> GramTerm:
        return cls(cfg, ctx.teachers["gram"])

    def forward(self, student, teacher, batch, values: dict[str, float]) -> tuple[Tensor, dict]:
        gram_teacher = self._teacher[0]
        if values["weight/gram"] == 0 or not bool(gram_teacher.ready):
            return student.global_patches.new_zeros((), dtype=torch.float32), {}
        s, t = student.global_patches, gram_teacher(batch)  # [G·B, h·w, D] each
        if self.cfg.tokens_used != "all":
            keep = batch.masks if self.cfg.tokens_used == "masked" else ~batch.masks  # [G·B, h·w]
            s, t = s[keep], t[keep]  # [M, D]
        c = self.cfg
        loss = gram_loss(s, t, normalized=c.normalized, img_level=c.img_level, remove_neg=c.remove_neg,
                         remove_only_teacher_neg=c.remove_only_teacher_neg)  # fmt: skip
        return loss, {}
