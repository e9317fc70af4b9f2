"""k-means and hierarchical k-means for data curation (DINOv3 §3.1; Vo et al. 2024, "Automatic data curation for
self-supervised learning", released as facebookresearch/ssl-data-curation).

`kmeans`: a seeding, then Lloyd iterations; `iters` counts centroid updates, each followed by a re-assignment, as
released. Two seedings:
- greedy k-means++ (as released and in scikit-learn): each new centre is the best of 2 + ⌊ln k⌋ candidates drawn
  ∝ D². It reads the pool twice per centre, so its cost is N·k row reads: hours per million rows at k = 10⁴.
- k-means|| (`init="k-means-parallel"`; Bahmani et al. 2012, "Scalable k-means++"): five passes that each keep
  every row independently with probability ∝ D² (about 2k rows per pass), then greedy k-means++ on the ~10k
  candidates weighted by the rows nearest each. Its cost is a handful of passes whatever k. `init="auto"` (the
  default) takes it once the pool holds more than 32 rows per cluster, and k-means++ otherwise (the upper levels
  of a hierarchy, small pools).
`hierarchical_kmeans`: level ℓ clusters the centroids of level ℓ−1; each level runs `resampling_steps[ℓ]` rounds,
the first on all its items and every later one on the `sample_sizes[ℓ]` items closest to each centroid of the round
before, after which all items are re-assigned to the new centroids (the released `run_distributed_kmeans.py`
"steps"; one step means plain k-means). Each finished level can be saved as it ends (`resume`), so an interrupted
run loses at most the level in progress.

Deviations from the released code, and why:
- The pool is never cast to float64 nor held whole: rows are read `chunk` at a time (a float16/float32 memmap
  works), distances are float32 and only the per-cluster sums and seeding potentials accumulate in float64.
  The released code loads each rank's shard to the GPU in float64 for the 4-level web configuration.
- Distances to the centroids are never materialised for all rows: at most BLOCK (2²⁴) of them at once, so the rows
  per block shrink as k grows. The seeding keeps one float64 per local row (the squared distance to the nearest
  centre).
- k-means|| instead of k-means++ for large pools (above): the released code has only k-means++, whose cost in k
  blocks pools of tens of millions of rows on CPU and needs k sequential GPU passes.
- Distributed (torch.distributed initialised, each rank passing its own rows): every rank keeps the same numpy
  generator, so the uniform draws of k-means++ are identical everywhere; a draw is resolved on the rank whose rows
  hold that part of the potential, candidate rows are shared by an all-reduce (the owner writes, the others add
  zeros) and candidate potentials are all-reduced. The released code makes the draws on rank 0 and broadcasts
  them; the result is the same seeding, without a gathered copy of the squared distances on rank 0. k-means||
  draws each row's uniform number from a PCG64 stream advanced to the row's global index, so its candidates do not
  depend on how the rows are split. Centroid sums and counts are all-reduced, so the result equals one process on
  the concatenated rows; `kmeans` returns the assignment of the rank's own rows, `hierarchical_kmeans` the whole
  tree on every rank (the level-1 assignment all-reduced: 8 bytes per pool row on each rank).
- The resampling steps pick the items nearest each centroid by float64 distances, ties broken by row index, so the
  choice is the same in one process or many.
- Empty clusters keep their previous centroid (as released); so a seeding with duplicate points stays stable.
- Randomness comes from `seed` (numpy `default_rng`), not from the global numpy state.
- The released level-1 split of each cluster into `n_splits` sub-clusters is not implemented (use a larger k for
  level 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..atomic import atomic_write, atomic_write_text

CHUNK = 16384  # rows per block: bounds the rows converted at once
BLOCK = 1 << 24  # elements of a [rows, centres] distance block (64 MB of float32): fewer rows per block at large k
INITS = ("auto", "k-means++", "k-means-parallel")
PARALLEL_ROUNDS = 5  # k-means|| passes over the pool (Bahmani et al. found 5 enough)
OVERSAMPLING = 2.0  # k-means|| expects ℓ = 2k candidates per pass, about 10k in all
AUTO_PARALLEL = 32  # init "auto": k-means|| once the pool holds more than 32 rows per cluster, else k-means++


def _distributed(distributed: bool | None) -> bool:
    if distributed is None:
        return dist.is_available() and dist.is_initialized()
    return distributed


def _all_reduce(t: torch.Tensor, on: bool) -> torch.Tensor:
    if on:
        dist.all_reduce(t)
    return t


def _rows(x, start: int, stop: int, device) -> torch.Tensor:
    """Rows [start, stop) of a numpy array / memmap / tensor as float32 on `device` (only this block converted)."""
    block = x[start:stop]
    if isinstance(block, torch.Tensor):
        return block.to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.asarray(block, dtype=np.float32)).to(device)


def _take(x, rows: np.ndarray, device) -> torch.Tensor:
    """Rows `rows` (ascending, so a memmap is read front to back) of x as float32 [len(rows), D], in one read."""
    if isinstance(x, torch.Tensor):
        return x[torch.from_numpy(rows)].to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.asarray(x[rows], dtype=np.float32)).to(device)


def _sq_dist(xc: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [n, m] between rows xc [n, D] and c [m, D] (c_sq [m] = ‖c‖²)."""
    d = (xc * xc).sum(1, keepdim=True) - 2 * xc @ c.T + c_sq  # [n, m]
    return d.clamp_(min=0)  # cancellation can go slightly negative


