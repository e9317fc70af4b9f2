"""Feature-distillation terms: zero at agreement, the documented formulas, gradients to the student only."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dinokit.ssl.losses import TERMS
from dinokit.ssl.losses.features import FeatureLossConfig


def outputs(student_patches, teacher_patches, student_cls, teacher_cls):
    student = SimpleNamespace(projected_cls=student_cls, projected_patches=student_patches,
                              global_patches=student_patches)  # fmt: skip
    return student, SimpleNamespace(cls=teacher_cls, patches=teacher_patches)


@pytest.mark.parametrize("distance", ["cosine", "smooth_l1"])
def test_zero_when_the_student_matches_the_teacher(distance):
    cfg = FeatureLossConfig(distance=distance)
    t_cls, t_patches = torch.randn(2, 3, 8), torch.randn(6, 4, 8)
    s, t = outputs(t_patches.clone(), t_patches, t_cls.clone(), t_cls)
    for name in ("feature_cls", "feature_patches", "feature_relations"):
        value, _ = TERMS[name].build(cfg, None)(s, t, None, {})
        assert abs(float(value)) < 1e-6, name


def test_the_formulas():
    s_cls, t_cls = torch.randn(2, 3, 8, requires_grad=True), torch.randn(2, 3, 8)
    s_p, t_p = torch.randn(6, 4, 8, requires_grad=True), torch.randn(6, 4, 5)  # relations compare other widths
    s, t = outputs(s_p, t_p, s_cls, t_cls)
    cls_value, _ = TERMS["feature_cls"].build(FeatureLossConfig(), None)(s, t, None, {})
    assert torch.allclose(cls_value, (1 - F.cosine_similarity(s_cls, t_cls, dim=-1)).mean())
    rel, _ = TERMS["feature_relations"].build(FeatureLossConfig(), None)(s, t, None, {})
    gs, gt = F.normalize(s_p, dim=-1), F.normalize(t_p, dim=-1)
    assert torch.allclose(rel, ((gs @ gs.transpose(1, 2) - gt @ gt.transpose(1, 2)) ** 2).mean())
    (cls_value + rel).backward()
    assert s_cls.grad.abs().sum() > 0 and s_p.grad.abs().sum() > 0


def test_feature_terms_belong_to_feature_distillation_and_read_the_projection():
    assert {n for n, k in TERMS.items() if k.teacher == "features"} == {"feature_cls", "feature_patches",
                                                                         "feature_relations"}  # fmt: skip
    assert all("projection" in TERMS[n].heads for n in ("feature_cls", "feature_patches"))
    assert {n for n, k in TERMS.items() if k.teacher == "heads"} == {"dino", "ibot"}
