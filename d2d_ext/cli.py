"""Command line: ``python -m d2d_ext <command>`` (also installed as ``d2d``).

- ``annotate``: single points to pseudo-masks for a dataset split (atomic, resumable); ``--style``
  picks the mask style (:data:`d2d_ext.annotate.STYLES`), ``--settings`` and ``--set`` single
  settings.
- ``calibrate``: fit a few binarisation settings of the annotator on N ground-truth masks of a
  split (:mod:`d2d_ext.calibrate`), for ``annotate --settings``.
- ``evaluate``: IoU, nIoU, Pd and Fa of a folder of predicted masks against the ground truth.
- ``find-bad-pixels``: a bad-pixel map (pixels stuck high, a display's overlay burned in) from
  many frames of one sensor, for ``--bad-pixels`` (:mod:`d2d_ext.sensor`).
- ``explain``: why each target of an image gets its mask, the window search's and the
  binarisation's decisions (:meth:`d2d_ext.annotate.Annotator.explain`).
- ``train``, ``test``, ``select``: the bi-level trainer (:mod:`d2d_ext.bilevel`); ``train`` has
  one option per training setting, made from the fields of
  :class:`~d2d_ext.bilevel.config.TrainConfig` (their defaults and descriptions live there).
- ``convert-checkpoint``: a BasicIRSTD / LESPS DNANet checkpoint to d2d's format, for ``test``.
- ``demo``: the main job on embedded data: write a synthetic infrared dataset, annotate it from
  its points, evaluate, print the metrics.

This module reads the command line and calls the library: the dataset jobs of ``annotate`` and
``evaluate`` are :mod:`d2d_ext.jobs`.

Commands that report print one JSON object as their last stdout line; progress goes to stderr.
``evaluate`` and ``test`` also print a readable summary line before it, which ``--json`` leaves
out. Settings that take one of a few values (models, modes, point sources, ...) are checked when
the command line is read: anything else stops with argparse's ``error: ...`` listing the valid
values, exit code 2. Bad input stops with ``error: ...`` naming the file and exit code 2; an
output that cannot be written (full disk, read-only folder) with ``error: ...`` naming it and
exit code 1. Files already written stay complete, and temporary files of a killed run are
removed when it is run again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from .files import DataError, json_line, write_bytes_atomic
from .jobs import annotate_dataset, evaluate_dataset, explain_images, find_bad_pixels
from .spans import Span, finite_number


def _annotator_config(args):
    """The :class:`~d2d_ext.annotate.AnnotatorConfig` of ``--style``, ``--settings`` and ``--set``
    (the file wins over the style, ``--set`` over both)."""
    from .annotate import config_from_dict
    from .calibrate import checked_settings, load_settings

    values = load_settings(args.settings) if args.settings else {}
    values.update(checked_settings(parse_settings(args.set), "--set"))
    try:
        return config_from_dict(values, args.style)
    except (TypeError, ValueError) as err:
        raise DataError(f"--set: {err}") from None


def _add_annotator_options(parser, what: str) -> None:
    from .annotate import STYLES

    parser.add_argument("--style", choices=STYLES, default="tight",
                        help="what a mask draws of its target: tight (the defaults: the edge of what the image "
                             "shows of it) or glow (its faint glow too); --settings and --set win")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE", help=f"an AnnotatorConfig setting {what}")
    parser.add_argument("--settings", metavar="FILE.json",
                        help=f'AnnotatorConfig settings {what}: the "settings" object of a JSON file (as calibrate '
                             'writes); --set wins')


def _cmd_annotate(args) -> dict:
    from .annotate import Annotator, DiffusionParams

    if args.soft_style != "field" and args.soft is None:
        raise DataError(f"--soft-style {args.soft_style} needs --soft DIR: the folder its soft labels go to")
    _set_threads(args.threads)
    annotator = Annotator(_annotator_config(args), DiffusionParams())
    return annotate_dataset(args.dataset, args.split, args.points, args.out, args.overlay,
                            seed=args.seed, batch_images=args.batch_images, annotator=annotator,
                            progress=not args.quiet, soft=args.soft, bad_pixels=args.bad_pixels,
                            soft_style=args.soft_style)


def _cmd_calibrate(args) -> dict:
    from .calibrate import calibrate

    _set_threads(args.threads)
    result = calibrate(args.dataset, args.split, args.masks, seed=args.seed, points=args.points,
                       min_gain=args.min_gain, confidence=args.confidence, bad_pixels=args.bad_pixels,
                       log=None if args.quiet else lambda m: print(m, file=sys.stderr, flush=True))
    # the file holds exactly what the JSON line says (an undefined IoU as null in both)
    write_bytes_atomic(args.out, (json.dumps(json.loads(json_line(result)), indent=1) + "\n").encode())
    return result


def _cmd_find_bad_pixels(args) -> dict:
    return find_bad_pixels(args.dataset, args.split, None if args.points == "none" else args.points, args.out,
                           size=args.size, seed=args.seed, share=args.share, min_frames=args.min_frames,
                           floor=args.floor)


def _cmd_explain(args) -> dict:
    from .annotate import Annotator, DiffusionParams, Step

    result = explain_images(args.dataset, args.image, args.points, seed=args.seed,
                            annotator=Annotator(_annotator_config(args), DiffusionParams()), bad_pixels=args.bad_pixels)
    if not args.json:
        for image in result["images"]:
            for k, t in enumerate(image["targets"]):
                print(f"{image['id']} target {k}: point (x={t['point'][0]}, y={t['point'][1]}), peak "
                      f"(x={t['peak'][0]}, y={t['peak'][1]}); strict component {t['strict']} px, mask {t['mask']} px")
                for step in t["steps"]:
                    print(f"  {Step(**step)}")
    return result


def _size(value: str) -> tuple:
    """argparse ``type`` of ``--size WxH``."""
    from .sensor import parse_size

    w, h = _argparse_type(parse_size)(value)
    if w < 3 or h < 3:
        raise argparse.ArgumentTypeError(f"{value!r}: both sides must be at least 3 pixels")
    return (w, h)


def _summary(result: dict) -> str:
    """The readable line of ``evaluate`` and ``test``."""
    return (f"IoU {result['iou']:.2f}  nIoU {result['niou']:.2f}  Pd {result['pd']:.2f}%  "
            f"Fa {result['fa']:.2f}e-6  ({result['images']} images, {result['targets']} targets)")


def _cmd_evaluate(args) -> dict:
    result = evaluate_dataset(args.dataset, args.split, args.pred, progress=not args.quiet,
                              threshold=args.threshold, pd_match=args.pd_match)
    if not args.json:
        print(_summary(result))
    return result


def _cmd_demo(args) -> dict:
    import torch

    from .synthetic import write_dataset

    if args.train_epochs > 0 and args.images < 4:  # half the images train, and one of those validates
        raise DataError(f"demo: training needs --images 4 or more (2 to train on, one of them for validation), "
                        f"got {args.images}; or --train-epochs 0")
    _set_threads(args.threads)
    workdir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="d2d-demo-"))
    root = workdir / "SYNTH"
    t0 = time.perf_counter()
    if not (root / "img_idx").is_dir():
        write_dataset(root, n_images=args.images, seed=args.seed, name="SYNTH")
    print(f"demo: synthetic dataset with {args.images} images in {root} "
          f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    ann = annotate_dataset(root, "all", "centroid", workdir / "pseudo_masks",
                           overlay=workdir / "overlays", progress=not args.quiet)
    ev = evaluate_dataset(root, "all", workdir / "pseudo_masks", progress=not args.quiet)
    print(f"demo: pseudo-masks in {workdir / 'pseudo_masks'}, overlays in {workdir / 'overlays'}",
          file=sys.stderr)
    print(f"demo: pseudo-masks IoU {ev['iou']:.2f}  nIoU {ev['niou']:.2f}  Pd {ev['pd']:.2f}%  "
          f"Fa {ev['fa']:.2f}e-6  {ann['ms_per_target']} ms per target", file=sys.stderr)
    result = {**ev, "ms_per_target": ann["ms_per_target"]}
    if args.train_epochs > 0:
        from .bilevel import Trainer, TrainConfig, evaluate_checkpoint
        from .plots import alpha_scatter, training_curves

        # the training step is cheap enough for both cores here
        torch.set_num_threads(max(torch.get_num_threads(), min(2, os.cpu_count() or 1)))
        run = workdir / "run"
        config = TrainConfig(mode="bilevel", model="unet", epochs=args.train_epochs,
                             warmup_epochs=max(1, args.train_epochs // 5), theta_every=max(1, args.train_epochs // 5),
                             lr=5e-3, batch_size=4, crop_size=128, seed=args.seed)
        trainer = Trainer(root, run, config, progress=not args.quiet,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
        if (run / "last.pt").is_file():
            from .bilevel import load_checkpoint

            trainer.load_state(load_checkpoint(run / "last.pt"))
        records = trainer.fit()
        if records:
            training_curves(records, run / "plots" / "curves.png")
        alpha_scatter(run / "alpha.csv", run / "plots" / "alpha_vs_size.png")
        det = evaluate_checkpoint(run / "best.pt", root, "test")
        print(f"demo: detector trained from points, test split: IoU {det['iou']:.2f}  nIoU {det['niou']:.2f}  "
              f"Pd {det['pd']:.2f}%  Fa {det['fa']:.2f}e-6 (run in {run})", file=sys.stderr)
        result["detector"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in det.items()}
    return {**result, "out": str(workdir), "seconds_total": round(time.perf_counter() - t0, 2)}


def _cmd_train(args) -> dict:
    from .bilevel import Trainer, TrainConfig, load_checkpoint, selection_score
    from .plots import alpha_scatter, training_curves

    _set_threads(args.threads)
    try:
        config = _config_from_args(args, TrainConfig)
        config.validate()
    except ValueError as err:
        raise DataError(f"train: {err}") from None
    annotator_config = _annotator_config(args)
    run = Path(args.out)
    last = run / "last.pt"
    if last.is_file() and not args.resume:
        raise DataError(f"{run} already holds a run ({last}); add --resume to continue it or choose another --out")
    trainer = Trainer(args.dataset, run, config, annotator_config=annotator_config, progress=not args.quiet,
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.resume and last.is_file():
        try:
            trainer.load_state(load_checkpoint(last))
        except DataError as err:
            message = str(err)
            raise DataError(message if str(last) in message else f"{last}: {message}") from None
        print(f"train: resuming {run} at epoch {trainer.epoch}", file=sys.stderr)
    records = trainer.fit()
    if records:
        training_curves(records, run / "plots" / "curves.png")
    alpha_scatter(run / "alpha.csv", run / "plots" / "alpha_vs_size.png")
    last_record = records[-1] if records else {}
    best = min(records, key=lambda r: selection_score(r, config.select)) if records else {}
    if best and selection_score(best, config.select) == math.inf:  # no epoch wrote best.pt
        best = {}
    return {"run": str(run), "epochs": trainer.epoch, "select": config.select, "best_epoch": best.get("epoch"),
            "best_val_loss": best.get("val_loss"), "best_val_iou": best.get("val_iou"),
            **{k: last_record.get(k) for k in ("train_loss", "val_loss", "val_iou", "theta")}}


def _cmd_test(args) -> dict:
    from .bilevel import evaluate_checkpoint

    _set_threads(args.threads)
    result = evaluate_checkpoint(args.checkpoint, args.dataset, args.split, pd_match=args.pd_match,
                                 bad_pixels=args.bad_pixels)
    result = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
    if not args.json:
        print(_summary(result))
    return result


def _cmd_convert_checkpoint(args) -> dict:
    from .bilevel import imported_checkpoint, save_checkpoint
    from .models import convert_checkpoint

    source, out = Path(args.input), Path(args.output)
    if out.exists() and out.resolve() == source.resolve():
        raise DataError(f"{out}: the output would replace the checkpoint it is converted from; choose another path")
    try:
        converted = convert_checkpoint(source, args.model)
    except (FileNotFoundError, ValueError) as err:
        raise DataError(str(err)) from None
    norm = None if args.img_norm is None else {"mean": args.img_norm[0], "std": args.img_norm[1]}
    save_checkpoint(out, imported_checkpoint(converted, str(source), norm))
    return {"out": str(out), "model": converted.model, "model_kwargs": converted.kwargs,
            "tensors": len(converted.state_dict), "input_norm": norm}


def _cmd_select(args) -> dict:
    from .bilevel import select_top

    keep = select_top(args.run, args.top, args.out)
    return {"selected": len(keep), "out": args.out}


def _set_threads(n: int) -> None:
    # The annotator's torch work comes in many small calls: one thread avoids the OpenMP
    # hand-offs, which cost more than they save on calls that small.
    # main() restores the previous count, so calling it in-process leaves torch as it was.
    import torch

    if n > 0:
        torch.set_num_threads(n)


def parse_settings(items) -> dict:
    """``--set NAME=VALUE`` items -> ``{name: value}`` (JSON values; lists become tuples; a bare
    word such as ``destripe=none`` is that word)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise DataError(f"--set expects NAME=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        try:
            out[name] = json.loads(value)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", value):
                raise DataError(f"--set {name}: cannot parse {value!r} (a number, a word or a JSON list)") from None
            out[name] = value
        if isinstance(out[name], list):
            out[name] = tuple(out[name])
    return out


def _point_source(value: str) -> str:
    """argparse ``type`` of ``--points``: checked before any file is written (a misspelt source
    found later would leave a folder claimed with it)."""
    from .points import point_source

    return _argparse_type(point_source)(value)


def _point_source_or_none(value: str) -> str:
    """argparse ``type`` of find-bad-pixels' ``--points``: a point source, or ``none``."""
    if value == "none":
        return value
    try:
        return _point_source(value)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err}, or none") from None


