"""Dense linear semantic segmentation on frozen patch features (DINOv3 §6; ADE20K protocol), scored by mIoU.

Targets are label maps (PNG, mode L or P) of class indices; 255 is ignored in training and scoring. ADE20K's
release stores "other" as 0 and its 150 classes as 1…150: `reduce_zero_label` maps 0 → 255 and shifts the rest
down by one, as mmsegmentation does. The number of classes defaults to the largest label of the training maps
plus one. The probe itself (cached crops, BatchNorm + 1×1 conv head, sliding windows) is in `dense.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from .dense import DenseTask, dense_probe, find_pairs, read_array
from .metrics import confusion_matrix, mean_iou, mean_iou_of
from .significance import ItemStats, Scores

IGNORE = 255


def load_labels(path, reduce_zero_label: bool = False) -> torch.Tensor:
    labels = torch.from_numpy(read_array(path).astype("int64"))  # [H, W]
    if reduce_zero_label:
        labels = torch.where(labels == 0, IGNORE, labels - 1)
        labels[labels == IGNORE - 1] = IGNORE
    return labels


def segmentation_task(num_classes: int, reduce_zero_label: bool = False) -> DenseTask:
    def upsample(logits, size):
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)  # [B, C, H, W]

    def load_target(path):
        labels = load_labels(path, reduce_zero_label)
        known = labels[labels != IGNORE]
        if known.numel() and int(known.max()) >= num_classes:
            hint = " (ADE20K's 1…150? add --reduce-zero-label)" if int(known.max()) == num_classes else ""
            raise UserError(f"{path}: label {int(known.max())} but {num_classes} classes (0…{num_classes - 1}, "
                            f"{IGNORE} ignored){hint}")  # fmt: skip
        return labels

    return DenseTask(
        load_target=load_target,
        pad_value=IGNORE,
        out_channels=num_classes,
        loss=lambda logits, target: F.cross_entropy(logits, target.long(), ignore_index=IGNORE),
        to_output=upsample,
    )


def count_classes(pairs, reduce_zero_label: bool = False) -> int:
    """The largest label of the training maps (255 aside) plus one."""
    top = -1
    for _, path in pairs:
        labels = load_labels(path, reduce_zero_label)
        labels = labels[labels != IGNORE]
        top = max(top, int(labels.max()) if labels.numel() else -1)
    if top < 0:
        raise UserError("the training label maps hold no labelled pixel")
    return top + 1


def miou_score(results, num_classes: int) -> Scores:
    """mIoU and pixel accuracy over the validation images; `.per_item` holds each image's confusion matrix."""
    confs = torch.stack([confusion_matrix(out.argmax(0), target, num_classes, IGNORE) for out, target in results])
    conf = confs.sum(0)  # [C, C]

    def pixel_acc(summed):  # [..., C·C] → [...]
        summed = summed.unflatten(-1, (num_classes, num_classes))
        return 100.0 * summed.diagonal(dim1=-2, dim2=-1).sum(-1) / summed.sum((-2, -1)).clamp_min(1)

    per_image = confs.flatten(1)  # [n_images, C·C], integer counts (150 classes × 2000 images ≈ 360 MB)
    items = {
        "miou": ItemStats(per_image, lambda s: mean_iou_of(s.unflatten(-1, (num_classes, num_classes)))),
        "pixel_acc": ItemStats(per_image, pixel_acc),
    }
    metrics = {"miou": mean_iou(conf), "pixel_acc": pixel_acc(conf.flatten()).item()}
    return Scores(metrics, items)


def run_segmentation(
    model,
    train,
    val,
    train_labels=None,
    val_labels=None,
    num_classes: int | None = None,
    reduce_zero_label: bool = False,
    size: int = 512,
    crop: int = 512,
    iterations: int = 40000,
    **kwargs,
) -> dict[str, float]:
    """The protocol from image folders (or `image label` lists): `{"miou": …, "pixel_acc": …}` in percent.

    Label folders default to the image folder with `images` replaced by `annotations` (ADE20K layout)."""
    swap = ("images", "annotations")
    train_pairs, val_pairs = find_pairs(train, train_labels, swap), find_pairs(val, val_labels, swap)
    num_classes = num_classes or count_classes(train_pairs, reduce_zero_label)
    task = segmentation_task(num_classes, reduce_zero_label)
    score = lambda results: miou_score(results, num_classes)
    return dense_probe(model, train_pairs, val_pairs, task, score, size, crop, iterations, name="seg", **kwargs)
