"""Does ``d2d find-bad-pixels`` find a sensor's stuck pixels, and nothing else? (markdown table)

    python benchmarks/annotation/bad_pixel_search.py [--data DIR] [--scenes 60] [--out FILE.md]

Sets: every real dataset under ``--data`` (default ``<workspace>/shared/data``), the frames of its
most common size (one sensor's frames share one size; ``find-bad-pixels --size`` picks it), and
``--scenes`` synthetic scenes of 256x256 (seeds 0, 1, ...). Per set, the search
(:class:`d2d_ext.sensor.HotPixelSearch`, default settings, the sets' centroid points) runs on the
clean frames, then on the same frames with stuck pixels at the same places in every frame: 30
drawn at random (seed 0), a pair of neighbours, a 2x2 cluster and one on the border, stuck at the
top of the range (``max(v, 1)``) or at an offset over the scene (``min(v + d, 1)``). A stuck pixel
inside a saturated area is no different from its neighbours there, so it cannot be found (and
does no harm). Then with a display's overlay burned in instead: a crosshair through the frame's
middle, 1 or 3 pixels wide, at the top of the range over everything (targets included).
Reported: pixels found on the clean frames (false), stuck or overlay pixels found, false ones
beside them, and the largest share of frames in which a clean pixel stood out, or held as an
overlay's stroke (the rule asks 0.5 of either).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # annotation_datasets
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: md_table, workspace
from md_table import command_line, emit  # noqa: E402
from workspace import SHARED_DATA  # noqa: E402

from annotation_datasets import crosshair

from d2d_ext.data import IRDataset
from d2d_ext.sensor import HotPixelSearch
from d2d_ext.synthetic import make_scene

LEVELS = (("top of the range", None), ("+0.3", 0.3), ("+0.15", 0.15))
CROSSHAIRS = (1, 3)  # widths of the overlays' lines, pixels


def stuck_map(shape, seed: int = 0) -> np.ndarray:
    """The stuck pixels of the benchmark's sensor of ``shape``: 30 at random, a pair, a 2x2
    cluster, one on the border."""
    H, W = shape
    rng = np.random.default_rng(seed)
    stuck = np.zeros(shape, bool)
    stuck.flat[rng.choice(H * W, 30, replace=False)] = True
    stuck[H // 3, W // 3:W // 3 + 2] = True
    stuck[2 * H // 3:2 * H // 3 + 2, W // 2:W // 2 + 2] = True
    stuck[H - 1, W // 4] = True
    return stuck


def frames_of(root: Path):
    """(name, [(image, points)]) of the most common size of the dataset at ``root``."""
    ds = IRDataset(root)
    (w, h), ids = max(ds.ids_by_size(ds.ids("all")).items(), key=lambda kv: len(kv[1]))
    return f"{ds.name} ({w}x{h})", [(ds.load_image(i), ds.points(i, "centroid")) for i in ids]


def search(frames, stuck=None, offset=None):
    s = HotPixelSearch(frames[0][0].shape)
    for image, points in frames:
        if stuck is not None:
            image = image.copy()
            image[stuck] = 1.0 if offset is None else np.minimum(image[stuck] + offset, 1.0)
        s.add(image, points)
    return s.result()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED_DATA)
    ap.add_argument("--scenes", type=int, default=60, help="synthetic scenes (frames of one sensor)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    sets = [frames_of(p) for p in sorted(args.data.iterdir()) if (p / "images").is_dir()] if args.data.is_dir() else []
    scenes = [make_scene(seed) for seed in range(args.scenes)]
    sets.append(("synthetic (256x256)", [(sc.image, sc.points) for sc in scenes]))
    rows = []
    for name, frames in sets:
        clean = search(frames)
        stuck = stuck_map(frames[0][0].shape)
        row = [name, str(len(frames)), str(int(clean.map.sum())), f"{clean.share.max():.3f}", f"{clean.held.max():.3f}"]
        marked = [(stuck, offset) for _, offset in LEVELS] + [(crosshair(stuck.shape, w), None) for w in CROSSHAIRS]
        for bad, offset in marked:
            found = search(frames, bad, offset).map
            row.append(f"{int((found & bad).sum())} of {int(bad.sum())}, {int((found & ~bad).sum())} false")
        rows.append(row)
    header = (["set", "frames", "found on clean frames", "largest share, clean", "largest held, clean"]
              + [f"stuck: {n}" for n, _ in LEVELS] + [f"overlay: crosshair {w} px" for w in CROSSHAIRS])
    emit(f"find-bad-pixels on clean frames, and on frames with stuck pixels or an overlay; command: `{command_line()}`",
         header, rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
