"""dino.txt text prompts in the tools: `dinokit viz text` (patch–prompt similarity panels) and text prototypes for
`dinokit prototypes build/apply` in the head's patch space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dinokit.cli import main
from dinokit.errors import UserError
from dinokit.models import backbone_from_spec
from dinokit.tools.prototypes import DINOTXT_SPACE, Prototypes, apply_prototypes, text_prototypes
from dinokit.tools.viz import prepare_images, render_text_similarity, text_patch_embeddings, text_similarity

from .helpers import BACKBONE, DIM

pytestmark = pytest.mark.filterwarnings("ignore:ftfy is not installed")


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i, shape in enumerate([(48, 64, 3), (64, 48, 3)]):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[-1])
    return paths


@torch.no_grad()
def test_similarity_is_the_patch_half_cosine(text_model):
    text = text_patch_embeddings(text_model, ["a dog", "hello"])
    full = text_model.encode_text(text_model.tokenize(["a dog", "hello"]))
    assert torch.allclose(text, F.normalize(full[:, DIM:], dim=-1), atol=1e-6)
    x = torch.randn(1, 3, 32, 48)
    patches = text_model.encode_patches(x)[0]  # [2, 3, D]
    sim = text_similarity(patches, text)
    assert sim.shape == (2, 2, 3)
    assert torch.isclose(sim[1, 0, 2], F.cosine_similarity(patches[0, 2], text[1], dim=0), atol=1e-5)
    picture = render_text_similarity(text_model, [torch.zeros(3, 32, 48, dtype=torch.uint8)], ["a dog", "hello"],
                                     size=32, device="cpu")  # fmt: skip
    assert picture.shape == (32, 3 * 48 + 2 * 8, 3)


def test_cli_viz_text_writes_a_png(prompt_files, images, tmp_path, capsys):
    ckpt, vocab = prompt_files
    out = tmp_path / "text.png"
    args = [
        "viz",
        "text",
        *map(str, images),
        "--dinotxt",
        str(ckpt),
        "--backbone",
        BACKBONE,
        "--vocab",
        str(vocab),
        "--prompt",
        "a crack",
        "--prompt",
        "dog",
        "--size",
        "32",
        "--output",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    with Image.open(out) as img:
        assert img.size == (3 * 48 + 2 * 8, 32 + 8 + 48)  # rows of 32×48 and 48×32 panels (sides rounded to 16)
    assert main(["viz", "text", str(images[0]), "--backbone", BACKBONE, "--output", str(out)]) == 2
    assert "needs --dinotxt" in capsys.readouterr().err
    assert main(["viz", "pca", str(images[0]), "--backbone", BACKBONE, "--output", str(out), "--prompt", "x"]) == 2
    assert "belong to `dinokit viz text`" in capsys.readouterr().err


@torch.no_grad()
def test_text_prototypes_live_in_the_head_patch_space(text_model, tmp_path):
    protos = text_prototypes(text_model, ["dog", "hello"], size=32)
    assert protos.space == DINOTXT_SPACE and protos.vectors.shape == (2, DIM)
    assert torch.allclose(protos.vectors, text_patch_embeddings(text_model, ["dog", "hello"]))
    protos.save(tmp_path / "p.safetensors")
    loaded = Prototypes.load(tmp_path / "p.safetensors")
    assert loaded.space == DINOTXT_SPACE and loaded.names == ["dog", "hello"] and loaded.threshold is None
    image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    result = apply_prototypes(text_model, loaded, image, device="cpu")
    x, _ = prepare_images(text_model.visual_model.backbone, [image], 32)[0]
    sim = text_similarity(text_model.encode_patches(x[None])[0], loaded.vectors)  # [2, h, w]
    assert torch.equal(result["labels"], sim.argmax(0)) and "ood_mask" not in result
    assert torch.allclose(result["similarity"], sim.amax(0), atol=1e-5)
    assert apply_prototypes(text_model, loaded, image, threshold=0.5, device="cpu")["ood_mask"].shape == (2, 3)
    with pytest.raises(UserError, match="dino.txt head's patch space"):
        apply_prototypes(backbone_from_spec(BACKBONE), loaded, image, device="cpu")
    backbone_protos = Prototypes(DIM)
    backbone_protos.add("x", torch.randn(2, 2, DIM))
    with pytest.raises(UserError, match="built from backbone patch features"):
        apply_prototypes(text_model, backbone_protos, image, device="cpu")


def test_cli_text_prototypes_build_and_apply(prompt_files, images, tmp_path, capsys):
    ckpt, vocab = prompt_files
    protos = tmp_path / "protos.safetensors"
    build = [
        "prototypes",
        "build",
        "--dinotxt",
        str(ckpt),
        "--backbone",
        BACKBONE,
        "--vocab",
        str(vocab),
        "--prompt",
        "crack",
        "--prompt",
        "spalling",
        "--size",
        "32",
        "--output",
        str(protos),
        "--device",
        "cpu",
    ]
    assert main(build) == 0
    assert "2 text prototypes" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["prototypes", "apply", *map(str, images), "--prototypes", str(protos), "--output", str(out),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert "no OOD threshold" in capsys.readouterr().out
    saved = np.load(out / "img0.npz")
    assert list(saved["classes"]) == ["crack", "spalling"] and saved["labels"].shape == (2, 3)
    assert (out / "img1.png").is_file()
    assert main(["prototypes", "apply", str(images[0]), "--prototypes", str(protos), "--output", str(out),
                 "--threshold", "0.5", "--device", "cpu"]) == 0  # fmt: skip
    assert "out of distribution" in capsys.readouterr().out
    assert main(build[:2] + ["--backbone", BACKBONE, "--prompt", "crack", "--output", str(protos)]) == 2
    assert "need both --dinotxt" in capsys.readouterr().err
    assert main(build[:2] + ["--backbone", BACKBONE, "--output", str(protos)]) == 2
    assert "give labelled images" in capsys.readouterr().err
