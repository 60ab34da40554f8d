"""Whole-dataset jobs behind ``d2d annotate``, ``d2d evaluate`` and ``d2d find-bad-pixels``:
annotate a split from its points into mask files (atomic, resumable), score a folder of predicted
masks against the ground truth, and find a sensor's stuck pixels from its frames."""

from __future__ import annotations

import json
import time
from contextlib import closing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .data import IRDataset
from .files import IMAGE_SUFFIXES, DataError, read_gray, remove_stale_temps, write_bytes_atomic, write_png_atomic
from .progress import Progress
from .sensor import HotPixelSearch

__all__ = ["MANIFEST", "annotate_dataset", "evaluate_dataset", "find_bad_pixels", "overlay_rgb", "soft_png"]

MANIFEST = ".d2d-annotate.json"


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return mask & ~ndi.binary_erosion(mask, border_value=0)


def overlay_rgb(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None) -> np.ndarray:
    """``(H, W, 3)`` uint8: the image in grey, the pseudo-mask outline in red and, where given,
    the ground-truth outline in green (yellow where they coincide)."""
    grey = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    p = _outline(pred)
    rgb[p] = (255, 0, 0)
    if gt is not None:
        g = _outline(gt)
        rgb[g] = (0, 255, 0)
        rgb[g & p] = (255, 255, 0)
    return rgb


def soft_png(field: np.ndarray) -> np.ndarray:
    """``(H, W)`` soft label in [0, 1] -> ``(H, W)`` uint16 ``round(65535 y)`` (a 16-bit PNG)."""
    return np.round(np.clip(field, 0.0, 1.0) * 65535.0).astype(np.uint16)


def _claim(folder: Path, settings: dict) -> None:
    """Record ``settings`` in ``folder``'s manifest, or check that the one there matches: a folder
    filled with other settings is refused rather than mixed."""
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read {manifest}: {err}") from err
        now = json.loads(json.dumps(settings))
        if previous != now:
            raise DataError(
                f"{folder} holds files made with other settings ({manifest}: "
                f"{'; '.join(_differences(previous, now))}); use another folder or delete it"
            )
    else:
        write_bytes_atomic(manifest, (json.dumps(settings, indent=1) + "\n").encode())


def _differences(before, now, name: str = "", most: int = 4) -> list:
    """``"name: <before> there, <now> now"`` for the first ``most`` entries of two JSON values
    that differ (nested objects by dotted name; a name absent on one side reads "none"): what
    a user resuming with other settings, or after an upgrade that changed a default, must pass
    to go on."""
    if isinstance(before, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(before) | set(now)):
            a, b = before.get(key, "none"), now.get(key, "none")
            if a != b:
                out += _differences(a, b, f"{name}.{key}" if name else key, most)
        return out[:most] + ([f"{len(out) - most} more"] if len(out) > most else [])
    return [f"{name}: {json.dumps(before)} there, {json.dumps(now)} now"]


# Frames of fewer pixels are read where they are used: their decoding is too short to outlast the
# hand-offs of the GIL between threads, and reading them in a thread of their own was slower
# (benchmarks/annotation/annotation_files.py)
READ_AHEAD_PIXELS = 1 << 16


def _read_ahead(read, items: list, pixels):
    """``read(item)`` for each of ``items`` in order, the next one read in a background thread
    while the caller works on the current one, where the first result's ``pixels(result)``
    reach ``READ_AHEAD_PIXELS`` (else each is read when it is reached). PNG decoding releases
    the GIL, so reading the next large frames overlaps the work on these instead of adding to it.
    An error of a read is raised where its item is reached, after every item before it; at most
    one read runs past the item the caller holds."""
    if not items:
        return
    first = read(items[0])
    if pixels(first) < READ_AHEAD_PIXELS:
        yield first
        for item in items[1:]:
            yield read(item)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="d2d-read") as pool:
        current = first
        for k in range(1, len(items)):
            coming = pool.submit(read, items[k])
            yield current
            current = coming.result()
        yield current


# Frames of at least this many pixels are read two at a time, each in a thread of its own: one
# such frame takes several times as long to decode as to annotate, so one reader bounds the job;
# on smaller frames a second reader took the cores from the work and was slower
TWO_READERS_PIXELS = 1 << 20


def _read_all(read, items: list, readers: int = 1) -> list:
    """``[read(item) for item in items]``, by ``readers`` threads at once (1: in this one). An
    error of a read is raised as in the loop: the first in the items' order."""
    if readers <= 1 or len(items) < 2:
        return [read(item) for item in items]
    with ThreadPoolExecutor(readers, thread_name_prefix="d2d-read") as pool:
        return list(pool.map(read, items))


