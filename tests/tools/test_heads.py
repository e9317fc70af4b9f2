import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from dinokit.cli import main
from dinokit.data.images import decode_image
from dinokit.errors import UserError
from dinokit.models import create_backbone
from dinokit.tools.heads import (
    HeadConfig,
    best_f1_thresholds,
    classifier_metrics,
    create_head,
    load_head,
    predict,
    predict_image,
    predict_images,
    save_head,
    split_indices,
    train_head,
    tune_and_score,
    validation_split,
)
from tests.tools.helpers import trained_like, write_png


def test_linear_and_mlp_single_label():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()  # XOR of two signs: not linearly separable
    lin = HeadConfig("linear", "single", 16, ["a", "b"])
    mlp = HeadConfig("mlp", "single", 16, ["a", "b"], hidden=64)
    acc = {}
    for cfg in (lin, mlp):
        head = train_head(cfg, x, y, epochs=300, lr=1e-2, batch_size=400, progress=False)
        acc[cfg.kind] = float((predict(head, cfg, x)["labels"] == y).float().mean())
    assert acc["mlp"] > 0.95 and acc["linear"] < 0.7
    sep = (x[:, 2] > 0.3).long()  # linearly separable
    head = train_head(lin, x, sep, epochs=200, lr=5e-2, batch_size=400, progress=False)
    assert float((predict(head, lin, x)["labels"] == sep).float().mean()) > 0.97


def test_five_label_defect_head_with_per_label_thresholds(tmp_path):
    g = torch.Generator().manual_seed(0)
    names = ["scratch", "dent", "rust", "crack", "stain"]
    x = torch.randn(600, 24, generator=g)
    rates = torch.tensor([0.5, 0.3, 0.15, 0.08, 0.04])  # rare labels, as defects are
    bias = torch.log(rates / (1 - rates))
    y = (torch.sigmoid(3 * x[:, :5] + bias) > torch.rand(600, 5, generator=g)).long()
    cfg = HeadConfig("linear", "multi", 24, names)
    head = train_head(cfg, x, y, epochs=300, lr=5e-2, batch_size=600, progress=False)
    probs = predict(head, cfg, x)["probs"]
    cfg.thresholds = best_f1_thresholds(probs, y)
    assert len(cfg.thresholds) == 5 and len(set(cfg.thresholds)) > 1  # one threshold per label
    decided = predict(head, cfg, x)["labels"]
    f1 = 2 * (decided & y.bool()).sum(0) / (decided.sum(0) + y.sum(0))
    f1_half = 2 * ((probs >= 0.5) & y.bool()).sum(0) / ((probs >= 0.5).sum(0) + y.sum(0))
    assert (f1 >= f1_half - 1e-6).all() and f1.min() > 0.5
    save_head(head, cfg, tmp_path / "h.safetensors")
    head2, cfg2 = load_head(tmp_path / "h.safetensors")
    assert cfg2.thresholds == cfg.thresholds and cfg2.classes == names
    assert torch.equal(predict(head2, cfg2, x)["labels"], decided)


def test_conv_decoder_segments_patch_maps():
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(3, 32, generator=g)
    maps, labels = [], []
    for _ in range(6):
        lab = torch.zeros(6, 8, dtype=torch.long)
        lab[2:5, 1:4], lab[:, 6:] = 1, 2
        maps.append((dirs[lab] + 0.3 * torch.randn(6, 8, 32, generator=g)).permute(2, 0, 1))  # [D, h, w]
        pixels = lab.repeat_interleave(4, 0).repeat_interleave(4, 1)  # [24, 32]
        pixels[0, 0] = 255  # ignored
        labels.append(pixels)
    cfg = HeadConfig("conv", "segment", 32, ["bg", "box", "band"], "patches", hidden=32)
    head = train_head(cfg, maps, labels, epochs=30, lr=3e-3, progress=False)
    out = predict(head, cfg, maps[0][None], (24, 32))["labels"][0]
    assert out.shape == (24, 32)
    valid = labels[0] != 255
    assert (out[valid] == labels[0][valid]).float().mean() > 0.9


