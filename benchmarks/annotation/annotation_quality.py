"""Pseudo-mask quality of the annotator by split, point source and ablation (markdown table).

    python benchmarks/annotation/annotation_quality.py [--dataset ROOT] [--out FILE.md]

Rows: the default annotator on the train split (where its settings were chosen), the test split
(held out) and all images, with the human points (``centroid``) and the LESPS ``gen-centroid``
and ``gen-coarse`` points (seed 0); then ablations on all images with human points: no heat
gate (``level=0``: the contrast alone), pure diffusion (``gamma -> 0``), no superpixel prior
(``rho = 1``), windows not grown for extended targets (``settle_fraction=0``, no
``wide_half_sizes``). Metrics: ``d2d_ext.metrics.ISTDMetrics`` at native resolution; time: annotation
compute per target (file I/O excluded), one torch thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: md_table, workspace
from md_table import command_line, emit  # noqa: E402
from workspace import SHARED_DATA  # noqa: E402

from d2d_ext.annotate import Annotator, DiffusionParams, config_from_dict
from d2d_ext.data import IRDataset
from d2d_ext.metrics import ISTDMetrics

DEFAULT_DATASET = SHARED_DATA / "SIRST-v1"


def run(ds, ids, points, config=None, theta=None, seed=0):
    images = [ds.load_image(i) for i in ids]
    pts = [ds.points(i, points, seed=seed) for i in ids]
    gts = [ds.load_mask(i) for i in ids]
    ann = Annotator(config_from_dict(config or {}), DiffusionParams(**(theta or {})))
    ann.annotate(images[:1], pts[:1])  # warm-up
    masks, seconds = [], 0.0
    for s in range(0, len(ids), 16):
        t0 = time.perf_counter()
        masks += ann.annotate(images[s:s + 16], pts[s:s + 16])
        seconds += time.perf_counter() - t0
    metrics = ISTDMetrics()
    for m, g in zip(masks, gts):
        metrics.update(m, g)
    out = metrics.compute()
    out["ms"] = 1e3 * seconds / max(sum(len(p) for p in pts), 1)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=os.environ.get("D2D_SIRST_ROOT", str(DEFAULT_DATASET)))
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds = IRDataset(args.dataset)
    rows = []
    for split in ("train", "test", "all"):
        for points in ("centroid", "gen-centroid", "gen-coarse"):
            if split != "all" and points != "centroid":
                continue
            rows.append((f"default, {split}, {points}", run(ds, ds.ids(split), points)))
    ablations = [
        ("no heat gate (level=0)", {"level": 0.0}, None),
        ("pure diffusion (gamma=1e-6)", None, {"gamma": 1e-6}),
        ("no superpixel prior (rho=1)", None, {"rho": 1.0}),
        ("windows not grown (settle_fraction=0, no wide windows)", {"settle_fraction": 0.0, "wide_half_sizes": ()}, None),
    ]
    for name, config, theta in ablations:
        for split in ("train", "test"):
            rows.append((f"{name}, {split}, centroid", run(ds, ds.ids(split), "centroid", config, theta)))
    header = ["annotator, split, points", "IoU", "nIoU", "Pd", "Fa (1e-6)", "targets", "ms/target"]
    table = [[name, f"{r['iou']:.2f}", f"{r['niou']:.2f}", f"{r['pd']:.2f}", f"{r['fa']:.2f}", r["targets"], f"{r['ms']:.2f}"]
             for name, r in rows]
    emit(f"dataset {ds.root} ({ds.name}); command: {command_line()}", header, table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
