"""Calibration on a few masks, scored on images it never saw (markdown table).

    python benchmarks/annotation/calibration_leaveout.py [--data DIR] [--masks 20] [--seed 0]
        [--min-gain G] [--confidence C] [--dilate K] [--glow F] [--out FILE.md]

For every dataset under ``--data`` (default ``<workspace>/shared/data``; the BasicIRSTD / LESPS
layout): ``d2d_ext.calibrate.calibrate`` fits its settings on ``--masks`` ground-truth masks of the
train split (ids drawn with ``--seed``), then the default annotator, each other mask style of
``d2d_ext.annotate.STYLES`` (no mask read) and the calibrated annotator are scored on held-out
images from the LESPS centroid points (``masks_centroid``): the test split where the dataset has
one (SIRST-v1), else the train images not drawn for the calibration. Metrics:
``d2d_ext.metrics.ISTDMetrics`` at native resolution; one torch thread. The calibration time is the
whole of ``calibrate`` (loading the drawn images and masks included).

``--dilate K`` stands in for a dataset whose annotators drew more generous masks than the
defaults were chosen on: every ground-truth mask grown by K pixels (3x3 square, K times); ``--glow
F`` for one whose annotators drew each target's faint glow: the pixels within 3 of a target above
``F`` of its contrast joined to it (``annotation_datasets.glow_mask``). Either in a temporary copy
of the dataset (images, points and splits linked, masks written), used both for the calibration
and for the scoring.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: md_table, workspace
from md_table import command_line, emit  # noqa: E402
from workspace import SHARED_DATA  # noqa: E402

from annotation_datasets import EvalSet, load_set, restyle, run, score  # the scoring loop of every dataset benchmark

from d2d_ext.annotate import STYLES, Annotator, config_from_dict
from d2d_ext.calibrate import calibrate
from d2d_ext.data import IRDataset
from d2d_ext.files import write_png_atomic

DEFAULT_DATA = SHARED_DATA


def held_out(ds: IRDataset, split: str, drawn: list) -> tuple:
    """``(name, ids)`` of the images to score: the test split if the dataset has one, else the
    images of ``split`` that were not ``drawn``."""
    if (ds.idx_dir / f"test_{ds.name}.txt").is_file():
        return "test", ds.ids("test")
    used = set(drawn)
    return f"{split} minus the {len(drawn)} drawn", [i for i in ds.ids(split) if i not in used]


def restyled_copy(root: Path, into: Path, dilate: int = 0, glow: float = 0.0) -> Path:
    """A copy of the dataset at ``root`` under ``into`` whose masks are in another style (grown by
    ``dilate`` pixels, or with each target's glow at ``glow`` drawn in: :func:`restyle`; the rest
    linked)."""
    ds = IRDataset(root)
    out = into / ds.name
    (out / "masks").mkdir(parents=True)
    for name in ("images", "masks_centroid", "img_idx"):
        (out / name).symlink_to((root / name).resolve())
    for path in sorted(ds.masks_dir.glob("*.png")):
        image = ds.load_image(path.stem) if glow > 0 else None  # only the glow reads the image
        one = EvalSet(ds.name, [path.stem], [image], [], [ds.load_mask(path.stem)])
        restyle(one, dilate, glow)
        write_png_atomic(out / "masks" / path.name, (one.masks[0] * 255).astype(np.uint8))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="folder of datasets (BasicIRSTD / LESPS layout)")
    ap.add_argument("--split", default="train", help="the split the calibration masks are drawn from")
    ap.add_argument("--masks", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-gain", type=float, default=None, help="calibrate's min_gain (default: its own)")
    ap.add_argument("--confidence", type=float, default=None, help="calibrate's confidence (default: its own)")
    ap.add_argument("--dilate", type=int, default=0, help="grow every ground-truth mask by this many pixels first")
    ap.add_argument("--glow", type=float, default=0.0, metavar="FRACTION",
                    help="draw each ground-truth target's glow into its mask first (annotation_datasets.glow_mask)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = Path(args.data)
    if not data.is_dir():
        print(f"no datasets: {data} is not a folder", file=sys.stderr)
        return 2
    rows, notes = [], []
    scratch = tempfile.TemporaryDirectory(prefix="d2d-dilated-")
    options = {k: v for k, v in (("min_gain", args.min_gain), ("confidence", args.confidence)) if v is not None}
    for root in sorted(p for p in data.iterdir() if (p / "images").is_dir()):
        if args.dilate or args.glow:
            root = restyled_copy(root, Path(scratch.name), args.dilate, args.glow)
        ds = IRDataset(root)
        t0 = time.perf_counter()
        fit = calibrate(root, args.split, args.masks, seed=args.seed, **options)
        seconds = time.perf_counter() - t0
        name, ids = held_out(ds, args.split, fit["ids"])
        changed = {k: v for k, v in fit["settings"].items() if v != getattr(config_from_dict({}), k)}
        notes.append(f"- {ds.name}: fitted {fit['settings']} (from {fit['start']}) on {fit['masks']} masks "
                     f"({fit['targets']} targets) in {seconds:.1f} s; their IoU {fit['iou_before']:.2f} -> {fit['iou_after']:.2f}"
                     + "".join(f"; not backed: {m['setting']} {m['value']} ({m['iou']:.2f}, ahead on "
                               f"{100 * m['support']:.1f}% of the resamples)" for m in fit["unsupported"]))
        held = load_set(ds, name, ids)
        for label, settings in (("default", {}), *((f"{k} style", v) for k, v in STYLES.items() if v),
                                ("calibrated", fit["settings"])):
            masks, seconds, _ = run(Annotator(config_from_dict(settings)).annotate, held)
            r = score(held, masks, seconds)
            shown = ", ".join(f"{k}={v}" for k, v in changed.items()) or "(defaults kept)"
            rows.append([ds.name, f"{name} ({len(ids)} images, {held.targets} targets)", label,
                         shown if label == "calibrated" else "",
                         f"{r.iou:.2f}", f"{r.niou:.2f}", f"{r.pd:.2f}", f"{r.fa:.2f}"])
    header = ["dataset", "scored on (held out)", "annotator", "settings changed", "IoU", "nIoU", "Pd", "Fa (1e-6)"]
    style = f", masks grown by {args.dilate} px" if args.dilate else ""
    style += f", each target's glow at {args.glow} of its contrast drawn into its mask" if args.glow else ""
    title = (f"calibration on {args.masks} masks of {args.split} (seed {args.seed}{style}), scored on held-out images; "
             f"command: `{command_line()}`\n\n" + "\n".join(notes))
    emit(title, header, rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
