"""Pseudo-masks of large targets pressed against a bright band (a cloud bank, a roof): mask size by case.

    python benchmarks/annotation/annotation_touching.py [--seeds 2] [--set NAME=VALUE ...] [--out FILE.md]

The real-image guards (a small target beside a building or a cloud) hold for targets smaller than
the first window; a target larger than it puts that window's band on its own hull, and the tests
that read that band (does a larger component surround the peak?) cannot see a structure the
target touches. Each case is one image of :func:`d2d_ext.synthetic.make_pressed`: a Gaussian
target (``sigma`` across) whose centre lies ``gap`` pixels past the edge of a flat band as bright
as itself, the point at that centre. Per case and seed: our mask's pixels and the
local-threshold baseline's, against the target's. A mask several times the target's took the
band.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: case_sweep, md_table
from case_sweep import sweep_args  # noqa: E402
from md_table import command_line, emit  # noqa: E402

from d2d_ext.baselines import local_threshold_masks
from d2d_ext.synthetic import make_pressed

# sigma, gap, the band's half-length and half-thickness
CASES = tuple((s, g, l, t) for s in (6, 10, 14) for g in (6, 12) for l in (60, 90) for t in (12, 20))


def main(argv=None) -> int:
    args, annotator = sweep_args(__doc__, 2, argv)
    rows = []
    for sigma, gap, half_length, half_thickness in CASES:
        ours, local = [], []
        for seed in range(args.seeds):
            scene = make_pressed(sigma, gap, half_length, half_thickness, seed)
            ours.append(int(annotator.annotate([scene.image], [scene.points])[0].sum()))
            local.append(int(local_threshold_masks([scene.image], [scene.points])[0].sum()))
        rows.append([f"{sigma:g}", f"{gap:g}", f"{2 * half_length:g}x{2 * half_thickness:g}", int(scene.mask.sum()),
                     " ".join(map(str, ours)), " ".join(map(str, local))])
    emit(f"command: `{command_line()}`", ["target sigma (px)", "gap (px)", "band (px)", "target (px)",
                                         "ours, mask px per seed", "local threshold, mask px per seed"], rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
