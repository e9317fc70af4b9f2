"""The file-to-file steps behind `dinokit curate cluster` and `dinokit curate sample` (their Python twins).

`cluster` writes to its folder: `names.txt` (the name of every clustered row, in the tree's row order),
`summary.json` (the settings, the input's identity and the cluster sizes per level), then the tree (`Tree.save`,
whose `tree.json` comes last and so marks a finished run). A rerun into a finished folder reuses it when the
settings and the input (its row names and shape) are the same, and refuses otherwise, so a tree never silently
mixes two runs. `sample` writes `keep.txt` (the chosen names, in row order) and `summary.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..errors import ConfigError, UserError
from .embeddings import open_embeddings, read_names, write_keep
from .kmeans import Tree, hierarchical_kmeans
from .sampling import balanced_sample


def size_summary(sizes) -> dict:
    """Cluster sizes [k] in a few numbers: quantiles, the empty clusters and a histogram on powers of two."""
    sizes = np.asarray(sizes, dtype=np.int64)
    q = np.quantile(sizes, [0, 0.1, 0.5, 0.9, 1]) if len(sizes) else np.zeros(5)
    bins = {}
    for s in sizes[sizes > 0]:
        lo = 1 << (int(s).bit_length() - 1)  # the bin [lo, 2·lo) holding s
        bins[lo] = bins.get(lo, 0) + 1
    return {
        "clusters": len(sizes),
        "points": int(sizes.sum()),
        "empty": int((sizes == 0).sum()),
        **{name: float(v) for name, v in zip(["min", "p10", "median", "p90", "max"], q)},
        "histogram": {(str(lo) if lo == 1 else f"{lo}-{2 * lo - 1}"): n for lo, n in sorted(bins.items())},
    }


def _identity(names: list[str], dim: int) -> dict:
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return {"points": len(names), "dim": dim, "names_sha256": digest}


def cluster(embeddings: str | os.PathLike, output: str | os.PathLike, levels: list[int],
            resampling_steps: list[int] | None = None, sample_sizes: list[int] | None = None, iters: int = 50,
            seed: int = 0, subset: str | os.PathLike | None = None, device=None,
            progress: bool = True) -> dict:  # fmt: skip
    """Hierarchical k-means of the pool `embeddings` (see `open_embeddings`) into `output`; returns the summary
    (with "reused": True when a finished run with the same settings and input was found there)."""
    levels = list(levels)
    resampling_steps = list(resampling_steps or [1] * len(levels))
    sample_sizes = list(sample_sizes or [1] * len(levels))
    if not levels or any(k < 1 for k in levels) or any(a <= b for a, b in zip(levels, levels[1:])):
        raise ConfigError(f"--levels must be decreasing positive cluster counts such as 10000,1000,100, got {levels}")
    for name, values in (("--resampling-steps", resampling_steps), ("--sample-sizes", sample_sizes)):
        if len(values) != len(levels) or any(v < 1 for v in values):
            raise ConfigError(f"{name} needs one positive integer per level ({len(levels)}), got {values}")
    if iters < 0:
        raise ConfigError(f"--iters must be at least 0, got {iters}")
    pool = open_embeddings(embeddings, subset)
    if len(pool) < levels[0]:
        raise UserError(f"{pool.source}: {len(pool)} rows cannot make {levels[0]} clusters (the first level)")
    settings = {"levels": levels, "resampling_steps": resampling_steps, "sample_sizes": sample_sizes,
                "iters": iters, "seed": seed}  # fmt: skip
    identity = _identity(pool.names, pool.dim)
    out = Path(output)
    if (out / "tree.json").is_file() and (out / "summary.json").is_file():
        done = json.loads((out / "summary.json").read_text())
        if done.get("settings") == settings and done.get("input") == identity:
            return {**done, "reused": True}
        what = "settings" if done.get("settings") != settings else "input rows"
        raise UserError(f"{out} already holds a tree made with other {what} ({done.get('settings')} on "
                        f"{done.get('source')}); choose another --output")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    tree = hierarchical_kmeans(pool.vectors, levels, resampling_steps, sample_sizes, iters, seed, device=device,
                               progress=progress)  # fmt: skip
    summary = {
        "step": "cluster",
        "source": pool.source,
        "subset": str(Path(subset).resolve()) if subset is not None else None,
        "settings": settings,
        "input": identity,
        "levels": {str(lv): size_summary(tree.flat_sizes(lv)) for lv in range(1, tree.n_levels + 1)},
    }
    write_keep(out / "names.txt", pool.names)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    tree.save(out)  # tree.json last: the run is finished
    return {**summary, "reused": False}


def sample(tree_dir: str | os.PathLike, output: str | os.PathLike, size: int, strategy: str = "random",
           seed: int = 0, embeddings: str | os.PathLike | None = None) -> dict:  # fmt: skip
    """A balanced sample of `size` rows of the tree in `tree_dir` (written by `cluster`) into `output/keep.txt`;
    "closest" reads the pool `embeddings` (the one clustered) to rank each leaf's points. Returns the summary."""
    if size < 1:
        raise ConfigError(f"--size must be at least 1, got {size}")
    if strategy not in ("random", "closest"):
        raise ConfigError(f"--strategy must be random or closest, got {strategy!r}")
    if strategy == "closest" and embeddings is None:
        raise ConfigError("--strategy closest ranks points by their distance to the centroids: pass --embeddings")
    folder = Path(tree_dir)
    if not (folder / "tree.json").is_file() or not (folder / "names.txt").is_file():
        raise UserError(f"{folder}: not a finished `dinokit curate cluster` folder (no tree.json or names.txt)")
    tree = Tree.load(folder, mmap=True)
    names = read_names(folder / "names.txt")
    if len(names) != tree.n_points:
        raise UserError(f"{folder}: names.txt has {len(names)} names for a tree of {tree.n_points} points")
    x = None
    if strategy == "closest":
        made = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
        pool = open_embeddings(embeddings, made.get("subset"))  # the rows clustered, in the tree's order
        if pool.names != names or pool.dim != tree.centroids[0].shape[1]:
            raise UserError(f"{embeddings}: these embeddings are not the rows the tree in {folder} was made from")
        x = pool.vectors
    rows = balanced_sample(tree, size, strategy, seed, x)
    top = tree.n_levels
    paths = tree.paths()  # [N, L]
    summary = {
        "step": "sample",
        "tree": str(folder),
        "settings": {"size": size, "strategy": strategy, "seed": seed},
        "pool": tree.n_points,
        "sampled": len(rows),
        "before": {str(lv): size_summary(tree.flat_sizes(lv)) for lv in range(1, top + 1)},
        "after": {str(lv): size_summary(np.bincount(paths[rows, lv - 1], minlength=len(tree.centroids[lv - 1])))
                  for lv in range(1, top + 1)},  # fmt: skip
    }
    out = Path(output)
    write_keep(out / "keep.txt", [names[i] for i in rows])
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
