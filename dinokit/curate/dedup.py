"""Near-duplicate detection and benchmark decontamination over embeddings (DINOv2 §3 and App. A, "copy detection").

As in DINOv2: the k nearest neighbours of every row by cosine similarity (k = 64 in the paper), an edge wherever the
similarity reaches the threshold, connected components of that graph, and one image kept per component.
Decontamination drops every pool image whose component in the joint graph (pool ∪ evaluation images) contains an
evaluation image. The paper's thresholds, 0.6 for copy detection and 0.45 for decontamination, belong to its
SSCD copy-detection embeddings; with another embedding (e.g. a DINOv2 CLS token) the right threshold is a different
number and has to be measured on planted duplicates of the user's own data, not assumed.

Deviations from the paper (DINOv2 released no code for this step), and why:
- An edge needs similarity ≥ threshold (the paper writes >); the difference is measure zero on real embeddings.
- Rows are L2-normalised here, `batch` at a time, so the caller may pass raw or normalised float16/float32 arrays
  or memmaps; the pool is never cast to float64 nor converted whole. What bounds memory is the faiss index:
  exact search (`IndexFlatIP`) holds a float32 copy of the pool, so it is the default only up to `EXACT_MAX` rows;
  beyond, `ivf` (IVF with float16 scalar-quantised storage, trained on a seeded sample) or `hnsw` (HNSW over float16
  storage) halve that, at the price of approximate neighbours and similarities rounded to ≈ 1e-3. The paper used
  IVF-PQ on GPUs, whose coarser codes make the similarity near the threshold less trustworthy.
- Connected components come from a union-find run on each batch of edges as it is found, so the edge list is never
  held whole; component ids are numbered by their smallest row index, which makes the labels deterministic.
- `decontaminate` searches pool → pool, evaluation → pool and pool → evaluation (k neighbours in each set)
  instead of one search over the concatenated arrays; its edges are a superset of the concatenated kNN graph's and
  equal to them unless a row has more than k neighbours above the threshold. Evaluation → evaluation edges are
  skipped: they only join components that already touch an evaluation image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import ConfigError, require

EXACT_MAX = 200_000  # `index="auto"` searches exactly up to this many rows (a float32 copy: 1.5 GB at D = 1024)
BATCH = 16384  # rows normalised, added or queried at once: bounds the [batch, D] copy and the [batch, k] results
INDEXES = ("auto", "exact", "ivf", "hnsw")


def _faiss():
    return require("faiss", "faiss", "near-duplicate search")


def _check(vectors, name: str) -> None:
    if getattr(vectors, "ndim", None) != 2 or vectors.shape[0] == 0:
        raise ConfigError(f"{name} must be a non-empty [N, D] array, got shape {getattr(vectors, 'shape', None)}")


def _normalised(block) -> np.ndarray:
    """A block of rows [b, D] as float32 with unit L2 norm (only this block converted; zero rows stay zero)."""
    x = np.array(block, dtype=np.float32)  # [b, D], a copy we may scale in place
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norm, 1e-12)
    return x


def _blocks(vectors, batch: int) -> Iterator[tuple[int, np.ndarray]]:
    for s in range(0, vectors.shape[0], batch):
        yield s, _normalised(vectors[s : s + batch])


def _build_index(vectors, index: str, k: int, batch: int, seed: int, nprobe: int):
    """A faiss inner-product index over the normalised rows of `vectors`, added `batch` rows at a time."""
    faiss = _faiss()
    n, d = vectors.shape
    if index not in INDEXES:
        raise ConfigError(f"index must be one of {', '.join(INDEXES)}, got {index!r}")
    if index == "auto":
        index = "exact" if n <= EXACT_MAX else "ivf"
    ip = faiss.METRIC_INNER_PRODUCT
    if index == "exact":
        ix = faiss.IndexFlatIP(d)
    elif index == "hnsw":
        ix = faiss.index_factory(d, "HNSW32,SQfp16", ip)
        ix.hnsw.efConstruction = 80
        ix.hnsw.efSearch = max(128, 2 * k)  # the search beam must be wider than the k results it returns
    else:
        # ≈ 4√N lists (capped: the quantizer is searched exactly) with the ≥ 39 training points per list faiss wants
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39, 65536))
        ix = faiss.index_factory(d, f"IVF{nlist},SQfp16", ip)
        # train on a seeded sample of 40 rows per list (sorted, so a memmap is read front to back)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, 40 * nlist), replace=False))
        sample = np.concatenate([_normalised(vectors[r]) for r in np.array_split(rows, -(-len(rows) // batch))])
        ix.train(sample)
        ix.nprobe = min(nprobe, nlist)
    for _, x in _blocks(vectors, batch):
        ix.add(x)
    return ix


def _edges(ix, queries, k: int, threshold: float, batch: int, self_search: bool):
    """Per batch of queries: (query rows [E], neighbour rows [E]) of the kNN edges with similarity ≥ threshold."""
    k = min(k + self_search, ix.ntotal)  # one more when searching a set in itself: the row finds itself
    for s, q in _blocks(queries, batch):
        sims, ids = ix.search(q, k)  # [b, k] each; ids are -1 where an approximate index found fewer
        rows = np.arange(s, s + len(q))[:, None]  # [b, 1]
        hit = (sims >= threshold) & (ids >= 0)
        if self_search:
            hit &= ids != rows
        yield np.broadcast_to(rows, ids.shape)[hit], ids[hit]


def _root(parent: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Roots of the nodes `a`, halving their paths on the way (vectorised pointer jumping)."""
    r = a
    while True:
        p = parent[r]
        if (p == r).all():
            return r
        parent[r] = parent[p]  # path halving: the next find of these nodes is shorter
        r = p


