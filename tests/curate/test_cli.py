"""`dinokit curate cluster` and `sample` from files: a .npy pool with names, reuse and refusal of a finished
tree, an `extract` folder whose keep.txt `dinokit train` reads, and bad inputs (exit status 2)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dinokit.cli import main
from dinokit.curate.embeddings import open_embeddings, read_names, write_keep
from dinokit.curate.kmeans import Tree
from dinokit.data.datasets import ImageList
from tests.tools.helpers import write_png


@pytest.fixture()
def pool(tmp_path):
    """600 × 16 float16 embeddings in 12 blobs of Zipf-like sizes, named by fake image paths."""
    rng = np.random.default_rng(0)
    sizes = [200, 120, 80, 50, 40, 30, 25, 20, 15, 10, 6, 4]
    x = np.concatenate([rng.normal(size=16) * 4 + rng.normal(size=(n, 16)) for n in sizes]).astype(np.float16)
    path = tmp_path / "pool.npy"
    np.save(path, x)
    (tmp_path / "pool.names.txt").write_text("".join(f"/data/img_{i:04d}.jpg\n" for i in range(len(x))))
    return path


def cluster(pool, out, *extra):
    return main(["curate", "cluster", str(pool), "--levels", "30,6", "--iters", "5", "--output", str(out), *extra])


def test_cluster_then_sample_a_npy_pool(pool, tmp_path, capsys):
    tree_dir, sample_dir = tmp_path / "tree", tmp_path / "sample"
    assert cluster(pool, tree_dir, "--resampling-steps", "2,1", "--sample-sizes", "3,1") == 0
    tree = Tree.load(tree_dir)
    assert [len(c) for c in tree.centroids] == [30, 6] and tree.n_points == 600
    names = read_names(tree_dir / "names.txt")
    assert names == read_names(tmp_path / "pool.names.txt")
    summary = json.loads((tree_dir / "summary.json").read_text())
    assert summary["input"]["points"] == 600 and summary["settings"]["levels"] == [30, 6]
    assert summary["levels"]["1"]["clusters"] == 30 and summary["levels"]["2"]["points"] == 600
    assert sum(summary["levels"]["2"]["histogram"].values()) == 6 - summary["levels"]["2"]["empty"]

    assert main(["curate", "sample", str(tree_dir), "--size", "120", "--output", str(sample_dir)]) == 0
    keep = read_names(sample_dir / "keep.txt")
    assert len(keep) == len(set(keep)) == 120 and set(keep) <= set(names)
    s = json.loads((sample_dir / "summary.json").read_text())
    assert s["sampled"] == 120 and s["after"]["2"]["points"] == 120
    assert s["after"]["2"]["max"] <= s["before"]["2"]["max"] and s["before"]["2"]["points"] == 600

    # closest: the leaves' nearest points, read from the same pool
    closest = tmp_path / "closest"
    rc = main(["curate", "sample", str(tree_dir), "--size", "60", "--strategy", "closest", "--embeddings", str(pool),
               "--output", str(closest)])  # fmt: skip
    assert rc == 0 and len(read_names(closest / "keep.txt")) == 60


def test_rerun_reuses_the_tree_and_other_settings_are_refused(pool, tmp_path, capsys):
    out = tmp_path / "tree"
    assert cluster(pool, out) == 0
    before = (out / "level1_centroids.npy").stat().st_mtime_ns
    capsys.readouterr()
    assert cluster(pool, out) == 0
    assert "reused" in capsys.readouterr().out
    assert (out / "level1_centroids.npy").stat().st_mtime_ns == before
    assert cluster(pool, out, "--seed", "1") == 2
    assert "another --output" in capsys.readouterr().err


def test_subset_restricts_the_rows(pool, tmp_path):
    names = read_names(tmp_path / "pool.names.txt")
    write_keep(tmp_path / "keep.txt", names[::-2])  # any order: the pool's order is kept
    emb = open_embeddings(pool, tmp_path / "keep.txt")
    assert emb.names == names[1::2] and emb.vectors.shape == (300, 16)
    np.testing.assert_array_equal(emb.vectors[2:4], np.load(pool)[[5, 7]])
    (tmp_path / "rows.txt").write_text("3\n1\n")
    assert open_embeddings(pool, tmp_path / "rows.txt").names == [names[1], names[3]]
    assert cluster(pool, tmp_path / "tree", "--subset", str(tmp_path / "keep.txt")) == 0
    assert read_names(tmp_path / "tree" / "names.txt") == names[1::2]


def test_keep_txt_quotes_commas_the_way_file_lists_are_read(tmp_path):
    (tmp_path / "a,b.png").write_bytes(b"")
    (tmp_path / "c d.png").write_bytes(b"")
    names = [str(tmp_path / "a,b.png"), str(tmp_path / "c d.png")]
    write_keep(tmp_path / "keep.txt", names)
    assert read_names(tmp_path / "keep.txt") == names
    assert [str(p) for p in ImageList.from_source(tmp_path / "keep.txt").paths] == names


def test_an_extract_folder_is_a_pool_and_its_keep_txt_trains(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        write_png(images / f"img{i}.png", 48, i)
    feats = tmp_path / "feats"
    assert main(["extract", str(images), "--backbone", "random:dinov2_test", "--output", str(feats), "--size", "28",
                 "--workers", "0"]) == 0  # fmt: skip
    assert cluster_extract(feats, tmp_path / "tree") == 0
    out = tmp_path / "sample"
    assert main(["curate", "sample", str(tmp_path / "tree"), "--size", "5", "--output", str(out)]) == 0
    listed = ImageList.from_source(out / "keep.txt")
    assert len(listed) == 5 and all(p.parent == images.resolve() and p.is_file() for p in listed.paths)


def cluster_extract(feats, out):
    return main(["curate", "cluster", str(feats), "--levels", "4,2", "--iters", "3", "--output", str(out)])


@pytest.mark.parametrize("args, message", [
    (["cluster", "{missing}", "--levels", "4"], "no such"),
    (["cluster", "{bad_shape}", "--levels", "4"], "[N, D]"),
    (["cluster", "{pool}", "--levels", "6,30"], "decreasing"),
    (["cluster", "{pool}", "--levels", "30,6", "--resampling-steps", "2"], "one positive integer per level"),
    (["cluster", "{pool}", "--levels", "1000"], "cannot make"),
    (["cluster", "{pool}", "--levels", "4", "--subset", "{unknown}"], "name no row"),
    (["sample", "{tmp}", "--size", "5"], "not a finished"),
    (["sample", "{tmp}", "--size", "5", "--strategy", "closest"], "--embeddings"),
])  # fmt: skip
def test_bad_inputs_exit_2_with_one_message(pool, tmp_path, capsys, args, message):
    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 2), np.float32))
    (tmp_path / "unknown.txt").write_text("/nowhere.jpg\n")
    where = {"missing": tmp_path / "none.npy", "bad_shape": tmp_path / "bad.npy", "pool": pool, "tmp": tmp_path,
             "unknown": tmp_path / "unknown.txt"}  # fmt: skip
    argv = ["curate", *[a.format(**where) for a in args], "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["cluster", "x.npy", "--levels", "10,a"], ["sample", "t", "--size", "0"]])
def test_malformed_numbers_are_usage_errors(args, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["curate", *args, "--output", str(tmp_path / "out")])
    assert e.value.code == 2


def test_cluster_under_torchrun_equals_one_process(pool, tmp_path):
    """Two gloo ranks, each clustering its half of the rows, write the same tree, byte for byte, as one process."""
    args = [str(pool), "--levels", "30,6", "--resampling-steps", "2,1", "--sample-sizes", "3,1", "--iters", "4"]
    assert main(["curate", "cluster", *args, "--output", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = subprocess.run([*torchrun, "-m", "dinokit.cli", "curate", "cluster", *args, "--output",
                          str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("wrote") == 1  # rank 0 alone reports
    for level in (1, 2):
        for part in ("centroids", "assignment"):
            name = f"level{level}_{part}.npy"
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert not list((tmp_path / "two").glob("level*.json"))  # the per-level markers go once the tree is whole
