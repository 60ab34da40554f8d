"""Do a run's learned sample weights follow the quality of its pseudo-labels? (markdown table)

    python benchmarks/training/alpha_label_quality.py RUN [RUN ...] [--dataset ROOT] [--bad 0.5]
        [--out FILE.md]

For each bi-level run folder: the weight of every training image from ``RUN/alpha.csv`` against
the IoU of its initial pseudo-label (the default annotator, human ``centroid`` points) with its
ground-truth mask. A diagnosis only: the ground truth never reaches training. Columns: images,
images whose pseudo-label has IoU below ``--bad`` ("bad labels"), the weights' spread, the AUC of
the weights for telling good labels from bad (the chance that a good-label image outweighs a
bad-label one; 0.5 is chance), the Spearman correlation of weight and label IoU, and the mean
weight of the bad-label images.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: md_table, workspace
from md_table import command_line, emit  # noqa: E402
from workspace import SHARED_DATA  # noqa: E402

from d2d_ext.annotate import Annotator
from d2d_ext.data import IRDataset

DEFAULT_DATASET = SHARED_DATA / "SIRST-v1"


def read_alpha(run: Path) -> tuple:
    """``(ids, alpha)`` from ``run/alpha.csv``."""
    path = run / "alpha.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (a finished training run writes it)")
    rows = [line.split(",") for line in path.read_text().splitlines()[1:] if line.strip()]
    return [r[0] for r in rows], np.array([float(r[1]) for r in rows])


def label_ious(ds: IRDataset, ids: list) -> np.ndarray:
    """Per image: IoU of the default annotator's mask from the centroid points with the ground truth."""
    ann = Annotator()
    out = []
    for s in range(0, len(ids), 16):
        chunk = ids[s:s + 16]
        masks = ann.annotate([ds.load_image(i) for i in chunk], [ds.points(i, "centroid") for i in chunk])
        for i, m in zip(chunk, masks):
            g = ds.load_mask(i)
            out.append((m & g).sum() / max((m | g).sum(), 1))
    return np.array(out, dtype=np.float64)


def auc(good: np.ndarray, bad: np.ndarray) -> float:
    """P(a good-label weight > a bad-label weight), ties counted half; nan if either set is empty."""
    if len(good) == 0 or len(bad) == 0:
        return float("nan")
    diff = good[:, None] - bad[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (average ranks for ties)."""
    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # ties share their mean rank
            sel = v == value
            r[sel] = r[sel].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="bi-level run folders")
    ap.add_argument("--dataset", default=os.environ.get("D2D_SIRST_ROOT", str(DEFAULT_DATASET)))
    ap.add_argument("--bad", type=float, default=0.5, help="label IoU below which a label counts as bad")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds = IRDataset(args.dataset)
    cache: dict = {}
    header = ["run", "images", f"bad labels (IoU < {args.bad})", "weight std", "AUC good > bad",
              "Spearman(weight, label IoU)", "mean weight of bad"]
    table = []
    for run in args.runs:
        ids, alpha = read_alpha(Path(run))
        missing = [i for i in ids if i not in cache]
        cache.update(zip(missing, label_ious(ds, missing)))
        iou = np.array([cache[i] for i in ids])
        bad = iou < args.bad
        table.append([run, len(ids), int(bad.sum()), f"{alpha.std():.3f}", f"{auc(alpha[~bad], alpha[bad]):.3f}",
                      f"{spearman(alpha, iou):.3f}", f"{alpha[bad].mean() if bad.any() else float('nan'):.3f}"])
    emit(f"dataset {ds.root} ({ds.name}); command: {command_line()}", header, table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
