"""Open-vocabulary semantic segmentation with dino.txt (no training), scored by mIoU.

The protocol of the release (`notebooks/dinotxt_segmentation_inference.ipynb`: `ShortSideResize`, `encode_image`,
`predict_whole`, `predict_slide`, the text-feature loop and `MulticlassJaccardIndex(average="macro",
ignore_index=255)`):
- class embeddings: every class name in the 80 ImageNet prompt templates (`zeroshot.py`), the patch half
  `[:, E/2:]` of each text embedding L2-normalised, averaged over templates, normalised again → `[C, E/2]`;
- images: shorter side resized to 512 (bicubic; the other side `int(512 · long / short)`), ImageNet-normalised;
- `whole`: the image is stretched (bicubic) to the next multiple of the patch size, its head patch tokens
  (`encode_patches`) L2-normalised, and the cosine similarity to each class is the low-resolution score map;
- `slide` (the release's default): windows of 384 px every 192 px (the last window of a row / column flush with
  the image edge); each window's cosine map is upsampled (bilinear) to the window, soft-maxed over the classes,
  added into the image, and the sums divided by the number of windows covering each pixel;
- the score map is resized (bilinear) to the label map's size and each pixel takes its argmax class;
- mIoU over the dataset's summed confusion matrix, classes with an empty union left out, label 255 ignored
  (ADE20K: `reduce_zero_label` maps "other" 0 → 255 and 1…150 → 0…149, as the release's `IGNORE_ZERO_LABEL`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from .significance import Scores
from .zeroshot import Template, class_embeddings, read_classnames, read_templates

SIZE, SIDE, STRIDE = 512, 384, 192
MODES = ("whole", "slide")


def short_side_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Float `[3, H, W]` → shorter side `size`, the other `int(size · long / short)` (bicubic, antialiased)."""
    from ..data.transforms import resize

    H, W = image.shape[-2:]
    if min(H, W) == size:
        return image
    out = (size, int(size * W / H)) if H <= W else (int(size * H / W), size)
    return resize(image, out, "bicubic")


def predict_whole(model, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Normalised image `[3, H, W]` and unit class vectors `[C, D]` → cosine similarities `[C, h, w]` on the
    patch grid (the image stretched to a multiple of the patch size first)."""
    P = model.visual_model.backbone.patch_size
    H, W = image.shape[-2:]
    x = image[None]
    size = (math.ceil(H / P) * P, math.ceil(W / P) * P)
    if size != (H, W):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    patches = F.normalize(model.encode_patches(x)[0].float(), dim=-1)  # [h, w, D]
    return torch.einsum("cd,hwd->chw", text.float(), patches)


def predict_slide(model, image: torch.Tensor, text: torch.Tensor, side: int = SIDE, stride: int = STRIDE):
    """Sliding-window class "probabilities" `[C, H, W]` at the image's resolution (see the module docstring)."""
    H, W = image.shape[-2:]
    probs = torch.zeros(text.shape[0], H, W, device=image.device)
    counts = torch.zeros(H, W, device=image.device)
    rows = max(H - side + stride - 1, 0) // stride + 1
    cols = max(W - side + stride - 1, 0) // stride + 1
    for i in range(rows):
        for j in range(cols):
            y2, x2 = min(i * stride + side, H), min(j * stride + side, W)
            y1, x1 = max(y2 - side, 0), max(x2 - side, 0)
            cos = predict_whole(model, image[:, y1:y2, x1:x2], text)  # [C, h, w]
            cos = F.interpolate(cos[None], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0]
            probs[:, y1:y2, x1:x2] += cos.softmax(dim=0)
            counts[y1:y2, x1:x2] += 1
    return probs / counts


@torch.no_grad()
def segment(model, image: torch.Tensor, text: torch.Tensor, size: tuple[int, int], mode: str = "slide",
            side: int = SIDE, stride: int = STRIDE) -> torch.Tensor:  # fmt: skip
    """Class scores `[C, *size]` of one normalised image (resized bilinearly to `size`, e.g. the label map's);
    their per-pixel argmax is the segmentation."""
    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    pred = predict_whole(model, image, text) if mode == "whole" else predict_slide(model, image, text, side, stride)
    return F.interpolate(pred[None], size=size, mode="bilinear", align_corners=False)[0]


def find_classes_json(val: str | os.PathLike) -> Path | None:
    """`classes.json` in the image folder or one of its two parents (`seg/classes.json` beside
    `seg/images/validation`, as `dinokit data synth` writes it)."""
    p = Path(val).expanduser().resolve()
    for folder in (p if p.is_dir() else p.parent, *p.parents[:2]):
        if (folder / "classes.json").is_file():
            return folder / "classes.json"
    return None


def openseg_classnames(val, classnames: Sequence[str] | str | os.PathLike | None) -> list[str]:
    if classnames is not None and not isinstance(classnames, str | os.PathLike):
        return list(classnames)
    path = classnames if classnames is not None else find_classes_json(val)
    if path is None:
        raise UserError(f"{val}: no class names: pass --classnames FILE (one name per line, label 0 first) or put "
                        "a classes.json list beside the images")  # fmt: skip
    return read_classnames(path)


def run_openseg(
    model, val: str | os.PathLike, val_labels: str | os.PathLike | None = None,
    classnames: Sequence[str] | str | os.PathLike | None = None,
    templates: Sequence[Template] | str | os.PathLike | None = None, reduce_zero_label: bool = False,
    size: int = SIZE, mode: str = "slide", side: int = SIDE, stride: int = STRIDE, device=None, progress: bool = True,
) -> Scores:  # fmt: skip
    """The protocol on an image folder (ADE20K layout: labels in `annotations/` beside `images/`) or an
    `image label` list: `{"miou": …, "pixel_acc": …}` in percent, `.per_item` per image. Class names: a list, a
    file (`--classnames`) or `classes.json` found near the images; label i is class i."""
    from tqdm.auto import tqdm

    from ..data.images import decode_image
    from ..data.transforms import model_mean_std, normalize, to_float
    from .dense import find_pairs
    from .features import default_device
    from .segmentation import IGNORE, load_labels, miou_score

    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    names = openseg_classnames(val, classnames)
    pairs = find_pairs(val, val_labels, ("images", "annotations"))
    templates = read_templates(templates)
    device = torch.device(device) if device is not None else default_device()
    model = model.eval().to(device)
    text = class_embeddings(model, names, templates, part="patch")  # [C, E/2]
    mean, std = model_mean_std(model.visual_model.backbone)
    C = len(names)

    def results() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for image_path, label_path in tqdm(pairs, desc="open-vocabulary segmentation", unit="img",
                                           disable=not progress, leave=False):  # fmt: skip
            target = load_labels(label_path, reduce_zero_label)
            known = target[target != IGNORE]
            if known.numel() and int(known.max()) >= C:
                hint = " (ADE20K's 1…150? add --reduce-zero-label)" if int(known.max()) == C else ""
                raise UserError(f"{label_path}: label {int(known.max())} but {C} class names{hint}")
            x = normalize(short_side_resize(to_float(decode_image(image_path)), size), mean, std).to(device)
            yield segment(model, x, text, tuple(target.shape), mode, side, stride).cpu(), target

    return miou_score(results(), C)
