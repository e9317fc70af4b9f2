"""Inference preprocessing on tensors."""

from __future__ import annotations

import torch

import dinokit
from dinokit.data.transforms import EvalTransform, center_crop, normalize, resize, round_to_patch


def test_resize_shorter_side_and_exact():
    img = torch.rand(3, 100, 200)
    assert resize(img, 50).shape == (3, 50, 100)
    assert resize(img, (64, 32)).shape == (3, 64, 32)
    assert resize(img, 100) is img


def test_center_crop_and_normalize():
    img = torch.arange(36.0).reshape(1, 6, 6)
    assert torch.equal(center_crop(img, 2), img[:, 2:4, 2:4])
    x = torch.full((3, 2, 2), 0.5)
    out = normalize(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert torch.equal(out, torch.zeros(3, 2, 2))


def test_released_preprocessing_per_generation():
    img = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    v2 = EvalTransform.for_model(dinokit.create_backbone("dinov2_test"))
    assert v2(img).shape == (3, 224, 224) and v2.resize == 256  # shorter side 256, centre crop 224
    v3 = EvalTransform.for_model(dinokit.create_backbone("dinov3_test"), size=250)
    assert v3(img).shape == (3, 256, 256) and v3.crop is None  # square resize, rounded to patches
    assert round_to_patch(100, 14) == 98
