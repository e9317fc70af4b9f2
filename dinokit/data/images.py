"""Robust image decoding: any file Pillow reads → an RGB uint8 tensor `[3, H, W]`, upright.

Converted rather than rejected: EXIF-rotated photos (transposed upright), CMYK, palette (with or without
transparency), grayscale, 16-bit and 32-bit integer or float images (rescaled to 8 bit), alpha (composited on
black, as a plain RGB conversion would). Truncated files are decoded as far as Pillow can. Anything else
raises `ImageDecodeError` with the reason, which datasets count and skip.
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


class ImageDecodeError(UserError):
    """A file that is not a readable image."""


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
                    img = ImageOps.exif_transpose(img)
                    rgb = _to_rgb(img)
                    rgb.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
    except ImageDecodeError:
        raise
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
