"""The synthetic benchmark: deterministic under its seed, in the documented layouts, geometry that adds up."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from dinokit.data.synthetic import (
    MATERIALS,
    SEG_CLASSES,
    SynthConfig,
    apply_homography,
    object_scene,
    random_homography,
    warp,
)
from dinokit.data.synthetic import write_synthetic as write

SMALL = SynthConfig(size=48, pretrain=4, train_per_class=2, val_per_class=1, dense_train=3, dense_val=2, pairs=2,
                    landmarks=2, views=2, distractors=2)  # fmt: skip


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_whatever_the_workers_and_another_seed_differs(tmp_path):
    a = write(tmp_path / "a", seed=3, config=SMALL, workers=1, progress=False)
    b = write(tmp_path / "b", seed=3, config=SMALL, workers=2, progress=False)
    c = write(tmp_path / "c", seed=4, config=SMALL, workers=1, progress=False)
    assert digest(a) == digest(b) != digest(c)


def test_layouts_and_contents(tmp_path):
    root = write(tmp_path / "s", seed=0, config=SMALL, workers=1, progress=False)
    assert sorted(p.name for p in (root / "classify" / "train").iterdir()) == sorted(MATERIALS)
    assert len(list((root / "classify" / "val").rglob("*.png"))) == len(MATERIALS)
    assert len(list((root / "pretrain").glob("*.png"))) == 4
    labels = [np.array(Image.open(p)) for p in sorted((root / "seg/annotations/training").glob("*.png"))]
    values = set(np.unique(np.stack(labels)).tolist())
    assert 255 in values and values <= set(range(len(SEG_CLASSES))) | {255}
    assert {10, 11} <= values  # ground and wall are in every scene
    depth = np.array(Image.open(next((root / "depth/train/depth").glob("*.png"))))
    assert depth.dtype == np.uint16 and 1000 < depth.min() and depth.max() <= 9500  # millimetres
    assert sorted(p.name for p in (root / "depth/train/rgb").iterdir()) == sorted(
        p.name for p in (root / "depth/train/depth").iterdir()
    )
    pairs = json.loads((root / "pairs" / "pairs.json").read_text())["pairs"]
    assert len(pairs) == 2 and all(len(p["keypoints_a"]) == len(p["keypoints_b"]) > 10 for p in pairs)
    spec = json.loads((root / "retrieval" / "retrieval.json").read_text())
    assert len(spec["queries"]) == 2 and len(spec["gallery"]) == 2 * 2 + 2  # (views − 1 + junk) each + distractors
    assert all((root / "retrieval" / g).is_file() for g in spec["gallery"])


def test_rewriting_the_same_set_is_a_no_op_and_a_different_one_is_refused(tmp_path):
    root = write(tmp_path / "s", seed=0, config=SMALL, workers=1, progress=False)
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert write(root, seed=0, config=SMALL, workers=1, progress=False) == root
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError):
        write(root, seed=1, config=SMALL, workers=1, progress=False)


def test_warp_moves_a_point_where_the_homography_says():
    rng = np.random.default_rng(0)
    size, pad = 64, 32
    for _ in range(5):
        hom = random_homography(rng, size)
        p = rng.uniform(24, 40, 2)  # in view A; the canvas is A with a 32-px margin
        yy, xx = np.mgrid[0 : size + 2 * pad, 0 : size + 2 * pad] + 0.5
        canvas = np.exp(-((xx - pad - p[0]) ** 2 + (yy - pad - p[1]) ** 2) / 4.0)[..., None].astype(np.float32)
        view = warp(canvas, pad, hom, size)[..., 0]
        q = apply_homography(hom, p[None])[0]
        if not (4 <= q[0] < size - 4 and 4 <= q[1] < size - 4):
            continue
        y, x = np.unravel_index(view.argmax(), view.shape)
        assert np.hypot(x + 0.5 - q[0], y + 0.5 - q[1]) < 1.0


def test_classification_images_are_object_centric():
    """The class's card covers the image centre and most of the frame, so the image-level label is about it."""
    covers = [object_scene(np.random.default_rng(s), 96, s % 10).labels == s % 10 for s in range(30)]
    assert all(c[48, 48] for c in covers)
    assert np.mean([c.mean() for c in covers]) > 0.6 and min(c.mean() for c in covers) > 0.25
