"""The pieces of a training step: gradients, EMA teacher, schedules, parameter groups, heads, loss terms."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinokit.data.stream import SSLStream
from dinokit.models.heads import DINOHead
from dinokit.ssl import dino_loss
from dinokit.ssl.schedules import Curve
from dinokit.train.build import build
from dinokit.train.distributed import DistInfo
from dinokit.train.optim import param_groups


def parts_and_batch(cfg):
    parts = build(cfg, DistInfo())
    batch = SSLStream(**parts.stream_args).batch(0)
    assert batch.mask_indices.numel() > 0 or cfg.losses.ibot is None
    parts.meta.train()
    return parts, batch


def test_gradients_reach_every_student_parameter_and_no_teacher_parameter(tiny_cfg):
    parts, batch = parts_and_batch(tiny_cfg())
    values = parts.meta.schedules(5)
    loss, metrics = parts.meta(batch, values)
    loss.backward()
    assert {"dino", "dino_local", "dino_global", "ibot", "koleo", "koleo_per_crop", "loss"} <= set(metrics)
    # each term's value and its weighted value, under distinct names; the loss is the sum of the weighted ones
    torch.testing.assert_close(metrics["koleo_weighted"], values["weight/koleo"] * metrics["koleo"])
    torch.testing.assert_close(metrics["koleo"], 2 * metrics["koleo_per_crop"])  # summed over the 2 global crops
    torch.testing.assert_close(metrics["loss"], sum(metrics[f"{t}_weighted"] for t in ("dino", "ibot", "koleo")))
    missing = [n for n, p in parts.meta.student.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"
    teacher = list(parts.meta.teacher.parameters())
    assert teacher and all(p.grad is None and not p.requires_grad for p in teacher)
    assert not parts.meta.teacher.training and not any(m.training for m in parts.meta.teacher.modules())


def test_ema_with_momentum_one_keeps_the_teacher_and_zero_copies_the_student(tiny_cfg):
    parts, batch = parts_and_batch(tiny_cfg())
    student, teacher = parts.meta.student, parts.meta.teacher
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))  # student and teacher now differ everywhere
    before = [p.clone() for p in teacher.model.parameters()]
    teacher.update(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.model.parameters()))
    teacher.update(0.0)
    assert all(torch.equal(s, t) for s, t in zip(student.parameters(), teacher.model.parameters()))
    teacher.update(0.25)  # and in between: t = 0.25·t + 0.75·s, here with t == s
    assert all(torch.equal(s, t) for s, t in zip(student.parameters(), teacher.model.parameters()))


def released_cosine(base, final, total, warmup=0, start_warmup=0.0):
    """The released CosineScheduler's array, transcribed from its definition."""
    warm = np.linspace(start_warmup, base, warmup)
    iters = np.arange(total - warmup)
    return np.concatenate([warm, final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))])


def test_curves_equal_the_released_cosine_schedule():
    lr = Curve(peak=0.002, end=1e-6, warmup_steps=10, total=100)
    np.testing.assert_allclose([lr(s) for s in range(100)], released_cosine(0.002, 1e-6, 100, 10), rtol=1e-12)
    assert lr(100) == lr(5000) == 1e-6
    frozen = Curve(peak=0.002, end=1e-6, warmup_steps=10, total=100, zero_steps=12)
    assert [frozen(s) for s in (0, 11)] == [0.0, 0.0] and frozen(12) == lr(12)  # overlaid, not shifted
    temp = Curve(peak=0.07, start=0.04, warmup_steps=30, total=100, shape="constant")
    np.testing.assert_allclose([temp(s) for s in range(30)], np.linspace(0.04, 0.07, 30), rtol=1e-12)
    assert temp(30) == temp(99) == 0.07