def annotate_dataset(root, split: str, points: str, out, overlay=None, seed: int = 0,
                     batch_images: int = 16, annotator=None, progress: bool = True, soft=None,
                     bad_pixels=None, soft_style: str = "field") -> dict:
    """Annotate ``split`` of the dataset at ``root`` into ``out/<id>.png`` (0/255).

    ``overlay``: also ``overlay/<id>.png`` (see :func:`overlay_rgb`). ``soft``: also
    ``soft/<id>.png``, the image's soft label (``soft_style`` ``"field"``: the targets' fused
    fields, combined by maximum, zero outside their field windows; ``"mask"``: those fields as odds
    about each mask's edge, at least 0.5 exactly on the mask, see
    :func:`d2d_ext.annotate.mask_soft_labels`) as a 16-bit PNG ``round(65535 y)``, from the same
    diffusion pass as the mask. ``bad_pixels``: the sensor's bad-pixel map (an image file, or a folder of maps by
    size), whose pixels are repaired in every image before it is annotated (:mod:`d2d_ext.sensor`).

    Resumes: an id is done when each of its requested files exists (every PNG is written
    atomically, so an existing file is complete); an id that is not is annotated again and only its
    missing files are written. ``.d2d-annotate.json`` in ``out`` (and in ``soft``) records the
    settings; a folder made with other settings is refused rather than mixed. Returns the summary
    dict (``images``, ``targets``, ``seconds``: annotation compute only, ``ms_per_target``,
    ``skipped``, ``out``; ``soft`` when given).
    """
    from .annotate import SOFT_STYLES, Annotator

    if soft_style not in SOFT_STYLES:
        raise DataError(f"soft_style must be one of {', '.join(SOFT_STYLES)}, got {soft_style!r}")
    ds = IRDataset(root, bad_pixels=bad_pixels)
    ids = ds.ids(split)
    annotator = annotator or Annotator()
    out = Path(out)
    overlay = None if overlay is None else Path(overlay)
    soft = None if soft is None else Path(soft)
    if soft is not None and soft.resolve() in {out.resolve(), *([overlay.resolve()] if overlay else [])}:
        raise DataError(f"--soft {soft} must be another folder than --out and --overlay (the files share names)")
    settings = {
        "dataset": ds.name, "split": split, "points": points, "seed": int(seed),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(annotator.config).items()},
        "theta": annotator.params.values(),
    }
    record = ds.bad_pixels_record
    if record is not None:  # another map makes other images: a folder holds one map's masks
        settings["bad_pixels"] = record
    _claim(out, settings)
    if soft is not None:  # the style makes other soft labels from the same masks (the field's folders name none)
        _claim(soft, settings if soft_style == "field" else {**settings, "soft_style": soft_style})
    folders = [f for f in (overlay, soft, out) if f is not None]
    for folder in folders:  # temporary files of a run killed mid-write
        remove_stale_temps(folder)
    todo = [i for i in ids if not all((f / f"{i}.png").is_file() for f in folders)]
    bar = Progress(len(ids), "annotate") if progress else None
    if bar:
        bar.update(len(ids) - len(todo))
    n_targets, seconds = 0, 0.0
    if todo:  # one-time costs (first calls into torch, scipy, skimage) stay out of the timing
        spot = np.zeros((24, 24), np.float32)
        spot[11:13, 11:13] = 1.0
        annotator.annotate([spot], [np.array([[11.5, 11.5]])])

    def read(chunk: list) -> tuple:
        h, w = ds.image_size(chunk[0])  # from its header
        readers = 2 if h * w >= TWO_READERS_PIXELS else 1
        return (_read_all(ds.load_image, chunk, readers),
                _read_all(lambda i: ds.points(i, points, seed=seed), chunk, readers))

    def write(chunk: list, images: list, masks: list, fields: list) -> None:
        for i, image, mask, field in zip(chunk, images, masks, fields):
            if overlay is not None and not (overlay / f"{i}.png").is_file():
                gt = ds.load_mask(i) if ds.has_mask(i) else None
                write_png_atomic(overlay / f"{i}.png", overlay_rgb(image, mask, gt))
            if soft is not None and not (soft / f"{i}.png").is_file():
                write_png_atomic(soft / f"{i}.png", soft_png(field))
            if not (out / f"{i}.png").is_file():
                write_png_atomic(out / f"{i}.png", mask.astype(np.uint8) * 255)
            if bar:
                bar.update()

    # Each chunk's files are written in a thread of their own while the annotator works on the
    # next chunk, and large frames are read a chunk ahead in another (the largest by two, see
    # _read_all): what an error stops, it stops after every chunk before it is written (leaving
    # the writer's pool waits for them).
    chunks = [todo[k:k + batch_images] for k in range(0, len(todo), batch_images)]
    with ThreadPoolExecutor(1, thread_name_prefix="d2d-write") as writer, \
            closing(_read_ahead(read, chunks, lambda loaded: loaded[0][0].size)) as reads:
        written = None
        for chunk, (images, pts) in zip(chunks, reads):
            t0 = time.perf_counter()
            if soft is None:
                masks, fields = annotator.annotate(images, pts), [None] * len(chunk)
            else:  # one diffusion pass for both
                masks, fields = annotator.masks_and_soft(annotator.prepare(images, pts), style=soft_style)
            seconds += time.perf_counter() - t0
            n_targets += sum(len(p) for p in pts)
            if written is not None:
                written.result()  # a write's error stops the run here
            written = writer.submit(write, chunk, images, masks, fields)
        if written is not None:
            written.result()
    if bar:
        bar.close()
    return {
        "images": len(todo), "targets": n_targets, "seconds": round(seconds, 6),
        "ms_per_target": round(1e3 * seconds / n_targets, 4) if n_targets else None,
        "skipped": len(ids) - len(todo), "out": str(out), **({"soft": str(soft)} if soft is not None else {}),
    }


