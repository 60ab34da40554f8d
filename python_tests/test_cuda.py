"""CUDA kernels against the CPU kernels, and checks of the build that need no GPU."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import d2d_ext
from conftest import assert_close_rel, make_generator, random_problem, requires_cuda, soft_iou_backward, soft_iou_problem

OPS = torch.ops.d2d
OP_NAMES = ["diffuse", "diffuse_backward", "soft_iou_forward", "soft_iou_backward"]
TAU = 0.5

# GPU tests need both a device and the compiled CUDA kernels (a D2D_FORCE_CPU build has none;
# test_with_cuda_when_toolkit_present catches a build that lost them by accident).
cuda_kernels = pytest.mark.skipif(not d2d_ext.WITH_CUDA, reason="d2d_ext was built without CUDA kernels")


# --------------------------------------------------------------------------------------------
# Without a GPU
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OP_NAMES)
def test_kernels_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"d2d::{op}", "CPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"d2d::{op}", "CUDA") == d2d_ext.WITH_CUDA


def test_soft_iou_is_its_forward_ops_loss():
    # no backend kernel of its own: it decomposes into soft_iou_forward on every device
    assert torch._C._dispatch_has_kernel_for_dispatch_key("d2d::soft_iou", "CompositeImplicitAutograd")
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("d2d::soft_iou", "CPU")


def test_with_cuda_when_toolkit_present():
    if os.environ.get("D2D_FORCE_CPU"):
        pytest.skip("D2D_FORCE_CPU is set: a CPU-only build is expected")
    if torch.version.cuda is None:
        pytest.skip("torch is a CPU build: the CUDA kernels cannot be compiled")
    if nvcc_path() is None:
        pytest.skip("no nvcc on this machine: the CUDA kernels cannot be compiled")
    assert d2d_ext.WITH_CUDA, "nvcc and a CUDA torch are present, but d2d_ext was built without CUDA kernels"


def nvcc_path():
    return shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def test_cuda_diffusion_rounds_every_operation(tmp_path):
    """The diffusion kernels' PTX (what the GPU runs, before the assembler) holds no fused
    multiply-add and only float adds, subtracts and multiplies with an explicit rounding mode,
    which the assembler never fuses either: on a GPU every product and sum rounds on its own, as
    on the CPU, so the two give the same bits (test_diffuse_cuda_same_bits_as_cpu, on a GPU).
    Written as plain `a * b + c`, nvcc fuses most of them."""
    nvcc = nvcc_path()
    if nvcc is None or torch.version.cuda is None:
        pytest.skip("needs nvcc and a CUDA build of torch")
    from torch.utils.cpp_extension import include_paths

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ptx = tmp_path / "diffusion.ptx"
    cmd = [nvcc, "-ptx", "-arch=sm_90", "-O3", "-std=c++20", "--expt-relaxed-constexpr", "-DD2D_WITH_CUDA",
           "-I" + os.path.join(root, "csrc"), *("-I" + p for p in include_paths("cuda")),
           os.path.join(root, "csrc", "cuda", "diffusion_cuda.cu"), "-o", str(ptx)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    ops = re.findall(r"\b((?:add|sub|mul|fma|mad)(?:\.\w+)*\.f(?:32|64))\b", ptx.read_text())
    assert sum(op.startswith("mul.rn.") for op in ops) > 100  # the kernels' arithmetic is there
    assert not [op for op in ops if op.startswith(("fma", "mad"))], "fused multiply-adds in the diffusion kernels"
    unrounded = sorted({op for op in ops if ".rn." not in op})
    assert not unrounded, f"float operations the assembler may fuse: {unrounded}"


# --------------------------------------------------------------------------------------------
# diffuse on CUDA vs CPU
# --------------------------------------------------------------------------------------------

# (8, 32, 32) and (3, 20, 50) fit one tile (in float32; (3, 20, 50) needs two in float64, whose
# tiles are at most 48 wide); the others need tiles with halos, in one or both directions.
# (1, 3_300_000, 1): with 7 steps or more, more tiles down the image than grid.y allows (65535);
# the tiles of a sample go in grid.x
SIZES = [(8, 32, 32), (3, 20, 50), (2, 150, 130), (1, 257, 300), (2, 30, 200), (2, 200, 30), (1, 1, 500), (1, 500, 1), (1, 1, 1),
         (1, 3_300_000, 1)]
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-13), torch.float32: dict(rtol=1e-5, atol=1e-6)}
GRAD_RTOL = {torch.float64: 1e-11, torch.float32: 1e-4}


def cuda_problem(size, dtype, seed=0, tau=TAU):
    u0, rates = random_problem(*size, dtype=dtype, tau=tau, generator=make_generator(seed))
    return u0, rates, u0.cuda(), rates.cuda()


@requires_cuda
@cuda_kernels
@pytest.mark.parametrize("steps", [0, 1, 7, 64])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diffuse_forward_cuda_vs_cpu(dtype, size, steps):
    u0, rates, u0c, ratesc = cuda_problem(size, dtype, seed=sum(size))
    out = d2d_ext.diffuse(u0c, ratesc, TAU, steps)
    assert out.is_cuda and out.dtype == dtype and out.shape == u0.shape
    torch.testing.assert_close(out.cpu(), d2d_ext.diffuse(u0, rates, TAU, steps), **TOL[dtype])


@requires_cuda
@cuda_kernels
@pytest.mark.parametrize("steps", [1, 7, 64])
@pytest.mark.parametrize("size", [(8, 32, 32), (3, 150, 130), (1, 1, 500)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diffuse_cuda_same_bits_as_cpu(dtype, size, steps):
    """The GPU's diffusion is the CPU's bit for bit, forward and backward: both round every
    product and sum on its own in the order of csrc/kernels/diffusion_math.h (no fused
    multiply-adds on the GPU), and both carry the rate gradient's sum over the steps in one
    running sum (one tile, several launches with halos, one row)."""
    u0, rates, u0c, ratesc = cuda_problem(size, dtype, seed=sum(size) + 2)
    go = torch.randn(size, dtype=torch.float64, generator=make_generator(3)).to(dtype)
    assert torch.equal(d2d_ext.diffuse(u0c, ratesc, TAU, steps).cpu(), d2d_ext.diffuse(u0, rates, TAU, steps))
    want = OPS.diffuse_backward.default(go, u0, rates, TAU, steps)
    got = OPS.diffuse_backward.default(go.cuda(), u0c, ratesc, TAU, steps)
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


@requires_cuda
@cuda_kernels
@pytest.mark.parametrize("steps", [0, 1, 7, 64])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diffuse_backward_cuda_vs_cpu(dtype, size, steps):
    """Every output mask against the CPU's full backward: [True, True]; [True, False], the adjoint
    kernel alone (no states); [False, True], no grad_u0."""
    u0, rates, u0c, ratesc = cuda_problem(size, dtype, seed=sum(size) + 1)
    go = torch.randn(size, dtype=torch.float64, generator=make_generator(2)).to(dtype)
    ref_u, ref_r = OPS.diffuse_backward.default(go, u0, rates, TAU, steps)
    gu, gr = OPS.diffuse_backward.default(go.cuda(), u0c, ratesc, TAU, steps)
    assert gu.is_cuda and gr.is_cuda and gu.dtype == dtype and gr.shape == rates.shape
    assert_close_rel(gu.cpu(), ref_u, GRAD_RTOL[dtype], "grad_u0")
    assert_close_rel(gr.cpu(), ref_r, GRAD_RTOL[dtype], "grad_rates")
    only_u, empty_r = OPS.diffuse_backward.default(go.cuda(), u0c, ratesc, TAU, steps, [True, False])
    assert only_u.is_cuda and only_u.shape == u0.shape and empty_r.shape == (0,)
    assert_close_rel(only_u.cpu(), ref_u, GRAD_RTOL[dtype], "grad_u0")
    empty_u, only_r = OPS.diffuse_backward.default(go.cuda(), u0c, ratesc, TAU, steps, [False, True])
    assert empty_u.shape == (0,)
    assert_close_rel(only_r.cpu(), ref_r, GRAD_RTOL[dtype], "grad_rates")


@requires_cuda
@cuda_kernels
@pytest.mark.parametrize("size,where", [((2, 9, 7), (0, 4, 6)), ((1, 130, 120), (0, 64, 0)), ((1, 130, 120), (0, 31, 47))],
                         ids=["crop-edge", "tile-image-edge", "tile-corner"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_diffuse_nonfinite_reach_cuda(size, where, value):
    """A NaN / Inf in u0 reaches the same pixels on the GPU as on the CPU (which matches the
    reference): no leak through the tiles' shared-memory ring or halos, none across rows."""
    u0, rates, _, _ = cuda_problem(size, torch.float32, seed=5)
    u0[where] = value
    for steps in (1, 7, 40):
        out = d2d_ext.diffuse(u0.cuda(), rates.cuda(), TAU, steps).cpu()
        ref = d2d_ext.diffuse(u0, rates, TAU, steps)
        assert torch.equal(out.isfinite(), ref.isfinite()), steps
        torch.testing.assert_close(out[ref.isfinite()], ref[ref.isfinite()], **TOL[torch.float32])


