"""Every probe of ``annotation_datasets`` in one run: the sets as they are and as other sensors,
files, clicks and mask styles give them (markdown table).

    python benchmarks/annotation/probe_sweep.py [--style glow] [--set NAME=VALUE ...] [--settings FILE.json]
        [--probe "OPTIONS" ...] [--data DIR] [--datasets A,B] [--synthetic-seeds 0,1] [--jobs 2]
        [--cache FILE.json] [--against OTHER.json] [--out FILE.md]

A change to the annotator lands with every set measured again, as the sets are and under the
probes: the sets here are a few sensors' images, and a change that helps them can cost a dataset
whose sensor is finer or softer, whose files are JPEG or equalized, or whose clicks are off the
centroid. Each probe is one line of ``annotation_datasets.py`` options (``--probe "--zoom 2 --blur
1"``; ``""`` is the sets as they are), read by that script's own parser and applied by its own
functions, so a probe here means what it means there. Default: :data:`PROBES`.

Per probe and set: the pooled IoU, Pd, Fa and the worst image's false-alarm pixels of the
annotator with ``--set`` / ``--settings`` (ours only; ``annotation_datasets.py`` has the
baselines). Each probe's
result is kept in ``--cache`` (JSON, written atomically after each probe) and read back on a
rerun, so an interrupted sweep resumes; a cache made by another version of ``d2d_ext`` (a digest
of its sources and compiled extension), with other settings or on other sets, is refused.

``--against OTHER.json`` compares with another sweep's cache (the previous version's, or other
settings'): every row then reads before -> after, and the lines under the table name each set and
probe that lost more than :data:`LOSS` IoU (a change needs a reason for each) and the largest gain.
To compare two versions of the package, run the sweep under each (``PYTHONPATH`` to a copy of the
other) into two caches, then once more with ``--against``.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # annotation_datasets, settings_leaveout
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: md_table, workspace
from md_table import command_line, emit  # noqa: E402
from workspace import SHARED_DATA  # noqa: E402

from annotation_datasets import argument_parser, check_args, load_sets, probe_sets, read_settings, run, score
from settings_leaveout import annotator_digest

from d2d_ext.annotate import STYLES, Annotator, config_from_dict
from d2d_ext.files import DataError, write_bytes_atomic

#: The probes a change to the annotator is measured under (``annotation_datasets.py`` options):
#: the sets as they are; LESPS coarse points and clicks off by 1 or 2 px; crops (targets at a
#: frame's edge) and mosaics (large frames of many targets; with the images apart, every cloud or
#: sky that an image's edge cut ends inside the frame); the glow drawn into the masks; finer
#: and coarser sensors, softer optics and a panning one; noise, column stripes with JPEG, a coarser
#: JPEG (whose blocks move a saturated region off the top grey level), ramps, a stuck pixel beside
#: each point; fewer grey levels; a camera's display maps; noisy dark bars around the picture (a
#: frame grabbed from a camera's video output: its bright regions end inside the frame).
PROBES = ("", "--points coarse", "--jitter 1", "--jitter 2", "--crop 48", "--crop 64", "--crop 96", "--mosaic 4",
          "--mosaic 4 --mosaic-gap 4", "--glow 0.15", "--zoom 2", "--zoom 2 --blur 1", "--shrink 2", "--blur 0.5",
          "--blur 0.7", "--blur 1", "--smear 3", "--smear 5", "--noise 1", "--noise 2", "--jpeg 70 --stripes 1",
          "--jpeg 50", "--ramp 0.25", "--ramp 0.5", "--ramp 1", "--hot beside", "--levels 64", "--levels 32",
          "--equalize global", "--equalize local", "--pad 32 --pad-noise 0.01")

#: A set and probe whose IoU falls by more than this is named under the table (a change to the
#: annotator needs a reason for each).
LOSS = 0.5

# annotation_datasets options that a probe may not set: the sweep's own, or ones that change what
# is measured rather than the sets
_NOT_PROBES = ("data", "datasets", "synthetic_seeds", "set", "settings", "theta", "soft", "against", "repeats",
               "worst", "out")

# what the cache holds per probe and set (sweep_probe)
FIELDS = ("iou", "pd", "fa", "worst_fa", "worst_image")

_BASE: list = []  # the sets as they are, loaded once in the parent (the workers see them through fork)
_SETTINGS: dict = {}


def probe_args(probe: str, common: list) -> argparse.Namespace:
    """``probe`` (a line of ``annotation_datasets.py`` options) read by that script's parser, with the
    sweep's ``common`` options (``--data`` and the like); raises ``ValueError`` naming a bad probe."""
    ap = argument_parser()
    defaults = ap.parse_args(common)
    try:
        words = shlex.split(probe)
    except ValueError as e:
        raise ValueError(f"--probe {probe!r}: {e}") from None

    def refuse(message):
        raise ValueError(f"--probe {probe!r}: {message}")

    ap.error = refuse  # argparse reports every bad option through it (and check_args too)
    args = ap.parse_args(common + words)  # a probe's --data (say) comes last, read, and refused below
    for name in _NOT_PROBES:
        if getattr(args, name) != getattr(defaults, name):
            refuse(f"--{name.replace('_', '-')} is the sweep's to set, not a probe's")
    check_args(ap, args)
    return args


