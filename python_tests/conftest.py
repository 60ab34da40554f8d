"""Shared fixtures and helpers of the d2d_ext test suite."""

import importlib.util
import sys
from pathlib import Path

import imageio.v3 as iio  # scikit-image's own image I/O (its dependency)
import numpy as np
import pytest
import torch

import d2d_ext  # noqa: F401  (registers torch.ops.d2d)

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(script):
    """The module of ``benchmarks/<script>.py`` (``"training/theta_sensitivity"``), named after
    its file; the scripts put ``benchmarks/common`` on ``sys.path`` themselves."""
    name = Path(script).name
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module

requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine"
)

# Directions of the rates' channel axis: 0 -> (y, x+1), 1 -> (y, x-1), 2 -> (y+1, x), 3 -> (y-1, x).
EAST, WEST, SOUTH, NORTH = 0, 1, 2, 3


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes several seconds (still runs by default; deselect with -m 'not slow')"
    )
    # torch.compile's on-disk caches outlive a rebuild of the ops: a cached graph calls an op with
    # the schema it had when it was cached. The tests compile afresh.
    import torch._functorch.config
    import torch._inductor.config

    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for the module that asks for it, restored afterwards: small torch
    calls on a 2-core machine shared with other work run fastest so (as the CLI sets it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_generator(seed=0):
    """A fresh CPU generator with a fixed seed (tests draw all their data from one)."""
    return torch.Generator().manual_seed(seed)


def random_problem(N, H, W, dtype=torch.float64, device="cpu", tau=0.5, generator=None, fill=1.0):
    """Random ``(u0, rates)`` with ``u0 >= 0`` and ``rates >= 0`` such that
    ``tau * sum_d rates[n, d, y, x] <= fill`` at every pixel (counting every channel, also the
    ones that point outside the image). Drawn on the CPU in float64, then converted."""
    g = generator if generator is not None else make_generator(0)
    u0 = torch.rand((N, H, W), dtype=torch.float64, generator=g)
    rates = torch.rand((N, 4, H, W), dtype=torch.float64, generator=g)
    # Each rate in [0, fill / (4 tau)): the four sum to at most fill / tau.
    rates = rates * (fill / (4.0 * tau))
    return u0.to(device=device, dtype=dtype), rates.to(device=device, dtype=dtype)


def symmetric_rates(N, H, W, dtype=torch.float64, generator=None, scale=1.0, junk_boundary=True):
    """``(N, 4, H, W)`` rates with ``r_{p,d} == r_{q_d(p),opp(d)}`` for every edge (p, q_d(p)) of
    the grid (edge weights uniform in [0, scale)). Entries that point outside the image get random
    junk when ``junk_boundary`` (the op must ignore them), else zero."""
    g = generator if generator is not None else make_generator(0)
    wh = torch.rand((N, H, max(W - 1, 0)), dtype=torch.float64, generator=g) * scale  # (y,x)-(y,x+1)
    wv = torch.rand((N, max(H - 1, 0), W), dtype=torch.float64, generator=g) * scale  # (y,x)-(y+1,x)
    if junk_boundary:
        r = torch.rand((N, 4, H, W), dtype=torch.float64, generator=g) * scale
    else:
        r = torch.zeros((N, 4, H, W), dtype=torch.float64)
    r[:, EAST, :, : W - 1] = wh
    r[:, WEST, :, 1:] = wh
    r[:, SOUTH, : H - 1, :] = wv
    r[:, NORTH, 1:, :] = wv
    return r.to(dtype)


def vjp_reference(fn, inputs, grad_out):
    """Gradients of ``<grad_out, fn(*inputs)>`` w.r.t. ``inputs`` by torch autograd."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    return torch.autograd.grad(out, leaves, grad_out)


def soft_iou_backward(grad_loss, logits, target, smooth, mask=(True, True)):
    """The backward op from the logits: the forward op's sums, then the backward."""
    _, sums = torch.ops.d2d.soft_iou_forward.default(logits, target, float(smooth))
    return torch.ops.d2d.soft_iou_backward.default(grad_loss, logits, target, sums, float(smooth), list(mask))


def soft_iou_problem(shape, dtype, seed=0):
    """Logits (about N(0, 9)) and soft targets in [0, 1) of ``shape``, drawn in float64."""
    g = make_generator(seed)
    logits = (torch.randn(shape, dtype=torch.float64, generator=g) * 3).to(dtype)
    target = torch.rand(shape, dtype=torch.float64, generator=g).to(dtype)
    return logits, target


def assert_close_rel(actual, expected, rtol, msg=""):
    """``max|actual - expected| <= rtol * max|expected|`` (a norm-wise relative check, for results
    whose entries span many orders of magnitude)."""
    assert actual.shape == expected.shape, f"{msg}: shape {actual.shape} != {expected.shape}"
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= rtol * max(scale, 1e-300), f"{msg}: max abs error {err:.3e}, scale {scale:.3e}"


class Killed(BaseException):
    """Stands for the process dying (a BaseException: no ``except Exception`` swallows it)."""


def fit_until(trainer, epoch):
    """Run ``trainer.fit()`` and stop it, as a kill would, when it is about to train ``epoch``."""
    original = trainer.train_epoch

    def dying_epoch():
        if trainer.epoch == epoch:
            raise Killed
        return original()

    trainer.train_epoch = dying_epoch
    with pytest.raises(Killed):
        trainer.fit()


def jpeg_coded(frame, quality):
    """``frame`` (in [0, 1]) through an 8-bit JPEG file at ``quality``, back in [0, 1] (float32)."""
    data = iio.imwrite("<bytes>", np.uint8(np.clip(np.round(255 * frame), 0, 255)), extension=".jpg", quality=quality)
    return np.float32(iio.imread(data, extension=".jpg")) / np.float32(255)
