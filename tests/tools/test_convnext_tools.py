"""The frozen-feature tools with DINOv3 ConvNeXt backbones (stride 32, stages of different widths, no attention),
beside a ViT where that is cheap, on 64-px images: a 2×2 token grid for the ConvNeXt, 4×4 for the /16 ViT.

The API tests use a ConvNeXt with depths 1/1/2/1, so that its 5 blocks differ from the 4 stages that
`get_intermediate_layers` counts (a tool that confuses the two fails here), and trained-like γs, so that the
blocks do change the features."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dinokit
from dinokit.cli import main
from dinokit.data.images import decode_image
from dinokit.errors import UserError
from dinokit.models import create_backbone
from dinokit.tools.export import export_onnx, verify_onnx
from dinokit.tools.extract import Preprocess, extract_features
from dinokit.tools.heads import predict_image, train_head_on_images
from dinokit.tools.lora import add_lora
from dinokit.tools.matching import describe, grid_keypoints, match_keypoints
from dinokit.tools.prototypes import apply_prototypes, build_prototypes
from dinokit.tools.viz import attention_maps, render_pca, render_similarity, similarity_map
from tests.tools.helpers import trained_like, write_png

CONVNEXT = "random:dinov3_convnext_test"
COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200)}


@pytest.fixture(scope="module")
def convnext():
    torch.manual_seed(0)
    return trained_like(create_backbone("dinov3_convnext_test", depths=(1, 1, 2, 1)).eval())


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return trained_like(create_backbone("dinov3_test").eval())


@pytest.fixture(params=["convnext", "vit"])
def model(request):
    return request.getfixturevalue(request.param)


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate("abc"):
        write_png(folder / f"{name}.png", 64, i)
    return folder


def _solid(rgb, seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.array(rgb)[None, None] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)


@pytest.fixture()
def colour_classes(tmp_path):
    """Two classes of noisy solid colours, three 64-px images each."""
    root = tmp_path / "classes"
    for k, (name, rgb) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(_solid(rgb, 10 * k + i)).save(root / name / f"{name}{i}.png")
    return root


def test_convnext_fixture_has_more_blocks_than_stages(convnext):
    assert convnext.config.kind == "convnext" and len(convnext.blocks) == 5 and convnext.n_blocks == 4


# ------------------------------------------------------------------------------------------------ extract
def test_extract_stores_every_layer_on_the_output_grid(model, photos, tmp_path):
    last = model.n_blocks - 1
    extract_features(model, photos, tmp_path / "f", size=64, layers=[0, last], progress=False)
    feats = dinokit.read_features(tmp_path / "f")
    a = feats[photos / "a.png"]
    p, D, R = model.patch_size, model.embed_dim, model.num_registers
    h = 64 // p
    assert len(feats) == 3 and a["cls"].shape == (D,) and a["registers"].shape == (R, D)
    assert a["patches"].shape == (h, h, D) and np.isfinite(a["patches"]).all()
    width0 = model.config.dims[0] if model.config.kind == "convnext" else D
    assert a["layer0"].shape == (h, h, width0)
    np.testing.assert_allclose(a[f"layer{last}"], a["patches"], atol=1e-5)  # the last layer is the output
    x = Preprocess(p, 64)(decode_image(photos / "a.png"))[None]
    with torch.no_grad():
        out = model.forward_features(x)
        (stage0,) = model.get_intermediate_layers(x, n=[0], reshape=True)  # [1, C0, h0, w0]
    np.testing.assert_allclose(a["cls"], out.cls[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(a["patches"].reshape(h * h, D), out.patches[0].numpy(), atol=1e-5)
    # ConvNeXt stage 0 is a 16×16 map at stride 4, stored resized to the 2×2 grid (released pseudo-patch rule)
    want = F.interpolate(stage0, size=(h, h), mode="bilinear", antialias=True)[0].permute(1, 2, 0)
    np.testing.assert_allclose(a["layer0"], want.numpy(), atol=1e-5)
    meta = json.loads((tmp_path / "f" / "meta.json").read_text())
    assert meta["patch_size"] == p and meta["embed_dim"] == D and meta["num_registers"] == R


def test_extract_layers_are_stage_indices_for_a_convnext(convnext, photos, tmp_path):
    with pytest.raises(UserError, match=r"stage indices in \[0, 4\)"):  # 5 blocks, but 4 stages
        extract_features(convnext, photos, tmp_path / "f", size=64, layers=[4], progress=False)


def test_extract_cli_with_a_convnext_tiles_and_layers(tmp_path, capsys):
    write_png(tmp_path / "big.png", 128, 0)
    out = tmp_path / "cli"
    assert main(["extract", str(tmp_path / "big.png"), "--backbone", CONVNEXT, "--output", str(out), "--size", "128",
                 "--tile", "64", "--overlap", "32", "--layers", "1", "--workers", "0"]) == 0  # fmt: skip
    (feats,) = dinokit.read_features(out).values()
    assert feats["patches"].shape == (4, 4, 128) and feats["layer1"].shape == (4, 4, 32)  # 3×3 tiles of 2×2
    assert feats["registers"].shape == (0, 128) and np.isfinite(feats["cls"]).all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["patch_size"] == 32 and meta["tile"] == 64 and "stage" in meta["extra"]["layers"]
    assert main(["extract", str(tmp_path / "big.png"), "--backbone", CONVNEXT, "--output", str(tmp_path / "x"),
                 "--layers", "4", "--workers", "0"]) == 2  # fmt: skip
    assert "stage indices" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- viz
def test_viz_pca_and_similarity(model, photos):
    images = [decode_image(photos / f"{n}.png") for n in "ab"]
    pca = render_pca(model, images, size=64)
    assert pca.shape == (64 * 2 + 8, 64 * 2 + 8, 3) and pca.dtype == np.uint8
    assert len(np.unique(pca[:64, 72:].reshape(-1, 3), axis=0)) > 1  # the first image's map is not flat
    sim = render_similarity(model, images, (10.0, 50.0), size=64)
    assert sim.shape == pca.shape and len(np.unique(sim[:64, 72:].reshape(-1, 3), axis=0)) > 1
    with torch.no_grad():
        out = model.forward_features(Preprocess(model.patch_size, 64)(images[0])[None])
    fmap = out.patches[0].reshape(*out.grid, -1)
    s = similarity_map(fmap, (0, 1))  # a query on patch (0, 1) is most similar to itself
    assert s.shape == out.grid and float(s[0, 1]) == pytest.approx(1.0, abs=1e-5) and int(s.argmax()) == 1


def test_viz_cli_pca_works_and_attention_is_refused_for_a_convnext(photos, tmp_path, capsys):
    img = str(photos / "a.png")
    assert main(["viz", "pca", img, "--backbone", CONVNEXT, "--size", "64", "--output", str(tmp_path / "p.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "p.png")).shape == (64, 136, 3)
    rc = main(["viz", "attention", img, "--backbone", CONVNEXT, "--size", "64", "--output", str(tmp_path / "a.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "ConvNeXt, which has no attention" in err and "viz pca" in err and "Traceback" not in err
    assert not (tmp_path / "a.png").exists()


def test_attention_maps_refuse_a_convnext_and_still_work_for_a_vit(convnext, vit):
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(UserError, match="no attention"):
        attention_maps(convnext, x)
    maps = attention_maps(vit, x)
    assert maps.shape == (1, vit.config.num_heads, 4, 4)
    torch.testing.assert_close(maps.sum((-2, -1)), torch.ones(1, vit.config.num_heads), atol=0.2, rtol=0.2)


# -------------------------------------------------------------------------------------------------- index
def test_index_cli_build_and_search_with_a_convnext(photos, tmp_path, capsys):
    out = tmp_path / "index"
    assert main(["index", "build", str(photos), "--output", str(out), "--backbone", CONVNEXT, "--size", "64"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dim"] == 128 and len(json.loads((out / "paths.json").read_text())) == 3
    query = [str(photos / "b.png"), "--k", "3", "--json", str(tmp_path / "r.json")]
    assert main(["index", "search", str(out), *query]) == 0
    (hits,) = json.loads((tmp_path / "r.json").read_text()).values()
    assert len(hits) == 3 and hits[0][0].endswith("b.png") and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    assert hits[0][1] >= hits[1][1] >= hits[2][1]


# ------------------------------------------------------------------------------------------------ prototypes
def test_prototypes_with_a_convnext(convnext, colour_classes, tmp_path):
    protos = build_prototypes(convnext, colour_classes, size=64)
    assert protos.vectors.shape == (2, 128) and protos.names == ["blue", "red"] and protos.counts == [12, 12]
    assert np.isfinite(protos.threshold)
    Image.fromarray(_solid(COLOURS["red"], 99)).save(tmp_path / "probe.png")
    result = apply_prototypes(convnext, protos, decode_image(tmp_path / "probe.png"))
    assert result["labels"].shape == result["ood_score"].shape == result["ood_mask"].shape == (2, 2)
    assert (result["labels"] == protos.names.index("red")).all()  # every patch of a new red image is red
    assert torch.isfinite(result["ood_score"]).all() and result["shown"].shape == (64, 64, 3)


# -------------------------------------------------------------------------------------------------- matching
def test_matching_describes_the_output_and_any_stage(convnext):
    x = torch.randn(3, 64, 96)
    kp, desc = describe(convnext, x)  # the output: stride 32, a 2×3 grid
    assert torch.equal(kp, grid_keypoints((2, 3), 32)) and desc.shape == (6, 128)
    torch.testing.assert_close(desc.norm(dim=-1), torch.ones(6))
    with torch.no_grad():
        out = convnext.forward_features(x[None])
    torch.testing.assert_close(desc, F.normalize(out.patches[0], dim=-1), atol=1e-5, rtol=0)
    kp1, desc1 = describe(convnext, x, layer=1)  # stage 1: stride 8, width 32
    assert kp1.shape == (8 * 12, 2) and desc1.shape == (96, 32) and float(kp1[0, 0]) == 4.0
    pairs, scores = match_keypoints(desc1, desc1)
    assert torch.equal(pairs[:, 0], pairs[:, 1]) and len(pairs) > 0 and (scores > 0.999).all()
    with pytest.raises(UserError, match=r"outside \[0, 4\)"):
        describe(convnext, x, layer=4)


# ----------------------------------------------------------------------------------------------------- heads
def test_heads_train_and_predict_with_a_convnext(convnext, colour_classes, tmp_path):
    head, config, metrics = train_head_on_images(convnext, str(colour_classes), tmp_path / "h.safetensors",
                                                 features="cls+avg", size=64, epochs=30, lr=2e-2)  # fmt: skip
    assert config.in_dim == 2 * 128 and metrics["training"]["accuracy"] == 1.0
    Image.fromarray(_solid(COLOURS["blue"], 77)).save(tmp_path / "probe.png")
    out = predict_image(convnext, head, config, decode_image(tmp_path / "probe.png"))
    assert config.classes[int(out["labels"])] == "blue" and float(out["probs"].sum()) == pytest.approx(1.0)


def test_head_cli_segments_with_a_convnext_and_refuses_lora(colour_classes, tmp_path, capsys):
    (tmp_path / "halves").mkdir()
    (tmp_path / "masks").mkdir()
    labels = np.repeat(np.array([[0] * 32 + [1] * 32], np.uint8), 64, 0)  # [64, 64]
    for i in range(3):  # left half red (class 0), right half blue (class 1)
        img = np.concatenate([_solid(COLOURS["red"], i)[:, :32], _solid(COLOURS["blue"], 50 + i)[:, 32:]], 1)
        Image.fromarray(img).save(tmp_path / "halves" / f"h{i}.png")
        Image.fromarray(labels).save(tmp_path / "masks" / f"h{i}.png")
    common = ["--backbone", CONVNEXT, "--size", "64", "--epochs", "40", "--lr", "2e-2"]
    assert main(["head", "train", str(tmp_path / "halves"), "--task", "segment", "--kind", "conv", "--masks",
                 str(tmp_path / "masks"), "--classes", "red,blue", "--output", str(tmp_path / "seg.safetensors"),
                 *common]) == 0  # fmt: skip
    assert "pixel_accuracy" in capsys.readouterr().out
    assert main(["head", "predict", str(tmp_path / "halves" / "h0.png"), "--head", str(tmp_path / "seg.safetensors"),
                 "--output", str(tmp_path / "out")]) == 0  # fmt: skip
    seg = np.asarray(Image.open(tmp_path / "out" / "h0.png"))[..., 0]
    assert seg.shape == (64, 64) and (seg[:, :16] == 0).mean() > 0.9 and (seg[:, 48:] == 1).mean() > 0.9
    assert main(["head", "train", str(colour_classes), "--output", str(tmp_path / "l.safetensors"), "--lora", "4",
                 *common]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "ConvNeXt, which has no attention" in err and "without --lora" in err


def test_lora_refuses_a_convnext(convnext):
    with pytest.raises(UserError, match="no attention"):
        add_lora(convnext, rank=2)
    assert all(p.requires_grad for p in convnext.parameters())  # refused before freezing anything


# ----------------------------------------------------------------------------------------------------- ONNX
def test_onnx_export_of_a_convnext_matches_pytorch_at_several_sizes(convnext, tmp_path):
    report = export_onnx(convnext, tmp_path / "m.onnx", example_size=64, verify_sizes=[(64, 64), (96, 160)],
                         quantize=True)  # fmt: skip
    errors = [e for size in report["max_abs_diff"].values() for e in size.values()]
    assert len(errors) == 6 and max(errors) <= 1e-4
    assert min(report["int8"]["cosine"].values()) >= 0.99
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [o.name for o in graph.output] == ["cls", "registers", "patches"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))  # dynamic B, H, W
    errs = verify_onnx(convnext, tmp_path / "m.onnx", [(70, 100), (32, 33)], batch=1)  # sides not multiples of 32
    assert max(e for size in errs.values() for e in size.values()) <= 1e-4
