"""The tools read every checkpoint kind `load_backbone` does: released .pth, training checkpoints, dinokit."""

import numpy as np
import torch

import dinokit
from dinokit.cli import main
from tests.tools.helpers import trained_like


def test_extract_and_viz_from_released_training_and_dinokit_files(image_folder, tmp_path):
    torch.manual_seed(0)
    model = trained_like(dinokit.create_backbone("dinov3_test").eval())
    dinokit.save_backbone(model, tmp_path / "released.pth", format="official")
    dinokit.save_backbone(model, tmp_path / "dinokit_folder", format="dinokit")
    official = torch.load(tmp_path / "released.pth")
    assert "storage_tokens" in official  # the released DINOv3 naming
    head = {"dino_head.mlp.0.weight": torch.zeros(4, 4)}
    torch.save({"teacher": {**{f"backbone.{k}": v for k, v in official.items()}, **head}}, tmp_path / "train.pth")
    image = str(image_folder / "a.png")
    cls = {}
    for name in ("released.pth", "train.pth", "dinokit_folder"):
        out = tmp_path / f"feats_{name}"
        assert main(["extract", image, "--backbone", str(tmp_path / name), "--output", str(out), "--workers", "0"]) == 0
        cls[name] = dinokit.read_features(out)[image]["cls"]
    assert all(np.array_equal(c, cls["released.pth"]) for c in cls.values())
    x = dinokit.tools.extract.Preprocess(16)(dinokit.data.images.decode_image(image))
    np.testing.assert_allclose(cls["train.pth"], model.forward_features(x[None]).cls[0].detach().numpy(), atol=1e-5)
    png = tmp_path / "pca.png"
    assert main(["viz", "pca", image, "--backbone", str(tmp_path / "train.pth"), "--output", str(png)]) == 0