def sweep_probe(job: tuple) -> tuple:
    """``(probe, {set name: {"iou", "pd", "fa", "worst_fa", "worst_image"}})``: the annotator at
    the sweep's settings on the base sets as ``probe`` gives them."""
    probe, args = job
    torch.set_num_threads(1)
    annotate = Annotator(config_from_dict(_SETTINGS)).annotate
    out = {}
    for s in probe_sets(args, copy.deepcopy(_BASE)):
        r = score(s, run(annotate, s)[0], 0.0, worst=1)
        out[s.name] = {"iou": round(float(r.iou), 4), "pd": round(float(r.pd), 4), "fa": round(float(r.fa), 4),
                       "worst_fa": int(r.worst[0][0]), "worst_image": str(r.worst[0][1])}
    return probe, out


def read_cache(path: Path, what: str) -> dict:
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{what} {path}: unreadable ({e})") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("probes"), dict):
        raise DataError(f"{what} {path}: not a probe_sweep.py cache (no \"probes\")")
    for probe, results in stored["probes"].items():
        for name, r in results.items() if isinstance(results, dict) else [(None, None)]:
            if not isinstance(r, dict) or not set(FIELDS) <= set(r):
                raise DataError(f"{what} {path}: not a probe_sweep.py cache of this version (probe {probe!r}, "
                                f"set {name!r}: expected {', '.join(FIELDS)})")
    return stored


def probe_label(probe: str) -> str:
    """A probe as the table and the lines under it name it."""
    return f"`{probe}`" if probe else "as they are"


