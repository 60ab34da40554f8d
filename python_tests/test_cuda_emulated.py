"""The CUDA kernels, run without a GPU: ``csrc/cuda/*.cu`` compiled by the host compiler under the
emulator of the CUDA execution model (``csrc/emu/cuda_emu.h``, built by ``cuda_emulator.py``) and
checked against the CPU kernels: the diffusion's results must be the CPU's bit for bit (both
round every product and sum on its own, in the order of ``csrc/kernels/diffusion_math.h``). The
emulated build lets the host compiler fuse products and sums wherever the source allows, as nvcc
does on a GPU, so a kernel that leaves one to the compiler's choice fails here.

Every GPU test of ``test_cuda.py`` has its counterpart here, except what has no meaning on the
host: device mismatches (the emulated ops take CPU tensors) and the bound on CUDA memory (the
checkpointed backward's results are checked, its memory is not). The emulated build lowers the
grid's y/z limit and the state budget, so that small batches take the paths that large ones take
on a GPU; the tile side follows from the emulated shared-memory limit. Each kernel also runs
under three schedules (forward, reverse and seeded random order of threads between barriers, and
of blocks), which must agree bit for bit; and the suite is shown to fail on copies of the sources
with a barrier removed, a halo shifted by one and a shuffle offset changed.

``D2D_EMU_CSRC=/path/to/csrc`` runs the suite on another copy of the sources (what the
mutation tests do).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cuda_emulator as emu_build
from d2d_ext.diffusion import register_python_parts as register_diffusion_parts
from d2d_ext.soft_iou import register_python_parts as register_soft_iou_parts
from conftest import assert_close_rel, make_generator, random_problem, soft_iou_backward, soft_iou_problem
from cuda_emulator import FORWARD, GRID_YZ_LIMIT, H100_SMEM_OPTIN, H100_SMS, RANDOM, REVERSE, STATE_BUDGET_BYTES

CPU = torch.ops.d2d
TAU = 0.5
SCHEDULES = [(FORWARD, 0), (REVERSE, 0), (RANDOM, 1), (RANDOM, 2)]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    csrc = Path(os.environ.get("D2D_EMU_CSRC", emu_build.CSRC))
    ops = emu_build.build("d2d_emu", tmp_path_factory.mktemp("emu"), csrc)
    register_diffusion_parts("d2d_emu")  # fake kernels and autograd, for gradcheck and opcheck
    register_soft_iou_parts("d2d_emu")
    return ops


@pytest.fixture(autouse=True)
def h100(emu):
    """Each test starts on an emulated H100, forward schedule."""
    emu.configure(H100_SMEM_OPTIN, H100_SMS, FORWARD, 0)
    yield
    emu.configure(H100_SMEM_OPTIN, H100_SMS, FORWARD, 0)


def launches(emu):
    return emu.counters()[0]


def assert_same_bits(got, want, what):
    """The emulated CUDA kernel's result is the CPU kernel's, bit for bit."""
    assert got.shape == want.shape and got.dtype == want.dtype, what
    assert torch.equal(got, want), f"{what}: differs by up to {(got.double() - want.double()).abs().max().item():.3g}"


# --------------------------------------------------------------------------------------------
# The emulator itself (python_tests/emulator_selftest.cu)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", [FORWARD, REVERSE, RANDOM])
def test_emulator_atomics_barrier_shuffle(emu, schedule):
    emu.configure(H100_SMEM_OPTIN, H100_SMS, schedule, 3)
    counts = emu.selftest_count(5, 96)  # 5 blocks of 96 threads: 3 warps each
    assert counts.tolist() == [480.0, 240.0]
    x = torch.randn(4, 256, generator=make_generator(1))
    assert torch.equal(emu.selftest_reverse(x, False), x.flip(1))
    v = torch.randn(3, 128, dtype=torch.float64, generator=make_generator(2))
    torch.testing.assert_close(emu.selftest_warp_sums(v), v.reshape(-1, 32).sum(1), rtol=1e-14, atol=1e-14)


def test_emulator_schedules_expose_a_missing_barrier(emu):
    """Without its barrier the reversal reads slots before their owners write them: in forward
    order thread 0 reads the last slot first, in reverse order the last thread writes it first;
    the two schedules disagree (and forward order is wrong)."""
    x = torch.randn(2, 64, generator=make_generator(3))
    emu.configure(H100_SMEM_OPTIN, H100_SMS, FORWARD, 0)
    forward = emu.selftest_reverse(x, True)
    emu.configure(H100_SMEM_OPTIN, H100_SMS, REVERSE, 0)
    reverse = emu.selftest_reverse(x, True)
    assert not torch.equal(forward, reverse)
    assert not torch.equal(forward, x.flip(1))


def test_emulator_reports_a_deadlock(emu):
    with pytest.raises(RuntimeError, match="deadlock_kernel: deadlock"):
        emu.selftest_deadlock()


def test_emulator_refuses_launches_beyond_the_limits(emu):
    with pytest.raises(RuntimeError, match="1025 threads per block"):
        emu.selftest_count(1, 1025)
    with pytest.raises(RuntimeError, match="an empty grid"):
        emu.selftest_count(0, 32)


# --------------------------------------------------------------------------------------------
# diffuse
# --------------------------------------------------------------------------------------------

# one tile (8x32x32, 3x20x50 in float32); tiles with halos in one or both directions; rows and
# columns of one pixel; 7 samples, more than one grid holds (GRID_YZ_LIMIT)
SIZES = [(8, 32, 32), (3, 20, 50), (2, 150, 130), (2, 30, 200), (2, 200, 30), (1, 1, 500), (1, 500, 1), (1, 1, 1),
         (7, 9, 11)]
STEPS = [0, 1, 7, 20]  # 20: several launches where tiles need halos (8 steps a launch at most)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diffuse_forward_emulated_vs_cpu(emu, dtype, size, steps):
    u0, rates = random_problem(*size, dtype=dtype, tau=TAU, generator=make_generator(sum(size)))
    out = emu.diffuse(u0, rates, TAU, steps)
    assert out.shape == u0.shape and out.dtype == dtype
    assert_same_bits(out, CPU.diffuse(u0, rates, TAU, steps), "forward")


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diffuse_backward_emulated_vs_cpu(emu, dtype, size, steps):
    u0, rates = random_problem(*size, dtype=dtype, tau=TAU, generator=make_generator(sum(size) + 1))
    go = torch.randn(size, dtype=torch.float64, generator=make_generator(2)).to(dtype)
    gu, gr = emu.diffuse_backward(go, u0, rates, TAU, steps)
    ref_u, ref_r = CPU.diffuse_backward(go, u0, rates, TAU, steps)
    assert_same_bits(gu, ref_u, "grad_u0")
    assert_same_bits(gr, ref_r, "grad_rates")


@pytest.mark.parametrize("steps", [0, 1, 20])
@pytest.mark.parametrize("size", SIZES[:6], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diffuse_backward_u0_only_emulated_vs_cpu(emu, dtype, size, steps):
    """output_mask [True, False]: the adjoint launches alone (no forward launch, no states)."""
    u0, rates = random_problem(*size, dtype=dtype, tau=TAU, generator=make_generator(sum(size) + 3))
    go = torch.randn(size, dtype=torch.float64, generator=make_generator(4)).to(dtype)
    before = launches(emu)
    gu, gr = emu.diffuse_backward(go, u0, rates, TAU, steps, [True, False])
    if steps > 0:  # adjoint launches only: as many as the forward of the same steps takes
        forward_launches = launches(emu)
        emu.diffuse(u0, rates, TAU, steps)
        assert forward_launches - before == launches(emu) - forward_launches
    assert gr.shape == (0,) and gu.shape == u0.shape
    ref_u, _ = CPU.diffuse_backward(go, u0, rates, TAU, steps)
    assert_same_bits(gu, ref_u, "grad_u0")
    empty_u, only_r = emu.diffuse_backward(go, u0, rates, TAU, steps, [False, True])
    assert empty_u.shape == (0,)
    assert_same_bits(only_r, CPU.diffuse_backward(go, u0, rates, TAU, steps)[1], "grad_rates")


def test_more_samples_than_one_grid(emu):
    """7 samples with a grid limit of 3 take 3 launches per forward launch, and give the CPU's
    results (checked by the parity tests above for (7, 9, 11); here the launch count)."""
    u0, rates = random_problem(7, 9, 11, dtype=torch.float64, tau=TAU)
    before = launches(emu)
    emu.diffuse(u0, rates, TAU, 5)  # one tile, all steps in one launch per chunk of samples
    assert launches(emu) - before == -(-7 // GRID_YZ_LIMIT)


@pytest.mark.parametrize("size,where", [((2, 9, 7), (0, 4, 6)), ((1, 130, 120), (0, 64, 0)), ((1, 130, 120), (0, 31, 47))],
                         ids=["crop-edge", "tile-image-edge", "tile-corner"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_diffuse_nonfinite_reach_emulated(emu, size, where, value):
    """A NaN / Inf in u0 reaches the same pixels as on the CPU (the README's documented
    behaviour): no leak through the tiles' shared-memory ring or halos, none across rows."""
    u0, rates = random_problem(*size, dtype=torch.float32, tau=TAU, generator=make_generator(5))
    u0[where] = value
    for steps in (1, 7, 20):
        out = emu.diffuse(u0, rates, TAU, steps)
        ref = CPU.diffuse(u0, rates, TAU, steps)
        assert torch.equal(out.isfinite(), ref.isfinite()), steps
        assert_same_bits(out[ref.isfinite()], ref[ref.isfinite()], f"{steps} steps")


