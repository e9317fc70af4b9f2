"""Near-duplicate groups and decontamination: planted duplicates found (exact, IVF, HNSW), chains, determinism, float16
memmap input, representatives and groups.json, decontamination through a chain of pool rows."""

import numpy as np
import pytest

from dinokit.curate.dedup import decontaminate, groups_json, near_duplicate_groups, representatives
from dinokit.errors import ConfigError


def unit(rng, n, dim):
    x = rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted(n=3000, dim=64, copies=600, seed=0):
    """`n` random unit vectors (pairwise cosine ≈ 0 ± 0.13) of which the last `copies` are noisy copies (cosine ≈ 0.98,
    unnormalised) of distinct earlier rows; returns the vectors and the true group of every row."""
    rng = np.random.default_rng(seed)
    x = unit(rng, n, dim)
    src = rng.choice(n - copies, size=copies, replace=False)
    x[n - copies :] = 3 * (x[src] + 0.2 * unit(rng, copies, dim))  # ‖noise‖ = 0.2 → cosine ≈ 1 / √1.04 ≈ 0.98
    truth = np.arange(n)
    truth[n - copies :] = src
    return x.astype(np.float32), truth


def pair_scores(labels, truth):
    """Precision and recall of the same-group pairs predicted by `labels` against `truth`."""
    off = ~np.eye(len(labels), dtype=bool)  # [N, N]: a row paired with itself is no finding
    pred, true = (labels[:, None] == labels) & off, (truth[:, None] == truth) & off
    both = (pred & true).sum()
    return both / max(pred.sum(), 1), both / max(true.sum(), 1)


@pytest.mark.parametrize("index", ["exact", "ivf", "hnsw"])
def test_planted_duplicates_found(index):
    x, truth = planted()
    labels = near_duplicate_groups(x, threshold=0.9, k=8, index=index, batch=500)
    precision, recall = pair_scores(labels, truth)
    assert precision >= 0.99 and recall >= 0.99, (precision, recall)
    assert len(representatives(labels)) == len(np.unique(truth)) == 2400


def great_circle(rng, dim, n):
    """`n` unit vectors on a great circle, consecutive ones at cosine 0.95, two steps apart at cos 2θ ≈ 0.805 < 0.9;
    and a unit vector orthogonal to all of them."""
    v, w, other = np.linalg.qr(rng.normal(size=(dim, 3)))[0].T  # orthonormal
    theta = np.arccos(0.95)
    return [np.cos(i * theta) * v + np.sin(i * theta) * w for i in range(n)], other


def test_chain_forms_one_component_and_ids_follow_smallest_row():
    chain, other = great_circle(np.random.default_rng(1), 16, 4)
    x = np.stack([other, chain[2], chain[0], other * -1, chain[3], chain[1]])  # rows scattered, not in chain order
    labels = near_duplicate_groups(x, threshold=0.9, k=3)
    assert labels.tolist() == [0, 1, 1, 2, 1, 1]


def test_deterministic_and_memmap_float16(tmp_path):
    x, truth = planted(n=1500, copies=300, seed=2)
    path = tmp_path / "emb.npy"
    np.save(path, x.astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    for index in ("exact", "ivf"):
        a = near_duplicate_groups(x, 0.9, k=8, index=index, batch=256, seed=5)
        b = near_duplicate_groups(mm, 0.9, k=8, index=index, batch=100, seed=5)
        assert np.array_equal(a, b)
        assert np.array_equal(a, near_duplicate_groups(x, 0.9, k=8, index=index, batch=256, seed=5))
    # component ids numbered by smallest row: the first occurrences of the ids are 0, 1, 2, … in row order
    first = representatives(a)
    assert np.array_equal(a[first], np.arange(len(first))) and np.array_equal(first, np.sort(first))


def test_representatives_and_groups_json():
    labels = np.array([0, 1, 0, 2, 1, 0])
    assert representatives(labels).tolist() == [0, 1, 3]
    quality = np.array([0.1, 0.5, 0.9, 0.3, 0.5, 0.2])
    order = np.argsort(-quality, kind="stable")  # ties broken by row: rows 1 and 4 tie, row 1 wins
    keep = representatives(labels, order)
    assert keep.tolist() == [1, 2, 3]
    names = [f"img{i}.jpg" for i in range(6)]
    assert groups_json(labels, names) == {"img0.jpg": ["img0.jpg", "img2.jpg", "img5.jpg"],
                                          "img1.jpg": ["img1.jpg", "img4.jpg"]}  # fmt: skip
    assert groups_json(labels, names, keep) == {"img2.jpg": ["img0.jpg", "img2.jpg", "img5.jpg"],
                                                "img1.jpg": ["img1.jpg", "img4.jpg"]}  # fmt: skip
    assert groups_json(labels) == {"0": ["0", "2", "5"], "1": ["1", "4"]}
    with pytest.raises(ConfigError):
        representatives(labels, [0, 1, 2])


def test_decontaminate_drops_components_touching_eval():
    rng = np.random.default_rng(3)
    pool = unit(rng, 400, 32)
    ev = unit(rng, 5, 32)
    # eval 0 ~ pool 10 ~ pool 11 in a chain (pool 11 reaches eval 0 only through pool 10); pool 20 copies eval 3;
    # pool 30 ~ pool 31 form a group without any eval image
    (ev[0], pool[10], pool[11]), _ = great_circle(rng, 32, 3)
    pool[20] = ev[3] + 0.1 * unit(rng, 1, 32)[0]
    pool[31] = pool[30] + 0.1 * unit(rng, 1, 32)[0]
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    for index in ("exact", "hnsw"):
        drop = decontaminate(pool.astype(np.float32), ev, threshold=0.9, k=8, index=index)
        assert np.flatnonzero(drop).tolist() == [10, 11, 20]
    # several evaluation sets at once
    drop = decontaminate(pool, [ev[:2], ev[2:]], threshold=0.9, k=8)
    assert np.flatnonzero(drop).tolist() == [10, 11, 20]


def test_bad_arguments():
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ConfigError):
        near_duplicate_groups(x, 0.9, index="pq")
    with pytest.raises(ConfigError):
        near_duplicate_groups(x[0], 0.9)
    with pytest.raises(ConfigError):
        decontaminate(x, np.ones((2, 5), np.float32), 0.5)


