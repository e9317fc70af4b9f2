"""Every `dinokit eval` protocol with a DINOv3 ConvNeXt backbone (stride 32, stages of different widths), end to end
on the tiny synthetic benchmark's 64-px images: a 2×2 token grid."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from dinokit.cli import main
from dinokit.data.datasets import ImageList
from dinokit.data.images import decode_image
from dinokit.eval import extract_global_features, run_knn
from dinokit.eval.features import global_transform
from dinokit.models import backbone_from_spec

KEYS = {
    "knn": {"top1_k10", "top1_k20", "top1_k100", "top1_k200"},
    "linear": {"top1", "holdout_top1", "lr", "n_blocks", "avgpool"},
    "logreg": {"top1", "holdout_top1", "C"},
    "seg": {"miou", "pixel_acc"},
    "depth": {"rmse", "abs_rel", "delta1"},
    "retrieval": {"map"},
    "correspondence": {"recall@4", "recall@8"},
}
ARGS = {
    "knn": ["--train", "classify/train", "--val", "classify/val", "--workers", "0"],
    "linear": ["--train", "classify/train", "--val", "classify/val", "--workers", "0", "--epochs", "2"],
    "logreg": ["--train", "classify/train", "--val", "classify/val", "--workers", "0"],
    "seg": ["--train", "seg/images/training", "--val", "seg/images/validation", "--iterations", "3"],
    "depth": ["--train", "depth/train/rgb", "--val", "depth/test/rgb", "--iterations", "3"],
    "retrieval": ["--data", "retrieval/retrieval.json"],
    "correspondence": ["--pairs", "pairs/pairs.json", "--thresholds", "4", "8"],
}
PERCENT = {"top1_k10", "top1_k20", "top1_k100", "top1_k200", "top1", "holdout_top1", "miou", "pixel_acc", "delta1",
           "map", "recall@4", "recall@8"}  # fmt: skip


@pytest.fixture(scope="module")
def random_convnext():
    """Without γ, so that at random initialisation the blocks change the features (γ = 1e-6 silences them)."""
    return backbone_from_spec("random:dinov3_convnext_test", seed=0, layerscale_init=None)


@pytest.mark.parametrize("protocol", list(KEYS))
def test_every_protocol_runs_with_a_convnext(synth, tmp_path, protocol, capsys):
    args = [str(synth / a) if "/" in a else a for a in ARGS[protocol]]
    out = tmp_path / "m.json"
    code = main(["eval", protocol, "--backbone", "random:dinov3_convnext_test", "--size", "64", "--output", str(out),
                 *args])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    metrics = json.loads(out.read_text())
    assert set(metrics) == KEYS[protocol] and all(math.isfinite(v) for v in metrics.values())
    assert all(0 <= metrics[k] <= 100 for k in metrics if k in PERCENT)
    if protocol == "linear":  # the ConvNeXt cache holds the last stage only: the last-4 variants are last-1
        assert metrics["n_blocks"] == 1 and metrics["avgpool"] in (0, 1)
    if protocol == "depth":
        assert metrics["rmse"] > 0 and metrics["abs_rel"] > 0
    if protocol == "correspondence":
        assert metrics["recall@4"] <= metrics["recall@8"]


@pytest.mark.parametrize("kind", ["convnext", "vit"])
def test_global_features_of_a_convnext_are_its_last_stage(synth, kind, random_convnext, random_model):
    model = random_convnext if kind == "convnext" else random_model
    images = ImageList.from_source(synth / "classify" / "val")
    f = extract_global_features(model, images, size=64, n_last_blocks=4, batch_size=8, progress=False)
    n = 1 if kind == "convnext" else min(4, model.n_blocks)  # a ConvNeXt's earlier stages are not cached
    assert f.cls.shape == (len(images), n, model.embed_dim) and f.patch_mean.shape == (len(images), model.embed_dim)
    assert torch.isfinite(f.cls).all() and f.variant(n, True).shape == (len(images), (n + 1) * model.embed_dim)
    x = torch.stack([global_transform(model, 64)(decode_image(images.paths[i])) for i in range(2)])  # [2, 3, 64, 64]
    with torch.no_grad():
        out = model.forward_features(x)
    torch.testing.assert_close(f.last_cls[:2], out.cls, atol=1e-5, rtol=0)
    torch.testing.assert_close(f.patch_mean[:2], out.patches.mean(1), atol=1e-5, rtol=0)
    assert out.grid == ((2, 2) if kind == "convnext" else (4, 4))


def test_a_size_below_one_patch_is_raised_to_one_with_a_warning(synth, random_convnext, caplog):
    with caplog.at_level(logging.WARNING, logger="dinokit.eval"):
        r = run_knn(random_convnext, synth / "classify" / "train", synth / "classify" / "val", size=16)
    assert "16 px is smaller than one 32-px patch" in caplog.text
    assert set(r) == KEYS["knn"] and all(0 <= v <= 100 for v in r.values())
