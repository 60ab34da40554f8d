"""Pseudo-mask quality by target size on synthetic scenes with extended targets (markdown table).

    python benchmarks/annotation/annotation_scale.py [--scenes 60] [--size 512] [--max-area 3000]
        [--seed 0] [--set NAME=VALUE ...] [--out FILE.md]

SIRST-v1's targets are small (median 20 pixels, the largest 330), so it cannot show how the
annotator handles the extended targets of IRSTD-1k-like data. This draws ``--scenes`` synthetic
scenes (:func:`d2d_ext.synthetic.make_scene`, mixed backgrounds, ``--size`` square) whose target
areas are log-uniform up to ``--max-area`` pixels, annotates them from their human-like points
and scores each target by the size of its exact mask: per-target IoU (the predicted components
that touch the target's mask against that mask), the share of targets found at IoU >= 0.5, and
the pooled IoU of the bin's targets; then ``d2d_ext.metrics.ISTDMetrics`` over everything.
Side by side on the same scenes: ours without the window growth (``settle_fraction=0``, no
``wide_half_sizes``: the windows of SIRST-v1's sizes only) and the local-threshold baseline.
``--set`` changes an ``AnnotatorConfig`` setting of ours (``half_sizes=[6,8,10]``), as
``d2d annotate --set`` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: md_table
from md_table import command_line, emit  # noqa: E402

from d2d_ext.annotate import Annotator, config_from_dict
from d2d_ext.baselines import local_threshold_masks
from d2d_ext.cli import parse_settings
from d2d_ext.metrics import EIGHT_CONNECTED, ISTDMetrics
from d2d_ext.synthetic import make_scene

BINS = (0, 50, 200, 800, 3000, np.inf)  # exact mask area, pixels


def per_target(pred: np.ndarray, labels: np.ndarray) -> list:
    """``[(area, intersection, union)]`` of every target of one scene: the predicted
    8-connected components that touch target ``k``'s mask (``labels == k``) against that mask."""
    comp, _ = ndimage.label(pred, EIGHT_CONNECTED)
    out = []
    for k in range(1, int(labels.max()) + 1):
        mask = labels == k
        touching = np.unique(comp[mask & (comp > 0)])
        p = np.isin(comp, touching) if len(touching) else np.zeros_like(mask)
        out.append((int(mask.sum()), int((p & mask).sum()), int((p | mask).sum())))
    return out


def bin_rows(name: str, rows: list) -> list:
    """Table rows (one per size bin, then all targets) of one method's per-target results."""
    a = np.array(rows, dtype=np.float64).reshape(-1, 3)
    table = []
    for lo, hi in list(zip(BINS[:-1], BINS[1:])) + [(0, np.inf)]:
        sel = (a[:, 0] >= lo) & (a[:, 0] < hi) if hi < np.inf or lo > 0 else np.ones(len(a), bool)
        if not sel.any():
            continue
        iou = a[sel, 1] / a[sel, 2]
        what = "all" if (lo, hi) == (0, np.inf) else (f">= {lo}" if hi == np.inf else f"{lo}-{hi}")
        table.append([name, what, int(sel.sum()), f"{100 * iou.mean():.1f}", f"{100 * (iou >= 0.5).mean():.1f}",
                      f"{100 * a[sel, 1].sum() / a[sel, 2].sum():.1f}"])
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--size", type=int, default=512, help="image height and width (pixels)")
    ap.add_argument("--max-area", type=float, default=3000.0, help="largest target area drawn (pixels)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="an AnnotatorConfig setting of ours (repeatable)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    scenes = [make_scene(np.random.default_rng([args.seed, i]), args.size, args.size, "mixed",
                         area_range=(2.0, args.max_area)) for i in range(args.scenes)]
    images = [s.image for s in scenes]
    points = [s.points for s in scenes]
    settings = parse_settings(args.set)
    annotators = {
        "ours": Annotator(config_from_dict(settings)),
        "ours, windows not grown": Annotator(config_from_dict({**settings, "settle_fraction": 0.0, "wide_half_sizes": ()})),
    }
    methods = {name: [] for name in annotators}
    for name, ann in annotators.items():
        for c in range(0, len(scenes), 16):
            methods[name] += ann.annotate(images[c:c + 16], points[c:c + 16])
    methods["local threshold"] = local_threshold_masks(images, points)
    table, summary = [], []
    for name, masks in methods.items():
        rows, metrics = [], ISTDMetrics()
        for m, s in zip(masks, scenes):
            rows += per_target(m, s.labels)
            metrics.update(m, s.mask)
        table += bin_rows(name, rows)
        r = metrics.compute()
        summary.append(f"- {name}: IoU {r['iou']:.2f}, nIoU {r['niou']:.2f}, Pd {r['pd']:.2f}, Fa {r['fa']:.2f}")
    title = (f"{args.scenes} synthetic {args.size}x{args.size} scenes (seed {args.seed}), target areas "
             f"log-uniform 2 to {args.max_area:g} pixels; settings {args.set or 'default'}; command: {command_line()}\n\n"
             + "\n".join(summary))
    header = ["method", "target area (px)", "targets", "mean IoU", "IoU >= 0.5 (%)", "pooled IoU"]
    emit(title, header, table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