def _finite(value: str) -> float:
    """argparse ``type`` of a number that must be finite."""
    return _argparse_type(finite_number)(value)


def _within(span):
    """argparse ``type`` of a number within ``span`` (a :class:`~d2d_ext.spans.Span`; a whole
    number where the span is whole), so that a count of 0 or a share above 1 is argparse's error
    naming the option, before anything is read or written."""
    return _argparse_type(span.parse)


def _argparse_type(parse):
    """``parse`` (text to value, ``ValueError`` with a message on bad text) as an argparse
    ``type``, so that its message is argparse's ``error: argument --flag: ...``. Built-in types
    pass unchanged: argparse words their errors itself."""
    if isinstance(parse, type) or parse is str.lower:
        return parse

    def read(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    read.__name__ = parse.__name__
    return read


def _config_flag(spec) -> str:
    """The option of a settings dataclass's field: its ``flag`` metadata, else ``--name-with-dashes``;
    a bool that defaults to true is switched off by ``--no-name``."""
    if "flag" in spec.metadata:
        return spec.metadata["flag"]
    name = spec.name.replace("_", "-")
    return f"--no-{name}" if spec.default is True else f"--{name}"


def _add_config_options(parser, config_cls) -> None:
    """One option per field of ``config_cls`` (:class:`~d2d_ext.bilevel.TrainConfig`), from the
    field's default and metadata (see :mod:`d2d_ext.bilevel.config`): a bool is a flag that flips
    its default; a setting with choices offers exactly those; any other reads its text with
    :func:`~d2d_ext.bilevel.config.text_parser`."""
    import dataclasses

    from .bilevel.config import text_parser

    for spec in dataclasses.fields(config_cls):
        flag, meta = _config_flag(spec), spec.metadata
        help = meta["help"].replace("%", "%%")
        if isinstance(spec.default, bool):
            action = "store_false" if spec.default else "store_true"
            parser.add_argument(flag, dest=spec.name, action=action, default=spec.default, help=help)
            continue
        if spec.default != "":
            help += f" (default {spec.default})"
        parser.add_argument(flag, dest=spec.name, default=spec.default, type=_argparse_type(text_parser(spec)),
                            choices=meta.get("choices"), metavar=meta.get("metavar"), help=help)


def _config_from_args(args, config_cls):
    """The ``config_cls`` instance that the options of :func:`_add_config_options` describe."""
    import dataclasses

    return config_cls(**{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(config_cls)})


BAD_PIXELS_HELP = ("the sensor's stuck pixels (nonzero in this image, of the images' size; or a folder of such maps "
                   "named WxH.png, one per size): each is replaced by the median of its good neighbours in every "
                   "image before it is read")


#: The spans of the commands' own number options (a training run's are TrainConfig's).
COUNT, SEED, THREADS = Span(1, whole=True), Span(0, whole=True), Span(0, whole=True)
SHARE = Span(0, 1, open="low")


def build_parser() -> argparse.ArgumentParser:
    from .annotate import SOFT_STYLES
    from .bilevel import TrainConfig
    from .calibrate import CONFIDENCE
    from .metrics import PD_MATCH_RULES
    from .models import CHECKPOINT_MODELS

    parser = argparse.ArgumentParser(prog="d2d", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser("annotate", help="single points to pseudo-masks")
    a.add_argument("--dataset", required=True, help="dataset root (BasicIRSTD / LESPS layout)")
    a.add_argument("--split", default="all", help="all, train, test, ... (img_idx/<split>_<name>.txt) or a .txt file")
    a.add_argument("--points", default="centroid", type=_point_source,
                   help="centroid | coarse (point folders), csv:FILE, gen-centroid | gen-coarse (from masks, seeded)")
    a.add_argument("--out", required=True, help="folder for <id>.png masks (0/255)")
    a.add_argument("--overlay", help="folder for overlays: image, pseudo-mask (red), ground truth (green)")
    a.add_argument("--seed", type=_within(SEED), default=0, help="seed of gen-coarse points")
    a.add_argument("--batch-images", type=_within(COUNT), default=16, help="images per annotator call")
    _add_annotator_options(a, "of the masks")
    a.add_argument("--soft", metavar="DIR", help="also write each image's soft label as a 16-bit PNG, round(65535 y)")
    a.add_argument("--soft-style", choices=SOFT_STYLES, default="field",
                   help="field: the targets' fused heat fields (peak 1); mask: the fields as odds about each "
                        "mask's edge, >= 0.5 exactly on the mask")
    a.add_argument("--bad-pixels", metavar="MAP.png", help=BAD_PIXELS_HELP)
    a.add_argument("--threads", type=_within(THREADS), default=1, help="torch threads (0: torch's default)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=_cmd_annotate)

    k = sub.add_parser("calibrate", help="fit a few binarisation settings on N ground-truth masks")
    k.add_argument("--dataset", required=True, help="dataset root (BasicIRSTD / LESPS layout)")
    k.add_argument("--split", default="train", help="the split the masks are drawn from (as annotate's --split)")
    k.add_argument("--masks", type=_within(COUNT), required=True, metavar="N",
                   help="ground-truth masks to read (ids drawn at random)")
    k.add_argument("--seed", type=_within(SEED), default=0, help="seed of the draw (and of gen-coarse points)")
    k.add_argument("--points", default="centroid", type=_point_source, help="point source, as annotate's --points")
    k.add_argument("--min-gain", type=_within(Span(0)), default=0.5,
                   help="IoU points a setting must gain on the N masks to move (default 0.5)")
    k.add_argument("--confidence", type=_within(SHARE), default=CONFIDENCE,
                   help=f"share of bootstrap resamples of the N masks on which a move must gain (default {CONFIDENCE})")
    k.add_argument("--bad-pixels", metavar="MAP.png", help=BAD_PIXELS_HELP)
    k.add_argument("--out", required=True, metavar="FILE.json", help="where the settings go (for annotate --settings)")
    k.add_argument("--threads", type=_within(THREADS), default=1, help="torch threads (0: torch's default)")
    k.add_argument("--quiet", action="store_true", help="no progress lines")
    k.set_defaults(func=_cmd_calibrate)

    e = sub.add_parser("evaluate", help="IoU, nIoU, Pd, Fa of predicted masks")
    e.add_argument("--dataset", required=True)
    e.add_argument("--split", default="all")
    e.add_argument("--pred", required=True, help="folder of <id>.png predictions (0/255 or probabilities x 255)")
    e.add_argument("--threshold", type=_within(Span(0, 1, what="a fraction of the full scale")), default=0.5,
                   metavar="T",
                   help="a prediction pixel is target where value / full scale > T (8-bit PNGs: v / 255; "
                        "16-bit: v / 65535), as BasicIRSTD's evaluate.py; default 0.5: 8-bit values from 128")
    e.add_argument("--pd-match", choices=PD_MATCH_RULES, default="nearest",
                   help="which predicted component within 3 px a target takes: the nearest, or the first in "
                        "label order as BasicIRSTD / LESPS do (default nearest)")
    e.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_cmd_evaluate)

    b = sub.add_parser("find-bad-pixels", help="a bad-pixel map from many frames of one sensor (pixels stuck high, "
                                              "a display's overlay burned in)")
    b.add_argument("--dataset", required=True, help="dataset root (BasicIRSTD / LESPS layout)")
    b.add_argument("--split", default="all", help="the frames to search (as annotate's --split)")
    b.add_argument("--points", default="centroid", type=_point_source_or_none,
                   help="point source, as annotate's --points: pixels near a frame's points are not judged in it "
                        "(a target that stays in place is not taken for a stuck pixel); none: judge every pixel")
    b.add_argument("--seed", type=_within(SEED), default=0, help="seed of gen-coarse points")
    b.add_argument("--size", type=_size, metavar="WxH", help="the frames' size, when the split holds several")
    b.add_argument("--share", type=_within(SHARE), default=0.5,
                   help="share of its frames in which a pixel must stand out")
    b.add_argument("--min-frames", type=_within(COUNT), default=10, help="frames a pixel must be judged in")
    b.add_argument("--floor", type=_within(Span(0, 1, open="high")), default=0.05,
                   help="the least a pixel must stand out by, a fraction of the full range (lower it for raw "
                        "data that uses a small part of its range, e.g. 14-bit values in 16-bit files)")
    b.add_argument("--out", required=True, metavar="MAP.png|FOLDER",
                   help="the map to write (255 = bad), for --bad-pixels; a folder: one map per image size, WxH.png")
    b.set_defaults(func=_cmd_find_bad_pixels)

    x = sub.add_parser("explain", help="why each target of an image gets its mask: the window search's and the "
                                       "binarisation's decisions")
    x.add_argument("--dataset", required=True, help="dataset root (BasicIRSTD / LESPS layout)")
    x.add_argument("--image", required=True, action="append", metavar="ID", help="an image's id (repeat for more)")
    x.add_argument("--points", default="centroid", type=_point_source, help="point source, as annotate's --points")
    x.add_argument("--seed", type=_within(SEED), default=0, help="seed of gen-coarse points")
    _add_annotator_options(x, "of the masks explained")
    x.add_argument("--bad-pixels", metavar="MAP.png", help=BAD_PIXELS_HELP)
    x.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    x.set_defaults(func=_cmd_explain)

    t = sub.add_parser("train", help="train a detector from points (bi-level, or a baseline mode)")
    t.add_argument("--dataset", required=True, help="dataset root (BasicIRSTD / LESPS layout)")
    t.add_argument("--out", required=True, help="run folder: log.jsonl, last.pt, best.pt, alpha.csv, plots/")
    _add_config_options(t, TrainConfig)  # every training setting, from its field in TrainConfig
    _add_annotator_options(t, "of the pseudo-labels (a calibrated style)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    t.add_argument("--threads", type=_within(THREADS), default=0, help="torch threads (0: torch's default)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train)

    c = sub.add_parser("test", help="IoU, nIoU, Pd, Fa of a trained detector")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--dataset", required=True)
    c.add_argument("--split", default="test")
    c.add_argument("--pd-match", choices=PD_MATCH_RULES, default="nearest", help="as evaluate's --pd-match")
    c.add_argument("--bad-pixels", metavar="MAP.png", help=BAD_PIXELS_HELP + " (as the run's --bad-pixels)")
    c.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    c.add_argument("--threads", type=_within(THREADS), default=0, help="torch threads (0: torch's default)")
    c.set_defaults(func=_cmd_test)

    v = sub.add_parser("convert-checkpoint", help="a BasicIRSTD / LESPS DNANet checkpoint to d2d's format (for test)")
    v.add_argument("input", metavar="IN", help="their .pth / .pth.tar (read as tensors and plain data, never code)")
    v.add_argument("output", metavar="OUT", help="the d2d checkpoint to write (weights only: test scores it, "
                                                 "train cannot resume from it)")
    v.add_argument("--model", default="dnanet", type=str.lower, choices=CHECKPOINT_MODELS, help="their architecture")
    v.add_argument("--img-norm", nargs=2, type=_finite, metavar=("MEAN", "STD"),
                   help="their img_norm_cfg (8-bit grey levels, e.g. NUAA-SIRST 101.06 34.62): test then feeds "
                        "(255 x image - MEAN) / STD as they do, instead of d2d's per-image standardisation")
    v.set_defaults(func=_cmd_convert_checkpoint)

    s = sub.add_parser("select", help="write the top share of training samples by learned weight")
    s.add_argument("--run", required=True)
    s.add_argument("--top", type=_within(SHARE), default=0.3, help="the share of the training samples to keep")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_select)

    d = sub.add_parser("demo", help="annotate and evaluate an embedded synthetic dataset")
    d.add_argument("--out", help="work folder (default: a new temporary folder)")
    d.add_argument("--images", type=_within(Span(2, whole=True)), default=40,
                   help="synthetic images (half train, half test)")
    d.add_argument("--seed", type=_within(SEED), default=0, help="seed of the synthetic images")
    d.add_argument("--train-epochs", type=_within(Span(0, whole=True)), default=10,
                   help="bi-level training epochs after annotating (0: skip)")
    d.add_argument("--threads", type=_within(THREADS), default=1, help="torch threads (0: torch's default)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    import torch

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse printed its usage and error (or the help): return its code
        return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 2
    threads = torch.get_num_threads()
    try:
        result = args.func(args)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an output that cannot be written: full disk, read-only folder
        message = err.strerror or str(err)
        if err.filename:
            message += f": {err.filename}"
        print(f"error: {message} (files written before are complete)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: files written so far are complete; run the same command to resume",
              file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)
    print(json_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