def test_ivf_recall_at_larger_n():
    """40,000 rows (625 lists of 64 rows): the planted duplicates are still all found."""
    x, truth = planted(n=40000, copies=4000, seed=4)
    labels = near_duplicate_groups(x, threshold=0.9, k=8, index="ivf", batch=8192)
    precision, recall = pair_scores_sparse(labels, truth)
    assert precision >= 0.99 and recall >= 0.99, (precision, recall)


def pair_scores_sparse(labels, truth):
    """`pair_scores` without the [N, N] matrices: same-group pairs counted per (label, truth) cell."""
    def pairs(c):
        return int((c * (c - 1) // 2).sum())

    both = pairs(np.unique(labels.astype(np.int64) * (truth.max() + 1) + truth, return_counts=True)[1])
    pred, true = pairs(np.unique(labels, return_counts=True)[1]), pairs(np.unique(truth, return_counts=True)[1])
    return both / max(pred, 1), both / max(true, 1)


def test_two_level_training_and_hnsw_quantizer(monkeypatch):
    """The large-N code paths at small N: two-level coarse k-means and the HNSW quantizer keep the recall."""
    import dinokit.curate.dedup as dd

    monkeypatch.setattr(dd, "ROWS_PER_LIST", 8)  # 375 lists for 3,000 rows
    monkeypatch.setattr(dd, "TWO_LEVEL_MIN", 16)
    monkeypatch.setattr(dd, "HNSW_QUANTIZER_MIN", 100)
    x, truth = planted()
    labels = near_duplicate_groups(x, threshold=0.9, k=8, index="ivf", batch=500)
    precision, recall = pair_scores(labels, truth)
    assert precision >= 0.99 and recall >= 0.99, (precision, recall)


@pytest.mark.parametrize("codes", ["fp16", "sq8"])
def test_on_disk_lists_equal_in_memory(tmp_path, codes, capfd):
    x, truth = planted(n=6000, copies=1000, seed=6)
    mem = near_duplicate_groups(x, 0.9, k=8, index="ivf", batch=700, codes=codes)
    disk = near_duplicate_groups(x, 0.9, k=8, index="ivf", batch=700, codes=codes, scratch_dir=tmp_path / "s")
    assert np.array_equal(mem, disk)
    assert list((tmp_path / "s").iterdir()) == []  # the index's subfolder is removed when done
    assert capfd.readouterr().out == ""  # faiss's 'resizing' lines kept off stdout
    assert min(pair_scores(disk, truth)) >= 0.99
    # "auto" with a scratch folder is ivf on disk; the other indexes cannot live there
    assert np.array_equal(disk, near_duplicate_groups(x, 0.9, k=8, batch=700, codes=codes, scratch_dir=tmp_path))
    with pytest.raises(ConfigError):
        near_duplicate_groups(x, 0.9, index="exact", scratch_dir=tmp_path)
    with pytest.raises(ConfigError):
        near_duplicate_groups(x, 0.9, index="ivf", codes="pq")


def test_decontaminate_on_disk(tmp_path):
    rng = np.random.default_rng(3)
    pool, ev = unit(rng, 2000, 32), unit(rng, 5, 32)
    pool[20] = ev[3] + 0.1 * unit(rng, 1, 32)[0]
    drop = decontaminate(pool.astype(np.float32), ev, threshold=0.9, k=8, index="ivf", scratch_dir=tmp_path)
    assert np.flatnonzero(drop).tolist() == [20] and list(tmp_path.iterdir()) == []