@pytest.mark.parametrize("size,steps,dtype", [((1, 40, 50), 30, torch.float64), ((2, 70, 90), 25, torch.float32)],
                         ids=["one-tile-float64", "tiles-float32"])
def test_diffuse_checkpointed_backward_emulated(emu, size, steps, dtype):
    """States beyond the (lowered) budget: the backward recomputes segments from checkpoints."""
    numel = size[0] * size[1] * size[2]
    assert steps * numel * torch.finfo(dtype).bits // 8 > STATE_BUDGET_BYTES  # checkpointed
    u0, rates = random_problem(*size, dtype=dtype, tau=0.9, generator=make_generator(3))
    go = torch.randn(size, dtype=torch.float64, generator=make_generator(4)).to(dtype)
    gu, gr = emu.diffuse_backward(go, u0, rates, 0.9, steps)
    ref_u, ref_r = CPU.diffuse_backward(go, u0, rates, 0.9, steps)
    assert_same_bits(gu, ref_u, "grad_u0")
    assert_same_bits(gr, ref_r, "grad_rates")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diffuse_mass_conservation_emulated(emu, dtype):
    u0, rates = random_problem(2, 150, 130, dtype=dtype, tau=TAU, generator=make_generator(7))
    out = emu.diffuse(u0, rates, TAU, 30).double()
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.sum((1, 2)), u0.double().sum((1, 2)), rtol=rtol, atol=0)
    assert out.min().item() >= 0


