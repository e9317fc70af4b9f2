"""`dinokit curate embed`: images → one L2-normalised embedding per image, the pool every other curation step reads.

The step is `dinokit extract` (its code, format and resumption) followed by an assembly:
- `DIR/features/`: an extraction folder (`extract_features`), resumable as extract is: a rerun skips the images
  already there and refuses a folder extracted with other settings;
- `DIR/embeddings.npy` `[N, D]` (float16 or float32, memory-mappable) and `DIR/embeddings.names.txt` (the absolute
  path of each row's image): the CLS token, or the mean patch token, of every input image extracted, L2-normalised,
  in extraction order. This is the `<stem>.names.txt` convention of `open_embeddings`, which also takes `DIR` itself;
- `DIR/summary.json`, written last: it marks a finished run, so a rerun with the same settings and inputs reuses the
  embeddings, and one with another `source` is refused (the other settings are checked by the extraction).

Limits, later work: the final `.npy` is assembled in memory (N × D float32 while normalising), and `torchrun`
sharding of the extraction across ranks is not done here; a streamed writer over the shards would lift the first.
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


def embed(inputs: Sequence[str | os.PathLike] | str | os.PathLike, backbone, output: str | os.PathLike,
          size: int | None = 224, dtype: str = "fp32", device=None, batch_size: int = 8,
          store_dtype: str = "float16", source: str = "cls", num_workers: int = 0, backbone_name: str = "",
          progress: bool = True) -> dict:  # fmt: skip
    """Embed the images of `inputs` (images, folders, `.txt`/`.csv` lists) with `backbone` (a `--backbone` spec
    such as `official:dinov2_vits14`, or a model, then named by `backbone_name`) into `output` (see the module
    docstring). `size`: shorter side in pixels (None: native size). `source`: "cls" or "patches" (mean patch token).
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
    from ..tools.extract import _gather_paths, extract_features, read_features

    model = backbone_from_spec(backbone) if isinstance(backbone, str) else backbone
    features = extract_features(model, inputs, out / "features", size=size, batch_size=batch_size, device=device,
                                dtype=dtype, store_dtype=store_dtype, num_workers=num_workers, backbone_name=name,
                                progress=progress)  # fmt: skip
    store = read_features(features)
    wanted = {str(p) for p in _gather_paths(inputs)}
    names, vectors = store.vectors(source)  # [N_all, D] float32, in memory (see the module docstring)
    # the folder may hold images of an earlier run's inputs too: the pool is the images asked for now
    rows = [i for i, n in enumerate(names) if n in wanted]
    names = [names[i] for i in rows]
    if not names:
        raise UserError(f"{features}: none of the {len(wanted)} input image(s) could be embedded")
    identity = {"images": len(names), "dim": int(vectors.shape[1]),
                "names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}  # fmt: skip
    if done is not None and done.get("input") == identity and (out / "embeddings.npy").is_file():
        return {**done, "reused": True}
    x = vectors[rows]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # unit rows: inner product = cosine
    x = x.astype(store_dtype)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
            np.save(f, x)

    summary_file.unlink(missing_ok=True)  # the run is unfinished until the new summary is written
    atomic_write(out / "embeddings.npy", save, size=x.nbytes + 128)
    write_keep(out / "embeddings.names.txt", names)
    summary = {
        "step": "embed",
        "inputs": [str(i) for i in inputs],
        "settings": settings,
        "input": identity,
        "images": len(names),
        "skipped": len(wanted) - len(names),  # unreadable, missing or beyond the size limits (features/skipped.txt)
        "dim": identity["dim"],
        "embeddings": str(out / "embeddings.npy"),
    }
    atomic_write_text(summary_file, json.dumps(summary, indent=1) + "\n")  # last: the run is finished
    return {**summary, "reused": False}
