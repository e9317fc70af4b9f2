"""DINO loss (DINO, arXiv:2104.14294; DINOv2 §3): cross-entropy between teacher targets and student outputs
of the CLS token, over pairs of crops of the same image.

For student logits `s [S, B, K]` (S crops) and teacher probabilities `t [T, B, K]` (T global crops):

    dino_loss = mean over pairs (i, j) of  mean_b  − Σ_k t[j, b, k] · log_softmax(s[i, b] / τ_s)_k

with the pairs (i, i) left out when `ignore_diagonal` (student global crop i against the teacher's target of
the same crop). The recipe combines a local term (the L local crops against the G global targets, G·L pairs)
and a global term (global crops against each other, G·(G−1) pairs) weighted by their pair counts, i.e.
16/18 and 2/18 for 2 global and 8 local crops: exactly the mean over all 18 released pairs. DINOv3 can
down-weight the local part (`local_weight`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..schedules import CurveConfig
from .term import BuildContext, LossTerm


@dataclass
class DinoLossConfig:
    """`losses.dino`."""

    weight: float | CurveConfig = 1.0
    student_temp: float = 0.1
    local_weight: float | CurveConfig = 1.0  # extra factor on the local-crop part (DINOv3 down-weights it)
    global_ignore_diagonal: bool = True  # no (crop i, crop i) pairs between the global crops, as released

    def problems(self) -> list[str]:
        return [] if self.student_temp > 0 else [f"student_temp must be > 0, got {self.student_temp}"]


def dino_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float = 0.1, ignore_diagonal: bool = False
) -> torch.Tensor:
    """Mean over (student crop, teacher crop) pairs of the batch-mean cross-entropy. Shapes `[S, B, K]`, `[T, B, K]`."""
    S, B, _ = student_logits.shape
    T = teacher_probs.shape[0]
    log_p = F.log_softmax(student_logits.float() / student_temp, dim=-1)  # [S, B, K]
    if not ignore_diagonal:
        return -torch.einsum("sbk,tbk->", log_p, teacher_probs.float()) / (B * S * T)
    per_pair = -torch.einsum("sbk,tbk->st", log_p, teacher_probs.float())  # [S, T] summed over the batch
    n_diag = min(S, T)
    off_diagonal = per_pair.sum() - per_pair.diagonal().sum()
    return off_diagonal / (B * (S * T - n_diag))


class DinoTerm(LossTerm):
    """The DINO loss term of the recipe: teacher targets of the global crops vs. student CLS logits of all crops.

    Returns the value the term's weight multiplies and metrics: the local and global parts (pair means) and
    the entropies of the targets (see `target_entropies`)."""

    def __init__(self, target: nn.Module, student_temp: float = 0.1, global_ignore_diagonal: bool = True) -> None:
        super().__init__()
        self.target = target
        self.student_temp = student_temp
        self.global_ignore_diagonal = global_ignore_diagonal

    def forward(self, student, teacher, batch, temps: dict[str, float]) -> tuple[torch.Tensor, dict]:
        G, B = teacher.cls_logits.shape[:2]
        probs = self.target(teacher.cls_logits.flatten(0, 1), temps["teacher_temp"]).unflatten(0, (G, B))  # [G, B, K]
        glob = dino_loss(student.global_cls_logits, probs, self.student_temp, self.global_ignore_diagonal)
        n_global = G * (G - 1) if self.global_ignore_diagonal else G * G
        metrics = {"dino_global": glob.detach(), **target_entropies(probs.flatten(0, 1))}
        if student.local_cls_logits is None or student.local_cls_logits.shape[0] == 0:
            return glob, metrics
        local = dino_loss(student.local_cls_logits, probs, self.student_temp)
        n_local = G * student.local_cls_logits.shape[0]
        metrics["dino_local"] = local.detach()
        loss = (n_local * temps.get("dino_local_weight", 1.0) * local + n_global * glob) / (n_local + n_global)
        return loss, metrics

    @classmethod
    def build(cls, cfg: DinoLossConfig, ctx: BuildContext) -> DinoTerm:
        return cls(ctx.target(ctx.n_prototypes["dino"]), cfg.student_temp, cfg.global_ignore_diagonal)


@torch.no_grad()
def target_entropies(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Entropies (nats) of targets `[N, K]`: `target_entropy` of the batch-average distribution (low: few
    prototypes in use, collapse to a point) and `target_sample_entropy`, the mean per sample (near log K:
    uniform targets, the other collapse)."""
    p = probs.float()
    mean = p.mean(dim=0)
    return {
        "target_entropy": -(mean * torch.log(mean.clamp_min(1e-30))).sum(),
        "target_sample_entropy": -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1).mean(),
    }
