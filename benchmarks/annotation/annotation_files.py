"""A dataset annotated and scored with its files, per frame (markdown table).

    python benchmarks/annotation/annotation_files.py [--sizes 512,1920x1080] [--images 40]
        [--targets 2] [--dataset ROOT:SPLIT ...] [--repeats 3] [--threads 1] [--out FILE.md]

What a user waits for in ``d2d annotate``, ``d2d evaluate`` and ``d2d find-bad-pixels`` once
Python has started: each frame's PNG and its point mask decoded, the annotation, the mask encoded
and written atomically; each mask and its ground truth decoded and scored; each frame and its
points read once for the stuck-pixel search. Per frame size, ``--images`` synthetic frames
(:func:`d2d_ext.synthetic.write_dataset`, ``--targets`` targets each) in a temporary folder, the
fastest of ``--repeats`` passes of :func:`d2d_ext.jobs.annotate_dataset` (into a fresh folder
each time), :func:`d2d_ext.jobs.evaluate_dataset` and :func:`d2d_ext.jobs.find_bad_pixels` (a
map per frame size; "-" where no size has the 10 frames it needs), in ms per frame, beside the
annotation's own share (the run's ``seconds``). ``--dataset`` adds a split of a dataset on disk
(BasicIRSTD layout, its centroid points), whose frames come in their own sizes. To compare two
versions of the package, run this script with each on ``PYTHONPATH`` in turn (one process cannot
load two builds of the ops).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # md_table, machine
from machine import cpu_model  # noqa: E402
from md_table import command_line, emit  # noqa: E402

import d2d_ext
from d2d_ext.data import IRDataset
from d2d_ext.files import DataError
from d2d_ext.jobs import annotate_dataset, evaluate_dataset, find_bad_pixels
from d2d_ext.sensor import parse_size
from d2d_ext.synthetic import write_dataset

HEADER = ["frames, how many", "targets per frame", "annotate, ms per frame", "of which annotation", "evaluate, ms per frame",
          "find-bad-pixels, ms per frame"]


def frame_size(text: str) -> tuple:
    """``"512"`` -> ``(512, 512)``, ``"1920x1080"`` -> ``(1920, 1080)`` (W, H)."""
    text = text.strip()
    return (int(text), int(text)) if "x" not in text.lower() else parse_size(text)


def time_jobs(root: Path, split: str, work: Path, repeats: int) -> tuple:
    """The fastest of ``repeats`` passes: ``(annotate seconds, its annotation seconds, evaluate
    seconds, find-bad-pixels seconds or None, targets)`` over ``split`` of the dataset at ``root``,
    each pass writing into fresh folders."""
    best = None
    for k in range(repeats):
        out = work / f"masks{k}"
        t0 = time.perf_counter()
        summary = annotate_dataset(root, split, "centroid", out, progress=False)
        t1 = time.perf_counter()
        evaluate_dataset(root, split, out, progress=False)
        t2 = time.perf_counter()
        try:
            find_bad_pixels(root, split, "centroid", work / f"maps{k}")
            t3 = time.perf_counter() - t2
        except DataError:  # no frame size with enough frames
            t3 = None
        shutil.rmtree(out)
        shutil.rmtree(work / f"maps{k}", ignore_errors=True)
        run = (t1 - t0, summary["seconds"], t2 - t1, t3)
        best = run if best is None else tuple(None if a is None else min(a, b) for a, b in zip(best, run))
    return best + (summary["targets"],)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,1920x1080", help="comma-separated frame sizes: pixels of a square, or WxH")
    ap.add_argument("--images", type=int, default=40, help="frames per size")
    ap.add_argument("--targets", type=int, default=2, help="targets per frame")
    ap.add_argument("--dataset", action="append", default=[], metavar="ROOT:SPLIT",
                    help="a split of a dataset on disk too (repeatable)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per size; the fastest is kept")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the annotation")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    try:
        sizes = [frame_size(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError as err:
        ap.error(f"--sizes: {err}")
    if min(args.images, args.targets, args.repeats, args.threads) < 1:
        ap.error("--images, --targets, --repeats and --threads must be >= 1")
    real = []
    for text in args.dataset:
        root, _, split = text.rpartition(":")
        if not root or not split or not (Path(root) / "images").is_dir():
            ap.error(f"--dataset {text!r}: expected ROOT:SPLIT, ROOT a dataset folder with images/")
        real.append((Path(root), split))
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(write_dataset(Path(tmp) / f"F{w}x{h}" / "F", n_images=args.images, seed=0, height=h, width=w,
                               name="F", n_targets=args.targets), "all", f"{w}x{h} (synthetic)") for w, h in sizes]
        jobs += [(root, split, f"{root.name} {split}") for root, split in real]
        if not jobs:
            ap.error("nothing to time: give --sizes or --dataset")
        time_jobs(jobs[0][0], jobs[0][1], Path(tmp), 1)  # first calls (imports, allocations) untimed
        for root, split, label in jobs:
            annotate, annotation, evaluate, search, targets = time_jobs(root, split, Path(tmp), args.repeats)
            frames = len(IRDataset(root).ids(split))
            per = 1e3 / frames
            rows.append([f"{label}, {frames}", f"{targets / frames:.2f}", f"{annotate * per:.1f}",
                         f"{annotation * per:.1f}", f"{evaluate * per:.1f}",
                         "-" if search is None else f"{search * per:.1f}"])
    emit(f"{d2d_ext.__file__}; {cpu_model()}, {args.threads} torch thread(s); fastest of {args.repeats}; "
         f"command: `{command_line()}`", HEADER, rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
