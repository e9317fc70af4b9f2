import json

import numpy as np
import torch
from PIL import Image

from dinokit.cli import main
from dinokit.models import create_backbone
from dinokit.tools.finetune import finetune_classifier
from dinokit.tools.lora import lora_modules
from tests.tools.helpers import trained_like


def colour_folders(root, n=3, size=32, seed=0):
    rng = np.random.default_rng(seed)
    for name, rgb in [("red", (200, 40, 40)), ("blue", (40, 40, 200))]:
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = np.clip(np.array(rgb)[None, None] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")


def test_lora_finetune_trains_adapters_and_head_only(tmp_path):
    colour_folders(tmp_path / "data")
    torch.manual_seed(0)
    model = trained_like(create_backbone("dinov3_test").eval())
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    head, config, metrics = finetune_classifier(model, str(tmp_path / "data"), rank=2, size=None, epochs=8,
                                                lr=1e-2, batch_size=4, progress=False)  # fmt: skip
    assert metrics["training"]["accuracy"] == 1.0
    D, depth = model.embed_dim, len(model.blocks)
    assert metrics["trainable_lora"] == depth * 2 * 2 * (D + D)  # q and v, rank 2: A [2, D] + B [D, 2]
    assert metrics["trainable_head"] == D * 2 + 2
    modules = lora_modules(model)
    assert all(float(m.lora_B["q"].detach().abs().max()) > 0 for m in modules.values())  # the adapters learned
    for name, value in model.state_dict().items():  # the backbone itself did not move
        if "lora_" not in name:
            assert torch.equal(value, frozen[name.replace(".base.", ".")]), name


def test_head_cli_with_lora(tmp_path, capsys):
    colour_folders(tmp_path / "data")
    out = tmp_path / "h.safetensors"
    assert main(["head", "train", str(tmp_path / "data"), "--backbone", "random:dinov3_test", "--output", str(out),
                 "--lora", "2", "--features", "cls+avg", "--size", "0", "--epochs", "6", "--lr", "1e-2"]) == 0
    assert (tmp_path / "h.lora.safetensors").exists() and "trainable_lora" in capsys.readouterr().out
    probe = tmp_path / "data" / "blue" / "0.png"
    assert main(["head", "predict", str(probe), "--head", str(out), "--output", str(tmp_path / "p.json")]) == 0
    assert list(json.loads((tmp_path / "p.json").read_text()).values())[0].keys() == {"blue"}


def test_lora_finetune_learns_in_fp16_with_a_gradient_scaler(tmp_path):
    colour_folders(tmp_path / "data")
    torch.manual_seed(0)
    model = trained_like(create_backbone("dinov3_test").eval())
    head, config, metrics = finetune_classifier(model, str(tmp_path / "data"), rank=2, size=None, epochs=8, lr=1e-2,
                                                batch_size=4, progress=False, device="cpu", dtype="fp16")  # fmt: skip
    assert metrics["training"]["accuracy"] == 1.0
    assert all(float(m.lora_B["v"].detach().abs().max()) > 0 for m in lora_modules(model).values())


def test_head_cli_with_lora_on_cpu_in_bf16_with_validation(tmp_path, capsys):
    colour_folders(tmp_path / "data", n=4)
    out = tmp_path / "h.safetensors"
    assert main(["head", "train", str(tmp_path / "data"), "--backbone", "random:dinov3_test", "--output", str(out),
                 "--lora", "2", "--features", "cls+avg", "--size", "0", "--epochs", "6", "--lr", "1e-2",
                 "--val-fraction", "0.25", "--device", "cpu", "--dtype", "bf16", "--batch-size", "3"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "h.metrics.json").read_text())
    assert set(report) >= {"training", "validation", "trainable_lora"} and "validation:" in capsys.readouterr().out
    probes = [str(tmp_path / "data" / c / f"{i}.png") for c in ("red", "blue") for i in range(2)]
    assert main(["head", "predict", *probes, "--head", str(out), "--output", str(tmp_path / "p.json"),
                 "--device", "cpu", "--dtype", "bf16", "--batch-size", "3"]) == 0  # fmt: skip
    predicted = [next(iter(v)) for v in json.loads((tmp_path / "p.json").read_text()).values()]
    assert predicted == ["red", "red", "blue", "blue"]
