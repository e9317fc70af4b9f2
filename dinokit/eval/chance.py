"""Chance levels: what a prediction that never looks at the image scores on a protocol's validation data, with
the protocol's own metric. A table that shows them beside a model's scores tells "learned something" from "no
better than guessing", which a comparison of two models alone does not (two models can tie at the floor).

Each protocol's guess uses the training data but no image; it is a simple guess, not the best one for every
metric (for depth, other constants score better on some of the three):
- classification (k-NN, linear, logreg): the most frequent training class for every image;
- segmentation: the most frequent training class for every pixel;
- depth: one constant for every pixel, the median of the training depths in range;
- correspondence: a uniformly random pixel of image B for each keypoint, whose recall@t is exactly the share of
  B's pixel centres within t of the true position (computed, not sampled).
These are not from the papers, which report no chance levels for these protocols.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from ..data.datasets import ImageList
from ..errors import UserError
from .correspondence import load_pairs_json
from .depth import MAX_DEPTH, MIN_DEPTH, depth_task
from .metrics import confusion_matrix, depth_errors, mean_iou, mean_of
from .segmentation import IGNORE, load_labels


def classification_chance(train, val) -> float:
    """Top-1 % on `val` of always answering the most frequent class of `train` (class folders or lists)."""
    train_list, val_list = ImageList.from_source(train), ImageList.from_source(val)
    if train_list.labels is None or val_list.labels is None:
        raise UserError(f"{train} and {val} must both carry class labels (class sub-folders or path,label lists)")
    majority = train_list.classes[Counter(train_list.labels).most_common(1)[0][0]]
    val_names = [val_list.classes[i] for i in val_list.labels]
    return 100.0 * val_names.count(majority) / len(val_names)


def segmentation_chance(train_pairs, val_pairs, num_classes: int, reduce_zero_label: bool = False) -> float:
    """mIoU % on the validation label maps of labelling every pixel with the most frequent training class."""
    counts = torch.zeros(num_classes, dtype=torch.long)
    for _, path in train_pairs:
        labels = load_labels(path, reduce_zero_label)
        counts += torch.bincount(labels[labels != IGNORE].flatten(), minlength=num_classes)[:num_classes]
    majority = int(counts.argmax())
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for _, path in val_pairs:
        labels = load_labels(path, reduce_zero_label)
        conf += confusion_matrix(torch.full_like(labels, majority), labels, num_classes, IGNORE)
    return mean_iou(conf)


def depth_chance(
    train_pairs, val_pairs, min_depth: float = MIN_DEPTH, max_depth: float = MAX_DEPTH, depth_scale: float = 1000.0
):
    """RMSE, AbsRel and δ1 on the validation depths of predicting the median training depth everywhere."""
    task = depth_task(min_depth, max_depth, depth_scale=depth_scale)

    def in_range(path):
        depth = task.load_target(path)  # [H, W] metres
        return depth, (depth > min_depth) & (depth <= max_depth)

    train_depths = torch.cat([d[v] for d, v in map(in_range, (p for _, p in train_pairs))])
    constant = train_depths.median()
    per_image = []
    for _, path in val_pairs:
        depth, valid = in_range(path)
        if valid.any():
            per_image.append(depth_errors(torch.full_like(depth, constant), depth, valid))
    return mean_of(per_image)


def correspondence_chance(pairs_json: str | Path, thresholds: Sequence[float]) -> dict[str, float]:
    """recall@t % of matching each keypoint to a uniformly random pixel of image B (pixel centres at +0.5)."""
    hits = {t: 0.0 for t in thresholds}
    keypoints = 0
    for pair in load_pairs_json(pairs_json):
        with Image.open(pair["b"]) as image:
            width, height = image.size  # the header only: no decoding
        for x, y in pair["kp_b"].tolist():
            keypoints += 1
            for t in thresholds:
                hits[t] += _pixels_within(x, y, t, width, height) / (width * height)
    return {f"recall@{t:g}": 100.0 * hits[t] / keypoints for t in thresholds}


def _pixels_within(x: float, y: float, radius: float, width: int, height: int) -> int:
    """How many pixel centres (i + 0.5, j + 0.5) of a width × height image lie within `radius` of (x, y)."""
    count = 0
    for row in range(max(0, math.floor(y - radius - 0.5)), min(height, math.ceil(y + radius + 0.5))):
        dy = row + 0.5 - y
        if dy * dy > radius * radius:
            continue
        half = math.sqrt(radius * radius - dy * dy)  # the centres x + 0.5 ∈ [x − half, x + half]
        first, last = max(0, math.ceil(x - half - 0.5)), min(width - 1, math.floor(x + half - 0.5))
        count += max(0, last - first + 1)
    return count