@requires_cuda
@cuda_kernels
def test_diffuse_checkpointed_backward_float64():
    # (1, 257, 300) float64, 1000 steps: 1000 * 257 * 300 * 8 bytes = 617 MB > 256 MB, so the CUDA
    # backward checkpoints (segments of 32 steps), with tiles and several launches per segment.
    size, steps, tau = (1, 257, 300), 1000, 0.9
    u0, rates, u0c, ratesc = cuda_problem(size, torch.float64, seed=3, tau=tau)
    go = torch.randn(size, dtype=torch.float64, generator=make_generator(4))
    gu, gr = OPS.diffuse_backward.default(go.cuda(), u0c, ratesc, tau, steps)
    ref_u, ref_r = OPS.diffuse_backward.default(go, u0, rates, tau, steps)
    assert_close_rel(gu.cpu(), ref_u, 1e-10, "grad_u0")
    assert_close_rel(gr.cpu(), ref_r, 1e-10, "grad_rates")


@requires_cuda
@cuda_kernels
def test_diffuse_checkpointed_backward_memory_float32():
    # (16, 256, 256) float32, 1024 steps: all states would take 1024 * 4 MiB = 4 GiB; checkpointed
    # (segments of 32) the backward needs about (4 + 31 + 32) states = 268 MiB of work space.
    size, steps, tau = (16, 256, 256), 1024, 0.9
    u0, rates, u0c, ratesc = cuda_problem(size, torch.float32, seed=5, tau=tau)
    go = torch.randn(size, generator=make_generator(6))
    goc = go.cuda()
    uc = u0c.clone().requires_grad_(True)
    rc = ratesc.clone().requires_grad_(True)
    out = d2d_ext.diffuse(uc, rc, tau, steps)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out.backward(goc)
    torch.cuda.synchronize()
    growth = torch.cuda.max_memory_allocated() - before
    assert growth < 2**30, f"peak CUDA memory grew by {growth / 2**20:.0f} MiB during the backward"
    ref_u, ref_r = OPS.diffuse_backward.default(go, u0, rates, tau, steps)
    assert_close_rel(uc.grad.cpu(), ref_u, 1e-3, "grad_u0")
    assert_close_rel(rc.grad.cpu(), ref_r, 1e-3, "grad_rates")


