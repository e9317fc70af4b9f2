"""dino.txt zero-shot classification: the class embeddings and scores against brute-force hand computations, top-k
semantics, the shipped templates, `dinokit eval zeroshot` and its bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import dinokit
from dinokit.cli import main
from dinokit.data.datasets import ImageList
from dinokit.data.images import decode_image
from dinokit.data.transforms import EvalTransform
from dinokit.errors import UserError
from dinokit.eval.zeroshot import (
    class_embeddings,
    read_classnames,
    read_templates,
    run_zeroshot,
    zeroshot_classifier,
    zeroshot_eval,
)

from .helpers import BACKBONE, DIM

pytestmark = pytest.mark.filterwarnings("ignore:ftfy is not installed")
TEMPLATES = ["a {}.", "the {} here", "{} dog"]


def _unit(v):
    return v / v.norm()


@torch.no_grad()
def test_classifier_is_the_mean_of_normalised_template_embeddings(text_model):
    names = ["hello", "dog house"]
    weights = zeroshot_classifier(text_model, names, TEMPLATES)
    assert weights.shape == (2, 2 * DIM)
    for c, name in enumerate(names):
        embs = [_unit(text_model.encode_text(text_model.tokenize([t.format(name)]))[0]) for t in TEMPLATES]
        assert torch.allclose(weights[c], _unit(sum(embs) / len(embs)), atol=1e-5)
        halves = [_unit(text_model.encode_text(text_model.tokenize([t.format(name)]))[0, DIM:]) for t in TEMPLATES]
        patch = class_embeddings(text_model, names, TEMPLATES, part="patch")
        assert torch.allclose(patch[c], _unit(sum(halves) / len(halves)), atol=1e-5)
    callables = zeroshot_classifier(text_model, names, [lambda c, t=t: t.format(c) for t in TEMPLATES])
    assert torch.allclose(callables, weights)
    assert dinokit.zeroshot_classifier is zeroshot_classifier


def test_topk_against_brute_force():
    g = torch.Generator().manual_seed(0)
    images, classifier = torch.randn(40, 8, generator=g), F.normalize(torch.randn(7, 8, generator=g), dim=-1)
    labels = torch.randint(0, 7, (40,), generator=g)
    scores = zeroshot_eval(images, labels, classifier)
    for k in (1, 5):
        hits = 0
        for x, y in zip(images, labels):
            sims = [float(_unit(x) @ w) for w in classifier]
            ranked = sorted(range(7), key=lambda c: -sims[c])
            hits += int(y) in ranked[:k]
        assert scores[f"top{k}"] == pytest.approx(100 * hits / 40)
        assert scores.per_item[f"top{k}"].value() == pytest.approx(scores[f"top{k}"])
    assert set(scores) == {"top1", "top5"}
    few = zeroshot_eval(images, labels % 3, classifier[:3])  # fewer classes than k: top-5 is every class
    assert few["top5"] == 100.0 and few["top1"] <= 100.0
    exact = zeroshot_eval(classifier * 3, torch.arange(7), classifier)  # each class vector is its own best match
    assert exact["top1"] == 100.0


def test_shipped_templates_and_name_files(tmp_path):
    templates = read_templates()
    assert len(templates) == 80 and templates[0] == "a bad photo of a {}." and templates[-1] == "a tattoo of the {}."
    (tmp_path / "t.txt").write_text("# mine\nan {} photo\n\nthe {}\n")
    assert read_templates(tmp_path / "t.txt") == ["an {} photo", "the {}"]
    (tmp_path / "bad.txt").write_text("no placeholder\n")
    with pytest.raises(UserError, match="no \\{\\} for the class name"):
        read_templates(tmp_path / "bad.txt")
    imagenet = read_classnames("imagenet")
    assert len(imagenet) == 1000 and imagenet[:2] == ["tench", "goldfish"] and imagenet[-1] == "toilet paper"
    assert len(read_classnames("ade20k")) == 150 and read_classnames("cityscapes")[:2] == ["road", "sidewalk"]
    (tmp_path / "names.json").write_text(json.dumps({"n1": "tench", "n2": "goldfish"}))
    assert read_classnames(tmp_path / "names.json", ["n1", "n2"]) == ["tench", "goldfish"]
    (tmp_path / "names.txt").write_text("tench\ngoldfish\n")
    with pytest.raises(UserError, match="names 2 classes but there are 3"):
        read_classnames(tmp_path / "names.txt", ["a", "b", "c"])


@torch.no_grad()
def test_run_zeroshot_against_a_hand_computation(text_model, synth):
    val = synth / "classify" / "val"
    scores = run_zeroshot(text_model, val, templates=TEMPLATES, size=32, batch_size=4, device="cpu")
    images = ImageList.from_source(val)
    names = [c.replace("_", " ") for c in images.classes]
    weights = zeroshot_classifier(text_model, names, TEMPLATES)
    transform = EvalTransform(resize=32, crop=32, mode="bicubic")
    hits1 = hits5 = 0
    for path, label in zip(images.paths, images.labels):
        emb = _unit(text_model.encode_image(transform(decode_image(path))[None])[0])
        order = (weights @ emb).argsort(descending=True).tolist()
        hits1 += order[0] == label
        hits5 += label in order[:5]
    n = len(images.paths)
    assert scores["top1"] == pytest.approx(100 * hits1 / n) and scores["top5"] == pytest.approx(100 * hits5 / n)


def test_cli_writes_json(prompt_files, synth, tmp_path, capsys):
    ckpt, vocab = prompt_files
    (tmp_path / "t.txt").write_text("a {}.\n")
    out = tmp_path / "m" / "zs.json"
    val = str(synth / "classify" / "val")
    args = ["eval", "zeroshot", "--dinotxt", str(ckpt), "--backbone", BACKBONE, "--val", val,
            "--vocab", str(vocab), "--templates", str(tmp_path / "t.txt"), "--size", "32", "--workers", "0",
            "--device", "cpu", "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"top1", "top5"} and 0 <= metrics["top1"] <= metrics["top5"] <= 100
    assert "zeroshot" in capsys.readouterr().out


def test_cli_bad_inputs(prompt_files, synth, tmp_path, capsys, monkeypatch):
    ckpt, vocab = prompt_files
    base = ["eval", "zeroshot", "--dinotxt", str(ckpt), "--val", str(synth / "classify" / "val"), "--size", "32",
            "--workers", "0", "--device", "cpu"]  # fmt: skip
    monkeypatch.setattr("dinokit.text.find_vocab", lambda: None)  # no open_clip wheel to find the vocabulary in
    assert main([*base, "--backbone", BACKBONE]) == 2
    assert "pass --vocab" in capsys.readouterr().err
    assert main([*base, "--backbone", "random:dinov3_vits16", "--vocab", str(vocab)]) == 2
    assert "width 128, but the backbone gives 384" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_text("a photo\n")
    assert main([*base, "--backbone", BACKBONE, "--vocab", str(vocab), "--templates", str(tmp_path / "bad.txt")]) == 2
    assert "no {} for the class name" in capsys.readouterr().err
    (tmp_path / "names.txt").write_text("one\ntwo\n")
    names = str(tmp_path / "names.txt")
    assert main([*base, "--backbone", BACKBONE, "--vocab", str(vocab), "--classnames", names]) == 2
    assert "names 2 classes but there are 10 class folders" in capsys.readouterr().err
    assert main([*base[:2], "--dinotxt", str(tmp_path / "missing.pth"), *base[4:], "--backbone", BACKBONE]) == 2
    assert "no such file" in capsys.readouterr().err
