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
  or memmaps; the pool is never cast to float64 nor converted whole. Exact search (`IndexFlatIP`) holds a float32
  copy of the pool, so it is the default only up to `EXACT_MAX` rows; beyond, `ivf` (IVF over scalar-quantised
  codes) or `hnsw` (HNSW32 over the same codes) hold 2 bytes a dimension (`codes="fp16"`, similarities rounded to
  ≈ 1e-3) or 1 (`codes="sq8"`: per-dimension 8-bit ranges fitted on a sample; similarities off by up to ≈ 1e-2,
  so a pair that close to the threshold may land on either side), at the price of approximate neighbours. The
  paper used IVF-PQ on GPUs, whose coarser codes make the similarity near the threshold less trustworthy still.
- IVF sizing, chosen to keep the cost about linear in N: nlist = N / `ROWS_PER_LIST` (64 rows a list; at most
  `NLIST_MAX`), so a query scans about nprobe × 64 rows at any N (the former ≈ 4√N lists made that grow as √N
  and the whole run as N^1.5). The coarse quantizer is a flat scan up to `HNSW_QUANTIZER_MIN` lists (16,384,
  where it costs about what the list scan does) and an HNSW32 graph over the centroids beyond, whose search grows
  as log(nlist). Its centroids are trained on a seeded sample of `TRAIN_PER_LIST` = 40 rows a list (≈ 0.6 N
  rows): one spherical k-means (10 iterations, as faiss trains an IVF) up to `TWO_LEVEL_MIN` = 1024 lists, whose
  cost, sample × nlist ∝ nlist², is then bounded; above, two levels: ⌊√nlist⌋ top centroids from a subsample of
  256 rows each, then each top cell's share of the lists from its own sample rows, a cost ∝ N^1.5 with a small
  constant (sample × 2√nlist per iteration instead of sample × nlist). What stays superlinear: that training,
  per row ≈ 10 iterations × 0.625 sample rows × √nlist ≈ 6√nlist dot products at BLAS speed, against the
  search's ≈ nprobe × 64 = 2,048 code decodes per row at roughly a tenth of that speed (≈ 2·10⁴ dot-product
  equivalents): an estimate, not measured, by which training stays below the search up to `NLIST_MAX` (≈ 60 % of
  it there, at 268 M rows) and is a few % of it at 1 M rows; the HNSW quantizer's log(nlist); and, past 268 M rows,
  the list scan, which grows again as N / NLIST_MAX. Approximate top-level cells cost some k-means quality
  (lists less balanced), not correctness: a pair is still found if both rows fall in one of the nprobe lists.
- Memory: the in-memory IVF index holds code_size + 8 bytes a row (2·D + 8 for fp16). With `scratch_dir`, the
  inverted lists are written (`batch` rows at a time) to faiss `OnDiskInvertedLists` in a fresh subfolder of it
  and memory-mapped while searching, so what stays resident is the batch, the quantizer (nlist × (4·D + 256)
  bytes, ≈ D / 16 bytes a row), the training sample's row numbers (≈ 5 bytes a row), one training cell or the
  ≤ 41k-row one-level sample, and the [N] union-find (≈ 24 bytes a row), plus page cache the kernel may reclaim.
  The subfolder is a work product: removed when the run ends, and never reused, so an interrupted run's leftover
  (`dedup-*`, safe to delete) is never trusted by a rerun. Results equal those of the in-memory index.
- Connected components come from a union-find run on each batch of edges as it is found, so the edge list is never
  held whole; component ids are numbered by their smallest row index, which makes the labels deterministic.
- `decontaminate` searches pool → pool, evaluation → pool and pool → evaluation (k neighbours in each set)
  instead of one search over the concatenated arrays; its edges are a superset of the concatenated kNN graph's and
  equal to them unless a row has more than k neighbours above the threshold. Evaluation → evaluation edges are
  skipped: they only join components that already touch an evaluation image.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, require

