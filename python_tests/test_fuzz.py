"""Hardening of the compiled ops: property-based fuzzing (hypothesis) against the plain-torch
references, the documented behaviour on out-of-contract input (broken positivity bound, negative
rates, NaN / Inf, bad tau / smooth / steps, very many steps), and thread safety.

Every hypothesis property runs with ``derandomize=True`` and no example database, so CI sees the
same examples on every run. The tests run on the CPU kernels with one intra-op thread (the
`one_torch_thread` fixture of conftest.py); each input tensor is drawn from a ``torch.Generator`` seeded by the example.
"""

import concurrent.futures
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from conftest import EAST, NORTH, SOUTH, WEST, make_generator, soft_iou_backward, symmetric_rates
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import d2d_ext
from d2d_ext.reference import (
    boundary_mask,
    diffuse_reference,
    soft_iou_of_probabilities,
    soft_iou_reference,
)

OPS = torch.ops.d2d
NAN = float("nan")
INF = float("inf")

def fuzz(max_examples):
    """Repeatable hypothesis settings: fixed example sequence, no database, no deadline."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------
# Layouts: the same values with other strides
# --------------------------------------------------------------------------------------------

LAYOUTS = ["contiguous", "transposed", "reversed", "sliced", "as_strided"]


def restride(t, layout, seed=0):
    """``t``'s values in a tensor with the given memory layout (differentiable in ``t``).

    - ``transposed``: the last two dims swapped in memory; ``reversed``: every dim reversed in
      memory (column-major); ``sliced``: a strided view of a larger NaN-filled buffer;
      ``as_strided``: dims in a random order with gaps, in a NaN-filled buffer with an offset.
    The NaN padding makes any read outside the view show up in the result.
    """
    if layout == "contiguous" or t.dim() == 0:
        return t.contiguous()
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "reversed" or layout == "transposed":
        dims = list(range(t.dim()))[::-1]
        return t.permute(dims).contiguous().permute(dims)
    if layout == "sliced":
        big = torch.full(t.shape[:-1] + (3 * t.shape[-1] + 1,), NAN, dtype=t.dtype)
        view = big[..., 1::3]
        return view.copy_(t)  # differentiable in t (AsStridedBackward through the buffer)
    assert layout == "as_strided", layout
    g = make_generator(seed)
    order = torch.randperm(t.dim(), generator=g).tolist()  # innermost first
    gap = int(torch.randint(0, 3, (1,), generator=g))
    strides = [0] * t.dim()
    step = 1
    for d in order:
        strides[d] = step
        step *= t.shape[d] + gap
    offset = gap + 1
    span = sum(max(t.shape[d] - 1, 0) * strides[d] for d in range(t.dim())) + 1
    buf = torch.full((offset + span + gap,), NAN, dtype=t.dtype)
    view = buf.as_strided(tuple(t.shape), tuple(strides), offset)
    return view.copy_(t)


# --------------------------------------------------------------------------------------------
# diffuse: strategies and problem builder
# --------------------------------------------------------------------------------------------

SHAPES = st.one_of(
    st.tuples(st.integers(1, 8), st.integers(1, 8)),  # from 1x1
    st.tuples(st.just(1), st.integers(1, 300)),  # 1 x W strips
    st.tuples(st.integers(1, 300), st.just(1)),  # H x 1 strips
    st.tuples(st.integers(2, 3), st.integers(100, 300)),  # thin strips with row wraps
    st.tuples(st.integers(9, 40), st.integers(9, 40)),
    st.tuples(st.integers(81, 120), st.integers(81, 120)),  # float64: row-wavefront path
)


@st.composite
def diffuse_cases(draw, small=False, max_steps=40):
    N = draw(st.integers(0, 3))
    if small:
        H, W = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    else:
        H, W = draw(SHAPES)
    return {
        "N": N,
        "H": H,
        "W": W,
        "steps": draw(st.integers(0, max_steps)),
        "u_kind": draw(st.sampled_from(["rand", "signed", "corner", "const"])),
        "r_kind": draw(st.sampled_from(["rand", "sparse", "symmetric", "zero", "const"])),
        "u_layout": draw(st.sampled_from(LAYOUTS + ["expand"])),
        "r_layout": draw(st.sampled_from(LAYOUTS + ["expand"])),
        "frac": draw(st.one_of(st.just(1.0), st.just(0.0), st.floats(0.0, 1.0))),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def inside_total_rate(rates):
    """Max over pixels of the total rate toward in-image neighbours (float64)."""
    if rates.numel() == 0:
        return 0.0
    r = rates.double() * boundary_mask(rates.shape, torch.float64)
    return r.sum(1).max().item()


def to_dtype_tau(tau, dtype):
    """``tau`` as the kernel sees it (``T(tau)``)."""
    return torch.tensor(tau, dtype=dtype).item()


def build_diffuse(case, dtype, requires_grad=False):
    """``(u0, rates, tau, leaves)`` of a case: u0 and rates in the case's layouts (``leaves`` are
    the tensors to differentiate against: the expanded ones' bases)."""
    N, H, W, seed = case["N"], case["H"], case["W"], case["seed"]
    g = make_generator(seed)
    uN = 1 if case["u_layout"] == "expand" else N
    kind = case["u_kind"]
    if kind == "rand":
        u = torch.rand((uN, H, W), dtype=torch.float64, generator=g)
    elif kind == "signed":
        u = torch.rand((uN, H, W), dtype=torch.float64, generator=g) * 2 - 1
    elif kind == "const":
        u = torch.full((uN, H, W), 0.75, dtype=torch.float64)
    else:  # one-hot at one of the four corners, a different one per sample
        u = torch.zeros((uN, H, W), dtype=torch.float64)
        corners = [(0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)]
        for n in range(uN):
            y, x = corners[(seed + n) % 4]
            u[n, y, x] = 1.0
    rN = 1 if case["r_layout"] == "expand" else N
    kind = case["r_kind"]
    if kind == "rand":
        r = torch.rand((rN, 4, H, W), dtype=torch.float64, generator=g)
    elif kind == "sparse":
        r = torch.rand((rN, 4, H, W), dtype=torch.float64, generator=g)
        r = r * (torch.rand((rN, 4, H, W), dtype=torch.float64, generator=g) < 0.3)
    elif kind == "symmetric":
        r = symmetric_rates(rN, H, W, generator=g)
    elif kind == "zero":
        r = torch.zeros((rN, 4, H, W), dtype=torch.float64)
    else:  # one rate per direction and sample, stride 0 along H and W
        r = torch.rand((rN, 4, 1, 1), dtype=torch.float64, generator=g)
    u, r = u.to(dtype), r.to(dtype)
    if requires_grad:
        u.requires_grad_(True)
        r.requires_grad_(True)
    leaves = (u, r)
    u0 = u.expand(N, H, W) if case["u_layout"] == "expand" else restride(u, case["u_layout"], seed)
    if kind == "const" or case["r_layout"] == "expand":
        rates = r.expand(N, 4, H, W)
    else:
        rates = restride(r, case["r_layout"], seed + 1)
    total = inside_total_rate(rates.detach())
    tau = case["frac"] / total if total > 0 else 10.0 * case["frac"]
    return u0, rates, to_dtype_tau(tau, dtype), leaves


