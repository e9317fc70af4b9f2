"""Image–caption pairs for text alignment (dino.txt training, `dinokit/train/dinotxt.py`).

`open_pairs(PATH)` reads one of:
- a folder of images (recursive), each with a same-named `.txt` caption beside it (`cat.png` + `cat.txt`), the
  layout `dinokit data synth --captions` writes;
- a `.csv` file of `path,caption` rows (a header row naming the columns, e.g. `path,caption` or `image,text`, is
  optional; captions may be quoted and hold commas), paths relative to the file's folder;
- a `.jsonl` file, one object per line with the image under `image` (or `path`, `file`) and the text under
  `caption` (or `text`), paths relative to the file's folder;
- tar shards (a `.tar` file, a folder of them, or `data-{000..009}.tar`; `shards.py`) holding `<key>.<image ext>`
  with `<key>.txt`, the WebDataset layout of image–text sets.

Every pair is checked when opened (the image file exists, the caption is not empty); a problem is one `UserError`
naming the first offending entries and how many there are. Images are decoded when a batch asks for them
(`PairList.image`); an unreadable one stops training with its name (a batch cannot shrink: the contrastive loss
gathers equal batches from every rank).
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .images import IMAGE_EXTENSIONS, ImageDecodeError, decode_image, list_images
from .shards import Member, expand_shards, is_shard_source

IMAGE_KEYS, CAPTION_KEYS = ("image", "path", "file"), ("caption", "text")
SHOWN = 3  # offending entries named in an error


@dataclass
class PairList:
    """Images (paths or tar members) and their captions, in a fixed order."""

    images: list[Path | Member]
    captions: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> torch.Tensor:
        """Image `i` decoded to uint8 `[3, H, W]`; a `UserError` naming it when it cannot be read."""
        item = self.images[i]
        try:
            return decode_image(item.read() if isinstance(item, Member) else item)
        except ImageDecodeError as e:
            name = item.name if isinstance(item, Member) else str(item)
            raise UserError(f"pair {i} of {self.source} ({name}): {e}; remove or replace the image") from None


def _problem(source: str, what: str, bad: list[str]) -> UserError:
    shown = "; ".join(bad[:SHOWN]) + (" …" if len(bad) > SHOWN else "")
    return UserError(f"{source}: {len(bad)} {what}: {shown}")


def _checked(pairs: list[tuple[Path, str]], source: str) -> PairList:
    if not pairs:
        raise UserError(f"{source}: no image–caption pairs found")
    missing = [str(p) for p, _ in pairs if not p.is_file()]
    if missing:
        raise _problem(source, "listed image(s) do not exist", missing)
    empty = [str(p) for p, c in pairs if not c.strip()]
    if empty:
        raise _problem(source, "empty caption(s)", empty)
    return PairList([p for p, _ in pairs], [c.strip() for _, c in pairs], source)


def open_pairs(path: str) -> PairList:
    """The pairs of a folder, CSV, JSONL file or tar shards (module docstring)."""
    if not path:
        raise UserError("data.path is required: a folder of images with same-named .txt captions, a .csv or "
                        ".jsonl of (path, caption), or tar shards of image + .txt")  # fmt: skip
    p = Path(path).expanduser()
    if is_shard_source(path):
        return _from_shards(path)
    if p.is_file() and p.suffix.lower() == ".csv":
        return _from_csv(p)
    if p.is_file() and p.suffix.lower() == ".jsonl":
        return _from_jsonl(p)
    if p.is_dir():
        return _from_folder(p)
    if p.exists():
        raise UserError(f"data.path {path}: pairs are read from a folder, a .csv, a .jsonl or .tar shards, not a "
                        f"{p.suffix or 'extension-less'} file")  # fmt: skip
    raise UserError(f"data.path {path} does not exist")


def _from_folder(root: Path) -> PairList:
    images = list_images(root)
    if not images:
        raise UserError(f"{root}: no image files found (looked for .jpg, .png, .webp … recursively)")
    orphans = [str(p) for p in images if not p.with_suffix(".txt").is_file()]
    if orphans:
        raise _problem(str(root), f"of {len(images)} image(s) have no same-named .txt caption (e.g. a.png + a.txt; "
                       "`dinokit data synth --captions` writes them)", orphans)  # fmt: skip
    return _checked([(p, p.with_suffix(".txt").read_text(encoding="utf-8")) for p in images], str(root))


def _from_csv(file: Path) -> PairList:
    try:
        rows = [r for r in csv.reader(io.StringIO(file.read_text(encoding="utf-8"))) if r and any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{file} is not a UTF-8 CSV of path,caption rows: {e}") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] in [[a, b] for a in IMAGE_KEYS for b in CAPTION_KEYS]:
        rows = rows[1:]
    bad = [f"row {i + 1}: {r!r}" for i, r in enumerate(rows) if len(r) != 2]
    if bad:
        raise _problem(str(file), "row(s) without exactly two columns (path,caption; quote captions that hold "
                       "commas)", bad)  # fmt: skip
    return _checked([(file.parent / r[0].strip(), r[1]) for r in rows], str(file))


def _from_jsonl(file: Path) -> PairList:
    pairs, bad = [], []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(f"line {n}: {e.msg}")
            continue
        image = next((obj[k] for k in IMAGE_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), str)), None)
        text = next((obj[k] for k in CAPTION_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), str)), None)
        if image is None or text is None:
            bad.append(f"line {n}: needs string fields image (or path, file) and caption (or text)")
            continue
        pairs.append((file.parent / image, text))
    if bad:
        raise _problem(str(file), "bad line(s)", bad)
    return _checked(pairs, str(file))


def _shard_pairs(shard: Path) -> Iterator[tuple[str, Member | None, str | None]]:
    """(key, image member or None, caption or None) per member of interest, in file order."""
    try:
        with tarfile.open(shard, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, ext = str(Path(m.name).with_suffix("")), Path(m.name).suffix.lower()
                if ext in IMAGE_EXTENSIONS:
                    yield key, Member(f"{shard.name}/{m.name}", shard, m.offset_data, m.size), None
                elif ext == ".txt":
                    yield key, None, tar.extractfile(m).read().decode("utf-8", errors="replace")
    except tarfile.TarError as e:
        raise UserError(f"{shard} is not a readable tar shard: {e}") from None


def _from_shards(source: str) -> PairList:
    images: list = []
    captions: list[str] = []
    orphans: list[str] = []
    for shard in expand_shards(source):
        found_images: dict[str, Member] = {}
        found_text: dict[str, str] = {}
        for key, member, text in _shard_pairs(shard):
            if member is not None:
                found_images[key] = member
            else:
                found_text[key] = text
        for key, member in found_images.items():  # file order
            if key in found_text:
                images.append(member)
                captions.append(found_text[key])
            else:
                orphans.append(member.name)
    if orphans:
        raise _problem(source, "image(s) in the shards without a <key>.txt caption", orphans)
    if not images:
        raise UserError(f"{source}: the shards hold no <key>.<image> + <key>.txt pairs")
    empty = [m.name for m, c in zip(images, captions) if not c.strip()]
    if empty:
        raise _problem(source, "empty caption(s)", empty)
    return PairList(images, [c.strip() for c in captions], source)
