"""Frozen global features for the image-level protocols (k-NN, linear probe, logistic regression, retrieval).

One batched pass over a folder (or file list) with a progress bar stores, per image, the final-normed CLS
token of each of the last `n` blocks and the mean of the last block's normed patch tokens: every feature
variant the linear probe compares (DINOv2 §7: last-1 / last-4 CLS, with or without the average patch token)
is then a slice of this cache, and k-NN uses the last CLS.

Preprocessing follows the k-NN / linear protocols of the papers: resize the shorter side to `size·256/224`
(bicubic, antialiased), centre-crop `size` (rounded to a multiple of the patch size, at least one patch: a size
below one patch is raised to it, with a warning), ImageNet mean/std (or the model's own, e.g. the satellite
models').

ConvNeXt backbones: "blocks" are the four stages `get_intermediate_layers` counts, but only the last stage has
the final norm and the embedding width; the earlier stages' pooled maps are narrower (`dims[i]`) and un-normed,
so "CLS of the last n blocks" does not carry over. For a ConvNeXt the cache holds the last stage only (n = 1:
the normed average pool, i.e. `forward`'s output, and the mean of the normed last-stage tokens), and the linear
probe's last-4 variants fall back to last-1 as for a one-block model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.datasets import ImageDataset, ImageList, collate_skip_none
from ..data.transforms import EvalTransform, model_mean_std, round_to_patch
from ..errors import UserError

log = logging.getLogger("dinokit.eval")


@dataclass
class GlobalFeatures:
    """Cached features of N images. Unreadable images are left out (their paths are in `skipped`)."""

    cls: torch.Tensor  # [N, n, D] final-normed CLS of the last n blocks, the last block last
    patch_mean: torch.Tensor  # [N, D] mean of the last block's final-normed patch tokens
    labels: torch.Tensor  # [N] class index, -1 for unlabelled images
    paths: list[str]
    classes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.cls.shape[0]

    @property
    def last_cls(self) -> torch.Tensor:
        return self.cls[:, -1]  # [N, D]

    def variant(self, n_blocks: int, avgpool: bool) -> torch.Tensor:
        """The linear probe's input: CLS of the last `n_blocks` blocks, concatenated (and the average patch
        token appended when `avgpool`) → `[N, n_blocks·D (+ D)]`."""
        if not 1 <= n_blocks <= self.cls.shape[1]:
            raise ValueError(f"features hold the last {self.cls.shape[1]} blocks; asked for {n_blocks}")
        parts = [self.cls[:, -n_blocks:].flatten(1)] + ([self.patch_mean] if avgpool else [])
        return torch.cat(parts, dim=1).float()

    def subset(self, index: torch.Tensor) -> GlobalFeatures:
        keep = index.tolist()
        return GlobalFeatures(
            self.cls[index], self.patch_mean[index], self.labels[index], [self.paths[i] for i in keep], self.classes
        )


def model_size(model, size: int, what: str = "--size") -> int:
    """`size` rounded to the model's patch size (its output stride for a ConvNeXt), at least one patch; a size
    below one patch is raised to it with a warning, since the evaluation then runs at another size than asked."""
    p = model.patch_size
    if size < p:
        log.warning("%s %d px is smaller than one %d-px patch of this backbone; using %d px", what, size, p, p)
    return round_to_patch(size, p)


def global_depth(model, n_last_blocks: int) -> int:
    """How many of the last blocks' CLS tokens to cache: at most the model's depth, and 1 for a ConvNeXt (whose
    earlier stages have other widths and no norm; see the module docstring)."""
    if getattr(model.config, "kind", "vit") == "convnext":
        return 1
    return min(n_last_blocks, model.n_blocks)


def global_transform(model, size: int = 224) -> EvalTransform:
    """Resize the shorter side to size·256/224 (bicubic), centre-crop `size` rounded to the patch size."""
    crop = model_size(model, size)
    mean, std = model_mean_std(model)
    return EvalTransform(resize=round(crop * 256 / 224), crop=crop, mean=mean, std=std, mode="bicubic")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def extract_global_features(
    model,
    source: str | os.PathLike | ImageList,
    size: int = 224,
    n_last_blocks: int = 4,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    desc: str = "features",
    progress: bool = True,
) -> GlobalFeatures:
    """Features of every image of a folder (class sub-folders give labels), `.txt`/`.csv` list or `ImageList`.

    `n_last_blocks` is capped at the model's depth (1 for a ConvNeXt, see the module docstring). The model is used
    as given (eval mode, moved to `device`)."""
    images = source if isinstance(source, ImageList) else ImageList.from_source(source)
    device = torch.device(device) if device is not None else default_device()
    model = model.eval().to(device)
    n = global_depth(model, n_last_blocks)
    dataset = ImageDataset(images, global_transform(model, size))
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip_none, pin_memory=False
    )
    cls_parts, mean_parts, label_parts, index_parts = [], [], [], []
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        if batch is None:  # every image of the batch was unreadable
            continue
        x, labels, index = batch
        with torch.inference_mode():
            layers = model.get_intermediate_layers(x.to(device), n=n, return_class_token=True, norm=True)
        # clones are ordinary tensors, which the probes may use in autograd
        cls_parts.append(torch.stack([c for _, c in layers], dim=1).float().cpu().clone())  # [B, n, D]
        mean_parts.append(layers[-1][0].mean(dim=1).float().cpu().clone())  # [B, D]
        label_parts.append(labels)
        index_parts.append(index)
    name = images.source  # not `source`, which may be an ImageList, whose repr names every path
    if not cls_parts:
        raise UserError(f"{name}: none of the {len(images)} images could be read")
    kept = torch.cat(index_parts).tolist()
    # counted here, not from `dataset.skipped`: with loader workers each worker holds its own copy of that list
    skipped = sorted(set(range(len(images))) - set(kept))
    if skipped:
        log.warning("%s: %d of %d images unreadable and left out (e.g. %s)", name, len(skipped), len(images),
                    images.paths[skipped[0]])  # fmt: skip
    return GlobalFeatures(
        cls=torch.cat(cls_parts),
        patch_mean=torch.cat(mean_parts),
        labels=torch.cat(label_parts).long(),
        paths=[str(images.paths[i]) for i in kept],
        classes=list(images.classes),
        skipped=[str(images.paths[i]) for i in skipped],
    )


NEED_LABELS = ("the {role} images need class labels: give a folder with one sub-folder per class (ImageNet "
               "style) or a .txt/.csv list of `path,label` lines")  # fmt: skip


def require_labels(features: GlobalFeatures, role: str) -> None:
    """Image-level protocols need class labels: a folder of class sub-folders or a list with a label column."""
    if len(features) == 0 or bool((features.labels < 0).any()):
        raise UserError(NEED_LABELS.format(role=role))


def labelled_sets(train, val) -> tuple[ImageList, ImageList]:
    """The two labelled image sets of a classification protocol (folders, lists or `ImageList`s), checked
    before any feature is extracted: both carry labels, and `val`'s labels index `train`'s classes
    (`class_index`)."""
    train, val = (s if isinstance(s, ImageList) else ImageList.from_source(s) for s in (train, val))
    for images, role in ((train, "training"), (val, "validation")):
        if images.labels is None:
            raise UserError(NEED_LABELS.format(role=role))
    if train.classes != val.classes:
        mapping = class_index(train.classes, val.classes)
        val = ImageList(val.paths, [mapping[label] for label in val.labels], list(train.classes), val.source)
    return train, val


def align_classes(train: GlobalFeatures, val: GlobalFeatures) -> GlobalFeatures:
    """Re-index `val` labels to `train`'s class names (the two folders may hold different class subsets)."""
    if train.classes == val.classes or not train.classes or not val.classes:
        return val
    mapping = torch.tensor(class_index(train.classes, val.classes))
    return GlobalFeatures(val.cls, val.patch_mean, mapping[val.labels], val.paths, train.classes, val.skipped)


def class_index(train_classes: list[str], val_classes: list[str]) -> list[int]:
    """Each validation class's index among the training classes; every one must be a training class.

    Numeric validation labels against named training classes are read as indices into the sorted class
    names, the convention of ImageNet's `val.txt` (`ILSVRC2012_val_00000001.JPEG 65`) beside its synset
    folders; a warning says so."""
    index = {c: i for i, c in enumerate(train_classes)}
    unknown = sorted(set(val_classes) - set(index))
    if not unknown:
        return [index[c] for c in val_classes]
    numeric = all(c.isdigit() for c in val_classes) and not any(c.isdigit() for c in train_classes)
    if numeric and max(int(c) for c in val_classes) < len(train_classes):
        first = ", ".join(f"{c} = {i}" for i, c in enumerate(train_classes[:2]))
        log.warning("the validation labels are numbers and the training classes names: label i is read as the "
                    "i-th training class in sorted order (%s, …)", first)  # fmt: skip
        return [int(c) for c in val_classes]
    raise UserError(f"validation classes missing from the training set: {', '.join(unknown[:10])}")
