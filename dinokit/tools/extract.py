"""Frozen-feature extraction: images → CLS, register, patch (and intermediate-layer) tokens on disk.

What the SLAM, retrieval and inspection users run first. Images come from folders, files or file lists; each is
resized so both sides are multiples of the patch size (native size, or shorter side `size`, aspect kept), and
optionally cut into tiles on the patch grid (`tile`, `overlap` in pixels) whose patch maps are stitched back into
one map per image, overlapping patches averaged. A tiled image's CLS and registers are the mean over its tiles.

On disk (`output/`), written out of core and resumable:
- `meta.json`   — backbone, preprocessing, tiling, layers, storage dtype (a resumed run must match it);
- `shard-NNNNN.safetensors` (or `shard-NNNNN/` with `.npy` files) — per shard `cls [n, D]`, `registers [n, R, D]`,
  and the patch tokens of all its images concatenated row-major, `patches [Σ h·w, D]` (`layer{i}` likewise);
- `index.jsonl` — one line per image: path, shard, row, patch offset and grid. A shard's lines are appended
  only after the shard file is in place, so an interrupted run loses at most the shard it was writing, and a
  rerun skips every image already listed.

With `pooled=True` a shard holds per-image vectors only: `cls`, `registers` and `patch_mean [n, D]` (the mean
patch token), no patch maps; this is what `dinokit curate embed` stores (a pool of millions of images would
otherwise keep every patch map on disk).

`read_features(output)` maps each image path to `{"cls": [D], "registers": [R, D], "patches": [h, w, D], …}`
(numpy), reading shards lazily.

ConvNeXt backbones (`config.kind == "convnext"`): the patch size is the output stride, 32, and `layers` are stage
indices in [0, 4), as `get_intermediate_layers` counts them. Stages before the last are finer maps (stride 4·2^i)
of their own width `dims[i]` and have no norm (the released `norms` are Identities there); they are resized to
the stride-32 grid as the released `pseudo_patch_size` option does (bilinear, antialiased), so every stored map of
an image shares one grid and the shard layout is the ViT's. `layer3` equals `patches`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..atomic import atomic_write, atomic_write_text
from ..data.datasets import ImageDataset, ImageList
from ..data.transforms import model_mean_std, normalize, resize, round_to_patch, to_float
from ..errors import UserError
from ..models.weights import IMAGENET_MEAN, IMAGENET_STD

PER_IMAGE = ("cls", "registers", "patch_mean")  # one row per image in a shard; the other keys are patch maps
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


# ---------------------------------------------------------------------------------------- preprocessing
@dataclass
class Preprocess:
    """Resize so both sides are multiples of `patch_size` (shorter side → `size`, or native size), normalise."""

    patch_size: int
    size: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    mode: str = "bicubic"

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        scale = 1.0 if self.size is None else self.size / min(height, width)
        return tuple(round_to_patch(round(side * scale), self.patch_size) for side in (height, width))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = resize(to_float(img), self.output_size(*img.shape[-2:]), self.mode)  # [3, H, W]
        return normalize(x, self.mean, self.std)


def tile_origins(n: int, tile: int, stride: int) -> list[int]:
    """Start positions (in patches) of tiles of `tile` patches along an axis of `n` patches; the last tile ends
    at the edge. An axis shorter than a tile gets one tile covering it."""
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, stride))
    return starts + [n - tile]


def tile_grid(grid: tuple[int, int], tile: int, overlap: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Tile origins `(row, col)` in patches and the tile size (clipped to the grid), for a patch grid."""
    th, tw = min(tile, grid[0]), min(tile, grid[1])
    stride = tile - overlap
    origins = [(r, c) for r in tile_origins(grid[0], tile, stride) for c in tile_origins(grid[1], tile, stride)]
    return origins, (th, tw)


def stitch(tile_maps: torch.Tensor, origins: Sequence[tuple[int, int]], grid: tuple[int, int]) -> torch.Tensor:
    """Place tile patch maps `[T, th, tw, D]` at their origins on a `grid` map `[h, w, D]`, averaging overlaps."""
    T, th, tw, D = tile_maps.shape
    total = tile_maps.new_zeros(*grid, D, dtype=torch.float32)  # [h, w, D]
    count = tile_maps.new_zeros(*grid, 1, dtype=torch.float32)
    for m, (r, c) in zip(tile_maps, origins):
        total[r : r + th, c : c + tw] += m.float()
        count[r : r + th, c : c + tw] += 1
    if (count == 0).any():
        raise RuntimeError("tiles do not cover the whole patch grid")  # cannot happen with tile_grid's origins
    return total / count