def losses(before: dict, after: dict, limit: float = LOSS) -> tuple:
    """``(losses, best)`` between two sweeps' ``{probe: {set: result}}``, over the probe and set
    pairs both hold: ``losses`` the ``(change, probe, set)`` that fell by more than ``limit`` IoU,
    most first; ``best`` the largest gain, or None."""
    changes = [(a[s]["iou"] - b[s]["iou"], p, s) for p, b in before.items() if p in after
               for a in (after[p],) for s in b if s in a]
    fell = sorted((c for c in changes if c[0] < -limit), key=lambda c: c[0])
    best = max(changes, key=lambda c: c[0], default=None)
    return fell, best if best is not None and best[0] > 0 else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an AnnotatorConfig setting")
    ap.add_argument("--settings", help="a JSON file of AnnotatorConfig settings (as d2d calibrate writes); --set wins")
    ap.add_argument("--style", choices=STYLES, default="tight",
                    help="the mask style's settings (d2d_ext.annotate.STYLES); --settings and --set win")
    ap.add_argument("--probe", action="append", metavar="OPTIONS",
                    help="a line of annotation_datasets.py options (repeat; default: PROBES; '' the sets as they are)")
    ap.add_argument("--data", default=str(SHARED_DATA), help="folder of datasets (BasicIRSTD / LESPS layout)")
    ap.add_argument("--datasets", help="comma-separated dataset names under --data (default: all)")
    ap.add_argument("--synthetic-seeds", default="0,1", help="comma-separated seeds ('' for none)")
    ap.add_argument("--jobs", type=int, default=2, help="processes sweeping probes side by side")
    ap.add_argument("--cache", default="probe_sweep.json", help="each probe's results, for a rerun and --against")
    ap.add_argument("--against", metavar="OTHER.json", help="another sweep's cache, shown as before")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    try:
        settings = read_settings(args)  # each within its span, and all of them together
    except DataError as e:
        ap.error(f"settings: {e}")
    common = ["--data", args.data, "--synthetic-seeds", args.synthetic_seeds]
    common += ["--datasets", args.datasets] if args.datasets else []
    probes = list(dict.fromkeys(PROBES if args.probe is None else args.probe))
    try:
        parsed = {p: probe_args(p, common) for p in probes}
    except ValueError as e:
        ap.error(str(e))
    before = None
    if args.against:
        try:
            before = read_cache(Path(args.against), "--against")["probes"]
        except DataError as e:
            ap.error(str(e))
    torch.set_num_threads(1)
    _SETTINGS.clear()
    _SETTINGS.update(settings)
    _BASE[:] = load_sets(parsed[probes[0]])
    names = [s.name for s in _BASE]
    if not names:
        ap.error("no sets: no dataset under --data and no --synthetic-seeds")
    cache_path = Path(args.cache)
    cache = {"sets": names, "annotator": annotator_digest(), "settings": json.loads(json.dumps(settings)), "probes": {}}
    if cache_path.is_file():
        try:
            stored = read_cache(cache_path, "--cache")
        except DataError as e:
            ap.error(f"{e}; move it away to start again")
        for key, what in (("sets", "on other sets"), ("annotator", "by another version of d2d_ext"),
                          ("settings", "with other settings")):
            if stored.get(key) != cache[key]:
                ap.error(f"--cache {cache_path} was made {what} ({stored.get(key)}, here {cache[key]}); "
                         "move it away or name another")
        cache = stored
    todo = [p for p in probes if p not in cache["probes"]]
    print(f"{len(todo)} of {len(probes)} probes to sweep; cache {cache_path}", file=sys.stderr)
    if todo:
        pool = multiprocessing.get_context("fork").Pool(args.jobs) if args.jobs > 1 and len(todo) > 1 else None
        try:
            jobs = [(p, parsed[p]) for p in todo]
            done = pool.imap_unordered(sweep_probe, jobs) if pool else map(sweep_probe, jobs)
            for n, (probe, result) in enumerate(done, 1):
                cache["probes"][probe] = result
                write_bytes_atomic(cache_path, json.dumps(cache, indent=1).encode())
                print(f"  {n} / {len(todo)}: {probe or '(as they are)'}", file=sys.stderr, flush=True)
        finally:
            if pool:
                pool.terminate()
    after = {p: cache["probes"][p] for p in probes}
    rows = []
    for p in probes:
        label = probe_label(p)
        for name, r in after[p].items():
            b = (before or {}).get(p, {}).get(name)
            if before is None:
                rows.append([label, name, f"{r['iou']:.2f}", f"{r['pd']:.2f}", f"{r['fa']:.1f}",
                             f"{r['worst_fa']} ({r['worst_image']})"])
            elif b is None:
                rows.append([label, name, f"(none) -> {r['iou']:.2f}", "", f"(none) -> {r['pd']:.2f}",
                             f"(none) -> {r['fa']:.1f}", f"{r['worst_fa']} ({r['worst_image']})"])
            else:
                rows.append([label, name, f"{b['iou']:.2f} -> {r['iou']:.2f}", f"{r['iou'] - b['iou']:+.2f}",
                             f"{b['pd']:.2f} -> {r['pd']:.2f}", f"{b['fa']:.1f} -> {r['fa']:.1f}",
                             f"{b['worst_fa']} -> {r['worst_fa']} ({r['worst_image']})"])
    shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "default"
    title = f"settings {shown}; command: `{command_line()}`"
    if before is None:
        emit(title, ["probe", "set", "IoU", "Pd", "Fa (1e-6)", "worst image's Fa px"], rows, args.out)
        return 0
    fell, best = losses(before, after)
    title += f"; before: {args.against}"
    lines = [f"Sets and probes that lost more than {LOSS} IoU: " +
             ("; ".join(f"{s} under {probe_label(p)} {c:+.2f}" for c, p, s in fell) or "none") + "."]
    if best is not None:
        lines.append(f"Largest gain: {best[2]} under {probe_label(best[1])} {best[0]:+.2f}.")
    text = emit(title, ["probe", "set", "IoU before -> after", "change", "Pd", "Fa (1e-6)",
                        "worst image's Fa px before -> after"], rows)
    print("\n".join(lines))
    if args.out:
        write_bytes_atomic(args.out, (text + "\n" + "\n".join(lines) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