def assert_diffuse_matches(out, u0, rates, tau, steps, rtol):
    """``out`` against the float64 reference on the same values, ``max|err| <= rtol * scale``."""
    ref = diffuse_reference(u0.detach().double(), rates.detach().double(), tau, steps)
    assert out.shape == ref.shape and out.is_contiguous()
    if ref.numel() == 0:
        return
    scale = max(u0.detach().double().abs().max().item(), 1e-300)
    err = (out.double() - ref).abs().max().item()
    assert err <= rtol * scale, f"max abs error {err:.3e} > {rtol:.1e} * {scale:.3e}"


# --------------------------------------------------------------------------------------------
# 1. diffuse against the reference
# --------------------------------------------------------------------------------------------


@fuzz(150)
@given(case=diffuse_cases())
def test_diffuse_forward_float64_matches_reference(case):
    u0, rates, tau, _ = build_diffuse(case, torch.float64)
    out = d2d_ext.diffuse(u0, rates, tau, case["steps"])
    assert_diffuse_matches(out, u0, rates, tau, case["steps"], 1e-12)
    if out.numel():
        # Mass is conserved; within the positivity bound a non-negative u0 stays non-negative.
        mass0 = u0.sum((1, 2))
        torch.testing.assert_close(out.sum((1, 2)), mass0, rtol=0, atol=1e-12 * (u0.abs().sum().item() + 1))
        if case["u_kind"] != "signed":
            assert out.min().item() >= -1e-14 * u0.max().item()


@fuzz(100)
@given(case=diffuse_cases())
def test_diffuse_forward_float32_matches_reference(case):
    u0, rates, tau, _ = build_diffuse(case, torch.float32)
    out = d2d_ext.diffuse(u0, rates, tau, case["steps"])
    assert out.dtype == torch.float32
    assert_diffuse_matches(out, u0, rates, tau, case["steps"], 2e-5)
    if out.numel():
        rel = (out.double().sum((1, 2)) - u0.double().sum((1, 2))).abs().max().item()
        assert rel <= 1e-5 * (u0.double().abs().sum((1, 2)).max().item() + 1e-30)
        if case["u_kind"] != "signed":
            assert out.min().item() >= -1e-6 * u0.max().item()


