"""Shared fixtures for the frozen-feature tools: tiny backbones and a folder of small generated photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dinokit.demo_photo import generated_scene
from dinokit.models import create_backbone


@pytest.fixture(scope="session")
def v2_model():
    torch.manual_seed(0)
    return create_backbone("dinov2_test").eval()


@pytest.fixture(scope="session")
def v3_model():
    torch.manual_seed(0)
    return create_backbone("dinov3_test").eval()


def write_png(path, size: int = 96, seed: int = 0, crop: tuple[int, int] | None = None) -> None:
    img = generated_scene(size, seed).permute(1, 2, 0).numpy()
    if crop is not None:
        img = img[: crop[0], : crop[1]]
    Image.fromarray(np.ascontiguousarray(img)).save(path)


@pytest.fixture()
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_png(folder / "a.png", 96, 0)
    write_png(folder / "b.png", 96, 1, crop=(64, 96))
    write_png(folder / "c.png", 112, 2)
    return folder
