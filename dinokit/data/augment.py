"""Random image augmentations on tensors (no torchvision), with the semantics of torchvision's transforms that
the released DINOv2 / DINOv3 recipes use: RandomResizedCrop, horizontal flip, ColorJitter (random order of
brightness / contrast / saturation / hue), RandomGrayscale, GaussianBlur (kernel 9) and RandomSolarize.

Random parameters are drawn per sample from a `random.Random` (`color_jitter_params`, the sigma of a blur), so
a sample's augmentation is a pure function of its seed: the same sample gets the same crops whatever the number
of data workers, and a resumed run reproduces them. The pixel work takes float images `[..., 3, H, W]` in [0, 1]
and runs on a whole batch at once with per-sample factors (`apply_color_jitter`, `gaussian_blur` with a tensor
of sigmas): on a CPU the per-call overhead of many small images costs more than the arithmetic. Every batched
op is elementwise per sample (the blur is a sum of shifted copies, not a convolution whose algorithm may
depend on the batch; image means are accumulated in float64), so a sample's pixels do not depend on which
other samples share its batch.

Deviation: resizing is `F.interpolate(bicubic, antialias=True)` on float tensors, not Pillow's bicubic on uint8;
the two agree to within resampling noise (no rounding to 8 bits between steps).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision / Pillow


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], rng: random.Random, ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """`(top, left, h, w)` of a crop covering U(scale) of the area with a log-uniform aspect ratio in `ratio`;
    10 tries, then the largest centred crop within the ratio (torchvision's rule)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(img: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """Crop `box` out of uint8 or float `[3, H, W]` and resize to `size × size` (bicubic, antialiased) → float."""
    top, left, h, w = box
    crop = img[..., top : top + h, left : left + w]
    crop = crop.float().div_(255) if crop.dtype == torch.uint8 else crop.float()
    out = F.interpolate(crop.unsqueeze(0), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return out.squeeze(0).clamp_(0.0, 1.0)  # [3, size, size]


def hflip(img: torch.Tensor, rng: random.Random, p: float = 0.5) -> torch.Tensor:
    return img.flip(-1) if rng.random() < p else img


def grayscale(img: torch.Tensor) -> torch.Tensor:
    """Luma `[..., 1, H, W]`."""
    r, g, b = img.unbind(-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _blend(img: torch.Tensor, other: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    return (factor * img + (1.0 - factor) * other).clamp_(0.0, 1.0)


def adjust_hue(img: torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `shift` (a fraction of the colour circle, in [-0.5, 0.5]) via HSV; a tensor of shifts
    broadcasts against the hue plane `[..., H, W]` (e.g. `[N, 1, 1]` for a batch)."""
    h, s, v = _rgb_to_hsv(img).unbind(-3)
    h = (h + shift) % 1.0
    return _hsv_to_rgb(torch.stack([h, s, v], dim=-3))


def _rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.unbind(-3)
    v, _ = img.max(dim=-3)
    chroma = v - img.min(dim=-3).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    s = torch.where(v > 0, chroma / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    # sector by the largest channel (ties: red, then green, as torchvision)
    h = torch.where(
        v == r, torch.remainder((g - b) / safe, 6.0), torch.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    h = torch.where(chroma > 0, h / 6.0, torch.zeros_like(h)) % 1.0
    return torch.stack([h, s, v], dim=-3)


def _hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """`c_n = v − v·s·clamp(min(k, 4 − k), 0, 1)` with `k = (n + 6h) mod 6` for n = 5, 3, 1 (R, G, B)."""
    h, s, v = img.unbind(-3)
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * h, 6.0)
        channels.append(v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, dim=-3)


@dataclass(frozen=True)
class JitterParams:
    """One sample's ColorJitter draw: the four factors and the order the adjustments are applied in."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    order: tuple[int, ...]  # a permutation of 0 brightness, 1 contrast, 2 saturation, 3 hue


def color_jitter_params(rng: random.Random, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1) -> JitterParams:
    """Each factor drawn uniformly (brightness, contrast, saturation around 1; hue shift around 0), then a random
    order of the four adjustments (torchvision's ColorJitter)."""
    b = rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
    c = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
    s = rng.uniform(max(0.0, 1 - saturation), 1 + saturation)
    h = rng.uniform(-hue, hue)
    order = list(range(4))
    rng.shuffle(order)
    return JitterParams(b, c, s, h, tuple(order))


def _image_mean(img: torch.Tensor) -> torch.Tensor:
    """Per-image mean `[N, 1, 1, 1]` of `[N, C, H, W]`, accumulated in float64 so that it does not depend on how
    the reduction is split over a batch or threads."""
    return img.double().mean(dim=(-3, -2, -1), keepdim=True).to(img.dtype)


def _jitter_op(op: int, img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Adjustment `op` on `[N, 3, H, W]` with per-sample factors `[N, 1, 1, 1]`."""
    if op == 0:
        return (img * factor).clamp_(0.0, 1.0)
    if op == 1:
        return _blend(img, _image_mean(grayscale(img)), factor)
    if op == 2:
        return _blend(img, grayscale(img), factor)
    return adjust_hue(img, factor.view(-1, 1, 1))


def apply_color_jitter(img: torch.Tensor, params: list[JitterParams | None]) -> torch.Tensor:
    """ColorJitter of a batch `[N, 3, H, W]`, sample i with `params[i]` (None: left as it is). At each of the
    four positions of the order, every adjustment runs once on the samples that have it there."""
    out = img.clone()
    for position in range(4):
        for op in range(4):
            rows = [i for i, p in enumerate(params) if p is not None and p.order[position] == op]
            if not rows:
                continue
            factor = torch.tensor(
                [(params[i].brightness, params[i].contrast, params[i].saturation, params[i].hue)[op] for i in rows],
                dtype=img.dtype, device=img.device,
            ).view(-1, 1, 1, 1)  # fmt: skip
            index = torch.tensor(rows, device=img.device)
            out[index] = _jitter_op(op, out[index], factor)
    return out


def color_jitter(
    img: torch.Tensor, rng: random.Random, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1
) -> torch.Tensor:
    """ColorJitter of one image `[3, H, W]`: the four adjustments in a random order, each with a factor drawn
    uniformly."""
    params = color_jitter_params(rng, brightness, contrast, saturation, hue)
    return apply_color_jitter(img[None], [params])[0]


def gaussian_blur(img: torch.Tensor, sigma: float | torch.Tensor, kernel_size: int = 9) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (torchvision's GaussianBlur). `sigma` is one number, or one
    per image `[N]` for a batch `[N, C, H, W]`. Computed as a weighted sum of shifted copies, row pass then
    column pass, so each image's result is the same whatever else is in the batch."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, dtype=img.dtype, device=img.device)
    sigma = torch.as_tensor(sigma, dtype=img.dtype, device=img.device)
    batched = img.reshape(-1, *img.shape[-3:])  # [N, C, H, W]
    k = torch.exp(-0.5 * (x / sigma.reshape(-1, 1)) ** 2)  # [1 or N, ks]
    k = (k / k.sum(dim=1, keepdim=True)).reshape(-1, 1, 1, 1, kernel_size).unbind(-1)  # ks × [1 or N, 1, 1, 1]
    pad = kernel_size // 2
    H, W = batched.shape[-2:]
    y = F.pad(batched, (pad, pad, pad, pad), mode="reflect")  # [N, C, H + 2p, W + 2p]
    y = sum(w * y[..., j : j + W] for j, w in enumerate(k))  # along rows: [N, C, H + 2p, W]
    y = sum(w * y[..., j : j + H, :] for j, w in enumerate(k))  # along columns: [N, C, H, W]
    return y.reshape(img.shape)


def solarize(img: torch.Tensor, threshold: float = 128 / 255) -> torch.Tensor:
    """Invert the pixels at or above `threshold` (128 on the 8-bit scale)."""
    return torch.where(img >= threshold, 1.0 - img, img)


def normalize(img: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=img.dtype, device=img.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=img.dtype, device=img.device).view(-1, 1, 1)
    return (img - m) / s
