"""Checkpoint formats: released layouts, training checkpoints, dinokit files, inference, strict errors."""

from __future__ import annotations

import argparse

import pytest
import torch

import dinokit
from dinokit.models import CheckpointError
from dinokit.models.presets import RELEASED, match_preset, preset_config
from dinokit.models.weights import infer_config

X2, X3 = torch.randn(2, 3, 56, 42), torch.randn(2, 3, 48, 64)


def _random(name, **kw):
    torch.manual_seed(0)
    model = dinokit.create_backbone(name, **kw).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("gamma"):
                p.fill_(0.5)
    return model


@pytest.mark.parametrize("name", RELEASED)
def test_architecture_inferred_from_released_shapes(name):
    with torch.device("meta"):
        model = dinokit.create_backbone(name)
    sd = dinokit.models.weights.dinokit_to_official(model.state_dict(), model.config)
    config = infer_config(dinokit.models.weights.official_to_dinokit(sd))
    assert match_preset(config) == name
    assert config.ffn_hidden == preset_config(name).ffn_hidden


@pytest.mark.parametrize("name,x", [("dinov2_test", X2), ("dinov2_test_swiglu", X2), ("dinov3_test", X3)])
def test_official_layout_roundtrip(name, x, tmp_path):
    model = _random(name)
    path = dinokit.save_backbone(model, tmp_path / "model.pth", format="official")
    sd = torch.load(path, weights_only=True)
    if model.config.generation == "dinov3":
        assert "storage_tokens" in sd and "rope_embed.periods" in sd and "blocks.0.attn.qkv.bias_mask" in sd
    else:
        assert "pos_embed" in sd and not any("periods" in k or "bias_mask" in k for k in sd)
    loaded = dinokit.load_backbone(path)
    assert torch.equal(loaded(x), model(x))


def test_training_checkpoints_with_teacher_prefix_and_block_chunks(tmp_path):
    model = _random("dinov2_test_reg4", depth=4)
    sd = model.state_dict()
    chunked = {}
    for k, v in sd.items():  # DINOv2 block chunking: 2 chunks of 2 blocks, global block indices kept
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // 2}.{k[len('blocks.'):]}"
        chunked[k] = v
    full = {"teacher.backbone." + k: v for k, v in chunked.items()}
    full |= {"student.backbone." + k: v + 1 for k, v in chunked.items()}
    full |= {"teacher.dino_head.mlp.0.weight": torch.zeros(3, 3)}
    torch.save({"model": full, "iteration": 10}, tmp_path / "train.pth")
    assert torch.equal(dinokit.load_backbone(tmp_path / "train.pth")(X2), model(X2))
    torch.save({"teacher": {"backbone." + k: v for k, v in sd.items()} | {"dino_head.x": torch.zeros(1)}},
               tmp_path / "teacher_checkpoint.pth")
    assert torch.equal(dinokit.load_backbone(tmp_path / "teacher_checkpoint.pth")(X2), model(X2))


@pytest.mark.parametrize("suffix", ["folder", "file.safetensors"])
def test_dinokit_format_keeps_a_custom_architecture(suffix, tmp_path):
    model = _random("dinov3_test", cls_norm=True, depth=3, ffn="swiglu", ffn_ratio=3.0)
    dinokit.save_backbone(model, tmp_path / suffix)
    loaded = dinokit.load_backbone(tmp_path / suffix)
    assert loaded.config.replace(extra={}) == model.config.replace(extra={})
    assert torch.equal(loaded(X3), model(X3))


def test_strict_loading_names_every_problem():
    model = _random("dinov3_test")
    sd = dict(model.state_dict())
    del sd["norm.bias"]
    sd["surprise"] = torch.zeros(1)
    sd["blocks.0.ls1.gamma"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        dinokit.create_backbone("dinov3_test", weights=sd)
    msg = str(err.value)
    assert "missing (1): norm.bias" in msg and "unexpected (1): surprise" in msg
    assert "blocks.0.ls1.gamma: checkpoint [3] vs model [128]" in msg


def test_unrecognisable_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        dinokit.load_backbone(tmp_path / "nope.pth")
    torch.save({"foo": torch.zeros(2)}, tmp_path / "foo.pth")
    with pytest.raises(CheckpointError, match="cannot recognise"):
        dinokit.load_backbone(tmp_path / "foo.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        dinokit.load_backbone(tmp_path / "junk.pth")
    # training checkpoints often carry Python objects, which weights-only loading refuses: say which, briefly
    torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, tmp_path / "train.pth")
    with pytest.raises(CheckpointError, match=r"weights-only .*argparse\.Namespace.*save its state_dict") as err:
        dinokit.load_backbone(tmp_path / "train.pth")
    assert "\n" not in str(err.value)
    (tmp_path / "cut.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(CheckpointError, match="as a safetensors file"):
        dinokit.load_backbone(tmp_path / "cut.safetensors")


def test_local_files_never_touch_the_network(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("network used")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    model = _random("dinov3_test")
    dinokit.save_backbone(model, tmp_path / "m.pth", format="official")
    dinokit.load_backbone(str(tmp_path / "m.pth"))


def test_satellite_normalisation_and_dtype(tmp_path):
    model = _random("dinov3_test")
    path = dinokit.save_backbone(model, tmp_path / "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth", format="official")
    loaded = dinokit.load_backbone(path, dtype=torch.bfloat16)
    assert loaded.config.extra["mean"] == [0.430, 0.411, 0.296]
    assert loaded.cls_token.dtype == torch.bfloat16 and loaded.rope_embed.periods.dtype == torch.float32


def test_hf_export_refuses_what_hf_cannot_express(tmp_path):
    with pytest.raises(ValueError, match="untied CLS norm"):
        dinokit.save_backbone(_random("dinov3_test", cls_norm=True), tmp_path / "hf", format="hf")


def test_seven_b_style_norms_inferred():
    model = _random("dinov3_test", local_cls_norm=True, qkv_bias=False)
    config = infer_config(model.state_dict())
    assert config.local_cls_norm and not config.qkv_bias
