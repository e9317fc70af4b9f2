"""Teacher targets: how teacher logits become the probabilities the student is trained to match.

- `SoftmaxCentering` (DINO, DINOv2 default): `p = softmax((t − c) / τ_t)` with a centre `c` that follows an
  EMA of the teacher logits, `c ← m·c + (1 − m)·mean_batch(t)`, updated *after* the targets of a step are
  computed, so a step uses the centre of the previous steps (the very first targets use `c = 0`).
- `sinkhorn_knopp` (SwAV; DINOv3 and the large DINOv2 configs): `Q = exp(t / τ_t)`, normalised to sum 1,
  then `n` rounds of "each prototype gets total mass 1/K, each sample 1/B", all in float32; the final
  columns are rescaled to sum to 1 per sample. The sums over samples include every rank of an initialised
  process group (or of the `group` given: DINOv3's multi-student distillation balances within each student's
  sub-group), and B is the total number of rows over those ranks.

Deviations from the released code, neither of which changes a number where the released code gives one:
- Sinkhorn subtracts the global maximum logit before `exp` (it cancels in the first normalisation) so large
  logits cannot overflow to inf; a prototype whose mass underflows to 0 stays 0 instead of becoming NaN.
- The centre update is the mean over all rows of all ranks (weighted by their counts). The released DINO
  loss does the same (equal rows per rank); the released iBOT loss averages the per-rank means instead, which
  differs only in multi-process runs whose ranks mask different numbers of patches.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(x: torch.Tensor, op=None, group=None) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(x, op=op or dist.ReduceOp.SUM, group=group)
    return x


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temp: float, n_iterations: int = 3, group=None) -> torch.Tensor:
    """Balanced soft assignments of N samples to K prototypes: logits `[N, K]` → probabilities `[N, K]`.

    Each row of the result sums to 1; over all ranks each prototype receives about the same total mass.
    The normalisations are kept as a row and a column scaling of `E = exp(t / τ)` (two matrix-vector products
    per iteration instead of rescaling the whole `[N, K]` matrix four times), which is the same sequence of
    normalisations as the released code: `Q = diag(r) · E · diag(c)`."""
    logits = teacher_logits.float()  # [N, K]
    N, K = logits.shape
    peak = logits.max() if logits.numel() else logits.new_tensor(-torch.inf)
    peak = _all_reduce(peak.clone(), dist.ReduceOp.MAX if _distributed() else None, group).clamp_min(-1e30)
    E = logits.sub(peak).div_(temp).exp_()  # [N, K] = exp(t / τ) up to a factor that cancels below
    total_rows = _all_reduce(torch.tensor(float(N), device=E.device), group=group)
    tiny = torch.finfo(E.dtype).tiny
    r = E.new_ones(N)  # [N] row scaling (the released code's initial division by the total cancels out)
    for it in range(n_iterations):
        prototype_mass = _all_reduce(r @ E, group=group)  # [K] Σ_n r_n E_nk over all ranks
        c = 1.0 / (K * prototype_mass.clamp_min_(tiny))  # each prototype gets mass 1/K
        sample_mass = (E @ c).clamp_min_(tiny)  # [N]
        r = 1.0 / (sample_mass if it == n_iterations - 1 else total_rows * sample_mass)  # 1/B each, ×B at the end
    if n_iterations == 0:
        c = 1.0 / _all_reduce(E.sum(), group=group).clamp_min_(tiny) * total_rows
        return E.mul_(c)
    return E.mul_(r.unsqueeze(1)).mul_(c)  # [N, K]


class SoftmaxCentering(nn.Module):
    """Softmax targets with an EMA centre applied one step late (`center` is a buffer, saved in checkpoints)."""

    def __init__(self, dim: int, momentum: float = 0.9, group=None) -> None:
        super().__init__()
        self.momentum = momentum
        self.group = group  # the ranks whose logits the centre averages (None: all)
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def probs(self, teacher_logits: torch.Tensor, temp: float) -> torch.Tensor:
        """`softmax((t − c) / τ)` over the last dimension, in float32: `[N, K]` → `[N, K]`."""
        return F.softmax((teacher_logits.float() - self.center) / temp, dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        """Fold this batch's mean logit (over all ranks) into the centre; it affects the *next* `probs`."""
        total = _all_reduce(teacher_logits.float().sum(dim=0, keepdim=True), group=self.group)  # [1, K]
        count = _all_reduce(torch.tensor(float(teacher_logits.shape[0]), device=total.device), group=self.group)
        updated = self.center * self.momentum + total / count.clamp_min(1.0) * (1 - self.momentum)
        # an empty or non-finite batch (a step the loop will skip) leaves the centre as it was
        self.center.copy_(torch.where(torch.isfinite(total).all() & (count > 0), updated, self.center))

    def forward(self, teacher_logits: torch.Tensor, temp: float) -> torch.Tensor:
        """Targets for this step, then the centre update (the released order)."""
        p = self.probs(teacher_logits, temp)
        self.update(teacher_logits)
        return p


class SinkhornKnopp(nn.Module):
    """`sinkhorn_knopp` as a target module (stateless)."""

    def __init__(self, n_iterations: int = 3, group=None) -> None:
        super().__init__()
        self.n_iterations = n_iterations
        self.group = group  # the ranks whose rows are balanced together (None: all)

    def forward(self, teacher_logits: torch.Tensor, temp: float) -> torch.Tensor:
        return sinkhorn_knopp(teacher_logits, temp, self.n_iterations, self.group)


def build_target(
    kind: str, dim: int, center_momentum: float = 0.9, sinkhorn_iterations: int = 3, group=None
) -> nn.Module:
    """The target module named by the config (`teacher.target`): "centering" | "sinkhorn_knopp"; `group`: the
    process group its sums run over (None: every rank)."""
    table = {
        "centering": lambda: SoftmaxCentering(dim, center_momentum, group),
        "sinkhorn_knopp": lambda: SinkhornKnopp(sinkhorn_iterations, group),
    }
    if kind not in table:
        raise ValueError(f"unknown teacher target {kind!r}; use one of {sorted(table)}")
    return table[kind]()
