"""What the two dense linear probes (segmentation, depth) share: paired image/target files, cached crop features,
the linear head, its training loop and sliding-window inference.

Protocol (DINOv3 §6 "dense linear probing"; DINOv2 §7): the backbone is frozen; its last-layer patch tokens
after the final norm feed BatchNorm → dropout 0.1 → a 1×1 convolution; the output is upsampled bilinearly to
the pixels. Training images are resized (shorter side `size`), randomly cropped (`crop`, padded with the
ignore value when smaller) and flipped; the head is trained with AdamW (lr 1e-3, weight decay 1e-4, cosine
decay to zero, batch 16). Evaluation slides `crop`-sized windows with stride 2/3·crop over the resized image,
averages the overlapping outputs and resizes them to the target's own resolution.

Deviation from the released protocol: the backbone features of `crops_per_image` random crops per training
image are computed once and cached (float16), so the head trains in seconds; the released recipe draws a new
augmented crop at every iteration. Memory: N·crops_per_image·D·(crop/patch)² half floats, e.g. ADE20K (20 k
images) at 512 px with ViT-S/16: 15 GB; lower `size`/`crop` or `max_images` to fit.

ConvNeXt backbones take part unchanged: their last-stage tokens after the final norm are the patch map, at stride
32 (`patch_size`), so a crop is rounded to a multiple of 32 px (at least 32) and the map is coarser than a /16
ViT's at the same crop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..data.images import IMAGE_EXTENSIONS, decode_image
from ..data.transforms import model_mean_std, normalize, resize, round_to_patch, to_float
from ..errors import UserError
from .features import default_device, model_size


# ------------------------------------------------------------------------------------------------ data
def find_pairs(
    images: str | os.PathLike, targets: str | os.PathLike | None, swap: tuple[str, str]
) -> list[tuple[Path, Path]]:
    """(image, target) file pairs.

    `images` is a folder, or a `.txt` list of `image target [anything…]` lines (paths absolute or relative to the
    list's folder, e.g. the NYU split files of the depth literature). With a folder, targets are the files of the same
    stem in `targets`, which defaults to the image folder's path with its last component `swap[0]` replaced by
    `swap[1]` (ADE20K: images/training → annotations/training; NYU style: train/rgb → train/depth)."""
    src = Path(images)
    if src.is_file():
        rows = [line.split() for line in src.read_text().splitlines() if line.strip() and not line.startswith("#")]
        if not rows or any(len(r) < 2 for r in rows):
            raise UserError(f"{src}: expected lines of `image target` paths")
        return [(_listed(src, r[0]), _listed(src, r[1])) for r in rows]
    if not src.is_dir():
        raise UserError(f"{src}: no such folder or list file")
    if targets is None:
        parts = list(src.parts)
        if swap[0] not in parts:
            raise UserError(f"{src}: cannot find the target folder (no `{swap[0]}` in the path); give it explicitly")
        i = len(parts) - 1 - parts[::-1].index(swap[0])
        targets = Path(*parts[:i], swap[1], *parts[i + 1 :])
    tdir = Path(targets)
    if not tdir.is_dir():
        raise UserError(f"{tdir}: target folder not found")
    by_stem = {p.stem: p for p in tdir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    pairs, missing = [], []
    for p in sorted(q for q in src.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS):
        (pairs.append((p, by_stem[p.stem])) if p.stem in by_stem else missing.append(p.name))
    if missing:
        raise UserError(f"{len(missing)} images in {src} have no target in {tdir} (e.g. {missing[0]})")
    if not pairs:
        raise UserError(f"{src}: no images found")
    return pairs


def _listed(listing: Path, entry: str) -> Path:
    """A path from a list file: absolute if it exists as such, else relative to the list's folder (the NYU split
    files write data-root-relative paths with a leading slash)."""
    path = Path(entry)
    return path if path.is_absolute() and path.exists() else listing.parent / entry.lstrip("/")


def read_array(path: Path) -> np.ndarray:
    """A label map or depth PNG as stored (uint8 class indices, palette indices, uint16 millimetres)."""
    try:
        with Image.open(path) as img:
            if img.mode in ("RGB", "RGBA"):
                raise UserError(f"{path}: colour-coded maps are not supported; store class indices (mode L or P)")
            return np.array(img)
    except OSError as e:
        raise UserError(f"{path}: unreadable target ({e})") from None


@dataclass
class DenseTask:
    """How one dense task reads, pads and scores its targets."""

    load_target: Callable[[Path], torch.Tensor]  # → [H, W] (long labels or float metres)
    pad_value: float  # target value of padding (ignored by the loss and the metric)
    out_channels: int
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (head output at target size, target) → scalar
    to_output: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]  # head logits → output [B, C, size]


def load_pair(image_path: Path, target_path: Path, task: DenseTask) -> tuple[torch.Tensor, torch.Tensor]:
    """An image `[3, H, W]` and its target `[h, w]`. The target may be stored at another resolution (it is
    resized), but not with another shape: that is a mis-paired file."""
    image, target = decode_image(image_path), task.load_target(target_path)
    (H, W), (h, w) = image.shape[-2:], target.shape[-2:]
    if abs((W / H) / (w / h) - 1) > 0.02:  # 2 %: rounding of a half-resolution map stays well inside
        raise UserError(f"{target_path} is {w}×{h} pixels but its image {image_path} is {W}×{H}: another shape, "
                        "so probably not its target")  # fmt: skip
    return image, target


def resize_pair(image: torch.Tensor, target: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shorter side → `size`: the image bilinearly (antialiased), the target by nearest neighbour."""
    image = resize(to_float(image), size, mode="bilinear")
    target = F.interpolate(target[None, None].float(), size=image.shape[-2:], mode="nearest")[0, 0]
    return image, target