def test_head_cli_single_multi_segment(tmp_path, capsys):
    rng = np.random.default_rng(0)

    def solid(rgb, size=32):
        return np.clip(np.array(rgb)[None, None] + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)

    colours = {"red": (200, 30, 30), "blue": (30, 30, 200)}
    rows = ["path,reddish,bluish"]
    (tmp_path / "masks").mkdir()
    (tmp_path / "halves").mkdir()
    for name, rgb in colours.items():
        (tmp_path / "cls" / name).mkdir(parents=True)
        for i in range(3):
            img = solid(rgb)
            Image.fromarray(img).save(tmp_path / "cls" / name / f"{i}.png")
            rows.append(f"cls/{name}/{i}.png,{int(name == 'red')},{int(name == 'blue')}")
            half = np.concatenate([img[:, :16], solid(colours["blue" if name == "red" else "red"])[:, 16:]], 1)
            Image.fromarray(half).save(tmp_path / "halves" / f"{name}_half{i}.png")
            lab = np.full((32, 32, 3), 0 if name == "red" else 1, np.uint8)
            lab[:, 16:] = 1 - lab[:, 16:]
            Image.fromarray(lab).save(tmp_path / "masks" / f"{name}_half{i}.png")
    (tmp_path / "multi.csv").write_text("\n".join(rows))
    common = ["--backbone", "random:dinov3_test", "--size", "0", "--epochs", "30", "--lr", "2e-2"]
    # a random backbone's CLS hardly depends on the image (LayerScale 1e-5): classify CLS ‖ mean patch
    assert main(["head", "train", str(tmp_path / "cls"), "--output", str(tmp_path / "single.safetensors"),
                 "--features", "cls+avg"] + common) == 0  # fmt: skip
    probe = solid(colours["blue"])
    Image.fromarray(probe).save(tmp_path / "probe.png")
    assert main(["head", "predict", str(tmp_path / "probe.png"), "--head", str(tmp_path / "single.safetensors"),
                 "--output", str(tmp_path / "p.json")]) == 0  # fmt: skip
    assert list(json.loads((tmp_path / "p.json").read_text()).values())[0].keys() == {"blue"}
    assert main(["head", "train", str(tmp_path / "multi.csv"), "--task", "multi", "--kind", "mlp", "--features",
                 "cls+avg", "--output", str(tmp_path / "multi.safetensors")] + common) == 0  # fmt: skip
    assert main(["head", "predict", str(tmp_path / "probe.png"), "--head", str(tmp_path / "multi.safetensors")]) == 0
    assert "'bluish'" in capsys.readouterr().out
    assert main(["head", "train", str(tmp_path / "halves"), "--task", "segment", "--kind", "conv", "--masks",
                 str(tmp_path / "masks"), "--classes", "red,blue", "--output", str(tmp_path / "seg.safetensors"),
                 "--val-fraction", "0.3"] + common) == 0  # fmt: skip
    assert json.loads((tmp_path / "seg.metrics.json").read_text())["validation"]["pixel_accuracy"] > 0.9
    assert main(["head", "predict", str(tmp_path / "halves" / "red_half0.png"), "--head",
                 str(tmp_path / "seg.safetensors"), "--output", str(tmp_path / "segout")]) == 0  # fmt: skip
    seg = np.asarray(Image.open(tmp_path / "segout" / "red_half0.png"))[..., 0]
    assert (seg[:, :16] == 0).mean() > 0.9 and (seg[:, 16:] == 1).mean() > 0.9
    assert main(["head", "train", str(tmp_path / "cls"), "--task", "segment", "--output", str(tmp_path / "x"),
                 "--backbone", "random:dinov3_test"]) == 2  # fmt: skip


