"""`gram_loss` (DINOv3 Gram anchoring): parity with the released `GramLoss`, hand-computed cases, and the
released behaviours it reproduces.

`tests/golden/gram_loss.pt` holds small random patch features (`[3, 10, 16]`, with some strongly negative
similarities, and a `[17, 16]` subset of them) together with the loss and the gradient w.r.t. the student that
the released DINOv3 `GramLoss` module gives for every combination of its options, constructed and called as the
released training code does. It was computed once outside this repository from the released module; dinokit's
code is not involved in producing it."""

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dinokit.ssl.losses.gram import gram_loss

GOLDEN = torch.load(Path(__file__).parents[1] / "golden" / "gram_loss.pt", weights_only=True)
TOL = dict(rtol=1e-5, atol=1e-6)
REMOVE = {"none": (False, False), "neg": (True, False), "teachneg": (False, True)}
COMBOS = list(itertools.product([True, False], [True, False], REMOVE))


def _options(normalized: bool, img_level: bool, remove: str) -> dict:
    remove_neg, remove_only_teacher_neg = REMOVE[remove]
    return dict(
        normalized=normalized,
        img_level=img_level,
        remove_neg=remove_neg,
        remove_only_teacher_neg=remove_only_teacher_neg,
    )


def _loss_and_grad(student: torch.Tensor, teacher: torch.Tensor, **options) -> tuple[torch.Tensor, torch.Tensor]:
    student = student.clone().requires_grad_(True)
    loss = gram_loss(student, teacher.clone(), **options)
    loss.backward()
    return loss.detach(), student.grad


