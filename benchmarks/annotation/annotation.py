"""Pseudo-mask quality and speed of the annotator against its baselines, side by side.

    python benchmarks/annotation/annotation.py [--dataset ROOT] [--split all] [--points centroid]
                                               [--out FILE.md] [--particles 100,1000] [--seeds 3]

Methods, run one after the other in one process on the same loaded images and points:

- ours: ``d2d_ext.annotate.Annotator().annotate`` (deterministic heat field), run twice to check
  that the masks are identical (its std over seeds is 0 by construction);
- Monte Carlo walk (``d2d_ext.baselines.monte_carlo_masks``) with each particle count, once per
  seed: the same pipeline with the field estimated by a particle walk with the same jump rates;
- superpixel prior only, local threshold (mean + 1 std in 15x15), the point alone.

Metrics: ``d2d_ext.metrics.ISTDMetrics`` (IoU, nIoU, Pd in percent, Fa per 1e6 pixels) against the
ground truth at native resolution. Time: compute only (images, points and masks are loaded before;
metrics are not timed), ``torch.set_num_threads(1)``, after one warm-up call per method on a small
synthetic image, divided by the number of points. Images are processed in chunks of 16.

Default dataset: ``<workspace>/shared/data/SIRST-v1`` if it exists, else 40 synthetic images
(``d2d_ext.synthetic.write_dataset(tmp, 40, seed=0)``) in a temporary folder.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: machine, workspace
import machine  # noqa: E402
from workspace import SHARED_DATA  # noqa: E402

from d2d_ext.annotate import Annotator, prepare_targets, soft_labels
from d2d_ext.baselines import (
    local_threshold_masks,
    monte_carlo_labels,
    monte_carlo_masks,
    point_masks,
    superpixel_masks,
)
from d2d_ext.data import IRDataset
from d2d_ext.files import write_bytes_atomic
from d2d_ext.metrics import ISTDMetrics
from d2d_ext.synthetic import make_scene, write_dataset

CHUNK = 16
DEFAULT_DATASET = SHARED_DATA / "SIRST-v1"


def cpu_summary() -> str:
    return machine.cpu_summary(torch.get_num_threads())


def run_chunked(fn, images, points):
    """``fn(images_chunk, points_chunk) -> masks`` over chunks of 16; ``(masks, seconds)``."""
    masks, seconds = [], 0.0
    for k in range(0, len(images), CHUNK):
        t0 = time.perf_counter()
        out = fn(images[k:k + CHUNK], points[k:k + CHUNK])
        seconds += time.perf_counter() - t0
        masks.extend(out)
    return masks, seconds


def score(masks, gts) -> dict:
    m = ISTDMetrics()
    for p, g in zip(masks, gts):
        m.update(p, g)
    return m.compute()


def fmt(x: float, digits: int = 2) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.{digits}f}"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=None, help=f"dataset root (default {DEFAULT_DATASET} if present, else synthetic)")
    ap.add_argument("--split", default="all")
    ap.add_argument("--points", default="centroid", help="point source of IRDataset.points")
    ap.add_argument("--out", default=None, help="also write the report here (markdown, atomically)")
    ap.add_argument("--particles", default="100,1000", help="comma-separated particle counts of the Monte Carlo walk")
    ap.add_argument("--seeds", type=int, default=3, help="Monte Carlo seeds per particle count")
    args = ap.parse_args(argv)
    try:
        args.particle_counts = [int(p) for p in args.particles.split(",") if p.strip()]
    except ValueError:
        ap.error(f"--particles must be comma-separated integers, got {args.particles!r}")
    if not args.particle_counts or min(args.particle_counts) < 1 or args.seeds < 1:
        ap.error("--particles needs positive counts and --seeds must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    command = shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(["annotation.py", *argv])
    with tempfile.TemporaryDirectory(prefix="d2d_annotation_") as tmp:
        if args.dataset:
            root, label = Path(args.dataset), str(Path(args.dataset).resolve())
        elif DEFAULT_DATASET.is_dir():
            root, label = DEFAULT_DATASET, str(DEFAULT_DATASET)
        else:
            root = write_dataset(Path(tmp) / "SYNTH", 40, seed=0)
            label = "synthetic: write_dataset(tmp, 40, seed=0)"
        ds = IRDataset(root)
        ids = ds.ids(args.split)
        # File I/O first: nothing below reads a file.
        images = [ds.load_image(i) for i in ids]
        points = [ds.points(i, args.points) for i in ids]
        gts = [ds.load_mask(i) for i in ids]
    n_targets = sum(len(p) for p in points)
    if n_targets == 0:
        print("no points in this split: nothing to annotate", file=sys.stderr)
        return 1
    small = make_scene(0, 48, 48, n_targets=1)
    warm = ([small.image], [small.points])

    rows = []  # (name, metrics, ms per target, IoU std over seeds: 0 deterministic, nan not identical)

    def timed(fn, repeats=1):
        fn(*warm)
        return [run_chunked(fn, images, points) for _ in range(repeats)]

    print(f"{len(ids)} images, {n_targets} points; running ...", file=sys.stderr, flush=True)
    annotator = Annotator()
    ours_runs = timed(annotator.annotate, repeats=2)
    ours_masks = ours_runs[0][0]
    identical = all(np.array_equal(a, b) for a, b in zip(ours_runs[0][0], ours_runs[1][0]))
    ours_ms = 1e3 * np.mean([s for _, s in ours_runs]) / n_targets
    ours_metrics = score(ours_masks, gts)
    rows.append(("ours (deterministic field, `diffuse`)", ours_metrics, ours_ms,
                 0.0 if identical else float("nan")))
    print(f"  ours: IoU {ours_metrics['iou']:.2f}, {ours_ms:.2f} ms/target", file=sys.stderr, flush=True)

    mc_summary = []  # (particles, mean IoU, ms per target, images whose masks differ from ours (mean))
    for P in args.particle_counts:
        results, times, differ = [], [], []
        for seed in range(args.seeds):
            def fn(ims, pts, _k=[0]):
                _k[0] += 1  # a different stream per chunk: seed [seed, chunk]
                return monte_carlo_masks(ims, pts, particles=P, seed=[seed, _k[0]])
            fn(*warm)
            masks, sec = run_chunked(fn, images, points)
            results.append(score(masks, gts))
            times.append(sec)
            differ.append(sum(not np.array_equal(a, b) for a, b in zip(masks, ours_masks)))
        mean = {k: float(np.mean([r[k] for r in results])) for k in ("iou", "niou", "pd", "fa")}
        std = float(np.std([r["iou"] for r in results], ddof=1)) if args.seeds > 1 else float("nan")
        ms = 1e3 * float(np.mean(times)) / n_targets
        rows.append((f"Monte Carlo walk, {P} particles (mean of {args.seeds} seeds)", mean, ms, std))
        mc_summary.append((P, mean["iou"], ms, float(np.mean(differ))))
        print(f"  MC {P}: IoU {mean['iou']:.2f} +- {std:.2f}, {ms:.2f} ms/target", file=sys.stderr, flush=True)

    # The heat field alone, on prepared targets: `diffuse` against the walk (seed 0).
    field_sec = {"diffuse": 0.0, **{P: 0.0 for P in args.particle_counts}}
    with torch.no_grad():
        theta = annotator.params()
    soft_labels(prepare_targets(*warm), theta)
    for k in range(0, len(images), CHUNK):
        batch = prepare_targets(images[k:k + CHUNK], points[k:k + CHUNK])
        t0 = time.perf_counter()
        with torch.no_grad():
            soft_labels(batch, theta)
        field_sec["diffuse"] += time.perf_counter() - t0
        for P in args.particle_counts:
            t0 = time.perf_counter()
            monte_carlo_labels(batch, theta, particles=P, seed=[0, k])
            field_sec[P] += time.perf_counter() - t0

    for name, fn in (
        ("superpixel prior only (time includes `prepare_targets`)", superpixel_masks),
        ("local threshold (mean + 1 std, 15x15, component of the point)", local_threshold_masks),
        ("the point alone", point_masks),
    ):
        (masks, sec), = timed(fn)
        rows.append((name, score(masks, gts), 1e3 * sec / n_targets, 0.0))

    lines = [
        "# Annotation benchmark: pseudo-masks against the ground truth",
        "",
        f"- machine: {cpu_summary()}, {platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}",
        f"- dataset: {label} ({len(ids)} images, {n_targets} points)",
        f"- split: {args.split}; points: {args.points}",
        f"- command: `{command}`",
        "- metrics: d2d_ext.metrics.ISTDMetrics at native resolution (IoU, nIoU, Pd in %, Fa per 1e6 pixels);"
        " time: compute only (no file I/O, no metrics), 1 torch thread, after one warm-up call, chunks of 16 images",
        "",
        "| method | IoU | nIoU | Pd | Fa | ms/target | IoU std over seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m, ms, std in rows:
        if std == 0.0 and name.startswith("ours"):
            std_s = "0 (2 runs, identical masks)"
        elif std == 0.0:
            std_s = "0 (deterministic)"
        elif name.startswith("ours"):
            std_s = "NOT identical over 2 runs"
        else:
            std_s = fmt(std)
        lines.append(f"| {name} | {fmt(m['iou'])} | {fmt(m['niou'])} | {fmt(m['pd'])} | {fmt(m['fa'], 1)} | {ms:.3f} | {std_s} |")
    lines.append("")
    close = [(P, iou, ms) for P, iou, ms, _ in mc_summary if abs(iou - ours_metrics["iou"]) <= 0.5]
    if close:
        P, iou, ms = min(close)
        lines.append(f"Monte Carlo reaches ours within 0.5 IoU at {P} particles (IoU {iou:.2f} vs {ours_metrics['iou']:.2f}):"
                     f" {ms / ours_ms:.2f}x our time per target.")
    else:
        lines.append(f"No particle count reached ours within 0.5 IoU (ours {ours_metrics['iou']:.2f}).")
    for P, iou, ms, differ in mc_summary:
        lines.append(f"- {P} particles: {ms / ours_ms:.2f}x our time; masks differ from ours on {differ:.1f} of {len(ids)} images (mean over seeds)")
    field_ms = {key: 1e3 * sec / n_targets for key, sec in field_sec.items()}
    lines.append("")
    lines.append("Heat field alone (soft labels from prepared targets, fusion included): `diffuse` "
                 f"{field_ms['diffuse']:.3f} ms/target; "
                 + "; ".join(f"walk with {P} particles {field_ms[P]:.3f} ms/target ({field_ms[P] / field_ms['diffuse']:.1f}x)"
                             for P in args.particle_counts) + ".")
    if not identical:
        lines.append("WARNING: two runs of ours gave different masks.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_bytes_atomic(args.out, text.encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