def test_parameter_groups_follow_the_released_rules(tiny_cfg):
    parts, _ = parts_and_batch(tiny_cfg("optim.layerwise_decay=0.5"))
    s = parts.meta.student
    L = len(s.backbone.blocks)
    groups = param_groups(s.backbone, {"dino_head": s.dino_head}, layerwise_decay=0.5)

    def group_of(p):
        return next(g for g in groups if any(q is p for q in g["params"]))

    bb = s.backbone
    assert group_of(bb.patch_embed.proj.weight)["lr_multiplier"] == pytest.approx(0.2 * 0.5 ** (L + 1))
    assert group_of(bb.cls_token)["lr_multiplier"] == pytest.approx(0.5 ** (L + 1))
    assert group_of(bb.register_tokens)["lr_multiplier"] == pytest.approx(0.5 ** (L + 1))  # DINOv3: layer 0
    assert group_of(bb.blocks[0].attn.qkv.weight)["lr_multiplier"] == pytest.approx(0.5**L)
    assert group_of(bb.blocks[L - 1].mlp.fc1.weight)["lr_multiplier"] == pytest.approx(0.5)
    assert group_of(bb.norm.weight)["lr_multiplier"] == 1.0 and group_of(bb.norm.weight)["wd_multiplier"] == 0.0
    assert group_of(bb.blocks[0].ls1.gamma)["wd_multiplier"] == 0.0
    assert group_of(bb.blocks[0].attn.qkv.bias)["wd_multiplier"] == 0.0
    assert group_of(bb.blocks[0].attn.qkv.weight)["wd_multiplier"] == 1.0
    head = s.dino_head
    assert group_of(head.last_layer.weight_v)["is_last_layer"] and group_of(head.mlp[0].weight)["lr_multiplier"] == 1
    assert sum(len(g["params"]) for g in groups) == len(list(bb.parameters())) + len(list(head.parameters()))


def test_heads_weight_norm_and_shared_pass():
    head = DINOHead(16, n_prototypes=12, hidden_dim=8, bottleneck_dim=4)
    with torch.no_grad():
        head.last_layer.weight_g.mul_(torch.arange(1.0, 13.0).unsqueeze(1))
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.arange(1.0, 13.0))
    x = torch.randn(5, 16)
    z = F.normalize(head.mlp(x), dim=-1)
    torch.testing.assert_close(head(x), z @ head.last_layer.weight.T)
    assert set(dict(DINOHead(16, 12, 8, 4, last_layer="plain").named_parameters())) >= {"last_layer.weight"}


def test_dino_term_is_the_mean_over_all_crop_pairs(tiny_cfg):
    parts, batch = parts_and_batch(tiny_cfg("losses={dino: {}}", "teacher.target=sinkhorn_knopp"))
    meta = parts.meta
    with torch.no_grad():
        t_out, s_out = meta.teacher(batch), meta.student(batch)
        value, metrics = meta.terms["dino"](s_out, t_out, batch, meta.schedules(0))
        probs = meta.terms["dino"].target(t_out.cls_logits.flatten(0, 1), meta.schedules(0)["teacher_temp"])
        probs = probs.unflatten(0, t_out.cls_logits.shape[:2])
        student = torch.cat([s_out.global_cls_logits, s_out.local_cls_logits])  # [G + L, B, K]
        G, S = probs.shape[0], student.shape[0]
        pairs = [dino_loss(student[i : i + 1], probs[j : j + 1]) for i in range(S) for j in range(G) if i != j]
    torch.testing.assert_close(value, torch.stack(pairs).mean(), rtol=1e-5, atol=1e-6)
    assert math.isfinite(metrics["target_entropy"])


def test_activation_checkpointing_gives_the_same_gradients(tiny_cfg):
    grads = []
    for flag in ("false", "true"):
        parts, batch = parts_and_batch(tiny_cfg(f"train.activation_checkpointing={flag}"))  # drop path 0.1 on
        torch.manual_seed(3)
        loss, _ = parts.meta(batch, parts.meta.schedules(5))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in parts.meta.student.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)
