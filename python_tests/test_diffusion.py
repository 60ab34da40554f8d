"""Tests of d2d_ext.diffuse / torch.ops.d2d.diffuse(_backward) on the CPU."""

import math
import re

import pytest
import torch

import d2d_ext
from conftest import (
    EAST,
    NORTH,
    SOUTH,
    WEST,
    assert_close_rel,
    make_generator,
    random_problem,
    symmetric_rates,
    vjp_reference,
)
from d2d_ext.reference import boundary_mask, diffuse_reference, diffuse_step, diffuse_step_padded, diffuse_step_rates

OPS = torch.ops.d2d
TAU = 0.5

# Sizes of the brief, plus ones that take the CPU kernel's row-wavefront path (padded plane over
# 48 KiB; (2, 130, 120) in both dtypes, (1, 3, 5000) with 2 steps per wavefront pass,
# (1, 5000, 2) with 16) rather than the plane sweep.
SIZES = [
    (3, 7, 5),
    (2, 1, 9),
    (2, 8, 1),
    (1, 1, 1),
    (4, 33, 17),
    (2, 40, 70),
    (2, 130, 120),
    (1, 3, 5000),
    (1, 5000, 2),
]
STEPS = [0, 1, 5, 37]


def bwd(grad_out, u0, rates, tau, steps):
    return OPS.diffuse_backward.default(grad_out, u0, rates, float(tau), int(steps))


def ref_vjp(u0, rates, tau, steps, grad_out):
    return vjp_reference(lambda u, r: diffuse_reference(u, r, tau, steps), (u0, rates), grad_out)


def directional_neighbour(img, d):
    """``img`` at ``q_d(p)`` for every p of an ``(N, H, W)`` image (``img[p]`` where q_d(p) is
    outside the image)."""
    out = img.clone()
    if d == EAST:
        out[:, :, :-1] = img[:, :, 1:]
    elif d == WEST:
        out[:, :, 1:] = img[:, :, :-1]
    elif d == SOUTH:
        out[:, :-1, :] = img[:, 1:, :]
    else:
        out[:, 1:, :] = img[:, :-1, :]
    return out


def drift_rates(intensity, w, gamma):
    """``r_{p,d} = w * exp(gamma * (I_{q_d(p)} - I_p) / 2)`` for an ``(N, H, W)`` image I."""
    return torch.stack(
        [w * torch.exp(gamma * (directional_neighbour(intensity, d) - intensity) / 2) for d in range(4)],
        dim=1,
    )


# --------------------------------------------------------------------------------------------
# Forward against the reference and hand-derived values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_forward_matches_reference_float64(size, steps):
    u0, rates = random_problem(*size, dtype=torch.float64, tau=TAU, generator=make_generator(sum(size)))
    out = d2d_ext.diffuse(u0, rates, TAU, steps)
    ref = diffuse_reference(u0, rates, TAU, steps)
    assert out.shape == u0.shape and out.dtype == torch.float64 and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_forward_matches_reference_float32(size, steps):
    u0, rates = random_problem(*size, dtype=torch.float32, tau=TAU, generator=make_generator(sum(size)))
    out = d2d_ext.diffuse(u0, rates, TAU, steps)
    assert out.dtype == torch.float32 and out.is_contiguous()
    # Reference in float64 on the same (float32) inputs: the difference is the op's rounding.
    ref = diffuse_reference(u0.double(), rates.double(), TAU, steps)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(2, 9, 7), (1, 1, 5), (1, 6, 1)], ids=lambda s: "x".join(map(str, s)))
def test_padded_step_is_the_reference_step(size):
    """The step the benchmarks hand to torch.compile is the reference's step, written with pads."""
    u0, rates = random_problem(*size, dtype=torch.float64, tau=TAU, generator=make_generator(5))
    r, out_rate = diffuse_step_rates(u0, rates)
    u = u0
    for _ in range(3):
        want = diffuse_step(u, r, out_rate, TAU)
        torch.testing.assert_close(diffuse_step_padded(u, r, out_rate, TAU), want, rtol=1e-15, atol=1e-16)
        u = want


@pytest.mark.parametrize("vertical", [False, True])
def test_two_pixel_hand_computed(vertical):
    # Two pixels a -> b (a = (0,0); b = (0,1), or (1,0) when vertical). Rate a->b is 0.5, b->a is
    # 0.25; every rate pointing out of the image is 7 (ignored). tau = 0.5, u0 = [1, 0]:
    #   step 1: a = 1 - 0.5*0.5*1 + 0.5*0.25*0 = 0.75,      b = 0 - 0.125*0 + 0.25*1 = 0.25
    #   step 2: a = 0.75 - 0.25*0.75 + 0.125*0.25 = 0.59375, b = 0.25 - 0.125*0.25 + 0.25*0.75 = 0.40625
    H, W = (2, 1) if vertical else (1, 2)
    fwd, back = (SOUTH, NORTH) if vertical else (EAST, WEST)
    rates = torch.full((1, 4, H, W), 7.0, dtype=torch.float64)
    b = (1, 0) if vertical else (0, 1)
    rates[0, fwd, 0, 0] = 0.5
    rates[0, back, b[0], b[1]] = 0.25
    u0 = torch.zeros((1, H, W), dtype=torch.float64)
    u0[0, 0, 0] = 1.0
    for steps, (ua, ub) in [(1, (0.75, 0.25)), (2, (0.59375, 0.40625))]:
        out = d2d_ext.diffuse(u0, rates, 0.5, steps)
        assert out[0, 0, 0].item() == pytest.approx(ua, abs=1e-15)
        assert out[0, b[0], b[1]].item() == pytest.approx(ub, abs=1e-15)


def test_single_pixel_never_changes():
    # In a 1x1 image every rate points outside, so nothing moves whatever the rates.
    u0 = torch.tensor([[[3.0]], [[-2.0]]], dtype=torch.float64)
    rates = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).reshape(1, 4, 1, 1).repeat(2, 1, 1, 1)
    out = d2d_ext.diffuse(u0, rates, 0.1, 50)
    assert torch.equal(out, u0)


def test_rates_pointing_outside_are_ignored():
    u0, rates = random_problem(2, 9, 13, tau=TAU, generator=make_generator(5))
    masked = rates * boundary_mask(u0.shape)
    torch.testing.assert_close(d2d_ext.diffuse(u0, rates, TAU, 11), d2d_ext.diffuse(u0, masked, TAU, 11), rtol=0, atol=0)
    g = torch.randn(u0.shape, dtype=torch.float64, generator=make_generator(6))
    gu, gr = bwd(g, u0, rates, TAU, 11)
    # Their gradient is exactly zero.
    assert torch.all(gr[boundary_mask(u0.shape).expand_as(gr) == 0] == 0)
    assert gr.abs().sum() > 0


def test_steps_zero_returns_a_copy():
    u0, rates = random_problem(2, 6, 5, generator=make_generator(1))
    out = d2d_ext.diffuse(u0, rates, TAU, 0)
    assert torch.equal(out, u0)
    assert out.data_ptr() != u0.data_ptr()
    keep = u0.clone()
    out.add_(1.0)
    assert torch.equal(u0, keep)
    # Also for a non-contiguous u0: the copy is contiguous and equal.
    u0_t = u0.transpose(1, 2)
    out_t = d2d_ext.diffuse(u0_t, rates.transpose(2, 3), TAU, 0)
    assert out_t.is_contiguous() and torch.equal(out_t, u0_t)