@fuzz(100)
@given(case=diffuse_cases(small=True, max_steps=8), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_diffuse_backward_matches_autograd_through_reference(case, dtype):
    u0, rates, tau, (u_leaf, r_leaf) = build_diffuse(case, dtype, requires_grad=True)
    steps = case["steps"]
    grad_out = torch.randn(u0.shape, dtype=dtype, generator=make_generator(case["seed"] + 7))
    out = d2d_ext.diffuse(u0, rates, tau, steps)
    gu, gr = torch.autograd.grad(out, (u_leaf, r_leaf), grad_out, allow_unused=True)
    # The reference, in float64, through the same expand/restride graph.
    u64 = u_leaf.detach().double().requires_grad_(True)
    r64 = r_leaf.detach().double().requires_grad_(True)
    u0_64 = u64.expand(u0.shape) if case["u_layout"] == "expand" else u64
    rates_64 = r64.expand(rates.shape)
    ref = diffuse_reference(u0_64, rates_64, tau, steps)
    if ref.requires_grad:
        gu_ref, gr_ref = torch.autograd.grad(ref, (u64, r64), grad_out.double(), allow_unused=True)
    else:
        gu_ref = gr_ref = None
    gu_ref = torch.zeros_like(u64) if gu_ref is None else gu_ref
    gr_ref = torch.zeros_like(r64) if gr_ref is None else gr_ref
    gu = torch.zeros_like(u_leaf) if gu is None else gu
    gr = torch.zeros_like(r_leaf) if gr is None else gr
    rtol = 1e-11 if dtype == torch.float64 else 1e-4
    for name, got, want in (("u0", gu, gu_ref), ("rates", gr, gr_ref)):
        assert got.shape == want.shape and got.dtype == dtype
        if want.numel():
            g_max = grad_out.abs().max().item() if grad_out.numel() else 0.0
            scale = max(want.abs().max().item(), g_max, 1e-30)
            err = (got.double() - want).abs().max().item()
            assert err <= rtol * scale, f"grad {name}: {err:.3e} > {rtol:.0e} * {scale:.3e}"


# --------------------------------------------------------------------------------------------
# 1. soft_iou against the reference
# --------------------------------------------------------------------------------------------

EXTREMES = [80.0, -80.0, 1e4, -1e4]


def exact_sigmoid(x):
    """``sigmoid(x)`` whose autograd slope is ``e / (1 + e)^2`` with ``e = exp(-|x|)``: exact where
    ``torch.sigmoid``'s ``p (1 - p)`` rounds to 0 (p = 1 in float64 from x = 37 on), as the op's is."""
    pos = 1 / (1 + torch.exp(-x.clamp(min=0)))
    e = torch.exp(x.clamp(max=0))
    return torch.where(x >= 0, pos, e / (1 + e))


def soft_iou_exact_slope(logits, target, smooth):
    """The soft-IoU formula on ``exact_sigmoid``: the reference for the op's gradients."""
    return soft_iou_of_probabilities(exact_sigmoid(logits), target, smooth)


@st.composite
def soft_iou_cases(draw):
    inner = draw(
        st.one_of(
            st.just(()),  # (N,) 1-D
            st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),  # up to (N, C, H, W)
            st.tuples(st.integers(4090, 4110)),  # around the CPU kernel's 4096-element block
            st.tuples(st.integers(1, 2), st.integers(40, 70), st.integers(40, 70)),
        )
    )
    return {
        "shape": (draw(st.integers(0, 3)),) + inner,
        "scale": draw(st.sampled_from([0.1, 1.0, 10.0, 80.0])),
        "p_extreme": draw(st.sampled_from([0.0, 0.3, 1.0])),
        "t_kind": draw(st.sampled_from(["uniform", "zero", "one", "binary"])),
        "smooth": draw(st.one_of(st.just(1.0), st.floats(1e-3, 10.0))),
        "x_layout": draw(st.sampled_from(LAYOUTS + ["expand"])),
        "t_layout": draw(st.sampled_from(LAYOUTS + ["expand"])),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def build_soft_iou(case, dtype, requires_grad=False):
    shape, seed = case["shape"], case["seed"]
    g = make_generator(seed)
    x_shape = (1,) + shape[1:] if case["x_layout"] == "expand" else shape
    t_shape = (1,) + shape[1:] if case["t_layout"] == "expand" else shape
    x = torch.randn(x_shape, dtype=torch.float64, generator=g) * case["scale"]
    ext = torch.tensor(EXTREMES, dtype=torch.float64)[torch.randint(0, 4, x_shape, generator=g)]
    x = torch.where(torch.rand(x_shape, dtype=torch.float64, generator=g) < case["p_extreme"], ext, x)
    kind = case["t_kind"]
    if kind == "uniform":
        t = torch.rand(t_shape, dtype=torch.float64, generator=g)
    elif kind == "zero":
        t = torch.zeros(t_shape, dtype=torch.float64)
    elif kind == "one":
        t = torch.ones(t_shape, dtype=torch.float64)
    else:
        t = (torch.rand(t_shape, dtype=torch.float64, generator=g) < 0.2).double()
    x, t = x.to(dtype), t.to(dtype)
    if requires_grad:
        x.requires_grad_(True)
        t.requires_grad_(True)
    leaves = (x, t)
    xv = x.expand(shape) if case["x_layout"] == "expand" else restride(x, case["x_layout"], seed)
    tv = t.expand(shape) if case["t_layout"] == "expand" else restride(t, case["t_layout"], seed + 1)
    return xv, tv, leaves


@fuzz(150)
@given(case=soft_iou_cases(), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_soft_iou_forward_matches_reference(case, dtype):
    x, t, _ = build_soft_iou(case, dtype)
    loss = d2d_ext.soft_iou(x, t, case["smooth"])
    ref = soft_iou_reference(x.double(), t.double(), case["smooth"])
    assert loss.shape == (case["shape"][0],) and loss.dtype == dtype
    assert not loss.isnan().any()
    assert (loss >= 0).all() and (loss <= 1).all(), loss
    atol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(loss.double(), ref, rtol=0, atol=atol)


@fuzz(100)
@given(case=soft_iou_cases(), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_soft_iou_backward_matches_autograd_through_reference(case, dtype):
    x, t, (x_leaf, t_leaf) = build_soft_iou(case, dtype, requires_grad=True)
    smooth = case["smooth"]
    grad_loss = torch.randn((case["shape"][0],), dtype=dtype, generator=make_generator(case["seed"] + 3))
    loss = d2d_ext.soft_iou(x, t, smooth)
    gx, gt = torch.autograd.grad(loss, (x_leaf, t_leaf), grad_loss)
    x64 = x_leaf.detach().double().requires_grad_(True)
    t64 = t_leaf.detach().double().requires_grad_(True)
    ref = soft_iou_exact_slope(x64.expand(x.shape), t64.expand(t.shape), smooth)
    gx_ref, gt_ref = torch.autograd.grad(ref, (x64, t64), grad_loss.double())
    rtol = 1e-10 if dtype == torch.float64 else 2e-4
    for name, got, want in (("logits", gx, gx_ref), ("target", gt, gt_ref)):
        assert got.shape == want.shape and got.dtype == dtype
        assert got.isfinite().all()
        if want.numel():
            scale = max(want.abs().max().item(), 1e-30)
            err = (got.double() - want).abs().max().item()
            # float32: the op's sigmoid floors at exp(-87) where the reference gives 0.
            assert err <= rtol * scale + (1e-30 if dtype == torch.float32 else 0), (
                f"grad {name}: {err:.3e} > {rtol:.0e} * {scale:.3e}"
            )


# --------------------------------------------------------------------------------------------
# 2. diffuse outside the contract: broken positivity bound, negative rates
# --------------------------------------------------------------------------------------------


@fuzz(60)
@given(case=diffuse_cases(max_steps=10), factor=st.floats(1.01, 3.0))
def test_diffuse_beyond_positivity_bound_is_the_same_linear_map(case, factor):
    """tau * sum_d r > 1: no check, the same linear map; mass conserved, values may go negative."""
    case = dict(case, frac=1.0, r_kind="rand" if case["r_kind"] in ("zero", "const") else case["r_kind"])
    u0, rates, tau, _ = build_diffuse(case, torch.float64)
    tau = tau * factor
    out = d2d_ext.diffuse(u0, rates, tau, case["steps"])
    ref = diffuse_reference(u0, rates, tau, case["steps"])
    if ref.numel():
        scale = max(ref.abs().max().item(), u0.abs().max().item(), 1e-300)
        assert (out - ref).abs().max().item() <= 1e-11 * scale
        mass_err = (out.sum((1, 2)) - u0.sum((1, 2))).abs().max().item()
        assert mass_err <= 1e-11 * scale * max(case["H"] * case["W"], 1)


def test_diffuse_beyond_positivity_bound_goes_negative():
    # Pixel 0 sends 3 tau of its mass east per step with tau = 1: u' = (1 - 3, 3).
    for dtype in (torch.float32, torch.float64):
        u0 = torch.tensor([[[1.0, 0.0]]], dtype=dtype)
        r = torch.zeros((1, 4, 1, 2), dtype=dtype)
        r[0, EAST, 0, 0] = 3.0
        out = d2d_ext.diffuse(u0, r, 1.0, 1)
        assert out.tolist() == [[[-2.0, 3.0]]]
        out = d2d_ext.diffuse(u0, r, 1.0, 2)  # (-2, 3) -> (-2 - 3 * -2, 3 + 3 * -2)
        assert out.tolist() == [[[4.0, -3.0]]]
        assert out.sum().item() == 1.0


@fuzz(60)
@given(case=diffuse_cases(max_steps=12))
def test_diffuse_negative_rates_are_the_same_linear_map(case):
    """Negative rates are not checked: the same linear map; mass still conserved."""
    N, H, W = case["N"], case["H"], case["W"]
    g = make_generator(case["seed"] + 11)
    u0 = torch.rand((N, H, W), dtype=torch.float64, generator=g)
    layout = "contiguous" if case["r_layout"] == "expand" else case["r_layout"]
    rates = restride(torch.rand((N, 4, H, W), dtype=torch.float64, generator=g) * 2 - 1, layout)
    tau = 0.25 * case["frac"]
    out = d2d_ext.diffuse(u0, rates, tau, case["steps"])
    ref = diffuse_reference(u0, rates, tau, case["steps"])
    if ref.numel():
        scale = max(ref.abs().max().item(), 1.0)
        assert (out - ref).abs().max().item() <= 1e-11 * scale
        assert (out.sum((1, 2)) - u0.sum((1, 2))).abs().max().item() <= 1e-11 * scale * H * W


def test_diffuse_negative_rate_hand_computed():
    # A negative east rate at pixel 0 pulls mass from pixel 1: u' = (1 + 0.5, -0.5).
    u0 = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    r = torch.zeros((1, 4, 1, 2), dtype=torch.float64)
    r[0, EAST, 0, 0] = -0.5
    assert d2d_ext.diffuse(u0, r, 1.0, 1).tolist() == [[[1.5, -0.5]]]


# --------------------------------------------------------------------------------------------
# 2. diffuse with NaN / Inf
# --------------------------------------------------------------------------------------------


def within_steps(H, W, y0, x0, steps):
    """``(H, W)`` bool: the pixels at grid (Manhattan) distance <= steps from (y0, x0)."""
    ys = torch.arange(H).view(H, 1)
    xs = torch.arange(W).view(1, W)
    return (ys - y0).abs() + (xs - x0).abs() <= steps


@st.composite
def nonfinite_cases(draw):
    """A bad value at (y0, x0) of sample n0, up to 12 steps (far enough to reach the edge columns,
    where the plane sweep's ghost columns once leaked it into the next row)."""
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    N = draw(st.integers(1, 3))
    H, W = draw(
        st.one_of(
            st.tuples(st.integers(1, 12), st.integers(1, 12)),
            st.tuples(st.just(1), st.integers(1, 200)),
            st.tuples(st.integers(1, 200), st.just(1)),
            st.tuples(st.integers(111, 125), st.integers(111, 125)),  # wavefront in both dtypes
        )
    )
    y0, x0 = draw(st.integers(0, H - 1)), draw(st.integers(0, W - 1))
    max_steps = 12
    return {
        "dtype": dtype,
        "N": N,
        "H": H,
        "W": W,
        "n0": draw(st.integers(0, N - 1)),
        "y0": y0,
        "x0": x0,
        "steps": draw(st.integers(0, max_steps)),
        "value": draw(st.sampled_from([NAN, INF, -INF])),
        "zero_rates": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def clean_problem(c):
    g = make_generator(c["seed"])
    u0 = torch.rand((c["N"], c["H"], c["W"]), dtype=torch.float64, generator=g)
    rates = torch.rand((c["N"], 4, c["H"], c["W"]), dtype=torch.float64, generator=g) * 0.25
    if c["zero_rates"]:
        rates.zero_()
    return u0.to(c["dtype"]), rates.to(c["dtype"])


@fuzz(100)
@given(c=nonfinite_cases())
def test_nonfinite_u0_reaches_only_pixels_within_steps(c):
    """A NaN / Inf in u0 makes exactly the pixels within `steps` grid steps of it non-finite
    (whatever the rates: 0 * NaN is NaN), and so the sample's mass; every other pixel and every
    other sample is bit-for-bit the result without it."""
    u0, rates = clean_problem(c)
    n0, y0, x0, steps = c["n0"], c["y0"], c["x0"], c["steps"]
    bad = u0.clone()
    bad[n0, y0, x0] = c["value"]
    out = d2d_ext.diffuse(bad, rates, 0.5, steps)
    clean = d2d_ext.diffuse(u0, rates, 0.5, steps)
    reach = within_steps(c["H"], c["W"], y0, x0, steps)
    assert torch.equal(~out[n0].isfinite(), reach)
    assert torch.equal(out[n0][~reach], clean[n0][~reach])
    assert not out[n0].sum().isfinite()
    others = [n for n in range(c["N"]) if n != n0]
    assert torch.equal(out[others], clean[others])
    # The reference has the same non-finite pixels (where the op keeps +-Inf at a source with
    # positive out-rates, the reference's u - tau r u gives Inf - Inf = NaN instead).
    ref = diffuse_reference(bad.double(), rates.double(), 0.5, steps)
    assert torch.equal(~ref.isfinite(), ~out.isfinite())


@fuzz(80)
@given(c=nonfinite_cases(), d=st.sampled_from([EAST, WEST, SOUTH, NORTH]))
def test_nonfinite_inside_rate_matches_reference_pattern(c, d):
    """A NaN / Inf rate toward an in-image neighbour: the non-finite pixels are those of the
    reference (p from step 1 and q_d(p), then spreading one pixel per step), the finite ones match
    it, and other samples are untouched."""
    H, W, y0, x0 = c["H"], c["W"], c["y0"], c["x0"]
    inside = {EAST: x0 + 1 < W, WEST: x0 > 0, SOUTH: y0 + 1 < H, NORTH: y0 > 0}[d]
    u0, rates = clean_problem(c)
    bad = rates.clone()
    bad[c["n0"], d, y0, x0] = c["value"]
    out = d2d_ext.diffuse(u0, bad, 0.5, c["steps"])
    clean = d2d_ext.diffuse(u0, rates, 0.5, c["steps"])
    others = [n for n in range(c["N"]) if n != c["n0"]]
    assert torch.equal(out[others], clean[others])
    if not inside:
        # A rate that points outside the image is ignored, whatever its value.
        assert torch.equal(out, clean)
        return
    ref = diffuse_reference(u0.double(), bad.double(), 0.5, c["steps"])
    finite = ref.isfinite()
    assert torch.equal(out.isfinite(), finite)
    if c["steps"] >= 1:
        assert not out[c["n0"], y0, x0].isfinite()
    tol = 1e-12 if c["dtype"] == torch.float64 else 1e-5
    torch.testing.assert_close(out.double()[finite], ref[finite], rtol=0, atol=tol)


@fuzz(40)
@given(
    case=diffuse_cases(small=True, max_steps=10),
    value=st.sampled_from([NAN, INF, -INF, "huge"]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_rates_pointing_outside_are_ignored_even_if_nonfinite(case, value, dtype):
    """Rates toward outside the image are ignored bit for bit, forward and backward, even NaN /
    Inf (the plain-torch reference, which masks them by multiplication, gives NaN there)."""
    case = dict(case, r_layout="contiguous", r_kind="rand", u_layout="contiguous")
    u0, rates, tau, _ = build_diffuse(case, dtype)
    if value == "huge":
        value = torch.finfo(dtype).max
    outside = boundary_mask(rates.shape, dtype).expand(rates.shape) == 0
    junk = rates.masked_fill(outside, value)
    grad_out = torch.randn(u0.shape, dtype=dtype, generator=make_generator(case["seed"]))
    steps = case["steps"]
    assert torch.equal(d2d_ext.diffuse(u0, junk, tau, steps), d2d_ext.diffuse(u0, rates, tau, steps))
    gu_j, gr_j = OPS.diffuse_backward.default(grad_out, u0, junk, tau, steps)
    gu, gr = OPS.diffuse_backward.default(grad_out, u0, rates, tau, steps)
    assert torch.equal(gu_j, gu) and torch.equal(gr_j, gr)
    assert (gr_j[outside] == 0).all()


@pytest.mark.parametrize("value", [NAN, INF])
@pytest.mark.parametrize("size", [(2, 5, 6), (2, 100, 100)], ids=["plane_sweep", "wavefront"])
def test_nonfinite_u0_does_not_touch_grad_u0(size, value):
    """The map is linear in u0, so grad_u0 does not depend on u0: bit for bit the same with a NaN /
    Inf in u0 (grad_rates of that sample may become non-finite, other samples' stay exact)."""
    N, H, W = size
    g = make_generator(5)
    u0 = torch.rand(size, dtype=torch.float64, generator=g)
    rates = torch.rand((N, 4, H, W), dtype=torch.float64, generator=g) * 0.25
    grad = torch.rand(size, dtype=torch.float64, generator=g)
    bad = u0.clone()
    bad[0, H // 2, W // 2] = value
    gu_bad, gr_bad = OPS.diffuse_backward.default(grad, bad, rates, 0.5, 7)
    gu, gr = OPS.diffuse_backward.default(grad, u0, rates, 0.5, 7)
    assert torch.equal(gu_bad, gu)
    assert torch.equal(gr_bad[1], gr[1])
    assert not gr_bad[0].isfinite().all()


def test_nonfinite_does_not_wrap_rows_on_plane_sweep_path():
    """Regression: on the CPU plane-sweep path (padded plane <= 48 KiB) a NaN at an edge column
    used to leak through the ghost column (0 * NaN) into the next row's opposite edge."""
    u0 = torch.zeros((1, 3, 10), dtype=torch.float64)
    u0[0, 0, 9] = NAN
    rates = torch.zeros((1, 4, 3, 10), dtype=torch.float64)
    out = d2d_ext.diffuse(u0, rates, 0.1, 3)
    # (1, 0) is 10 grid steps from (0, 9): the reference keeps it finite.
    assert diffuse_reference(u0, rates, 0.1, 3)[0, 1, 0].isfinite()
    assert out[0, 1, 0].isfinite(), "NaN at (0, 9) reached (1, 0) in 3 steps"


@pytest.mark.parametrize("where", ["rates", "grad_out"])
def test_nonfinite_sample_does_not_leak_into_next_sample_gradient(where):
    """Regression: the checkpointed CPU backward reuses planes between samples; their ghost cells
    used to keep the previous sample's NaN."""
    g = make_generator(9)
    u0 = torch.rand((2, 3, 4), dtype=torch.float64, generator=g)
    rates = torch.rand((2, 4, 3, 4), dtype=torch.float64, generator=g) * 0.2
    grad = torch.rand((2, 3, 4), dtype=torch.float64, generator=g)
    if where == "rates":
        rates[0, :, 0, 3] = NAN
    else:
        grad[0, 0, 3] = NAN
    steps = 300_000  # > 8 MiB / state bytes: the checkpointed (multi-segment) plan, ~0.05 s
    gu, gr = OPS.diffuse_backward.default(grad, u0, rates, 0.5, steps)
    gu1, gr1 = OPS.diffuse_backward.default(grad[1:], u0[1:], rates[1:], 0.5, steps)
    assert gu1.isfinite().all() and gr1.isfinite().all()  # sample 1 alone is fine
    assert torch.equal(gu[1], gu1[0]), "sample 0's NaN reached sample 1's grad_u0"
    assert torch.equal(gr[1], gr1[0])


# --------------------------------------------------------------------------------------------
# 2. diffuse: tau, steps
# --------------------------------------------------------------------------------------------


def _small_problem(requires_grad=False):
    g = make_generator(1)
    u0 = torch.rand((2, 3, 4), dtype=torch.float64, generator=g).requires_grad_(requires_grad)
    rates = torch.rand((2, 4, 3, 4), dtype=torch.float64, generator=g).requires_grad_(requires_grad)
    return u0, rates


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize(
    "tau, shown", [(NAN, "nan"), (INF, "inf"), (-INF, "-inf"), (-1e-300, "-1e-300"), (-0.5, "-0.5")]
)
def test_bad_tau_is_refused(tau, shown, requires_grad):
    u0, rates = _small_problem(requires_grad)
    msg = f"d2d.diffuse: tau must be finite and >= 0, got {shown}"
    with pytest.raises(RuntimeError) as info:
        d2d_ext.diffuse(u0, rates, tau, 3)
    assert str(info.value).startswith(msg), str(info.value)
    with pytest.raises(RuntimeError) as info:
        OPS.diffuse_backward.default(u0.detach(), u0.detach(), rates.detach(), tau, 3)
    assert str(info.value).startswith(msg), str(info.value)


def test_tau_zero_and_negative_zero_are_identity():
    u0, rates = _small_problem()
    for tau in (0.0, -0.0):
        assert torch.equal(d2d_ext.diffuse(u0, rates, tau, 5), u0)


@pytest.mark.parametrize("steps, shown", [(-1, "-1"), (-(2**63), str(-(2**63)))])
def test_negative_steps_are_refused(steps, shown):
    u0, rates = _small_problem()
    with pytest.raises(RuntimeError) as info:
        d2d_ext.diffuse(u0, rates, 0.1, steps)
    assert str(info.value).startswith(f"d2d.diffuse: steps must be >= 0, got {shown}")


def test_steps_beyond_int64_are_refused_by_the_schema():
    u0, rates = _small_problem()
    with pytest.raises(RuntimeError, match="Expected a value of type 'int' for argument 'steps'"):
        d2d_ext.diffuse(u0, rates, 0.1, 2**63)


def test_fractional_steps_are_refused_by_wrapper_and_op():
    """2.7 steps is an error, not 2 steps: the Python wrapper raises TypeError, the op refuses a
    float; NaN too."""
    u0, rates = _small_problem()
    with pytest.raises(TypeError, match="d2d.diffuse: steps must be an integer, got 2.7"):
        d2d_ext.diffuse(u0, rates, 0.1, 2.7)
    with pytest.raises(RuntimeError, match="Expected a value of type 'int' for argument 'steps'"):
        OPS.diffuse.default(u0, rates, 0.1, 2.7)
    with pytest.raises(TypeError, match="d2d.diffuse: steps must be an integer, got nan"):
        d2d_ext.diffuse(u0, rates, 0.1, NAN)


def test_many_steps_zero_rates_keep_u0_exactly():
    # a = 1 - 0 exactly, so every step is the identity, bit for bit.
    for shape in [(1, 1, 1), (2, 2, 2)]:
        u0 = torch.rand(shape, dtype=torch.float64, generator=make_generator(2))
        rates = torch.zeros(shape[:1] + (4,) + shape[1:], dtype=torch.float64)
        assert torch.equal(d2d_ext.diffuse(u0, rates, 0.3, 2**22), u0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_many_steps_symmetric_uniform_rates_reach_the_mean(dtype):
    """2**20 steps (about 0.02 s forward, 0.1 s backward on one core): symmetric uniform rates
    converge to the uniform field with the sample's mean; the checkpointed backward (1024 segments
    of 1024 steps) gives the converged gradients: u0's is (A^T)^k g = mean(g), the rates' collects
    the last few steps only, so it equals the reference's at 64 steps, up to rounding that grows
    linearly with the step count (about 3e-17 per step in float64 and 7e-9 per step in float32
    here, the float32 reference's own rate (4096 steps: 5e-5) included)."""
    steps = 2**20
    u0 = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.2, 0.9], [0.4, 0.1]]], dtype=dtype)
    rates = torch.full((2, 4, 2, 2), 0.5, dtype=dtype)
    out = d2d_ext.diffuse(u0, rates, 0.5, steps)
    mean = u0.double().mean((1, 2), keepdim=True).expand(u0.shape)
    torch.testing.assert_close(out.double(), mean, rtol=0, atol=1e-15 if dtype == torch.float64 else 1e-7)
    u = u0.clone().requires_grad_(True)
    r = rates.clone().requires_grad_(True)
    grad = torch.rand(u0.shape, dtype=dtype, generator=make_generator(4))
    gu, gr = torch.autograd.grad(d2d_ext.diffuse(u, r, 0.5, steps), (u, r), grad)
    u64, r64 = u0.double().requires_grad_(True), rates.double().requires_grad_(True)
    gu_ref, gr_ref = torch.autograd.grad(diffuse_reference(u64, r64, 0.5, 64), (u64, r64), grad.double())
    assert gr_ref.abs().max().item() > 0.1
    eps, per_step = (1e-16, 1e-16) if dtype == torch.float64 else (1e-7, 2e-8)
    grad_mean = grad.double().mean((1, 2), keepdim=True).expand(u0.shape)
    torch.testing.assert_close(gu.double(), grad_mean, rtol=0, atol=10 * eps)
    torch.testing.assert_close(gu.double(), gu_ref, rtol=0, atol=10 * eps)
    torch.testing.assert_close(gr.double(), gr_ref, rtol=0, atol=per_step * steps)


def test_steps_past_int32_are_counted_in_int64():
    """steps = 2**31 + 5: the CPU loops count in int64 (no int32 counter to wrap to a negative
    or small count), so the call really iterates: a 1x2 swap map (tau * r = 1) is still running
    after 1 s (2**31 steps take about 15 s here). A count truncated to int32 would instead end at
    once with an error or a wrong parity; if it ends, its result must be the swap."""
    code = textwrap.dedent(
        """
        import sys, torch, d2d_ext
        torch.set_num_threads(1)
        u0 = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
        r = torch.zeros((1, 4, 1, 2), dtype=torch.float64)
        r[0, 0, 0, 0] = 1.0
        r[0, 1, 0, 1] = 1.0
        assert d2d_ext.diffuse(u0, r, 1.0, 5).tolist() == [[[0.0, 1.0]]]
        print("ready", flush=True)
        out = d2d_ext.diffuse(u0, r, 1.0, 2**31 + 5)
        print("done", out.tolist(), flush=True)
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cwd = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", (line, proc.stderr.read() if proc.poll() is not None else "")
        t0 = time.monotonic()
        try:
            out, err = proc.communicate(timeout=1.0)
        except subprocess.TimeoutExpired:
            return  # still iterating after 1 s: the count was not truncated
        elapsed = time.monotonic() - t0
        assert proc.returncode == 0, err
        assert out.strip() == "done [[[0.0, 1.0]]]", (out, elapsed)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# --------------------------------------------------------------------------------------------
# 2. soft_iou outside the contract
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "where, value",
    [("logits", NAN), ("target", NAN), ("target", INF), ("target", -INF)],
)
def test_soft_iou_nonfinite_poisons_only_its_sample(where, value, dtype):
    """A NaN logit, or a NaN / Inf target, makes that sample's loss and all its gradients NaN;
    other samples are bit for bit unchanged."""
    g = make_generator(3)
    x = torch.randn((3, 2, 5, 5), dtype=torch.float64, generator=g).to(dtype)
    t = torch.rand((3, 2, 5, 5), dtype=torch.float64, generator=g).to(dtype)
    bx, bt = x.clone(), t.clone()
    (bx if where == "logits" else bt)[1, 0, 2, 3] = value
    loss = d2d_ext.soft_iou(bx, bt)
    clean = d2d_ext.soft_iou(x, t)
    assert loss[1].isnan()
    assert torch.equal(loss[[0, 2]], clean[[0, 2]])
    torch.testing.assert_close(loss, soft_iou_reference(bx, bt), equal_nan=True, rtol=0, atol=1e-5)
    grad = torch.ones(3, dtype=dtype)
    gx, gt = soft_iou_backward(grad, bx, bt, 1.0)
    gx0, gt0 = soft_iou_backward(grad, x, t, 1.0)
    assert gx[1].isnan().all() and gt[1].isnan().all()
    assert torch.equal(gx[[0, 2]], gx0[[0, 2]]) and torch.equal(gt[[0, 2]], gt0[[0, 2]])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_soft_iou_infinite_logits_act_as_saturated(sign, dtype):
    """+-Inf logits give a finite loss in [0, 1], bit for bit the loss (and gradients) at +-1e4."""
    g = make_generator(4)
    x = torch.randn((2, 3, 7), dtype=torch.float64, generator=g).to(dtype)
    t = torch.rand((2, 3, 7), dtype=torch.float64, generator=g).to(dtype)
    x[:, 1] = sign * INF
    x_big = x.clone()
    x_big[:, 1] = sign * 1e4
    loss = d2d_ext.soft_iou(x, t)
    assert loss.isfinite().all() and (loss >= 0).all() and (loss <= 1).all()
    assert torch.equal(loss, d2d_ext.soft_iou(x_big, t))
    grad = torch.rand(2, dtype=dtype, generator=g)
    got = soft_iou_backward(grad, x, t, 1.0)
    want = soft_iou_backward(grad, x_big, t, 1.0)
    assert all(a.isfinite().all() for a in got)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_soft_iou_smooth_zero_empty_prediction_and_target():
    """smooth = 0 with an all-zero target and saturated-negative logits: in float64 p underflows
    to 0, the union is 0, and the op defines the loss as 0 (two empty sets match), where the
    plain formula (the reference) gives 0 / 0 = NaN; float32 returns 1 because its sigmoid
    floors at exp(-87) > 0, so its union is not 0."""
    x = torch.full((1, 4), -1e4, dtype=torch.float64)
    t = torch.zeros((1, 4), dtype=torch.float64)
    assert d2d_ext.soft_iou(x, t, 0.0).tolist() == [0.0]
    assert soft_iou_reference(x, t, 0.0).isnan().all()
    assert d2d_ext.soft_iou(x.float(), t.float(), 0.0).tolist() == [1.0]
    # Empty samples: 1 - s / s = 0 for smooth > 0, and the empty union's 0 for smooth = 0.
    e = torch.zeros((2, 0), dtype=torch.float64)
    assert d2d_ext.soft_iou(e, e, 1.0).tolist() == [0.0, 0.0]
    assert d2d_ext.soft_iou(e, e, 0.0).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("smooth, shown", [(NAN, "nan"), (INF, "inf"), (-INF, "-inf"), (-1e-3, "-0.001")])
def test_bad_smooth_is_refused(smooth, shown, requires_grad):
    x = torch.rand((2, 3), dtype=torch.float64, requires_grad=requires_grad)
    msg = f"d2d.soft_iou: smooth must be finite and >= 0, got {shown}"
    with pytest.raises(RuntimeError) as info:
        d2d_ext.soft_iou(x, x.detach(), smooth)
    assert str(info.value).startswith(msg), str(info.value)
    with pytest.raises(RuntimeError) as info:
        ones, sums = torch.ones(2, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
        OPS.soft_iou_backward.default(ones, x.detach(), x.detach(), sums, smooth, [True, True])
    assert str(info.value).startswith(msg.replace("soft_iou:", "soft_iou_backward:")), str(info.value)


# --------------------------------------------------------------------------------------------
# 3. Thread safety
# --------------------------------------------------------------------------------------------


def _diffuse_task(N, H, W, dtype, steps, layout, seed):
    g = make_generator(seed)
    u0 = restride(torch.rand((N, H, W), dtype=torch.float64, generator=g).to(dtype), layout, seed)
    rates = torch.rand((N, 4, H, W), dtype=torch.float64, generator=g) * 0.25
    rates = restride(rates.to(dtype), layout, seed + 1)
    grad = torch.rand((N, H, W), dtype=dtype, generator=g)

    def run():
        u = u0.detach().requires_grad_(True)
        r = rates.detach().requires_grad_(True)
        out = d2d_ext.diffuse(u, r, 0.5, steps)
        gu, gr = torch.autograd.grad(out, (u, r), grad)
        return out.detach(), gu, gr

    return run


def _soft_iou_task(shape, dtype, layout, seed):
    g = make_generator(seed)
    x0 = restride((torch.randn(shape, dtype=torch.float64, generator=g) * 4).to(dtype), layout, seed)
    t0 = restride(torch.rand(shape, dtype=torch.float64, generator=g).to(dtype), layout, seed + 1)
    grad = torch.rand(shape[:1], dtype=dtype, generator=g)

    def run():
        x = x0.detach().requires_grad_(True)
        t = t0.detach().requires_grad_(True)
        loss = d2d_ext.soft_iou(x, t, 0.5)
        gx, gt = torch.autograd.grad(loss, (x, t), grad)
        return loss.detach(), gx, gt

    return run


def test_ops_are_thread_safe():
    """Both ops, forward and backward, from 4 Python threads at once (the ops release the GIL) on
    different inputs (plane sweep, wavefront, checkpointed backward, float32/64, strided), many
    times: every result equals the single-threaded one bit for bit."""
    tasks = [
        _diffuse_task(3, 7, 5, torch.float64, 9, "contiguous", 1),
        _diffuse_task(2, 1, 300, torch.float32, 40, "transposed", 2),
        _diffuse_task(2, 300, 1, torch.float64, 17, "sliced", 3),
        _diffuse_task(1, 90, 90, torch.float64, 20, "as_strided", 4),  # wavefront
        _diffuse_task(1, 30, 30, torch.float64, 9000, "contiguous", 5),  # checkpointed backward
        _diffuse_task(0, 4, 4, torch.float32, 3, "contiguous", 6),
        _soft_iou_task((3, 1, 20, 20), torch.float32, "contiguous", 7),
        _soft_iou_task((2, 5000), torch.float64, "sliced", 8),
        _soft_iou_task((4,), torch.float64, "contiguous", 9),
        _soft_iou_task((2, 3, 9, 11), torch.float32, "as_strided", 10),
    ]
    expected = [task() for task in tasks]
    rounds = 12
    jobs = [i for _ in range(rounds) for i in range(len(tasks))]
    order = torch.randperm(len(jobs), generator=make_generator(11)).tolist()
    jobs = [jobs[k] for k in order]
    thread_names = set()
    lock = threading.Lock()

    def work(i):
        with lock:
            thread_names.add(threading.current_thread().name)
        return i, tasks[i]()

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, jobs))
    assert len(results) == len(jobs)
    for i, got in results:
        for a, b in zip(got, expected[i]):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a, b), f"task {i} differs when run from several threads"
    assert len(thread_names) > 1
