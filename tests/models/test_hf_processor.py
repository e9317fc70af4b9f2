"""An HF folder written by dinokit carries the released HF models' `preprocessor_config.json`, so transformers'
`AutoImageProcessor` loads it and prepares images as dinokit's `EvalTransform` does.

DINOv3 (ViTs and ConvNeXts): `DINOv3ViTImageProcessorFast`, 224×224, equal to `EvalTransform.for_model(model,
size=224)` to float round-off (transformers needs torchvision for it; skipped without). DINOv2: `BitImageProcessor`,
equal where no resampling happens (a 256-px image), within about one grey level elsewhere: its resize works on 8-bit
pixels (PIL or torchvision), dinokit's on floats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dinokit
from dinokit.data.transforms import EvalTransform, model_mean_std

SATELLITE_MEAN, SATELLITE_STD = [0.430, 0.411, 0.296], [0.213, 0.156, 0.143]


def _photo(height: int, width: int) -> torch.Tensor:
    """A smooth uint8 image `[3, H, W]` (noise blurred, so resampling differences stay those of real photos)."""
    noise = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)) * 255
    return torch.nn.functional.avg_pool2d(noise, 5, 1, 2)[0].round().to(torch.uint8)


def _hf_pixels(folder, image: torch.Tensor) -> torch.Tensor:
    from PIL import Image
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder)
    pil = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
    return processor(images=pil, return_tensors="pt")["pixel_values"][0]


@pytest.mark.parametrize("preset", ["dinov2_test_reg4", "dinov3_test", "dinov3_convnext_test"])
def test_hf_folder_holds_the_released_processor_config(preset, tmp_path):
    model = dinokit.create_backbone(preset)
    config = json.loads((dinokit.save_backbone(model, tmp_path, format="hf") / "preprocessor_config.json").read_text())
    mean, std = model_mean_std(model)
    assert (config["image_mean"], config["image_std"]) == (list(mean), list(std))
    assert config["do_rescale"] and config["rescale_factor"] == 1 / 255 and config["do_normalize"]
    if preset.startswith("dinov2"):  # shorter side to 256, centre crop 224, bicubic: dinokit's DINOv2 evaluation
        ours = EvalTransform.for_model(model)
        assert config["image_processor_type"] == "BitImageProcessor" and config["resample"] == 3
        assert (config["size"], config["crop_size"]) == ({"shortest_edge": ours.resize}, {"height": 224, "width": 224})
        assert ours.crop == 224 and ours.mode == "bicubic"
    else:  # a square resize, bilinear
        ours = EvalTransform.for_model(model, size=224)
        assert config["image_processor_type"] == "DINOv3ViTImageProcessorFast" and config["resample"] == 2
        assert config["size"] == {"height": ours.resize, "width": ours.resize} and ours.crop is None
        assert ours.mode == "bilinear"


def test_auto_image_processor_dinov2(tmp_path):
    pytest.importorskip("transformers")
    model = dinokit.create_backbone("dinov2_test_reg4")
    dinokit.save_backbone(model, tmp_path, format="hf")
    transform = EvalTransform.for_model(model)
    square = _photo(256, 256)  # nothing to resample: the centre crop and the normalisation alone
    torch.testing.assert_close(_hf_pixels(tmp_path, square), transform(square), atol=1e-5, rtol=0)
    wide = _photo(240, 320)
    difference = (_hf_pixels(tmp_path, wide) - transform(wide)).abs()
    assert difference.max() < 0.05  # ≈ one grey level (1/255 / std): 8-bit resampling against float resampling


def test_auto_image_processor_dinov3(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("torchvision")  # transformers' DINOv3 image processor exists only with torchvision
    for preset in ("dinov3_test", "dinov3_convnext_test"):
        model = dinokit.create_backbone(preset)
        dinokit.save_backbone(model, tmp_path / preset, format="hf")
        for image in (_photo(224, 224), _photo(240, 320)):
            expected = EvalTransform.for_model(model, size=224)(image)
            torch.testing.assert_close(_hf_pixels(tmp_path / preset, image), expected, atol=1e-5, rtol=0)


def test_satellite_statistics_travel_with_the_hf_folder(tmp_path):
    model = dinokit.create_backbone("dinov3_test")
    model.config = model.config.replace(extra={"mean": SATELLITE_MEAN, "std": SATELLITE_STD})
    dinokit.save_backbone(model, tmp_path, format="hf")
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["image_mean"] == SATELLITE_MEAN
    loaded = dinokit.load_backbone(tmp_path)
    assert (loaded.config.extra["mean"], loaded.config.extra["std"]) == (SATELLITE_MEAN, SATELLITE_STD)
    imagenet = dinokit.save_backbone(dinokit.create_backbone("dinov3_test"), tmp_path / "imagenet", format="hf")
    assert "mean" not in dinokit.load_backbone(imagenet).config.extra  # the default needs no note