def evaluate_dataset(root, split: str, pred, progress: bool = True, threshold: float = 0.5,
                     pd_match: str = "nearest") -> dict:
    """IoU, nIoU, Pd (percent) and Fa (per 1e6 pixels) of ``pred/<id>.png`` against
    ``root/masks/<id>.png`` over ``split``, at native resolution (see :mod:`d2d_ext.metrics`).

    A prediction pixel is target where its value as a fraction of the PNG's full scale
    (:func:`~d2d_ext.data.read_gray`: 8-bit ``v / 255``, 16-bit ``v / 65535``) is above
    ``threshold``: at 0.5 an 8-bit pixel counts from 128 up. BasicIRSTD's ``evaluate.py`` applies
    the same rule to its 8-bit PNGs (``v / 255 > threshold``). ``pd_match``: ``"nearest"`` or
    ``"first"`` (BasicIRSTD's matching; see :class:`~d2d_ext.metrics.ISTDMetrics`).
    """
    from .metrics import ISTDMetrics

    ds = IRDataset(root)
    ids = ds.ids(split)
    pred = Path(pred)
    metrics = ISTDMetrics(threshold=threshold, pd_match=pd_match)
    bar = Progress(len(ids), "evaluate") if progress else None

    def read(i: str) -> tuple:
        path = pred / f"{i}.png"
        if not path.is_file():
            raise DataError(f"prediction not found: {path} (image id {i!r})")
        p, gt = read_gray(path), ds.load_mask(i)
        if p.shape != gt.shape:
            raise DataError(f"prediction {path} is {p.shape[1]}x{p.shape[0]} but the mask of {i!r} "
                            f"is {gt.shape[1]}x{gt.shape[0]} (WxH)")
        return p, gt

    with closing(_read_ahead(read, ids, lambda pair: pair[0].size)) as pairs:
        for p, gt in pairs:
            metrics.update(p, gt)
            if bar:
                bar.update()
    if bar:
        bar.close()
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.compute().items()}


def explain_images(root, ids, points: str, seed: int = 0, annotator=None, bad_pixels=None) -> dict:
    """Why each target of the images ``ids`` of the dataset at ``root`` gets its mask
    (:meth:`d2d_ext.annotate.Annotator.explain`, with the point labels of ``points``, and the
    images repaired from ``bad_pixels`` as ``annotate`` repairs them). Returns ``{"images": [{"id",
    "targets": [{"point": [x, y], "peak": [x, y], "strict", "mask", "steps": [{"stage", "half",
    "fraction", "pixels", "outcome"}]}]}]}``: each point, the pixel it moved to, the pixels of its
    strict component and of its mask, and the window search's and the binarisation's decisions in
    order. Nothing is written."""
    from .annotate import Annotator

    ds = IRDataset(root, bad_pixels=bad_pixels)
    annotator = annotator or Annotator()
    images = []
    for i in ids:
        traces = annotator.explain(ds.load_image(i), ds.points(i, points, seed))
        images.append({"id": str(i), "targets": [
            {"point": [round(t.point[0], 2), round(t.point[1], 2)], "peak": list(t.peak), "strict": t.strict,
             "mask": t.mask, "steps": [step._asdict() for step in t.steps]} for t in traces]})
    return {"images": images}


