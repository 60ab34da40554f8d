"""Pseudo-masks of large targets pressed against a bright band (a cloud bank, a roof): mask size by case.

    python benchmarks/annotation/annotation_touching.py [--seeds 2] [--set NAME=VALUE ...] [--out FILE.md]

The real-image guards (a small target beside a building or a cloud) hold for targets smaller than
the first window; a target larger than it puts that window's band on its own hull, and the tests
that read that band (does a larger component surround the peak?) cannot see a structure the
target touches. Each case is one 320x320 image: a flat band ``2 * half_length`` x ``2 *
half_thickness`` pixels at 0.97, edges blurred over 4 pixels, on a background of 0.42, and below
it a Gaussian target of peak 0.95 (``sigma`` across, 1.5 times that along the band) whose centre
lies ``gap`` pixels past the band's edge, the point at that centre; white noise of 0.01. The
target's own mask is where its Gaussian stands above 0.3 of its contrast. Per case and seed: our
mask's pixels and the local-threshold baseline's, against the target's. A mask several times the
target's took the band.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: md_table
from md_table import command_line, emit  # noqa: E402

from d2d_ext.annotate import Annotator, config_from_dict
from d2d_ext.baselines import local_threshold_masks
from d2d_ext.cli import parse_settings

CASES = tuple((s, g, l, t) for s in (6, 10, 14) for g in (6, 12) for l in (60, 90) for t in (12, 20))
SIZE, BACKGROUND, BAND_LEVEL, PEAK, EDGE, NOISE = 320, 0.42, 0.97, 0.95, 4.0, 0.01


def scene(sigma: float, gap: float, half_length: float, half_thickness: float, seed: int) -> tuple:
    """``(image (SIZE, SIZE) float32, points (1, 2) (x, y), the target's mask (SIZE, SIZE) bool)``
    of one case (see the module's docstring)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    cy, cx = 0.375 * SIZE, 0.5 * SIZE
    band = 1 / (1 + np.exp((np.abs(yy - cy) - half_thickness) / EDGE)) / (1 + np.exp((np.abs(xx - cx) - half_length) / EDGE))
    ty = cy + half_thickness + gap
    target = np.exp(-((yy - ty) ** 2 + ((xx - cx) / 1.5) ** 2) / (2 * sigma ** 2))
    image = np.maximum(BACKGROUND + (BAND_LEVEL - BACKGROUND) * band, BACKGROUND + (PEAK - BACKGROUND) * target)
    image += NOISE * np.random.default_rng(seed).standard_normal(image.shape)
    return np.float32(np.clip(image, 0, 1)), np.array([[cx, ty]]), target >= 0.3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2, help="noise draws per case")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an AnnotatorConfig setting")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    annotator = Annotator(config_from_dict(parse_settings(args.set)))
    rows = []
    for sigma, gap, half_length, half_thickness in CASES:
        ours, local = [], []
        for seed in range(args.seeds):
            image, points, truth = scene(sigma, gap, half_length, half_thickness, seed)
            ours.append(int(annotator.annotate([image], [points])[0].sum()))
            local.append(int(local_threshold_masks([image], [points])[0].sum()))
        rows.append([f"{sigma:g}", f"{gap:g}", f"{2 * half_length:g}x{2 * half_thickness:g}", int(truth.sum()),
                     " ".join(map(str, ours)), " ".join(map(str, local))])
    emit(f"command: `{command_line()}`", ["target sigma (px)", "gap (px)", "band (px)", "target (px)",
                                         "ours, mask px per seed", "local threshold, mask px per seed"], rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