# ------------------------------------------------------------------------------------------- validation
def test_split_indices_is_seeded_per_class_and_keeps_every_class_in_training():
    keys = [0] * 10 + [1] * 5 + [2]
    train, val = split_indices(keys, 0.2, seed=0)
    assert sorted(train + val) == list(range(16)) and not set(train) & set(val)
    assert [keys[i] for i in val].count(0) == 2 and [keys[i] for i in val].count(1) == 1
    assert 15 in train  # a class's only image stays in training
    assert split_indices(keys, 0.2, seed=0) == (train, val) and split_indices(keys, 0.2, seed=1) != (train, val)
    for bad in (0.0, 1.0):
        with pytest.raises(UserError, match="between 0 and 1"):
            split_indices(keys, bad, seed=0)
    with pytest.raises(UserError, match="holds out no image"):
        split_indices([0, 1, 2], 0.2, seed=0)


def _fixed_head(probs_dim: int):
    """A linear multi-label head whose probabilities are the sigmoid of the first `probs_dim` inputs."""
    config = HeadConfig("linear", "multi", probs_dim, [f"l{i}" for i in range(probs_dim)])
    head = torch.nn.Linear(probs_dim, probs_dim)
    with torch.no_grad():
        head.weight.copy_(torch.eye(probs_dim))
        head.bias.zero_()
    return head, config


def test_thresholds_are_tuned_on_validation_and_training_is_a_warned_fallback(caplog):
    """On its training images the head is confident (positives at p 0.9, negatives 0.6); on new images less so
    (0.4 and 0.1). Thresholds tuned on the training images (0.65) would miss every new positive."""
    logit = lambda p: torch.logit(torch.tensor(p))  # noqa: E731
    y = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]])
    x_train, x_val = torch.where(y.bool(), logit(0.9), logit(0.6)), torch.where(y.bool(), logit(0.4), logit(0.1))
    head, config = _fixed_head(2)
    with caplog.at_level(logging.WARNING, "dinokit"):
        metrics = tune_and_score(head, config, (x_train, y), (x_val, y))
    assert config.thresholds == [0.15, 0.15] and config.meta["thresholds_tuned_on"] == "validation"
    assert metrics["validation"]["mean_f1"] == 1.0 and config.meta["metrics"] == metrics and not caplog.records
    head, fallback = _fixed_head(2)
    with caplog.at_level(logging.WARNING, "dinokit"):
        metrics = tune_and_score(head, fallback, (x_train, y), None)
    assert fallback.thresholds == [0.65, 0.65] and fallback.meta["thresholds_tuned_on"] == "training"
    assert set(metrics) == {"training"} and "optimistic" in caplog.text
    assert classifier_metrics(head, fallback, x_val, y)["mean_f1"] == 0.0  # why the training images mislead


def test_best_f1_thresholds_leave_a_label_without_positives_at_one_half():
    probs = torch.tensor([[0.9, 0.3], [0.2, 0.8], [0.7, 0.1]])
    assert best_f1_thresholds(probs, torch.tensor([[1, 0], [0, 0], [1, 0]])) == [0.25, 0.5]


def test_validation_sources_are_matched_to_the_training_classes_by_name(tmp_path):
    (tmp_path / "train.csv").write_text("path,rust,dent\na.png,1,0\nb.png,0,1\nc.png,1,1\n")
    (tmp_path / "val.csv").write_text("path,dent,rust\nd.png,1,0\n")  # the columns in another order
    classes, (paths, y), (val_paths, val_y) = validation_split(str(tmp_path / "train.csv"), "multi",
                                                               str(tmp_path / "val.csv"))  # fmt: skip
    assert classes == ["rust", "dent"] and val_y.tolist() == [[0, 1]] and val_paths[0].endswith("d.png")
    (tmp_path / "other.csv").write_text("path,rust,crack\nd.png,1,0\n")
    with pytest.raises(UserError, match="label columns"):
        validation_split(str(tmp_path / "train.csv"), "multi", str(tmp_path / "other.csv"))
    (tmp_path / "train.txt").write_text("a.png,cat\nb.png,dog\nc.png,cat\n")
    (tmp_path / "val.txt").write_text("d.png,dog\n")  # one class of two: its label is the training index of dog
    classes, _, (_, val_y) = validation_split(str(tmp_path / "train.txt"), "single", str(tmp_path / "val.txt"))
    assert classes == ["cat", "dog"] and val_y.tolist() == [1]
    (tmp_path / "bad.txt").write_text("d.png,cow\n")
    with pytest.raises(UserError, match="cow"):
        validation_split(str(tmp_path / "train.txt"), "single", str(tmp_path / "bad.txt"))
    with pytest.raises(UserError, match="not both"):
        validation_split(str(tmp_path / "train.txt"), "single", str(tmp_path / "val.txt"), val_fraction=0.5)


