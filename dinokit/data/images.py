"""Robust image decoding: any file Pillow reads → an RGB uint8 tensor `[3, H, W]`, upright.

Converted rather than rejected: EXIF-rotated photos (transposed upright), CMYK, palette (with or without
transparency), grayscale, 16-bit and 32-bit integer or float images (rescaled to 8 bit), alpha (composited on
black, as a plain RGB conversion would). Truncated files are decoded as far as Pillow can. Anything else
raises `ImageDecodeError` with the reason, which datasets count and skip.

Size limits bound the work one file can cost, in every verb and in training alike, since all of them decode
here. They are read from the header, before any pixel is decoded:
- `MAX_PIXELS`: a decompression bomb (a few bytes declaring a huge image) is refused instead of allocated;
- `MAX_ASPECT_RATIO`: every verb resizes the shorter side to a working size (extract `--size`, the evaluation
  protocols' resize, the training crops' source), so the token count of an image is its aspect ratio times that
  of a square one: a 1 × 5000 px strip at `--size 64` would be 80,000 patch tokens. Such strips (spacers, rules,
  scan borders) are skipped rather than centre-cropped or tiled: a crop would silently stand for the whole file,
  and skipping keeps one rule, counted like an unreadable file, for extraction, evaluation and training.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from ..errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif")

# What Pillow refuses by default (2 × Image.MAX_IMAGE_PIXELS, e.g. 13,377 × 13,377), so big scans that decoded
# before still do; checked here as well so that the bound holds whatever Pillow's process-wide setting is. A
# truncated file declaring this size decodes (blank) in about 5 s and 2 GB (benchmarks/fuzz_images.py).
MAX_PIXELS = 178_956_970
# Long side / short side. Above panoramas (≈ 2–10) and web banners (≈ 8–11); at a working size S an image
# then costs at most 16 × the patch tokens of an S × S one.
MAX_ASPECT_RATIO = 16


class ImageDecodeError(UserError):
    """A file that is not a readable image, or that is beyond the size limits."""


def check_size(width: int, height: int, name: str = "image") -> None:
    """Raise `ImageDecodeError` for an image beyond `MAX_PIXELS` or `MAX_ASPECT_RATIO` (module values, read at
    each call: raise them from Python if your data needs it)."""
    if min(width, height) < 1:
        raise ImageDecodeError(f"{name}: {width} × {height} px: an empty image")
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(f"{name}: {width} × {height} px, over the limit of {MAX_PIXELS:,} pixels "
                               "(dinokit.data.images.MAX_PIXELS)")  # fmt: skip
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageDecodeError(f"{name}: {width} × {height} px, an aspect ratio over the limit of "
                               f"{MAX_ASPECT_RATIO}:1 (dinokit.data.images.MAX_ASPECT_RATIO)")  # fmt: skip


def _upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says. Damaged EXIF metadata (Pillow's parser raises SyntaxError,
    ValueError, struct.error … on it) is ignored: the pixels are still good, so the file is used as stored."""
    try:
        exif = img.getexif()
    except Exception:
        return img
    return ImageOps.exif_transpose(img) if exif.get(0x0112, 1) != 1 else img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # high bit depth: rescale the range to 8 bit
        a = np.asarray(img, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if img.mode.startswith("I;16") else (float(a.min()), float(a.max()))
        a = np.clip((a - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(a, mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def decode_image(source: str | os.PathLike | bytes) -> torch.Tensor:
    """Decode a path or encoded bytes to an RGB uint8 tensor `[3, H, W]`."""
    import io

    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        if not isinstance(source, bytes) and os.path.getsize(source) == 0:
            raise ImageDecodeError(f"{name}: empty file")
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True  # keep what a truncated download still holds
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. Pillow's DecompressionBombWarning on huge scans
                with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                    check_size(*img.size, name)  # from the header: nothing is decoded yet
                    img = _upright(img)
                    rgb = _to_rgb(img)
                    rgb.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(f"{name}: no such file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()  # [3, H, W]


def list_images(root: str | os.PathLike) -> list[Path]:
    """All image files under a folder (recursively, sorted), or the file itself."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UserError(f"{root}: no such file or folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
