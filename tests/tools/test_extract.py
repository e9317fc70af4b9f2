import json

import numpy as np
import pytest
import torch
from torch import nn

import dinokit
from dinokit.cli import main
from dinokit.data.images import decode_image
from dinokit.errors import UserError
from dinokit.tools.extract import Preprocess, extract_features, features_of_image, stitch, tile_grid
from tests.tools.helpers import write_png


class LocalModel(nn.Module):
    """A stand-in backbone whose patch tokens are local (the patch's mean colour) plus a per-forward constant
    (the mean of the whole input), so stitching positions and overlap averaging can be checked exactly."""

    patch_size = 4
    n_blocks = 1  # what get_intermediate_layers counts (blocks, or a ConvNeXt's stages)

    def __init__(self):
        super().__init__()
        self.blocks = [None]

    def get_intermediate_layers(self, x, n, return_class_token, return_extra_tokens, **_):
        local = nn.functional.avg_pool2d(x, self.patch_size)  # [B, 3, h, w]
        const = x.mean((1, 2, 3))  # [B]
        patches = (local + const[:, None, None, None]).flatten(2).transpose(1, 2)  # [B, h·w, 3]
        return ((patches, const[:, None].expand(-1, 3), patches[:, :2]),)


def test_single_tile_equals_untiled(v3_model, v2_model):
    for model in (v3_model, v2_model):
        p = model.patch_size
        x = torch.randn(3, 4 * p, 6 * p)
        plain = features_of_image(model, x, layers=[0])
        tiled = features_of_image(model, x, tile=8 * p, overlap=2 * p, layers=[0])  # one tile covers it
        assert plain.keys() == tiled.keys() == {"cls", "registers", "patches", "layer0"}
        for k in plain:
            torch.testing.assert_close(tiled[k], plain[k], rtol=0, atol=1e-6)


def test_tile_grid_origins_cover_to_the_edge():
    origins, size = tile_grid((10, 7), tile=4, overlap=2)
    assert size == (4, 4)
    assert sorted({r for r, _ in origins}) == [0, 2, 4, 6]
    assert sorted({c for _, c in origins}) == [0, 2, 3]  # last tile moved back to end at the edge
    assert tile_grid((3, 5), tile=4, overlap=1) == ([(0, 0), (0, 1)], (3, 4))


def test_stitched_tiles_land_in_place_and_overlaps_are_averaged():
    model = LocalModel()
    x = torch.rand(3, 40, 28)  # grid 10×7 patches of 4 px
    out = features_of_image(model, x, tile=16, overlap=8, batch_size=5)
    origins = [(r, c) for r in (0, 2, 4, 6) for c in (0, 2, 3)]
    local = nn.functional.avg_pool2d(x[None], 4)[0].permute(1, 2, 0)  # [10, 7, 3]
    offset_sum, count = torch.zeros(10, 7, 1), torch.zeros(10, 7, 1)
    for r, c in origins:
        offset_sum[r : r + 4, c : c + 4] += x[:, 4 * r : 4 * r + 16, 4 * c : 4 * c + 16].mean()
        count[r : r + 4, c : c + 4] += 1
    torch.testing.assert_close(out["patches"], local + offset_sum / count, rtol=0, atol=1e-6)
    tile_means = torch.stack([x[:, 4 * r : 4 * r + 16, 4 * c : 4 * c + 16].mean() for r, c in origins])
    torch.testing.assert_close(out["cls"], tile_means.mean().expand(3), rtol=0, atol=1e-6)


def test_stitch_averages_constant_tiles():
    tiles = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 2, 3, 1)  # tile 0 → 0, tile 1 → 1
    out = stitch(tiles, [(0, 0), (0, 2)], (2, 5))[..., 0]
    assert out.tolist() == [[0, 0, 0.5, 1, 1]] * 2


def test_preprocess_rounds_sides_to_patches():
    assert Preprocess(16).output_size(100, 75) == (96, 80)
    assert Preprocess(14, size=224).output_size(480, 640) == (224, 294)


