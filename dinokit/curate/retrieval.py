"""Retrieval-based curation (DINOv2 §3 and App. A): the pool images nearest to a set of seed images.

Two variants, as in the paper:
- `retrieve_per_seed`: the union of the `k` nearest pool rows (cosine similarity) of every seed, optionally only
  those with similarity ≥ `threshold`. DINOv2 took k = 4 for large seed sets and k = 32 for a single seed image.
- `retrieve_by_clusters`, for small seed sets: k-means of the pool (DINOv2: 100 000 clusters), each seed assigned
  to its cluster, and up to `per_cluster` pool rows (DINOv2: 10 000) taken from every cluster holding at least
  `min_seeds` seed images (DINOv2: 3). The paper does not say which rows of a large cluster it took; here they are
  the rows closest to the cluster's centroid (ties broken by row index), so the result is deterministic and, when
  a cluster must be cut, keeps its most typical images rather than a random draw.

Both return the retrieved pool rows as sorted row indices. Pool and seed rows are L2-normalised `batch` at a time
(raw or normalised float16/float32 arrays, memmaps or `RowSubset`s are fine; nothing is cast whole). The
per-seed search reuses the faiss index choice of `dedup` (exact up to `EXACT_MAX` rows, else IVF with float16
storage; HNSW on request), so its memory is that index plus one boolean per pool row. The cluster variant runs
`kmeans` on the normalised rows (Euclidean k-means of unit vectors; the seeds are assigned to the nearest centroid
by the same rule as the pool rows) and holds one cluster's rows at a time when ranking them.

Deviations from the paper (DINOv2 released no code for this step), and why:
- The threshold is optional and ≥ (the paper gives none for retrieval); it lets a user drop neighbours that are
  near only because the pool holds nothing closer.
- The paper used faiss IVF-PQ on GPUs; see `dedup` for why IVF with float16 storage is used here instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .dedup import BATCH, _blocks, _build_index, _check, _normalised
from .kmeans import CHUNK, assign, by_distance, kmeans, members


def _pair(pool, seeds) -> None:
    _check(pool, "pool")
    _check(seeds, "seeds")
    if pool.shape[1] != seeds.shape[1]:
        raise ConfigError(f"seeds have {seeds.shape[1]} dimensions, the pool {pool.shape[1]}: embed both with the "
                          "same backbone")  # fmt: skip


def retrieve_per_seed(pool, seeds, k: int = 4, threshold: float | None = None, index: str = "auto",
                      batch: int = BATCH, seed: int = 0, nprobe: int = 32) -> np.ndarray:  # fmt: skip
    """Sorted row indices of `pool` [N, D] that are among the `k` nearest pool rows (cosine) of at least one row of
    `seeds` [S, D], keeping only neighbours with similarity ≥ `threshold` when given.

    `index`: "exact", "ivf", "hnsw" or "auto" as in `near_duplicate_groups` (`seed` draws the IVF training sample,
    `nprobe` lists are searched); with "exact" the result is the exact k nearest neighbours (ties as faiss breaks
    them, deterministically)."""
    _pair(pool, seeds)
    if k < 1:
        raise ConfigError(f"k must be ≥ 1, got {k}")
    if threshold is not None and not 0 < threshold <= 1:
        raise ConfigError(f"threshold is a cosine similarity in (0, 1], got {threshold} (leave it out for none)")
    ix = _build_index(pool, index, k, batch, seed, nprobe)
    k = min(k, ix.ntotal)
    hit = np.zeros(pool.shape[0], dtype=bool)  # [N]: one byte per pool row, whatever the number of seeds
    for _, q in _blocks(seeds, batch):
        sims, ids = ix.search(q, k)  # [b, k]; ids are -1 where an approximate index found fewer
        ok = ids >= 0
        if threshold is not None:
            ok &= sims >= threshold
        hit[ids[ok]] = True
    return np.flatnonzero(hit)


class _UnitRows:
    """The rows of a 2-D array, memmap or `RowSubset`, L2-normalised as they are read (`kmeans` and `by_distance`
    read blocks or index arrays of rows; only those are converted)."""

    ndim = 2

    def __init__(self, base):
        self.base = base

    def __len__(self) -> int:
        return self.base.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.base.shape)

    def __getitem__(self, key) -> np.ndarray:
        return _normalised(self.base[key])


@dataclass
class ClusterRetrieval:
    """The result of `cluster_retrieval`: `rows` retrieved (sorted), `used` the clusters taken (ascending),
    `seed_counts` [n_clusters] the seeds in each cluster, `sizes` [n_clusters] the pool rows in each cluster and
    `taken` [len(used)] the rows taken from each used cluster."""

    rows: np.ndarray
    used: np.ndarray
    seed_counts: np.ndarray
    sizes: np.ndarray
    taken: np.ndarray


def cluster_retrieval(pool, seeds, n_clusters: int, per_cluster: int, min_seeds: int = 3, seed: int = 0,
                      iters: int = 50, chunk: int = CHUNK, device=None) -> ClusterRetrieval:  # fmt: skip
    """`retrieve_by_clusters` with the clusters it used (see `ClusterRetrieval`)."""
    _pair(pool, seeds)
    if not 1 <= n_clusters <= pool.shape[0]:
        raise ConfigError(f"the number of clusters must be between 1 and the {pool.shape[0]} pool rows, "
                          f"got {n_clusters}")  # fmt: skip
    if per_cluster < 1 or min_seeds < 1 or iters < 0:
        raise ConfigError(f"per_cluster and min_seeds must be ≥ 1 and iters ≥ 0, got {per_cluster}, {min_seeds}, "
                          f"{iters}")  # fmt: skip
    x = _UnitRows(pool)
    centroids, assignment = kmeans(x, n_clusters, iters, seed, chunk, device, distributed=False)
    s = _UnitRows(seeds)
    seed_counts = np.bincount(assign(s, centroids, chunk, device), minlength=n_clusters)  # [n_clusters]
    used = np.flatnonzero(seed_counts >= min_seeds)
    groups = members(assignment, n_clusters)
    # one cluster's rows in memory at a time; by_distance breaks ties by row index, so the choice is deterministic
    chosen = [by_distance(x, groups[c], centroids[c], device)[:per_cluster] for c in used]
    rows = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    return ClusterRetrieval(rows, used, seed_counts, np.array([len(g) for g in groups], dtype=np.int64),
                            np.array([len(c) for c in chosen], dtype=np.int64))  # fmt: skip


def retrieve_by_clusters(pool, seeds, n_clusters: int, per_cluster: int, min_seeds: int = 3, seed: int = 0,
                         iters: int = 50, chunk: int = CHUNK, device=None) -> np.ndarray:  # fmt: skip
    """Sorted row indices of `pool` [N, D] taken by cluster: k-means of the normalised pool into `n_clusters`
    (`iters` Lloyd updates, seeded by `seed`), every row of `seeds` [S, D] assigned to its nearest centroid, and
    from each cluster holding ≥ `min_seeds` seeds the `per_cluster` rows closest to its centroid (all of them in a
    smaller cluster; ties by row index). Clusters with fewer seeds contribute nothing."""
    return cluster_retrieval(pool, seeds, n_clusters, per_cluster, min_seeds, seed, iters, chunk, device).rows
