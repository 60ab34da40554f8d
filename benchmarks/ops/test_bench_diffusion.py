"""d2d.diffuse against the plain-torch reference of the same formula, eager and torch.compile'd,
side by side.

Run: pytest benchmarks/ops --benchmark-only
(or python benchmarks/ops/report.py for the ratio table)
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


# What the backward differentiates (the group's wording): both inputs, or u0 alone with the rates fixed (a loss through
# a fixed field: ours then runs the adjoint chain without forward states, while autograd through
# the references still keeps every step).
GRAD_OF = {"both": "", "u0": " of u0 alone"}


@pytest.mark.parametrize("grad_of", list(GRAD_OF))
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", DIFFUSE_BACKWARD_CASES)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_diffuse_forward_backward(benchmark, impl, case, device, grad_of):
    u0, rates = diffuse_inputs(case, device)
    inputs = [u0.requires_grad_(True)]
    if grad_of == "both":
        inputs.append(rates.requires_grad_(True))
    weight = torch.rand_like(u0)
    fn = IMPLS[impl]()
    benchmark.group = f"diffuse forward+backward{GRAD_OF[grad_of]}, {case}, {DIFFUSE_STEPS} steps, {device}"
    benchmark.extra_info["pixel_steps"] = u0.numel() * DIFFUSE_STEPS

    def run():
        out = fn(u0, rates, DIFFUSE_TAU, DIFFUSE_STEPS)
        grads = torch.autograd.grad((out * weight).sum(), inputs)
        sync(device)
        return grads

    grads = measure(benchmark, run, heavy=case in HEAVY_CASES and device == "cpu")
    assert [g.shape for g in grads] == [x.shape for x in inputs]
