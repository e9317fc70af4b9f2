import numpy as np
import pytest
import torch
from PIL import Image

from dinokit.cli import main
from dinokit.data.images import decode_image
from dinokit.models import create_backbone
from dinokit.tools.viz import attention_maps, foreground_masks, pca_rgb, render_attention, render_pca, similarity_map
from tests.tools.helpers import trained_like, write_png


def planted(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features `[10, 12, 32]`: background noise plus a strong direction on a central object."""
    g = torch.Generator().manual_seed(seed)
    feats = 0.1 * torch.randn(10, 12, 32, generator=g)
    obj = torch.zeros(10, 12, dtype=torch.bool)
    obj[3:7, 4:9] = True
    feats[obj] += torch.randn(32, generator=g)
    return feats, obj


def test_pca_shape_range_and_determinism():
    feats, obj = planted()
    rgb = pca_rgb(feats)
    assert rgb.shape == (10, 12, 3) and rgb.dtype == torch.float32 and 0 <= rgb.min() and rgb.max() <= 1
    assert torch.equal(rgb, pca_rgb(feats.clone()))
    torch.testing.assert_close(pca_rgb(-feats), 1 - rgb)  # component signs follow the data, not the solver
    first = rgb[..., 0]
    assert (first[obj].mean() - first[~obj].mean()).abs() > 0.5  # the object stands out on component 1


def test_joint_pca_gives_consistent_colours():
    feats, _ = planted()
    a, b = pca_rgb([feats, feats[:, :6]])
    assert a.shape == (10, 12, 3) and b.shape == (10, 6, 3)
    a2, a3 = pca_rgb([feats, feats])
    assert torch.equal(a2, a3)


def test_foreground_is_the_object_not_the_border():
    feats, obj = planted()
    (mask,) = foreground_masks([feats], 0.5)
    assert torch.equal(mask, obj)
    (mask_neg,) = foreground_masks([-feats], 0.5)
    assert torch.equal(mask_neg, obj)  # whatever the sign of the component
    rgb = pca_rgb(feats, foreground_threshold=0.5)
    assert (rgb[~obj] == 0).all() and (rgb[obj].sum(-1) > 0).any()


def test_similarity_map_peaks_at_the_query():
    feats, _ = planted()
    sim = similarity_map(feats, (2, 3))
    assert sim.shape == (10, 12) and torch.isclose(sim[2, 3], torch.tensor(1.0)) and sim.argmax() == 2 * 12 + 3
    sim_px = similarity_map(feats, (2 * 16 + 8, 3 * 16 + 8), feats, patch_size=16)  # same point, in pixels
    torch.testing.assert_close(sim_px, sim)


@pytest.mark.parametrize("fixture", ["v2_model", "v3_model"])
def test_attention_maps_match_the_last_block(fixture, request):
    model = request.getfixturevalue(fixture)
    p = model.patch_size
    x = torch.randn(2, 3, 4 * p, 5 * p)
    seen = {}
    hook = model.blocks[-1].attn.register_forward_pre_hook(lambda mod, args: seen.update(args=args))
    model.forward_features(x)
    hook.remove()
    full = model.blocks[-1].attn.attention_map(*seen["args"])  # [B, heads, N, N]
    maps = attention_maps(model, x)
    assert maps.shape == (2, model.blocks[-1].attn.num_heads, 4, 5)
    torch.testing.assert_close(maps.flatten(2), full[:, :, 0, 1 + model.num_registers :])


def test_viz_cli(image_folder, tmp_path, capsys):
    imgs = [str(image_folder / "a.png"), str(image_folder / "b.png")]
    for kind, extra in [("pca", ["--foreground", "0.3"]), ("similarity", ["--query", "20,30"]), ("attention", [])]:
        out = tmp_path / f"{kind}.png"
        args = ["--backbone", "random:dinov3_test", "--output", str(out), "--size", "64"]
        assert main(["viz", kind, *imgs, *args, *extra]) == 0
        arr = np.asarray(Image.open(out))
        assert arr.ndim == 3 and arr.shape[0] == 64 + 8 + 64  # two rows of 64 px panels
    rc = main(["viz", "similarity", imgs[0], "--backbone", "random:dinov3_test", "--output", str(tmp_path / "x.png"),
               "--query", "500,1"])  # fmt: skip
    assert rc == 2 and "outside" in capsys.readouterr().err


def test_batched_pictures_equal_one_at_a_time(tmp_path):
    """Images of two shapes in one call, grouped by shape and `batch_size` at a time: the pictures are those of
    one image per forward."""
    torch.manual_seed(0)
    model = trained_like(create_backbone("dinov3_test").eval())  # images differ in its features
    images = []
    for i in range(5):
        write_png(tmp_path / f"{i}.png", 96, i, crop=(64, 96) if i % 2 else None)
        images.append(decode_image(tmp_path / f"{i}.png"))
    for render in (render_pca, render_attention):
        one = render(model, images, 64, batch_size=1, device="cpu")
        batched = render(model, images, 64, batch_size=2, device="cpu")
        assert one.shape == batched.shape and np.abs(one.astype(int) - batched).max() <= 1
    # rows 0 and 2 (same shape, one batch): their maps differ, so a batch put back in the wrong order would show
    assert np.abs(batched[:64, 72:].astype(int) - batched[144:208, 72:]).mean() > 10


def test_viz_cli_on_cpu_in_bf16(image_folder, tmp_path):
    imgs = [str(image_folder / name) for name in ("a.png", "b.png", "c.png")]
    for kind in ("pca", "similarity", "attention"):
        out = tmp_path / f"{kind}.png"
        argv = ["viz", kind, *imgs, "--backbone", "random:dinov3_test", "--output", str(out), "--size", "64"]
        assert main([*argv, "--device", "cpu", "--dtype", "bf16", "--batch-size", "2"]) == 0
        assert np.asarray(Image.open(out)).shape[0] == 3 * 64 + 2 * 8  # a row per image
