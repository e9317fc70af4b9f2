"""The functional losses and targets: parity with the released modules (golden numbers), hand-computed cases
and defining properties.

`tests/golden/ssl_losses.pt` holds small random inputs and the outputs of the released DINOv2 / DINOv3 loss
modules on them (`DINOLoss` with centering and Sinkhorn-Knopp, the DINOv3 `[S, B, K]` DINO loss with and
without the diagonal, `iBOTPatchLoss.forward_masked` and its centring, `KoLeoLoss`), computed once outside this
repository from a transcription of those modules; dinokit's code is not involved in producing them."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dinokit.ssl import SoftmaxCentering, dino_loss, ibot_loss, koleo_loss, sinkhorn_knopp

GOLDEN = torch.load(Path(__file__).parents[1] / "golden" / "ssl_losses.pt", weights_only=True)
TOL = dict(rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------- parity with the released code
def test_sinkhorn_matches_released():
    g = GOLDEN
    torch.testing.assert_close(sinkhorn_knopp(g["sk_logits"], g["sk_temp"]), g["sk_probs"], **TOL)
    torch.testing.assert_close(sinkhorn_knopp(g["sk_ibot_logits"], 0.07), g["sk_ibot_probs"], **TOL)


def test_centering_matches_released_over_three_steps():
    K = GOLDEN["center_logits"].shape[-1]
    centering = SoftmaxCentering(K, momentum=0.9)
    for logits, expected, expected_ibot in zip(
        GOLDEN["center_logits"], GOLDEN["center_probs"], GOLDEN["ibot_center_probs"]
    ):
        probs = centering(logits, 0.04)  # targets, then the centre update
        torch.testing.assert_close(probs, expected, **TOL)
        torch.testing.assert_close(probs, expected_ibot, **TOL)  # one process: the iBOT centre is the same mean


def test_dino_loss_matches_released_v2_and_v3_forms():
    g = GOLDEN
    G, L = 2, 4
    B, K = g["dino_s_global"].shape[0] // G, g["dino_s_global"].shape[1]
    s_local, s_global = g["dino_s_local"].view(L, B, K), g["dino_s_global"].view(G, B, K)
    t = g["dino_t_probs"].view(G, B, K)
    local, glob = dino_loss(s_local, t), dino_loss(s_global, t, ignore_diagonal=True)
    n_terms = G * (G - 1) + G * L
    # DINOv2 reports the parts already weighted by their pair counts over all 18 (here 10) pairs
    torch.testing.assert_close(local * (G * L) / n_terms, g["dino_v2_local"], **TOL)
    torch.testing.assert_close(glob * (G * (G - 1)) / n_terms, g["dino_v2_global"], **TOL)
    torch.testing.assert_close(local, g["dino_v3_local"], **TOL)
    torch.testing.assert_close(glob, g["dino_v3_global_diag"], **TOL)
    torch.testing.assert_close(dino_loss(s_global, t), g["dino_v3_global_full"], **TOL)


def test_ibot_loss_matches_released():
    g = GOLDEN
    n_global = g["ibot_masks"].shape[0]
    loss = ibot_loss(g["ibot_s"], g["ibot_t"], g["ibot_w"], n_global)
    torch.testing.assert_close(loss, g["ibot_loss"], **TOL)


def test_koleo_matches_released():
    torch.testing.assert_close(koleo_loss(GOLDEN["koleo_x"]), GOLDEN["koleo"], **TOL)


# ------------------------------------------------------------------------------------------ hand-computed cases
def test_dino_loss_hand_computed():
    s = torch.zeros(1, 1, 2)  # uniform student → log p = −ln 2 for both prototypes
    t = torch.tensor([[[1.0, 0.0]]])
    assert dino_loss(s, t).item() == pytest.approx(math.log(2), abs=1e-6)
    # two crops; the student is certain of prototype 0 for crop 0 and of prototype 1 for crop 1
    s = torch.tensor([[[100.0, 0.0]], [[0.0, 100.0]]])  # [S=2, B=1, K=2]; τ = 0.1 → log p ≈ 0 or −1000
    t = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # crop i's target matches student crop i
    assert dino_loss(s, t, student_temp=0.1).item() == pytest.approx(500.0, rel=1e-4)  # 2 of 4 pairs cost 1000
    assert dino_loss(s, t, student_temp=0.1, ignore_diagonal=True).item() == pytest.approx(1000.0, rel=1e-4)


def test_ibot_loss_weights_each_crop_by_its_masked_count():
    # crop 0 has two masked patches with costs ln 2 and 0, crop 1 one patch with cost ln 2, crop 2 none
    s = torch.tensor([[0.0, 0.0], [1000.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([0.5, 0.5, 1.0])
    loss = ibot_loss(s, t, w, n_global_crops=3, student_temp=1.0)
    assert loss.item() == pytest.approx((math.log(2) / 2 + math.log(2)) / 3, abs=1e-6)


def test_koleo_on_known_points():
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert koleo_loss(square).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)
    assert koleo_loss(7.0 * square).item() == pytest.approx(koleo_loss(square).item(), abs=1e-6)  # normalised
    pair_close = torch.tensor([[1.0, 0.0], [math.cos(0.01), math.sin(0.01)], [-1.0, 0.0]])
    d_close, d_far = 2 * math.sin(0.005), 2 * math.sin((math.pi - 0.01) / 2)
    expected = -(2 * math.log(d_close) + math.log(d_far)) / 3
    assert koleo_loss(pair_close).item() == pytest.approx(expected, rel=1e-4)


# --------------------------------------------------------------------------------------------- properties
def test_sinkhorn_marginals():
    logits = torch.randn(24, 16, generator=torch.Generator().manual_seed(0))
    probs = sinkhorn_knopp(logits, temp=0.5, n_iterations=200)
    torch.testing.assert_close(probs.sum(1), torch.ones(24))
    torch.testing.assert_close(probs.sum(0), torch.full((16,), 24 / 16), rtol=1e-4, atol=1e-4)
    three = sinkhorn_knopp(logits, temp=1.0)  # the recipe's 3 iterations: rows exact, columns near uniform
    torch.testing.assert_close(three.sum(1), torch.ones(24))
    assert (three.sum(0) - 1.5).abs().max() < 0.05 < (F.softmax(logits, -1).sum(0) - 1.5).abs().max()


def test_sinkhorn_is_shift_invariant_where_the_released_code_overflows():
    logits = torch.randn(8, 32)
    shifted = sinkhorn_knopp(logits + 100.0, temp=0.04)  # exp(2500) overflows float32 without the max shift
    # (x + 100) / 0.04 keeps only ~2e-4 absolute precision in float32, hence the looser tolerance
    torch.testing.assert_close(shifted, sinkhorn_knopp(logits, temp=0.04), rtol=0, atol=1e-4)


def test_centering_is_one_step_late_with_a_zero_first_centre():
    x1, x2 = torch.randn(6, 10), torch.randn(6, 10)
    c = SoftmaxCentering(10, momentum=0.9)
    torch.testing.assert_close(c.probs(x1, 0.05), F.softmax(x1 / 0.05, dim=-1))  # zero centre first
    c.update(x1)
    torch.testing.assert_close(c.center, 0.1 * x1.mean(0, keepdim=True))
    torch.testing.assert_close(c.probs(x2, 0.05), F.softmax((x2 - 0.1 * x1.mean(0)) / 0.05, dim=-1))
    c.update(x2)
    torch.testing.assert_close(c.center, 0.9 * 0.1 * x1.mean(0, keepdim=True) + 0.1 * x2.mean(0, keepdim=True))


def test_losses_are_differentiable_only_through_the_student():
    s = torch.randn(3, 4, 8, requires_grad=True)
    t = F.softmax(torch.randn(2, 4, 8), -1)
    dino_loss(s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    f = torch.randn(5, 6, requires_grad=True)
    koleo_loss(f).backward()
    assert f.grad.abs().sum() > 0


def test_ibot_fused_cross_entropy_has_the_plain_formula_gradient():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 40, dtype=torch.float64, generator=g, requires_grad=True)
    t = F.softmax(torch.randn(6, 40, dtype=torch.float64, generator=g) / 0.3, -1)
    w = torch.rand(6, dtype=torch.float64, generator=g)
    fused = ibot_loss(s, t, w, n_global_crops=4)
    (grad_fused,) = torch.autograd.grad(fused, s)
    plain = -((t * F.log_softmax(s / 0.1, -1)).sum(-1) * w).sum() / 4
    (grad_plain,) = torch.autograd.grad(plain, s)
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(grad_fused, grad_plain)


def test_centre_ignores_empty_and_non_finite_batches():
    c = SoftmaxCentering(4)
    c.update(torch.ones(3, 4))
    before = c.center.clone()
    c.update(torch.full((2, 4), float("nan")))
    c.update(torch.zeros(0, 4))
    assert torch.equal(c.center, before)
