"""The file-to-file steps behind `dinokit curate cluster` and `dinokit curate sample` (their Python twins).

`cluster` writes to its folder each level as it finishes (its arrays, then a `level{l}.json` marker naming the
settings and the input, so that a rerun after an interruption takes the finished levels back), then `names.txt`
(the name of every clustered row, in the tree's row order), `summary.json` (the settings, the input's identity and
the cluster sizes per level) and the tree (`Tree.save`, whose `tree.json` comes last and so marks a finished run;
the markers are removed then). A rerun into a finished folder reuses it when the settings and the input (its row
names and shape) are the same, and refuses otherwise, so a tree never silently mixes two runs. `sample` writes
`keep.txt` (the chosen names, in row order) and `summary.json`.

`dedup` writes `keep.txt` (one representative per near-duplicate group), `groups.json` and `summary.json`;
`decontaminate` writes `keep.txt` (the pool rows kept), `dropped.txt` and `summary.json`; `retrieve` writes
`keep.txt` (the pool rows retrieved near the seeds) and `summary.json`. For these three, `summary.json` comes last
and marks a finished run, reused or refused on a rerun the way `cluster`'s tree is.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..errors import ConfigError, UserError
from .dedup import CODES, INDEXES, groups_json, near_duplicate_groups, representatives
from .dedup import decontaminate as _decontaminate
from .embeddings import RowSubset, open_embeddings, read_names, write_keep
from .kmeans import INITS, Tree, hierarchical_kmeans
from .retrieval import cluster_retrieval, retrieve_per_seed
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


def _header(step: str, pool, subset, settings: dict, identity: dict) -> dict:
    """What every step's summary.json starts with: the step, its input and its settings."""
    return {"step": step, "source": pool.source, "subset": str(Path(subset).resolve()) if subset is not None else None,
            "settings": settings, "input": identity}  # fmt: skip


def _finished(out: Path, step: str, marker: str, what: str, settings: dict, identity) -> dict | None:
    """The summary of a finished `step` in `out` (its `marker` file and summary.json exist) made with the same
    `settings` from the same input, marked "reused"; None when `out` holds no finished run; a UserError when it
    holds one made otherwise or by another step, so that a rerun never silently mixes two runs' outputs."""
    if not (out / "summary.json").is_file():
        return None
    done = json.loads((out / "summary.json").read_text())
    if done.get("step", step) != step:
        raise UserError(f"{out} holds the output of `dinokit curate {done['step']}`; choose another --output")
    if not (out / marker).is_file():
        return None  # an interrupted run: start again
    if done.get("settings") == settings and done.get("input") == identity:
        return {**done, "reused": True}
    other = "settings" if done.get("settings") != settings else "input rows"
    raise UserError(f"{out} already holds {what} made with other {other} ({done.get('settings')} on "
                    f"{done.get('source')}); choose another --output")  # fmt: skip


def _rank_share(vectors):
    """This rank's contiguous share of the rows under torchrun (all of them otherwise), and whether it is rank 0."""
    import torch.distributed as dist

    from ..train.distributed import is_enabled

    if not is_enabled():
        return vectors, True
    rank, world, n = dist.get_rank(), dist.get_world_size(), len(vectors)
    lo, hi = n * rank // world, n * (rank + 1) // world
    share = RowSubset(vectors.base, vectors.rows[lo:hi]) if isinstance(vectors, RowSubset) else vectors[lo:hi]
    return share, rank == 0


