"""Retrieval-based curation (`dinokit curate retrieve` and its Python twins): planted neighbours found exactly per
seed, the threshold, the cluster variant taking only clusters with enough seeds, the CLI end to end on a named .npy
pool (reuse, refusal) and bad inputs (exit status 2)."""

import json

import numpy as np
import pytest

from dinokit.cli import main
from dinokit.curate.embeddings import read_names
from dinokit.curate.retrieval import cluster_retrieval, retrieve_by_clusters, retrieve_per_seed
from dinokit.curate.steps import retrieve

pytest.importorskip("faiss")

D = 32


def planted(n_seeds=5, n_random=300, per_seed=4, seed=0):
    """(pool [N, D], seeds [S, D], planted {seed: its pool rows}): random directions (nearly orthogonal in 32-D),
    with `per_seed` near-copies of every seed (cosine ≈ 0.99) scattered through the pool."""
    rng = np.random.default_rng(seed)
    seeds = rng.normal(size=(n_seeds, D))
    rows = [rng.normal(size=D) for _ in range(n_random)]
    where = rng.permutation(n_random + n_seeds * per_seed)  # the position of every row in the pool
    copies = [seeds[s] + 0.05 * rng.normal(size=D) for s in range(n_seeds) for _ in range(per_seed)]
    pool = np.empty((len(where), D))
    pool[where] = np.array(rows + copies)
    plants = {s: sorted(where[n_random + s * per_seed + j] for j in range(per_seed)) for s in range(n_seeds)}
    return pool, seeds, plants


def brute_force(pool, seeds, k):
    p = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    s = seeds / np.linalg.norm(seeds, axis=1, keepdims=True)
    return np.unique(np.argsort(-(s @ p.T), axis=1)[:, :k])


def test_per_seed_finds_the_planted_neighbours_exactly():
    pool, seeds, plants = planted()
    every = sorted(r for rows in plants.values() for r in rows)
    assert retrieve_per_seed(pool, seeds, k=4).tolist() == every
    # a scale per row and float16 storage change nothing: rows are normalised as they are read
    scaled = (pool * np.random.default_rng(1).uniform(0.1, 10, size=(len(pool), 1))).astype(np.float16)
    assert retrieve_per_seed(scaled, seeds.astype(np.float16), k=4, batch=7).tolist() == every
    # fewer than the planted copies: the nearest ones; more: the exact k nearest, random rows included
    for k in (2, 9):
        assert np.array_equal(retrieve_per_seed(pool, seeds, k=k), brute_force(pool, seeds, k))
    assert retrieve_per_seed(pool, seeds[[2]], k=32).tolist() == brute_force(pool, seeds[[2]], 32).tolist()
    assert retrieve_per_seed(pool, seeds, k=4, index="hnsw").tolist() == every  # approximate, but these are easy
    assert retrieve_per_seed(pool[:3], seeds, k=10).tolist() == [0, 1, 2]  # k beyond the pool: all of it


def test_threshold_keeps_only_close_neighbours():
    pool, seeds, plants = planted()
    every = sorted(r for rows in plants.values() for r in rows)
    # 9 neighbours per seed, of which only the 4 planted copies are near; the rest are random directions
    assert len(retrieve_per_seed(pool, seeds, k=9)) == 45
    assert retrieve_per_seed(pool, seeds, k=9, threshold=0.9).tolist() == every
    assert retrieve_per_seed(pool, seeds, k=9, threshold=1.0).tolist() == []


def blobs(seed=0):
    """4 tight, well separated blobs of 40 rows (blob b = rows 40b … 40b + 39), and seeds: 3 in blob 0, 4 in blob
    1, 1 in blob 2, none in blob 3."""
    rng = np.random.default_rng(seed)
    centres = 5 * rng.normal(size=(4, D))
    pool = np.concatenate([c + 0.5 * rng.normal(size=(40, D)) for c in centres])
    seeds = np.stack([centres[b] + 0.5 * rng.normal(size=D) for b in [0, 0, 0, 1, 1, 1, 1, 2]])
    return pool, seeds


def test_clusters_take_only_clusters_with_enough_seeds():
    pool, seeds = blobs()
    r = cluster_retrieval(pool, seeds, n_clusters=4, per_cluster=100, min_seeds=3, iters=10)
    blob_of = np.repeat(np.arange(4), 40)
    assert sorted(r.seed_counts.tolist()) == [0, 1, 3, 4]
    assert r.rows.tolist() == list(range(80))  # blobs 0 and 1 whole: each holds ≥ 3 seeds
    assert set(blob_of[r.rows]) == {0, 1} and r.taken.tolist() == [40, 40] and len(r.used) == 2
    # min_seeds 1 adds blob 2 (one seed); blob 3 has none
    assert retrieve_by_clusters(pool, seeds, 4, 100, min_seeds=1, iters=10).tolist() == list(range(120))
    assert len(retrieve_by_clusters(pool, seeds, 4, 100, min_seeds=5, iters=10)) == 0

    # cut to 10 a cluster: the 10 rows nearest its centroid (the mean of its normalised rows), deterministically
    rows = retrieve_by_clusters(pool, seeds, 4, 10, iters=10)
    assert np.array_equal(rows, retrieve_by_clusters(pool, seeds, 4, 10, iters=10))
    unit = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    for b in (0, 1):
        blob = unit[40 * b : 40 * b + 40]
        nearest = np.argsort(((blob - blob.mean(0)) ** 2).sum(1))[:10] + 40 * b
        assert rows[blob_of[rows] == b].tolist() == sorted(nearest.tolist())