# ------------------------------------------------------------------------------------- compute settings
def test_batched_predictions_equal_one_at_a_time(tmp_path):
    torch.manual_seed(0)
    model = trained_like(create_backbone("dinov3_test").eval())
    images = []
    for i in range(5):
        write_png(tmp_path / f"{i}.png", 80, i, crop=(48, 80) if i % 2 else None)
        images.append(decode_image(tmp_path / f"{i}.png"))
    for config in (HeadConfig("mlp", "single", 2 * model.embed_dim, ["a", "b", "c"], "cls+avg", hidden=16),
                   HeadConfig("conv", "segment", model.embed_dim, ["a", "b"], "patches", hidden=8,
                              meta={"size": 64})):  # fmt: skip
        head = create_head(config).eval()
        batched = list(predict_images(model, head, config, iter(images), batch_size=2, device="cpu"))
        assert len(batched) == len(images)
        for image, out in zip(images, batched):
            torch.testing.assert_close(out["probs"], predict_image(model, head, config, image)["probs"], atol=1e-5,
                                       rtol=0)  # fmt: skip
        assert not torch.allclose(batched[0]["probs"], batched[2]["probs"])  # an order mix-up would show


def test_head_cli_multi_label_with_validation_on_cpu_in_bf16(tmp_path, caplog):
    rows = ["path,reddish,bluish"]
    rng = np.random.default_rng(0)
    for i in range(8):
        rgb = (200, 30, 30) if i % 2 else (30, 30, 200)
        img = np.clip(np.array(rgb)[None, None] + rng.normal(0, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{i % 2},{1 - i % 2}")
    (tmp_path / "multi.csv").write_text("\n".join(rows))
    out = tmp_path / "multi.safetensors"
    compute = ["--device", "cpu", "--dtype", "bf16", "--batch-size", "3"]
    argv = ["head", "train", str(tmp_path / "multi.csv"), "--task", "multi", "--features", "cls+avg", "--backbone",
            "random:dinov3_test", "--size", "0", "--epochs", "20", "--lr", "2e-2", "--output", str(out),
            *compute]  # fmt: skip
    with caplog.at_level(logging.WARNING, "dinokit"):
        assert main([*argv, "--val-fraction", "0.25", "--seed", "3"]) == 0
    assert "optimistic" not in caplog.text
    report = json.loads((tmp_path / "multi.metrics.json").read_text())
    assert report["thresholds_tuned_on"] == "validation" and set(report["thresholds"]) == {"reddish", "bluish"}
    assert set(report["validation"]["f1"]) == {"reddish", "bluish"} and "mean_f1" in report["training"]
    _, config = load_head(out)
    assert config.meta["metrics"] == {k: report[k] for k in ("training", "validation")}
    images = [str(tmp_path / f"{i}.png") for i in range(5)]
    assert main(["head", "predict", *images, "--head", str(out), "--output", str(tmp_path / "p.json"), *compute]) == 0
    assert len(json.loads((tmp_path / "p.json").read_text())) == 5
    with caplog.at_level(logging.WARNING, "dinokit"):
        assert main(argv) == 0  # no validation images: the fallback, named
    assert "optimistic" in caplog.text
    assert json.loads((tmp_path / "multi.metrics.json").read_text())["thresholds_tuned_on"] == "training"
    assert main([*argv, "--val-fraction", "1.5"]) == 2
