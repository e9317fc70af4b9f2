"""k-NN, linear probe and logistic regression: the grid logic on hand-made features, and end to end on images."""

import numpy as np
import pytest
import torch
from PIL import Image

from dinokit.errors import UserError
from dinokit.eval.features import GlobalFeatures, extract_global_features
from dinokit.eval.knn import run_knn
from dinokit.eval.linear import LEARNING_RATES, holdout_split, linear_probe, run_linear
from dinokit.eval.logreg import C_GRID, fit_logreg, logreg_eval, run_logreg


def make_features(n_per_class: int, signal: str, seed: int = 0, dim: int = 8) -> GlobalFeatures:
    """Three classes; the class is visible only in the last-block CLS ("cls"), only in the average patch token
    ("patch"), or nowhere ("none")."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    cls = torch.randn(len(labels), 4, dim, generator=g)
    patch = torch.randn(len(labels), dim, generator=g)
    centres = 3.0 * torch.eye(3, dim)
    if signal == "cls":
        cls[:, -1] += centres[labels]
    elif signal == "patch":
        patch += centres[labels]
    paths = [f"{i}.png" for i in range(len(labels))]
    return GlobalFeatures(cls, patch, labels, paths, ["a", "b", "c"])


def test_grids_follow_the_papers():
    assert len(LEARNING_RATES) == 13 and LEARNING_RATES[0] == pytest.approx(1e-5) and LEARNING_RATES[-1] == 0.1
    assert len(C_GRID) == 45 and C_GRID[0] == pytest.approx(1e-6) and C_GRID[-1] == pytest.approx(1e5)


def test_holdout_split_is_stratified_and_disjoint():
    labels = torch.tensor([0] * 20 + [1] * 10 + [2] * 2)
    keep, held = holdout_split(labels, 0.1, seed=0)
    assert set(keep.tolist()).isdisjoint(held.tolist()) and len(keep) + len(held) == 32
    assert labels[held].tolist() == [0, 0, 1, 2]  # 10 % of each class, at least one


def test_linear_probe_picks_the_variant_that_carries_the_signal():
    train, val = make_features(60, "patch"), make_features(20, "patch", seed=1)
    r = linear_probe(train, val, epochs=30, batch_size=32, progress=False)
    assert r["avgpool"] == 1 and r["top1"] > 85
    train, val = make_features(60, "cls"), make_features(20, "cls", seed=1)
    r = linear_probe(train, val, epochs=30, batch_size=32, progress=False)
    assert r["top1"] > 85 and r["lr"] in LEARNING_RATES


def test_linear_probe_is_at_chance_without_signal():
    r = linear_probe(make_features(60, "none"), make_features(40, "none", seed=1), epochs=5, progress=False)
    assert r["top1"] < 60  # three classes: chance is 33 %


def test_logreg_solves_the_penalised_objective():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(90, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    C = 0.5
    onehot = torch.nn.functional.one_hot(y, 3)

    def gradients(w, b):  # of C·Σ CE + ½‖W‖²: (C·Xᵀ(P − Y) + W, C·Σ(P − Y))
        residual = torch.softmax(x @ w + b, 1) - onehot
        return C * x.T @ residual + w, C * residual.sum(0)

    start = gradients(torch.zeros(5, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    end = gradients(*fit_logreg(x, y, C, num_classes=3))
    for g0, g1 in zip(start, end):
        assert g1.abs().max() < 1e-4 * g0.abs().max()


def test_logreg_eval_beats_chance_and_reports_c():
    r = logreg_eval(make_features(40, "cls"), make_features(20, "cls", seed=1), c_grid=C_GRID[::4], progress=False)
    assert r["top1"] > 90 and r["C"] in C_GRID


# ------------------------------------------------------------------------------------------- on images
@pytest.fixture(scope="module")
def colour_classes(tmp_path_factory):
    """Two classes a random network separates: reddish and bluish noise images."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 6)):
        for name, base in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(base) + rng.normal(0, 30, (48, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / name / f"{i}.png")
    (root / "train" / "red" / "broken.png").write_bytes(b"not an image")
    return root


def test_extract_global_features_skips_unreadable_files(colour_classes, random_model):
    f = extract_global_features(random_model, colour_classes / "train", size=32, batch_size=5, progress=False)
    assert len(f) == 24 and len(f.skipped) == 1
    assert f.cls.shape == (24, 2, random_model.embed_dim)  # a depth-2 model: last-4 capped at 2
    assert f.classes == ["blue", "red"] and f.labels.bincount().tolist() == [12, 12]


def test_image_protocols_end_to_end(colour_classes, random_model):
    train, val = colour_classes / "train", colour_classes / "val"
    knn = run_knn(random_model, train, val, size=32)
    assert set(knn) == {"top1_k10", "top1_k20", "top1_k100", "top1_k200"} and knn["top1_k10"] == 100.0
    linear = run_linear(random_model, train, val, size=32, epochs=20, batch_size=8, progress=False)
    assert linear["top1"] == 100.0 and linear.per_item["top1"].value() == 100.0
    assert run_logreg(random_model, train, val, size=32, c_grid=C_GRID[::4], progress=False)["top1"] == 100.0


def test_knn_on_the_synthetic_layout(synth, random_model):
    r = run_knn(random_model, synth / "classify" / "train", synth / "classify" / "val", size=64)
    assert all(0 <= v <= 100 for v in r.values())
    assert all(r.per_item[k].value() == pytest.approx(v, abs=1e-9) for k, v in r.items())  # per-image stats agree


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_images_are_left_out_and_reported(synth, random_model, tmp_path, workers, caplog):
    """With loader workers too, whose copies of the dataset count their own skipped files."""
    import shutil

    folder = shutil.copytree(synth / "classify/val", tmp_path / "val")
    broken = sorted(folder.rglob("*.png"))[3]
    broken.write_bytes(b"not an image")
    with caplog.at_level("WARNING", logger="dinokit"):
        f = extract_global_features(random_model, folder, size=32, num_workers=workers, progress=False)
    assert f.skipped == [str(broken)] and len(f.labels) == len(list(folder.rglob("*.png"))) - 1
    assert any("1 of 20 images unreadable" in r.getMessage() for r in caplog.records)


def test_numeric_validation_labels_index_the_sorted_training_classes(tmp_path, caplog):
    """ImageNet as distributed: synset folders for training, a flat validation folder with `val.txt`."""
    from dinokit.eval.features import labelled_sets

    for synset in ("n01440764", "n01443537", "n01484850"):
        (tmp_path / "train" / synset).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / synset / "a.png")
    (tmp_path / "val.txt").write_text("v1.JPEG 2\nv2.JPEG 0\n")
    with caplog.at_level("WARNING", logger="dinokit"):
        train, val = labelled_sets(tmp_path / "train", tmp_path / "val.txt")
    assert val.classes == train.classes and [train.classes[i] for i in val.labels] == ["n01484850", "n01440764"]
    assert "n01440764 = 0" in caplog.text
    (tmp_path / "val.txt").write_text("v1.JPEG 3\n")  # no fourth class: an error, not a guess
    with pytest.raises(UserError, match="missing from the training set: 3"):
        labelled_sets(tmp_path / "train", tmp_path / "val.txt")


def test_class_mismatch_is_reported_before_features_are_extracted(synth, tmp_path):
    import shutil

    val = shutil.copytree(synth / "classify/val", tmp_path / "val")
    (val / "stripes").rename(val / "zebra")
    for run in (run_knn, run_linear, run_logreg):
        with pytest.raises(UserError, match="missing from the training set: zebra"):
            run(None, synth / "classify/train", val)  # no model: extracting would fail on it first
