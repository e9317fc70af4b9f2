"""Balanced sampling from a hierarchy of clusters (DINOv3 §3.1; Vo et al. 2024; released as
`hierarchical_sampling` in facebookresearch/ssl-data-curation).

Top down: the target is shared among the top-level clusters by `allocate` — the largest cap x with
Σ min(x, |C_i|) ≤ target (binary search), every cluster gets min(x, |C_i|), and the remainder (smaller than the
number of clusters larger than x) goes, one each, to clusters larger than x chosen at random. Each cluster's
share is then divided among its children the same way, with |C_i| the number of points under child i, down to
level 1, whose clusters take their share of points at random ("random") or nearest their centroid ("closest").
A cluster never gets more than it holds, so a long tail of small clusters is taken whole while large clusters are
cut to the same cap: the sample is flat across concepts.

Deviations from the released code, and why:
- Randomness comes from `seed` (numpy `default_rng`), not the global numpy / `random` state; clusters are visited
  level by level in index order, so the draws differ from the released depth-first recursion.
- No `multiplier` (the released option to repeat every point up to m times): a sample has no repeated rows.
- The result is sorted by row index (the released order is cluster by cluster), which reads a pool file in order.
- The closest points of a leaf are found from `x` when sampling, instead of from saved sorted clusters.
"""

from __future__ import annotations

import numpy as np

from .kmeans import Tree, by_distance, members


def best_cap(sizes: np.ndarray, target: int) -> int:
    """The largest x with Σ min(x, sizes) ≤ target (max(sizes) when everything fits), by binary search."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if target < 0 or (sizes < 0).any():
        raise ValueError("target and sizes must be non-negative")
    if sizes.sum() <= target:
        return int(sizes.max(initial=0))
    lo, hi = 0, int(sizes.max())  # invariant: total(lo) ≤ target < total(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if np.minimum(mid, sizes).sum() <= target:
            lo = mid
        else:
            hi = mid
    return lo


def allocate(sizes, target: int, rng: np.random.Generator) -> np.ndarray:
    """How many of `target` to take from each cluster of `sizes` [n]: min(cap, size), plus one for `remainder`
    random clusters larger than the cap. Sums to min(target, Σ sizes); never exceeds a size."""
    sizes = np.asarray(sizes, dtype=np.int64)
    cap = best_cap(sizes, target)
    counts = np.minimum(cap, sizes)
    remainder = min(target, int(sizes.sum())) - int(counts.sum())
    if remainder > 0:  # < #(sizes > cap) by the choice of cap, so one extra each suffices
        counts[rng.choice(np.flatnonzero(sizes > cap), remainder, replace=False)] += 1
    return counts


def balanced_sample(tree: Tree, size: int, strategy: str = "random", seed: int = 0, x=None) -> np.ndarray:
    """Row indices (sorted, distinct) of a balanced sample of min(size, N) points of the tree's pool.
    `strategy` "closest" needs the pool `x` [N, D] (array or memmap) to rank each leaf's points."""
    if strategy not in ("random", "closest"):
        raise ValueError(f"strategy must be 'random' or 'closest', got {strategy!r}")
    if strategy == "closest" and x is None:
        raise ValueError("strategy 'closest' needs the embeddings x")
    rng = np.random.default_rng(seed)
    top = tree.n_levels
    quota = allocate(tree.flat_sizes(top), size, rng)  # [k_top]
    for level in range(top, 1, -1):  # share each cluster's quota among its children
        flat = tree.flat_sizes(level - 1)  # [k_{level-1}]
        below = np.zeros(len(flat), dtype=np.int64)
        for c, kids in enumerate(members(tree.assignments[level - 1], len(quota))):
            if quota[c]:
                below[kids] = allocate(flat[kids], int(quota[c]), rng)
        quota = below
    leaves = members(tree.assignments[0], len(quota))
    out = []
    for c in np.flatnonzero(quota):
        if quota[c] >= len(leaves[c]):
            out.append(leaves[c])
        elif strategy == "closest":
            out.append(by_distance(x, leaves[c], tree.centroids[0][c])[: quota[c]])
        else:
            out.append(rng.choice(leaves[c], quota[c], replace=False))
    return np.sort(np.concatenate([np.zeros(0, dtype=np.int64), *out]).astype(np.int64))
