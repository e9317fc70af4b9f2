"""Balanced sampling: the allocation rule on a hand-computed case, its invariants, flattening of Zipf-sized
clusters, determinism, and the "closest" leaf strategy."""

import numpy as np
import pytest

from dinokit.curate import Tree, allocate, balanced_sample, best_cap, hierarchical_kmeans


def test_allocation_hand_computed():
    sizes = [100, 50, 10, 5, 1]
    # Σ min(x, size) = 2x + 16 for 10 ≤ x ≤ 50: 60 is met exactly at x = 22
    assert best_cap(sizes, 60) == 22
    assert allocate(sizes, 60, np.random.default_rng(0)).tolist() == [22, 22, 10, 5, 1]
    # 61: cap 22 (Σ = 60), the one left over goes to one of the two clusters larger than 22
    assert best_cap(sizes, 61) == 22
    seen = {tuple(allocate(sizes, 61, np.random.default_rng(s)).tolist()) for s in range(20)}
    assert seen == {(23, 22, 10, 5, 1), (22, 23, 10, 5, 1)}
    # 14: Σ min(3, ·) = 13, Σ min(4, ·) = 17 → cap 3, one extra among the four clusters larger than 3
    assert best_cap(sizes, 14) == 3
    counts = allocate(sizes, 14, np.random.default_rng(0))
    assert counts.sum() == 14 and sorted(counts[:4].tolist()) == [3, 3, 3, 4] and counts[4] == 1
    assert allocate(sizes, 500, np.random.default_rng(0)).tolist() == sizes  # everything fits
    assert allocate(sizes, 0, np.random.default_rng(0)).tolist() == [0] * 5


def test_allocation_invariants_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 40, size=rng.integers(1, 12))
        target = int(rng.integers(0, sizes.sum() + 5))
        cap = best_cap(sizes, target)
        if sizes.sum() > target:
            assert cap == max(x for x in range(sizes.max() + 1) if np.minimum(x, sizes).sum() <= target)
        counts = allocate(sizes, target, rng)
        assert counts.sum() == min(target, sizes.sum()) and (counts <= sizes).all()
        assert (counts >= np.minimum(cap, sizes)).all() and (counts <= cap + 1).all()


def test_allocation_rejects_negative():
    with pytest.raises(ValueError):
        best_cap([3, -1], 2)


def flat_tree(sizes, dim=2):
    """A one-level tree whose cluster i holds sizes[i] consecutive points."""
    assignment = np.repeat(np.arange(len(sizes)), sizes)
    return Tree([np.zeros((len(sizes), dim), np.float32)], [assignment])


def zipf_sizes(n_clusters=60, largest=2000, s=1.3):
    return np.maximum(1, (largest / np.arange(1, n_clusters + 1) ** s).astype(np.int64))


def test_zipf_clusters_are_flattened():
    sizes = zipf_sizes()  # 2000 … 9: a ratio of about 220
    tree = flat_tree(sizes)
    sample = balanced_sample(tree, 1500, seed=0)
    assert len(sample) == 1500 and len(np.unique(sample)) == 1500
    per_cluster = np.bincount(tree.assignments[0][sample], minlength=len(sizes))
    cap = best_cap(sizes, 1500)
    # small clusters are taken whole, the others cut to the cap (or cap + 1): the ratio is what the sizes allow
    assert (per_cluster <= np.minimum(cap + 1, sizes)).all()
    assert (per_cluster >= np.minimum(cap, sizes)).all()
    assert per_cluster.max() / per_cluster.min() <= (cap + 1) / sizes.min()
    assert per_cluster.max() / per_cluster.min() < sizes.max() / sizes.min() / 5


def test_two_levels_share_top_down():
    leaf_sizes = zipf_sizes(12, 400)  # 12 leaf clusters under 3 parents of 4
    tree = Tree([np.zeros((12, 2), np.float32), np.zeros((3, 2), np.float32)],
                [np.repeat(np.arange(12), leaf_sizes), np.repeat(np.arange(3), 4)])  # fmt: skip
    sample = balanced_sample(tree, 120, seed=1)
    parents = tree.paths()[sample, 1]
    under = tree.flat_sizes(2)
    # the parents get the allocation of their point counts, then each parent's share is spread over its leaves
    assert np.bincount(parents, minlength=3).tolist() == allocate(under, 120, np.random.default_rng(1)).tolist()
    leaves = np.bincount(tree.assignments[0][sample], minlength=12)
    for p in range(3):  # inside a parent, the same rule over its leaves
        kids = np.arange(4 * p, 4 * p + 4)
        assert (leaves[kids] >= np.minimum(best_cap(leaf_sizes[kids], leaves[kids].sum()), leaf_sizes[kids])).all()


def test_deterministic_under_seed():
    tree = flat_tree(zipf_sizes())
    a, b = balanced_sample(tree, 700, seed=5), balanced_sample(tree, 700, seed=5)
    assert np.array_equal(a, b) and not np.array_equal(a, balanced_sample(tree, 700, seed=6))
    assert len(balanced_sample(tree, 10**6)) == tree.n_points  # asking for more than the pool takes it all


def test_closest_takes_the_points_nearest_the_centroid():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    tree = hierarchical_kmeans(x, [6, 2], iters=5)
    sample = balanced_sample(tree, 60, strategy="closest", x=x)
    assert len(sample) == 60
    a = tree.assignments[0]
    for c in range(6):
        chosen, rest = np.intersect1d(sample, np.flatnonzero(a == c)), np.setdiff1d(np.flatnonzero(a == c), sample)
        d = lambda rows: np.linalg.norm(x[rows] - tree.centroids[0][c], axis=1)  # noqa: B023
        if len(chosen) and len(rest):
            assert d(chosen).max() <= d(rest).min()
    with pytest.raises(ValueError, match="needs the embeddings"):
        balanced_sample(tree, 60, strategy="closest")
