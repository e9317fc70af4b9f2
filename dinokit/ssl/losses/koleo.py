"""KoLeo regulariser (Sablayrolles et al., "Spreading vectors for similarity search", 2019; DINOv2 §3):
the Kozachenko–Leonenko differential-entropy estimate of the batch of features, which spreads them out.

For features `x [N, D]`, L2-normalised (eps 1e-8), with nearest neighbour `nn(i)` by cosine similarity:

    koleo_loss = − mean_i log( ‖x_i − x_nn(i) + 1e-8‖₂ + 1e-8 )

(the 1e-8 inside the norm is `torch.nn.PairwiseDistance`'s eps, as released). The recipe applies it to the
final-normed, pre-head CLS token of each global crop separately (never between two crops of one image) and
weighs the sum over the global crops by 0.1. DINOv2 takes the neighbours per device; DINOv3 can take them
among the features of a group of ranks (`group_size`, 16 in its high-resolution stage): the rows of the other
ranks of the group are gathered with their gradients, as released.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..schedules import CurveConfig
from .term import BuildContext, LossTerm


@dataclass
class KoleoLossConfig:
    """`losses.koleo`."""

    weight: float | CurveConfig = 0.1
    group_size: int = 1  # ranks whose features form one neighbour set (1: per device)

    def problems(self) -> list[str]:
        return [] if self.group_size >= 1 else [f"group_size must be >= 1, got {self.group_size}"]


def koleo_loss(features: torch.Tensor, eps: float = 1e-8, group=None) -> torch.Tensor:
    """`−mean log(nearest-neighbour distance + eps)` of the L2-normalised rows of `features [N, D]` (N ≥ 2), the
    neighbours taken among this rank's rows or, with a process `group`, among the rows of every rank in it."""
    x = F.normalize(features.float(), p=2, dim=-1, eps=eps)  # [N, D]
    pool, offset = x, 0
    if group is not None:
        from torch.distributed.nn.functional import all_gather  # differentiable: neighbours get gradients too

        pool = torch.cat(all_gather(x, group=group))  # [N · group size, D]
        offset = dist.get_rank(group) * x.shape[0]
    with torch.no_grad():
        sims = x @ pool.T  # [N, P]
        rows = torch.arange(x.shape[0], device=x.device)
        sims[rows, rows + offset] = -1.0  # a point is not its own neighbour
        neighbour = sims.argmax(dim=1)  # [N]
    distances = F.pairwise_distance(x, pool[neighbour], p=2, eps=eps)  # [N]
    return -torch.log(distances + eps).mean()


class KoleoTerm(LossTerm):
    """KoLeo on each global crop's pre-head CLS. The term's value is the sum over the G global crops (the
    released scale, so the weight means what `koleo_loss_weight` meant); the metric `koleo_per_crop` is their
    mean."""

    def __init__(self, group=None) -> None:
        super().__init__()
        self.group = group

    def forward(self, student, teacher, batch, values: dict[str, float]) -> tuple[torch.Tensor, dict]:
        per_crop = torch.stack([koleo_loss(cls, group=self.group) for cls in student.global_cls])  # [G]
        return per_crop.sum(), {"koleo_per_crop": per_crop.mean().detach()}

    @classmethod
    def build(cls, cfg: KoleoLossConfig, ctx: BuildContext) -> KoleoTerm:
        return cls(ctx.subgroup(cfg.group_size))
