"""Fingerprints of ``diffuse``'s results on a fixed set of cases, to show that two builds of the
CPU kernels (another commit, compiler or ``-march``) give the same bits.

    python benchmarks/ops/bit_hashes.py --out before.json [--library PATH/_C.so]
    python benchmarks/ops/bit_hashes.py --out after.json --compare before.json

220 cases: 11 shapes from 1x1x1 to 3x64x64 and 2x100x90 (the plane sweep, the cache-resident
wavefront and rows of one pixel), float32 and float64, 1, 2, 7, 64 and 100 steps, 1 and 2 threads,
a NaN in u0 at 7 steps and an Inf at 2. With ``--large``, 120 more: 8 samples too large to stay in
cache (the deep passes over tiles, their sub-passes and bands of rows), 1, 5, 16, 17 and 40 steps,
1, 2 and 3 threads, a NaN at 5 steps and an Inf at 17 (about a minute). Per case the SHA-1 of the forward, of both gradients of
``diffuse_backward`` and of the gradient of u0 alone (output mask ``[True, False]``). Inputs come
from seeded generators, so every run sees the same ones.

``--library`` loads that compiled library (``torch.ops.load_library``) instead of importing
d2d_ext, for a build made outside the package (another compiler); it must be the only library
that registers the ``d2d`` ops in the process. ``--compare`` prints the cases whose fingerprints
differ from the file's and exits 1 if any does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import torch

SHAPES = [(3, 16, 16), (5, 32, 32), (2, 17, 31), (1, 1, 40), (2, 40, 1), (1, 1, 1), (3, 64, 64), (2, 100, 90),
          (1, 90, 100), (4, 24, 24), (2, 33, 7)]
STEPS = (1, 2, 7, 64, 100)
LARGE_SHAPES = {torch.float32: [(1, 400, 500), (1, 613, 777), (2, 450, 1100), (1, 1200, 170), (1, 90, 2500)],
                torch.float64: [(1, 300, 400), (1, 257, 700), (3, 130, 900)]}
LARGE_STEPS = (1, 5, 16, 17, 40)


def fingerprints(large: bool = False) -> dict:
    """case name -> [sha1 of the forward, grad u0, grad rates, grad u0 alone]."""
    ops = torch.ops.d2d
    out = {}
    threads_before = torch.get_num_threads()
    try:
        for dtype in (torch.float32, torch.float64):
            _cases(ops, out, dtype, SHAPES, STEPS, (1, 2), nan_at=7, inf_at=2)
        if large:
            for dtype, shapes in LARGE_SHAPES.items():
                _cases(ops, out, dtype, shapes, LARGE_STEPS, (1, 2, 3), nan_at=5, inf_at=17)
    finally:
        torch.set_num_threads(threads_before)
    return out


def _cases(ops, out: dict, dtype, shapes, steps_list, thread_counts, nan_at: int, inf_at: int) -> None:
    for n, h, w in shapes:
        for steps in steps_list:
            for threads in thread_counts:
                torch.set_num_threads(threads)
                g = torch.Generator().manual_seed(n * 1000 + h * 10 + w + steps)
                u = torch.rand(n, h, w, generator=g, dtype=dtype)
                r = torch.rand(n, 4, h, w, generator=g, dtype=dtype) * 0.25
                if steps == nan_at:
                    u[0, 0, 0] = float("nan")
                if steps == inf_at and h * w > 4:
                    u[-1, h // 2, w // 2] = float("inf")
                y = ops.diffuse(u, r, 1.0, steps)
                go = torch.rand(n, h, w, generator=g, dtype=dtype)
                gu, gr = ops.diffuse_backward(go, u, r, 1.0, steps, [True, True])
                gu_alone, _ = ops.diffuse_backward(go, u, r, 1.0, steps, [True, False])
                key = f"{str(dtype).split('.')[-1]} {n}x{h}x{w} {steps} steps {threads} threads"
                out[key] = [hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest()
                            for t in (y, gu, gr, gu_alone)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the fingerprints here (JSON)")
    ap.add_argument("--compare", help="fingerprints of another build (JSON) to compare with")
    ap.add_argument("--library", help="load this compiled library instead of importing d2d_ext")
    ap.add_argument("--large", action="store_true", help="also the samples too large to stay in cache")
    args = ap.parse_args(argv)
    if args.library:
        torch.ops.load_library(args.library)
    else:
        import d2d_ext  # noqa: F401  (registers torch.ops.d2d)
    prints = fingerprints(args.large)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(prints, f, indent=0, sort_keys=True)
    print(f"{len(prints)} cases")
    if args.compare:
        with open(args.compare) as f:
            other = json.load(f)
        names = ("forward", "grad u0", "grad rates", "grad u0 alone")
        differ = [(k, [names[i] for i, (a, b) in enumerate(zip(v, other[k])) if a != b])
                  for k, v in prints.items() if k in other and v != other[k]]
        missing = sorted(set(prints) ^ set(other))
        for k, what in differ:
            print(f"differs: {k}: {', '.join(what)}")
        if missing:
            print(f"in one file only: {len(missing)} cases")
        print(f"{len(differ)} of {len(prints)} cases differ")
        return 1 if differ or missing else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
