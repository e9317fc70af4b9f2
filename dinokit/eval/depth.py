"""Dense linear monocular depth on frozen patch features (DINOv2 §7 / DINOv3 §6; NYU-Depth v2 protocol).

The head (BatchNorm + 1×1 conv, `dense.py`) classifies each patch into 256 depth bins spaced linearly in
[min_depth, max_depth]; the prediction is the softmax-weighted mean of the bin centres, upsampled bilinearly to
the pixels. Loss: the scale-invariant log loss of Eigen et al. over valid pixels (0 < depth),

    L = sqrt( mean(g²) − λ·mean(g)² ),   g = log(pred) − log(gt),   λ = 0.85

(= sqrt(var(g) + 0.15·mean(g)²) with the population variance). Scores, over pixels with
min_depth < gt ≤ max_depth (and inside the Eigen crop for 480×640 NYU images when asked), per image then
averaged: RMSE (metres), AbsRel, δ<1.25 (percent).

Targets are 16-bit PNGs in millimetres (0 = no measurement), the NYU / KITTI convention; `depth_scale` changes
the unit. Deviation from the released head: softmax over the bins where the released code normalises ReLU
outputs linearly; the bins are the same.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .dense import DenseTask, dense_probe, find_pairs, read_array
from .metrics import depth_errors, mean_of
from .significance import Scores, mean_over_items

MIN_DEPTH, MAX_DEPTH = 1e-3, 10.0  # metres: the NYU range of the depth literature
EIGEN_CROP = (45, 471, 41, 601)  # top, bottom, left, right of the standard NYU evaluation crop (480×640)


def silog_loss(pred: torch.Tensor, target: torch.Tensor, lam: float = 0.85, eps: float = 1e-6) -> torch.Tensor:
    """Scale-invariant log loss over pixels with target > 0: `sqrt(mean(g²) − λ·mean(g)²)`."""
    valid = target > 0
    if not valid.any():  # a batch of crops without a measurement (sparse LiDAR depth): nothing to learn from
        return pred.sum() * 0.0
    g = torch.log(pred[valid].clamp_min(eps)) - torch.log(target[valid])
    return torch.sqrt((g.pow(2).mean() - lam * g.mean().pow(2)).clamp_min(eps))


def depth_task(min_depth: float, max_depth: float, bins: int = 256, depth_scale: float = 1000.0) -> DenseTask:
    centres = torch.linspace(min_depth, max_depth, bins)

    def to_depth(logits, size):  # [B, bins, h, w] → [B, 1, H, W] metres
        depth = torch.einsum("bkhw,k->bhw", logits.softmax(dim=1), centres.to(logits.device))[:, None]
        return F.interpolate(depth, size=size, mode="bilinear", align_corners=False)

    def load_target(path):
        depth = read_array(path)
        if depth.dtype == np.uint8:  # a picture of depth, not a measurement: 256 levels cannot hold millimetres
            raise UserError(f"{path}: an 8-bit image; depth targets are 16-bit PNGs in millimetres (or float TIFFs)")
        return torch.from_numpy(depth.astype("float32")) / depth_scale  # [H, W] metres

    return DenseTask(
        load_target=load_target,
        pad_value=0.0,
        out_channels=bins,
        loss=lambda pred, target: silog_loss(pred[:, 0], target),
        to_output=to_depth,
    )


def depth_score(results, min_depth: float, max_depth: float, eigen_crop: bool = False) -> Scores:
    """RMSE, AbsRel and δ<1.25 per validation image with valid pixels, averaged over those images; `.per_item`
    holds the per-image values."""
    per_image = []
    for pred, gt in results:
        valid = (gt > min_depth) & (gt <= max_depth)
        if eigen_crop:
            crop = torch.zeros_like(valid)
            top, bottom, left, right = EIGEN_CROP
            crop[top:bottom, left:right] = True
            valid &= crop
        if valid.any():
            per_image.append(depth_errors(pred[0].clamp(min_depth, max_depth), gt, valid))
    if not per_image:
        raise UserError(f"no validation image has depth in ({min_depth:g}, {max_depth:g}] m; check --depth-scale "
                        "(PNG units per metre) and --min-depth/--max-depth")  # fmt: skip
    items = {k: mean_over_items(torch.tensor([d[k] for d in per_image])) for k in per_image[0]}
    return Scores(mean_of(per_image), items)


def run_depth(
    model,
    train,
    val,
    train_depth=None,
    val_depth=None,
    min_depth: float = MIN_DEPTH,
    max_depth: float = MAX_DEPTH,
    depth_scale: float = 1000.0,
    eigen_crop: bool = False,
    size: int = 480,
    crop: int = 480,
    iterations: int = 40000,
    **kwargs,
) -> dict[str, float]:
    """The protocol from RGB folders (or `rgb depth` lists): `{"rmse", "abs_rel", "delta1"}`.

    Depth folders default to the RGB folder with `rgb` replaced by `depth`."""
    if not 0 <= min_depth < max_depth:
        raise UserError(f"min depth {min_depth:g} and max depth {max_depth:g} (--min-depth, --max-depth): "
                        "need 0 ≤ min < max")  # fmt: skip
    swap = ("rgb", "depth")
    train_pairs, val_pairs = find_pairs(train, train_depth, swap), find_pairs(val, val_depth, swap)
    task = depth_task(min_depth, max_depth, depth_scale=depth_scale)
    score = lambda results: depth_score(results, min_depth, max_depth, eigen_crop)
    return dense_probe(model, train_pairs, val_pairs, task, score, size, crop, iterations, name="depth", **kwargs)
