"""The command line: verbs run, and user mistakes exit with status 2 and one clear message."""

from __future__ import annotations

import subprocess
import sys

import torch

import dinokit
from dinokit.cli import main


def test_info_names_the_preset(tmp_path, capsys):
    with torch.device("meta"):
        model = dinokit.create_backbone("dinov3_vits16plus")
    sd = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    torch.save(dinokit.models.weights.dinokit_to_official(sd, model.config), tmp_path / "w.pth")
    assert main(["info", str(tmp_path / "w.pth")]) == 0
    out = capsys.readouterr().out
    assert "dinov3_vits16plus" in out and "28.7 M" in out and "DINOv3 License" in out


def test_convert_between_formats(tmp_path):
    model = dinokit.create_backbone("dinov2_test_reg4").eval()
    dinokit.save_backbone(model, tmp_path / "m.pth", format="official")
    assert main(["convert", str(tmp_path / "m.pth"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    x = torch.randn(1, 3, 28, 28)
    assert torch.allclose(dinokit.load_backbone(tmp_path / "hf")(x), model(x), atol=1e-6)


def test_user_mistakes_exit_2_without_traceback(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"nope")
    (tmp_path / "a_file").write_text("")
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "img.png")
    image, model = str(tmp_path / "img.png"), ["--backbone", "random:dinov3_test"]
    for argv in (["info", str(tmp_path / "missing.pth")], ["info", str(tmp_path / "bad.pth")],
                 ["demo", "--backbone", "random:nonsense", "--output", str(tmp_path / "d")],
                 ["extract", image, *model, "--output", str(tmp_path / "f"), "--batch-size", "0"],
                 ["index", "search", str(tmp_path / "idx"), image, "--k", "-1"],
                 ["data", "synth", str(tmp_path / "s"), "--seed", "-1"],  # numpy seeds are non-negative
                 ["extract", image, *model, "--output", str(tmp_path / "f"), "--device", "banana"],
                 ["eval", "knn", *model, "--train", str(tmp_path), "--val", str(tmp_path), "--device", "cuda:99"],
                 ["data", "synth", str(tmp_path / "a_file" / "s")],  # inside a file
                 ["data", "synth", str(tmp_path / "s"), "--size", "100000"],  # was a numpy MemoryError
                 ["demo", "--output", str(tmp_path / "a_file")],
                 # an output where a file already is: the system's message and the path, no traceback
                 ["extract", image, *model, "--output", str(tmp_path / "a_file"), "--size", "32"],
                 ["viz", "pca", image, *model, "--output", str(tmp_path / "a_file" / "v.png"), "--size", "32"]):
        r = subprocess.run([sys.executable, "-m", "dinokit.cli", *argv], capture_output=True, text=True)
        assert r.returncode == 2, (argv, r.stderr)
        assert "Traceback" not in r.stderr and "error:" in r.stderr


def test_photo_demo_writes_features_and_picture(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--backbone", "random:dinov3_test", "--size", "64", "--output", str(out)]) == 0
    from safetensors.torch import load_file

    feats = load_file(out / "features.safetensors")
    assert feats["patches"].shape == (4, 4, 128) and feats["registers"].shape == (4, 128)
    assert (out / "pca.png").stat().st_size > 0


def test_the_photo_demo_keeps_out_of_the_training_demos_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # demo_out/pca.png is a figure of the training demo's report
    assert main(["demo", "--backbone", "random:dinov3_test", "--size", "64"]) == 0
    assert (tmp_path / "photo_demo" / "pca.png").is_file() and not (tmp_path / "demo_out").exists()