@requires_cuda
@cuda_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diffuse_mass_conservation_cuda(dtype):
    u0, rates, u0c, ratesc = cuda_problem((2, 150, 130), dtype, seed=7)
    out = d2d_ext.diffuse(u0c, ratesc, TAU, 200).cpu().double()
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.sum((1, 2)), u0.double().sum((1, 2)), rtol=rtol, atol=0)
    assert out.min().item() >= 0


TILE_SIDE_CHECK = """
import torch, d2d_ext
torch.manual_seed(0)
for shape, steps in (((2, 70, 90), 9), ((1, 130, 33), 20), ((3, 40, 17), 5)):
    u0 = torch.rand(shape, dtype=torch.float64)
    rates = torch.rand(shape[0], 4, *shape[1:], dtype=torch.float64) * 0.4
    go = torch.randn(shape, dtype=torch.float64)
    out = d2d_ext.diffuse(u0.cuda(), rates.cuda(), 0.5, steps).cpu()
    torch.testing.assert_close(out, d2d_ext.diffuse(u0, rates, 0.5, steps), rtol=1e-12, atol=1e-13)
    got = torch.ops.d2d.diffuse_backward.default(go.cuda(), u0.cuda(), rates.cuda(), 0.5, steps)
    ref = torch.ops.d2d.diffuse_backward.default(go, u0, rates, 0.5, steps)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-12)
print("ok")
"""


