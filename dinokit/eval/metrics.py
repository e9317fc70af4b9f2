"""The numbers every protocol reports, as small pure functions (each tested against hand-computed cases).

- top-1 accuracy (percent);
- semantic segmentation: a confusion matrix that skips the ignore label (255), and mIoU as the mean over the
  classes that occur in the prediction or the ground truth (classes with an empty union are left out, as
  mmsegmentation does);
- depth: RMSE, AbsRel and δ<1.25 over valid pixels, computed per image and averaged over images (the NYU
  convention of the monocular-depth literature);
- retrieval: average precision of the Oxford/Paris benchmarks (positives ranked after junk images are removed,
  trapezoidal interpolation between recall steps), and its mean over queries;
- correspondence: recall at pixel thresholds (percentage of keypoints matched within `t` pixels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def top1_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of `predictions [N]` equal to `labels [N]`."""
    if labels.numel() == 0:
        raise ValueError("no samples to score")
    return 100.0 * (predictions == labels).double().mean().item()


# ------------------------------------------------------------------------------------------ segmentation
def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255):
    """`conf[t, p]` = number of pixels of true class t predicted as p; pixels labelled `ignore_index` (or any
    label outside [0, num_classes)) are skipped."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    idx = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_iou(conf: torch.Tensor) -> float:
    """mIoU in percent: mean over classes with a non-empty union of `TP / (TP + FP + FN)`."""
    if not (conf.sum(0) + conf.sum(1) > 0).any():
        raise ValueError("no labelled pixels to score")
    return mean_iou_of(conf).item()


def mean_iou_of(conf: torch.Tensor) -> torch.Tensor:
    """`mean_iou` of a stack of confusion matrices `[..., C, C]` → `[...]` (percent; 0 where nothing is
    labelled)."""
    conf = conf.double()
    tp = conf.diagonal(dim1=-2, dim2=-1)  # [..., C]
    union = conf.sum(-2) + conf.sum(-1) - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp_min(1e-12), torch.zeros_like(tp))
    return 100.0 * iou.sum(-1) / present.sum(-1).clamp_min(1)


# ----------------------------------------------------------------------------------------------- depth
def depth_errors(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """One image's RMSE (metres), AbsRel `mean |p − g| / g` and δ1 (percent of pixels with
    `max(p/g, g/p) < 1.25`) over the `valid` pixels."""
    p, g = pred[valid].double(), gt[valid].double()
    if g.numel() == 0:
        raise ValueError("no valid depth pixels")
    ratio = torch.maximum(p / g, g / p)
    return {
        "rmse": (p - g).pow(2).mean().sqrt().item(),
        "abs_rel": ((p - g).abs() / g).mean().item(),
        "delta1": 100.0 * (ratio < 1.25).double().mean().item(),
    }


def mean_of(per_image: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average a list of per-image metric dicts key by key."""
    if not per_image:
        raise ValueError("nothing to average")
    return {k: sum(d[k] for d in per_image) / len(per_image) for k in per_image[0]}


# ------------------------------------------------------------------------------------------- retrieval
def average_precision(ranking: Sequence[int], positives: set[int], junk: set[int] = frozenset()) -> float:
    """Average precision of one query (Oxford/Paris convention).

    `ranking`: gallery indices, best first. Junk images are removed from the ranking; with `r_j` the 0-based
    rank of the j-th positive (j = 0, 1, …) among the rest and n = |positives|,
    `AP = Σ_j (P_j⁻ + P_j⁺) / (2n)` with `P_j⁻ = j / r_j` (1 when r_j = 0) and `P_j⁺ = (j + 1) / (r_j + 1)`:
    the trapezoid between the precisions just before and at each recall step."""
    if not positives:
        raise ValueError("a query needs at least one positive")
    ranks = [r for r, i in enumerate(i for i in ranking if i not in junk) if i in positives]
    ap = 0.0
    for j, r in enumerate(ranks):
        before = 1.0 if r == 0 else j / r
        ap += (before + (j + 1) / (r + 1)) / (2 * len(positives))
    return ap


# -------------------------------------------------------------------------------------- correspondence
def recall_at(errors: torch.Tensor, thresholds: Sequence[float]) -> dict[str, float]:
    """`recall@t`: percentage of `errors` (pixel distances) within each threshold, `error <= t`."""
    if errors.numel() == 0:
        raise ValueError("no keypoints to score")
    return {f"recall@{t:g}": 100.0 * (errors <= t).double().mean().item() for t in thresholds}
