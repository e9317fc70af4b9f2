"""Tar shards (WebDataset-style layout) read sequentially: `dataset-000000.tar`, `dataset-000001.tar`, …, each
holding samples as members `<key>.<ext>`; every member with an image extension is one sample (other members —
labels, JSON — are ignored by SSL training).

`expand_shards` accepts a `.tar` file, a folder of `.tar` files, or a brace pattern `data-{000000..000099}.tar`.
`iter_members` walks a shard's headers in order (the data of a member is only read when asked for), so
skipping to a position costs header reads, not decoding.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
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


def iter_members(shard: Path) -> Iterator[tuple[str, tarfile.TarFile, tarfile.TarInfo]]:
    """`(name, tar, member)` for each image member of a shard, in file order."""
    with tarfile.open(shard, "r:") as tar:
        for member in tar:
            if member.isfile() and Path(member.name).suffix.lower() in IMAGE_EXTENSIONS:
                yield f"{shard.name}/{member.name}", tar, member


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    return b"" if f is None else f.read()
