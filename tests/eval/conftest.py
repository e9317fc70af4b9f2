"""Shared fixtures: a tiny synthetic benchmark and tiny random backbones."""

import pytest
import torch

from dinokit.data.synthetic import SynthConfig, write_synthetic
from dinokit.models import backbone_from_spec

TINY = SynthConfig(
    size=64, pretrain=0, train_per_class=4, val_per_class=2, dense_train=8, dense_val=3, pairs=3, landmarks=3,
    views=2, distractors=3,
)  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run tiny tensors, for which a second thread only adds synchronisation (and, on a shared
    machine, spin-waiting); the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synth") / "synth", seed=0, config=TINY, workers=1, progress=False)


@pytest.fixture(scope="session")
def random_model():
    """Without LayerScale, so that even at random initialisation the CLS token depends on the image (with the
    training init of 1e-5 the residual branches are nearly silent and CLS is almost constant)."""
    return backbone_from_spec("random:dinov3_test", seed=0, layerscale_init=None)
