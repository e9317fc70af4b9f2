"""Shared fixtures for the frozen-feature tools: tiny backbones and a folder of small generated photos."""

from __future__ import annotations

import pytest
import torch

from dinokit.models import create_backbone
from tests.tools.helpers import write_png


@pytest.fixture(scope="session")
def v2_model():
    torch.manual_seed(0)
    return create_backbone("dinov2_test").eval()


@pytest.fixture(scope="session")
def v3_model():
    torch.manual_seed(0)
    return create_backbone("dinov3_test").eval()


@pytest.fixture()
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_png(folder / "a.png", 96, 0)
    write_png(folder / "b.png", 96, 1, crop=(64, 96))
    write_png(folder / "c.png", 112, 2)
    return folder