def cluster(embeddings: str | os.PathLike, output: str | os.PathLike, levels: list[int],
            resampling_steps: list[int] | None = None, sample_sizes: list[int] | None = None, iters: int = 50,
            seed: int = 0, subset: str | os.PathLike | None = None, device=None, progress: bool = True,
            init: str = "auto") -> dict:  # fmt: skip
    """Hierarchical k-means of the pool `embeddings` (see `open_embeddings`) into `output`; returns the summary
    (with "reused": True when a finished run with the same settings and input was found there). Each finished
    level is saved as it ends, so a rerun after an interruption starts at the level that was in progress.
    Under `torchrun` every rank clusters its share of the rows (level 1 all-reduces its sums, `kmeans`) and rank 0
    writes the folder, which every rank must be able to read."""
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
    if init not in INITS:
        raise ConfigError(f"--init must be one of {', '.join(INITS)}, got {init!r}")
    pool = open_embeddings(embeddings, subset)
    if len(pool) < levels[0]:
        raise UserError(f"{pool.source}: {len(pool)} rows cannot make {levels[0]} clusters (the first level)")
    settings = {"levels": levels, "resampling_steps": resampling_steps, "sample_sizes": sample_sizes,
                "iters": iters, "seed": seed, "init": init}  # fmt: skip
    identity = _identity(pool.names, pool.dim)
    out = Path(output)
    done = _finished(out, "cluster", "tree.json", "a tree", settings, identity)
    if done is not None:
        return done
    share, writer = _rank_share(pool.vectors)
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    # each finished level is kept in `out` under a marker naming these settings and this input
    tree = hierarchical_kmeans(share, levels, resampling_steps, sample_sizes, iters, seed, device=device,
                               progress=progress, init=init, resume=out,
                               fingerprint={"settings": settings, "input": identity})  # fmt: skip
    summary = {
        **_header("cluster", pool, subset, settings, identity),
        "levels": {str(lv): size_summary(tree.flat_sizes(lv)) for lv in range(1, tree.n_levels + 1)},
    }
    if writer:
        write_keep(out / "names.txt", pool.names)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
        tree.save(out)  # tree.json last: the run is finished
        for marker in out.glob("level*.json"):  # the finished tree supersedes the per-level markers
            marker.unlink()
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


def _search_settings(threshold: float, k: int, index: str, seed: int, codes: str) -> dict:
    """The near-duplicate search settings of `dedup` and `decontaminate`, checked."""
    if not 0 < threshold <= 1:
        # ≤ 0 would join nearly every pair of neighbours: certainly a mistake, not a setting
        raise ConfigError(f"--threshold is a cosine similarity in (0, 1], got {threshold}")
    if k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    if index not in INDEXES:
        raise ConfigError(f"--index must be one of {', '.join(INDEXES)}, got {index!r}")
    if codes not in CODES:
        raise ConfigError(f"--codes must be one of {', '.join(CODES)}, got {codes!r}")
    # scratch_dir is left out: where the index lives changes no result
    return {"threshold": float(threshold), "k": int(k), "index": index, "seed": int(seed), "codes": codes}