def random_crop(image, target, crop: int, pad_value: float, g: torch.Generator):
    """A random `crop × crop` window (padding with zeros / `pad_value` first when smaller), flipped with p 0.5."""
    H, W = image.shape[-2:]
    ph, pw = max(crop - H, 0), max(crop - W, 0)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph))
        target = F.pad(target, (0, pw, 0, ph), value=pad_value)
    H, W = image.shape[-2:]
    top = int(torch.randint(H - crop + 1, (1,), generator=g))
    left = int(torch.randint(W - crop + 1, (1,), generator=g))
    image, target = image[:, top : top + crop, left : left + crop], target[top : top + crop, left : left + crop]
    if torch.rand((), generator=g) < 0.5:
        image, target = image.flip(-1), target.flip(-1)
    return image, target


@torch.inference_mode()
def patch_features(model, x: torch.Tensor) -> torch.Tensor:
    """Final-normed last-layer patch tokens as a map `[B, D, h, w]`."""
    return model.forward_features(x).patch_map()


def cache_crops(
    model, pairs, task: DenseTask, size: int, crop: int, crops_per_image: int, batch_size: int, device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features `[N, D, h, w]` (float16) and targets `[N, crop, crop]` of random training crops."""
    mean, std = model_mean_std(model)
    g = torch.Generator().manual_seed(seed)
    feats, targets, batch = [], [], []

    def flush():
        x = torch.stack([normalize(b[0], mean, std) for b in batch]).to(device)
        feats.append(patch_features(model, x).half().cpu().clone())  # clone: an ordinary tensor for training
        targets.append(torch.stack([b[1] for b in batch]))
        batch.clear()

    for image_path, target_path in tqdm(pairs, desc="dense train features", unit="img", leave=False):
        image, target = resize_pair(*load_pair(image_path, target_path, task), size)
        for _ in range(crops_per_image):
            batch.append(random_crop(image, target, crop, task.pad_value, g))
            if len(batch) == batch_size:
                flush()
    if batch:
        flush()
    return torch.cat(feats), torch.cat(targets)


# ------------------------------------------------------------------------------------------------ head
class LinearHead(nn.Module):
    """BatchNorm → dropout → 1×1 convolution over a patch-feature map `[B, D, h, w]` → `[B, C, h, w]`."""

    def __init__(self, dim: int, out_channels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(dim)
        self.dropout = nn.Dropout2d(dropout)
        self.conv = nn.Conv2d(dim, out_channels, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.conv(self.dropout(self.bn(feats)))


def train_head(
    feats: torch.Tensor,
    targets: torch.Tensor,
    task: DenseTask,
    iterations: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    desc: str = "dense head",
) -> LinearHead:
    """AdamW with cosine decay on the cached crops; random batches."""
    torch.manual_seed(seed)
    head = LinearHead(feats.shape[1], task.out_channels)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iterations, eta_min=0)
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(range(iterations), desc=desc, unit="it", leave=False)
    for it in bar:
        idx = torch.randint(len(feats), (min(batch_size, len(feats)),), generator=g)
        out = task.to_output(head(feats[idx].float()), targets.shape[-2:])
        loss = task.loss(out, targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if it % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return head.eval()


@torch.inference_mode()
def sliding_window(
    model, head: LinearHead, image: torch.Tensor, crop: int, stride: int, to_output: Callable, device
) -> torch.Tensor:
    """The task's output `[C, H, W]` over a normalised image `[3, H, W]`, averaged over overlapping windows
    (an image smaller than a window is padded, and the padding cropped off again)."""
    H, W = image.shape[-2:]
    x = F.pad(image, (0, max(crop - W, 0), 0, max(crop - H, 0))).to(device)
    Hp, Wp = x.shape[-2:]
    ys = sorted({min(i * stride, Hp - crop) for i in range(-(-(Hp - crop) // stride) + 1)})
    xs = sorted({min(j * stride, Wp - crop) for j in range(-(-(Wp - crop) // stride) + 1)})
    total, counts = None, torch.zeros(1, Hp, Wp, device=device)
    for y in ys:
        for x0 in xs:
            out = to_output(head(patch_features(model, x[None, :, y : y + crop, x0 : x0 + crop])), (crop, crop))[0]
            if total is None:
                total = torch.zeros(out.shape[0], Hp, Wp, device=device)
            total[:, y : y + crop, x0 : x0 + crop] += out
            counts[:, y : y + crop, x0 : x0 + crop] += 1
    return (total / counts)[:, :H, :W].cpu()


def dense_probe(
    model,
    train_pairs,
    val_pairs,
    task: DenseTask,
    score: Callable,
    size: int,
    crop: int,
    iterations: int,
    crops_per_image: int = 1,
    batch_size: int = 16,
    lr: float = 1e-3,
    device=None,
    seed: int = 0,
    max_images: int | None = None,
    name: str = "dense",
):
    """Cache crops, train the head, run sliding windows over the validation images; `score(outputs)` turns the
    list of (prediction at target resolution, target) into metrics."""
    device = torch.device(device) if device is not None else default_device()
    model = model.eval().to(device)
    crop = model_size(model, crop, "the crop")
    if max_images:
        train_pairs = train_pairs[:max_images]
    feats, targets = cache_crops(model, train_pairs, task, size, crop, crops_per_image, 32, device, seed)
    if not (targets != task.pad_value).any():  # the pad value is also the "no label / no measurement" value
        raise UserError(f"none of the {len(train_pairs)} training targets has a usable pixel: all are "
                        f"{task.pad_value:g}, the value of unlabelled / unmeasured pixels")  # fmt: skip
    head = train_head(feats, targets, task, iterations, batch_size, lr, seed=seed, desc=f"{name} head")
    mean, std = model_mean_std(model)
    stride = max(model.patch_size, round_to_patch(crop * 2 // 3, model.patch_size))
    results = []
    for image_path, target_path in tqdm(val_pairs, desc=f"{name} evaluation", unit="img", leave=False):
        image, target = load_pair(image_path, target_path, task)
        image = normalize(resize(to_float(image), size, mode="bilinear"), mean, std)
        out = sliding_window(model, head.to(device), image, crop, stride, task.to_output, device)
        out = F.interpolate(out[None], size=tuple(target.shape), mode="bilinear", align_corners=False)[0]
        results.append((out, target))
    return score(results)
