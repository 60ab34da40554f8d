"""Every CUDA kernel once, on small inputs, for NVIDIA's compute-sanitizer (and checked against the
CPU kernels, so a run also says whether the results held while it watched).

    compute-sanitizer --tool memcheck  python3 benchmarks/ops/gpu_sanitize.py
    compute-sanitizer --tool racecheck python3 benchmarks/ops/gpu_sanitize.py
    compute-sanitizer --tool synccheck python3 benchmarks/ops/gpu_sanitize.py

The cases cover each kernel path at a size a sanitized run finishes quickly: one tile and tiles
with halos in both directions, several launches (more steps than one launch takes), the
checkpointed backward (a state budget exceeded), the backward of u0 alone, both dtypes, and
soft-IoU with one and with several blocks per sample, from logits and from probabilities.
``bash benchmarks/gpu_session.sh`` runs it under each tool (STEPS=sanitize).
"""

import sys

import torch

import d2d_ext
from d2d_ext.soft_iou import soft_iou_loss

OPS = torch.ops.d2d


def diffuse_case(shape, steps, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    u0 = torch.rand(shape, generator=g, dtype=dtype)
    rates = torch.rand(shape[0], 4, *shape[1:], generator=g, dtype=dtype) * 0.2
    go = torch.randn(shape, generator=g, dtype=dtype)
    out = d2d_ext.diffuse(u0.cuda(), rates.cuda(), 0.9, steps).cpu()
    grads = OPS.diffuse_backward.default(go.cuda(), u0.cuda(), rates.cuda(), 0.9, steps)
    u0_only = OPS.diffuse_backward.default(go.cuda(), u0.cuda(), rates.cuda(), 0.9, steps, [True, False])[0]
    ref = d2d_ext.diffuse(u0, rates, 0.9, steps)
    ref_grads = OPS.diffuse_backward.default(go, u0, rates, 0.9, steps)
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.cpu(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(u0_only.cpu(), ref_grads[0], rtol=tol, atol=tol)


def soft_iou_case(shape, dtype, seed, from_logits=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 3
    if not from_logits:
        x = torch.sigmoid(x)  # the probability path reads p directly
    t = torch.rand(shape, generator=g, dtype=dtype)
    xc = x.cuda().requires_grad_(True)
    tc = t.cuda().requires_grad_(True)
    soft_iou_loss(xc, tc, smooth=1.0, reduction="sum", from_logits=from_logits).backward()
    xr = x.clone().requires_grad_(True)
    tr = t.clone().requires_grad_(True)
    soft_iou_loss(xr, tr, smooth=1.0, reduction="sum", from_logits=from_logits).backward()
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(xc.grad.cpu(), xr.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(tc.grad.cpu(), tr.grad, rtol=tol, atol=tol)


def main():
    if not torch.cuda.is_available():
        print("gpu_sanitize.py: no CUDA device", file=sys.stderr)
        return 2
    cases = 0
    for dtype in (torch.float32, torch.float64):
        for shape, steps in (((2, 20, 30), 5), ((1, 150, 130), 9), ((2, 70, 33), 17), ((1, 1, 300), 3)):
            diffuse_case(shape, steps, dtype, seed=cases)
            cases += 1
        for shape in ((3, 1, 9, 7), (2, 1, 300, 400)):
            for from_logits in (True, False):
                soft_iou_case(shape, dtype, seed=cases, from_logits=from_logits)
                cases += 1
    # 1024 * 1024 float32 states * 72 steps = 288 MiB > the 256 MiB state budget: checkpointed
    diffuse_case((1, 1024, 1024), 72, torch.float32, seed=cases)
    cases += 1
    torch.cuda.synchronize()
    print(f"gpu_sanitize.py: {cases} cases ran and matched the CPU kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