def assign(x, centroids, chunk: int = CHUNK, device=None) -> np.ndarray:
    """Index [N] of the nearest centroid of every row of x, read `chunk` rows at a time."""
    c = torch.as_tensor(np.array(centroids, dtype=np.float32), device=device)  # [k, D] (a copy: may be a memmap)
    return _assign(x, c, chunk, device)[0].numpy()


def _assign(x, c: torch.Tensor, chunk: int, device, sums: bool = False):
    """Nearest centroid of each local row, and (when `sums`) the float64 per-cluster sums [k, D] and counts [k]."""
    k, n = c.shape[0], len(x)
    # ‖x‖² is the same for every centroid, so it is left out of the argmin
    c_sq = (c * c).sum(1)  # [k]
    out = torch.empty(n, dtype=torch.int64)
    total = torch.zeros(k, c.shape[1], dtype=torch.float64, device=c.device) if sums else None  # [k, D]
    count = torch.zeros(k, dtype=torch.float64, device=c.device) if sums else None  # [k]
    step = _block_rows(chunk, k)
    for s in range(0, n, step):
        xc = _rows(x, s, min(s + step, n), device)  # [n_c, D]
        a = (c_sq - 2 * xc @ c.T).argmin(1)  # [n_c]
        out[s : s + len(xc)] = a.cpu()
        if sums:
            total.index_add_(0, a, xc.double())  # float64 per block only, never the whole pool
            count += torch.bincount(a, minlength=k)
    return out, total, count


def _layout(n: int, device, on: bool) -> tuple[np.ndarray, int]:
    """Global index of each rank's first row [world + 1] (the last entry is the pool size) and this rank's."""
    n_all = [n]
    if on:
        sizes = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=device)
        sizes[dist.get_rank()] = n
        n_all = _all_reduce(sizes, on).tolist()
    offsets = np.concatenate([[0], np.cumsum(n_all)]).astype(np.int64)
    return offsets, int(offsets[dist.get_rank()]) if on else 0


def _fetch(x, ids: np.ndarray, lo: int, device, on: bool) -> torch.Tensor:
    """Rows of the global indices `ids` [m] on every rank: the owner writes them, the others add zeros."""
    rows = torch.zeros(len(ids), x.shape[1], dtype=torch.float32, device=device)  # [m, D]
    for j, g in enumerate(ids):
        if lo <= g < lo + len(x):
            rows[j] = _rows(x, int(g - lo), int(g - lo) + 1, device)[0]
    return _all_reduce(rows, on)


