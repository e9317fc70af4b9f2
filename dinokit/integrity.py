"""Integrity checks: a file or a set of tensors carries a SHA-256 digest written with it and verified on reading,
so flipped bytes, a truncation or a zeroed file are reported instead of trusted.

- Whole files (training checkpoints): a side file `<name>.sha256` in `sha256sum`'s format ("<hex>  <name>"), so
  `sha256sum -c step_00001000.pt.sha256` checks one by hand. It is written before the checked file is renamed
  into place (`atomic.py`), so every complete file has its digest; a file without one (written by an older
  dinokit, or copied without it) is read unchecked.
- Backbone weights in dinokit's formats: `tensors_sha256` digests the tensors themselves (names, dtypes, shapes and
  bytes, in name order) and is stored in the config (`config.json` or the `.safetensors` metadata); it does not
  depend on how a writer lays the file out, so the same weights always give the same digest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .atomic import atomic_write_text
from .errors import UserError

_CHUNK = 2**22


class DamagedFile(UserError):
    """A file whose content differs from the digest written with it."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest_path(path: str | Path) -> Path:
    return Path(f"{path}.sha256")


def write_file_digest(path: str | Path, content: str | Path | None = None) -> Path:
    """Write `path`'s side file with the digest of `content` (default: `path` itself; a temporary file that is
    about to become `path` when the digest must exist before the file does)."""
    path = Path(path)
    return atomic_write_text(digest_path(path), f"{file_sha256(content or path)}  {path.name}\n")


def file_problem(path: str | Path) -> str:
    """Why `path` does not match its side file ("" when it does, or when it has none)."""
    side = digest_path(path)
    if not side.is_file():
        return ""
    try:
        expected = side.read_text().split()[0].lower()
    except (OSError, IndexError, UnicodeDecodeError):
        return f"its digest file {side.name} is unreadable"
    size = Path(path).stat().st_size
    if file_sha256(path) != expected:
        return (f"its SHA-256 differs from the one written with it in {side.name} ({size} bytes now; the file was "
                "truncated, damaged on disk or in a copy, or replaced)")  # fmt: skip
    return ""


def check_file(path: str | Path) -> None:
    """Raise `DamagedFile` when `path` does not match its side file."""
    problem = file_problem(path)
    if problem:
        raise DamagedFile(f"{path} is damaged: {problem}")


def tensors_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """The digest of a state dict's content: each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the bytes, without a copy
    return digest.hexdigest()