@requires_cuda
@cuda_kernels
@pytest.mark.parametrize("side", ["16", "32", "48", "64", "40"])
def test_diffuse_every_tile_side_cuda(side, tmp_path):
    """D2D_CUDA_TILE_SIDE caps the tiles (read once per process, so each side runs in its own);
    every side gives the CPU's results, and a side the kernels lack is refused by name."""
    # cwd: not the repository root, whose source d2d_ext (no _C) would shadow the installed one
    proc = subprocess.run([sys.executable, "-c", TILE_SIDE_CHECK], capture_output=True, text=True,
                          env={**os.environ, "D2D_CUDA_TILE_SIDE": side}, cwd=tmp_path, timeout=600)
    if side == "40":
        assert proc.returncode != 0 and "D2D_CUDA_TILE_SIDE must be 16, 32, 48 or 64, got '40'" in proc.stderr
    else:
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@requires_cuda
@cuda_kernels
def test_diffuse_noncontiguous_cuda():
    u0, rates, u0c, ratesc = cuda_problem((3, 70, 90), torch.float64, seed=8)
    u_nc = u0c.transpose(1, 2).contiguous().transpose(1, 2)
    r_nc = ratesc.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    r_exp = ratesc[:1].expand(3, 4, 70, 90)
    assert not u_nc.is_contiguous() and not r_nc.is_contiguous()
    torch.testing.assert_close(d2d_ext.diffuse(u_nc, r_nc, TAU, 9), d2d_ext.diffuse(u0c, ratesc, TAU, 9), rtol=0, atol=0)
    torch.testing.assert_close(
        d2d_ext.diffuse(u0c, r_exp, TAU, 9), d2d_ext.diffuse(u0c, r_exp.contiguous(), TAU, 9), rtol=0, atol=0
    )


@requires_cuda
@cuda_kernels
def test_diffuse_autograd_and_gradcheck_cuda():
    u0, rates, u0c, ratesc = cuda_problem((2, 5, 4), torch.float64, seed=9)
    assert torch.autograd.gradcheck(
        lambda u, r: d2d_ext.diffuse(u, r, TAU, 5), (u0c.requires_grad_(True), ratesc.requires_grad_(True))
    )


@requires_cuda
@cuda_kernels
@pytest.mark.parametrize("steps", [0, 3])
def test_opcheck_diffuse_cuda(steps):
    u0, rates, u0c, ratesc = cuda_problem((2, 6, 5), torch.float64, seed=10)
    torch.library.opcheck(torch.ops.d2d.diffuse.default, (u0c, ratesc, TAU, steps))
    torch.library.opcheck(
        torch.ops.d2d.diffuse.default, (u0c.clone().requires_grad_(True), ratesc.clone().requires_grad_(True), TAU, steps)
    )
    go = torch.randn((2, 6, 5), dtype=torch.float64, device="cuda")
    torch.library.opcheck(torch.ops.d2d.diffuse_backward.default, (go, u0c, ratesc, TAU, steps))


