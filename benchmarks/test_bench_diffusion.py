"""d2d.diffuse against the plain-torch reference of the same formula, eager and torch.compile'd,
side by side.

Run: pytest benchmarks --benchmark-only   (or python benchmarks/report.py for the ratio table)
"""

import pytest
import torch

import d2d_ext
from d2d_ext.reference import diffuse_reference

from gpu_limits import diffuse_forward_traffic
from cases import (DIFFUSE_BACKWARD_CASES, DIFFUSE_CASES, DIFFUSE_STEPS, DIFFUSE_TAU, HEAVY_CASES, devices,
                   diffuse_inputs, measure, sync)
from compiled import compiled_diffuse

# impl -> a factory of the function (torch.compile's is built afresh for each benchmark)
IMPLS = {"d2d": lambda: d2d_ext.diffuse, "torch-reference": lambda: diffuse_reference, "torch-compile": compiled_diffuse}


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", list(DIFFUSE_CASES))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_diffuse_forward(benchmark, impl, case, device):
    u0, rates = diffuse_inputs(case, device)
    fn = IMPLS[impl]()
    benchmark.group = f"diffuse forward, {case}, {DIFFUSE_STEPS} steps, {device}"
    benchmark.extra_info["pixel_steps"] = u0.numel() * DIFFUSE_STEPS
    if device == "cuda" and impl == "d2d":  # the GPU limit it is held against (report.py)
        benchmark.extra_info["traffic"] = diffuse_forward_traffic(u0.numel() * DIFFUSE_STEPS, u0.element_size())

    def run():
        out = fn(u0, rates, DIFFUSE_TAU, DIFFUSE_STEPS)
        sync(device)
        return out

    out = measure(benchmark, run, heavy=case in HEAVY_CASES and device == "cpu")
    assert torch.allclose(out.sum(), u0.sum(), rtol=1e-3)  # mass is conserved


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", DIFFUSE_BACKWARD_CASES)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_diffuse_forward_backward(benchmark, impl, case, device):
    u0, rates = diffuse_inputs(case, device)
    u0.requires_grad_(True)
    rates.requires_grad_(True)
    weight = torch.rand_like(u0)
    fn = IMPLS[impl]()
    benchmark.group = f"diffuse forward+backward, {case}, {DIFFUSE_STEPS} steps, {device}"
    benchmark.extra_info["pixel_steps"] = u0.numel() * DIFFUSE_STEPS

    def run():
        out = fn(u0, rates, DIFFUSE_TAU, DIFFUSE_STEPS)
        grads = torch.autograd.grad((out * weight).sum(), [u0, rates])
        sync(device)
        return grads

    grad_u0, grad_rates = measure(benchmark, run, heavy=case in HEAVY_CASES and device == "cpu")
    assert grad_u0.shape == u0.shape and grad_rates.shape == rates.shape


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", DIFFUSE_BACKWARD_CASES)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_diffuse_forward_backward_u0(benchmark, impl, case, device):
    """The gradient of u0 alone, rates fixed (a loss through a fixed field): ours runs the adjoint
    chain without forward states; autograd through the references still keeps every step."""
    u0, rates = diffuse_inputs(case, device)
    u0.requires_grad_(True)
    weight = torch.rand_like(u0)
    fn = IMPLS[impl]()
    benchmark.group = f"diffuse forward+backward of u0 alone, {case}, {DIFFUSE_STEPS} steps, {device}"
    benchmark.extra_info["pixel_steps"] = u0.numel() * DIFFUSE_STEPS

    def run():
        out = fn(u0, rates, DIFFUSE_TAU, DIFFUSE_STEPS)
        (grad,) = torch.autograd.grad((out * weight).sum(), [u0])
        sync(device)
        return grad

    grad_u0 = measure(benchmark, run, heavy=case in HEAVY_CASES and device == "cpu")
    assert grad_u0.shape == u0.shape