@pytest.mark.parametrize("fmt", ["safetensors", "npy"])
def test_extract_writes_reads_and_resumes(v3_model, image_folder, tmp_path, fmt):
    (image_folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "feats"
    extract_features(v3_model, image_folder, out, size=64, layers=[0], format=fmt, shard_size=2, batch_size=2,
                     progress=False)  # fmt: skip
    feats = dinokit.read_features(out)
    assert len(feats) == 3 and (out / "skipped.txt").read_text().strip().endswith("broken.png")
    a = feats[image_folder / "a.png"]
    D = v3_model.embed_dim
    assert a["cls"].shape == (D,) and a["registers"].shape == (4, D) and a["patches"].shape == (4, 4, D)
    assert feats[str(image_folder / "b.png")]["patches"].shape == (4, 6, D)  # 64×96 → shorter side 64
    assert a["layer0"].shape == (4, 4, D) and not np.allclose(a["layer0"], a["patches"])
    x = Preprocess(16, 64)(decode_image(image_folder / "a.png"))
    direct = v3_model.forward_features(x[None])
    np.testing.assert_allclose(a["cls"], direct.cls[0].detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(a["patches"].reshape(16, D), direct.patches[0].detach().numpy(), atol=1e-5)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["preprocessing"]["size"] == 64 and meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]

    index_before = (out / "index.jsonl").read_text()
    with open(out / "index.jsonl", "a") as fh:  # an interruption while appending a shard's lines
        fh.write('{"path": "/half/written.png", "sha')
    (image_folder / "broken.png").unlink()
    write_png(image_folder / "d.png", 80, 3)
    extract_features(v3_model, image_folder, out, size=64, layers=[0], format=fmt, shard_size=2, progress=False)
    index_after = (out / "index.jsonl").read_text()
    assert index_after.startswith(index_before) and index_after.count("\n") == 4  # only d.png was added
    assert len(dinokit.read_features(out)) == 4
    with pytest.raises(UserError, match="other settings"):
        extract_features(v3_model, image_folder, out, size=96, layers=[0], format=fmt, progress=False)


def test_extract_cli_tiles_and_rejects_bad_layers(image_folder, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["extract", str(image_folder / "c.png"), "--backbone", "random:dinov2_test", "--output", str(out),
               "--tile", "56", "--overlap", "14", "--workers", "0"])  # fmt: skip
    assert rc == 0
    (feats,) = dinokit.read_features(out).values()
    assert feats["patches"].shape[:2] == (8, 8)  # 112 px = 8 patches of 14, from 3×3 tiles of 4×4
    rc = main(["extract", str(image_folder), "--backbone", "random:dinov2_test", "--output", str(tmp_path / "x"),
               "--layers", "5"])  # fmt: skip
    assert rc == 2 and "--layers" in capsys.readouterr().err


def test_extract_skips_a_strip_instead_of_stalling_on_it(v3_model, image_folder, tmp_path):
    """Issue: a 1 × 5000 px PNG at `--size 64` became 64 × 320,000 px (80,000 patch tokens) and stalled a run.
    A strip beyond `MAX_ASPECT_RATIO` is skipped from its header and counted like an unreadable file."""
    write_png(image_folder / "strip.png", 400, 0, crop=(4, 400))  # 100:1, which --size 64 made 64 × 6400 px
    out = tmp_path / "feats"
    extract_features(v3_model, image_folder, out, size=64, progress=False)
    assert len(dinokit.read_features(out)) == 3
    assert (out / "skipped.txt").read_text() == f"{(image_folder / 'strip.png').resolve()}\n"


def test_extract_exits_2_when_no_listed_file_exists_or_none_can_be_used(tmp_path, capsys):
    (tmp_path / "list.txt").write_text("gone/a.png\ngone/b.png\n")
    out = tmp_path / "out"
    options = ["--backbone", "random:dinov3_test", "--output", str(out), "--size", "32", "--workers", "1"]
    assert main(["extract", str(tmp_path / "list.txt"), *options]) == 2
    assert "nothing to do: none of the 2 listed file(s) exists" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "junk").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "junk" / name).write_bytes(b"not an image")
    assert main(["extract", str(tmp_path / "junk"), *options]) == 2  # decoded in a loader worker
    err = capsys.readouterr().err
    assert "none of the 2 image(s) could be used" in err and "Traceback" not in err
    assert (out / "skipped.txt").read_text().count("\n") == 2


def test_bf16_extraction_agrees_with_fp32(v3_model):
    x = torch.randn(3, 64, 80)
    f32 = features_of_image(v3_model, x)
    b16 = features_of_image(v3_model, x, dtype=torch.bfloat16)
    assert b16["patches"].dtype == torch.float32  # stored in float32 whatever the compute precision
    cos = torch.nn.functional.cosine_similarity(b16["patches"], f32["patches"], dim=-1)
    assert cos.min() > 0.99 and not torch.equal(b16["patches"], f32["patches"])
