"""k-means and hierarchical k-means for data curation (DINOv3 §3.1; Vo et al. 2024, "Automatic data curation for
self-supervised learning", released as facebookresearch/ssl-data-curation).

`kmeans`: greedy k-means++ seeding (each new centre is the best of 2 + ⌊ln k⌋ candidates drawn ∝ D², as in the
released code and scikit-learn) followed by Lloyd iterations; `iters` counts centroid updates, each followed by a
re-assignment, as released. `hierarchical_kmeans`: level ℓ clusters the centroids of level ℓ−1; each level runs
`resampling_steps[ℓ]` rounds, the first on all its items and every later one on the `sample_sizes[ℓ]` items closest
to each centroid of the round before, after which all items are re-assigned to the new centroids (the released
`run_distributed_kmeans.py` "steps"; one step means plain k-means).

Deviations from the released code, and why:
- The pool is never cast to float64 nor held whole: rows are read `chunk` at a time (a float16/float32 memmap
  works), distances are float32 and only the per-cluster sums and k-means++ potentials accumulate in float64.
  The released code loads each rank's shard to the GPU in float64 for the 4-level web configuration.
- Distances to the centroids are never materialised for all rows: at most `chunk × k` at once. The seeding keeps
  one float64 per local row (the squared distance to the nearest centre) and reads the rows twice per centre.
- Distributed (torch.distributed initialised, each rank passing its own rows): every rank keeps the same numpy
  generator, so the uniform draws of k-means++ are identical everywhere; a draw is resolved on the rank whose rows
  hold that part of the potential, candidate rows are shared by an all-reduce (the owner writes, the others add
  zeros) and candidate potentials are all-reduced. The released code makes the draws on rank 0 and broadcasts
  them; the result is the same seeding, without a gathered copy of the squared distances on rank 0. Centroid sums
  and counts are all-reduced, so the result equals one process on the concatenated rows; the assignment returned
  is that of the rank's own rows (the released code all-gathers it to every rank).
- Empty clusters keep their previous centroid (as released); so a seeding with duplicate points stays stable.
- Randomness comes from `seed` (numpy `default_rng`), not from the global numpy state.
- `hierarchical_kmeans` runs in one process (levels above the first are small); the released level-1 split of
  each cluster into `n_splits` sub-clusters is not implemented (use a larger k for level 1).
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

CHUNK = 16384  # rows per block: bounds the [chunk, k] distance block and the rows converted at once


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
    for s in range(0, n, chunk):
        xc = _rows(x, s, min(s + chunk, n), device)  # [n_c, D]
        a = (c_sq - 2 * xc @ c.T).argmin(1)  # [n_c]
        out[s : s + len(xc)] = a.cpu()
        if sums:
            total.index_add_(0, a, xc.double())  # float64 per block only, never the whole pool
            count += torch.bincount(a, minlength=k)
    return out, total, count


def _kmeans_pp(x, k: int, rng: np.random.Generator, chunk: int, device, on: bool) -> torch.Tensor:
    """Greedy k-means++ seeding [k, D], identical on every rank (see the module docstring)."""
    n, dim = len(x), x.shape[1]
    n_all = [n]
    if on:
        sizes = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=device)
        sizes[dist.get_rank()] = n
        n_all = _all_reduce(sizes, on).tolist()
    offsets = np.concatenate([[0], np.cumsum(n_all)])  # global index of each rank's first row
    lo = int(offsets[dist.get_rank()]) if on else 0
    if offsets[-1] < k:
        raise ValueError(f"k-means with k={k} needs at least {k} points, got {offsets[-1]}")
    trials = 2 + int(math.log(k))

    def fetch(ids: np.ndarray) -> torch.Tensor:
        """Rows of the global indices `ids` [m] on every rank: the owner writes them, the others add zeros."""
        rows = torch.zeros(len(ids), dim, dtype=torch.float32, device=device)  # [m, D]
        for j, g in enumerate(ids):
            if lo <= g < lo + n:
                rows[j] = _rows(x, int(g - lo), int(g - lo) + 1, device)[0]
        return _all_reduce(rows, on)

    def lowered(c: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """min(closest, squared distance to each candidate of c [m, D]) [n, m] for the local rows, yielded block by
        block so that no [N, m] array is held."""
        c_sq = (c * c).sum(1)  # [m]
        for s in range(0, n, chunk):
            xc = _rows(x, s, min(s + chunk, n), device)  # [n_c, D]
            yield s, torch.minimum(closest[s : s + len(xc), None], _sq_dist(xc, c, c_sq).double())  # [n_c, m]

    centers = torch.empty(k, dim, dtype=torch.float32, device=device)  # [k, D]
    centers[0] = fetch(np.array([rng.integers(offsets[-1])]))[0]
    closest = torch.full((n,), math.inf, dtype=torch.float64, device=device)  # [n] to the nearest chosen centre
    for s, d in lowered(centers[:1]):
        closest[s : s + len(d)] = d[:, 0]
    for i in range(1, k):
        local_pot = torch.zeros(len(n_all), dtype=torch.float64, device=device)
        local_pot[dist.get_rank() if on else 0] = closest.sum()
        pot = _all_reduce(local_pot, on).cpu().numpy()  # [world] potential held by each rank
        draws = rng.uniform(size=trials) * pot.sum()  # same draws on every rank
        # resolve each draw on the rank holding that stretch of the cumulative potential
        owner = np.minimum(np.searchsorted(np.cumsum(pot), draws, side="right"), len(pot) - 1)
        ids = np.zeros(trials, dtype=np.int64)
        mine = owner == (dist.get_rank() if on else 0)
        if mine.any() and n:
            before = pot[: owner[mine][0]].sum()
            local = torch.searchsorted(closest.cumsum(0), torch.from_numpy(draws[mine] - before).to(closest))
            ids[mine] = lo + local.clamp(max=n - 1).cpu().numpy()
        ids = _all_reduce(torch.from_numpy(ids).to(device), on).cpu().numpy()  # [trials] global row indices
        cand = fetch(ids)  # [trials, D]
        pots = torch.zeros(trials, dtype=torch.float64, device=device)  # [trials] potential with each candidate
        for _, d in lowered(cand):
            pots += d.sum(0)
        best = int(_all_reduce(pots, on).argmin())  # the candidate that lowers the potential most
        centers[i] = cand[best]
        for s, d in lowered(cand[best : best + 1]):
            closest[s : s + len(d)] = d[:, 0]
    return centers


def kmeans(x, k: int, iters: int = 50, seed: int = 0, chunk: int = CHUNK, device=None,
           distributed: bool | None = None, on_iter: Callable[[], object] | None = None,
           ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """k-means++ then `iters` Lloyd updates of the rows of x [N, D] (numpy array, memmap or tensor, any float
    dtype). Returns (centroids [k, D] float32, assignment [N] int64 of these rows). `distributed`: None means
    "when torch.distributed is initialised", in which case x is this rank's shard of the rows. `on_iter` is called
    after each update (a progress bar's tick)."""
    on = _distributed(distributed)
    device = torch.device(device or "cpu")
    rng = np.random.default_rng(seed)
    c = _kmeans_pp(x, k, rng, chunk, device, on)  # [k, D]
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


def hierarchical_kmeans(x, levels: list[int], resampling_steps: list[int] | None = None,
                        sample_sizes: list[int] | None = None, iters: int = 50, seed: int = 0, chunk: int = CHUNK,
                        device=None, progress: bool = False) -> Tree:  # fmt: skip
    """Cluster x [N, D] into len(levels) levels of k_1 > k_2 > … clusters (see the module docstring).
    `resampling_steps[l]` (default 1: plain k-means) and `sample_sizes[l]` (items closest to each centroid kept for
    every step after the first) are per level; the released web configuration used 1/10/10/10 and 1/10/5/3.
    `progress`: a tqdm bar over the Lloyd updates of all levels."""
    resampling_steps = resampling_steps or [1] * len(levels)
    sample_sizes = sample_sizes or [1] * len(levels)
    if not len(levels) == len(resampling_steps) == len(sample_sizes):
        raise ValueError("levels, resampling_steps and sample_sizes need one entry per level")
    from tqdm.auto import tqdm

    bar = tqdm(total=iters * sum(resampling_steps), desc="k-means", unit="update", disable=not progress)
    centroids, assignments, items = [], [], x
    for level, (k, steps, size) in enumerate(zip(levels, resampling_steps, sample_sizes), 1):
        bar.set_postfix(level=f"{level}/{len(levels)}", k=k)
        c, a = kmeans(items, k, iters, _seed(seed, level, 0), chunk, device, distributed=False, on_iter=bar.update)
        for step in range(1, steps):
            picked = np.sort(np.concatenate([m[:size] for m in closest_first(items, c, a, device)]))
            # refit on the items nearest the centroids, then place every item under the new centroids
            c, _ = kmeans(items[picked], k, iters, _seed(seed, level, step), chunk, device, distributed=False,
                          on_iter=bar.update)  # fmt: skip
            a = assign(items, c, chunk, device)
        centroids.append(c)
        assignments.append(a)
        items = c
    bar.close()
    return Tree(centroids, assignments)