def _grams(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    return s @ s.transpose(-1, -2), t @ t.transpose(-1, -2)  # [B, N, N] each


# ------------------------------------------------------------------------------- parity with the released code
@pytest.mark.parametrize(("normalized", "img_level", "remove"), COMBOS)
def test_matches_released_loss_and_gradient(normalized, img_level, remove):
    key = f"n{int(normalized)}_i{int(img_level)}_{remove}"
    loss, grad = _loss_and_grad(GOLDEN["student"], GOLDEN["teacher"], **_options(normalized, img_level, remove))
    torch.testing.assert_close(loss, GOLDEN[f"loss_{key}"], **TOL)
    torch.testing.assert_close(grad, GOLDEN[f"grad_{key}"], **TOL)


@pytest.mark.parametrize(("normalized", "remove"), list(itertools.product([True, False], REMOVE)))
def test_matches_released_on_flat_patches(normalized, remove):
    key = f"n{int(normalized)}_i0_{remove}"
    loss, grad = _loss_and_grad(GOLDEN["student2d"], GOLDEN["teacher2d"], **_options(normalized, False, remove))
    torch.testing.assert_close(loss, GOLDEN[f"loss2d_{key}"], **TOL)
    torch.testing.assert_close(grad, GOLDEN[f"grad2d_{key}"], **TOL)


def test_golden_inputs_exercise_the_remove_branches():
    s_sim, t_sim = _grams(GOLDEN["student"], GOLDEN["teacher"])
    assert ((s_sim < -0.3) & (t_sim < -0.3)).any() and ((s_sim < 0) & (t_sim > 0)).any()
    losses = {r: GOLDEN[f"loss_n1_i1_{r}"].item() for r in REMOVE}
    assert len({round(v, 6) for v in losses.values()}) == 3


# ------------------------------------------------------------------------------------------ hand-computed cases
def test_hand_computed_default_options():
    # student rows are orthogonal (Gram = I whatever their norms); teacher rows at 45° (off-diagonal 1/√2)
    student = torch.tensor([[[3.0, 0.0], [0.0, 2.0]]], requires_grad=True)  # [1, 2, 2]
    teacher = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    loss = gram_loss(student, teacher)
    # two of the four entries differ by 1/√2: (2 · 1/2) / 4
    assert loss.item() == pytest.approx(0.25, abs=1e-7)
    loss.backward()
    # with E = Ĝ_s − Ĝ_t (symmetric, zero diagonal here) and 4 entries: dL/dx̂_i = Σ_j E_ij x̂_j, and the
    # normalisation projects it off x̂_i and divides by |x_i|; x̂_j ⊥ x̂_i, so grad_i = E_ij x̂_j / |x_i|, E_01 = −1/√2
    expected = torch.tensor([[[0.0, -1 / (3 * math.sqrt(2))], [-1 / (2 * math.sqrt(2)), 0.0]]])
    torch.testing.assert_close(student.grad, expected, **TOL)


def test_hand_computed_without_normalisation():
    student = torch.tensor([[[3.0, 0.0], [0.0, 2.0]]], requires_grad=True)  # Gram [[9, 0], [0, 4]]
    teacher = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # Gram [[1, 1], [1, 2]]
    loss = gram_loss(student, teacher, normalized=False)
    assert loss.item() == pytest.approx((64 + 1 + 1 + 4) / 4)  # E = [[8, −1], [−1, 2]]
    loss.backward()
    # d mean(E²)/dX = (4 / 4) E X for a symmetric E = X Xᵀ − T
    torch.testing.assert_close(student.grad, torch.tensor([[[24.0, -2.0], [-3.0, 4.0]]]), **TOL)


# ------------------------------------------------------------------------------------------ defining properties
@pytest.mark.parametrize(("normalized", "img_level", "remove"), [c for c in COMBOS if c[2] != "teachneg"])
def test_identical_student_and_teacher_give_zero(normalized, img_level, remove):
    x = GOLDEN["student"]
    assert gram_loss(x, x.clone(), **_options(normalized, img_level, remove)).item() == 0.0


def test_teacher_gets_no_gradient():
    student = GOLDEN["student"].clone().requires_grad_(True)
    teacher = GOLDEN["teacher"].clone().requires_grad_(True)
    for img_level in (True, False):
        gram_loss(student, teacher, img_level=img_level).backward()
        assert teacher.grad is None
        assert student.grad is not None and student.grad.abs().sum() > 0


def test_batch_level_compares_patches_across_images():
    s, t = GOLDEN["student"], GOLDEN["teacher"]
    s_flat, t_flat = F.normalize(s.flatten(0, 1), dim=-1), F.normalize(t.flatten(0, 1), dim=-1)  # [30, 16]
    expected = ((s_flat @ s_flat.T - t_flat @ t_flat.T) ** 2).mean()  # over all 30² entries
    torch.testing.assert_close(gram_loss(s, t, img_level=False), expected, **TOL)
    # [B, N, D] and [B·N, D] are the same thing at batch level, even mixed
    torch.testing.assert_close(gram_loss(s, t.flatten(0, 1), img_level=False), expected, **TOL)


def test_computed_in_float32():
    s, t = GOLDEN["student"], GOLDEN["teacher"]
    loss64 = gram_loss(s.double(), t.double())
    assert loss64.dtype == torch.float32
    torch.testing.assert_close(loss64, gram_loss(s, t), rtol=0, atol=0)
    assert gram_loss(s.bfloat16(), t.bfloat16()).dtype == torch.float32


def test_remove_only_teacher_neg_keeps_the_student_negatives():
    s, t = GOLDEN["student"], GOLDEN["teacher"]
    s_sim, t_sim = _grams(s, t)
    # released quirk: only the teacher is clamped at 0; the student's negatives stay, even where both are negative
    expected = F.mse_loss(s_sim, t_sim.clamp_min(0))
    intended = F.mse_loss(s_sim.masked_fill((s_sim < 0) & (t_sim < 0), 0.0), t_sim.clamp_min(0))
    loss = gram_loss(s, t, remove_only_teacher_neg=True)
    torch.testing.assert_close(loss, expected, **TOL)
    assert abs(loss.item() - intended.item()) > 1e-3
    # hence identical features with negative similarities do not give 0
    assert gram_loss(s, s.clone(), remove_only_teacher_neg=True).item() > 0


def test_remove_neg_clamps_both_sides():
    s, t = GOLDEN["student"], GOLDEN["teacher"]
    s_sim, t_sim = _grams(s, t)
    expected = F.mse_loss(s_sim.clamp_min(0), t_sim.clamp_min(0))
    torch.testing.assert_close(gram_loss(s, t, remove_neg=True), expected, **TOL)


# ----------------------------------------------------------------------------------------------------- errors
def test_both_remove_flags_are_rejected():
    x = GOLDEN["student"]
    with pytest.raises(ValueError, match="exclusive"):
        gram_loss(x, x, remove_neg=True, remove_only_teacher_neg=True)


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "img_level"),
    [
        ((2, 5, 8), (2, 6, 8), True),  # patch counts differ
        ((2, 5, 8), (3, 5, 8), True),  # batch sizes differ (the released module would broadcast 1 vs B)
        ((1, 5, 8), (2, 5, 8), True),
        ((10, 8), (9, 8), False),
        ((2, 5, 8), (9, 8), False),
    ],
)
def test_shape_mismatch_is_rejected(student_shape, teacher_shape, img_level):
    with pytest.raises(ValueError, match="same patches"):
        gram_loss(torch.randn(student_shape), torch.randn(teacher_shape), img_level=img_level)


@pytest.mark.parametrize(("shape", "img_level"), [((10, 8), True), ((8,), False), ((2, 2, 5, 8), False)])
def test_wrong_rank_is_rejected(shape, img_level):
    with pytest.raises(ValueError, match="must be"):
        gram_loss(torch.randn(shape), torch.randn(shape), img_level=img_level)


def test_feature_dimensions_may_differ():
    # only the Gram matrices are compared, as in the released module
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 3)
    s_sim, t_sim = _grams(s, t)
    torch.testing.assert_close(gram_loss(s, t), F.mse_loss(s_sim, t_sim), **TOL)