@pytest.fixture()
def files(tmp_path):
    """A named .npy pool (pool.names.txt) with planted neighbours of 5 seeds, and the seeds as a .npy."""
    pool, seeds, plants = planted()
    np.save(tmp_path / "pool.npy", pool.astype(np.float16))
    (tmp_path / "pool.names.txt").write_text("".join(f"/data/img_{i:04d}.jpg\n" for i in range(len(pool))))
    np.save(tmp_path / "seeds.npy", seeds.astype(np.float32))
    return tmp_path / "pool.npy", tmp_path / "seeds.npy", sorted(r for rows in plants.values() for r in rows)


def test_cli_per_seed_end_to_end(files, tmp_path, capsys):
    pool, seeds, every = files
    out = tmp_path / "near"
    argv = ["curate", "retrieve", str(pool), "--seeds", str(seeds), "--k", "6", "--threshold", "0.9",
            "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert read_names(out / "keep.txt") == [f"/data/img_{i:04d}.jpg" for i in every]
    s = json.loads((out / "summary.json").read_text())
    assert (s["step"], s["rows"], s["retrieved"], s["seeds"]["rows"]) == ("retrieve", 320, 20, 5)
    assert s["settings"] == {"mode": "per-seed", "k": 6, "threshold": 0.9, "index": "auto", "seed": 0}

    # same settings: reused; other settings or other seeds: refused
    before = (out / "keep.txt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0 and "reused" in capsys.readouterr().out
    assert (out / "keep.txt").stat().st_mtime_ns == before
    assert main([*argv[:6], "5", *argv[7:]]) == 2
    np.save(tmp_path / "seeds2.npy", np.load(seeds)[:2])
    assert main([*argv[:4], str(tmp_path / "seeds2.npy"), *argv[5:]]) == 2
    assert "another --output" in capsys.readouterr().err

    # a subset restricts the pool only: the planted rows outside it are not retrieved
    (tmp_path / "sub.txt").write_text("".join(f"{i}\n" for i in range(0, 320, 2)))
    s = retrieve(pool, seeds, tmp_path / "sub", k=4, threshold=0.9, subset=tmp_path / "sub.txt")
    assert read_names(tmp_path / "sub" / "keep.txt") == [f"/data/img_{i:04d}.jpg" for i in every if i % 2 == 0]
    assert s["rows"] == 160 and not s["reused"]


def test_cli_clusters_end_to_end(tmp_path, capsys):
    pool, seeds = blobs()
    np.save(tmp_path / "pool.npy", pool.astype(np.float32))  # rows named by index
    np.save(tmp_path / "seeds.npy", seeds.astype(np.float32))
    out = tmp_path / "near"
    argv = ["curate", "retrieve", str(tmp_path / "pool.npy"), "--seeds", str(tmp_path / "seeds.npy"), "--mode",
            "clusters", "--clusters", "4", "--per-cluster", "30", "--iters", "10", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    keep = [int(n) for n in read_names(out / "keep.txt")]
    assert len(keep) == 60 and {i // 40 for i in keep} == {0, 1}
    s = json.loads((out / "summary.json").read_text())
    assert s["settings"] == {"mode": "clusters", "clusters": 4, "per_cluster": 30, "min_seeds": 3, "iters": 10,
                             "seed": 0}  # fmt: skip
    assert s["clusters"]["used"] == 2 and s["clusters"]["sizes"]["clusters"] == 4
    assert sorted((c["seeds"], c["size"], c["taken"]) for c in s["clusters"]["taken"]) == [(3, 40, 30), (4, 40, 30)]
    assert "from 2 clusters" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--seeds", "{missing}"], "no such"),
    (["--seeds", "{wrong_dim}"], "same backbone"),
    (["--seeds", "{seeds}", "--threshold", "1.5"], "(0, 1]"),
    (["--seeds", "{seeds}", "--clusters", "4"], "other --mode"),
    (["--seeds", "{seeds}", "--mode", "clusters", "--clusters", "4", "--k", "3", "--per-cluster", "2"], "other --mode"),
    (["--seeds", "{seeds}", "--mode", "clusters", "--clusters", "4"], "--per-cluster"),
    (["--seeds", "{seeds}", "--mode", "clusters", "--clusters", "1000", "--per-cluster", "2"], "cannot make"),
    (["--seeds", "{seeds}", "--subset", "{unknown}"], "name no row"),
    (["--seeds", "{seeds}", "--output", "{dedup}"], "curate dedup"),
])  # fmt: skip
def test_bad_inputs_exit_2_with_one_message(files, tmp_path, capsys, args, message):
    pool, seeds, _ = files
    np.save(tmp_path / "wrong_dim.npy", np.ones((3, 8), np.float32))
    (tmp_path / "unknown.txt").write_text("/nowhere.jpg\n")
    (tmp_path / "dedup").mkdir()
    (tmp_path / "dedup" / "summary.json").write_text('{"step": "dedup"}')
    where = {"missing": tmp_path / "none.npy", "seeds": seeds, "wrong_dim": tmp_path / "wrong_dim.npy",
             "unknown": tmp_path / "unknown.txt", "dedup": tmp_path / "dedup"}  # fmt: skip
    argv = ["curate", "retrieve", str(pool), *[a.format(**where) for a in args]]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["--mode", "knn"], ["--k", "0"], ["--index", "flat"], []])
def test_malformed_options_are_usage_errors(args, tmp_path):
    seeds = [] if not args else ["--seeds", "s.npy"]  # [] leaves out the required --seeds
    with pytest.raises(SystemExit) as e:
        main(["curate", "retrieve", "x.npy", *seeds, *args, "--output", str(tmp_path / "out")])
    assert e.value.code == 2
