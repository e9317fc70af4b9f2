import json

import numpy as np
import torch
from PIL import Image

from dinokit.cli import main
from dinokit.tools.heads import HeadConfig, best_f1_thresholds, load_head, predict, save_head, train_head


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
                 str(tmp_path / "masks"), "--classes", "red,blue", "--output", str(tmp_path / "seg.safetensors")]
                + common) == 0  # fmt: skip
    assert main(["head", "predict", str(tmp_path / "halves" / "red_half0.png"), "--head",
                 str(tmp_path / "seg.safetensors"), "--output", str(tmp_path / "segout")]) == 0  # fmt: skip
    seg = np.asarray(Image.open(tmp_path / "segout" / "red_half0.png"))[..., 0]
    assert (seg[:, :16] == 0).mean() > 0.9 and (seg[:, 16:] == 1).mean() > 0.9
    assert main(["head", "train", str(tmp_path / "cls"), "--task", "segment", "--output", str(tmp_path / "x"),
                 "--backbone", "random:dinov3_test"]) == 2  # fmt: skip
