"""Chance levels (`eval/chance.py`) against cases small enough to count by hand."""

import json

import numpy as np
import pytest
from PIL import Image

from dinokit.eval.chance import (
    _pixels_within,
    classification_chance,
    correspondence_chance,
    depth_chance,
    segmentation_chance,
)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_pixel_centres_within_a_radius_are_counted_exactly():
    assert _pixels_within(2.5, 2.5, 0.5, 5, 5) == 1  # only the pixel whose centre it is
    assert _pixels_within(2.5, 2.5, 1.0, 5, 5) == 5  # and its four neighbours at distance exactly 1
    assert _pixels_within(2.5, 2.5, 1.5, 5, 5) == 9  # the diagonals are at √2 ≈ 1.41
    assert _pixels_within(0.5, 0.5, 1.0, 5, 5) == 3  # a corner pixel has two neighbours
    assert _pixels_within(2.0, 2.0, 0.5, 5, 5) == 0  # a pixel corner is √0.5 from the four centres around it
    assert _pixels_within(2.5, 2.5, 100, 5, 4) == 20  # everything


def test_classification_chance_is_the_training_majority_share_of_val(tmp_path):
    pixel = np.zeros((4, 4, 3), np.uint8)
    for split, counts in (("train", {"a": 3, "b": 1}), ("val", {"a": 1, "b": 3})):
        for name, n in counts.items():
            for i in range(n):
                _png(tmp_path / split / name / f"{i}.png", pixel)
    assert classification_chance(tmp_path / "train", tmp_path / "val") == 25.0  # "a" every time: 1 of 4


def test_segmentation_chance_labels_every_pixel_with_the_majority_class(tmp_path):
    train = _png(tmp_path / "train.png", np.array([[0, 0, 0], [1, 255, 255]], np.uint8))  # 0 most frequent
    val = _png(tmp_path / "val.png", np.array([[0, 1, 1], [2, 2, 255]], np.uint8))
    # predicting 0 on the 5 labelled val pixels: IoU(0) = 1/5, IoU(1) = IoU(2) = 0 (255 is not a class)
    assert segmentation_chance([(None, train)], [(None, val)], num_classes=3) == pytest.approx(100 / 15)


def test_depth_chance_predicts_the_median_training_depth(tmp_path):
    train = _png(tmp_path / "train.png", np.array([[1000, 2000, 9000], [0, 2000, 2000]], np.uint16))  # median 2 m
    val = _png(tmp_path / "val.png", np.array([[4000, 4000], [0, 1000]], np.uint16))
    levels = depth_chance([(None, train)], [(None, val)], min_depth=1e-3, max_depth=10.0)
    # errors 2, 2, 1 m on the three measured pixels
    assert levels["rmse"] == pytest.approx(np.sqrt(9 / 3))
    assert levels["abs_rel"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert levels["delta1"] == 0.0


def test_correspondence_chance_is_the_share_of_pixels_within_reach(tmp_path):
    _png(tmp_path / "a.png", np.zeros((10, 20, 3), np.uint8))
    _png(tmp_path / "b.png", np.zeros((10, 20, 3), np.uint8))  # 200 pixels
    pairs = {"pairs": [{"image_a": "a.png", "image_b": "b.png", "keypoints_a": [[1, 1], [5, 5]],
                        "keypoints_b": [[2.5, 2.5], [0.5, 0.5]]}]}  # fmt: skip
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    levels = correspondence_chance(tmp_path / "pairs.json", (1, 100))
    assert levels["recall@1"] == pytest.approx(100 * (5 + 3) / 2 / 200)
    assert levels["recall@100"] == pytest.approx(100.0)