def test_steps_zero_backward_is_identity():
    u0, rates = random_problem(2, 6, 5, generator=make_generator(2))
    g = torch.randn(u0.shape, dtype=torch.float64, generator=make_generator(3))
    gu, gr = bwd(g, u0, rates, TAU, 0)
    assert torch.equal(gu, g) and gu.data_ptr() != g.data_ptr()
    assert gr.shape == rates.shape and torch.equal(gr, torch.zeros_like(rates))


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0)])
def test_empty_inputs(shape):
    N, H, W = shape
    u0 = torch.zeros(shape, dtype=torch.float64)
    rates = torch.zeros((N, 4, H, W), dtype=torch.float64)
    out = d2d_ext.diffuse(u0, rates, TAU, 5)
    assert out.shape == shape
    gu, gr = bwd(torch.zeros(shape, dtype=torch.float64), u0, rates, TAU, 5)
    assert gu.shape == shape and gr.shape == rates.shape


def test_batch_samples_are_independent():
    # Each sample of the batch gives exactly what it gives alone (samples run in parallel).
    u0, rates = random_problem(5, 19, 23, generator=make_generator(7))
    g = torch.randn(u0.shape, dtype=torch.float64, generator=make_generator(8))
    out = d2d_ext.diffuse(u0, rates, TAU, 9)
    gu, gr = bwd(g, u0, rates, TAU, 9)
    for n in range(5):
        assert torch.equal(out[n : n + 1], d2d_ext.diffuse(u0[n : n + 1], rates[n : n + 1], TAU, 9))
        gu1, gr1 = bwd(g[n : n + 1], u0[n : n + 1], rates[n : n + 1], TAU, 9)
        assert torch.equal(gu[n : n + 1], gu1) and torch.equal(gr[n : n + 1], gr1)


