"""dino.txt open-vocabulary segmentation: mIoU against a hand computation, the sliding windows, `dinokit eval openseg`
on the synthetic benchmark, and its bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dinokit.cli import main
from dinokit.data.transforms import normalize
from dinokit.eval.openseg import predict_slide, run_openseg, short_side_resize
from dinokit.eval.zeroshot import class_embeddings

from .helpers import BACKBONE, DIM

pytestmark = pytest.mark.filterwarnings("ignore:ftfy is not installed")
NAMES = ["dog", "hello", "sky blue"]


@pytest.fixture
def tiny_ade(tmp_path):
    """One 48×64 image with labels 0, 1, 2 and 255 (ignored), ADE20K layout, classes.json at the top."""
    rng = np.random.default_rng(0)
    (tmp_path / "images" / "validation").mkdir(parents=True)
    (tmp_path / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "images/validation/a.png")
    labels = rng.integers(0, 3, (48, 64)).astype(np.uint8)
    labels[:5] = 255
    Image.fromarray(labels).save(tmp_path / "annotations/validation/a.png")
    (tmp_path / "classes.json").write_text(json.dumps(NAMES))
    return tmp_path, torch.from_numpy(labels.astype(np.int64))


@torch.no_grad()
def test_miou_matches_a_hand_computation(text_model, tiny_ade):
    root, target = tiny_ade
    scores = run_openseg(text_model, root / "images" / "validation", templates=["a {}."], size=48, mode="whole",
                         device="cpu", progress=False)  # fmt: skip
    pixels = torch.from_numpy(np.array(Image.open(root / "images/validation/a.png"))).permute(2, 0, 1).float() / 255
    patches = F.normalize(text_model.encode_patches(normalize(pixels)[None])[0], dim=-1)  # [3, 4, D]
    text = text_model.encode_text(text_model.tokenize([f"a {n}." for n in NAMES]))[:, DIM:]
    cos = torch.einsum("hwd,cd->chw", patches, F.normalize(text, dim=-1))
    pred = F.interpolate(cos[None], size=(48, 64), mode="bilinear", align_corners=False)[0].argmax(0)
    keep = target != 255
    ious = []
    for c in range(3):
        tp = int(((pred == c) & (target == c) & keep).sum())
        union = int((((pred == c) | (target == c)) & keep).sum())
        if union:
            ious.append(tp / union)
    assert scores["miou"] == pytest.approx(100 * sum(ious) / len(ious))
    assert scores["pixel_acc"] == pytest.approx(100 * float(((pred == target) & keep).sum()) / int(keep.sum()))
    assert scores.per_item["miou"].value() == pytest.approx(scores["miou"])
    # one window over the whole image: the argmax of the window's softmax is the whole image's argmax
    slide = run_openseg(text_model, root / "images" / "validation", templates=["a {}."], size=48, mode="slide",
                        side=64, stride=32, device="cpu", progress=False)  # fmt: skip
    assert slide["miou"] == pytest.approx(scores["miou"])


@torch.no_grad()
def test_sliding_windows_average_softmaxes(text_model):
    image = torch.randn(3, 40, 72)
    text = class_embeddings(text_model, NAMES, ["a {}."], part="patch")
    probs = predict_slide(text_model, image, text, side=32, stride=16)
    assert probs.shape == (3, 40, 72)
    assert torch.allclose(probs.sum(0), torch.ones(40, 72), atol=1e-5)
    assert short_side_resize(torch.zeros(3, 30, 70), 16).shape == (3, 16, 37)  # int(16 · 70 / 30) = 37, as released


def test_cli_on_the_synthetic_benchmark(prompt_files, synth, tmp_path, capsys):
    ckpt, vocab = prompt_files
    out = tmp_path / "seg.json"
    val = synth / "seg" / "images" / "validation"
    base = ["eval", "openseg", "--dinotxt", str(ckpt), "--backbone", BACKBONE, "--vocab", str(vocab), "--size", "32",
            "--device", "cpu"]  # fmt: skip
    (tmp_path / "t.txt").write_text("a {}.\n")
    assert main([*base, "--val", str(val), "--templates", str(tmp_path / "t.txt"), "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"miou", "pixel_acc"} and 0 <= metrics["miou"] <= 100
    # the synthetic labels go up to 11 (wall): two names are too few
    (tmp_path / "two.txt").write_text("stripes\nbars\n")
    assert main([*base, "--val", str(val), "--templates", str(tmp_path / "t.txt"),
                 "--classnames", str(tmp_path / "two.txt")]) == 2  # fmt: skip
    assert "but 2 class names" in capsys.readouterr().err
    # no class names anywhere
    lone = tmp_path / "lone" / "images" / "validation"
    (tmp_path / "lone" / "annotations").mkdir(parents=True)
    lone.mkdir(parents=True)
    assert main([*base, "--val", str(lone)]) == 2
    assert "pass --classnames" in capsys.readouterr().err
