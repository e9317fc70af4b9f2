import json

import numpy as np
import pytest

import dinokit
from dinokit.cli import main
from dinokit.errors import UserError
from dinokit.tools.index import FeatureIndex


def known_set(n: int = 3000, dim: int = 48, seed: int = 0):
    """Clustered database vectors and queries that are noisy copies of known items."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, dim))
    db = centres[rng.integers(0, 30, n)] + 0.5 * rng.normal(size=(n, dim))
    truth = rng.choice(n, 200, replace=False)
    queries = db[truth] + 0.05 * rng.normal(size=(200, dim))
    return db.astype(np.float32), [f"img{i}.jpg" for i in range(n)], queries.astype(np.float32), truth


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_recall_on_a_known_set(kind, tmp_path):
    db, paths, queries, truth = known_set()
    index = FeatureIndex(db.shape[1], kind)
    index.add(db[:2000], paths[:2000])
    assert index.add(db[1500:], paths[1500:]) == 1000  # incremental; already indexed paths are skipped
    assert len(index) == 3000
    scores, rows = index.search(queries, k=10)
    recall_at_1 = np.mean(rows[:, 0] == truth)
    assert recall_at_1 >= (1.0 if kind == "exact" else 0.95)
    assert np.all(np.diff(scores, axis=1) <= 1e-6) and scores.max() <= 1 + 1e-5  # sorted cosines
    exact = db / np.linalg.norm(db, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    top10 = np.argsort(-(q @ exact.T), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, top10)])
    assert overlap >= (0.999 if kind == "exact" else 0.9)  # recall@10 against brute force
    index.save(tmp_path / "idx")
    again = FeatureIndex.load(tmp_path / "idx")
    assert again.paths == index.paths and np.array_equal(again.search(queries, 10)[1], rows)
    hits = again.search_paths(queries[:1], 3)[0]
    assert hits[0][0] == paths[truth[0]] and len(hits) == 3


def test_index_over_an_extraction_folder(v3_model, image_folder, tmp_path):
    from dinokit.tools.extract import extract_features

    feats = extract_features(v3_model, image_folder, tmp_path / "f", size=64, progress=False)
    index = FeatureIndex.from_features(feats, kind="hnsw", source="patches")
    assert len(index) == 3 and index.source == "patches"
    query = dinokit.read_features(feats)[image_folder / "c.png"]["patches"].mean((0, 1))
    hits = index.search_paths(query[None], k=3)[0]
    assert hits[0][0].endswith("c.png") and hits[0][1] > 0.999


def test_index_errors():
    index = FeatureIndex(8)
    with pytest.raises(UserError, match="empty"):
        index.search(np.ones((1, 8)))
    with pytest.raises(UserError, match="dim"):
        index.add(np.ones((2, 4)), ["a", "b"])
    with pytest.raises(UserError, match="kind"):
        FeatureIndex(8, "lsh")


def test_index_cli_build_extend_search(image_folder, tmp_path, capsys):
    out = tmp_path / "idx"
    base = ["--backbone", "random:dinov3_test", "--output", str(out), "--size", "64", "--source", "patches"]
    assert main(["index", "build", str(image_folder / "a.png"), str(image_folder / "b.png"), *base]) == 0
    assert main(["index", "build", str(image_folder), *base]) == 0  # adds c.png only
    assert len(json.loads((out / "paths.json").read_text())) == 3
    capsys.readouterr()
    query = [str(image_folder / "b.png"), "--k", "2", "--json", str(tmp_path / "r.json")]
    assert main(["index", "search", str(out), *query]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    (hits,) = results.values()
    assert hits[0][0].endswith("b.png") and hits[0][1] > 0.999  # the image itself comes first
    assert main(["index", "search", str(tmp_path / "nothing"), str(image_folder / "b.png")]) == 2
