"""Tar shards (WebDataset-style layout) read sequentially: `dataset-000000.tar`, `dataset-000001.tar`, …, each
holding samples as members `<key>.<ext>`; every member with an image extension is one sample (other members —
labels, JSON — are ignored by SSL training).

`expand_shards` accepts a `.tar` file, a folder of `.tar` files, or a brace pattern `data-{000000..000099}.tar`.
`iter_members` walks a shard's headers in order and says where each image's bytes lie (`Member`); they are
only read when asked for, so skipping to a position costs header reads, not decoding.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .images import IMAGE_EXTENSIONS

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def is_shard_source(source: str) -> bool:
    """A `.tar` file, a brace pattern, or a folder whose top level holds `.tar` files."""
    p = Path(source)
    return bool(_BRACE.search(source)) or p.suffix == ".tar" or (p.is_dir() and any(p.glob("*.tar")))


def expand_shards(source: str) -> list[Path]:
    """The shard files of a source, in order; a clear error when one is missing."""
    m = _BRACE.search(source)
    if m:
        lo, hi = m.group(1), m.group(2)
        width = len(lo)
        paths = [Path(source[: m.start()] + f"{i:0{width}d}" + source[m.end() :]) for i in range(int(lo), int(hi) + 1)]
    elif Path(source).is_dir():
        paths = sorted(Path(source).glob("*.tar"))
    else:
        paths = [Path(source)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise UserError(f"tar shards not found: {', '.join(missing[:5]) or source}")
    return paths


@dataclass(frozen=True)
class Member:
    """One image of a shard: where its bytes lie, so that it can be read later without the tar being open."""

    name: str  # "<shard file name>/<member name>"
    shard: Path
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


def iter_members(shard: Path) -> Iterator[Member]:
    """Each image member of a shard, in file order (headers only: no image data is read)."""
    with tarfile.open(shard, "r:") as tar:
        for member in tar:
            if member.isfile() and not member.sparse and Path(member.name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Member(f"{shard.name}/{member.name}", shard, member.offset_data, member.size)
