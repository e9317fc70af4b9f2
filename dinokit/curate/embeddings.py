"""The inputs and outputs of the curation steps: a pool of embeddings with a name per row, and name lists.

A pool (`open_embeddings`) is either
- a folder written by `dinokit curate embed`: its `embeddings.npy`, read as below; or
- a `.npy` file `[N, D]` of float16/32/64, opened memory-mapped (nothing is read until a step reads rows); its rows
  are named by the lines of `<stem>.names.txt` beside it (`pool.npy` → `pool.names.txt`, one name per line,
  typically the image path), else by their row index ("0", "1", …); or
- a folder written by `dinokit extract`: the CLS token of every image, named by the image's absolute path.
  `FeatureStore.vectors` reads them all into memory (float32), so such a pool must fit in RAM for now.

A name list (`write_keep` / `read_names`) is a text file with one name per line: the `keep.txt` every step writes,
which the next step takes as `--subset` and `dinokit train data.path=keep.txt` reads as a file list (a name holding
a comma is quoted as in CSV, the way that reader expects; `#` lines and blank lines are skipped).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..errors import UserError


class RowSubset:
    """Rows `rows` (ascending) of a 2-D array or memmap, indexable like an array without copying the pool: a
    slice or index array of the subset reads only those rows of the base."""

    def __init__(self, base, rows: np.ndarray):
        self.base, self.rows = base, rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), self.base.shape[1])

    @property
    def dtype(self):
        return self.base.dtype

    ndim = 2  # the dedup search checks `ndim` as it would an array's

    def __getitem__(self, key):
        return self.base[self.rows[key]]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.base[self.rows], dtype=dtype)


@dataclass
class Embeddings:
    """A pool: `names[i]` is the name of row `vectors[i]` ([N, D] array, memmap or `RowSubset`)."""

    names: list[str]
    vectors: object
    source: str

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def open_embeddings(source: str | os.PathLike, subset: str | os.PathLike | None = None) -> Embeddings:
    """The pool at `source` (see the module docstring), restricted to the rows `subset` names when given: a name
    list whose lines are all names of the pool, or all row indices; the rows keep the pool's order."""
    path = Path(source)
    if path.is_dir() and (path / "embeddings.npy").is_file():  # a `curate embed` folder
        path = path / "embeddings.npy"
    if path.is_dir():
        from ..tools.extract import read_features

        names, vectors = read_features(path).vectors("cls")
    elif path.suffix.lower() == ".npy":
        if not path.is_file():
            raise UserError(f"{path}: no such embeddings file")
        try:
            vectors = np.load(path, mmap_mode="r")
        except ValueError as e:
            raise UserError(f"{path}: not a readable .npy array ({e})") from None
        if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
            raise UserError(f"{path}: embeddings must be a float array [N, D], got {vectors.dtype} "
                            f"{list(vectors.shape)}")  # fmt: skip
        names_file = path.with_name(f"{path.stem}.names.txt")
        names = read_names(names_file) if names_file.is_file() else [str(i) for i in range(len(vectors))]
        if len(names) != len(vectors):
            raise UserError(f"{names_file}: {len(names)} names for the {len(vectors)} rows of {path}")
    else:
        raise UserError(f"{path}: embeddings must be a .npy file [N, D] or a folder written by `dinokit curate embed` "
                        f"or `dinokit extract`"
                        f"{'' if path.exists() else ' (no such file or folder)'}")  # fmt: skip
    if len(names) == 0:
        raise UserError(f"{path}: the pool is empty")
    pool = Embeddings(list(names), vectors, str(path))
    return pool if subset is None else _restrict(pool, subset)


def _restrict(pool: Embeddings, subset: str | os.PathLike) -> Embeddings:
    wanted = read_names(subset)
    index = {name: i for i, name in enumerate(pool.names)}
    if len(index) != len(pool.names):
        raise UserError(f"{pool.source}: the names of the rows are not unique, so --subset cannot pick rows by name")
    unknown = [w for w in wanted if w not in index]
    if not unknown:
        rows = np.array([index[w] for w in wanted], dtype=np.int64)
    elif all(w.isdigit() for w in wanted):  # row indices
        rows = np.array([int(w) for w in wanted], dtype=np.int64)
        if len(rows) and rows.max() >= len(pool):
            raise UserError(f"{subset}: row {rows.max()} is out of range for the {len(pool)} rows of {pool.source}")
    else:
        raise UserError(f"{subset}: {len(unknown)} of its {len(wanted)} lines name no row of {pool.source} "
                        f"(first: {unknown[0]!r}); lines must be the pool's names or row indices")  # fmt: skip
    rows = np.unique(rows)  # the pool's order, each row once
    if len(rows) == 0:
        raise UserError(f"{subset}: the subset is empty")
    vectors = pool.vectors[rows] if isinstance(pool.vectors, np.ndarray) and not isinstance(pool.vectors, np.memmap) \
        else RowSubset(pool.vectors, rows)  # fmt: skip
    return Embeddings([pool.names[i] for i in rows], vectors, pool.source)


def read_names(path: str | os.PathLike) -> list[str]:
    """The names of a name list (one a line; a line with a comma or quote is CSV, whose first field is taken, so
    a `path,label` training list works too)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such name list")
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(next(csv.reader([line]))[0].strip() if "," in line or '"' in line else line)
    return out


def write_keep(path: str | os.PathLike, names: Iterable[str]) -> Path:
    """Write a name list atomically (a crash leaves the old file or the new one, never half of one)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for name in names:
        if "\n" in name or "\r" in name:
            raise ValueError(f"a name holds a line break: {name!r}")
        if "," in name or '"' in name:
            writer.writerow([name])  # quoted, as the file-list reader of `dinokit train` expects
        else:
            buf.write(name + "\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, buf.getvalue())
