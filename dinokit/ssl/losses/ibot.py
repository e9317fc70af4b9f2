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

from dataclasses import dataclass

import torch

from ..schedules import CurveConfig
from .term import BuildContext, LossTerm


@dataclass
class IbotLossConfig:
    """`losses.ibot`."""

    weight: float | CurveConfig = 1.0
    student_temp: float = 0.1

    def problems(self) -> list[str]:
        return [] if self.student_temp > 0 else [f"student_temp must be > 0, got {self.student_temp}"]


def ibot_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    masks_weight: torch.Tensor,
    n_global_crops: int,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """`−Σ_m w_m Σ_k t·log_softmax(s/τ) / n_global_crops` for `[M, K]` logits and probabilities, weights `[M]`."""
    per_patch = SoftCrossEntropy.apply(student_logits, teacher_probs, student_temp)  # [M]
    return (per_patch * masks_weight.float()).sum() / n_global_crops


class SoftCrossEntropy(torch.autograd.Function):
    """Row-wise `−Σ_k t_k · log_softmax(s / τ)_k` for `[M, K]` inputs, without materialising the log-softmax.

    With `z = s / τ` and `lse = logsumexp(z)`: loss = `lse · Σt − Σ t·z`, and the gradient is
    `(softmax(z) · Σt − t) / τ`, computed in one buffer in the backward pass. At K = 65536 and a few hundred
    masked patches this saves a copy of the logits in memory and several passes over them (the iBOT logits are
    the largest tensors of a step after the weights)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, probs: torch.Tensor, temp: float) -> torch.Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)  # at least float32 (bf16 logits under autocast)
        z = logits.to(dtype) / temp  # [M, K]
        probs = probs.to(dtype)
        lse = torch.logsumexp(z, dim=-1)  # [M]
        mass = probs.sum(dim=-1)  # [M] (1 for targets; kept exact for any input)
        dot = torch.bmm(probs.unsqueeze(1), z.unsqueeze(2)).view(-1)  # [M] Σ_k t·z without a product tensor
        ctx.save_for_backward(logits, probs, lse, mass)
        ctx.temp = temp
        return lse * mass - dot

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, probs, lse, mass = ctx.saved_tensors
        g = (grad / ctx.temp).unsqueeze(-1)  # [M, 1]
        out = logits.to(lse.dtype).div(ctx.temp).sub_(lse.unsqueeze(-1)).exp_()  # softmax(z)  [M, K]
        out.mul_(mass.unsqueeze(-1)).sub_(probs).mul_(g)
        return out.to(logits.dtype), None, None


class IbotTerm(LossTerm):
    """The iBOT term: targets of the teacher's masked-position patch logits vs. the student's."""

    def __init__(self, target: torch.nn.Module, student_temp: float = 0.1) -> None:
        super().__init__()
        self.target = target
        self.student_temp = student_temp

    def forward(self, student, teacher, batch, temps: dict[str, float]) -> tuple[torch.Tensor, dict]:
        probs = self.target(teacher.patch_logits, temps["teacher_temp"])  # [M, K]
        n_global_crops = batch.masks.shape[0]
        return ibot_loss(student.patch_logits, probs, batch.masks_weight, n_global_crops, self.student_temp), {}

    @classmethod
    def build(cls, cfg: IbotLossConfig, ctx: BuildContext) -> IbotTerm:
        return cls(ctx.target(ctx.n_prototypes["ibot"]), cfg.student_temp)
