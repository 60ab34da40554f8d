"""Where the time of soft-IoU forward+backward goes, ours against the plain-torch reference.

    python benchmarks/ops/soft_iou_breakdown.py [--threads 2] [--only-autograd]

Medians of 300 calls on the benchmark's input (16x1x256x256 float32): each of our two ops alone,
``torch.sigmoid`` on the same tensor (a part of the reference), forward+backward through
``torch.autograd.grad`` for both, and the same on a 16x1x4x4 input (the fixed autograd cost); with
the minor page faults per call (fresh pages of newly allocated tensors, which the allocator gets
from the kernel: a large part of the time of a call that allocates several 4 MB tensors).
``--only-autograd`` keeps the forward+backward rows, which call no op directly, so the script also
times other builds of d2d_ext (``PYTHONPATH=OTHER_BUILD``) whose op schemas differ.
"""

import argparse
import os
import resource
import time

import torch

import d2d_ext
from d2d_ext.reference import soft_iou_reference


def median_ms(fn, calls=300):
    """``(median milliseconds, minor page faults per call)`` of ``calls`` calls of ``fn``."""
    for _ in range(10):
        fn()
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return sorted(times)[len(times) // 2] * 1e3, faults / calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only-autograd", action="store_true", help="only the forward+backward rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ops = torch.ops.d2d
    rows = []
    for shape in [(16, 1, 256, 256), (16, 1, 4, 4)]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g) * 3
        t = (torch.rand(shape, generator=g) > 0.9).float()
        xg = x.clone().requires_grad_(True)
        name = "x".join(map(str, shape))
        if shape[-1] > 4 and not args.only_autograd:
            _, sums = ops.soft_iou_forward.default(x, t, 1.0)
            go = torch.ones(shape[0])
            rows.append((f"d2d::soft_iou_forward, {name}", median_ms(lambda: ops.soft_iou_forward.default(x, t, 1.0))))
            rows.append((f"d2d::soft_iou_backward (logits), {name}", median_ms(
                lambda: ops.soft_iou_backward.default(go, x, t, sums, 1.0, [True, False]))))
            rows.append((f"torch.sigmoid, {name}", median_ms(lambda: torch.sigmoid(x))))
        rows.append((f"ours forward+backward, {name}", median_ms(
            lambda: torch.autograd.grad(d2d_ext.soft_iou(xg, t, 1.0).sum(), [xg]))))
        rows.append((f"reference forward+backward, {name}", median_ms(
            lambda: torch.autograd.grad(soft_iou_reference(xg, t, 1.0).sum(), [xg]))))
    print(f"d2d_ext from {os.path.dirname(d2d_ext.__file__)}, torch threads {args.threads}\n\n| what | median ms | page faults per call |\n|---|---|---|")
    for what, (ms, faults) in rows:
        print(f"| {what} | {ms:.3f} | {faults:.0f} |")


if __name__ == "__main__":
    main()