@pytest.mark.parametrize("shape", [(4, 16, 16), (3, 40, 9), (3, 130, 140)], ids=["16x16", "40x9", "130x140"])
def test_a_nonfinite_sample_leaves_the_next_ones_alone(shape):
    # One thread runs every sample in one workspace, whose ghost elements are zeroed once for all
    # of them (and its state planes again after a sample whose results are not finite): NaN and
    # Inf in one sample's state and rates must not reach the samples after it.
    N, H, W = shape
    g = make_generator(9)
    u0, rates = random_problem(N, H, W, dtype=torch.float32, tau=TAU, generator=g)
    go = torch.randn(u0.shape, generator=g)
    u0[0, 0, 0], u0[0, H - 1, W - 1], u0[0, H // 2, 0] = float("nan"), float("inf"), -float("inf")
    rates[0, :, 0, :] = float("nan")
    rates[0, :, :, W - 1] = float("inf")
    go[0, 0, W - 1] = float("nan")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = d2d_ext.diffuse(u0, rates, TAU, 7)
        gu, gr = bwd(go, u0, rates, TAU, 7)
        gu_alone = OPS.diffuse_backward.default(go, u0, rates, TAU, 7, [True, False])[0]
        for n in range(1, N):
            one = slice(n, n + 1)
            assert torch.isfinite(out[one]).all() and torch.isfinite(gu[one]).all()
            assert torch.equal(out[one], d2d_ext.diffuse(u0[one], rates[one], TAU, 7))
            gu1, gr1 = bwd(go[one], u0[one], rates[one], TAU, 7)
            assert torch.equal(gu[one], gu1) and torch.equal(gr[one], gr1) and torch.equal(gu_alone[one], gu1)
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Non-contiguous inputs
# --------------------------------------------------------------------------------------------

N_, H_, W_, STEPS_NC = 3, 9, 11, 6


def _u0_variants(u0):
    g = make_generator(11)
    transposed = u0.transpose(1, 2).contiguous().transpose(1, 2)
    big_rows = torch.rand((N_, 2 * H_, W_), dtype=u0.dtype, generator=g)
    big_rows[:, ::2] = u0
    big_cols = torch.rand((N_, H_, 3 * W_), dtype=u0.dtype, generator=g)
    big_cols[:, :, 1::3] = u0
    big_batch = torch.rand((2 * N_, H_, W_), dtype=u0.dtype, generator=g)
    big_batch[1::2] = u0
    return {
        "transposed": transposed,
        "row_step": big_rows[:, ::2],
        "col_step": big_cols[:, :, 1::3],
        "batch_step": big_batch[1::2],
    }


def _rates_variants(rates):
    g = make_generator(12)
    permuted = rates.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    big_ch = torch.rand((N_, 8, H_, W_), dtype=rates.dtype, generator=g)
    big_ch[:, ::2] = rates
    big_w = torch.rand((N_, 4, H_, 2 * W_), dtype=rates.dtype, generator=g)
    big_w[..., ::2] = rates
    return {
        "permuted": permuted,
        "channel_step": big_ch[:, ::2],
        "col_step": big_w[..., ::2],
        "transposed_hw": rates.transpose(2, 3).contiguous().transpose(2, 3),
    }


@pytest.mark.parametrize("variant", ["transposed", "row_step", "col_step", "batch_step"])
def test_noncontiguous_u0(variant):
    u0, rates = random_problem(N_, H_, W_, generator=make_generator(10))
    u0_nc = _u0_variants(u0)[variant]
    assert not u0_nc.is_contiguous() and torch.equal(u0_nc, u0)
    out = d2d_ext.diffuse(u0_nc, rates, TAU, STEPS_NC)
    torch.testing.assert_close(out, d2d_ext.diffuse(u0, rates, TAU, STEPS_NC), rtol=0, atol=0)
    g = torch.randn(u0.shape, dtype=torch.float64, generator=make_generator(13))
    g_nc = g.transpose(1, 2).contiguous().transpose(1, 2)
    for a, b in zip(bwd(g_nc, u0_nc, rates, TAU, STEPS_NC), bwd(g, u0, rates, TAU, STEPS_NC)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["permuted", "channel_step", "col_step", "transposed_hw"])
def test_noncontiguous_rates(variant):
    u0, rates = random_problem(N_, H_, W_, generator=make_generator(10))
    r_nc = _rates_variants(rates)[variant]
    assert not r_nc.is_contiguous() and torch.equal(r_nc, rates)
    torch.testing.assert_close(
        d2d_ext.diffuse(u0, r_nc, TAU, STEPS_NC), d2d_ext.diffuse(u0, rates, TAU, STEPS_NC), rtol=0, atol=0
    )
    g = torch.randn(u0.shape, dtype=torch.float64, generator=make_generator(13))
    for a, b in zip(bwd(g, u0, r_nc, TAU, STEPS_NC), bwd(g, u0, rates, TAU, STEPS_NC)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["batch", "per_channel_constant"])
def test_expanded_rates(kind):
    g = make_generator(14)
    u0 = torch.rand((N_, H_, W_), dtype=torch.float64, generator=g)
    if kind == "batch":
        base = torch.rand((1, 4, H_, W_), dtype=torch.float64, generator=g) / (4 * TAU)
    else:
        base = torch.rand((1, 4, 1, 1), dtype=torch.float64, generator=g) / (4 * TAU)
    rates = base.expand(N_, 4, H_, W_)
    assert 0 in rates.stride()
    dense = rates.contiguous()
    torch.testing.assert_close(
        d2d_ext.diffuse(u0, rates, TAU, STEPS_NC), d2d_ext.diffuse(u0, dense, TAU, STEPS_NC), rtol=0, atol=0
    )
    # Through autograd: the gradient of the expanded leaf sums over the broadcast dimensions.
    go = torch.randn(u0.shape, dtype=torch.float64, generator=g)
    leaf = base.clone().requires_grad_(True)
    d2d_ext.diffuse(u0, leaf.expand(N_, 4, H_, W_), TAU, STEPS_NC).backward(go)
    (ref_grad,) = vjp_reference(lambda b: diffuse_reference(u0, b.expand(N_, 4, H_, W_), TAU, STEPS_NC), (base,), go)
    torch.testing.assert_close(leaf.grad, ref_grad, rtol=1e-11, atol=1e-13)


# --------------------------------------------------------------------------------------------
# Backward: against reference autograd, checkpointing, gradcheck, opcheck
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 5, 37])
@pytest.mark.parametrize("size", [(3, 7, 5), (2, 1, 9), (2, 8, 1), (1, 1, 1), (2, 40, 70), (2, 130, 120), (1, 3, 5000)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backward_matches_reference(size, steps, dtype):
    g = make_generator(20)
    u0, rates = random_problem(*size, dtype=dtype, tau=TAU, generator=g)
    go = torch.randn(size, dtype=torch.float64, generator=g).to(dtype)
    gu, gr = bwd(go, u0, rates, TAU, steps)
    ref_u, ref_r = ref_vjp(u0.double(), rates.double(), TAU, steps, go.double())
    rtol = 1e-11 if dtype == torch.float64 else 1e-4
    assert gu.dtype == dtype and gr.dtype == dtype
    assert_close_rel(gu.double(), ref_u, rtol, "grad_u0")
    assert_close_rel(gr.double(), ref_r, rtol, "grad_rates")


def test_autograd_through_wrapper():
    g = make_generator(21)
    u0, rates = random_problem(2, 6, 7, generator=g)
    go = torch.randn(u0.shape, dtype=torch.float64, generator=g)
    u = u0.clone().requires_grad_(True)
    r = rates.clone().requires_grad_(True)
    d2d_ext.diffuse(u, r, TAU, 8).backward(go)
    ref_u, ref_r = ref_vjp(u0, rates, TAU, 8, go)
    torch.testing.assert_close(u.grad, ref_u, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(r.grad, ref_r, rtol=1e-12, atol=1e-13)
    # Only u0 requires grad: rates get no gradient, and u0's is the same.
    u2 = u0.clone().requires_grad_(True)
    r2 = rates.clone()
    d2d_ext.diffuse(u2, r2, TAU, 8).backward(go)
    assert r2.grad is None
    torch.testing.assert_close(u2.grad, ref_u, rtol=1e-12, atol=1e-13)
    # Only rates requires grad.
    r3 = rates.clone().requires_grad_(True)
    (gr3,) = torch.autograd.grad(d2d_ext.diffuse(u0, r3, TAU, 8), (r3,), go)
    torch.testing.assert_close(gr3, ref_r, rtol=1e-12, atol=1e-13)


# Checkpointed cases on the CPU: steps * (H+2)(W+2) * 8 bytes > 8 MiB per sample, so the backward
# uses segments of ceil(sqrt(steps)) steps:
#   (2, 300, 300), 130 steps: 130 * 302^2 * 8 = 94.9 MB; segments of 12, the last one of 10.
#   (1, 300, 300), 111 steps: 81 MB; 11 segments of 11 and a last one of a single step.
#   (1, 200, 200), 225 steps: 225 * 202^2 * 8 = 73.4 MB; 15 full segments of 15.
#   (1, 60, 60), 2500 steps: 2500 * 62^2 * 8 = 76.9 MB; 50 segments of 50 (plane-sweep path;
#   the others take the wavefront path).
CHECKPOINTED = [((2, 300, 300), 130), ((1, 300, 300), 111), ((1, 200, 200), 225), ((1, 60, 60), 2500)]


@pytest.mark.parametrize("size,steps", CHECKPOINTED, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_checkpointed_backward_matches_reference(size, steps):
    H, W = size[1:]
    assert steps * (H + 2) * (W + 2) * 8 > 8 * 2**20  # really over the budget
    g = make_generator(22)
    tau = 0.9
    u0, rates = random_problem(*size, tau=tau, generator=g)
    go = torch.randn(size, dtype=torch.float64, generator=g)
    gu, gr = bwd(go, u0, rates, tau, steps)
    ref_u, ref_r = ref_vjp(u0, rates, tau, steps, go)
    assert_close_rel(gu, ref_u, 1e-11, "grad_u0")
    assert_close_rel(gr, ref_r, 1e-11, "grad_rates")


def test_many_steps_small_image_matches_reference():
    g = make_generator(23)
    u0, rates = random_problem(1, 4, 4, tau=TAU, generator=g)
    go = torch.randn((1, 4, 4), dtype=torch.float64, generator=g)
    out = d2d_ext.diffuse(u0, rates, TAU, 1000)
    torch.testing.assert_close(out, diffuse_reference(u0, rates, TAU, 1000), rtol=1e-11, atol=1e-13)
    gu, gr = bwd(go, u0, rates, TAU, 1000)
    ref_u, ref_r = ref_vjp(u0, rates, TAU, 1000, go)
    assert_close_rel(gu, ref_u, 1e-11, "grad_u0")
    assert_close_rel(gr, ref_r, 1e-11, "grad_rates")


@pytest.mark.parametrize("size,steps", [((1, 300, 300), 400), ((1, 60, 60), 2500), ((3, 5, 4), 3000)])
def test_adjoint_of_ones_is_ones(size, steps):
    # Mass conservation means every column of A sums to 1, i.e. A^T 1 = 1, and the total mass does
    # not depend on the rates: with grad_out = 1, grad_u0 = 1 and grad_rates = 0 (long runs,
    # checkpointed for the first two).
    u0, rates = random_problem(*size, tau=1.0, generator=make_generator(24))
    ones = torch.ones(size, dtype=torch.float64)
    gu, gr = bwd(ones, u0, rates, 1.0, steps)
    torch.testing.assert_close(gu, ones, rtol=0, atol=1e-11)
    assert gr.abs().max().item() < 1e-10


GRADCHECK_CASES = [((2, 5, 4), 3), ((2, 5, 4), 7), ((2, 1, 6), 3), ((2, 6, 1), 4), ((1, 1, 1), 3), ((2, 3, 3), 0)]


@pytest.mark.parametrize("size,steps", GRADCHECK_CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_gradcheck(size, steps):
    u0, rates = random_problem(*size, tau=TAU, generator=make_generator(25))
    u0.requires_grad_(True)
    rates.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u, r: d2d_ext.diffuse(u, r, TAU, steps), (u0, rates), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_fast_mode_wavefront_size():
    # (1, 90, 80) float64: the padded plane is 60 KiB, so the CPU kernel uses the wavefront.
    u0, rates = random_problem(1, 90, 80, tau=TAU, generator=make_generator(26))
    u0.requires_grad_(True)
    rates.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda u, r: d2d_ext.diffuse(u, r, TAU, 20), (u0, rates), eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True
    )


def _opcheck_args():
    g = make_generator(27)
    u0, rates = random_problem(2, 5, 4, tau=TAU, generator=g)
    u1, r1 = random_problem(1, 1, 1, tau=TAU, generator=g)
    u2, r2 = random_problem(2, 3, 6, dtype=torch.float32, tau=TAU, generator=g)
    return [
        (u0, rates, TAU, 3),
        (u0.clone().requires_grad_(True), rates.clone().requires_grad_(True), TAU, 3),
        (u0.clone().requires_grad_(True), rates, TAU, 7),
        (u0, rates.clone().requires_grad_(True), TAU, 0),
        (u1.requires_grad_(True), r1.requires_grad_(True), TAU, 2),
        (u2.requires_grad_(True), r2.requires_grad_(True), TAU, 5),
    ]


@pytest.mark.parametrize("case", range(6))
def test_opcheck_diffuse(case):
    args = _opcheck_args()[case]
    torch.library.opcheck(torch.ops.d2d.diffuse.default, args)


@pytest.mark.parametrize("steps", [0, 1, 6])
def test_opcheck_diffuse_backward(steps):
    g = make_generator(28)
    u0, rates = random_problem(2, 5, 4, tau=TAU, generator=g)
    go = torch.randn(u0.shape, dtype=torch.float64, generator=g)
    torch.library.opcheck(torch.ops.d2d.diffuse_backward.default, (go, u0, rates, TAU, steps))


# --------------------------------------------------------------------------------------------
# Threads: one large sample split into bands of rows
# --------------------------------------------------------------------------------------------

# With fewer samples than threads, the CPU kernel runs a sample that takes the row wavefront as
# one band of rows per thread (each band recomputing a halo of rows), a wide sample also cut into
# strips of columns. Every pixel gets the same arithmetic whichever band and strip compute it, so
# the results must be the same bits for every thread count (1 thread: the whole sample on one).
#   (1, 300, 1203) float32, 37 steps: over 8 MiB of planes, so passes of 16 steps (16, 16, 5) over
#     2 strips (the second ends 3 columns into a vector); the backward keeps the states of each
#     segment (of 7 steps: 37 states are over the 8 MiB budget), copying the tiles' own columns out
#     of their halo.
#   (1, 140, 700) float64, 20 steps: passes of 16 and 4 over 2 strips, up to 4 bands of 35 rows.
#   (1, 256, 250) float32, 20 steps: stays in cache: passes of 3 steps over whole rows; the
#     backward keeps its 20 states (about 5.6 MB) in a single segment.
#   (2, 300, 500) float32, 9 steps: two samples, banded at 3 and 4 threads.
#   (1, 80, 2500) float32, 90 steps: checkpointed backward (90 * 82 * 2512 * 4 bytes = 74 MB over
#     the 8 MiB budget: segments of 10 steps), its passes still over 2 strips.
#   (1, 520, 1100) float64, 30 steps: checkpointed backward (segments of 6 steps over whole rows),
#     forward passes over 2 strips.
THREAD_COUNTS = [1, 2, 3, 4]
THREAD_CASES = [
    ((1, 300, 1203), torch.float32, 37),
    ((1, 140, 700), torch.float64, 20),
    ((1, 256, 250), torch.float32, 20),
    ((2, 300, 500), torch.float32, 9),
    ((1, 80, 2500), torch.float32, 90),
    ((1, 520, 1100), torch.float64, 30),
]


def _thread_case_id(case):
    size, dtype, steps = case
    return f"{'x'.join(map(str, size))}-{str(dtype).split('.')[-1]}-{steps}"


def _bits(t):
    """The tensor's bit patterns, so that torch.equal also compares NaNs (payload and sign)."""
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _each_thread_count(fn):
    """fn() under torch.set_num_threads(k) for each k in THREAD_COUNTS (restored afterwards)."""
    before = torch.get_num_threads()
    try:
        results = []
        for k in THREAD_COUNTS:
            torch.set_num_threads(k)
            results.append(fn())
        return results
    finally:
        torch.set_num_threads(before)


def _assert_same_bits(results, what):
    first = results[0]
    for k, res in zip(THREAD_COUNTS[1:], results[1:]):
        for name, a, b in zip(what, first, res):
            assert torch.equal(_bits(a), _bits(b)), f"{name}: {k} threads differ from 1 thread"


def _nonfinite_problem(size, dtype, steps, seed):
    """u0 with NaN, +Inf and -Inf on rows at the band boundaries of 2, 3 and 4 bands (and next to
    them) and on columns at strip boundaries and the image edges."""
    N, H, W = size
    g = make_generator(seed)
    u0, rates = random_problem(*size, dtype=dtype, tau=TAU, generator=g)
    go = torch.randn(size, dtype=torch.float64, generator=g).to(dtype)
    rows = [0, H // 4 - 1, H // 3, H // 2 - 1, H // 2, 2 * H // 3 + 1, 3 * H // 4, H - 1]
    cols = [0, W // 2 - 1, W // 2, W - 1, 344 % W, 592 % W, 591 % W]
    specials = [float("nan"), float("inf"), -float("inf")]
    for i, y in enumerate(rows):
        u0[N - 1, y, cols[i % len(cols)]] = specials[i % 3]
    return u0, rates, go


@pytest.mark.parametrize("case", THREAD_CASES, ids=_thread_case_id)
def test_one_sample_forward_same_bits_for_any_thread_count(case):
    size, dtype, steps = case
    u0, rates = random_problem(*size, dtype=dtype, tau=TAU, generator=make_generator(40))
    outs = _each_thread_count(lambda: (d2d_ext.diffuse(u0, rates, TAU, steps),))
    _assert_same_bits(outs, ["out"])
    ref = diffuse_reference(u0.double(), rates.double(), TAU, steps)
    if dtype == torch.float64:
        torch.testing.assert_close(outs[0][0], ref, rtol=1e-12, atol=1e-13)
    else:
        torch.testing.assert_close(outs[0][0].double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", THREAD_CASES, ids=_thread_case_id)
def test_one_sample_backward_same_bits_for_any_thread_count(case):
    size, dtype, steps = case
    g = make_generator(41)
    u0, rates = random_problem(*size, dtype=dtype, tau=TAU, generator=g)
    go = torch.randn(size, dtype=torch.float64, generator=g).to(dtype)
    # the full backward, and the u0-only one (the adjoint chain without states) beside it
    grads = _each_thread_count(lambda: (*bwd(go, u0, rates, TAU, steps),
                                        OPS.diffuse_backward.default(go, u0, rates, TAU, steps, [True, False])[0]))
    _assert_same_bits(grads, ["grad_u0", "grad_rates", "grad_u0 alone"])
    if size[1] * size[2] * steps <= 2_000_000:  # the autograd reference keeps every step
        ref_u, ref_r = ref_vjp(u0.double(), rates.double(), TAU, steps, go.double())
        rtol = 1e-11 if dtype == torch.float64 else 1e-4
        assert_close_rel(grads[0][0].double(), ref_u, rtol, "grad_u0")
        assert_close_rel(grads[0][1].double(), ref_r, rtol, "grad_rates")


@pytest.mark.parametrize("case", [THREAD_CASES[0], THREAD_CASES[1]], ids=_thread_case_id)
def test_one_sample_nonfinite_reach_same_pixels_for_any_thread_count(case):
    size, dtype, steps = case
    u0, rates, go = _nonfinite_problem(size, dtype, steps, seed=42)
    outs = _each_thread_count(lambda: (d2d_ext.diffuse(u0, rates, TAU, steps),) + tuple(bwd(go, u0, rates, TAU, steps)))
    _assert_same_bits(outs, ["out", "grad_u0", "grad_rates"])  # NaN, Inf and all, bit for bit
    out = outs[0][0]
    assert (~torch.isfinite(out)).sum() > 100  # the specials spread over many steps
    assert torch.isfinite(out).sum() > out.numel() // 2
    # The same pixels are not finite as in the reference; elsewhere the values agree.
    ref = diffuse_reference(u0.double(), rates.double(), TAU, steps)
    assert torch.equal(torch.isfinite(out), torch.isfinite(ref))
    fin = torch.isfinite(ref)
    torch.testing.assert_close(out.double()[fin], ref[fin], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", [THREAD_CASES[0], THREAD_CASES[1]], ids=_thread_case_id)
def test_one_sample_steps_one_call_each_same_bits(case):
    # The tiling depends on the steps of a pass: a single step (one pass of one step) covers whole
    # rows, whereas these cases' passes of 16 steps cut each row into 2 strips, with halo columns.
    # Chained one-step calls therefore check the strips (and bands) bit for bit: the forward, and
    # the adjoint's grad_u0 (the rate gradient of a chain is summed in another order).
    size, dtype, steps = case
    g = make_generator(43)
    u0, rates = random_problem(*size, dtype=dtype, tau=TAU, generator=g)
    go = torch.randn(size, dtype=torch.float64, generator=g).to(dtype)
    states = [u0]
    for _ in range(steps):
        states.append(d2d_ext.diffuse(states[-1], rates, TAU, 1))
    assert torch.equal(_bits(d2d_ext.diffuse(u0, rates, TAU, steps)), _bits(states[-1]))
    gu, gr = bwd(go, u0, rates, TAU, steps)
    g_chain, gr_chain = go, torch.zeros_like(rates)
    for k in range(steps, 0, -1):
        g_chain, gr_k = bwd(g_chain, states[k - 1], rates, TAU, 1)
        gr_chain += gr_k
    assert torch.equal(_bits(gu), _bits(g_chain))
    assert_close_rel(gr.double(), gr_chain.double(), 1e-11 if dtype == torch.float64 else 1e-4, "grad_rates")


# --------------------------------------------------------------------------------------------
# Exact arithmetic: the CPU kernels round every product and sum on its own, in the order of
# diffusion_math.h, so they equal that per-pixel formula evaluated in numpy, bit for bit, on every
# path (plane sweep, wavefront in cache, deep wavefront over strips and bands) and vector width.
# --------------------------------------------------------------------------------------------

EXACT_CASES = [
    ((3, 7, 5), torch.float32, 9, 1),  # plane sweep of a tiny plane: two vectors and a scalar rest
    ((4, 33, 17), torch.float64, 23, 1),  # plane sweep
    ((2, 130, 120), torch.float32, 37, 2),  # wavefront over whole rows, the sample in cache
    ((1, 3, 5000), torch.float64, 7, 1),  # wavefront, 2 steps a pass
    ((1, 520, 400), torch.float32, 40, 2),  # deep passes of 16 steps, 2 bands of rows
]


def _numpy_coefs(rates, tau):
    """Out-coefficients o (N, 4, H, W), 0 where the neighbour is outside, and a, as
    diffuse_out_coefs computes them."""
    np = pytest.importorskip("numpy")
    r = rates.numpy()
    t = r.dtype.type(tau)
    o = np.zeros_like(r)
    o[:, 0, :, :-1] = t * r[:, 0, :, :-1]  # east
    o[:, 1, :, 1:] = t * r[:, 1, :, 1:]  # west
    o[:, 2, :-1, :] = t * r[:, 2, :-1, :]  # south
    o[:, 3, 1:, :] = t * r[:, 3, 1:, :]  # north
    a = r.dtype.type(1) - (((o[:, 0] + o[:, 1]) + o[:, 2]) + o[:, 3])
    return o, a


def _numpy_neighbours(v):
    """v's east, west, south and north neighbours (0 outside the image)."""
    np = pytest.importorskip("numpy")
    p = np.pad(v, ((0, 0), (1, 1), (1, 1)))
    return p[:, 1:-1, 2:], p[:, 1:-1, :-2], p[:, 2:, 1:-1], p[:, :-2, 1:-1]


def _kernel_results(go, u0, rates, steps, threads):
    """The CPU kernels' forward, full backward (grad of u0, of the rates) and u0-only backward
    at TAU, under ``threads`` torch threads (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = d2d_ext.diffuse(u0, rates, TAU, steps)
        gu, gr = bwd(go, u0, rates, TAU, steps)
        gu_alone = OPS.diffuse_backward.default(go, u0, rates, TAU, steps, [True, False])[0]
    finally:
        torch.set_num_threads(before)
    return out, gu, gr, gu_alone


def _numpy_forward_states(u0, rates, tau, steps):
    """u^0 .. u^steps by diffuse_forward_px: a u + in_e u_e + in_w u_w + in_s u_s + in_n u_n,
    left to right, each operation rounded."""
    o, a = _numpy_coefs(rates, tau)
    # the neighbours' flows towards p: the east neighbour's o1, the west's o0, the south's o3, the north's o2
    in_e = _numpy_neighbours(o[:, 1])[0]
    in_w = _numpy_neighbours(o[:, 0])[1]
    in_s = _numpy_neighbours(o[:, 3])[2]
    in_n = _numpy_neighbours(o[:, 2])[3]
    states = [u0.numpy()]
    for _ in range(steps):
        u = states[-1]
        ue, uw, us, un = _numpy_neighbours(u)
        states.append((((a * u + in_e * ue) + in_w * uw) + in_s * us) + in_n * un)
    return states


def _numpy_backward(go, states, rates, tau):
    """grad_u0 by diffuse_adjoint_px (a g + o0 g_e + o1 g_w + o2 g_s + o3 g_n) and grad_rates:
    u^k (g^{k+1}_q - g^{k+1}_p) summed from the last step to the first, times tau at the end."""
    np = pytest.importorskip("numpy")
    o, a = _numpy_coefs(rates, tau)
    g = go.numpy()
    acc = np.zeros_like(o)
    for u in reversed(states[:-1]):
        nb = _numpy_neighbours(g)
        for d in range(4):
            acc[:, d] += u * (nb[d] - g)
        g = (((a * g + o[:, 0] * nb[0]) + o[:, 1] * nb[1]) + o[:, 2] * nb[2]) + o[:, 3] * nb[3]
    t = acc.dtype.type(tau)
    inside = o != 0  # the boundary mask (every drawn rate is positive)
    return g, np.where(inside, t * acc, acc.dtype.type(0))


@pytest.mark.parametrize("case", EXACT_CASES, ids=lambda c: f"{'x'.join(map(str, c[0]))}-{str(c[1]).split('.')[-1]}-{c[2]}-t{c[3]}")
def test_cpu_kernels_equal_the_formula_bit_for_bit(case):
    size, dtype, steps, threads = case
    g = make_generator(44)
    u0, rates = random_problem(*size, dtype=dtype, tau=TAU, generator=g)
    rates = rates + torch.finfo(dtype).tiny  # every rate positive: the masks below read o != 0
    go = torch.randn(size, dtype=torch.float64, generator=g).to(dtype)
    out, gu, gr, gu_alone = _kernel_results(go, u0, rates, steps, threads)
    states = _numpy_forward_states(u0, rates, TAU, steps)
    ref_u, ref_r = _numpy_backward(go, states, rates, TAU)
    assert torch.equal(_bits(out), _bits(torch.from_numpy(states[-1])))
    assert torch.equal(_bits(gu), _bits(torch.from_numpy(ref_u)))
    assert torch.equal(_bits(gu_alone), _bits(torch.from_numpy(ref_u)))
    assert torch.equal(_bits(gr), _bits(torch.from_numpy(ref_r)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_states_that_overflow_match_the_formula_bit_for_bit(dtype):
    """Finite inputs whose states overflow: rates of 5 on the four left columns of 16x16
    samples, none elsewhere, run until a few steps after the first Inf, so that Inf and NaN fill
    the left columns while the right ones are still finite. The plane sweep first runs in a
    layout without ghost columns, where a NaN in a row's first column reaches the previous row's
    last column at once (0 times NaN), long before the formula's NaN does, and runs again in the
    padded layout, resetting the ghost columns after each step, where its results are not all
    finite. The forward and the gradient of u0 (through the full backward and the u0-only one)
    equal the formula bit for bit."""
    np = pytest.importorskip("numpy")
    N, H, W = 2, 16, 16
    g = make_generator(45)
    u0 = torch.rand((N, H, W), dtype=torch.float64, generator=g).to(dtype)
    rates = torch.zeros((N, 4, H, W), dtype=dtype)
    rates[:, :, :, :4] = 5.0
    go = torch.rand((N, H, W), dtype=torch.float64, generator=g).to(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        probe = _numpy_forward_states(u0, rates, TAU, 400)
        first = next(k for k, u in enumerate(probe) if not np.isfinite(u).all())
        steps = first + 3
        states = probe[: steps + 1]
        ref_u, _ = _numpy_backward(go, states, rates, TAU)
    assert not np.isfinite(states[-1][:, :, 0]).any() and np.isfinite(states[-1][:, :, W - 1]).all()
    out, gu, _, gu_alone = _kernel_results(go, u0, rates, steps, torch.get_num_threads())
    assert torch.equal(_bits(out), _bits(torch.from_numpy(states[-1])))
    assert not np.isfinite(ref_u[:, :, 0]).any() and np.isfinite(ref_u[:, :, W - 1]).all()
    assert torch.equal(_bits(gu), _bits(torch.from_numpy(ref_u)))
    assert torch.equal(_bits(gu_alone), _bits(torch.from_numpy(ref_u)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_nan_at_a_row_end_stays_in_its_sample_and_row(dtype):
    """Crops of a batch on one thread share a workspace, and the plane sweep's first layout has
    no ghost columns: a NaN at the end of a row of the middle sample must not reach the next
    row's start through it, nor the next sample through the workspace after that sample's run in
    the padded layout. Every sample's forward and gradients equal the formula bit for bit (the
    NaN spreading as the formula spreads it), at one thread, where the three samples run one
    after another."""
    np = pytest.importorskip("numpy")
    N, H, W, steps = 3, 16, 16, 3
    g = make_generator(46)
    u0, rates = random_problem(N, H, W, dtype=dtype, tau=TAU, generator=g)
    rates = rates + torch.finfo(dtype).tiny
    u0[1, 5, W - 1] = float("nan")
    u0[1, 12, 0] = float("inf")
    go = torch.randn((N, H, W), dtype=torch.float64, generator=g).to(dtype)
    out, gu, gr, gu_alone = _kernel_results(go, u0, rates, steps, threads=1)
    with np.errstate(over="ignore", invalid="ignore"):
        states = _numpy_forward_states(u0, rates, TAU, steps)
        ref_u, ref_r = _numpy_backward(go, states, rates, TAU)
    # the NaN's and the Inf's other neighbours in that layout: the next row's start, the previous row's end
    assert np.isnan(states[-1][1]).any() and np.isfinite(states[-1][1, 6, 0]) and np.isfinite(states[-1][1, 11, W - 1])
    assert np.isfinite(states[-1][[0, 2]]).all()
    assert torch.equal(_bits(out), _bits(torch.from_numpy(states[-1])))
    assert torch.equal(_bits(gu), _bits(torch.from_numpy(ref_u)))
    assert torch.equal(_bits(gu_alone), _bits(torch.from_numpy(ref_u)))
    assert torch.equal(_bits(gr), _bits(torch.from_numpy(ref_r)))


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


def _spread_rates(N, H, W, tau, generator, fill=1.0):
    """Rates spanning many orders of magnitude (log-normal), scaled per pixel so that
    tau * sum_d r = fill at the pixels with the largest sum."""
    r = torch.exp(3.0 * torch.randn((N, 4, H, W), dtype=torch.float64, generator=generator))
    return r * (fill / (tau * r.sum(1, keepdim=True).amax(dim=(2, 3), keepdim=True)))


@pytest.mark.parametrize("size,steps", [((3, 17, 23), 500), ((1, 130, 120), 37), ((2, 1, 40), 300)])
def test_mass_conservation_float64(size, steps):
    g = make_generator(30)
    u0 = torch.rand(size, dtype=torch.float64, generator=g)
    rates = _spread_rates(*size, tau=0.7, generator=g)
    out = d2d_ext.diffuse(u0, rates, 0.7, steps)
    torch.testing.assert_close(out.sum((1, 2)), u0.sum((1, 2)), rtol=1e-12, atol=0)
    assert not torch.allclose(out, u0)  # something did move


def test_mass_conservation_float32():
    g = make_generator(31)
    u0 = torch.rand((3, 17, 23), dtype=torch.float64, generator=g).float()
    rates = _spread_rates(3, 17, 23, tau=0.7, generator=g).float()
    out = d2d_ext.diffuse(u0, rates, 0.7, 100)
    torch.testing.assert_close(out.double().sum((1, 2)), u0.double().sum((1, 2)), rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("size", [(2, 31, 29), (1, 130, 120)])
def test_positivity(size, dtype):
    # u0 >= 0 (sparse point sources, mostly exact zeros) and tau * sum_d r <= 1 at every pixel
    # (0.999 at many): every step is a convex combination, so u stays >= 0.
    g = make_generator(32)
    u0 = (torch.rand(size, dtype=torch.float64, generator=g) > 0.97).double() * 5.0
    rates = _spread_rates(*size, tau=0.4, generator=g, fill=0.999)
    # Saturate a third of the pixels: tau * sum_d r = 0.999 there.
    sat = torch.rand(size, dtype=torch.float64, generator=g) < 0.33
    rates = torch.where(sat.unsqueeze(1), rates * (0.999 / (0.4 * rates.sum(1, keepdim=True))), rates)
    assert (0.4 * rates.sum(1)).max() <= 1.0
    out = d2d_ext.diffuse(u0.to(dtype), rates.to(dtype), 0.4, 200)
    assert out.min().item() >= 0.0
    assert (out > 0).sum() > 10 * (u0 > 0).sum()  # mass did spread to many pixels


@pytest.mark.parametrize(
    "size,steps", [((2, 9, 7), 13), ((1, 130, 120), 37), ((1, 300, 300), 100), ((1, 60, 60), 2500), ((2, 1, 11), 40)]
)
def test_adjoint_identity(size, steps):
    # <A x, y> = <x, A^T y> with A x = diffuse(x) and A^T y = diffuse_backward(y, x)[0]; the last
    # three cases: wavefront + checkpointed, plane sweep + checkpointed, one row.
    g = make_generator(33)
    _, rates = random_problem(*size, tau=TAU, generator=g)
    x = torch.randn(size, dtype=torch.float64, generator=g)
    y = torch.randn(size, dtype=torch.float64, generator=g)
    Ax = d2d_ext.diffuse(x, rates, TAU, steps)
    ATy = bwd(y, x, rates, TAU, steps)[0]
    lhs = (Ax * y).sum().item()
    rhs = (x * ATy).sum().item()
    scale = (Ax.abs() * y.abs()).sum().item()
    assert abs(lhs - rhs) <= 1e-12 * scale, (lhs, rhs, scale)


# --------------------------------------------------------------------------------------------
# The gradient of u0 alone (output_mask): the adjoint chain without forward states
# --------------------------------------------------------------------------------------------

# Plane sweep, plane sweep checkpointed (2500 steps), wavefront over whole rows, wavefront in
# strips with checkpoints, one row, one column.
U0_ONLY_CASES = [((3, 20, 30), 7), ((1, 60, 60), 2500), ((1, 300, 280), 40), ((1, 520, 1100), 37),
                 ((2, 1, 300), 5), ((2, 300, 1), 6)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size,steps", U0_ONLY_CASES, ids=lambda c: "x".join(map(str, c)) if isinstance(c, tuple) else str(c))
def test_backward_output_mask(size, steps, dtype):
    """[True, False] gives the full backward's grad_u0 (to rounding: its loop has no rate terms, so
    the compiler may contract multiply-adds differently) and an empty grad_rates; [False, True]
    the full backward's grad_rates bit for bit and an empty grad_u0; [False, False] two empties."""
    g = make_generator(size[1] + steps)
    u0, rates = random_problem(*size, tau=TAU, generator=g)
    go = torch.randn(size, dtype=torch.float64, generator=g)
    u0, rates, go = u0.to(dtype), rates.to(dtype), go.to(dtype)
    full_u, full_r = bwd(go, u0, rates, TAU, steps)
    only_u, empty_r = OPS.diffuse_backward.default(go, u0, rates, TAU, steps, [True, False])
    empty_u, only_r = OPS.diffuse_backward.default(go, u0, rates, TAU, steps, [False, True])
    none = OPS.diffuse_backward.default(go, u0, rates, TAU, steps, [False, False])
    assert empty_r.shape == empty_u.shape == none[0].shape == none[1].shape == (0,)
    assert only_u.shape == u0.shape and only_u.dtype == dtype and only_r.shape == rates.shape
    assert torch.equal(only_r, full_r)
    assert_close_rel(only_u.double(), full_u.double(), 1e-13 if dtype == torch.float64 else 2e-6, "grad_u0")
    if size[1] * size[2] * steps <= 2_000_000:  # the autograd reference keeps every step
        ref_u, _ = ref_vjp(u0.double(), rates.double(), TAU, steps, go.double())
        assert_close_rel(only_u.double(), ref_u, 1e-11 if dtype == torch.float64 else 1e-4, "grad_u0")


def test_autograd_asks_for_what_is_needed():
    """Autograd passes the output mask: with the rates fixed, the backward is the u0-only path,
    whose grad_u0 gradcheck accepts; with u0 fixed, the rates' gradient is the full one's."""
    g = make_generator(44)
    u0, rates = random_problem(2, 9, 11, tau=TAU, generator=g)
    torch.autograd.gradcheck(lambda x: d2d_ext.diffuse(x, rates, TAU, 13), (u0.clone().requires_grad_(True),))
    go = torch.randn(u0.shape, dtype=torch.float64, generator=g)
    x = u0.clone().requires_grad_(True)
    d2d_ext.diffuse(x, rates, TAU, 13).backward(go)
    torch.testing.assert_close(x.grad, bwd(go, u0, rates, TAU, 13)[0], rtol=1e-13, atol=0)
    r = rates.clone().requires_grad_(True)
    d2d_ext.diffuse(u0, r, TAU, 13).backward(go)
    assert torch.equal(r.grad, bwd(go, u0, rates, TAU, 13)[1])


@pytest.mark.parametrize("mask", [[True, False], [False, True], [False, False]])
def test_opcheck_diffuse_backward_output_mask(mask):
    g = make_generator(45)
    u0, rates = random_problem(2, 5, 4, tau=TAU, generator=g)
    go = torch.randn(u0.shape, dtype=torch.float64, generator=g)
    torch.library.opcheck(torch.ops.d2d.diffuse_backward.default, (go, u0, rates, TAU, 6, mask))


@pytest.mark.parametrize("element", [(1, SOUTH, 2, 3), (0, EAST, 4, 0), (1, WEST, 0, 5), (0, NORTH, 5, 6)])
def test_rate_gradient_finite_difference(element):
    # d/dr of L(r) = <g, diffuse(u0, r)> at one element, against a central difference (the op is
    # a polynomial of degree `steps` in the rates, so the O(h^2) error is tiny).
    gen = make_generator(34)
    u0, rates = random_problem(2, 6, 7, tau=TAU, generator=gen)
    go = torch.randn(u0.shape, dtype=torch.float64, generator=gen)
    steps, h = 9, 1e-6

    def loss(r):
        return (go * d2d_ext.diffuse(u0, r, TAU, steps)).sum().item()

    plus, minus = rates.clone(), rates.clone()
    plus[element] += h
    minus[element] -= h
    fd = (loss(plus) - loss(minus)) / (2 * h)
    grad = bwd(go, u0, rates, TAU, steps)[1][element].item()
    ref = ref_vjp(u0, rates, TAU, steps, go)[1][element].item()
    assert grad == pytest.approx(fd, rel=1e-6, abs=1e-9)
    assert grad == pytest.approx(ref, rel=1e-11, abs=1e-14)
    assert abs(grad) > 1e-4  # a real check, not 0 == 0


def test_rate_gradient_zero_for_outside_element():
    gen = make_generator(35)
    u0, rates = random_problem(1, 6, 7, tau=TAU, generator=gen)
    go = torch.randn(u0.shape, dtype=torch.float64, generator=gen)
    gr = bwd(go, u0, rates, TAU, 9)[1]
    # EAST at the last column, WEST at the first, SOUTH at the last row, NORTH at the first.
    assert torch.all(gr[0, EAST, :, -1] == 0) and torch.all(gr[0, WEST, :, 0] == 0)
    assert torch.all(gr[0, SOUTH, -1, :] == 0) and torch.all(gr[0, NORTH, 0, :] == 0)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("size", [(2, 13, 17), (1, 130, 120), (1, 1, 20)])
def test_symmetric_rates_keep_uniform_field(size, dtype, atol):
    # With r_{p,d} == r_{q_d(p),opp(d)} the inflow tau * sum_d r_{q_d(p),opp(d)} c equals the
    # outflow tau * sum_d r_{p,d} c, so u = c is stationary. Edge weights < 0.25, tau = 1.
    rates = symmetric_rates(*size, generator=make_generator(36), scale=0.25).to(dtype)
    u0 = torch.full(size, 2.5, dtype=dtype)
    out = d2d_ext.diffuse(u0, rates, 1.0, 100)
    torch.testing.assert_close(out, u0, rtol=0, atol=atol * 2.5)


def test_symmetric_rates_give_symmetric_operator():
    # Symmetric rates make A symmetric, so A^T y (the backward) equals A y (the forward).
    g = make_generator(37)
    rates = symmetric_rates(2, 11, 9, generator=g, scale=0.25)
    x = torch.randn((2, 11, 9), dtype=torch.float64, generator=g)
    y = torch.randn((2, 11, 9), dtype=torch.float64, generator=g)
    torch.testing.assert_close(bwd(y, x, rates, 1.0, 17)[0], d2d_ext.diffuse(y, rates, 1.0, 17), rtol=1e-12, atol=1e-13)


def _blob_image(N=1, H=15, W=15):
    img = torch.zeros((N, H, W), dtype=torch.float64)
    img[:, 6:9, 6:9] = 1.0  # a bright 3x3 target in the middle
    return img


def test_drift_stationary_distribution():
    # Drift rates r_{p->q} = w exp(gamma (I_q - I_p) / 2) satisfy detailed balance for
    # pi_p = exp(gamma I_p): pi_p r_{p->q} = w exp(gamma (I_p + I_q) / 2) = pi_q r_{q->p}, so the
    # flows along every edge cancel and u0 = pi is stationary.
    gamma, w = 3.0, 1.0
    img = _blob_image()
    img = img + 0.3 * torch.rand(img.shape, dtype=torch.float64, generator=make_generator(38))
    rates = drift_rates(img, w, gamma)
    tau = 1.0 / (4 * w * math.exp(gamma * 1.3 / 2))  # tau * sum_d r <= 1
    pi = torch.exp(gamma * img)
    torch.testing.assert_close(d2d_ext.diffuse(pi, rates, tau, 200), pi, rtol=1e-12, atol=0)


def test_drift_concentrates_mass_on_bright_pixels():
    gamma, w = 3.0, 1.0
    img = _blob_image()
    rates = drift_rates(img, w, gamma)
    tau = 1.0 / (4 * w * math.exp(gamma / 2))
    u0 = torch.ones_like(img)
    bright = img > 0.5
    before = u0[bright].sum().item()  # 9
    out = d2d_ext.diffuse(u0, rates, tau, 400)
    mid = d2d_ext.diffuse(u0, rates, tau, 100)
    after = out[bright].sum().item()
    # The equilibrium puts 9 e^3 / (9 e^3 + 216) = 45 % of the mass (101 of 225) on the target.
    assert mid[bright].sum().item() > 2 * before
    assert after > mid[bright].sum().item()
    assert after > 4 * before
    torch.testing.assert_close(out.sum(), u0.sum(), rtol=1e-12, atol=0)
    # With gamma = 0 (pure diffusion) a uniform field does not move at all.
    flat = d2d_ext.diffuse(u0, drift_rates(img, w, 0.0), tau, 400)
    torch.testing.assert_close(flat, u0, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_compile_forward_fullgraph(backend):
    torch._dynamo.reset()
    u0, rates = random_problem(2, 9, 8, tau=TAU, generator=make_generator(40))

    def f(u, r):
        return d2d_ext.diffuse(u * 2.0, r, TAU, 6) + 1.0

    cf = torch.compile(f, fullgraph=True, backend=backend)
    torch.testing.assert_close(cf(u0, rates), f(u0, rates), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_compile_backward_fullgraph(backend):
    torch._dynamo.reset()
    g = make_generator(41)
    u0, rates = random_problem(2, 9, 8, tau=TAU, generator=g)
    w = torch.randn(u0.shape, dtype=torch.float64, generator=g)

    def f(u, r):
        return (d2d_ext.diffuse(u, r * 1.5, TAU, 6) * w).square().sum()

    cf = torch.compile(f, fullgraph=True, backend=backend)
    u_c, r_c = u0.clone().requires_grad_(True), rates.clone().requires_grad_(True)
    u_e, r_e = u0.clone().requires_grad_(True), rates.clone().requires_grad_(True)
    loss_c = cf(u_c, r_c)
    loss_c.backward()
    loss_e = f(u_e, r_e)
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-13, atol=0)
    torch.testing.assert_close(u_c.grad, u_e.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(r_c.grad, r_e.grad, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _error_cases():
    u = torch.rand((2, 3, 4), dtype=torch.float64)
    r = torch.rand((2, 4, 3, 4), dtype=torch.float64)
    D = "d2d.diffuse: "
    mismatch = re.escape(" (expected (N, 4, H, W) for u0 of shape (N, H, W))")
    return {
        "u0_rank2": (lambda: d2d_ext.diffuse(u[0], r, 0.1, 1), re.escape(D + "u0 must have shape (N, H, W), got [3, 4]")),
        "u0_rank4": (lambda: d2d_ext.diffuse(u[None], r, 0.1, 1), re.escape(D + "u0 must have shape (N, H, W), got [1, 2, 3, 4]")),
        "rates_rank3": (lambda: d2d_ext.diffuse(u, r[0], 0.1, 1), re.escape(D + "rates must have shape (N, 4, H, W), got [4, 3, 4]")),
        "rates_rank5": (lambda: d2d_ext.diffuse(u, r[None], 0.1, 1), re.escape(D + "rates must have shape (N, 4, H, W), got [1, 2, 4, 3, 4]")),
        "rates_3_channels": (lambda: d2d_ext.diffuse(u, r[:, :3], 0.1, 1), re.escape(D + "rates must have shape (N, 4, H, W), got [2, 3, 3, 4]")),
        "N_mismatch": (lambda: d2d_ext.diffuse(u, r[:1], 0.1, 1), re.escape(D + "rates [1, 4, 3, 4] does not match u0 [2, 3, 4]") + mismatch),
        "H_mismatch": (lambda: d2d_ext.diffuse(u, r[:, :, :2], 0.1, 1), re.escape(D + "rates [2, 4, 2, 4] does not match u0 [2, 3, 4]") + mismatch),
        "W_mismatch": (lambda: d2d_ext.diffuse(u[:, :, :3], r, 0.1, 1), re.escape(D + "rates [2, 4, 3, 4] does not match u0 [2, 3, 3]") + mismatch),
        "int32": (lambda: d2d_ext.diffuse(u.int(), r.int(), 0.1, 1), re.escape(D + "u0 must be float32 or float64, got Int")),
        "int64": (lambda: d2d_ext.diffuse(u.long(), r.long(), 0.1, 1), re.escape(D + "u0 must be float32 or float64, got Long")),
        "float16": (lambda: d2d_ext.diffuse(u.half(), r.half(), 0.1, 1), re.escape(D + "u0 must be float32 or float64, got Half")),
        "float32_float64": (lambda: d2d_ext.diffuse(u.float(), r, 0.1, 1), re.escape(D + "u0 and rates must have the same dtype, got Float and Double")),
        "float64_float32": (lambda: d2d_ext.diffuse(u, r.float(), 0.1, 1), re.escape(D + "u0 and rates must have the same dtype, got Double and Float")),
        "negative_steps": (lambda: d2d_ext.diffuse(u, r, 0.1, -1), re.escape(D + "steps must be >= 0, got -1")),
        "negative_tau": (lambda: d2d_ext.diffuse(u, r, -0.5, 1), re.escape(D + "tau must be finite and >= 0, got -0.5")),
        "nan_tau": (lambda: d2d_ext.diffuse(u, r, float("nan"), 1), re.escape(D + "tau must be finite and >= 0, got nan")),
        "inf_tau": (lambda: d2d_ext.diffuse(u, r, float("inf"), 1), re.escape(D + "tau must be finite and >= 0, got inf")),
        "bwd_grad_shape": (
            lambda: bwd(u[:, :2], u, r, 0.1, 1),
            re.escape("d2d.diffuse_backward: grad_out has shape [2, 2, 4], expected [2, 3, 4]"),
        ),
        "bwd_grad_dtype": (
            lambda: bwd(u.float(), u, r, 0.1, 1),
            re.escape("d2d.diffuse_backward: grad_out and u0 must have the same dtype, got Float and Double"),
        ),
        "bwd_checks_args": (lambda: bwd(u, u, r[:, :3], 0.1, 1), re.escape(D + "rates must have shape (N, 4, H, W)")),
        "bwd_negative_steps": (lambda: bwd(u, u, r, 0.1, -2), re.escape(D + "steps must be >= 0, got -2")),
    }


ERROR_CASES = _error_cases()


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_errors(name):
    fn, pattern = ERROR_CASES[name]
    with pytest.raises(RuntimeError, match=pattern):
        fn()


def test_error_with_requires_grad_inputs():
    # The same checks run when the inputs require grad (the autograd kernel in front).
    u = torch.rand((2, 3, 4), dtype=torch.float64, requires_grad=True)
    r = torch.rand((2, 3, 3, 4), dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match=re.escape("d2d.diffuse: rates must have shape (N, 4, H, W)")):
        d2d_ext.diffuse(u, r, 0.1, 1)


@pytest.mark.parametrize("steps", [2.5, 3.0, "3", None])
def test_non_integer_steps_are_refused(steps):
    u, r = torch.rand((1, 3, 4), dtype=torch.float64), torch.rand((1, 4, 3, 4), dtype=torch.float64)
    with pytest.raises(TypeError, match=re.escape(f"d2d.diffuse: steps must be an integer, got {steps!r}")):
        d2d_ext.diffuse(u, r, 0.1, steps)


def test_numpy_integer_steps_are_accepted():
    np = pytest.importorskip("numpy")
    u, r = torch.rand((1, 3, 4), dtype=torch.float64), torch.rand((1, 4, 3, 4), dtype=torch.float64)
    torch.testing.assert_close(d2d_ext.diffuse(u, r, 0.1, np.int64(3)), d2d_ext.diffuse(u, r, 0.1, 3), rtol=0, atol=0)
