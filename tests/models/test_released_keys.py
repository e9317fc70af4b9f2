"""`BackboneOutput` answers the keys of the dict the released `forward_features` returns.

The references are the golden tensors (outputs of the reference implementation, see test_golden.py) for every ViT
family and the ConvNeXt; the untied-norm case is checked against the released rule written out here."""

from __future__ import annotations

import json

import pytest
import torch

import dinokit
from dinokit.models import ConvNeXt, ConvNeXtConfig
from tests.golden.make_golden import golden_input
from tests.golden.make_golden_convnext import GOLDEN as CONVNEXT_GOLDEN
from tests.models.test_golden import FAMILIES, TOL
from tests.models.test_golden import _load as load_golden

KEYS = ["x_norm_clstoken", "x_norm_regtokens", "x_storage_tokens", "x_norm_patchtokens", "x_prenorm", "masks"]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a.numel() == 0 or (a - b).abs().max().item() <= TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_released_keys_match_the_reference(family):
    model, t = load_golden(family)
    with torch.inference_mode():
        out = model.forward_features(golden_input(t["image.1"]))  # the non-square input
    assert _close(out["x_norm_clstoken"], t["output.1.cls"])  # [B, D]
    assert _close(out["x_norm_patchtokens"], t["output.1.patches"])  # [B, N, D]
    assert _close(out["x_prenorm"], t["output.1.prenorm"])  # [B, 1 + R + N, D], before the final norm
    registers = t.get("output.1.registers", torch.zeros(1, 0, model.embed_dim))
    assert _close(out["x_norm_regtokens"], registers) and _close(out["x_storage_tokens"], registers)  # [B, R, D]
    assert out["masks"] is None  # as released when no masks are given


def test_convnext_prenorm_is_the_patches_alone():
    t = torch.load(CONVNEXT_GOLDEN, weights_only=True)
    model = ConvNeXt(ConvNeXtConfig.from_dict(json.loads(t["config"]))).eval()
    model.load_state_dict({k[8:]: v for k, v in t.items() if k.startswith("weights.")}, strict=True)
    with torch.inference_mode():
        out = model.forward_features(golden_input(t["image.1"]))
    assert _close(out["x_norm_clstoken"], t["output.1.cls"])
    assert _close(out["x_norm_patchtokens"], t["output.1.patches"])
    assert _close(out["x_prenorm"], t["output.1.prenorm"][:, 1:])  # released: the last map's tokens, no pooled CLS
    assert out["x_storage_tokens"].shape == (1, 0, model.embed_dim)


def test_untied_cls_norm_as_released():
    """DINOv3 with `cls_norm`: CLS and registers go through `cls_norm`, the patches through `norm`."""
    torch.manual_seed(0)
    model = dinokit.create_backbone("dinov3_test", cls_norm=True).eval()
    with torch.no_grad():
        for norm in (model.norm, model.cls_norm):
            norm.weight.normal_(1.0, 0.5)
            norm.bias.normal_(0.0, 0.5)
    with torch.no_grad():
        out = model.forward_features(torch.randn(2, 3, 48, 64))
    prenorm = out["x_prenorm"]  # [B, 1 + 4 + N, D]
    torch.testing.assert_close(out["x_norm_clstoken"], model.cls_norm(prenorm[:, 0]))
    torch.testing.assert_close(out["x_storage_tokens"], model.cls_norm(prenorm[:, 1:5]))
    torch.testing.assert_close(out["x_norm_patchtokens"], model.norm(prenorm[:, 5:]))
    assert not torch.allclose(out["x_norm_clstoken"], model.norm(prenorm[:, 0]))  # the two norms differ here


def test_masks_keys_and_unknown_keys():
    torch.manual_seed(0)
    model = dinokit.create_backbone("dinov2_test_reg4").eval()
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[:, :3] = True
    out = model.forward_features(torch.randn(2, 3, 56, 56), masks=masks)
    assert out["masks"] is masks
    assert list(out.keys()) == KEYS and list(out) == KEYS and [k for k, _ in out.items()] == KEYS
    assert "x_norm_patchtokens" in out and "cls" not in out
    with pytest.raises(KeyError, match="'x_norm_cls' is not a key .* x_norm_clstoken, x_norm_regtokens"):
        out["x_norm_cls"]
