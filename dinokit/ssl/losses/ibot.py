"""iBOT loss (iBOT, arXiv:2111.07832; DINOv2 §3): masked-patch prediction. The student sees the global crops
with some patches replaced by the mask token and must match, on those masked patches only, the teacher's
targets computed from the unmasked crops.

For the M masked patches of a batch with student logits `s [M, K]`, teacher probabilities `t [M, K]` and
per-patch weights `w [M]` (1 / number of masked patches of the patch's crop):

    ibot_loss = − Σ_m w_m Σ_k t[m, k] · log_softmax(s[m] / τ_s)_k  /  n_global_crops

so each masked crop contributes the mean over its masked patches, and the sum is divided by the number of
global crops in the batch, masked or not (as released).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def ibot_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    masks_weight: torch.Tensor,
    n_global_crops: int,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """`−Σ_m w_m Σ_k t·log_softmax(s/τ) / n_global_crops` for `[M, K]` logits and probabilities, weights `[M]`."""
    log_p = F.log_softmax(student_logits.float() / student_temp, dim=-1)  # [M, K]
    per_patch = (teacher_probs.float() * log_p).sum(dim=-1)  # [M]
    return -(per_patch * masks_weight.float()).sum() / n_global_crops


class IbotTerm(nn.Module):
    """The iBOT term: targets of the teacher's masked-position patch logits vs. the student's."""

    def __init__(self, target: nn.Module, student_temp: float = 0.1) -> None:
        super().__init__()
        self.target = target
        self.student_temp = student_temp

    def forward(self, student, teacher, batch, temps: dict[str, float]) -> tuple[torch.Tensor, dict]:
        probs = self.target(teacher.patch_logits, temps["teacher_temp"])  # [M, K]
        n_global_crops = batch.masks.shape[0]
        return ibot_loss(student.patch_logits, probs, batch.masks_weight, n_global_crops, self.student_temp), {}