def dedup(embeddings: str | os.PathLike, output: str | os.PathLike, threshold: float, k: int = 64,
          index: str = "auto", subset: str | os.PathLike | None = None, seed: int = 0, codes: str = "fp16",
          scratch_dir: str | os.PathLike | None = None) -> dict:  # fmt: skip
    """Near-duplicate groups of the pool `embeddings` (see `open_embeddings`) at cosine ≥ `threshold` among the `k`
    nearest neighbours (`near_duplicate_groups`), one representative kept per group: the group's first row in pool
    order, so the choice is deterministic. Writes `output/keep.txt`, `output/groups.json` ({representative: [every
    member]}, groups of ≥ 2 only) and `output/summary.json`; returns the summary ("reused": True when a finished run
    with the same settings and input was found in `output`). `codes` and `scratch_dir`: see
    `near_duplicate_groups`."""
    settings = _search_settings(threshold, k, index, seed, codes)
    pool = open_embeddings(embeddings, subset)
    identity = _identity(pool.names, pool.dim)
    out = Path(output)
    done = _finished(out, "dedup", "keep.txt", "a dedup result", settings, identity)
    if done is not None:
        return done
    labels = near_duplicate_groups(pool.vectors, threshold, k, index, seed=seed, codes=codes, scratch_dir=scratch_dir)
    keep = representatives(labels)
    sizes = np.bincount(labels)
    summary = {
        **_header("dedup", pool, subset, settings, identity),
        "rows": len(pool),
        "kept": len(keep),
        "removed": len(pool) - len(keep),
        "groups": int((sizes >= 2).sum()),  # groups with at least one duplicate
        "largest_group": int(sizes.max()),
        "group_sizes": size_summary(sizes[sizes >= 2]),
    }
    write_keep(out / "keep.txt", [pool.names[i] for i in keep])
    groups = groups_json(labels, pool.names, keep)
    atomic_write_text(out / "groups.json", json.dumps(groups, indent=1) + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")  # last: the run is finished
    return {**summary, "reused": False}


def decontaminate(embeddings: str | os.PathLike, against: list[str | os.PathLike], output: str | os.PathLike,
                  threshold: float, k: int = 64, index: str = "auto", subset: str | os.PathLike | None = None,
                  seed: int = 0, codes: str = "fp16",
                  scratch_dir: str | os.PathLike | None = None) -> dict:  # fmt: skip
    """Drop from the pool `embeddings` every row whose near-duplicate group (cosine ≥ `threshold` among `k`
    neighbours, in the graph of the pool and the evaluation sets) touches a row of one of the evaluation pools
    `against` (each as `open_embeddings` reads; whole sets, no subset). Writes `output/keep.txt` (the rows kept,
    in pool order), `output/dropped.txt` and `output/summary.json`; returns the summary (with "reused")."""
    settings = _search_settings(threshold, k, index, seed, codes)
    if isinstance(against, str | os.PathLike):
        against = [against]
    if not against:
        raise ConfigError("--against needs at least one evaluation embeddings file or folder")
    pool = open_embeddings(embeddings, subset)
    evals = [open_embeddings(a) for a in against]
    for e in evals:
        if e.dim != pool.dim:
            raise UserError(f"{e.source}: {e.dim}-dimensional embeddings, but the pool {pool.source} has {pool.dim}; "
                            "embed both with the same backbone")  # fmt: skip
    # the evaluation sets are part of the input: another --against must not reuse this result
    identity = {**_identity(pool.names, pool.dim), "against": [_identity(e.names, e.dim) for e in evals]}
    out = Path(output)
    done = _finished(out, "decontaminate", "keep.txt", "a decontamination result", settings, identity)
    if done is not None:
        return done
    drop = _decontaminate(pool.vectors, [e.vectors for e in evals], threshold, k, index, seed=seed, codes=codes,
                          scratch_dir=scratch_dir)  # fmt: skip
    summary = {
        **_header("decontaminate", pool, subset, settings, identity),
        "against": [{"source": e.source, "rows": len(e)} for e in evals],
        "rows": len(pool),
        "kept": int((~drop).sum()),
        "dropped": int(drop.sum()),
    }
    write_keep(out / "keep.txt", [n for n, d in zip(pool.names, drop) if not d])
    write_keep(out / "dropped.txt", [n for n, d in zip(pool.names, drop) if d])
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")  # last: the run is finished
    return {**summary, "reused": False}


def _retrieve_settings(mode: str, k, threshold, index, clusters, per_cluster, min_seeds, iters, seed) -> dict:
    """The settings of `retrieve` in `mode`, checked; an option of the other mode is refused rather than ignored."""
    per_seed = {"--k": k, "--threshold": threshold, "--index": index}
    by_cluster = {"--clusters": clusters, "--per-cluster": per_cluster, "--min-seeds": min_seeds, "--iters": iters}
    if mode not in ("per-seed", "clusters"):
        raise ConfigError(f"--mode must be per-seed or clusters, got {mode!r}")
    other = by_cluster if mode == "per-seed" else per_seed
    given = [name for name, value in other.items() if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} belong(s) to the other --mode, not to --mode {mode}")
    if mode == "per-seed":
        k = 4 if k is None else k  # DINOv2's k for large seed sets (it used 32 for a single seed image)
        if k < 1:
            raise ConfigError(f"--k must be at least 1, got {k}")
        if threshold is not None and not 0 < threshold <= 1:
            raise ConfigError(f"--threshold is a cosine similarity in (0, 1], got {threshold}")
        index = "auto" if index is None else index
        if index not in INDEXES:
            raise ConfigError(f"--index must be one of {', '.join(INDEXES)}, got {index!r}")
        return {"mode": mode, "k": int(k), "threshold": None if threshold is None else float(threshold),
                "index": index, "seed": int(seed)}  # fmt: skip
    if clusters is None or per_cluster is None:
        raise ConfigError("--mode clusters needs --clusters (k-means clusters of the pool) and --per-cluster "
                          "(pool images taken from each cluster with enough seeds)")  # fmt: skip
    min_seeds = 3 if min_seeds is None else min_seeds  # DINOv2's rule
    iters = 50 if iters is None else iters
    if clusters < 1 or per_cluster < 1 or min_seeds < 1 or iters < 0:
        raise ConfigError(f"--clusters, --per-cluster and --min-seeds must be at least 1 and --iters at least 0, got "
                          f"{clusters}, {per_cluster}, {min_seeds}, {iters}")  # fmt: skip
    return {"mode": mode, "clusters": int(clusters), "per_cluster": int(per_cluster), "min_seeds": int(min_seeds),
            "iters": int(iters), "seed": int(seed)}  # fmt: skip


def retrieve(embeddings: str | os.PathLike, seeds: str | os.PathLike, output: str | os.PathLike,
             mode: str = "per-seed", k: int | None = None, threshold: float | None = None, index: str | None = None,
             clusters: int | None = None, per_cluster: int | None = None, min_seeds: int | None = None,
             iters: int | None = None, subset: str | os.PathLike | None = None, seed: int = 0,
             device=None) -> dict:  # fmt: skip
    """The pool images of `embeddings` near the seed images `seeds` (both as `open_embeddings` reads; `subset`
    restricts the pool only). `mode` "per-seed": the union of the `k` nearest pool rows of each seed (default 4),
    with cosine ≥ `threshold` when given (`retrieve_per_seed`); "clusters": k-means of the pool into `clusters`,
    then the `per_cluster` rows nearest the centroid of each cluster holding ≥ `min_seeds` seeds (default 3;
    `retrieve_by_clusters`). Options of the other mode are refused. Writes `output/keep.txt` (the retrieved names,
    in pool order) and `output/summary.json`; returns the summary ("reused": True when a finished run with the same
    settings, pool and seeds was found in `output`)."""
    settings = _retrieve_settings(mode, k, threshold, index, clusters, per_cluster, min_seeds, iters, seed)
    pool = open_embeddings(embeddings, subset)
    seed_set = open_embeddings(seeds)
    if seed_set.dim != pool.dim:
        raise UserError(f"{seed_set.source}: {seed_set.dim}-dimensional seed embeddings, but the pool {pool.source} "
                        f"has {pool.dim}; embed both with the same backbone")  # fmt: skip
    if mode == "clusters" and len(pool) < settings["clusters"]:
        raise UserError(f"{pool.source}: {len(pool)} rows cannot make {settings['clusters']} clusters")
    # the seeds are part of the input: other seeds must not reuse this result
    identity = {**_identity(pool.names, pool.dim), "seeds": _identity(seed_set.names, seed_set.dim)}
    out = Path(output)
    done = _finished(out, "retrieve", "keep.txt", "a retrieval result", settings, identity)
    if done is not None:
        return done
    summary = {
        **_header("retrieve", pool, subset, settings, identity),
        "seeds": {"source": seed_set.source, "rows": len(seed_set)},
        "rows": len(pool),
    }
    if mode == "per-seed":
        rows = retrieve_per_seed(pool.vectors, seed_set.vectors, settings["k"], settings["threshold"],
                                 settings["index"], seed=seed)  # fmt: skip
    else:
        r = cluster_retrieval(pool.vectors, seed_set.vectors, settings["clusters"], settings["per_cluster"],
                              settings["min_seeds"], seed, settings["iters"], device=device)  # fmt: skip
        rows = r.rows
        summary["clusters"] = {
            "used": len(r.used),
            "sizes": size_summary(r.sizes),  # every cluster of the pool, in rows
            "taken": [{"cluster": int(c), "seeds": int(r.seed_counts[c]), "size": int(r.sizes[c]), "taken": int(t)}
                      for c, t in zip(r.used, r.taken)],  # fmt: skip
        }
    summary["retrieved"] = len(rows)
    write_keep(out / "keep.txt", [pool.names[i] for i in rows])
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")  # last: the run is finished
    return {**summary, "reused": False}
