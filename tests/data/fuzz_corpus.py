"""Mutated image files for fuzzing the image path, and an independent oracle of which of them dinokit should use.

Shared by the CI test (`tests/data/test_fuzz_images.py`, a hundred files) and the full run
(`benchmarks/fuzz_images.py`, thousands). File `i` of a corpus depends only on `(seed, i)`, so a small corpus is the
start of a large one and a failure is reproduced by its name alone.

What a corpus holds (`KINDS`, out of every 100 consecutive files):
- `valid`: small images in every format Pillow writes here (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM), in odd modes
  (P with and without transparency, L, LA, RGBA, I;16, I, F, CMYK, 1) and with EXIF orientations 1–8;
- `flip`: a valid file with 1–8 bytes changed (half the time within its first 64 bytes, where headers are);
- `truncate`: a valid file cut short; `empty`, `zeros`, `garbage`: no image at all;
- `wrong_ext`: a valid file named with another format's extension;
- `aspect`: real images at the aspect-ratio limit, just over it, and 200:1 strips;
- `header`: a valid file whose header declares another size — over `MAX_PIXELS` (a decompression bomb), a
  60,000-px strip, a big image the data does not hold (within the limits), or zero pixels.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from dinokit.data import images as images_module

FORMATS = {  # Pillow format → (extension, the modes written in it; "P+t": palette with a transparent index)
    "PNG": (".png", ("RGB", "RGBA", "L", "LA", "P", "P+t", "I;16", "1")),
    "JPEG": (".jpg", ("RGB", "L", "CMYK")),
    "BMP": (".bmp", ("RGB", "L", "P", "1")),
    "GIF": (".gif", ("P", "L")),
    "TIFF": (".tif", ("RGB", "RGBA", "L", "LA", "P", "I;16", "I", "F", "CMYK", "1")),
    "WEBP": (".webp", ("RGB", "RGBA")),
    "PPM": (".ppm", ("RGB",)),
}
EXIF_FORMATS = ("JPEG", "PNG", "WEBP")
HEADER_FORMATS = ("PNG", "BMP", "GIF", "JPEG", "PPM")  # those whose size fields `declare_size` rewrites
# files of each kind out of every 100 consecutive ones, so that a corpus of 100 holds every kind
KINDS = dict(valid=30, flip=20, truncate=14, wrong_ext=5, empty=2, zeros=3, garbage=3, aspect=9, header=14)


@dataclass(frozen=True)
class Case:
    name: str  # file name: index, kind, extension
    data: bytes
    kind: str
    note: str  # how it was made, e.g. "PNG I;16 exif=6 flip@12"


def _pixels(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth gradient with noise, `[h, w, 3]` uint8: compressible like a photo, and not constant."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w, 1)
    base = np.stack([yy, xx, (yy + xx) / 2], axis=-1) * rng.uniform(80, 255, 3)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _image(rgb: np.ndarray, mode: str) -> tuple[Image.Image, dict]:
    img = Image.fromarray(rgb)
    gray = np.asarray(img.convert("L"))
    if mode == "I;16":
        return Image.fromarray(gray.astype(np.uint16) * 257), {}
    if mode == "I":
        return Image.fromarray(gray.astype(np.int32) * 1000 - 50_000), {}
    if mode == "F":
        return Image.fromarray(gray.astype(np.float32) / 7.0), {}
    if mode == "P+t":
        return img.convert("P"), {"transparency": 0}
    return img.convert(mode), {}


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _valid(rng: np.random.Generator, shape: tuple[int, int] | None = None) -> tuple[bytes, str, str]:
    """A readable file in a random format and mode → (bytes, format, note)."""
    fmt = str(rng.choice(list(FORMATS)))
    mode = str(rng.choice(FORMATS[fmt][1]))
    h, w = shape or tuple(int(s) for s in rng.integers(8, 65, 2))
    img, options = _image(_pixels(rng, h, w), mode)
    note = f"{fmt} {mode} {w}x{h}"
    if fmt in EXIF_FORMATS and rng.random() < 0.4:
        exif = Image.Exif()
        exif[0x0112] = orientation = int(rng.integers(1, 9))
        options["exif"] = exif.tobytes()
        note += f" exif={orientation}"
    return _encode(img, fmt, **options), fmt, note


def declare_size(data: bytes, fmt: str, w: int, h: int) -> bytes:
    """The same file with the width and height fields of its header replaced (the pixel data is unchanged)."""
    b = bytearray(data)
    if fmt == "PNG":  # IHDR is the first chunk: length, b"IHDR", width, height, 5 more bytes, then its CRC
        b[16:24] = struct.pack(">II", w, h)
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    elif fmt == "BMP":
        b[18:26] = struct.pack("<ii", w, h)
    elif fmt == "GIF":  # the logical screen
        b[6:10] = struct.pack("<HH", min(w, 65535), min(h, 65535))
    elif fmt == "JPEG":  # the frame header (SOF0 or SOF2): length, precision, height, width
        at = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
        b[at + 5 : at + 9] = struct.pack(">HH", min(h, 65535), min(w, 65535))
    elif fmt == "PPM":
        body = data.split(b"\n", 3)[3]  # "P6\nW H\n255\n" as Pillow writes it
        return b"P6\n%d %d\n255\n" % (w, h) + body
    return bytes(b)


def make_case(seed: int, i: int) -> Case:
    """File `i` of the corpus of `seed`."""
    kinds = np.random.default_rng(seed).permutation(np.repeat(list(KINDS), list(KINDS.values())))
    kind = str(kinds[i % len(kinds)])
    rng = np.random.default_rng([seed, i])
    limit = images_module.MAX_ASPECT_RATIO
    if kind in ("valid", "flip", "truncate", "wrong_ext"):
        data, fmt, note = _valid(rng)
        ext = FORMATS[fmt][0]
        if kind == "flip":
            n = int(rng.integers(1, 9))
            span = min(len(data), 64) if rng.random() < 0.5 else len(data)
            where = rng.integers(0, span, n)
            b = bytearray(data)
            for k in where:
                b[k] ^= int(rng.integers(1, 256))
            data, note = bytes(b), note + f" flip@{','.join(map(str, sorted(where.tolist())))}"
        elif kind == "truncate":
            keep = int(len(data) * rng.uniform(0, 1))
            data, note = data[:keep], note + f" cut@{keep}/{len(data)}"
        elif kind == "wrong_ext":
            ext = str(rng.choice([e for f, (e, _) in FORMATS.items() if f != fmt]))
    elif kind == "aspect":
        short = int(rng.integers(1, 5))
        ratio = int(rng.choice([limit, limit + 1, 200]))  # at the limit (kept), just over it, a strip
        shape = (short, short * ratio) if rng.random() < 0.5 else (short * ratio, short)
        data, fmt, note = _valid(rng, shape)
        ext = FORMATS[fmt][0]
    elif kind == "header":
        data, fmt, note = _valid(rng)
        while fmt not in HEADER_FORMATS:
            data, fmt, note = _valid(rng)
        side = int(np.sqrt(images_module.MAX_PIXELS)) + 1
        w, h = {
            "bomb": (int(rng.integers(side, 65536)), int(rng.integers(side, 65536))),
            "strip": (int(rng.integers(1, 4)), int(rng.integers(20_000, 60_000))),
            "big": tuple(int(s) for s in rng.integers(500, 4097, 2)),
            "zero": (0, int(rng.integers(1, 100))),
        }[str(rng.choice(["bomb", "strip", "big", "zero"]))]
        data, note, ext = declare_size(data, fmt, w, h), note + f" declares {w}x{h}", FORMATS[fmt][0]
    else:
        ext = str(rng.choice([e for e, _ in FORMATS.values()]))
        size = int(rng.integers(1, 4096))
        data = {"empty": b"", "zeros": bytes(size), "garbage": rng.bytes(size)}[kind]
        note = f"{len(data)} bytes"
    return Case(f"{i:05d}-{kind}{ext}", data, kind, note)


def write_corpus(folder: str | Path, n: int, seed: int = 0) -> list[Case]:
    """Files 0 … n-1 of the corpus of `seed`, written into `folder` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases = [make_case(seed, i) for i in range(n)]
    for case in cases:
        (folder / case.name).write_bytes(case.data)
    return cases


def usable(path: str | Path) -> bool:
    """The oracle: whether dinokit should use this file, decided by plain Pillow calls rather than dinokit's
    decoder — the file opens, its declared size is within `MAX_PIXELS` and `MAX_ASPECT_RATIO`, and its pixels load
    (a truncated file as far as it goes, the policy of `decode_image`)."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on corrupt EXIF data or big images
            with Image.open(path) as img:
                w, h = img.size
                limits = images_module.MAX_PIXELS, images_module.MAX_ASPECT_RATIO
                if not (0 < w * h <= limits[0] and max(w, h) <= limits[1] * min(w, h)):
                    return False
                img.load()
        return True
    except Exception:  # anything Pillow raises means unreadable; what dinokit must not do is crash on it
        return False
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
