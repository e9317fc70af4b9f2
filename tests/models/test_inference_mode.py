"""Every preset family builds, loads and runs under `torch.inference_mode()`, `torch.no_grad()` and plain mode,
with the same outputs; the cached resized position embedding follows in-place changes of the weights."""

import contextlib

import pytest
import torch

from dinokit.models import create_backbone, load_backbone, save_backbone

FAMILIES = ["dinov2_test", "dinov2_test_reg4", "dinov2_test_swiglu", "dinov3_test", "dinov3_test_swiglu",
            "dinov3_convnext_test"]  # fmt: skip
MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "plain": contextlib.nullcontext}


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_builds_loads_and_runs_in_every_mode(name, tmp_path):
    torch.manual_seed(0)
    reference = create_backbone(name).eval()
    save_backbone(reference, tmp_path / "m")
    x = torch.randn(2, 3, 64, 70) if name.startswith("dinov3") else torch.randn(2, 3, 56, 70)
    expected = reference(x).detach()
    for mode in MODES.values():
        with mode():
            for model in (load_backbone(tmp_path / "m"), create_backbone(name, weights=reference.state_dict())):
                model.eval()
                torch.testing.assert_close(model(x), expected)
                torch.testing.assert_close(model(x), expected)  # a second call (the cache, where there is one)


@pytest.mark.parametrize("mode", list(MODES))
def test_the_position_cache_follows_weight_changes(mode):
    with MODES[mode]():
        model = create_backbone("dinov2_test").eval()
        x = torch.randn(1, 3, 56, 56)
        before = model(x).clone()
        with torch.no_grad() if mode != "inference_mode" else contextlib.nullcontext():
            model.pos_embed.mul_(0.0)
        after = model(x)
        fresh = create_backbone("dinov2_test", weights=model.state_dict()).eval()
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, fresh(x))
