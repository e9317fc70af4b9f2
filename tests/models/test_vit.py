"""The backbone's forward: tokens, masks, intermediate layers, input checks, norms, precision."""

from __future__ import annotations

import pytest
import torch

import dinokit
from dinokit.models import BackboneOutput


@pytest.fixture(params=["dinov2_test", "dinov2_test_reg4", "dinov3_test", "dinov3_test_swiglu"])
def model(request):
    torch.manual_seed(0)
    return dinokit.create_backbone(request.param).eval()


def _size(model):
    return (56, 70) if model.config.generation == "dinov2" else (64, 80)


def test_output_shapes(model):
    x = torch.randn(2, 3, *_size(model))
    out = model.forward_features(x)
    assert isinstance(out, BackboneOutput)
    R, D = model.num_registers, model.embed_dim
    assert out.grid == (4, 5)
    assert out.cls.shape == (2, D) and out.registers.shape == (2, R, D)
    assert out.patches.shape == (2, 20, D) and out.prenorm.shape == (2, 1 + R + 20, D)
    assert out.patch_map().shape == (2, D, 4, 5)
    assert torch.equal(model(x), out.cls)
    assert torch.allclose(model.norm(out.prenorm)[:, 0], out.cls)


def test_masks_replace_patches_by_the_mask_token(model):
    x = torch.randn(2, 3, *_size(model))
    masks = torch.zeros(2, 20, dtype=torch.bool)
    masks[0, :7] = True
    with torch.no_grad():
        model.mask_token.normal_()
        tokens, _ = model.prepare_tokens(x, masks)
        plain, _ = model.prepare_tokens(x)
    start = 1 + model.num_registers
    masked = tokens[0, start : start + 7]
    if model.pos_embed is None:
        assert torch.equal(masked, model.mask_token.expand(7, -1))
    else:  # the position embedding is added to mask tokens too, as released
        pos = plain[0, start : start + 7] - model.patch_embed(x)[0][0, :7]  # [7, D]
        assert torch.allclose(masked, model.mask_token + pos, atol=1e-6)
    assert torch.equal(tokens[1], plain[1])
    assert not torch.equal(model.forward_features(x, masks).cls[0], model.forward_features(x).cls[0])


def test_get_intermediate_layers_semantics(model):
    x = torch.randn(2, 3, *_size(model))
    last = model.get_intermediate_layers(x)
    assert len(last) == 1 and torch.allclose(last[0], model.forward_features(x).patches, atol=1e-6)
    both = model.get_intermediate_layers(x, n=2, reshape=True)
    assert [t.shape for t in both] == [(2, model.embed_dim, 4, 5)] * 2
    listed = model.get_intermediate_layers(x, n=[1, 0], return_class_token=True, return_extra_tokens=True)
    assert torch.equal(listed[0][0], model.get_intermediate_layers(x, n=[0])[0])  # depth order, as released
    patches, cls, regs = listed[1]
    assert cls.shape == (2, model.embed_dim) and regs.shape == (2, model.num_registers, model.embed_dim)
    raw = model.get_intermediate_layers(x, n=1, norm=False, return_class_token=True)[0]
    assert torch.allclose(raw[1], model.forward_features(x).prenorm[:, 0])
    with pytest.raises(ValueError):
        model.get_intermediate_layers(x, n=[0, 0])
    with pytest.raises(ValueError):
        model.get_intermediate_layers(x, n=[5])


def test_dinov2_rejects_sides_that_are_not_patch_multiples():
    model = dinokit.create_backbone("dinov2_test")
    with pytest.raises(ValueError, match="multiples of 14"):
        model(torch.randn(1, 3, 57, 70))


def test_dinov3_accepts_any_size():
    model = dinokit.create_backbone("dinov3_test").eval()
    out = model.forward_features(torch.randn(1, 3, 70, 45))
    assert out.grid == (4, 2)


def test_untied_and_local_cls_norms():
    torch.manual_seed(0)
    model = dinokit.create_backbone("dinov3_test", cls_norm=True, local_cls_norm=True)
    with torch.no_grad():
        for norm in (model.cls_norm, model.local_cls_norm):
            norm.weight.normal_()
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    out = model.forward_features(x, local_crops=True)  # eval: the local norm is never used
    assert torch.allclose(out.cls, model.cls_norm(out.prenorm[:, :5])[:, 0])
    assert torch.allclose(out.patches, model.norm(out.prenorm[:, 5:]))
    model.train()
    torch.manual_seed(1)
    local = model.forward_features(x, local_crops=True)
    assert torch.allclose(local.cls, model.local_cls_norm(local.prenorm[:, :5])[:, 0])


def test_bf16_forward_close_to_fp32_and_rope_periods_stay_fp32():
    torch.manual_seed(0)
    model = dinokit.create_backbone("dinov3_test").eval()
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    periods = model.rope_embed.periods.clone()
    model = model.to(torch.bfloat16)
    assert model.rope_embed.periods.dtype == torch.float32 and torch.equal(model.rope_embed.periods, periods)
    out = model(x.bfloat16())
    assert out.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(out.float(), ref).min()
    assert cos > 0.99


def test_training_mode_drop_path_and_rope_augmentation_change_outputs():
    torch.manual_seed(0)
    model = dinokit.create_backbone("dinov3_test", drop_path_rate=0.3)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    a, b = model(x), model(x)
    assert torch.equal(a, b)
    model.train()
    assert not torch.allclose(model(x), a)


def test_every_parameter_gets_a_gradient():
    model = dinokit.create_backbone("dinov3_test", local_cls_norm=False).train()
    out = model.forward_features(torch.randn(2, 3, 32, 32))
    (out.cls.sum() + out.patches.sum() + out.registers.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_presets_reproduce_released_parameter_counts():
    counts = {"dinov3_vits16": 21.6, "dinov3_vits16plus": 28.7, "dinov3_vitb16": 85.7, "dinov3_vitl16": 303.2,
              "dinov3_vith16plus": 840.6, "dinov3_vit7b16": 6716.0}
    for name, millions in counts.items():
        with torch.device("meta"):
            model = dinokit.create_backbone(name)
        assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions, name


def test_unknown_preset_and_override_are_clear_errors():
    with pytest.raises(ValueError, match="unknown backbone preset"):
        dinokit.create_backbone("dinov9")
    with pytest.raises(ValueError, match="unknown backbone option"):
        dinokit.create_backbone("dinov3_test", detph=2)


def test_resized_position_embedding_cache_follows_weight_changes():
    torch.manual_seed(0)
    model = dinokit.create_backbone("dinov2_test").eval()
    x = torch.randn(1, 3, 56, 70)
    with torch.no_grad():
        first = model(x)
        assert model._pos_cache is not None
        model.pos_embed.mul_(2.0)  # in-place change: the cache must not serve stale values
        changed = model(x)
    assert not torch.allclose(first, changed)
    assert torch.allclose(changed, model(x), atol=1e-6)  # with autograd on: no cache, same numbers