@requires_cuda
@cuda_kernels
def test_diffuse_device_mismatch():
    u = torch.rand((2, 3, 4), dtype=torch.float64)
    r = torch.rand((2, 4, 3, 4), dtype=torch.float64)
    same_device = "d2d.diffuse: u0 and rates must be on the same device, got "
    with pytest.raises(RuntimeError, match=re.escape(same_device + "cuda:0 and cpu")):
        d2d_ext.diffuse(u.cuda(), r, TAU, 1)
    with pytest.raises(RuntimeError, match=re.escape(same_device + "cpu and cuda:0")):
        d2d_ext.diffuse(u, r.cuda(), TAU, 1)
    with pytest.raises(RuntimeError, match=re.escape("d2d.diffuse_backward: grad_out and u0 must be on the same device")):
        OPS.diffuse_backward.default(u, u.cuda(), r.cuda(), TAU, 1)


# --------------------------------------------------------------------------------------------
# soft_iou on CUDA vs CPU
# --------------------------------------------------------------------------------------------

SOFT_IOU_SHAPES = [(4, 1, 9, 7), (3, 5), (2, 1, 1, 1), (2, 0), (0, 3, 4), (2, 3, 50, 60), (1, 300001), (70000, 3)]


@requires_cuda
@cuda_kernels
@pytest.mark.parametrize("shape", SOFT_IOU_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_iou_cuda_vs_cpu(dtype, shape):
    x, t = soft_iou_problem(shape, dtype, seed=len(shape))
    loss = d2d_ext.soft_iou(x.cuda(), t.cuda(), 1.0)
    assert loss.is_cuda and loss.shape == (shape[0],)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.cpu(), d2d_ext.soft_iou(x, t, 1.0), **tol)
    go = torch.randn(shape[0], dtype=torch.float64, generator=make_generator(1)).to(dtype)
    for mask in ([True, True], [True, False], [False, True]):
        got = soft_iou_backward(go.cuda(), x.cuda(), t.cuda(), 1.0, mask)
        ref = soft_iou_backward(go, x, t, 1.0, mask)
        for a, b in zip(got, ref):
            assert a.is_cuda and a.shape == b.shape
            assert_close_rel(a.cpu().double(), b.double(), 1e-11 if dtype == torch.float64 else 1e-4, str(mask))


