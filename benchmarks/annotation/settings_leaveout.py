"""The defaults against settings chosen without a dataset: each dataset left out in turn (markdown table).

    python benchmarks/annotation/settings_leaveout.py [--data DIR] [--datasets A,B] [--synthetic-seeds 0,1]
        [--grid NAME=V1,V2,... ...] [--dilate N | --glow F] [--jobs 2] [--cache FILE.json] [--out FILE.md]

The defaults were chosen on every dataset here together; a held-out dataset is none of them. This
asks how much a choice made without a dataset costs it. Every combination of the ``--grid``
settings (default: ``peak_fraction``, ``low_fraction``, ``k_sigma`` and ``point_radius``, each on
a few values of ``d2d_ext.calibrate.GRIDS`` around its default) annotates every set of
``annotation_datasets`` (the real datasets' splits with their LESPS centroid points, and the
synthetic scenes of ``--synthetic-seeds``) and is scored by its pooled IoU per set. The sets fall
into groups, one per dataset (SIRST-v1's two splits are one group; the synthetic scenes another),
and a group's score is the mean of its sets' IoU. For each real dataset left out, the combination
with the best mean over the other groups is chosen (and, apart, the one with the best worst
group), then scored on the dataset left out, beside the defaults and that dataset's own best
combination (which only its masks can pick). ``--dilate N`` / ``--glow F`` score against another
mask style (``annotation_datasets.restyle``: every ground-truth mask grown, or each target's glow
drawn in), to choose that style's settings the same way (``d2d_ext.annotate.STYLES``).

Each combination's result is kept in ``--cache`` (JSON, written atomically after each) and read
back on a rerun, so an interrupted run resumes; a cache made on other sets, or by another version
of ``d2d_ext`` (a digest of its sources and compiled extension), is refused. ``--jobs``
processes annotate combinations side by side (each on one torch thread).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import multiprocessing
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # annotation_datasets (the tests load this file by path)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: md_table, workspace
from md_table import command_line, emit  # noqa: E402
from workspace import SHARED_DATA  # noqa: E402

from annotation_datasets import load_sets, restyle, run

import d2d_ext
from d2d_ext.annotate import Annotator, AnnotatorConfig, config_from_dict
from d2d_ext.cli import parse_settings
from d2d_ext.files import DataError, write_bytes_atomic

#: The settings varied by default and their values, around the defaults in the steps of calibrate's GRIDS
#: (the defaults are chosen here, so a value may lie beyond what calibrate moves to: k_sigma 2.5).
DEFAULT_GRID = {
    "peak_fraction": (0.2, 0.25, 0.3, 0.35, 0.4),
    "low_fraction": (0.2, 0.25, 0.3, 0.35, 0.4),
    "k_sigma": (1.5, 2.0, 2.5),
    "point_radius": (0.0, 1.0, 1.5),
}

SYNTHETIC = "synthetic"

_SETS: list = []  # the sets, loaded once in the parent (the workers see them through fork)


def group_of(set_name: str) -> str:
    """The dataset a set belongs to: ``"SIRST-v1 test"`` -> ``"SIRST-v1"``; synthetic scenes -> ``SYNTHETIC``."""
    return SYNTHETIC if set_name.startswith("synthetic") else set_name.rsplit(" ", 1)[0]


def combination_key(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True)


def annotator_digest() -> str:
    """A digest of the installed ``d2d_ext`` (its Python sources and compiled extension): counts
    cached by another version of the annotator are not this one's."""
    root = Path(d2d_ext.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".so", ".pyd") and p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def pooled_counts(settings: dict) -> dict:
    """``{set name: [intersection, union]}`` of the annotator with ``settings`` on every set."""
    torch.set_num_threads(1)
    annotate = Annotator(config_from_dict(settings)).annotate
    out = {}
    for s in _SETS:
        masks = run(annotate, s)[0]  # in the chunks every benchmark of annotation_datasets uses
        out[s.name] = [sum(int(np.count_nonzero(p & g)) for p, g in zip(masks, s.masks)),
                       sum(int(np.count_nonzero(p | g)) for p, g in zip(masks, s.masks))]
    return out


