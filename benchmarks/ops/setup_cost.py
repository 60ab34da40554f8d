"""How much of a ``d2d_ext.diffuse`` call is set-up, and how fast its steps run (markdown table).

    python benchmarks/ops/setup_cost.py [--shapes 4096x16x16,1024x32x32,...] [--threads 1] [--reps 7] [--out FILE.md]

For each shape (float32, tau 0.5, seeded inputs), the minimum over ``--reps`` calls of 64 and of 128
steps: the steps' rate is the pixel-steps of the extra 64 steps over the extra time, and the
set-up (building the coefficients, copying in and out, allocating) is the 64-step call's time
less 64 steps at that rate. A shape whose call rate misses a goal while its steps' rate meets it
loses to the set-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: md_table
from md_table import command_line, emit  # noqa: E402

import d2d_ext  # noqa: F401  (registers torch.ops.d2d)

SHAPES = "4096x16x16,1024x32x32,256x64x64,16x256x256,1x1024x1024"


def best_time(u0, rates, steps: int, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.ops.d2d.diffuse(u0, rates, 0.5, steps)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=SHAPES, help="NxHxW, comma-separated")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for shape in args.shapes.split(","):
        N, H, W = (int(v) for v in shape.lower().split("x"))
        g = torch.Generator().manual_seed(0)
        u0 = torch.rand((N, H, W), generator=g)
        rates = torch.rand((N, 4, H, W), generator=g) * 0.45
        t64, t128 = best_time(u0, rates, 64, args.reps), best_time(u0, rates, 128, args.reps)
        per_step = max(t128 - t64, 1e-12) / 64
        setup = t64 - 64 * per_step
        pixels = N * H * W
        rows.append([shape, f"{t64 * 1e3:.2f} ms ({pixels * 64 / t64 / 1e9:.2f} G pixel-steps/s)",
                     f"{pixels / per_step / 1e9:.2f} G pixel-steps/s", f"{setup * 1e3:.2f} ms ({setup / t64:.0%})"])
    emit(f"d2d.diffuse, float32, {args.threads} thread(s), min of {args.reps}; command: `{command_line()}`",
         ["shape", "64 steps", "the steps alone", "set-up"], rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
