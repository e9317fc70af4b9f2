"""Fixtures for the training tests: a folder of small random images and a tiny training configuration."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinokit.config import PretrainConfig, load_config

TINY_CPU = Path(__file__).parents[2] / "configs" / "pretrain" / "tiny_cpu.yaml"

# A ViT with 2 blocks of width 64 on 64 px crops (4×4 patches): a training step takes well under a second on one core.
TINY = [
    "model.backbone=dinov3_test",
    "crops.global_size=64",
    "crops.local_size=32",
    "crops.local_number=2",
    "model.dino_head={n_prototypes: 64, hidden_dim: 64, bottleneck_dim: 32}",
    "model.ibot_head={n_prototypes: 48, hidden_dim: 64, bottleneck_dim: 32}",
    "train.batch_size=4",
    "train.log_every=1",
    "data.num_workers=0",
    "optim.warmup_steps=2",
    "optim.freeze_last_layer_steps=1",
    "teacher.warmup_temp_steps=2",
    "checkpoint.every=0",
]


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(24):
        h, w = rng.integers(40, 72, 2)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture
def tiny_cfg(image_folder, tmp_path):
    """`tiny_cfg(*overrides)`: tiny_cpu.yaml shrunk further, writing into a fresh folder."""

    def make(*overrides: str) -> PretrainConfig:
        base = [f"data.path={image_folder}", f"output_dir={tmp_path / 'run'}", *TINY]
        return load_config(PretrainConfig, TINY_CPU, [*base, *overrides])

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models gain nothing from a second thread, and on a shared machine OpenMP threads that wait for
    each other make every small op cost a scheduler time slice."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