def _work(settings: dict) -> tuple:
    return combination_key(settings), pooled_counts(settings)


def group_scores(counts: dict) -> dict:
    """``{group: mean IoU (%) of its sets}`` from one combination's ``{set: [inter, union]}``."""
    by_group: dict = {}
    for name, (inter, union) in counts.items():
        by_group.setdefault(group_of(name), []).append(100.0 * inter / max(union, 1))
    return {g: float(np.mean(v)) for g, v in by_group.items()}


def combinations(grid: dict) -> list:
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def shown(value) -> str:
    """A setting's value as the tables write it (``0.3``, ``128``, ``both``)."""
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def describe(settings: dict, defaults: dict) -> str:
    """The settings that differ from ``defaults``, or ``defaults``."""
    moved = [f"`{k}` {shown(v)}" for k, v in settings.items() if v != defaults[k]]
    return ", ".join(moved) or "defaults"


@dataclass
class LeftOut:
    """One dataset left out: its IoU under the defaults and under three choices, each
    ``(settings, its IoU)``: the best mean over the other groups, the best worst other group, and
    its own best."""

    left_out: str
    defaults: float
    by_mean: tuple
    by_worst: tuple
    own: tuple


def leave_each_out(scored: list, defaults: dict) -> list:
    """:class:`LeftOut` per real group of ``scored`` (``[(settings, {group: IoU})]``, one entry
    per combination, ``defaults`` among them); the synthetic group is never left out."""
    base = next(g for c, g in scored if c == defaults)
    out = []
    for group in [g for g in base if g != SYNTHETIC]:
        others = [g for g in base if g != group]
        by_mean = max(scored, key=lambda cs: np.mean([cs[1][g] for g in others]))
        by_worst = max(scored, key=lambda cs: min(cs[1][g] for g in others))
        own = max(scored, key=lambda cs: cs[1][group])
        out.append(LeftOut(group, base[group], *((c, g[group]) for c, g in (by_mean, by_worst, own))))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED_DATA), help="folder of datasets (BasicIRSTD / LESPS layout)")
    ap.add_argument("--datasets", help="comma-separated dataset names under --data (default: all)")
    ap.add_argument("--synthetic-seeds", default="0,1", help="comma-separated seeds ('' for none)")
    ap.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                    help="a setting and its values (replaces the default grid; repeat for several)")
    style = ap.add_mutually_exclusive_group()
    style.add_argument("--dilate", type=int, default=0, help="score against every ground-truth mask grown by this "
                       "many pixels")
    style.add_argument("--glow", type=float, default=0.0, metavar="FRACTION",
                       help="score against ground truth with each target's glow drawn in at this fraction of its "
                            "contrast (annotation_datasets.glow_mask)")
    ap.add_argument("--jobs", type=int, default=2, help="processes annotating combinations side by side")
    ap.add_argument("--cache", default="settings_leaveout.json", help="each combination's counts, for a rerun")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    grid = dict(DEFAULT_GRID)
    if args.grid:
        grid = {}
        for item in args.grid:
            name, _, values = item.partition("=")
            values = [v.strip() for v in values.split(",") if v.strip()]
            if not hasattr(AnnotatorConfig(), name) or not values:
                ap.error(f"--grid {item!r}: expected NAME=V1,V2,... with NAME an AnnotatorConfig setting")
            try:  # numbers as --set reads them, a bare word (destripe=none,both) as itself; each within its span
                grid[name] = tuple(parse_settings([f"{name}={v}"])[name] for v in values)
                for v in grid[name]:
                    config_from_dict({name: v})
            except (DataError, ValueError) as e:
                ap.error(f"--grid {item!r}: {e}")
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    defaults = {name: getattr(AnnotatorConfig(), name) for name in grid}
    for name, values in grid.items():
        if defaults[name] not in values:
            ap.error(f"--grid {name}: the default {shown(defaults[name])} must be one of its values "
                     f"{', '.join(shown(v) for v in values)}")
    if not Path(args.data).is_dir():
        ap.error(f"no datasets: {args.data} is not a folder (the datasets are what this leaves out)")
    if args.dilate < 0 or not 0 <= args.glow < 1:
        ap.error(f"--dilate must be at least 0 and --glow in [0, 1), got {args.dilate} and {args.glow}")
    _SETS[:] = load_sets(args)
    for s in _SETS:
        restyle(s, args.dilate, args.glow)
    names = [s.name for s in _SETS]
    groups = sorted({group_of(n) for n in names})
    if len(groups) < 2 or groups == [SYNTHETIC]:
        ap.error(f"a dataset is left out for the others to choose: need a real dataset and at least one more group "
                 f"(real datasets or --synthetic-seeds), got {groups or 'none'}")
    cache_path = Path(args.cache)
    truth = f"dilate {args.dilate}" if args.dilate else f"glow {args.glow:g}" if args.glow else "as drawn"
    cache = {"sets": names, "truth": truth, "annotator": annotator_digest(), "counts": {}}
    if cache_path.is_file():
        try:
            stored = json.loads(cache_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            ap.error(f"--cache {cache_path}: unreadable ({e}); move it away to start again")
        if stored.get("sets") != names:
            ap.error(f"--cache {cache_path} was made on other sets ({stored.get('sets')}); move it away or name another")
        if stored.get("truth", "as drawn") != truth:
            ap.error(f"--cache {cache_path} was scored against masks {stored.get('truth', 'as drawn')}, this run "
                     f"{truth}; move it away or name another")
        if stored.get("annotator") != cache["annotator"]:
            ap.error(f"--cache {cache_path} was made by another version of d2d_ext (digest {stored.get('annotator')}, "
                     f"this one {cache['annotator']}); move it away or name another")
        cache = stored
    todo = [c for c in combinations(grid) if combination_key(c) not in cache["counts"]]
    print(f"{len(todo)} of {len(combinations(grid))} combinations to annotate; cache {cache_path}", file=sys.stderr)
    if todo:
        pool = multiprocessing.get_context("fork").Pool(args.jobs) if args.jobs > 1 else None
        try:
            done = pool.imap_unordered(_work, todo) if pool else map(_work, todo)
            for n, (key, counts) in enumerate(done, 1):
                cache["counts"][key] = counts
                write_bytes_atomic(cache_path, json.dumps(cache).encode())
                print(f"  {n} / {len(todo)}", file=sys.stderr, flush=True)
        finally:
            if pool:
                pool.terminate()
    scored = [(c, group_scores(cache["counts"][combination_key(c)])) for c in combinations(grid)]
    rows = []
    for r in leave_each_out(scored, defaults):
        rows.append([r.left_out, f"{r.defaults:.2f}"] + [f"{iou:.2f} ({describe(c, defaults)})" for c, iou in
                                                         (r.by_mean, r.by_worst, r.own)])
    base = next(g for c, g in scored if c == defaults)
    every = max(scored, key=lambda cs: np.mean(list(cs[1].values())))
    rows.append(["(none left out: the best mean over every group)",
                 f"{np.mean(list(base.values())):.2f}", f"{np.mean(list(every[1].values())):.2f} "
                 f"({describe(every[0], defaults)})", "", ""])
    grid_text = "; ".join(f"`{k}` {', '.join(shown(v) for v in vs)}" for k, vs in grid.items())
    emit(f"{command_line()}\n\nGrid ({len(scored)} combinations): {grid_text}. IoU of the dataset left out "
         f"(a group's mean over its sets):",
         ["left out", "defaults", "chosen on the others: best mean", "chosen on the others: best worst group",
          "its own best"], rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
