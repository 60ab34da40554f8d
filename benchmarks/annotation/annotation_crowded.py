"""Pseudo-mask quality against the number of targets in a frame (markdown table).

    python benchmarks/annotation/annotation_crowded.py [--scenes 12] [--targets 2,8,16,26]
        [--sizes 128,256,1920x1080] [--seed 9] [--repeats 3] [--set NAME=VALUE ...] [--out FILE.md]

Frames of the held-out data hold up to 26 targets. Crowded targets share windows: a larger
window's component may hold another point (and is not taken), masks that touch are split between
their points, and one target's neighbours lie in another's background band. Per frame size and
target count, ``--scenes`` synthetic SIRST-like scenes (:func:`d2d_ext.synthetic.make_scene` with
``n_targets`` set; targets never touch) scored as ``annotation_datasets.py`` scores a set: ours
and the local threshold side by side, IoU (pooled), nIoU, Pd, Fa, pixel precision and recall, the
worst image's false-alarm pixels and ms per target (the fastest of ``--repeats`` passes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # annotation_datasets
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # md_table
from annotation_datasets import TABLE_HEADER, EvalSet, evaluate, read_settings, scene_set, table_rows  # noqa: E402
from md_table import command_line, emit  # noqa: E402

from d2d_ext.data import DataError
from d2d_ext.sensor import parse_size
from d2d_ext.synthetic import make_scene


def crowded_set(size, targets: int, scenes: int, seed: int) -> EvalSet:
    """``scenes`` synthetic scenes of ``targets`` targets each (seeded), ``size`` pixels square or
    ``(W, H)``."""
    w, h = (size, size) if isinstance(size, int) else size
    key = [seed, targets, w] if w == h else [seed, targets, w, h]  # square frames keep their draws
    drawn = [make_scene(np.random.default_rng(key + [i]), h, w, "mixed", n_targets=targets) for i in range(scenes)]
    return scene_set(f"{w}x{h}, {targets} targets", drawn)


def frame_size(text: str):
    """``"256"`` -> 256 (square), ``"1920x1080"`` -> ``(1920, 1080)`` (W, H)."""
    text = text.strip()
    return int(text) if "x" not in text.lower() else parse_size(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=12, help="scenes per frame size and target count")
    ap.add_argument("--targets", default="2,8,16,26", help="comma-separated target counts per frame")
    ap.add_argument("--sizes", default="128,256", help="comma-separated frame sizes: pixels of a square, or WxH")
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per method and set; the fastest is kept")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an AnnotatorConfig setting")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    counts = [int(n) for n in args.targets.split(",") if n.strip()]
    try:
        sizes = [frame_size(n) for n in args.sizes.split(",") if n.strip()]
    except ValueError as err:
        ap.error(f"--sizes: {err}")
    if args.scenes < 1 or not counts or not sizes or min(counts) < 1:
        ap.error("--scenes and --targets must be whole numbers >= 1, --sizes must name a frame size")
    try:
        settings = read_settings(args)
    except DataError as err:
        ap.error(str(err))
    torch.set_num_threads(1)
    try:
        sets = [crowded_set(size, n, args.scenes, args.seed) for n in counts for size in sizes]
    except ValueError as err:  # more targets than the frame holds apart
        ap.error(str(err))
    results = evaluate(sets, settings, worst=1, repeats=args.repeats)
    emit(f"settings {settings or 'default'}; {args.scenes} synthetic SIRST-like scenes per row (seed {args.seed}); "
         f"command: `{command_line()}`", TABLE_HEADER, table_rows(results), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
