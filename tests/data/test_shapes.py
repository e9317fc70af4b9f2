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
