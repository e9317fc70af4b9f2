"""Atomic file writes: the content goes to a hidden temporary file in the destination's folder, which is then
renamed over the destination. A crash, Ctrl-C or full disk mid-write never leaves a partial file under the real
name (a rename within one file system is atomic), and the temporary file is removed when the write fails.

- The new file gets the permissions an ordinary write would give it: those of the file it replaces, else
  0666 less the umask (`mkstemp` creates its files 0600, which would hide a shared run folder's results from
  the rest of a team).
- A write that fails because the disk is full raises `DiskFull` (a user error: one message, exit status 2)
  naming the file, what was written before the disk filled and what is free; writers report it in their own
  words (torch: "enforce fail at inline_container.cc", numpy: "… requested and … written"), so it is recognised
  by the error number where there is one and otherwise by the free space left after the failure.
- A process killed mid-write leaves its temporary file behind (nothing can remove it); `remove_stale_temporaries`
  deletes them where a single owner is known to hold the folder (a training run under its lock).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UserError

NEARLY_FULL = 16 * 2**20  # bytes: below this after a failed write, the disk is taken to have filled up
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # `.{name}.{mkstemp's 8 characters}.tmp`


class DiskFull(UserError):
    """No space left for a file."""


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], size: int | None = None) -> Path:
    """`write(tmp)` writes the whole file at the temporary path `tmp`; then it becomes `path`. `size`: the bytes
    the file will take, when known; it is checked against the free space first and named if the disk fills."""
    path = Path(path)
    if size is not None:
        ensure_free_space(path, size)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            write(Path(tmp))
        except Exception as e:
            full = _disk_full(e, Path(tmp))
            if full is not None:
                raise DiskFull(f"no space left on the device while writing {path}: {full}"
                               f"{f'; the file needs about {_size(size)}' if size else ''}") from e  # fmt: skip
            raise
        os.chmod(tmp, _ordinary_mode(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def ensure_free_space(path: str | os.PathLike, size: int) -> None:
    """Raise `DiskFull` before writing when `size` bytes do not fit in the free space of `path`'s folder."""
    path = Path(path)
    free = shutil.disk_usage(path.parent).free
    if free < size:
        raise DiskFull(f"not enough space to write {path}: it needs about {_size(size)}, {_size(free)} are free "
                       f"on the device of {path.parent}")  # fmt: skip


def remove_stale_temporaries(folder: str | os.PathLike) -> tuple[int, int]:
    """Delete the temporary files that writes killed mid-way left in `folder` and below: (files, bytes). Only
    safe while no other process writes there."""
    count = freed = 0
    for p in Path(folder).rglob(".*.tmp"):
        if _TEMPORARY.match(p.name) and p.is_file():
            freed += p.stat().st_size
            p.unlink(missing_ok=True)
            count += 1
    return count, freed


def _disk_full(error: BaseException, tmp: Path) -> str | None:
    """What to say when `error` came from a full disk (what was written, what is free), else None."""
    chain, e = [], error
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    by_number = any(getattr(x, "errno", None) == errno.ENOSPC or "No space left on device" in str(x) for x in chain)
    try:
        free, written = shutil.disk_usage(tmp.parent).free, tmp.stat().st_size
    except OSError:
        return "the device is full" if by_number else None
    if not by_number and free >= NEARLY_FULL:
        return None
    return f"{_size(written)} were written before it filled, {_size(free)} are free"


def _ordinary_mode(path: Path) -> int:
    """The permission bits `open(path, "w")` would leave: the replaced file's, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask can only be read by setting it, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _size(n: int | None) -> str:
    n = float(n or 0)
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
