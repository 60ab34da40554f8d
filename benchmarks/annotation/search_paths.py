"""Which way each target's mask was found, and how well each way does (markdown tables).

    python benchmarks/annotation/search_paths.py [annotation_datasets.py's options] [--out FILE.md]

Every target of every set (the sets and probes of ``annotation_datasets.py``: its options, the
sets as they are by default) is followed through the annotator with ``Annotator.explain`` (the
decisions ``d2d explain`` prints) and filed by the way its strict component was found (the
window search's last decision: accepted at the first fraction or at a raised one, grown or not, a
structure passed over standing in, a wide window standing in for a noise bump, a long target or
where nothing smaller held a component, or the peak alone) and by what the binarisation did (the
bright region kept as the target's part, gated by the heat where it leaks, or left out by the
leak guard; further parts dropped). Per set and way: the targets, their share, and the mean and
the lowest IoU of a target's mask against its drawn mask (the ground-truth component at its
peak; 0 where the peak lies outside every drawn target). A change to the annotator shows here
which ways it moves; on a new dataset, which ways its targets take and which of them lose.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))  # annotation_datasets
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: md_table
from md_table import command_line, emit  # noqa: E402

from annotation_datasets import annotator, argument_parser, check_args, probe_description, probe_sets, read_settings

from d2d_ext.files import DataError

EIGHT = np.ones((3, 3), bool)


def search_way(steps: list) -> str:
    """The way the window search found the strict component, from its decisions (``Step``)."""
    decided = [st for st in steps if st.stage in ("window", "result")]
    last = decided[-1]
    if last.stage == "result" and "peak alone" in last.outcome:
        return "the peak alone"
    window = [st for st in decided if st.stage == "window"][-1]
    grown = any(st.stage == "grow" and st.outcome == "taken" for st in steps)
    if window.outcome == "accepted":
        first = steps[0].fraction
        way = "accepted at the first fraction" if window.fraction == first else "accepted at a raised fraction"
    elif "noise bump" in window.outcome:
        way = "a wide window for a noise bump"
    elif "long target" in window.outcome:
        way = "a wide window for a long target"
    elif "passed over stands in" in window.outcome:
        way = "a structure passed over"
    else:
        way = "a wide window, nothing smaller"
    return way + (", grown" if grown else "")


def binarize_way(steps: list) -> str:
    """What the binarisation made of the bright region, from its decisions."""
    outcomes = [st.outcome for st in steps if st.stage == "binarize"]
    if any("still reaches the band" in o for o in outcomes):
        way = "left out by the leak guard"
    elif any("the heat reached" in o for o in outcomes):
        way = "gated by the heat"
    else:
        way = "kept as the target's part"
    dropped = sum(o.startswith("a further part, dropped") for o in outcomes)
    return way + (", parts dropped" if dropped else "")


def target_ious(mask: np.ndarray, truth: np.ndarray, traces: list) -> list:
    """Per target (:class:`d2d_ext.annotate.TargetTrace`), the IoU of its mask (the component of
    the image's ``mask`` at its peak) against the drawn target there (0 where there is none)."""
    pred, _ = ndimage.label(mask, EIGHT)
    drawn, _ = ndimage.label(truth, EIGHT)
    out = []
    for t in traces:
        x, y = t.peak
        if not drawn[y, x]:
            out.append(0.0)
            continue
        p, g = pred == pred[y, x] if pred[y, x] else np.zeros_like(mask), drawn == drawn[y, x]
        out.append(float((p & g).sum()) / int((p | g).sum()))
    return out


def follow(sets: list, settings: dict | None = None) -> dict:
    """``{set name: {(kind, way): [target IoUs]}}``, kind ``"search"`` or ``"binarize"``: each
    target's way (:func:`search_way`, :func:`binarize_way`) and the IoU of the mask ``annotate``
    gives it."""
    ann = annotator(settings)
    out = {}
    for s in sets:
        ways = defaultdict(list)
        for image, points, truth in zip(s.images, s.points, s.masks):
            masks = []
            traces = ann.explain(image, points, masks)  # the decisions and annotate's mask, one pass
            for t, iou in zip(traces, target_ious(masks[0], truth > 0, traces)):
                ways[("search", search_way(t.steps))].append(iou)
                ways[("binarize", binarize_way(t.steps))].append(iou)
        out[s.name] = dict(ways)
    return out


def rows_of(followed: dict, kind: str) -> list:
    rows = []
    for name, ways in followed.items():
        total = sum(len(v) for (k, _), v in ways.items() if k == kind)
        for (k, way), ious in sorted(ways.items(), key=lambda kv: -len(kv[1])):
            if k != kind:
                continue
            rows.append([name, way, len(ious), f"{100 * len(ious) / total:.1f}%", f"{100 * np.mean(ious):.1f}",
                         f"{100 * min(ious):.1f}"])
    return rows


def main(argv=None) -> int:
    ap = argument_parser()
    ap.description = __doc__.splitlines()[0]
    args = ap.parse_args(argv)
    check_args(ap, args)
    torch.set_num_threads(1)
    try:
        settings = read_settings(args)
    except DataError as e:
        ap.error(str(e))
    followed = follow(probe_sets(args), settings)
    header = ["set", "way", "targets", "share", "mean target IoU", "lowest target IoU"]
    title = f"settings {settings or 'default'}{probe_description(args)}; command: `{command_line()}`"
    text = emit(f"How each strict component was found; {title}", header, rows_of(followed, "search"))
    text += "\n" + emit("What the binarisation made of each bright region", header, rows_of(followed, "binarize"))
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
