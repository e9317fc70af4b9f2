"""`hubconf.py`: the official torch.hub entry points, loaded with `torch.hub.load(<checkout>, name, source="local")`.

No network: randomly initialised models, or weights from a local file or a file already in the torch hub cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import dinokit
from dinokit.errors import CheckpointError
from dinokit.models import ConvNeXt, VisionTransformer
from dinokit.models.presets import preset_config

ROOT = Path(__file__).parents[2]

OFFICIAL_NAMES = {  # the entry points of the official DINOv2 and DINOv3 hubconf.py files
    *(f"dinov2_vit{s}14{reg}" for s in "sblg" for reg in ("", "_reg")),
    *(f"dinov3_{arch}" for arch in ("vits16", "vits16plus", "vitb16", "vitl16", "vitl16plus", "vith16plus", "vit7b16")),
    *(f"dinov3_convnext_{size}" for size in ("tiny", "small", "base", "large")),
}


def _load(name: str, **kwargs):
    return torch.hub.load(str(ROOT), name, source="local", **kwargs)


@pytest.fixture(autouse=True)
def torch_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_entry_points_are_the_official_names():
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entries = {name for name in dir(module) if callable(getattr(module, name)) and not name.startswith("_")}
    assert entries == OFFICIAL_NAMES  # what torch.hub.list shows
    assert module.dependencies == ["torch"]


ENTRY_PRESETS = {  # entry point → dinokit preset
    "dinov2_vits14": "dinov2_vits14",
    "dinov2_vits14_reg": "dinov2_vits14_reg4",
    "dinov3_vits16": "dinov3_vits16",
}


@pytest.mark.parametrize("name, preset", ENTRY_PRESETS.items())
def test_random_initialisation(name, preset):
    model = _load(name, pretrained=False, depth=1)
    assert isinstance(model, VisionTransformer)
    assert model.config == preset_config(preset, depth=1)
    out = model.forward_features(torch.randn(1, 3, 28, 28) if "dinov2" in name else torch.randn(1, 3, 32, 32))
    assert out["x_norm_patchtokens"].shape == (1, 4, model.embed_dim)


def test_convnext_entry_point():
    model = _load("dinov3_convnext_tiny", pretrained=False, depths=[1, 1, 1, 1])
    assert isinstance(model, ConvNeXt)
    assert list(model.config.dims) == [96, 192, 384, 768]


def test_pretrained_dinov2_uses_the_released_file_in_the_cache(torch_cache):
    torch.manual_seed(0)
    model = dinokit.create_backbone("dinov2_vits14_reg4", depth=1)
    dinokit.save_backbone(model, torch_cache / "dinov2_vits14_reg4_pretrain.pth", format="official")
    loaded = _load("dinov2_vits14_reg", depth=1)  # pretrained=True is the default, as in the official hub
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


def test_dinov3_takes_weights_as_the_official_hub_does(tmp_path):
    torch.manual_seed(0)
    model = dinokit.create_backbone("dinov3_vits16", depth=1)
    path = dinokit.save_backbone(model, tmp_path / "downloads" / "my_vits16.pth", format="official")
    torch.testing.assert_close(_load("dinov3_vits16", weights=str(path), depth=1).state_dict(), model.state_dict())
    with pytest.raises(CheckpointError, match="signed for each user"):
        _load("dinov3_vits16", depth=1)  # no weights= and nothing in the cache


def test_dinov3_vitl16_with_satellite_weights_builds_the_satellite_model(tmp_path):
    torch.manual_seed(0)
    model = dinokit.create_backbone("dinov3_vitl16_sat", depth=1)
    path = dinokit.save_backbone(model, tmp_path / "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth", format="official")
    loaded = _load("dinov3_vitl16", weights=path, depth=1)
    assert loaded.local_cls_norm is not None
    assert loaded.config.extra["mean"] == [0.430, 0.411, 0.296]
