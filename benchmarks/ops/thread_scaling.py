"""How ``d2d_ext.diffuse`` scales from 1 to 2 threads, per shape (markdown table).

    python benchmarks/ops/thread_scaling.py [--reps 15] [--threads 1,2] [--out FILE.md]

Forward, and forward+backward (``diffuse`` then ``diffuse_backward``), 64 steps, float32, on the
shapes where parallelism over samples alone falls short (one large frame) and on batches of
images and of crops (the plane sweep); the
minimum of ``--reps`` runs, the thread counts interleaved so that a noisy neighbour hits both.
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

STEPS, TAU = 64, 0.5
CASES = [("forward", (1, 1024, 1024)), ("forward", (1, 4096, 4096)), ("forward+backward", (1, 1024, 1024)),
         ("forward", (1, 300, 2000)), ("forward+backward", (1, 4096, 300)), ("forward", (16, 256, 256)),
         ("forward+backward", (16, 256, 256)), ("forward", (1024, 32, 32)), ("forward+backward", (1024, 32, 32)),
         ("forward", (4096, 16, 16)), ("forward", (256, 64, 64))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    ops = torch.ops.d2d
    rows = []
    for kind, (N, H, W) in CASES:
        g = torch.Generator().manual_seed(0)
        u0 = torch.rand((N, H, W), generator=g)
        rates = torch.rand((N, 4, H, W), generator=g) * (0.9 / (4 * TAU))
        go = torch.randn((N, H, W), generator=g)

        def run():
            ops.diffuse(u0, rates, TAU, STEPS)
            if kind == "forward+backward":
                ops.diffuse_backward(go, u0, rates, TAU, STEPS)

        best = {}
        for _ in range(args.reps):
            for t in threads:
                torch.set_num_threads(t)
                start = time.perf_counter()
                run()
                best[t] = min(best.get(t, float("inf")), time.perf_counter() - start)
        steps = N * H * W * STEPS
        rows.append([kind, f"{N}x{H}x{W}"]
                    + [f"{best[t] * 1e3:.1f} ms ({steps / best[t] / 1e9:.2f} G pixel-steps/s)" for t in threads]
                    + [f"{best[threads[0]] / best[threads[-1]]:.2f}x"])
    header = ["op", "shape"] + [f"{t} thread{'s' if t > 1 else ''}" for t in threads] + [f"{threads[-1]} / {threads[0]}"]
    emit(f"d2d.diffuse, 64 steps, float32, min of {args.reps}; command: `{command_line()}`", header, rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
