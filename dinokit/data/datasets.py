"""Image datasets that need no metadata files: a folder (recursive; sub-folder names become class labels
when every image sits in one), or a file list (`.txt` / `.csv`: `path[,label]` per line, paths relative to
the list's folder; also `path label` with whitespace, the layout of ImageNet's `val.txt`; `#` comments and a
header line such as `path,label` are skipped).

Unreadable files (missing, corrupt, truncated beyond repair, zero bytes, not images) and images beyond the size
limits of `images.py` never stop the work: `ImageDataset` returns `None` for them, `collate_skip_none` drops them
from the batch, and each is counted in `ImageDataset.skipped`; the first `LISTED_UNREADABLE` of them (per
process) are logged by name with the reason, so that a list of wrong paths does not print a line per image.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset, default_collate

from ..errors import UserError
from .images import IMAGE_EXTENSIONS, ImageDecodeError, decode_image, list_images

log = logging.getLogger("dinokit.data")
LISTED_UNREADABLE = 10  # unreadable files named in the log, per process; the rest are only counted


@dataclass
class ImageList:
    """Image paths with optional integer labels and the class names they index."""

    paths: list[Path]
    labels: list[int] | None = None
    classes: list[str] = field(default_factory=list)
    source: str = "the listed images"  # the folder or list file they came from, for messages

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def from_source(cls, source: str | os.PathLike) -> ImageList:
        src = Path(source)
        if src.is_file() and src.suffix.lower() in (".txt", ".csv"):
            return cls._from_list_file(src)
        paths = list_images(src)
        if not paths:
            raise UserError(f"{src}: no image files found (looked for .jpg, .png, .webp, .tif …, recursively)")
        if src.is_dir() and all(len(p.relative_to(src).parts) >= 2 for p in paths):
            classes = sorted({p.relative_to(src).parts[0] for p in paths})
            index = {c: i for i, c in enumerate(classes)}
            return cls(paths, [index[p.relative_to(src).parts[0]] for p in paths], classes, str(source))
        return cls(paths, source=str(source))

    @classmethod
    def _from_list_file(cls, path: Path) -> ImageList:
        lines = (line.strip() for line in path.read_text().splitlines())
        rows = [_list_row(line) for line in lines if line and not line.startswith("#")]
        if rows and _is_header(rows[0], path.parent):
            rows = rows[1:]
        if not rows:
            raise UserError(f"{path}: the file list is empty")
        paths = [(path.parent / r[0].strip()).resolve() for r in rows]
        if all(len(r) >= 2 and r[1].strip() for r in rows):
            names = [r[1].strip() for r in rows]
            classes = sorted(set(names), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
            index = {c: i for i, c in enumerate(classes)}
            return cls(paths, [index[n] for n in names], classes, str(path))
        return cls(paths, source=str(path))


def _list_row(line: str) -> list[str]:
    """The fields of one list line: CSV when it has a comma (a quoted path may hold one); otherwise the label
    is the last whitespace-separated word (`ILSVRC2012_val_00000001.JPEG 65`), unless the line is a single
    image name (`my photo.jpg`)."""
    if "," in line or line.lower().endswith(IMAGE_EXTENSIONS):
        return next(csv.reader([line]))
    return line.rsplit(None, 1)


def _is_header(row: list[str], root: Path) -> bool:
    """A first line such as `path,label` or `filename class`: column names (words, no `/` or `.`), and not
    the name of a file."""
    return all(re.fullmatch(r"[A-Za-z_][\w -]*", field.strip()) for field in row) and not (root / row[0]).is_file()


class ImageDataset(Dataset):
    """Decoded, transformed images: item `i` → `(image, label or -1, i)`, or `None` when unreadable."""

    def __init__(self, images: ImageList, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.images, self.transform = images, transform
        self.skipped: list[str] = []
        self._skipped: set[str] = set()  # the same, for a constant-time check

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        path = self.images.paths[i]
        try:
            img = decode_image(path)
        except ImageDecodeError as e:
            if str(path) not in self._skipped:
                self._skipped.add(str(path))
                self.skipped.append(str(path))
                if len(self.skipped) <= LISTED_UNREADABLE:
                    log.warning("skipping image %s", e)
                if len(self.skipped) == LISTED_UNREADABLE:
                    log.warning("further unreadable images are skipped without a message (counted at the end)")
            return None
        if self.transform is not None:
            img = self.transform(img)
        label = self.images.labels[i] if self.images.labels is not None else -1
        return img, label, i


def collate_skip_none(batch: list):
    """`default_collate` over the readable items; `None` when none is."""
    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None
