"""Image transforms on tensors (no torchvision): resizing, cropping, normalisation, and the inference
preprocessing of the released models.

- DINOv2 evaluation: resize the shorter side to 256 (bicubic), centre-crop 224, ImageNet mean/std.
- DINOv3 inference: resize to a square `size × size` (bilinear, antialiased), ImageNet mean/std; the
  satellite models use their own mean/std (`weights.SATELLITE_MEAN/STD`).

Resizing uses `F.interpolate(..., antialias=True)`, which follows the same filter as PIL/torchvision's
antialiased tensor resize but is not bit-identical to PIL; features agree to within resampling noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..models.weights import IMAGENET_MEAN, IMAGENET_STD


def to_float(img: torch.Tensor) -> torch.Tensor:
    """uint8 `[..., 3, H, W]` → float32 in [0, 1]."""
    return img.float().div_(255) if img.dtype == torch.uint8 else img.float()


def resize(img: torch.Tensor, size: int | Sequence[int], mode: str = "bicubic") -> torch.Tensor:
    """Resize float `[..., C, H, W]`. An int resizes the shorter side (keeping the aspect), a pair is (H, W)."""
    H, W = img.shape[-2:]
    if isinstance(size, int):
        scale = size / min(H, W)
        out = (size, max(1, round(W * scale))) if H <= W else (max(1, round(H * scale)), size)
    else:
        out = (int(size[0]), int(size[1]))
    if out == (H, W):
        return img
    batched = img if img.ndim == 4 else img.unsqueeze(0)
    align = False if mode in ("bilinear", "bicubic") else None
    y = F.interpolate(batched, size=out, mode=mode, antialias=mode in ("bilinear", "bicubic"), align_corners=align)
    return y if img.ndim == 4 else y.squeeze(0)


def center_crop(img: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    H, W = img.shape[-2:]
    top, left = max((H - h) // 2, 0), max((W - w) // 2, 0)
    return img[..., top : top + h, left : left + w]


def model_mean_std(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation statistics a backbone expects: its own (e.g. the satellite models') or ImageNet's."""
    extra = model.config.extra
    return tuple(extra.get("mean", IMAGENET_MEAN)), tuple(extra.get("std", IMAGENET_STD))


def normalize(img: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    m = torch.tensor(mean, dtype=img.dtype, device=img.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=img.dtype, device=img.device).view(-1, 1, 1)
    return (img - m) / s


def round_to_patch(size: int, patch: int) -> int:
    """The nearest multiple of the patch size (at least one patch)."""
    return max(patch, round(size / patch) * patch)


class EvalTransform:
    """The released inference preprocessing for a model: uint8 or float image `[3, H, W]` → normalised tensor.

    `crop=None` resizes to a square `resize × resize` (DINOv3 style); otherwise the shorter side goes to
    `resize` and a centre crop of `crop` follows (DINOv2 style)."""

    def __init__(
        self,
        resize: int = 256,
        crop: int | None = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        mode: str = "bicubic",
    ) -> None:
        self.resize, self.crop, self.mean, self.std, self.mode = resize, crop, tuple(mean), tuple(std), mode

    @classmethod
    def for_model(cls, model, size: int | None = None) -> EvalTransform:
        """The preprocessing the released model of this generation expects, at `size` px (rounded to patches)."""
        cfg = model.config
        mean, std = model_mean_std(model)
        if cfg.generation == "dinov2":
            crop = round_to_patch(size or 224, cfg.patch_size)
            return cls(resize=round(crop * 256 / 224), crop=crop, mean=mean, std=std, mode="bicubic")
        return cls(resize=round_to_patch(size or 256, cfg.patch_size), crop=None, mean=mean, std=std, mode="bilinear")

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = to_float(img)
        if self.crop is None:
            x = resize(x, (self.resize, self.resize), self.mode)
        else:
            x = center_crop(resize(x, self.resize, self.mode), self.crop)
        return normalize(x, self.mean, self.std)

    def describe(self) -> dict:
        return {"resize": self.resize, "crop": self.crop, "mean": self.mean, "std": self.std, "mode": self.mode}