EXACT_MAX = 200_000  # `index="auto"` searches exactly up to this many rows (a float32 copy: 1.5 GB at D = 1024)
BATCH = 16384  # rows normalised, added or queried at once: bounds the [batch, D] copy and the [batch, k] results
INDEXES = ("auto", "exact", "ivf", "hnsw")
CODES = ("fp16", "sq8")  # storage of the ivf / hnsw codes: 2 or 1 byte per dimension
ROWS_PER_LIST = 64  # ivf: rows per inverted list (nlist = N / 64), so a query scans ≈ nprobe × 64 rows at any N
NLIST_MAX = 1 << 22  # ivf: lists at most (4M: 268M rows at 64 a list); beyond, rows per list grow again
TRAIN_PER_LIST = 40  # ivf: training rows per list (faiss warns below 39)
TWO_LEVEL_MIN = 1024  # ivf: above this many lists the coarse k-means is trained in two levels (cost ∝ √nlist)
HNSW_QUANTIZER_MIN = 16384  # ivf: from this many lists the coarse quantizer is an HNSW graph, not a flat scan


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


def _gather(vectors, rows: np.ndarray, batch: int) -> np.ndarray:
    """The normalised rows `rows` (sorted, so a memmap is read front to back) of `vectors` as float32 [len(rows), D]."""
    parts = [_normalised(vectors[r]) for r in np.array_split(rows, max(1, -(-len(rows) // batch)))]
    return np.concatenate(parts)  # [len(rows), D]


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids [k, D] of the unit rows `x` [n, D] (n ≥ k), as faiss trains an IVF quantizer."""
    faiss = _faiss()
    if k == 1:
        c = x.mean(axis=0, keepdims=True)  # [1, D]: the spherical centroid of one cell is the normalised mean
        return c / max(float(np.linalg.norm(c)), 1e-12)
    # min_points_per_centroid=1: the cells of the two-level training may hold a few less than faiss's 39 per centroid
    km = faiss.Kmeans(x.shape[1], k, niter=10, spherical=True, seed=seed, min_points_per_centroid=1)
    km.train(x)
    return km.centroids  # [k, D]


def ivf_nlist(n: int) -> int:
    """The number of IVF lists for `n` rows: about `ROWS_PER_LIST` rows per list, so a query that scans `nprobe` lists
    reads about nprobe × ROWS_PER_LIST rows whatever N is (the old rule, 4√N lists, made that grow as √N)."""
    return max(1, min(n // ROWS_PER_LIST, NLIST_MAX))


def _coarse_centroids(vectors, nlist: int, batch: int, seed: int) -> np.ndarray:
    """The IVF coarse centroids [nlist, D], trained on a seeded sample of `TRAIN_PER_LIST` rows per list.

    Up to `TWO_LEVEL_MIN` lists: one spherical k-means (cost ∝ sample × nlist, i.e. nlist²). Above: two levels, as
    the sample would make one k-means quadratic in N: ⌊√nlist⌋ top centroids from a subsample, then every top cell's
    share of the nlist centroids from that cell's own sample rows (cost ∝ sample × √nlist). Only the sample's row
    numbers are held whole; each cell's rows are read from `vectors` when it is clustered."""
    n = vectors.shape[0]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n, TRAIN_PER_LIST * nlist), replace=False))  # [S] sample row numbers
    if nlist <= TWO_LEVEL_MIN:
        return _kmeans(_gather(vectors, rows, batch), nlist, seed)
    faiss = _faiss()
    k1 = math.isqrt(nlist)
    sub = np.sort(rng.choice(rows, size=min(len(rows), 256 * k1), replace=False))  # faiss's cap: 256 per centroid
    top = faiss.IndexFlatIP(vectors.shape[1])
    top.add(_kmeans(_gather(vectors, sub, batch), k1, seed))
    parts = np.array_split(rows, max(1, -(-len(rows) // batch)))
    cell = np.concatenate([top.search(_gather(vectors, r, batch), 1)[1][:, 0] for r in parts])  # [S] top cell
    count = np.bincount(cell, minlength=k1)  # [k1]
    # the nlist centroids shared out in proportion to the cells' sample counts (largest remainders), ≤ one per row
    share = nlist * count / len(rows)  # [k1]
    k = np.floor(share).astype(np.int64)
    k[np.argsort(k - share, kind="stable")[: nlist - k.sum()]] += 1
    k = np.minimum(k, count)
    cents = [_kmeans(_gather(vectors, rows[cell == c], batch), int(k[c]), seed + 1 + int(c)) for c in np.flatnonzero(k)]
    return np.concatenate(cents).astype(np.float32)  # [≤ nlist, D]: fewer only if a cell had fewer rows than lists


@contextlib.contextmanager
def _stdout_to_stderr():
    """faiss's OnDiskInvertedLists prints 'resizing …' on the C stdout; keep it off ours (a CLI may print JSON)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _build_index(vectors, index: str, k: int, batch: int, seed: int, nprobe: int, codes: str = "fp16",
                 scratch_dir=None):  # fmt: skip
    """A faiss inner-product index over the normalised rows of `vectors`, added `batch` rows at a time; with
    `scratch_dir` (ivf only), its inverted lists are written to a fresh folder under it, which the caller removes
    (`_scratch`)."""
    faiss = _faiss()
    n, d = vectors.shape
    if index not in INDEXES:
        raise ConfigError(f"index must be one of {', '.join(INDEXES)}, got {index!r}")
    if codes not in CODES:
        raise ConfigError(f"codes must be one of {', '.join(CODES)}, got {codes!r}")
    if index == "auto":
        # a scratch folder asks for memory not bounded by the pool: only the ivf index gives that
        index = "exact" if n <= EXACT_MAX and scratch_dir is None else "ivf"
    if scratch_dir is not None and index != "ivf":
        raise ConfigError(f"an on-disk index (scratch_dir) needs index='ivf' or 'auto', got {index!r}")
    ip = faiss.METRIC_INNER_PRODUCT
    if index == "exact":
        ix = faiss.IndexFlatIP(d)
    elif index == "hnsw":
        ix = faiss.index_factory(d, "HNSW32,SQfp16" if codes == "fp16" else "HNSW32,SQ8", ip)
        ix.hnsw.efConstruction = 80
        ix.hnsw.efSearch = max(128, 2 * k)  # the search beam must be wider than the k results it returns
        if codes == "sq8":
            ix.train(_gather(vectors, np.sort(np.random.default_rng(seed).choice(n, min(n, 65536), False)), batch))
    else:
        cents = _coarse_centroids(vectors, ivf_nlist(n), batch, seed)  # [nlist, D]
        nlist = len(cents)
        if nlist >= HNSW_QUANTIZER_MIN:
            # an HNSW graph over the centroids: a query finds its nprobe lists in ~log(nlist) steps, not nlist
            quantizer = faiss.IndexHNSWFlat(d, 32, ip)
            quantizer.hnsw.efConstruction = 40
            quantizer.hnsw.efSearch = max(64, 2 * nprobe)  # wider than the nprobe lists it returns
        else:
            quantizer = faiss.IndexFlatIP(d)  # exact, and cheaper than a graph walk at this size
        quantizer.add(cents)
        qt = faiss.ScalarQuantizer.QT_fp16 if codes == "fp16" else faiss.ScalarQuantizer.QT_8bit
        ix = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, qt, ip)
        ix.referenced_objects = [quantizer]  # the index does not own it: keep it alive as long as the index
        # quantizer already holds nlist centroids, so train() only fits the SQ8 ranges (SQfp16 has none to fit)
        ix.train(_gather(vectors, np.sort(np.random.default_rng(seed).choice(n, min(n, 65536), False)), batch))
        ix.nprobe = min(nprobe, nlist)
        if scratch_dir is not None:
            lists = faiss.OnDiskInvertedLists(nlist, ix.code_size, str(Path(scratch_dir) / "lists.ivfdata"))
            with _stdout_to_stderr():
                lists.update_totsize(max(1 << 20, 2 * n * (ix.code_size + 8)))  # one resize, not log₂ N
            ix.replace_invlists(lists, False)
            ix.referenced_objects.append(lists)
    with _stdout_to_stderr() if scratch_dir is not None else contextlib.nullcontext():
        for _, x in _blocks(vectors, batch):
            ix.add(x)
    return ix


@contextlib.contextmanager
def _scratch(scratch_dir):
    """A fresh folder under `scratch_dir` (None: no folder) for one index's files, removed when the block ends.
    Each run makes its own, so a rerun never opens what an interrupted one left; such leftovers (`dedup-*`) can be
    deleted."""
    if scratch_dir is None:
        yield None
        return
    Path(scratch_dir).mkdir(parents=True, exist_ok=True)
    path = tempfile.mkdtemp(prefix="dedup-", dir=scratch_dir)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
                          seed: int = 0, nprobe: int = 32, codes: str = "fp16",
                          scratch_dir=None) -> np.ndarray:  # fmt: skip
    """Component id [N] of every row of `vectors` [N, D] in the graph joining each row to those of its `k` nearest
    neighbours with cosine similarity ≥ `threshold`; ids are 0, 1, … numbered by each component's smallest row.

    `vectors`: numpy array or float16/float32 memmap, normalised or not (rows are normalised `batch` at a time).
    `index`: "exact" (faiss IndexFlatIP), "ivf" (IVF, SQfp16 storage, `nprobe` lists searched, trained on a sample
    drawn with `seed`), "hnsw" (HNSW32, SQfp16 storage) or "auto" (exact up to `EXACT_MAX` rows, else ivf).
    `codes`: "fp16" (2 bytes a dimension, similarities within ≈ 1e-3) or "sq8" (1 byte, per-dimension ranges fitted
    on a sample: similarities off by up to ≈ 1e-2, so pairs that close to `threshold` may fall either side).
    `scratch_dir` (ivf; "auto" then means ivf): a folder where the inverted lists are written, in a fresh
    subfolder removed at the end, and memory-mapped while searching, so resident memory is the batch, the
    quantizer and the [N] union-find rather than the index. `threshold` depends on the embedding (DINOv2 used 0.6
    with SSCD copy-detection embeddings): measure it on planted duplicates rather than reusing that number.
    """
    _check(vectors, "vectors")
    if k < 1:
        raise ConfigError(f"k must be ≥ 1, got {k}")
    parent = np.arange(vectors.shape[0], dtype=np.int64)  # [N] union-find forest
    with _scratch(scratch_dir) as folder:
        ix = _build_index(vectors, index, k, batch, seed, nprobe, codes, folder)
        for a, b in _edges(ix, vectors, k, threshold, batch, self_search=True):
            _union(parent, a, b)
        del ix  # unmaps the lists before their folder goes
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
                  batch: int = BATCH, seed: int = 0, nprobe: int = 32, codes: str = "fp16",
                  scratch_dir=None) -> np.ndarray:  # fmt: skip
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
    with _scratch(scratch_dir) as folder:
        pool_ix = _build_index(pool_vectors, index, k, batch, seed, nprobe, codes, folder)
        for a, b in _edges(pool_ix, pool_vectors, k, threshold, batch, self_search=True):
            _union(parent, a, b)
        for a, b in _edges(pool_ix, ev, k, threshold, batch, self_search=False):  # evaluation → pool
            _union(parent, a + n, b)
        del pool_ix  # unmaps the lists before their folder goes
    eval_ix = _build_index(ev, "exact", k, batch, seed, nprobe)
    for a, b in _edges(eval_ix, pool_vectors, k, threshold, batch, self_search=False):  # pool → evaluation
        _union(parent, a, b + n)
    roots = _roots(parent)
    return np.isin(roots[:n], roots[n:])
