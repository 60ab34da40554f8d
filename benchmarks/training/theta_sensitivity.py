"""How far the online label update can move the pseudo-labels (markdown table).

    python benchmarks/training/theta_sensitivity.py [--dataset ROOT] [--split train] [--run RUN ...]
        [--out FILE.md]

The trainer's theta steps move the raw parameters of :class:`d2d_ext.annotate.DiffusionParams`,
whose values are bounded (``center + spread * tanh(raw)``). Rows: the default theta; each
parameter alone at both ends of its range (``tanh(raw) = -1, +1``: the furthest any number of
theta steps can take it); with ``--run``, the theta that run ended at (the last record of its
``log.jsonl``) and that run's direction of travel followed to ``|tanh(raw)| = 0.5`` and ``1``
for every parameter at once. Columns: how many pixels of the default labels change (``changed``:
pixels in one label set but not the other, as a percentage of the default labels' pixels; no
ground truth used), how many images have any change, and the labels' IoU / nIoU / Pd / Fa
against the ground truth (``d2d_ext.metrics.ISTDMetrics``). Points: the human ``centroid`` points.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: md_table, workspace
from md_table import command_line, emit  # noqa: E402
from workspace import SHARED_DATA  # noqa: E402

from d2d_ext.annotate import Annotator, DiffusionParams
from d2d_ext.data import IRDataset
from d2d_ext.metrics import ISTDMetrics

DEFAULT_DATASET = SHARED_DATA / "SIRST-v1"


def label_sets(ann: Annotator, batches: list, variants: list) -> list:
    """The per-image masks of every variant: ``variants`` is a list of ``(name, tanh_raw (5,))``."""
    out = []
    for name, tanh_raw in variants:
        with torch.no_grad():
            ann.params.raw.copy_(torch.atanh(torch.as_tensor(tanh_raw, dtype=torch.float64).clamp(-1 + 1e-12, 1 - 1e-12)))
        masks = [m for batch in batches for m in ann.masks(batch)]
        out.append((name, masks))
    return out


def compare(default: list, masks: list, gts: list) -> dict:
    changed = sum(int((a ^ b).sum()) for a, b in zip(default, masks))
    metrics = ISTDMetrics()
    for m, g in zip(masks, gts):
        metrics.update(m, g)
    return {**metrics.compute(), "changed": 100.0 * changed / max(sum(int(a.sum()) for a in default), 1),
            "images_changed": sum(bool((a ^ b).any()) for a, b in zip(default, masks))}


def run_direction(run: Path) -> np.ndarray:
    """tanh of the raw theta a run ended at, ``(5,)`` in ``DiffusionParams.NAMES`` order, from its
    log (values back through the bounds)."""
    log = run / "log.jsonl"
    lines = [line for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    if not lines:
        raise SystemExit(f"{log}: no epochs logged")
    theta = json.loads(lines[-1])["theta"]
    ref = DiffusionParams()
    return np.array([(theta[n] - float(ref.center[i])) / float(ref.spread[i]) for i, n in enumerate(ref.NAMES)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=os.environ.get("D2D_SIRST_ROOT", str(DEFAULT_DATASET)))
    ap.add_argument("--split", default="train")
    ap.add_argument("--run", action="append", default=[], help="a training run folder (repeatable)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds = IRDataset(args.dataset)
    ids = ds.ids(args.split)
    ann = Annotator()
    batches = []
    for s in range(0, len(ids), 16):
        chunk = ids[s:s + 16]
        batches.append(ann.prepare([ds.load_image(i) for i in chunk], [ds.points(i, "centroid") for i in chunk]))
    gts = [ds.load_mask(i) for i in ids]
    variants = [("default", np.zeros(5))]
    ref = DiffusionParams()
    for k, name in enumerate(ref.NAMES):
        for end in (-1.0, 1.0):
            v = np.zeros(5)
            v[k] = end
            value = float(ref.center[k] + ref.spread[k] * end)
            variants.append((f"{name} = {value:.3g} (range {'low' if end < 0 else 'high'} end)", v))
    for run in args.run:
        t = run_direction(Path(run))
        variants.append((f"{run}: its final theta", t))
        if np.abs(t).max() > 0:
            for reach in (0.5, 1.0):
                variants.append((f"{run}: its direction, largest tanh(raw) magnitude {reach}", t * reach / np.abs(t).max()))
    sets = label_sets(ann, batches, variants)
    default = sets[0][1]
    header = ["theta", "changed pixels (% of default labels)", "images changed", "IoU", "nIoU", "Pd", "Fa (1e-6)"]
    table = []
    for name, masks in sets:
        r = compare(default, masks, gts)
        table.append([name, f"{r['changed']:.2f}", r["images_changed"], f"{r['iou']:.2f}", f"{r['niou']:.2f}",
                      f"{r['pd']:.2f}", f"{r['fa']:.2f}"])
    emit(f"dataset {ds.root} ({ds.name}), split {args.split} ({len(ids)} images); command: {command_line()}",
         header, table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
