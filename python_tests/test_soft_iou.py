"""Tests of d2d_ext.soft_iou / weighted_soft_iou / torch.ops.d2d.soft_iou(_forward, _backward) on the CPU."""

import re

import pytest
import torch

import d2d_ext
from conftest import assert_close_rel, make_generator, soft_iou_backward, vjp_reference
from d2d_ext.reference import soft_iou_reference

OPS = torch.ops.d2d


def problem(shape, dtype=torch.float64, seed=0, scale=3.0):
    g = make_generator(seed)
    logits = (torch.randn(shape, dtype=torch.float64, generator=g) * scale).to(dtype)
    target = torch.rand(shape, dtype=torch.float64, generator=g).to(dtype)
    return logits, target


bwd = soft_iou_backward


def reference(logits, target, smooth):
    """soft_iou_reference, also for 1-D inputs (one element per sample), which it cannot flatten."""
    n = logits.shape[0]
    return soft_iou_reference(logits.reshape(n, -1), target.reshape(n, -1), smooth)


def ref_grads(logits, target, smooth, grad_loss):
    return vjp_reference(lambda x, t: reference(x, t, smooth), (logits, target), grad_loss)


# (4, 1, 9, 7) and friends from the brief; (2, 3, 50, 60) and (1, 8209) span several 4096-element
# reduction blocks per sample (with a ragged last block).
SHAPES = [(4, 1, 9, 7), (3, 5), (2, 1, 1, 1), (1, 1), (5,), (2, 3, 50, 60), (1, 8209)]


@pytest.mark.parametrize("smooth", [1.0, 0.0, 1e-3])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_matches_reference_float64(shape, smooth):
    logits, target = problem(shape, seed=len(shape))
    loss = d2d_ext.soft_iou(logits, target, smooth)
    assert loss.shape == (shape[0],) and loss.dtype == torch.float64
    torch.testing.assert_close(loss, reference(logits, target, smooth), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_matches_reference_float32(shape):
    logits, target = problem(shape, dtype=torch.float32, seed=len(shape))
    loss = d2d_ext.soft_iou(logits, target, 1.0)
    assert loss.dtype == torch.float32
    ref = reference(logits.double(), target.double(), 1.0)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backward_matches_reference(shape, dtype):
    logits, target = problem(shape, dtype=dtype, seed=10 + len(shape))
    go = torch.randn(shape[0], dtype=torch.float64, generator=make_generator(3)).to(dtype)
    gx, gt = bwd(go, logits, target, 1.0)
    rx, rt = ref_grads(logits.double(), target.double(), 1.0, go.double())
    rtol = 1e-11 if dtype == torch.float64 else 1e-4
    assert gx.dtype == dtype and gt.dtype == dtype
    assert_close_rel(gx.double(), rx, rtol, "grad_logits")
    assert_close_rel(gt.double(), rt, rtol, "grad_target")


def test_hand_computed_value():
    # logits 0 -> p = 0.5; target all ones, 4 elements, smooth 1:
    #   I = 4 * 0.5 = 2, Sp = 2, St = 4, union = 2 + 4 - 2 = 4, loss = 1 - (2 + 1) / (4 + 1) = 0.4.
    # Second sample: target all zeros -> I = 0, union = Sp = 2, loss = 1 - 1 / 3 = 2/3.
    logits = torch.zeros((2, 2, 2), dtype=torch.float64)
    target = torch.stack([torch.ones((2, 2)), torch.zeros((2, 2))]).double()
    loss = d2d_ext.soft_iou(logits, target, 1.0)
    assert loss[0].item() == pytest.approx(0.4, abs=1e-15)
    assert loss[1].item() == pytest.approx(2.0 / 3.0, abs=1e-15)
    # Perfect prediction with logits +-1000 (p exactly 1 or 0), smooth 0: loss 0.
    sharp = torch.tensor([[1000.0, -1000.0, 1000.0]], dtype=torch.float64)
    assert d2d_ext.soft_iou(sharp, torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64), 0.0).item() == 0.0


def test_default_smooth_is_one():
    logits, target = problem((3, 4, 5))
    torch.testing.assert_close(d2d_ext.soft_iou(logits, target), d2d_ext.soft_iou(logits, target, 1.0), rtol=0, atol=0)


