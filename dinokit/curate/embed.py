"""`dinokit curate embed`: images → one L2-normalised embedding per image, the pool every other curation step reads.

The step is `dinokit extract` (its code, format and resumption) in its pooled form, followed by an assembly:
- `DIR/features/`: an extraction folder (`extract_features(pooled=True)`: per-image CLS, registers and mean patch
  token, no patch maps), resumable as extract is: a rerun skips the images already there and refuses a folder
  extracted with other settings. Under `torchrun`, rank r of W extracts every W-th image into
  `DIR/features/rank-r-of-W/`; a rerun with the same number of ranks resumes each rank's folder;
- `DIR/embeddings.npy` `[N, D]` (float16 or float32, memory-mappable) and `DIR/embeddings.names.txt` (the absolute
  path of each row's image): the CLS token, or the mean patch token, of every input image extracted, L2-normalised,
  in input order (the same for any number of ranks). Rank 0 writes it after every rank has finished, streaming the
  shards into a memory-mapped file, so memory holds one shard and the N image paths, never the pool. This is the
  `<stem>.names.txt` convention of `open_embeddings`, which also takes `DIR` itself;
- `DIR/summary.json`, written last: it marks a finished run, so a rerun with the same settings and inputs reuses the
  embeddings, and one with another `source` is refused (the other settings are checked by the extraction).

Limit: a rerun with another number of ranks extracts again the images held in the other ranks' folders (the
assembly reads every folder, so nothing is lost, but the work is redone).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_write, atomic_write_text
from ..errors import ConfigError, UserError
from .embeddings import write_keep

SOURCES = ("cls", "patches")


def _ranks() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    import torch.distributed as dist

    from ..train.distributed import is_enabled

    return (dist.get_rank(), dist.get_world_size()) if is_enabled() else (0, 1)


def _all_ok(ok: bool, world: int) -> bool:
    """Whether every rank is ok (a collective: also a barrier)."""
    if world == 1:
        return ok
    import torch
    import torch.distributed as dist

    flag = torch.tensor([int(ok)])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _feature_folders(features: Path) -> list[Path]:
    """The extraction folders under `features`: itself (one process) and one per rank of any earlier run."""
    return [f for f in [features, *sorted(features.glob("rank-*-of-*"))] if (f / "meta.json").is_file()]


def embed(inputs: Sequence[str | os.PathLike] | str | os.PathLike, backbone, output: str | os.PathLike,
          size: int | None = 224, dtype: str = "fp32", device=None, batch_size: int = 8,
          store_dtype: str = "float16", source: str = "cls", num_workers: int = 0, backbone_name: str = "",
          progress: bool = True) -> dict:  # fmt: skip
    """Embed the images of `inputs` (images, folders, `.txt`/`.csv` lists) with `backbone` (a `--backbone` spec
    such as `official:dinov2_vits14`, or a model, then named by `backbone_name`) into `output` (see the module
    docstring). `size`: shorter side in pixels (None: native size). `source`: "cls" or "patches" (mean patch token).
    Under torchrun (torch.distributed initialised) every rank calls it and embeds its share of the images.
    Returns the summary (images, skipped, dim, …; "reused": True when a finished run was found)."""
    if source not in SOURCES:
        raise ConfigError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    if store_dtype not in ("float16", "float32"):
        raise ConfigError(f"--store-dtype must be float16 or float32, got {store_dtype!r}")
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    name = backbone if isinstance(backbone, str) else backbone_name
    settings = {"backbone": name, "size": size, "dtype": dtype, "store_dtype": store_dtype, "source": source}
    out = Path(output)
    summary_file = out / "summary.json"
    done = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    if done is not None and done.get("settings") != settings:
        # checked before the (slow) extraction, which would only catch the settings it records itself
        raise UserError(f"{out} already holds embeddings made with other settings ({done.get('settings')}); "
                        "choose another --output")  # fmt: skip

    from ..models import backbone_from_spec
    from ..tools.extract import _gather_paths, extract_features

    rank, world = _ranks()
    wanted = [str(p) for p in _gather_paths(inputs)]  # the pool's row order, whatever the number of ranks
    mine = wanted[rank::world]
    features = out / "features" if world == 1 else out / "features" / f"rank-{rank}-of-{world}"
    model = backbone_from_spec(backbone) if isinstance(backbone, str) else backbone
    try:
        if mine:
            extract_features(model, mine, features, size=size, batch_size=batch_size, device=device, dtype=dtype,
                             store_dtype=store_dtype, num_workers=num_workers, backbone_name=name,
                             progress=progress and rank == 0, pooled=True)  # fmt: skip
    except Exception:
        _all_ok(False, world)  # release the other ranks before raising here
        raise
    if not _all_ok(True, world):  # every rank's features are on disk, or one rank failed and said why
        raise UserError(f"curate embed: another rank failed (its message says why); rank {rank} stops too")
    if rank == 0:
        try:
            summary = _assemble(out, inputs, wanted, settings, done, source, store_dtype)
        except Exception:
            _all_ok(False, world)
            raise
        _all_ok(True, world)
        return summary
    if not _all_ok(True, world):  # the others wait for rank 0's assembly
        raise UserError("curate embed: rank 0 failed to assemble the embeddings (its message says why)")
    return json.loads(summary_file.read_text())


def _assemble(out: Path, inputs, wanted: list[str], settings: dict, done: dict | None, source: str,
              store_dtype: str) -> dict:  # fmt: skip
    """Stream the extracted vectors of the `wanted` images, in that order, into `out/embeddings.npy`."""
    from ..tools.extract import read_features

    stores = [read_features(f) for f in _feature_folders(out / "features")]
    available = set().union(*(s.entries for s in stores)) if stores else set()
    names = [n for n in wanted if n in available]  # the folder may hold an earlier run's images too
    if not names:
        raise UserError(f"{out / 'features'}: none of the {len(wanted)} input image(s) could be embedded")
    dim = int(stores[0].meta["embed_dim"])
    identity = {"images": len(names), "dim": dim,
                "names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}  # fmt: skip
    summary_file = out / "summary.json"
    if done is not None and done.get("input") == identity and (out / "embeddings.npy").is_file():
        return {**done, "reused": True}
    row_of = {n: r for r, n in enumerate(names)}

    def save(tmp: Path) -> None:
        x = np.lib.format.open_memmap(tmp, mode="w+", dtype=store_dtype, shape=(len(names), dim))  # [N, D] on disk
        for store in stores:
            for paths, block in store.iter_vectors(source):  # one shard: paths [n], block [n, D] float32
                keep = [j for j, p in enumerate(paths) if p in row_of]
                block = block[keep]
                block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)  # inner product = cosine
                x[[row_of[paths[j]] for j in keep]] = block.astype(store_dtype)
        x.flush()
        del x

    summary_file.unlink(missing_ok=True)  # the run is unfinished until the new summary is written
    atomic_write(out / "embeddings.npy", save, size=len(names) * dim * np.dtype(store_dtype).itemsize + 128)
    write_keep(out / "embeddings.names.txt", names)
    summary = {
        "step": "embed",
        "inputs": [str(i) for i in inputs],
        "settings": settings,
        "input": identity,
        "images": len(names),
        "skipped": len(wanted) - len(names),  # unreadable, missing or beyond the size limits (features/skipped.txt)
        "dim": dim,
        "embeddings": str(out / "embeddings.npy"),
    }
    atomic_write_text(summary_file, json.dumps(summary, indent=1) + "\n")  # last: the run is finished
    return {**summary, "reused": False}