def _union(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Join the components of the pairs (a, b). Every root points at a smaller index, so the root of a component is
    its smallest node and no cycle can form; each round merges at least one pair of distinct roots."""
    while len(a):
        ra, rb = _root(parent, a), _root(parent, b)
        apart = ra != rb
        a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        np.minimum.at(parent, hi, lo)  # a root joined to several others takes the smallest; the rest go next round


def _roots(parent: np.ndarray) -> np.ndarray:
    """The root of every node, by pointer jumping over the whole array (log of the deepest path rounds)."""
    while True:
        p = parent[parent]
        if np.array_equal(p, parent):
            return parent
        parent = p


def near_duplicate_groups(vectors, threshold: float, k: int = 64, index: str = "auto", batch: int = BATCH,
                          seed: int = 0, nprobe: int = 32) -> np.ndarray:  # fmt: skip
    """Component id [N] of every row of `vectors` [N, D] in the graph joining each row to those of its `k` nearest
    neighbours with cosine similarity ≥ `threshold`; ids are 0, 1, … numbered by each component's smallest row.

    `vectors`: numpy array or float16/float32 memmap, normalised or not (rows are normalised `batch` at a time).
    `index`: "exact" (faiss IndexFlatIP), "ivf" (IVF, SQfp16 storage, `nprobe` lists searched, trained on a sample
    drawn with `seed`), "hnsw" (HNSW32, SQfp16 storage) or "auto" (exact up to `EXACT_MAX` rows, else ivf).
    `threshold` depends on the embedding (DINOv2 used 0.6 with SSCD copy-detection embeddings): measure it on
    planted duplicates rather than reusing that number.
    """
    _check(vectors, "vectors")
    if k < 1:
        raise ConfigError(f"k must be ≥ 1, got {k}")
    ix = _build_index(vectors, index, k, batch, seed, nprobe)
    parent = np.arange(vectors.shape[0], dtype=np.int64)  # [N] union-find forest
    for a, b in _edges(ix, vectors, k, threshold, batch, self_search=True):
        _union(parent, a, b)
    return np.unique(_roots(parent), return_inverse=True)[1].astype(np.int64)  # roots are sorted: smallest-row order


def representatives(labels, order=None) -> np.ndarray:
    """The rows kept, one per component of `labels` [N], in increasing row order: the smallest row of each component,
    or, given `order` (every row index once, best first, e.g. `np.argsort(-quality, kind="stable")`), the component's
    first row in that order."""
    labels = np.asarray(labels)
    if order is None:
        return np.unique(labels, return_index=True)[1]  # first occurrence = smallest row of each component
    order = np.asarray(order, dtype=np.int64)
    if order.shape != labels.shape or not np.array_equal(np.sort(order), np.arange(len(labels))):
        raise ConfigError(f"order must list each of the {len(labels)} row indices once")
    return np.sort(order[np.unique(labels[order], return_index=True)[1]])


def groups_json(labels, names: Sequence[str] | None = None, keep=None) -> dict[str, list[str]]:
    """The components with ≥ 2 members as {representative: [every member, in row order]}, for a `groups.json`.

    `names` [N] names the rows (image paths; row indices as strings when None); `keep` gives the representatives
    (those of `representatives(labels, order)`; the smallest rows when None)."""
    labels = np.asarray(labels)
    name = (lambda i: str(i)) if names is None else (lambda i: str(names[i]))
    keep = representatives(labels) if keep is None else np.asarray(keep)
    rep = dict(zip(labels[keep].tolist(), keep.tolist()))  # component → kept row
    rows = np.argsort(labels, kind="stable")  # [N] rows grouped by component, each group in row order
    starts = np.flatnonzero(np.r_[True, labels[rows][1:] != labels[rows][:-1]])
    groups = {}
    for members in np.split(rows, starts[1:]):
        if len(members) > 1:
            groups[name(rep[int(labels[members[0]])])] = [name(i) for i in members.tolist()]
    return groups


def decontaminate(pool_vectors, eval_vectors, threshold: float, k: int = 64, index: str = "auto",
                  batch: int = BATCH, seed: int = 0, nprobe: int = 32) -> np.ndarray:  # fmt: skip
    """Mask [N_pool] of the pool rows to drop: those whose component, in the graph of pool ∪ evaluation rows joined
    at cosine ≥ `threshold` among k nearest neighbours, contains an evaluation row (DINOv2 used 0.45 with SSCD
    embeddings; measure the threshold for yours). `eval_vectors`: one [N_eval, D] array or a sequence of them
    (evaluation sets are small: they are normalised and searched exactly). Other arguments as `near_duplicate_groups`.
    """
    _check(pool_vectors, "pool_vectors")
    if k < 1:
        raise ConfigError(f"k must be ≥ 1, got {k}")
    evals = [eval_vectors] if getattr(eval_vectors, "ndim", None) == 2 else list(eval_vectors)
    for e in evals:
        _check(e, "eval_vectors")
    ev = np.concatenate([_normalised(e) for e in evals])  # [N_eval, D] float32
    if ev.shape[1] != pool_vectors.shape[1]:
        raise ConfigError(f"eval vectors have {ev.shape[1]} dimensions, the pool {pool_vectors.shape[1]}")
    n = pool_vectors.shape[0]
    parent = np.arange(n + len(ev), dtype=np.int64)  # [N_pool + N_eval]: evaluation rows follow the pool's
    pool_ix = _build_index(pool_vectors, index, k, batch, seed, nprobe)
    for a, b in _edges(pool_ix, pool_vectors, k, threshold, batch, self_search=True):
        _union(parent, a, b)
    for a, b in _edges(pool_ix, ev, k, threshold, batch, self_search=False):  # evaluation → pool
        _union(parent, a + n, b)
    eval_ix = _build_index(ev, "exact", k, batch, seed, nprobe)
    for a, b in _edges(eval_ix, pool_vectors, k, threshold, batch, self_search=False):  # pool → evaluation
        _union(parent, a, b + n)
    roots = _roots(parent)
    return np.isin(roots[:n], roots[n:])