def test_empty_sample():
    # No element per sample: I = Sp = St = 0, so loss = 1 - smooth / smooth = 0 for smooth > 0.
    logits = torch.zeros((3, 0), dtype=torch.float64)
    target = torch.zeros((3, 0), dtype=torch.float64)
    loss = d2d_ext.soft_iou(logits, target, 1.0)
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, torch.zeros(3, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(loss, soft_iou_reference(logits, target, 1.0))
    gx, gt = bwd(torch.ones(3, dtype=torch.float64), logits, target, 1.0)
    assert gx.shape == (3, 0) and gt.shape == (3, 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_empty_batch(dtype):
    logits = torch.zeros((0, 3, 4), dtype=dtype, requires_grad=True)
    target = torch.zeros((0, 3, 4), dtype=dtype)
    loss = d2d_ext.soft_iou(logits, target, 1.0)
    assert loss.shape == (0,) and loss.dtype == dtype
    assert soft_iou_reference(logits, target, 1.0).shape == (0,)
    loss.sum().backward()
    assert logits.grad.shape == (0, 3, 4)


@pytest.mark.parametrize("variant", ["transposed", "step", "expanded_target", "channels_last"])
def test_noncontiguous_inputs(variant):
    g = make_generator(4)
    logits, target = problem((3, 2, 7, 9), seed=5)
    if variant == "transposed":
        x = logits.transpose(2, 3).contiguous().transpose(2, 3)
        t = target.transpose(0, 1).contiguous().transpose(0, 1)
    elif variant == "step":
        bigx = torch.randn((3, 2, 14, 9), dtype=torch.float64, generator=g)
        bigx[:, :, ::2] = logits
        x, t = bigx[:, :, ::2], target
    elif variant == "expanded_target":
        target = torch.rand((1, 2, 7, 9), dtype=torch.float64, generator=g).expand(3, 2, 7, 9)
        x, t = logits, target
        target = target.contiguous()
    else:
        x = logits.contiguous(memory_format=torch.channels_last)
        t = target.contiguous(memory_format=torch.channels_last)
    assert not (x.is_contiguous() and t.is_contiguous())
    torch.testing.assert_close(d2d_ext.soft_iou(x, t, 1.0), d2d_ext.soft_iou(logits, target, 1.0), rtol=0, atol=0)
    go = torch.randn(3, dtype=torch.float64, generator=g)
    for a, b in zip(bwd(go, x, t, 1.0), bwd(go, logits, target, 1.0)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("magnitude", [80.0, 1000.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_extreme_logits(magnitude, dtype):
    g = make_generator(6)
    sign = torch.where(torch.rand((3, 40), generator=g) < 0.5, -1.0, 1.0).double()
    # Mostly +-magnitude, a few moderate values so that the gradients are not all zero.
    logits = sign * magnitude
    logits[:, :5] = torch.randn((3, 5), dtype=torch.float64, generator=g)
    target = torch.rand((3, 40), dtype=torch.float64, generator=g)
    logits, target = logits.to(dtype), target.to(dtype)
    loss = d2d_ext.soft_iou(logits, target, 1.0)
    assert torch.isfinite(loss).all()
    ref = soft_iou_reference(logits.double(), target.double(), 1.0)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.double(), ref, **tol)
    go = torch.ones(3, dtype=dtype)
    gx, gt = bwd(go, logits, target, 1.0)
    assert torch.isfinite(gx).all() and torch.isfinite(gt).all()
    rx, rt = ref_grads(logits.double(), target.double(), 1.0, go.double())
    torch.testing.assert_close(gx.double(), rx, **tol)
    torch.testing.assert_close(gt.double(), rt, **tol)


@pytest.mark.parametrize("smooth", [1.0, 0.1])
@pytest.mark.parametrize("shape", [(3, 4), (2, 1, 3, 2), (1, 1)])
def test_gradcheck(shape, smooth):
    logits, target = problem(shape, seed=7)
    logits.requires_grad_(True)
    target.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, t: d2d_ext.soft_iou(x, t, smooth), (logits, target))


def test_gradcheck_one_input():
    logits, target = problem((2, 5), seed=8)
    assert torch.autograd.gradcheck(lambda x: d2d_ext.soft_iou(x, target, 1.0), (logits.requires_grad_(True),))
    assert torch.autograd.gradcheck(lambda t: d2d_ext.soft_iou(logits.detach(), t, 1.0), (target.requires_grad_(True),))


def _opcheck_args():
    x, t = problem((3, 2, 4), seed=9)
    x32, t32 = problem((2, 7), dtype=torch.float32, seed=10)
    return [
        (x, t, 1.0),
        (x.clone().requires_grad_(True), t.clone().requires_grad_(True), 1.0),
        (x.clone().requires_grad_(True), t, 0.5),
        (x, t.clone().requires_grad_(True), 0.0),
        (x32.requires_grad_(True), t32.requires_grad_(True), 1.0),
    ]


@pytest.mark.parametrize("case", range(5))
@pytest.mark.parametrize("op", ["soft_iou", "soft_iou_forward"])
def test_opcheck_soft_iou(case, op):
    torch.library.opcheck(getattr(OPS, op).default, _opcheck_args()[case])


@pytest.mark.parametrize("mask", [(True, True), (True, False), (False, True), (False, False)])
def test_opcheck_soft_iou_backward(mask):
    x, t = problem((3, 2, 4), seed=11)
    go = torch.randn(3, dtype=torch.float64, generator=make_generator(12))
    _, sums = OPS.soft_iou_forward.default(x, t, 1.0)
    torch.library.opcheck(OPS.soft_iou_backward.default, (go, x, t, sums, 1.0, list(mask)))


def test_forward_returns_sums():
    x, t = problem((3, 2, 50, 60), seed=13)  # several reduction blocks per sample
    loss, sums = OPS.soft_iou_forward.default(x, t, 0.5)
    p, tt = torch.sigmoid(x).flatten(1), t.flatten(1)
    want = torch.stack([(p * tt).sum(1), p.sum(1), tt.sum(1)], 1)
    assert sums.dtype == torch.float64 and sums.shape == (3, 3)
    torch.testing.assert_close(sums, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, OPS.soft_iou.default(x, t, 0.5), rtol=0, atol=0)
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        loss_g, sums_g = OPS.soft_iou_forward.default(xg, t, 0.5)
    assert loss_g.requires_grad and not sums_g.requires_grad


def test_autograd_keeps_no_probabilities():
    # The graph holds the inputs themselves and the (N, 3) sums: no tensor of sigmoid(logits).
    x, t = problem((3, 2, 50, 60), seed=14)
    xg, tg = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    loss = d2d_ext.soft_iou(xg, tg, 1.0)
    saved = loss.grad_fn.saved_tensors
    assert len(saved) == 3
    assert saved[0].data_ptr() == xg.data_ptr() and saved[1].data_ptr() == tg.data_ptr()
    assert saved[2].shape == (3, 3) and saved[2].dtype == torch.float64


def test_output_mask():
    x, t = problem((3, 2, 4), seed=13)
    go = torch.randn(3, dtype=torch.float64, generator=make_generator(14))
    full_x, full_t = bwd(go, x, t, 1.0, (True, True))
    # Each mask runs its own instantiation of the kernel: the compiler may fuse multiply-adds
    # differently in each (seen with one thread), so equal to a few ulp, not bit for bit.
    gx, gt = bwd(go, x, t, 1.0, (True, False))
    assert gt.shape == (0,) and gt.dtype == torch.float64
    torch.testing.assert_close(gx, full_x, rtol=1e-14, atol=1e-16)
    gx, gt = bwd(go, x, t, 1.0, (False, True))
    assert gx.shape == (0,)
    torch.testing.assert_close(gt, full_t, rtol=1e-14, atol=1e-16)
    gx, gt = bwd(go, x, t, 1.0, (False, False))
    assert gx.shape == (0,) and gt.shape == (0,)


def test_autograd_only_logits_requires_grad():
    x, t = problem((3, 2, 4), seed=15)
    go = torch.randn(3, dtype=torch.float64, generator=make_generator(16))
    xl = x.clone().requires_grad_(True)
    tl = t.clone()
    d2d_ext.soft_iou(xl, tl, 1.0).backward(go)
    assert tl.grad is None
    rx, _ = ref_grads(x, t, 1.0, go)
    torch.testing.assert_close(xl.grad, rx, rtol=1e-12, atol=1e-14)
    # And only the target (a differentiable pseudo-label).
    tl2 = t.clone().requires_grad_(True)
    (gt,) = torch.autograd.grad(d2d_ext.soft_iou(x, tl2, 1.0), (tl2,), go)
    _, rt = ref_grads(x, t, 1.0, go)
    torch.testing.assert_close(gt, rt, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mask", [(True, False), (True, True), (False, True)])
def test_float32_kernels_run_vectorised(mask):
    # A guard against a build whose float32 loops do not vectorise: with GCC's default trapping
    # math on an AVX2 machine (no AVX-512) the sigmoid's selects kept every loop scalar, and each
    # kernel ran 7 to 14 times slower than torch.sigmoid on the same tensor. Vectorised, they take
    # about 1x on AVX2, and up to 3.1x (the backward with both gradients) where torch.sigmoid runs
    # at AVX-512's full width: the bound sits between. Best of several calls on one thread, so a
    # busy machine does not fail it.
    import time

    x, t = problem((4, 1, 256, 256), dtype=torch.float32, seed=21)
    go = torch.ones(4)
    _, sums = OPS.soft_iou_forward.default(x, t, 1.0)
    calls = {
        "forward": lambda: OPS.soft_iou_forward.default(x, t, 1.0),
        "backward": lambda: bwd(go, x, t, 1.0, mask),
        "torch.sigmoid": lambda: torch.sigmoid(x),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = {}
        for _ in range(15):
            for name, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    for name in ("forward", "backward"):
        ratio = best[name] / best["torch.sigmoid"]
        assert ratio < 5.0, f"{name} takes {ratio:.1f}x torch.sigmoid's time: its loop is not vectorised"


# --------------------------------------------------------------------------------------------
# weighted_soft_iou
# --------------------------------------------------------------------------------------------


def test_weighted_matches_manual():
    x, t = problem((4, 1, 5, 6), seed=17)
    w = torch.rand(4, dtype=torch.float64, generator=make_generator(18))
    loss = d2d_ext.soft_iou(x, t, 0.5)
    out = d2d_ext.weighted_soft_iou(x, t, w, smooth=0.5)
    assert out.dim() == 0
    torch.testing.assert_close(out, (w * loss).mean(), rtol=1e-14, atol=0)
    torch.testing.assert_close(d2d_ext.weighted_soft_iou(x, t, smooth=0.5), loss.mean(), rtol=1e-14, atol=0)
    # weight = 1 is the plain mean; the default smooth is 1.
    torch.testing.assert_close(
        d2d_ext.weighted_soft_iou(x, t, torch.ones(4, dtype=torch.float64)), d2d_ext.soft_iou(x, t).mean(), rtol=1e-14, atol=0
    )


def test_weighted_gradcheck():
    x, t = problem((3, 2, 3), seed=19)
    w = torch.rand(3, dtype=torch.float64, generator=make_generator(20))
    inputs = (x.requires_grad_(True), t.requires_grad_(True), w.requires_grad_(True))
    assert torch.autograd.gradcheck(lambda a, b, c: d2d_ext.weighted_soft_iou(a, b, c), inputs)


@pytest.mark.parametrize("container", [list, tuple])
def test_deep_supervision_is_mean_over_outputs(container):
    g = make_generator(21)
    _, t = problem((3, 1, 4, 4), seed=22)
    outs = [torch.randn((3, 1, 4, 4), dtype=torch.float64, generator=g) * s for s in (1.0, 2.0, 4.0)]
    w = torch.rand(3, dtype=torch.float64, generator=g)
    expected = sum((w * soft_iou_reference(o, t, 1.0)).mean() for o in outs) / 3
    torch.testing.assert_close(d2d_ext.weighted_soft_iou(container(outs), t, w), expected, rtol=1e-12, atol=0)
    # A single-element list equals the bare tensor.
    torch.testing.assert_close(
        d2d_ext.weighted_soft_iou(container(outs[:1]), t, w), d2d_ext.weighted_soft_iou(outs[0], t, w), rtol=0, atol=0
    )
    # Gradients reach every output.
    leaves = [o.clone().requires_grad_(True) for o in outs]
    d2d_ext.weighted_soft_iou(container(leaves), t, w).backward()
    assert all(leaf.grad is not None and leaf.grad.abs().sum() > 0 for leaf in leaves)


@pytest.mark.parametrize("wshape", [(4,), (2,), (3, 1), (1, 3), ()])
def test_weighted_bad_weight_shape(wshape):
    x, t = problem((3, 5), seed=23)
    w = torch.ones(wshape, dtype=torch.float64)
    with pytest.raises(ValueError, match=re.escape(f"d2d.soft_iou_loss: weight must have shape (3,), got {wshape}")):
        d2d_ext.weighted_soft_iou(x, t, w)


@pytest.mark.parametrize("empty", [[], ()])
def test_weighted_empty_list(empty):
    _, t = problem((3, 5), seed=24)
    with pytest.raises(ValueError, match=re.escape("d2d.soft_iou_loss: pred is an empty list")):
        d2d_ext.weighted_soft_iou(empty, t)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _error_cases():
    x = torch.rand((2, 3, 4), dtype=torch.float64)
    go, sums = torch.ones(2, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    S = "d2d.soft_iou: "
    return {
        "shape_mismatch": (lambda: d2d_ext.soft_iou(x, x[:, :2], 1.0), re.escape(S + "logits [2, 3, 4] and target [2, 2, 4] must have the same shape")),
        "same_numel_other_shape": (lambda: d2d_ext.soft_iou(x, x.reshape(2, 4, 3), 1.0), re.escape(S + "logits [2, 3, 4] and target [2, 4, 3] must have the same shape")),
        "dtype_mismatch": (lambda: d2d_ext.soft_iou(x, x.float(), 1.0), re.escape(S + "logits and target must have the same dtype, got Double and Float")),
        "int_dtype": (lambda: d2d_ext.soft_iou(x.long(), x.long(), 1.0), re.escape(S + "logits must be float32 or float64, got Long")),
        "bool_dtype": (lambda: d2d_ext.soft_iou(x > 0.5, x > 0.5, 1.0), re.escape(S + "logits must be float32 or float64, got Bool")),
        "half_dtype": (lambda: d2d_ext.soft_iou(x.half(), x.half(), 1.0), re.escape(S + "logits must be float32 or float64, got Half")),
        "zero_dim": (lambda: d2d_ext.soft_iou(x[0, 0, 0], x[0, 0, 0], 1.0), re.escape(S + "logits must have shape (N, ...), got a 0-d tensor")),
        "negative_smooth": (lambda: d2d_ext.soft_iou(x, x, -1.0), re.escape(S + "smooth must be finite and >= 0, got -1")),
        "nan_smooth": (lambda: d2d_ext.soft_iou(x, x, float("nan")), re.escape(S + "smooth must be finite and >= 0, got nan")),
        "bwd_grad_loss_shape": (
            lambda: bwd(torch.ones(3, dtype=torch.float64), x, x, 1.0),
            re.escape("d2d.soft_iou_backward: grad_loss must have shape (2,), got [3]"),
        ),
        "bwd_grad_loss_dtype": (
            lambda: bwd(torch.ones(2), x, x, 1.0),
            re.escape("d2d.soft_iou_backward: grad_loss and logits must have the same dtype, got Float and Double"),
        ),
        "bwd_smooth": (
            lambda: OPS.soft_iou_backward.default(go, x, x, sums, -2.0, [True, True]),
            re.escape("d2d.soft_iou_backward: smooth must be finite and >= 0, got -2"),
        ),
        "bwd_sums_shape": (
            lambda: OPS.soft_iou_backward.default(go, x, x, sums[:, :2], 1.0, [True, True]),
            re.escape("d2d.soft_iou_backward: sums must have shape (2, 3), got [2, 2]"),
        ),
        "bwd_sums_dtype": (
            lambda: OPS.soft_iou_backward.default(go, x, x, sums.float(), 1.0, [True, True]),
            re.escape("d2d.soft_iou_backward: sums must be float64, got Float"),
        ),
        "bwd_logits_target_shape": (
            lambda: OPS.soft_iou_backward.default(go, x, x[:, :2], sums, 1.0, [True, True]),
            re.escape("d2d.soft_iou_backward: logits [2, 3, 4] and target [2, 2, 4] must have the same shape"),
        ),
    }


ERROR_CASES = _error_cases()


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_errors(name):
    fn, pattern = ERROR_CASES[name]
    with pytest.raises(RuntimeError, match=pattern):
        fn()


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    x, t = problem((3, 1, 6, 5), seed=25)
    w = torch.rand(3, dtype=torch.float64, generator=make_generator(26))

    def f(logits, target, weight):
        return d2d_ext.weighted_soft_iou([logits, logits * 0.5], target, weight) + d2d_ext.soft_iou(logits, target, 0.5).sum()

    cf = torch.compile(f, fullgraph=True, backend=backend)
    xc, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    wc, we = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    out_c, out_e = cf(xc, t, wc), f(xe, t, we)
    torch.testing.assert_close(out_c, out_e, rtol=1e-13, atol=0)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(wc.grad, we.grad, rtol=1e-12, atol=1e-15)