@requires_cuda
@cuda_kernels
@pytest.mark.parametrize("shape", [(4, 1, 9, 7), (2, 3, 50, 60), (1, 300001)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_iou_probabilities_cuda_vs_cpu(dtype, shape):
    """from_logits=False: the input is the probability (models that end in a sigmoid)."""
    x, t = soft_iou_problem(shape, dtype, seed=len(shape) + 10)
    p = torch.sigmoid(x)
    loss, sums = OPS.soft_iou_forward.default(p.cuda(), t.cuda(), 1.0, False)
    ref_loss, ref_sums = OPS.soft_iou_forward.default(p, t, 1.0, False)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.cpu(), ref_loss, **tol)
    go = torch.randn(shape[0], dtype=torch.float64, generator=make_generator(1)).to(dtype)
    got = OPS.soft_iou_backward.default(go.cuda(), p.cuda(), t.cuda(), sums, 1.0, [True, True], False)
    ref = OPS.soft_iou_backward.default(go, p, t, ref_sums, 1.0, [True, True], False)
    for a, b in zip(got, ref):
        assert_close_rel(a.cpu().double(), b.double(), 1e-11 if dtype == torch.float64 else 1e-4)


@requires_cuda
@cuda_kernels
def test_soft_iou_cuda_is_deterministic():
    """Blocks write partial sums that one kernel adds in a fixed order (no atomics): repeated calls
    agree to the bit, also under torch.use_deterministic_algorithms."""
    x, t = soft_iou_problem((3, 1, 700, 900), torch.float32, seed=6)  # many blocks per sample
    x, t = x.cuda(), t.cuda()
    first_loss, first_sums = OPS.soft_iou_forward.default(x, t, 1.0)
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(3):
            loss, sums = OPS.soft_iou_forward.default(x, t, 1.0)
            assert torch.equal(loss, first_loss) and torch.equal(sums, first_sums)
    finally:
        torch.use_deterministic_algorithms(False)
    _, ref_sums = OPS.soft_iou_forward.default(x.cpu(), t.cpu(), 1.0)
    torch.testing.assert_close(first_sums.cpu(), ref_sums, rtol=1e-6, atol=1e-6)


@requires_cuda
@cuda_kernels
def test_soft_iou_extreme_and_noncontiguous_cuda():
    x, t = soft_iou_problem((3, 2, 20, 30), torch.float32, seed=3)
    x = x * 400  # many logits beyond +-80
    xc = x.cuda().transpose(2, 3).contiguous().transpose(2, 3)
    big = torch.zeros((3, 2, 40, 30), device="cuda")
    big[:, :, ::2] = t.cuda()
    tc = big[:, :, ::2]
    assert not xc.is_contiguous() and not tc.is_contiguous()
    loss = d2d_ext.soft_iou(xc, tc, 1.0)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss.cpu(), d2d_ext.soft_iou(x, t, 1.0), rtol=1e-5, atol=1e-6)
    xl = xc.clone().requires_grad_(True)
    d2d_ext.weighted_soft_iou(xl, tc).backward()
    xr = x.clone().requires_grad_(True)
    d2d_ext.weighted_soft_iou(xr, t).backward()
    assert torch.isfinite(xl.grad).all()
    assert_close_rel(xl.grad.cpu(), xr.grad, 1e-4, "grad_logits")


@requires_cuda
@cuda_kernels
def test_soft_iou_gradcheck_and_opcheck_cuda():
    x, t = soft_iou_problem((3, 2, 4), torch.float64, seed=4)
    xc, tc = x.cuda().requires_grad_(True), t.cuda().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: d2d_ext.soft_iou(a, b, 1.0), (xc, tc))
    for op in (OPS.soft_iou, OPS.soft_iou_forward):
        torch.library.opcheck(op.default, (xc, tc, 1.0))
        torch.library.opcheck(op.default, (xc.detach(), tc.detach(), 0.5))
    go = torch.randn(3, dtype=torch.float64, device="cuda")
    _, sums = OPS.soft_iou_forward.default(xc.detach(), tc.detach(), 1.0)
    for mask in ([True, True], [True, False], [False, True], [False, False]):
        torch.library.opcheck(OPS.soft_iou_backward.default, (go, xc.detach(), tc.detach(), sums, 1.0, mask))


@requires_cuda
@cuda_kernels
def test_soft_iou_device_mismatch():
    x = torch.rand((2, 3), dtype=torch.float64)
    with pytest.raises(RuntimeError, match=re.escape("d2d.soft_iou: logits and target must be on the same device, got cuda:0 and cpu")):
        d2d_ext.soft_iou(x.cuda(), x, 1.0)
    go, sums = torch.ones(2, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=re.escape("d2d.soft_iou_backward: grad_loss and logits must be on the same device")):
        OPS.soft_iou_backward.default(go, x.cuda(), x.cuda(), sums.cuda(), 1.0, [True, True])
    with pytest.raises(RuntimeError, match=re.escape("d2d.soft_iou_backward: sums and logits must be on the same device")):
        OPS.soft_iou_backward.default(go.cuda(), x.cuda(), x.cuda(), sums, 1.0, [True, True])