def _block_rows(chunk: int, m: int) -> int:
    """Rows per block so that the [rows, m] distance block stays within BLOCK elements (and `chunk` rows)."""
    return max(1, min(chunk, BLOCK // max(m, 1)))


def _kmeans_pp(x, k: int, rng: np.random.Generator, chunk: int, device, on: bool,
               weights: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Greedy k-means++ seeding [k, D], identical on every rank (see the module docstring). `weights` [n]: each
    row counts that many times (k-means|| seeds its weighted candidates this way)."""
    n, dim = len(x), x.shape[1]
    offsets, lo = _layout(n, device, on)
    pot_all = np.zeros(len(offsets) - 1)
    if offsets[-1] < k:
        raise ValueError(f"k-means with k={k} needs at least {k} points, got {offsets[-1]}")
    trials = 2 + int(math.log(k))
    w = torch.ones(n, dtype=torch.float64, device=device) if weights is None else weights.to(device, torch.float64)

    def lowered(c: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """min(closest, squared distance to each candidate of c [m, D]) [n, m] for the local rows, yielded block by
        block so that no [N, m] array is held."""
        c_sq = (c * c).sum(1)  # [m]
        step = _block_rows(chunk, len(c))
        for s in range(0, n, step):
            xc = _rows(x, s, min(s + step, n), device)  # [n_c, D]
            yield s, torch.minimum(closest[s : s + len(xc), None], _sq_dist(xc, c, c_sq).double())  # [n_c, m]

    centers = torch.empty(k, dim, dtype=torch.float32, device=device)  # [k, D]
    centers[0] = _fetch(x, np.array([rng.integers(offsets[-1])]), lo, device, on)[0]
    closest = torch.full((n,), math.inf, dtype=torch.float64, device=device)  # [n] to the nearest chosen centre
    for s, d in lowered(centers[:1]):
        closest[s : s + len(d)] = d[:, 0]
    for i in range(1, k):
        local_pot = torch.zeros(len(pot_all), dtype=torch.float64, device=device)
        local_pot[dist.get_rank() if on else 0] = (w * closest).sum()
        pot = _all_reduce(local_pot, on).cpu().numpy()  # [world] potential held by each rank
        draws = rng.uniform(size=trials) * pot.sum()  # same draws on every rank
        # resolve each draw on the rank holding that stretch of the cumulative potential
        owner = np.minimum(np.searchsorted(np.cumsum(pot), draws, side="right"), len(pot) - 1)
        ids = np.zeros(trials, dtype=np.int64)
        mine = owner == (dist.get_rank() if on else 0)
        if mine.any() and n:
            before = pot[: owner[mine][0]].sum()
            local = torch.searchsorted((w * closest).cumsum(0), torch.from_numpy(draws[mine] - before).to(closest))
            ids[mine] = lo + local.clamp(max=n - 1).cpu().numpy()
        ids = _all_reduce(torch.from_numpy(ids).to(device), on).cpu().numpy()  # [trials] global row indices
        cand = _fetch(x, ids, lo, device, on)  # [trials, D]
        pots = torch.zeros(trials, dtype=torch.float64, device=device)  # [trials] potential with each candidate
        for s, d in lowered(cand):
            pots += (d * w[s : s + len(d), None]).sum(0)
        best = int(_all_reduce(pots, on).argmin())  # the candidate that lowers the potential most
        centers[i] = cand[best]
        for s, d in lowered(cand[best : best + 1]):
            closest[s : s + len(d)] = d[:, 0]
    return centers


def _nearest_sq(x, c: torch.Tensor, closest: torch.Tensor | None, chunk: int, device) -> torch.Tensor:
    """Squared distance of every local row to its nearest row of c [m, D], or to `closest` [n] when nearer."""
    n, c_sq = len(x), (c * c).sum(1)  # [m]
    out = torch.empty(n, dtype=torch.float64, device=device)  # [n]
    step = _block_rows(chunk, len(c))
    for s in range(0, n, step):
        xc = _rows(x, s, min(s + step, n), device)  # [n_c, D]
        if not len(c):  # a round that found no new candidate: nothing gets nearer
            out[s : s + len(xc)] = closest[s : s + len(xc)]
            continue
        d = _sq_dist(xc, c, c_sq).min(1).values.double()  # [n_c]
        out[s : s + len(xc)] = d if closest is None else torch.minimum(d, closest[s : s + len(xc)])
    return out


def _kmeans_parallel(x, k: int, rng: np.random.Generator, seed: int, chunk: int, device, on: bool) -> torch.Tensor:
    """k-means|| seeding [k, D] (Bahmani et al. 2012), identical on every rank and for any split of the rows.

    One centre drawn uniformly; then PARALLEL_ROUNDS passes over the pool, each keeping every row independently
    with probability min(1, ℓ·d²/φ) (ℓ = OVERSAMPLING·k, d² its squared distance to the nearest candidate so far,
    φ their sum); each candidate is weighted by the rows nearest to it, and greedy k-means++ on the weighted
    candidates picks the k centres. A row's uniform draw comes from a PCG64 stream advanced to its global index,
    so the candidates do not depend on the number of ranks."""
    n, dim = len(x), x.shape[1]
    offsets, lo = _layout(n, device, on)
    if offsets[-1] < k:
        raise ValueError(f"k-means with k={k} needs at least {k} points, got {offsets[-1]}")
    cand = _fetch(x, np.array([rng.integers(offsets[-1])]), lo, device, on)  # [1, D]
    closest = _nearest_sq(x, cand, None, chunk, device)  # [n]
    for r in range(PARALLEL_ROUNDS):
        phi = float(_all_reduce(closest.sum().reshape(1), on))
        if phi == 0:
            break  # every row sits on a candidate
        stream = np.random.PCG64(np.random.SeedSequence([seed, r]))
        stream.advance(lo)  # one 64-bit draw per uniform: the rows before this rank's are skipped exactly
        u = np.random.Generator(stream)
        picked = []
        for s in range(0, n, chunk):
            p = OVERSAMPLING * k * closest[s : s + chunk].cpu().numpy() / phi  # [n_c]
            picked.append(s + np.flatnonzero(u.random(len(p)) < p))
        picked = np.concatenate(picked) if picked else np.zeros(0, np.int64)
        counts = torch.zeros(len(offsets) - 1, dtype=torch.int64, device=device)
        counts[dist.get_rank() if on else 0] = len(picked)
        counts = _all_reduce(counts, on).cpu().numpy()  # [world] candidates found by each rank
        new = torch.zeros(int(counts.sum()), dim, dtype=torch.float32, device=device)  # [m, D], in global row order
        at = int(counts[: dist.get_rank()].sum()) if on else 0
        if len(picked):
            new[at : at + len(picked)] = _take(x, picked, device)
        new = _all_reduce(new, on)
        closest = _nearest_sq(x, new, closest, chunk, device)
        cand = torch.cat([cand, new])
    if len(cand) < k:  # a pool of few distinct points: seed on the pool itself
        return _kmeans_pp(x, k, rng, chunk, device, on)
    a, _, _ = _assign(x, cand, chunk, device)
    weights = _all_reduce(torch.bincount(a.to(device), minlength=len(cand)).double(), on)  # [m] rows per candidate
    return _kmeans_pp(cand, k, rng, chunk, device, on=False, weights=weights)


def kmeans(x, k: int, iters: int = 50, seed: int = 0, chunk: int = CHUNK, device=None,
           distributed: bool | None = None, on_iter: Callable[[], object] | None = None, init: str = "auto",
           ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Seeding then `iters` Lloyd updates of the rows of x [N, D] (numpy array, memmap or tensor, any float
    dtype). Returns (centroids [k, D] float32, assignment [N] int64 of these rows). `distributed`: None means
    "when torch.distributed is initialised", in which case x is this rank's shard of the rows. `init`: "k-means++"
    (as released; two passes over the pool per centre), "k-means-parallel" (PARALLEL_ROUNDS passes in all) or "auto"
    (k-means|| beyond AUTO_PARALLEL rows per cluster). `on_iter` is called after each update (a progress bar's
    tick)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    on = _distributed(distributed)
    device = torch.device(device or "cpu")
    rng = np.random.default_rng(seed)
    if init == "auto":
        total = int(_layout(len(x), device, on)[0][-1])
        init = "k-means-parallel" if total > AUTO_PARALLEL * k else "k-means++"
    if init == "k-means++":
        c = _kmeans_pp(x, k, rng, chunk, device, on)  # [k, D]
    else:
        c = _kmeans_parallel(x, k, rng, seed, chunk, device, on)  # [k, D]
    for _ in range(iters):  # one pass each: assign to c and sum the clusters, then move c
        _, total, count = _assign(x, c, chunk, device, sums=True)
        total, count = _all_reduce(total, on), _all_reduce(count, on)
        filled = count > 0  # empty clusters keep their centroid
        c[filled] = (total[filled] / count[filled, None]).float()
        if on_iter is not None:
            on_iter()
    a, _, _ = _assign(x, c, chunk, device)
    return c.cpu().numpy(), a.numpy()


def by_distance(x, rows: np.ndarray, centroid, device=None) -> np.ndarray:
    """`rows` (indices into x) sorted by increasing distance of x[rows] to `centroid` [D] (ties by position)."""
    c = torch.as_tensor(np.array(centroid, dtype=np.float32), device=device)[None]  # [1, D] (a copy: may be a memmap)
    feats = x[np.sort(rows)] if len(rows) else x[:0]  # ascending reads are sequential on a memmap
    feats = torch.from_numpy(np.asarray(feats, dtype=np.float32)).to(c.device)  # [|rows|, D]
    d = _sq_dist(feats, c, (c * c).sum(1))[:, 0]  # [|rows|]
    return np.sort(rows)[torch.argsort(d.cpu(), stable=True).numpy()]


def members(assignment: np.ndarray, k: int) -> list[np.ndarray]:
    """For each of k clusters, the indices (ascending) of the items assigned to it."""
    order = np.argsort(assignment, kind="stable")
    return np.split(order, np.cumsum(np.bincount(assignment, minlength=k))[:-1])


def closest_first(x, centroids, assignment: np.ndarray, device=None) -> list[np.ndarray]:
    """For every cluster, the indices of its rows sorted by increasing distance to its centroid."""
    return [by_distance(x, m, centroids[i], device) for i, m in enumerate(members(assignment, len(centroids)))]


@dataclass
class Tree:
    """A hierarchy of clusters: `centroids[l]` [k_l, D] are the centroids of level l+1 and `assignments[l]` maps
    every item of the level below (the points for l = 0, else the level-l clusters) to a level-(l+1) cluster."""

    centroids: list[np.ndarray]
    assignments: list[np.ndarray]

    @property
    def n_levels(self) -> int:
        return len(self.centroids)

    @property
    def n_points(self) -> int:
        return len(self.assignments[0])

    def flat_sizes(self, level: int) -> np.ndarray:
        """Number of points under each cluster of `level` (1-based) [k_level]."""
        sizes = np.ones(self.n_points, dtype=np.int64)
        for a, c in zip(self.assignments[:level], self.centroids[:level]):
            sizes = np.bincount(a, weights=sizes, minlength=len(c)).astype(np.int64)
        return sizes

    def paths(self) -> np.ndarray:
        """The cluster of every point at every level [N, L]: column l is its level-(l+1) cluster."""
        cols = [self.assignments[0]]
        for a in self.assignments[1:]:
            cols.append(a[cols[-1]])
        return np.stack(cols, 1)

    def path(self, i: int) -> tuple[int, ...]:
        """The clusters of point i from level 1 up to the top."""
        out = [int(self.assignments[0][i])]
        for a in self.assignments[1:]:
            out.append(int(a[out[-1]]))
        return tuple(out)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for level, (c, a) in enumerate(zip(self.centroids, self.assignments), 1):
            for name, arr in ((f"level{level}_centroids.npy", c), (f"level{level}_assignment.npy", a)):
                atomic_write(folder / name, lambda tmp, arr=arr: _save_npy(tmp, arr), size=arr.nbytes)
        meta = {"format": "dinokit.curate.Tree", "version": 1, "n_points": self.n_points,
                "levels": [len(c) for c in self.centroids]}  # fmt: skip
        # written last: a folder with tree.json holds a complete tree
        atomic_write_text(folder / "tree.json", json.dumps(meta, indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = False) -> Tree:
        folder = Path(folder)
        meta = json.loads((folder / "tree.json").read_text())
        mode = "r" if mmap else None
        levels = range(1, len(meta["levels"]) + 1)
        return cls([np.load(folder / f"level{i}_centroids.npy", mmap_mode=mode) for i in levels],
                   [np.load(folder / f"level{i}_assignment.npy", mmap_mode=mode) for i in levels])  # fmt: skip


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with path.open("wb") as f:  # a file object: np.save would add ".npy" to the temporary name
        np.save(f, arr)


def _seed(seed: int, level: int, step: int) -> int:
    """An independent seed for each k-means run of the hierarchy."""
    return int(np.random.SeedSequence([seed, level, step]).generate_state(1)[0])


def _gathered(local: np.ndarray, lo: int, total: int, on: bool) -> np.ndarray:
    """The int64 values of every rank's rows [total], from this rank's [n] starting at global row `lo`."""
    if not on:
        return local
    out = torch.zeros(total, dtype=torch.int64)
    out[lo : lo + len(local)] = torch.from_numpy(local)
    return _all_reduce(out, on).numpy()


def _nearest_per_cluster(x, c: np.ndarray, a: np.ndarray, size: int, lo: int, chunk: int, device,
                         on: bool) -> np.ndarray:  # fmt: skip
    """Local indices of this rank's rows among the `size` rows nearest each centroid of c [k, D] over all ranks
    (a [n]: the local rows' clusters; ties broken by global row index)."""
    n, k = len(x), len(c)
    cc = torch.as_tensor(np.asarray(c, dtype=np.float64), device=device)  # [k, D]
    d = np.empty(n)  # [n] squared distance of each row to its own centroid, in float64: the order is exact
    for s in range(0, n, chunk):
        xc = _rows(x, s, min(s + chunk, n), device).double()  # [n_c, D]
        d[s : s + len(xc)] = ((xc - cc[torch.from_numpy(a[s : s + len(xc)]).to(device)]) ** 2).sum(1).cpu().numpy()
    order = np.lexsort((np.arange(n), d, a))  # by cluster, then distance, then row
    first = np.searchsorted(a[order], np.arange(k))  # [k] where each cluster starts in `order`
    rank_in = np.arange(n) - first[a[order]]  # position of each sorted row within its cluster
    local = order[rank_in < size]  # no rank needs more than `size` of its own rows per cluster
    if not on:
        return np.sort(local)
    # every rank's candidates (cluster, distance, global row), merged to the global `size` nearest per cluster
    count = torch.zeros(dist.get_world_size(), dtype=torch.int64)
    count[dist.get_rank()] = len(local)
    count = _all_reduce(count, on)
    at = int(count[: dist.get_rank()].sum())
    table = torch.zeros(int(count.sum()), 3, dtype=torch.float64)  # [m, 3] cluster, distance, global row
    table[at : at + len(local)] = torch.from_numpy(np.stack([a[local], d[local], local + lo], 1).astype(np.float64))
    table = _all_reduce(table, on).numpy()
    order = np.lexsort((table[:, 2], table[:, 1], table[:, 0]))
    cl = table[order, 0].astype(np.int64)
    rank_in = np.arange(len(order)) - np.searchsorted(cl, np.arange(k))[cl]
    chosen = table[order[rank_in < size], 2].astype(np.int64)  # global rows
    return np.sort(chosen[(chosen >= lo) & (chosen < lo + n)] - lo)


def _level_done(folder: Path | None, level: int, fingerprint) -> tuple[np.ndarray, np.ndarray] | None:
    """The centroids and assignment of `level` saved in `folder` by a run with the same `fingerprint`, or None."""
    marker = folder / f"level{level}.json" if folder is not None else None
    if marker is None or not marker.is_file() or json.loads(marker.read_text()) != {"fingerprint": fingerprint}:
        return None
    return np.load(folder / f"level{level}_centroids.npy"), np.load(folder / f"level{level}_assignment.npy")


def _save_level(folder: Path, level: int, c: np.ndarray, a: np.ndarray, fingerprint) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in ((f"level{level}_centroids.npy", c), (f"level{level}_assignment.npy", a)):
        atomic_write(folder / name, lambda tmp, arr=arr: _save_npy(tmp, arr), size=arr.nbytes)
    # the marker last: a level is only taken back when both its arrays are whole
    atomic_write_text(folder / f"level{level}.json", json.dumps({"fingerprint": fingerprint}) + "\n")


def hierarchical_kmeans(x, levels: list[int], resampling_steps: list[int] | None = None,
                        sample_sizes: list[int] | None = None, iters: int = 50, seed: int = 0, chunk: int = CHUNK,
                        device=None, progress: bool = False, init: str = "auto",
                        resume: str | Path | None = None, fingerprint=None,
                        distributed: bool | None = None) -> Tree:  # fmt: skip
    """Cluster x [N, D] into len(levels) levels of k_1 > k_2 > … clusters (see the module docstring).
    `resampling_steps[l]` (default 1: plain k-means) and `sample_sizes[l]` (items closest to each centroid kept for
    every step after the first) are per level; the released web configuration used 1/10/10/10 and 1/10/5/3.
    `init`: the seeding of every k-means (`kmeans`). `progress`: a tqdm bar over the Lloyd updates of all levels.

    `resume`: a folder where each finished level is saved (`level{l}_*.npy`, then `level{l}.json` holding
    `fingerprint`, which should identify the settings and the input); a rerun with the same fingerprint takes those
    levels back instead of recomputing them, so an interruption loses at most the level in progress.
    `distributed` (None: when torch.distributed is initialised): x is this rank's share of the rows; level 1 is
    clustered over all ranks (`kmeans` all-reduces its sums), the upper levels, which cluster centroids, run on
    every rank alike; every rank returns the whole tree, equal to one process on the concatenated rows. Only rank 0
    writes to `resume`, which must then be a folder every rank can read."""
    resampling_steps = resampling_steps or [1] * len(levels)
    sample_sizes = sample_sizes or [1] * len(levels)
    if not len(levels) == len(resampling_steps) == len(sample_sizes):
        raise ValueError("levels, resampling_steps and sample_sizes need one entry per level")
    from tqdm.auto import tqdm

    on = _distributed(distributed)
    writer = not on or dist.get_rank() == 0
    folder = Path(resume) if resume is not None else None
    offsets, lo = _layout(len(x), torch.device(device or "cpu"), on)
    bar = tqdm(total=iters * sum(resampling_steps), desc="k-means", unit="update", disable=not (progress and writer))
    centroids, assignments, items = [], [], x
    for level, (k, steps, size) in enumerate(zip(levels, resampling_steps, sample_sizes), 1):
        shared = on and level == 1  # the only level whose items are split over ranks
        bar.set_postfix(level=f"{level}/{len(levels)}", k=k)
        done = _level_done(folder, level, fingerprint)
        if done is not None:
            c, a = done
            bar.update(iters * steps)
        else:
            c, a = kmeans(items, k, iters, _seed(seed, level, 0), chunk, device, distributed=shared,
                          on_iter=bar.update, init=init)  # fmt: skip
            for step in range(1, steps):
                picked = _nearest_per_cluster(items, c, a, size, lo if shared else 0, chunk, device, shared)
                # refit on the items nearest the centroids, then place every item under the new centroids
                c, _ = kmeans(items[picked], k, iters, _seed(seed, level, step), chunk, device, distributed=shared,
                              on_iter=bar.update, init=init)  # fmt: skip
                a = assign(items, c, chunk, device)
            a = _gathered(a, lo, int(offsets[-1]), shared)
            if folder is not None and writer:
                _save_level(folder, level, c, a, fingerprint)
        centroids.append(c)
        assignments.append(a)
        items = c
    bar.close()
    return Tree(centroids, assignments)