def _overlay_record(overlay: np.ndarray) -> dict | None:
    """Where a found overlay lies: ``{"pixels", "x": [first, last], "y": [first, last]}`` (its
    bounding box), or None where there is none."""
    if not overlay.any():
        return None
    ys, xs = np.nonzero(overlay)
    return {"pixels": int(overlay.sum()), "x": [int(xs.min()), int(xs.max())], "y": [int(ys.min()), int(ys.max())]}


def find_bad_pixels(root, split: str, points: str | None, out, size=None, seed: int = 0,
                    share: float = 0.5, min_frames: int = 10, floor: float = 0.05) -> dict:
    """Find the pixels stuck high, and a display's overlay burned in, in the frames of ``split``
    (:class:`~d2d_ext.sensor.HotPixelSearch`) and write them as a bad-pixel map (PNG, 255 = bad;
    atomically), for ``--bad-pixels``.

    ``out``: an image file (``.png``) takes one sensor's map: the frames of the split's one size,
    or of ``size`` ``(W, H)`` when the split holds several. A folder takes one map per size of at
    least ``min_frames`` frames, ``<W>x<H>.png`` (``size`` then keeps one), for a dataset of
    several sensors. ``points``: a point source (pixels near a frame's points are not judged in
    it), or None to judge every pixel. ``share``, ``floor``: as :class:`HotPixelSearch` takes them.
    Raises :class:`DataError` if a single map is asked of a
    split of several sizes without ``size``, or if no size has ``min_frames`` frames.

    Returns the summary dict: ``out``, ``seconds`` and, for a single map, its ``size``,
    ``frames``, ``pixels`` (all it marks), ``stuck`` (the ``x``, ``y`` and share of frames of the
    100 stuck pixels that stood out most often) and ``overlay`` (its ``pixels`` and their ``x`` and
    ``y`` ranges, or None); for a folder, ``maps``, one such record per map written, and
    ``skipped``, the sizes with too few frames.
    """
    ds = IRDataset(root)
    sizes = ds.ids_by_size(ds.ids(split))
    folder = Path(out).suffix.lower() not in IMAGE_SUFFIXES
    if size is not None:
        sizes = {tuple(size): sizes.get(tuple(size), [])}
    if not folder and len(sizes) > 1:
        common = sorted(sizes.items(), key=lambda kv: -len(kv[1]))
        listed = ", ".join(f"{w}x{h} ({len(v)})" for (w, h), v in common[:5])
        if len(common) > 5:
            listed += f" and {len(common) - 5} more"
        raise DataError(f"split {split!r} of {root} has frames of {len(sizes)} sizes (WxH, frames): {listed}; "
                        "one sensor's frames share one size: pass --size WxH, or a folder as --out for a map "
                        "per size")
    enough = {wh: frames for wh, frames in sizes.items() if len(frames) >= min_frames}
    if not enough:
        wh, frames = max(sizes.items(), key=lambda kv: len(kv[1]), default=(None, []))
        raise DataError(f"split {split!r} of {root} has {len(frames)} frame{'' if len(frames) == 1 else 's'} of "
                        f"size {wh[0]}x{wh[1]} (WxH){'' if len(sizes) == 1 else ' at most'}, fewer than the "
                        f"{min_frames} needed to tell a stuck pixel from a target"
                        if wh else f"split {split!r} of {root} has no frames")
    start = time.perf_counter()
    records = []

    def read(i: str) -> tuple:
        return ds.load_image(i), ds.points(i, points, seed) if points else ()

    for (w, h), frames in sorted(enough.items()):
        search = HotPixelSearch((h, w), share=share, floor=floor)
        with closing(_read_ahead(read, frames, lambda frame: frame[0].size)) as reads:
            for image, near in reads:
                search.add(image, near)
        found = search.result(min_frames)
        write_png_atomic(Path(out) / f"{w}x{h}.png" if folder else out, found.map.astype(np.uint8) * 255)
        ys, xs = np.nonzero(found.map & ~found.overlay)
        order = np.argsort(-found.share[ys, xs], kind="stable")
        records.append({"size": [w, h], "frames": len(frames), "pixels": int(found.map.sum()),
                        "stuck": [{"x": int(xs[k]), "y": int(ys[k]), "share": round(float(found.share[ys[k], xs[k]]), 3)}
                                  for k in order[:100]],
                        "overlay": _overlay_record(found.overlay)})
    seconds = round(time.perf_counter() - start, 2)
    if not folder:
        return {"out": str(out), **records[0], "seconds": seconds}
    skipped = [{"size": list(wh), "frames": len(f)} for wh, f in sorted(sizes.items()) if wh not in enough]
    return {"out": str(out), "maps": records, "skipped": skipped, "seconds": seconds}