# ------------------------------------------------------------------------------------------------ model
def is_convnext(model) -> bool:
    """Whether `model` is a ConvNeXt (stride-32 stages, no attention) rather than a ViT."""
    return getattr(getattr(model, "config", None), "kind", "vit") == "convnext"


def layer_stride(model, i: int) -> int:
    """Input pixels per token of layer `i`: the patch size for a ViT (every block keeps the grid), 4·2^i for stage i
    of a ConvNeXt (the stem's 4, then ×2 per downsampling)."""
    return model.patch_size // 2 ** (model.n_blocks - 1 - i) if is_convnext(model) else model.patch_size


def _on_grid(model, i: int, tokens: torch.Tensor, size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Layer `i`'s tokens `[B, n, C]` for an input of `size` pixels → a map `[B, h, w, C]` on the output `grid`.
    A ViT's blocks all share the grid; a ConvNeXt's earlier stages are finer and are resized (the released
    `pseudo_patch_size` rule: bilinear, antialiased)."""
    if tokens.shape[1] == grid[0] * grid[1]:
        return tokens.unflatten(1, grid)
    s = layer_stride(model, i)
    fmap = tokens.transpose(1, 2).unflatten(2, (size[0] // s, size[1] // s))  # [B, C, h_i, w_i]
    fmap = F.interpolate(fmap.float(), size=grid, mode="bilinear", antialias=True)  # [B, C, h, w]
    return fmap.permute(0, 2, 3, 1)


@torch.inference_mode()
def _forward(model, x: torch.Tensor, layers: Sequence[int], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One batch `[B, 3, H, W]` → `cls [B, D]`, `registers [B, R, D]`, `patches [B, h, w, D]`, `layer{i}` maps."""
    depth = model.n_blocks  # what get_intermediate_layers counts: blocks (ViT) or stages (ConvNeXt)
    blocks = sorted(set(layers) | {depth - 1})
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        outs = model.get_intermediate_layers(x, n=blocks, return_class_token=True, return_extra_tokens=True)
    h, w = x.shape[-2] // model.patch_size, x.shape[-1] // model.patch_size
    by_block = dict(zip(blocks, outs))
    patches, cls, registers = by_block[depth - 1]
    result = {"cls": cls, "registers": registers, "patches": patches.unflatten(1, (h, w))}
    for i in layers:
        result[f"layer{i}"] = _on_grid(model, i, by_block[i][0], tuple(x.shape[-2:]), (h, w))
    return {k: v.float() for k, v in result.items()}


def features_of_image(
    model, x: torch.Tensor, tile: int | None = None, overlap: int = 0, layers: Sequence[int] = (),
    batch_size: int = 8, dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Features of one preprocessed image `[3, H, W]` (sides multiples of the patch size): `cls [D]`,
    `registers [R, D]`, `patches [h, w, D]`, `layer{i} [h, w, D]`. With `tile` (pixels), the image is cut into
    tiles overlapping by `overlap` pixels and the patch maps are stitched (overlaps averaged)."""
    p = model.patch_size
    grid = (x.shape[-2] // p, x.shape[-1] // p)
    if tile is None:
        return {k: v[0] for k, v in _forward(model, x[None], layers, dtype).items()}
    origins, (th, tw) = tile_grid(grid, tile // p, overlap // p)
    crops = torch.stack([x[:, r * p : (r + th) * p, c * p : (c + tw) * p] for r, c in origins])  # [T, 3, th·p, tw·p]
    parts = [_forward(model, crops[i : i + batch_size], layers, dtype) for i in range(0, len(crops), batch_size)]
    tiles = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
    return {k: v.mean(0) if k in ("cls", "registers") else stitch(v, origins, grid) for k, v in tiles.items()}


# --------------------------------------------------------------------------------------------- writing
@dataclass
class ExtractSettings:
    """Everything that decides the numbers; recorded in `meta.json` and checked when resuming."""

    backbone: str
    preprocessing: dict
    tile: int | None
    overlap: int
    layers: list[int]
    compute_dtype: str
    store_dtype: str
    format: str
    patch_size: int
    embed_dim: int
    num_registers: int
    extra: dict = field(default_factory=dict)


class _ShardWriter:
    """Buffers per-image features and writes them as one shard, then appends the shard's index lines."""

    def __init__(self, out: Path, fmt: str, store_dtype: torch.dtype, first_shard: int) -> None:
        self.out, self.fmt, self.store_dtype = out, fmt, store_dtype
        self.shard = first_shard
        self.rows: list[tuple[str, dict[str, torch.Tensor]]] = []

    def add(self, path: str, feats: dict[str, torch.Tensor], grid: tuple[int, int]) -> None:
        self.rows.append((path, feats, grid))

    def flush(self) -> None:
        if not self.rows:
            return
        name = f"shard-{self.shard:05d}"
        tensors, index, offset = {}, [], 0
        for row, (path, f, (h, w)) in enumerate(self.rows):
            index.append({"path": path, "shard": name, "row": row, "offset": offset, "grid": [h, w]})
            offset += h * w if "patches" in f else 0
        for key in self.rows[0][1]:
            values = [f[key] for _, f, _ in self.rows]
            per_image = key in PER_IMAGE
            stacked = torch.stack(values) if per_image else torch.cat([v.flatten(0, 1) for v in values])
            tensors[key] = stacked.to(self.store_dtype).contiguous()
        if self.fmt == "safetensors":
            from safetensors.torch import save_file

            atomic_write(self.out / f"{name}.safetensors", lambda tmp: save_file(tensors, str(tmp)))
        else:
            tmp = self.out / f".{name}.tmp"
            tmp.mkdir(exist_ok=True)
            for key, t in tensors.items():
                np.save(tmp / f"{key}.npy", t.numpy())
            if (self.out / name).exists():  # an orphan from an interrupted run: never listed in the index
                for f in (self.out / name).iterdir():
                    f.unlink()
                (self.out / name).rmdir()
            os.replace(tmp, self.out / name)
        with open(self.out / "index.jsonl", "a") as fh:
            fh.write("".join(json.dumps(e) + "\n" for e in index))
            fh.flush()
            os.fsync(fh.fileno())
        self.shard += 1
        self.rows = []


def _read_index(out: Path, repair: bool = False) -> list[dict]:
    """The index entries. A last line cut by an interruption is ignored (its shard is redone), and with
    `repair` removed from the file so that new lines start on a line of their own."""
    path = out / "index.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    if repair and text and not text.endswith("\n"):
        with open(path, "r+") as fh:
            fh.truncate(text.rfind("\n") + 1)
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def _collate_list(batch: list):
    return [b for b in batch if b is not None]


def _gather_paths(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    paths: list[Path] = []
    for source in inputs:
        paths += [Path(p).resolve() for p in ImageList.from_source(source).paths]
    return list(dict.fromkeys(paths))  # drop duplicates, keep order


def extract_features(
    model,
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    output: str | os.PathLike,
    size: int | None = None,
    tile: int | None = None,
    overlap: int = 0,
    layers: Sequence[int] = (),
    batch_size: int = 8,
    device: str | torch.device | None = None,
    dtype: str = "fp32",
    store_dtype: str = "float32",
    format: str = "safetensors",
    shard_size: int = 256,
    num_workers: int = 0,
    backbone_name: str = "",
    progress: bool = True,
    pooled: bool = False,
) -> Path:
    """Extract features of every image in `inputs` (images, folders, `.txt`/`.csv` lists) into `output`.

    `size`: shorter side in pixels (None: native size); both sides are rounded to the patch size (at least one
    patch). `tile` and `overlap` (pixels, rounded to the patch size) cut images into tiles whose patch maps are
    stitched. `layers`: 0-based block indices (ConvNeXt: stage indices, see the module docstring) whose
    (final-normed) patch tokens are stored too. Resumable: images already in
    `output/index.jsonl` are skipped. `device` defaults to CUDA when available. `pooled`: store per-image vectors
    only (`patch_mean` instead of the patch maps; no `layers`). Returns the output folder.

    Files that cannot be used (missing, unreadable, or beyond the size limits of `dinokit.data.images`) are
    skipped, counted and listed in `output/skipped.txt`; a `UserError` when none of the listed files exists, or
    none could be used."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    if dtype not in DTYPES or store_dtype not in STORE_DTYPES or format not in ("safetensors", "npy"):
        raise UserError(
            f"dtype must be one of {list(DTYPES)}, store dtype one of {list(STORE_DTYPES)}, format 'safetensors' "
            f"or 'npy'; got {dtype!r}, {store_dtype!r}, {format!r}"
        )
    p = model.patch_size
    depth = model.n_blocks
    layers = sorted({int(i) for i in layers})
    if any(not 0 <= i < depth for i in layers):
        what = "stage indices" if is_convnext(model) else "block indices"
        raise UserError(f"--layers must be {what} in [0, {depth}) for this {depth}-{what.split()[0]} model; "
                        f"got {layers}")  # fmt: skip
    if tile is not None:
        tile = round_to_patch(tile, p)
        overlap = round(overlap / p) * p
        if not 0 <= overlap < tile:
            raise UserError(f"the overlap ({overlap} px after rounding to the patch size) must be in [0, tile={tile})")
    cfg = model.config
    prep = Preprocess(p, size, *model_mean_std(model))
    settings = ExtractSettings(
        backbone=backbone_name or str(cfg.extra.get("source", "")),
        preprocessing={**asdict(prep), "rule": "shorter side → size (native if None), sides rounded to the patch size"},
        tile=tile, overlap=overlap if tile else 0, layers=layers, compute_dtype=dtype, store_dtype=store_dtype,
        format=format, patch_size=p, embed_dim=cfg.embed_dim, num_registers=cfg.num_registers,
        extra={"tiled_cls": "mean over tiles" if tile else None, "norm": "final LayerNorm on all stored tokens"},
    )  # fmt: skip
    if pooled:  # recorded only when set, so that folders written before still resume
        if layers:
            raise UserError("pooled extraction stores per-image vectors only: it takes no --layers")
        settings.extra |= {"pooled": "cls, registers and the mean patch token per image; no patch maps"}
    if is_convnext(model):  # recorded only for ConvNeXts, so that ViT folders written before still resume
        settings.extra |= {"norm": "final LayerNorm on the last stage only (stages 0-2 have none, as released)",
                           "layers": "ConvNeXt stages, widths dims[i], resized to the stride-32 grid"}  # fmt: skip
    paths = _gather_paths(inputs)
    if not any(q.is_file() for q in paths):  # before the output folder is made: a wrong list leaves nothing behind
        example = f" (e.g. {paths[0]})" if paths else ""
        raise UserError(f"nothing to do: none of the {len(paths)} listed file(s) exists{example}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads(json.dumps(asdict(settings)))  # normalise tuples → lists, as read back
    if (out / "meta.json").exists():
        previous = json.loads((out / "meta.json").read_text())
        if previous != meta:
            diff = sorted(k for k in meta if previous.get(k) != meta[k])
            raise UserError(f"{out} holds features extracted with other settings ({', '.join(diff)}); "
                            "use another --output folder")  # fmt: skip
    else:
        atomic_write_text(out / "meta.json", json.dumps(meta, indent=2))

    index = _read_index(out, repair=True)
    done = {e["path"] for e in index}
    todo = [q for q in paths if str(q) not in done]
    shards = [int(e["shard"].split("-")[1]) for e in index]
    writer = _ShardWriter(out, format, STORE_DTYPES[store_dtype], first_shard=max(shards, default=-1) + 1)
    if not todo:
        print(f"all images already extracted in {out}")
        return out
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    dataset = ImageDataset(ImageList(todo), prep)
    loader = DataLoader(dataset, batch_size=batch_size if tile is None else 1, num_workers=num_workers,
                        collate_fn=_collate_list)  # fmt: skip
    compute = DTYPES[dtype]
    with tqdm(total=len(todo), desc="extract", unit="img", disable=not progress) as bar:
        for batch in loader:
            for x, group in _group_by_shape(batch):
                if tile is None:
                    feats = _forward(model, x.to(device), layers, compute)
                    per_image = [{k: v[j] for k, v in feats.items()} for j in range(len(group))]
                else:
                    per_image = [features_of_image(model, xi.to(device), tile, overlap, layers, batch_size, compute)
                                 for xi in x]  # fmt: skip
                for i, f in zip(group, per_image):
                    grid = tuple(f["patches"].shape[:2])
                    if pooled:  # the mean over the patch grid [D], taken before the storage dtype rounds the tokens
                        f = {"cls": f["cls"], "registers": f["registers"],
                             "patch_mean": f["patches"].float().mean((0, 1))}  # fmt: skip
                    writer.add(str(todo[i]), {k: v.cpu() for k, v in f.items()}, grid)
                    if len(writer.rows) >= shard_size:
                        writer.flush()
            bar.update(min(loader.batch_size, len(todo) - bar.n))  # unreadable images count as done too
    writer.flush()
    extracted = {e["path"] for e in _read_index(out)}
    missing = sorted(set(map(str, todo)) - extracted)
    if missing:
        atomic_write_text(out / "skipped.txt", "".join(m + "\n" for m in missing))
        if not extracted:
            raise UserError(f"none of the {len(todo)} image(s) could be used (unreadable, or beyond the size limits "
                            f"of dinokit.data.images); they are listed in {out / 'skipped.txt'}")  # fmt: skip
        print(f"skipped {len(missing)} image(s), unreadable or beyond the size limits; listed in {out / 'skipped.txt'}")
    return out


def _group_by_shape(batch: list) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Items `(image, label, index)` of varying sizes → stacked groups of one shape with their dataset indices."""
    groups: dict[tuple, list] = {}
    for img, _, i in batch:
        groups.setdefault(tuple(img.shape), []).append((img, i))
    for items in groups.values():
        yield torch.stack([img for img, _ in items]), [i for _, i in items]


# --------------------------------------------------------------------------------------------- reading
class FeatureStore(Mapping):
    """Read-only view of an extraction folder: `store[path]` → dict of numpy arrays. Shards are opened lazily."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if not (self.folder / "meta.json").exists():
            raise UserError(f"{self.folder}: not a feature folder (no meta.json); run `dinokit extract` first")
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.entries = {e["path"]: e for e in _read_index(self.folder)}
        self._open: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def _key(self, path: str | os.PathLike) -> str:
        key = str(path)
        return key if key in self.entries else str(Path(path).resolve())

    def __contains__(self, path) -> bool:
        return self._key(path) in self.entries

    def __getitem__(self, path: str | os.PathLike) -> dict[str, np.ndarray]:
        key = self._key(path)
        if key not in self.entries:
            raise KeyError(path)
        e = self.entries[key]
        (h, w), row, start = e["grid"], e["row"], e["offset"]
        arrays = self._shard(e["shard"])
        out = {}
        for name, arr in arrays.items():
            if name in PER_IMAGE:
                out[name] = np.asarray(arr[row : row + 1])[0]
            else:
                out[name] = np.asarray(arr[start : start + h * w]).reshape(h, w, -1)
        return out

    def _shard(self, name: str) -> dict:
        if name not in self._open:
            if self.meta["format"] == "npy":
                files = sorted((self.folder / name).glob("*.npy"))
                self._open[name] = {f.stem: np.load(f, mmap_mode="r") for f in files}
            else:
                from safetensors import safe_open

                handle = safe_open(str(self.folder / f"{name}.safetensors"), framework="numpy")
                self._open[name] = {k: handle.get_slice(k) for k in handle.keys()}
        return self._open[name]

    def vectors(self, source: str = "cls") -> tuple[list[str], np.ndarray]:
        """One vector per image, `[N, D]` in index order: the CLS token, or (`"patches"`) the mean patch token."""
        paths, blocks = [], []
        for names, block in self.iter_vectors(source):
            paths += names
            blocks.append(block)
        return paths, np.concatenate(blocks) if blocks else np.zeros((0, self.meta["embed_dim"]), np.float32)

    def iter_vectors(self, source: str = "cls") -> Iterator[tuple[list[str], np.ndarray]]:
        """The vectors of `vectors`, one shard at a time: (image paths, float32 `[n, D]`), so that a pool larger
        than memory can be streamed."""
        by_shard: dict[str, list[dict]] = {}
        for e in self.entries.values():
            by_shard.setdefault(e["shard"], []).append(e)
        for name, entries in by_shard.items():
            arrays = self._shard(name)
            rows = np.array([e["row"] for e in entries])  # [n]
            if source == "cls":
                block = np.asarray(arrays["cls"][:], dtype=np.float32)[rows]  # [n, D]
            elif "patch_mean" in arrays:
                block = np.asarray(arrays["patch_mean"][:], dtype=np.float32)[rows]  # [n, D]
            else:  # mean of each image's stretch of the concatenated patch tokens
                patches = np.asarray(arrays["patches"][:], dtype=np.float32)  # [Σ h·w, D]
                block = np.stack([patches[e["offset"] : e["offset"] + e["grid"][0] * e["grid"][1]].mean(0)
                                  for e in entries])  # fmt: skip
            yield [e["path"] for e in entries], block


def read_features(folder: str | os.PathLike) -> FeatureStore:
    """Features written by `extract_features`: a mapping image path → `{"cls": [D], "registers": [R, D],
    "patches": [h, w, D], "layer{i}": [h, w, D]}` (numpy). Paths are the absolute paths of the images."""
    return FeatureStore(folder)
