"""KoLeo regulariser (Sablayrolles et al., "Spreading vectors for similarity search", 2019; DINOv2 §3):
the Kozachenko–Leonenko differential-entropy estimate of the batch of features, which spreads them out.

For features `x [N, D]`, L2-normalised (eps 1e-8), with nearest neighbour `nn(i)` by cosine similarity:

    koleo_loss = − mean_i log( ‖x_i − x_nn(i) + 1e-8‖₂ + 1e-8 )

(the 1e-8 inside the norm is `torch.nn.PairwiseDistance`'s eps, as released). The recipe applies it to the
final-normed, pre-head CLS token of each global crop separately (never between two crops of one image), per
device, and weighs the sum over the global crops by 0.1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`−mean log(nearest-neighbour distance + eps)` of the L2-normalised rows of `features [N, D]` (N ≥ 2)."""
    x = F.normalize(features.float(), p=2, dim=-1, eps=eps)  # [N, D]
    with torch.no_grad():
        sims = x @ x.T  # [N, N]
        sims.fill_diagonal_(-1.0)  # a point is not its own neighbour
        neighbour = sims.argmax(dim=1)  # [N]
    distances = F.pairwise_distance(x, x[neighbour], p=2, eps=eps)  # [N]
    return -torch.log(distances + eps).mean()


class KoleoTerm(nn.Module):
    """KoLeo on each global crop's pre-head CLS. The term's value is the sum over the G global crops (the
    released scale, so the weight means what `koleo_loss_weight` meant); the metric `koleo` is their mean."""

    def forward(self, student, teacher, batch, temps: dict[str, float]) -> tuple[torch.Tensor, dict]:
        per_crop = torch.stack([koleo_loss(cls) for cls in student.global_cls])  # [G]
        return per_crop.sum(), {"koleo": per_crop.mean().detach()}
