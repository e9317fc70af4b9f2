"""The CPU inference fast path (oneDNN fused linear + GELU) equals the plain path."""

from __future__ import annotations

import pytest
import torch

import dinokit
from dinokit.models.layers import fused


@pytest.mark.skipif(not fused._fast_ok, reason="this torch build has no oneDNN fused linear")
@pytest.mark.parametrize("name", ["dinov2_test", "dinov2_test_swiglu", "dinov3_test", "dinov3_test_swiglu"])
def test_fast_path_equals_plain_path(name, monkeypatch):
    torch.manual_seed(0)
    model = dinokit.create_backbone(name).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("gamma"):
                p.fill_(0.5)
    x = torch.randn(2, 3, 56, 56)
    with torch.inference_mode():
        fast = model.forward_features(x)
        monkeypatch.setattr(fused, "_fast_ok", False)
        plain = model.forward_features(x)
    assert (fast.prenorm - plain.prenorm).abs().max() < 1e-4
    assert torch.allclose(fast.patches, plain.patches, atol=1e-4)


def test_fast_path_is_not_used_with_autograd():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    fused.apply_linear(layer, x, gelu=True).sum().backward()  # the fused op has no backward: must not be taken
    assert x.grad is not None


def test_hooked_layers_keep_their_hooks():
    layer = torch.nn.Linear(8, 4)
    seen = []
    layer.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    with torch.inference_mode():
        fused.apply_linear(layer, torch.randn(3, 8))
    assert seen == [torch.Size([3, 4])]


def test_rope_inference_path_equals_the_autograd_path():
    from dinokit.models.layers.rope import RopeEmbedding, apply_rope

    sin, cos = RopeEmbedding(head_dim=16, base=100.0)(3, 4)  # [12, 16]
    x = torch.randn(2, 3, 5 + 12, 16)  # 5 prefix tokens, then the 3×4 patches
    with torch.no_grad():
        fast = apply_rope(x, sin, cos)
    plain = apply_rope(x.requires_grad_(), sin, cos)
    assert torch.allclose(fast, plain, atol=1e-6) and torch.equal(fast[:, :, :5], x[:, :, :5].detach())
