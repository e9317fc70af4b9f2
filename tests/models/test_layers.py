"""Position embeddings (learned resizing rules, RoPE) and the block's stochastic depth."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinokit.models.layers import Block, RopeEmbedding, apply_rope, interpolate_pos_embed


def _pos(side=37, dim=8, seed=0):
    return torch.randn(1, 1 + side * side, dim, generator=torch.Generator().manual_seed(seed))


def test_native_grid_is_returned_unchanged():
    pos = _pos()
    assert interpolate_pos_embed(pos, (37, 37), "legacy") is pos
    assert interpolate_pos_embed(pos, (37, 37), "antialias") is pos


def test_legacy_rule_uses_offset_scale_factor_without_antialias():
    pos = _pos()
    out = interpolate_pos_embed(pos, (16, 13), "legacy")
    grid = pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(16.1 / 37, 13.1 / 37), mode="bicubic", align_corners=False)
    assert out.shape == (1, 1 + 16 * 13, 8)
    assert torch.equal(out[:, 0], pos[:, 0])
    assert torch.allclose(out[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, -1, 8), atol=1e-6)
    # and it is a different resampling from size= (what HF's Dinov2Model does)
    by_size = F.interpolate(grid, size=(16, 13), mode="bicubic", align_corners=False)
    assert (out[:, 1:] - by_size.permute(0, 2, 3, 1).reshape(1, -1, 8)).abs().max() > 1e-3


def test_antialias_rule_uses_size_with_antialias():
    pos = _pos()
    out = interpolate_pos_embed(pos, (9, 20), "antialias")
    grid = pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(9, 20), mode="bicubic", antialias=True, align_corners=False)
    assert torch.allclose(out[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, -1, 8), atol=1e-6)


def test_pos_embed_in_bf16_is_resized_in_float32():
    pos = _pos().bfloat16()
    out = interpolate_pos_embed(pos, (16, 16), "legacy")
    assert out.dtype == torch.bfloat16
    ref = interpolate_pos_embed(pos.float(), (16, 16), "legacy")
    assert torch.allclose(out.float(), ref, atol=2e-2)


def test_rope_periods_and_coordinates_follow_the_released_formula():
    rope = RopeEmbedding(head_dim=16, base=100.0).eval()
    k = torch.arange(4, dtype=torch.float32)
    assert torch.allclose(rope.periods, 100.0 ** (2 * k / 8))
    sin, cos = rope(2, 3)
    assert sin.shape == cos.shape == (6, 16)
    # patch (i=1, j=2) of a 2×3 grid: centre (1.5/2, 2.5/3) → [-1, 1]
    y, x = 2 * 1.5 / 2 - 1, 2 * 2.5 / 3 - 1
    angles = torch.cat([2 * math.pi * y / rope.periods, 2 * math.pi * x / rope.periods])
    assert torch.allclose(sin[5], torch.sin(angles).tile(2), atol=1e-6)
    assert torch.allclose(cos[5], torch.cos(angles).tile(2), atol=1e-6)


def test_rope_rotation_pairs_dimension_j_with_j_plus_half_and_skips_prefix():
    d = 8
    sin = torch.zeros(1, d)
    cos = torch.zeros(1, d)
    sin[0, 0], sin[0, 4] = 1.0, 1.0  # a 90° rotation of the (0, 4) pair, the rest zeroed
    x = torch.arange(2 * d, dtype=torch.float32).reshape(1, 1, 2, d)  # token 0: prefix, token 1: patch
    out = apply_rope(x, sin, cos)
    assert torch.equal(out[0, 0, 0], x[0, 0, 0])
    expected = torch.zeros(d)
    expected[0], expected[4] = -x[0, 0, 1, 4], x[0, 0, 1, 0]  # rotate_half([a, b]) = [-b, a]
    assert torch.equal(out[0, 0, 1], expected)


def test_rope_augmentations_only_in_training():
    rope = RopeEmbedding(head_dim=16, base=100.0, shift=0.5, jitter=1.5, rescale=2.0)
    eval_a, eval_b = rope.eval()(4, 4), rope(4, 4)
    assert torch.equal(eval_a[0], eval_b[0]) and not rope.augments
    rope.train()
    assert rope.augments
    torch.manual_seed(0)
    a = rope(4, 4)[0]
    b = rope(4, 4)[0]
    assert not torch.equal(a, b) and not torch.equal(a, eval_a[0])


def test_rope_min_max_period_parametrisation():
    rope = RopeEmbedding(head_dim=16, base=None, min_period=0.5, max_period=50.0)
    assert torch.allclose(rope.periods[[0, -1]], torch.tensor([0.5, 50.0]))
    with pytest.raises(ValueError):
        RopeEmbedding(head_dim=16, base=100.0, min_period=1.0, max_period=2.0)


def test_batch_subset_drop_path():
    torch.manual_seed(0)
    block = Block(32, 4, ffn_hidden=64, layerscale_init=1.0, drop_path=0.5)
    x = torch.randn(8, 5, 32)
    with torch.no_grad():
        block.eval()
        full = block(x)
        block.train()
        out = block(x)
    # each branch touched exactly int(8·0.5) = 4 samples; a sample skipped by both branches is unchanged
    changed = (out - x).abs().amax(dim=(1, 2)) > 0
    assert 4 <= int(changed.sum()) <= 8
    assert not torch.allclose(out, full)
    assert torch.equal(out[~changed], x[~changed])
