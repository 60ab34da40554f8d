"""Pseudo-masks of long thin targets (a ship's hull, an aircraft seen side-on): IoU by bar size.

    python benchmarks/annotation/annotation_elongated.py [--seeds 4] [--set NAME=VALUE ...] [--out FILE.md]

The synthetic scenes of ``annotation_scale.py`` draw blob-like targets; a long thin one meets the
window search differently: a bar through the point crosses the band of every window shorter than
itself on two opposite sides, and the bar's flat top makes a window's band median the target's own
level where the bar fills most of the band. Each case is one 200x200 image of
:func:`d2d_ext.synthetic.make_bar`: a flat-topped bar ``length`` x ``width`` pixels at ``angle``
degrees, ``snr`` times the correlated noise above it, the point at its centre. Side by side: ours
(with ``--set``) and the local-threshold baseline, per-case IoU over ``--seeds`` noise draws.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: case_sweep, md_table
from case_sweep import sweep_args  # noqa: E402
from md_table import command_line, emit  # noqa: E402

from d2d_ext.baselines import local_threshold_masks
from d2d_ext.synthetic import make_bar

CASES = ((30, 4, 6.0, 0), (40, 5, 6.0, 0), (60, 6, 5.0, 0), (60, 6, 8.0, 0), (80, 10, 8.0, 0),
         (60, 6, 8.0, 30), (60, 6, 8.0, 45))  # length, width, snr, angle (degrees)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred & truth).sum() / max((pred | truth).sum(), 1))


def main(argv=None) -> int:
    args, annotator = sweep_args(__doc__, 4, argv)
    rows = []
    for length, width, snr, angle in CASES:
        ours, local = [], []
        for seed in range(args.seeds):
            bar = make_bar(length, width, snr, seed, angle=angle)
            ours.append(iou(annotator.annotate([bar.image], [bar.points])[0], bar.mask))
            local.append(iou(local_threshold_masks([bar.image], [bar.points])[0], bar.mask))
        rows.append([f"{length}x{width}", f"{angle:g}", f"{snr:g}", int(bar.mask.sum()), " ".join(f"{v:.2f}" for v in ours),
                     f"{np.mean(ours):.2f}", f"{np.mean(local):.2f}"])
    emit(f"command: `{command_line()}`", ["bar (px)", "angle (deg)", "SNR", "true mask (px)", "ours, per seed",
                                         "ours, mean", "local threshold, mean"], rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
