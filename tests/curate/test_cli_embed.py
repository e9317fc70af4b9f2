"""`dinokit curate embed`: generated images → a normalised, named .npy pool that dedup and cluster read from the
folder; a rerun reuses it and another --source is refused."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dinokit.cli import main
from dinokit.curate.embed import embed
from dinokit.curate.embeddings import open_embeddings, read_names
from tests.tools.helpers import write_png


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        write_png(folder / f"img{i}.png", 40, i)
    write_png(folder / "copy.png", 40, 0)  # an exact copy of img0
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_embed_then_dedup_and_cluster_read_the_folder(images, tmp_path, capsys):
    out = tmp_path / "emb"
    argv = ["curate", "embed", str(images), "--backbone", "random:dinov2_test", "--size", "28", "--workers", "0",
            "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    x = np.load(out / "embeddings.npy", mmap_mode="r")
    assert x.dtype == np.float16 and x.shape[0] == 7
    np.testing.assert_allclose(np.linalg.norm(x.astype(np.float32), axis=1), 1, atol=2e-3)
    names = read_names(out / "embeddings.names.txt")
    assert sorted(names) == sorted(str(p.resolve()) for p in images.glob("*.png") if p.name != "broken.png")
    s = json.loads((out / "summary.json").read_text())
    assert (s["images"], s["skipped"], s["dim"]) == (7, 1, x.shape[1])
    pool = open_embeddings(out)
    assert pool.names == names and pool.dim == x.shape[1]

    capsys.readouterr()
    assert main(argv) == 0 and "reused" in capsys.readouterr().out
    assert main([*argv, "--source", "patches"]) == 2
    assert "other settings" in capsys.readouterr().err

    # an exact copy has the same embedding, so dedup groups it with its original (a random backbone may group more)
    row = {n: r for r, n in enumerate(names)}
    np.testing.assert_array_equal(x[row[str(images / "img0.png")]], x[row[str(images / "copy.png")]])
    assert main(["curate", "dedup", str(out), "--threshold", "0.999", "--output", str(tmp_path / "dedup")]) == 0
    groups = json.loads((tmp_path / "dedup" / "groups.json").read_text())
    assert any({str(images / "img0.png"), str(images / "copy.png")} <= set(m) for m in groups.values())
    tree = tmp_path / "tree"
    assert main(["curate", "cluster", str(out), "--levels", "3", "--iters", "2", "--output", str(tree)]) == 0
    assert read_names(tree / "names.txt") == names

def test_patch_source_in_float32_from_python(images, tmp_path):
    s = embed([images / "img1.png", images / "img2.png"], "random:dinov2_test", tmp_path / "emb", size=28,
              store_dtype="float32", source="patches", progress=False)  # fmt: skip
    x = np.load(tmp_path / "emb" / "embeddings.npy")
    assert x.dtype == np.float32 and x.shape == (2, s["dim"]) and s["skipped"] == 0
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)


def test_torchrun_ranks_embed_their_shares_into_one_pool(images, tmp_path):
    """Two gloo ranks each extract every other image into their own folder; rank 0 streams both into one pool in
    input order, equal to what one process writes; a rerun with two ranks reuses it."""
    argv = ["curate", "embed", str(images), "--backbone", "random:dinov2_test", "--size", "28", "--workers", "0",
            "--store-dtype", "float32"]  # fmt: skip
    assert main([*argv, "--output", str(tmp_path / "one")]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "dinokit.cli", *argv, "--output", str(tmp_path / "two")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in ("fresh", "rerun"):
        run = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.count("reused" if attempt == "rerun" else "wrote") == 1  # rank 0 alone reports
    assert sorted(p.name for p in (tmp_path / "two" / "features").iterdir()) == ["rank-0-of-2", "rank-1-of-2"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert read_names(two / "embeddings.names.txt") == read_names(one / "embeddings.names.txt")
    np.testing.assert_allclose(np.load(two / "embeddings.npy"), np.load(one / "embeddings.npy"), atol=1e-5)