def smem_bytes(side, dtype):
    """Shared memory of a tile of ``side`` pixels a side (csrc/cuda/diffusion_cuda.cu)."""
    return (2 * (side + 2) ** 2 + 5 * side * side) * torch.finfo(dtype).bits // 8


def tiles(H, W, side, steps):
    """Blocks per sample and launches of a forward of ``steps`` steps with tiles of ``side``."""
    per_launch = min(steps, side // 8)
    fit_y, fit_x = H <= side, W <= side
    if fit_y and fit_x:
        return 1, 1
    inner_h = H if fit_y else side - 2 * per_launch
    inner_w = W if fit_x else side - 2 * per_launch
    return -(-H // inner_h) * -(-W // inner_w), -(-steps // per_launch)


@pytest.mark.parametrize("side", [64, 48, 32, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diffuse_every_tile_side_emulated(emu, side, dtype):
    """The tile side is the largest of 64, 48, 32, 16 whose shared memory fits the device: a
    device limit just above a side's needs picks that side (the block count shows it), and every
    side gives the CPU's results, forward and backward."""
    emu.configure(smem_bytes(side, dtype) + 8, H100_SMS, FORWARD, 0)
    H, W, steps = 70, 90, 9
    u0, rates = random_problem(2, H, W, dtype=dtype, tau=TAU, generator=make_generator(side))
    blocks_before = emu.counters()[1]
    out = emu.diffuse(u0, rates, TAU, steps)
    per_sample, n_launch = tiles(H, W, side, steps)
    assert emu.counters()[1] - blocks_before == 2 * per_sample * n_launch
    assert_same_bits(out, CPU.diffuse(u0, rates, TAU, steps), "forward")
    go = torch.randn((2, H, W), dtype=torch.float64, generator=make_generator(1)).to(dtype)
    for got, want in zip(emu.diffuse_backward(go, u0, rates, TAU, steps), CPU.diffuse_backward(go, u0, rates, TAU, steps)):
        assert_same_bits(got, want, "backward")


def test_shared_memory_limit_refused_by_name(emu):
    """A device whose shared memory holds no tile: the launcher's request is refused, and the
    error says so (what a too-small GPU would report, through C10_CUDA_CHECK)."""
    emu.configure(smem_bytes(16, torch.float32) - 1, H100_SMS, FORWARD, 0)
    u0, rates = random_problem(1, 20, 20, dtype=torch.float32, tau=TAU)
    with pytest.raises(RuntimeError, match="emulated CUDA error.*cudaFuncSetAttribute"):
        emu.diffuse(u0, rates, TAU, 3)


def test_diffuse_noncontiguous_emulated(emu):
    u0, rates = random_problem(3, 70, 90, dtype=torch.float64, tau=TAU, generator=make_generator(8))
    u_nc = u0.transpose(1, 2).contiguous().transpose(1, 2)
    r_nc = rates.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    r_exp = rates[:1].expand(3, 4, 70, 90)
    assert not u_nc.is_contiguous() and not r_nc.is_contiguous()
    torch.testing.assert_close(emu.diffuse(u_nc, r_nc, TAU, 9), emu.diffuse(u0, rates, TAU, 9), rtol=0, atol=0)
    torch.testing.assert_close(emu.diffuse(u0, r_exp, TAU, 9), emu.diffuse(u0, r_exp.contiguous(), TAU, 9), rtol=0, atol=0)


def test_diffuse_autograd_and_gradcheck_emulated(emu):
    u0, rates = random_problem(2, 5, 4, dtype=torch.float64, tau=TAU, generator=make_generator(9))
    assert torch.autograd.gradcheck(lambda u, r: emu.diffuse(u, r, TAU, 5),
                                    (u0.requires_grad_(True), rates.requires_grad_(True)))


@pytest.mark.parametrize("steps", [0, 3])
def test_opcheck_diffuse_emulated(emu, steps):
    u0, rates = random_problem(2, 6, 5, dtype=torch.float64, tau=TAU, generator=make_generator(10))
    torch.library.opcheck(emu.diffuse.default, (u0, rates, TAU, steps))
    torch.library.opcheck(emu.diffuse.default, (u0.clone().requires_grad_(True), rates.clone().requires_grad_(True), TAU, steps))
    go = torch.randn((2, 6, 5), dtype=torch.float64)
    torch.library.opcheck(emu.diffuse_backward.default, (go, u0, rates, TAU, steps))


# --------------------------------------------------------------------------------------------
# soft_iou
# --------------------------------------------------------------------------------------------

# (2, 3, 50, 60): 9 blocks per sample, reduced across blocks; (7, 3000): more samples than one
# grid holds; (1, 300001): hundreds of blocks
SOFT_IOU_SHAPES = [(4, 1, 9, 7), (3, 5), (2, 1, 1, 1), (2, 0), (0, 3, 4), (2, 3, 50, 60), (7, 3000), (1, 300001)]


@pytest.mark.parametrize("shape", SOFT_IOU_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probabilities"])
def test_soft_iou_emulated_vs_cpu(emu, from_logits, dtype, shape):
    x, t = soft_iou_problem(shape, dtype, seed=len(shape))
    if not from_logits:
        x = torch.sigmoid(x)
    loss, sums = emu.soft_iou_forward(x, t, 1.0, from_logits)
    ref_loss, ref_sums = CPU.soft_iou_forward(x, t, 1.0, from_logits)
    assert loss.shape == (shape[0],)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss, **tol)
    # float32 inputs: the CPU kernel sums in float32 lanes before it adds them in double
    torch.testing.assert_close(sums, ref_sums, **(dict(rtol=1e-12, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)))
    go = torch.randn(shape[0], dtype=torch.float64, generator=make_generator(1)).to(dtype)
    for mask in ([True, True], [True, False], [False, True]):
        got = emu.soft_iou_backward(go, x, t, sums, 1.0, mask, from_logits)
        ref = CPU.soft_iou_backward(go, x, t, ref_sums, 1.0, mask, from_logits)
        for a, b in zip(got, ref):
            assert a.shape == b.shape
            assert_close_rel(a.double(), b.double(), 1e-11 if dtype == torch.float64 else 1e-4, str(mask))


def test_soft_iou_partial_sums_reduce_across_blocks(emu):
    """The forward's partial sums: several blocks per sample, and a grid of more samples than one
    launch holds (ceil(7 / GRID_YZ_LIMIT) launches of the reduction, then the loss kernel)."""
    x, t = soft_iou_problem((7, 3000), torch.float64, seed=2)
    before = launches(emu)
    emu.soft_iou_forward(x, t, 1.0)
    assert launches(emu) - before == -(-7 // GRID_YZ_LIMIT) + 1


def test_soft_iou_extreme_and_noncontiguous_emulated(emu):
    x, t = soft_iou_problem((3, 2, 20, 30), torch.float32, seed=3)
    x = x * 400  # many logits beyond +-80
    xn = x.transpose(2, 3).contiguous().transpose(2, 3)
    big = torch.zeros((3, 2, 40, 30))
    big[:, :, ::2] = t
    tn = big[:, :, ::2]
    assert not xn.is_contiguous() and not tn.is_contiguous()
    loss, sums = emu.soft_iou_forward(xn, tn, 1.0)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, CPU.soft_iou_forward(x, t, 1.0)[0], rtol=1e-5, atol=1e-6)
    go = torch.ones(3)
    gx, _ = emu.soft_iou_backward(go, xn, tn, sums, 1.0, [True, False])
    assert torch.isfinite(gx).all()
    assert_close_rel(gx, soft_iou_backward(go, x, t, 1.0, [True, False])[0], 1e-4, "grad_logits")


def test_soft_iou_gradcheck_and_opcheck_emulated(emu):
    x, t = soft_iou_problem((3, 2, 4), torch.float64, seed=4)
    xg, tg = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: emu.soft_iou_forward(a, b, 1.0)[0], (xg, tg))
    torch.library.opcheck(emu.soft_iou_forward.default, (xg, tg, 1.0))
    torch.library.opcheck(emu.soft_iou_forward.default, (x, t, 0.5))
    go = torch.randn(3, dtype=torch.float64)
    _, sums = emu.soft_iou_forward(x, t, 1.0)
    for mask in ([True, True], [True, False], [False, True], [False, False]):
        torch.library.opcheck(emu.soft_iou_backward.default, (go, x, t, sums, 1.0, mask))


# --------------------------------------------------------------------------------------------
# Schedules: results may not depend on the order in which threads and blocks run
# --------------------------------------------------------------------------------------------


def run_every_kernel(emu):
    """Every kernel on inputs that reach its halos, launches, checkpoints and cross-block sums."""
    u0, rates = random_problem(2, 70, 90, dtype=torch.float64, tau=0.9, generator=make_generator(11))
    go = torch.randn((2, 70, 90), dtype=torch.float64, generator=make_generator(12))
    x, t = soft_iou_problem((7, 1, 40, 50), torch.float32, seed=13)
    loss, sums = emu.soft_iou_forward(x, t, 1.0)
    p = torch.sigmoid(x)
    p_loss, p_sums = emu.soft_iou_forward(p, t, 1.0, False)
    return [emu.diffuse(u0, rates, 0.9, 20), *emu.diffuse_backward(go, u0, rates, 0.9, 20), loss, sums,
            *emu.soft_iou_backward(torch.ones(7), x, t, sums, 1.0, [True, True]), p_loss, p_sums,
            *emu.soft_iou_backward(torch.ones(7), p, t, p_sums, 1.0, [True, True], False)]


def test_schedules_agree_bit_for_bit(emu):
    results = []
    for schedule, seed in SCHEDULES:
        emu.configure(H100_SMEM_OPTIN, H100_SMS, schedule, seed)
        results.append(run_every_kernel(emu))
    for (schedule, seed), outs in zip(SCHEDULES[1:], results[1:]):
        for i, (a, b) in enumerate(zip(outs, results[0])):
            assert torch.equal(a, b), f"output {i} differs between schedule {schedule} (seed {seed}) and forward order"


# --------------------------------------------------------------------------------------------
# The checks catch real bugs: the suite fails on broken copies of the sources
# --------------------------------------------------------------------------------------------

MUTATIONS = {
    # the barrier between two forward steps (each step reads its neighbours' previous values)
    "missing-syncthreads": ("cuda/diffusion_cuda.cu",
                            "    __syncthreads();\n    T* tmp = cur;\n", "    T* tmp = cur;\n", 1),
    # a halo one pixel short: the last step of a launch reads a pixel no step updated
    "halo-off-by-one": ("cuda/diffusion_cuda.cu", "g.halo_y = fit_y ? 0 : S;", "g.halo_y = fit_y ? 0 : S - 1;", 1),
    # the warp reduction starting at offset 8: lanes 16 to 31 never reach lane 0
    "shuffle-offset": ("cuda/soft_iou_cuda.cu", "for (int off = 16; off > 0; off >>= 1)",
                       "for (int off = 8; off > 0; off >>= 1)", 1),
}


@pytest.mark.slow
@pytest.mark.skipif("D2D_EMU_CSRC" in os.environ, reason="runs the suite itself: not on a mutated copy")
@pytest.mark.parametrize("name", list(MUTATIONS))
def test_suite_fails_on_broken_sources(name, tmp_path):
    path, old, new, count = MUTATIONS[name]
    csrc = tmp_path / "csrc"
    shutil.copytree(emu_build.CSRC, csrc)
    text = (csrc / path).read_text()
    assert text.count(old) >= count, f"the mutation {name!r} no longer applies to {path}"
    (csrc / path).write_text(text.replace(old, new, count))
    assert (emu_build.CSRC / path).read_text() == text  # the production source is untouched
    here = Path(__file__).resolve()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(here), "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow"],
        env={**os.environ, "D2D_EMU_CSRC": str(csrc)}, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    out = proc.stdout + proc.stderr
    summary = out.strip().splitlines()[-1]
    # a test failed (-x: the first one stops the run); not a build error or a crash
    assert proc.returncode == 1 and "1 failed" in summary and "error" not in summary, out[-3000:]
