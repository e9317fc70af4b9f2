"""k-means: blob recovery, determinism, chunked memmap input, 2-process gloo equals 1 process; hierarchical k-means
tree shapes and save/load."""

import importlib
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinokit.curate import Tree, assign, hierarchical_kmeans, kmeans


def blobs(n=1000, k=5, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 20
    labels = rng.integers(k, size=n)
    return (centers[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels, centers


@pytest.mark.parametrize("init", ["k-means++", "k-means-parallel"])
def test_recovers_well_separated_blobs(init):
    x, labels, centers = blobs()
    c, a = kmeans(x, 5, iters=10, seed=0, init=init)
    # one cluster per blob: the assignment is the labelling up to a permutation
    pairs = set(zip(labels.tolist(), a.tolist()))
    assert len(pairs) == 5 and len({p[1] for p in pairs}) == 5
    for label, cluster in pairs:
        np.testing.assert_allclose(c[cluster], x[labels == label].mean(0), atol=1e-4)
    assert (assign(x, c) == a).all()


def test_deterministic_under_seed_and_chunking():
    x, _, _ = blobs(k=12)
    c1, a1 = kmeans(x, 8, iters=15, seed=3, chunk=64)
    c2, a2 = kmeans(x, 8, iters=15, seed=3, chunk=64)
    assert np.array_equal(c1, c2) and np.array_equal(a1, a2)
    c3, a3 = kmeans(x, 8, iters=15, seed=3, chunk=1000)  # block size changes no result
    np.testing.assert_allclose(c1, c3, atol=1e-5)
    assert np.array_equal(a1, a3)
    c4, _ = kmeans(x, 8, iters=15, seed=4, chunk=64)
    assert not np.allclose(c1, c4)


def test_parallel_seeding_is_as_good_as_kmeans_pp_and_needs_few_passes():
    x, _, _ = blobs(n=4000, k=40, dim=16, seed=1)

    def inertia(c):
        return float(((x - c[assign(x, c)]) ** 2).sum())

    class Counted:  # the pool, counting how many times it was read through
        shape, rows = x.shape, 0

        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            Counted.rows += len(x[i])
            return x[i]

    pp, _ = kmeans(Counted(), 40, iters=0, seed=0, init="k-means++")
    passes_pp, Counted.rows = Counted.rows / len(x), 0
    par, _ = kmeans(Counted(), 40, iters=0, seed=0, init="k-means-parallel")
    passes_par = Counted.rows / len(x)
    assert passes_pp > 2 * 40 and passes_par < 10  # two passes per centre, against a handful in all
    # the seedings alone (no Lloyd update) are equally good: within 20 % of each other's inertia
    assert inertia(par) < 1.2 * inertia(pp)
    with pytest.raises(ValueError, match="init must be"):
        kmeans(x, 4, init="random")


def test_float16_memmap_read_in_chunks(tmp_path):
    x, _, _ = blobs()
    np.save(tmp_path / "emb.npy", x.astype(np.float16))
    pool = np.load(tmp_path / "emb.npy", mmap_mode="r")
    c, a = kmeans(pool, 5, iters=5, seed=0, chunk=100)
    c_ref, a_ref = kmeans(x.astype(np.float16).astype(np.float32), 5, iters=5, seed=0, chunk=100)
    assert pool.dtype == np.float16 and c.dtype == np.float32
    reads = []

    class Recorded:  # the memmap, remembering how many rows each read took
        shape = pool.shape

        def __len__(self):
            return len(pool)

        def __getitem__(self, i):
            reads.append(len(pool[i]))
            return pool[i]

    c_rec, _ = kmeans(Recorded(), 5, iters=5, seed=0, chunk=100)
    assert max(reads) == 100 and np.array_equal(c_rec, c)
    np.testing.assert_array_equal(c, c_ref)
    np.testing.assert_array_equal(a, a_ref)


def test_empty_clusters_keep_their_centroid():
    # 3 distinct points for 5 clusters: the seeding duplicates points, the duplicates' clusters stay empty
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)
    c, a = kmeans(x, 5, iters=3, seed=0)
    assert np.isfinite(c).all() and len(np.unique(a)) == 3
    np.testing.assert_allclose(c[a], x)


def test_too_few_points():
    with pytest.raises(ValueError, match="at least 5 points"):
        kmeans(np.zeros((3, 2), np.float32), 5)


def test_hierarchical_tree_shapes_paths_and_round_trip(tmp_path):
    x, _, _ = blobs(n=600)
    tree = hierarchical_kmeans(x, [40, 8, 3], resampling_steps=[1, 3, 2], sample_sizes=[1, 3, 2], iters=10)
    assert [c.shape for c in tree.centroids] == [(40, 8), (8, 8), (3, 8)]
    assert [len(a) for a in tree.assignments] == [600, 40, 8]
    assert all(a.max() < len(c) for a, c in zip(tree.assignments, tree.centroids))
    assert [tree.flat_sizes(level).sum() for level in (1, 2, 3)] == [600] * 3
    paths = tree.paths()
    assert paths.shape == (600, 3) and tuple(paths[17]) == tree.path(17)
    assert paths[17, 1] == tree.assignments[1][paths[17, 0]]
    # level 2 without resampling is k-means of the level-1 centroids
    plain = hierarchical_kmeans(x, [40, 8], iters=10)
    np.testing.assert_array_equal(plain.centroids[0], tree.centroids[0])
    assert np.array_equal(plain.assignments[1], assign(plain.centroids[0], plain.centroids[1]))

    tree.save(tmp_path / "tree")
    names = ["tree.json"] + [f"level{i}_{n}.npy" for i in (1, 2, 3) for n in ("centroids", "assignment")]
    assert sorted(p.name for p in (tmp_path / "tree").iterdir()) == sorted(names)
    again = Tree.load(tmp_path / "tree")
    for a, b in zip(tree.centroids + tree.assignments, again.centroids + again.assignments):
        np.testing.assert_array_equal(a, b)


def test_hierarchical_deterministic_under_seed():
    x, _, _ = blobs(n=400)
    t1 = hierarchical_kmeans(x, [20, 4], [1, 3], [1, 2], iters=5, seed=1)
    t2 = hierarchical_kmeans(x, [20, 4], [1, 3], [1, 2], iters=5, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(t1.centroids + t1.assignments, t2.centroids + t2.assignments))


SPLIT = 530  # uneven shards: rank 0 holds rows [0, 530), rank 1 the rest


def _on_two_ranks(worker, *args) -> None:
    """Run `worker(rank, shard, *args)` in 2 gloo processes, rank 0 on rows [0, SPLIT) of the blobs, rank 1 on the
    rest."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gloo, args=(port, worker, args), nprocs=2, join=True)


def _gloo(rank, port, worker, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x, _, _ = blobs(k=12)
        worker(rank, x[:SPLIT] if rank == 0 else x[SPLIT:], *args)
    finally:
        dist.destroy_process_group()


def _worker(rank, shard, out, init):
    c, a = kmeans(shard, 8, iters=15, seed=3, chunk=64, init=init)
    np.save(os.path.join(out, f"rank{rank}_seeds.npy"), kmeans(shard, 8, iters=0, seed=3, init=init)[0])
    np.save(os.path.join(out, f"rank{rank}_c.npy"), c)
    np.save(os.path.join(out, f"rank{rank}_a.npy"), a)


@pytest.mark.parametrize("init", ["k-means++", "k-means-parallel"])
def test_two_gloo_processes_equal_one(tmp_path, init):
    _on_two_ranks(_worker, str(tmp_path), init)
    x, _, _ = blobs(k=12)
    c, a = kmeans(x, 8, iters=15, seed=3, chunk=64, init=init)
    seeds, _ = kmeans(x, 8, iters=0, seed=3, init=init)  # the seeding alone is the same too
    for rank in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{rank}_seeds.npy"), seeds)
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}_c.npy"), c, atol=1e-5)
    a_dist = np.concatenate([np.load(tmp_path / f"rank{r}_a.npy") for r in range(2)])
    np.testing.assert_array_equal(a_dist, a)


def test_hierarchical_resume_takes_finished_levels_back(tmp_path, monkeypatch):
    x, _, _ = blobs(n=600, k=10)
    args = dict(levels=[30, 6, 2], resampling_steps=[2, 2, 1], sample_sizes=[4, 2, 1], iters=4, seed=2)
    whole = hierarchical_kmeans(x, **args)
    km = importlib.import_module("dinokit.curate.kmeans")  # the module: `dinokit.curate.kmeans` is the function

    real, calls = km.kmeans, []

    def interrupted(items, k, *a, **kw):  # the run is killed while level 3 is being clustered
        calls.append(k)
        if k == 2:
            raise KeyboardInterrupt
        return real(items, k, *a, **kw)

    monkeypatch.setattr(km, "kmeans", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hierarchical_kmeans(x, **args, resume=tmp_path, fingerprint={"run": 1})
    assert sorted(p.name for p in tmp_path.glob("level*.json")) == ["level1.json", "level2.json"]
    calls.clear()
    monkeypatch.setattr(km, "kmeans", lambda items, k, *a, **kw: (calls.append(k), real(items, k, *a, **kw))[1])
    resumed = hierarchical_kmeans(x, **args, resume=tmp_path, fingerprint={"run": 1})
    assert calls == [2]  # only the level in progress is clustered again
    for a, b in zip(whole.centroids + whole.assignments, resumed.centroids + resumed.assignments):
        np.testing.assert_array_equal(a, b)
    calls.clear()
    hierarchical_kmeans(x, **args, resume=tmp_path, fingerprint={"run": 2})  # other settings: nothing taken back
    assert calls == [30, 30, 6, 6, 2]


def _hier_worker(rank, shard, out):
    tree = hierarchical_kmeans(shard, [24, 5], [3, 2], [6, 2], iters=6, seed=5, chunk=64)
    tree.save(os.path.join(out, f"rank{rank}"))


def test_hierarchical_two_gloo_processes_equal_one(tmp_path):
    _on_two_ranks(_hier_worker, str(tmp_path))
    x, _, _ = blobs(k=12)
    one = hierarchical_kmeans(x, [24, 5], [3, 2], [6, 2], iters=6, seed=5, chunk=64)
    for rank in range(2):
        tree = Tree.load(tmp_path / f"rank{rank}")
        for a, b in zip(one.assignments, tree.assignments):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(one.centroids, tree.centroids):
            np.testing.assert_allclose(a, b, atol=1e-5)
