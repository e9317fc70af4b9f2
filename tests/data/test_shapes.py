"""The shape family (dinokit/data/shapes.py): deterministic per generator, every class drawn whole inside the frame,
and colour that says nothing about the class."""

import numpy as np
import pytest

from dinokit.data.shapes import SHAPES, shape_image


def test_same_generator_same_image_and_classes_differ():
    a = shape_image(np.random.default_rng([0, 3]), 64, 4)
    b = shape_image(np.random.default_rng([0, 3]), 64, 4)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, shape_image(np.random.default_rng([0, 3]), 64, 5))


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_each_shape_is_drawn(shape, monkeypatch):
    import dinokit.data.shapes as sh

    # a black background: what stands clear of the sensor noise (σ ≈ 8 levels) is the shape
    monkeypatch.setattr(sh, "_background", lambda rng, size, kinds: np.zeros((size, size, 3)))
    img = sh.shape_image(np.random.default_rng(shape), 64, shape).astype(np.float32).max(-1)
    covered = (img > 40).mean()
    assert 0.01 < covered < 0.6, (SHAPES[shape], covered)
    edge = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    assert (edge > 40).mean() < 0.05  # placed inside the frame, not cut by it


def test_colour_carries_no_label():
    """A nearest-centroid classifier on each image's mean colour is at chance (a form classifier is needed)."""
    per_class = 60
    means = np.stack([[shape_image(np.random.default_rng([1, c, i]), 32, c).reshape(-1, 3).mean(0)
                       for i in range(per_class)] for c in range(len(SHAPES))])  # [C, n, 3]  # fmt: skip
    centroids = means[:, : per_class // 2].mean(1)  # [C, 3] fitted on the first half
    test = means[:, per_class // 2 :].reshape(-1, 3)  # [C·n/2, 3]
    labels = np.repeat(np.arange(len(SHAPES)), per_class // 2)
    pred = np.linalg.norm(test[:, None] - centroids[None], axis=-1).argmin(1)
    assert (pred == labels).mean() < 0.25  # chance is 1/8


def test_write_shapes_layout_determinism_and_reuse(tmp_path):
    from dinokit.data.datasets import ImageList
    from dinokit.data.shapes import ShapesConfig, write_shapes

    config = ShapesConfig(size=32).scaled(0.05)  # 5 / 3 / 2 images per class
    a = write_shapes(tmp_path / "a", seed=3, config=config, workers=1, progress=False)
    b = write_shapes(tmp_path / "b", seed=3, config=config, workers=2, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)  # the same for any worker count
    assert len(list((a / "pretrain").glob("*.png"))) == 5 * len(SHAPES)
    val = ImageList.from_source(a / "classify" / "val")
    assert val.classes == sorted(SHAPES) and len(val) == 2 * len(SHAPES)
    assert write_shapes(a, seed=3, config=config, progress=False) == a  # the same set: kept as it is
    with pytest.raises(FileExistsError, match="different synthetic set"):
        write_shapes(a, seed=4, config=config, progress=False)


def test_cli_writes_the_shape_family_and_refuses_materials_options(tmp_path, capsys):
    from dinokit.cli import main

    assert main(["data", "synth", str(tmp_path / "s"), "--family", "shapes", "--scale", "0.02", "--workers", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "s" / "classify" / "train").iterdir()) == sorted(SHAPES)
    assert main(["data", "synth", str(tmp_path / "t"), "--family", "shapes", "--captions"]) == 2
    assert "--captions belong to the materials family" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
