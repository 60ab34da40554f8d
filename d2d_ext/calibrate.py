"""Fit a few binarisation settings of the annotator on a handful of ground-truth masks.

``calibrate(root, split, masks=N, seed=S)`` draws ``N`` image ids of ``split`` with
``numpy.random.default_rng(S)`` and reads the ground-truth masks of those ids only (no other mask
of the dataset is opened). On them it fits six bounded, interpretable settings of
:class:`~d2d_ext.annotate.AnnotatorConfig` to the best pooled IoU (``sum |P ∩ G| / sum |P ∪ G|``
over the ``N`` images, percent) of the annotator's masks from the dataset's points:

- ``peak_fraction`` and ``k_sigma``: the strict threshold ``bg + max(k_sigma sd, f (peak - bg))``
  of the leak-guarded component (how much of a target's core is certain). ``k_sigma``'s grid
  stops at the default (2): the window search reads a peak that does not clear
  ``k_sigma`` band spreads as faint, and a faint peak's windows fall back to the peak-relative
  level and to the wide windows, where a target inside a cloud (whose texture is the band's
  spread) can be handed the cloud. A raised floor declares faint peaks that the default detects;
  the few images where that leaks are seldom among ``N`` drawn masks, while a tighter style is
  reached by the fractions;
- ``low_fraction``: the contrast fraction ``I' >= low_fraction`` of the grown bright region (how
  far into a target's faint rim the mask reaches);
- ``level``: the heat gate ``y >= level`` that trims a bright region that leaks into clutter; its
  grid reaches down to 0.01, since a large dim target's bright region can leak out of its field
  window too, and masks that draw each target's faint glow reach farther than the heat does at
  0.05 of its peak;
- ``point_radius``: how far a point source's mask reaches around its peak (0: the pixels the
  threshold keeps; 1: the peak and its 4 neighbours; 1.5: its 3x3);
- ``mask_margin``: the rings of pixels (0 to 2) that the dataset's annotators draw around what the
  image shows of a target.

Each takes values on a small fixed grid (:data:`GRIDS`). The search is coordinate descent from the
defaults: a setting moves to its grid's best value only where that beats the current pooled IoU by
more than ``min_gain`` IoU points and does so on at least ``confidence`` of the bootstrap resamples
of the drawn images, so that a gain a few of the masks carry does not move the defaults; sweeps
stop when one changes nothing. The descent also starts from the defaults with each other
``mask_margin`` (a margin needs other thresholds, which one move at a time does not reach), and
from each mask style of :data:`~d2d_ext.annotate.STYLES` (the glow's settings move together);
such a start's result is taken only where it beats the first one's as a move must.
``prepare_targets`` (strict component, features, superpixels) and the diffusion depend on
``peak_fraction`` and ``k_sigma`` only; ``binarize_targets`` re-runs on a prepared batch and its
soft labels for every ``(low_fraction, level, point_radius, mask_margin)``, so the costly part is done once per
``(peak_fraction, k_sigma)`` pair visited.

:func:`load_settings` reads the ``"settings"`` object of the JSON file that ``d2d calibrate`` writes
(for ``d2d annotate --settings``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .annotate import (
    STYLES,
    AnnotatorConfig,
    DiffusionParams,
    image_masks,
    prepare_targets,
    soft_labels,
)
from .data import IRDataset
from .files import DataError

__all__ = ["GRIDS", "STRICT", "CONFIDENCE", "Fitted", "pick_ids", "calibrate", "load_settings"]

#: The settings fitted and the values each may take (smallest to largest; the defaults lie on them).
GRIDS = {
    "peak_fraction": (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5),
    "k_sigma": (1.0, 1.5, 2.0),  # up to the default (see the module's docstring)
    "low_fraction": (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5),
    "level": (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3),
    "point_radius": (0.0, 1.0, 1.5),
    "mask_margin": (0, 1, 2),
}
#: The fitted settings that change the strict component, hence the prepared batch and its diffusion.
STRICT = ("peak_fraction", "k_sigma")
#: Images per prepared batch (as ``d2d annotate``'s default ``--batch-images``).
CHUNK = 16


def pick_ids(ids: list, n: int, seed: int, split: str = "") -> list:
    """``n`` distinct ids of ``ids`` (the images of ``split``, for messages) drawn with
    ``numpy.random.default_rng(seed)``, in the order drawn. Raises :class:`DataError` unless
    ``1 <= n <= len(ids)``."""
    if n < 1:
        raise DataError(f"--masks must be at least 1, got {n}")
    if n > len(ids):
        raise DataError(f"--masks {n} is more than the {len(ids)} images of split {split!r}")
    picked = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
    return [ids[int(k)] for k in picked]


class _Scorer:
    """Pooled IoU of the annotator's masks on fixed images, points and masks, for settings that
    differ only in the fitted fields of :data:`GRIDS`.

    Prepared batches and their soft labels are cached per ``(peak_fraction, k_sigma)`` (kept for
    the whole fit: about 4 MB per pair for 20 NUDT-SIRST images, linear in the images); scores per
    full setting. ``images``: ``(H, W)`` float32; ``points``: ``(K, 2)`` (x, y); ``masks``: ``(H, W)`` bool.
    """

    def __init__(self, images: list, points: list, masks: list, base: AnnotatorConfig, params: DiffusionParams):
        self.images, self.points, self.masks = images, points, masks
        self.base, self.params = base, params
        self.prepared: dict = {}
        self.scores: dict = {}

    def config(self, values: dict) -> AnnotatorConfig:
        return dataclasses.replace(self.base, **values)

    def _batches(self, values: dict) -> list:
        key = tuple(values[k] for k in STRICT)
        if key not in self.prepared:
            cfg = self.config(values)
            theta = self.params()
            chunks = []
            for s in range(0, len(self.images), CHUNK):
                batch = prepare_targets(self.images[s:s + CHUNK], self.points[s:s + CHUNK], cfg)
                with torch.no_grad():
                    chunks.append((s, batch, soft_labels(batch, theta)))
            self.prepared[key] = chunks
        return self.prepared[key]

    def counts(self, values: dict) -> np.ndarray:
        """``(N, 2)`` int64: each image's intersection and union pixel counts."""
        key = tuple(sorted(values.items()))
        if key not in self.scores:
            cfg = self.config(values)
            rows = []
            for s, batch, soft in self._batches(values):
                for pred, gt in zip(image_masks(batch, soft, cfg), self.masks[s:]):
                    rows.append((int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))))
            self.scores[key] = np.array(rows, np.int64).reshape(-1, 2)
        return self.scores[key]

    def iou(self, values: dict) -> float:
        """Pooled IoU in percent over the N images; ``nan`` when none has a target or a
        predicted pixel."""
        inter, union = self.counts(values).sum(0)
        return 100.0 * inter / union if union else math.nan


#: Bootstrap resamples of the drawn images behind each move (:func:`_descend`).
BOOTSTRAP = 1000
#: The share of them on which a move must gain: chosen on held-out images of three datasets in
#: three mask styles, since 20 drawn masks of a dataset hold a few dozen targets, and a stricter
#: share kept a style that every draw of it shows (the glow) from moving a second setting, while
#: a looser one let the masks of the defaults' own style move the defaults for their own targets
CONFIDENCE = 0.9


def _support(scorer: _Scorer, values: dict, current: dict, draws: np.ndarray) -> float:
    """Share of the bootstrap resamples ``draws`` (``(B, N)`` image indices) of the drawn images
    on which ``values`` gives a higher pooled IoU than ``current``."""
    a = scorer.counts(values)[draws].sum(1).astype(np.float64)  # (B, 2): intersection, union
    b = scorer.counts(current)[draws].sum(1).astype(np.float64)
    # inter_a / union_a > inter_b / union_b without dividing by an empty union
    return float(np.mean(a[:, 0] * b[:, 1] > b[:, 0] * a[:, 1]))


def _score(scorer: _Scorer, values: dict) -> float:
    """The pooled IoU of ``values``; an undefined one never wins."""
    s = scorer.iou(values)
    return -math.inf if math.isnan(s) else s


def _draws(scorer: _Scorer, values: dict) -> np.ndarray:
    """``(BOOTSTRAP, N)``: the fixed bootstrap resamples of the N drawn images."""
    n = len(scorer.counts(values))
    return np.random.default_rng(0).integers(0, n, size=(BOOTSTRAP, n))


def _starts(start: dict) -> list:
    """The other starts of :func:`_fit`: ``[(name, values)]``, ``start`` with each other
    ``mask_margin`` of its grid, then with each mask style's settings (:data:`STYLES`) where they
    differ from it."""
    out = [(f"mask_margin {ring}", {**start, "mask_margin": ring}) for ring in GRIDS["mask_margin"]
           if ring != start["mask_margin"]]
    for style, values in STYLES.items():
        if (moved := {**start, **values}) != start:
            out.append((f"the {style} style", moved))
    return out


class Fitted(NamedTuple):
    """What :func:`_fit` ends at: the fitted ``values`` (name -> value) and the ``start`` they were
    reached from (``"the defaults"``, ``"the given settings"`` where the fit began elsewhere, or a
    name of :func:`_starts`)."""

    values: dict
    start: str


def _fit(scorer: _Scorer, start: dict, sweeps: int, min_gain: float, confidence: float = CONFIDENCE,
         log=None) -> Fitted:
    """:func:`_descend` from ``start`` and from each of :func:`_starts`; another start's end
    replaces the first one's only where it beats it as a move must (by ``min_gain``, on
    ``confidence`` of the resamples). One setting at a time from the defaults, the descent does
    not reach settings that suit a style only together: a margin drawn around every target moves
    each mask's edge by whole pixels, and the thresholds that suit it differ (they move first, and
    a margin then no longer pays); masks that draw the glow want both fractions and the heat gate
    lower, and each alone, or a move a few masks do not back, stops short of them."""
    defaults = {name: getattr(AnnotatorConfig(), name) for name in GRIDS}
    first = "the defaults" if start == defaults else "the given settings"
    best = Fitted(_descend(scorer, start, sweeps, min_gain, confidence, log), first)
    draws = _draws(scorer, start)
    for name, other in _starts(start):
        if log:
            log(f"calibrate: from {name}")
        end = _descend(scorer, other, sweeps, min_gain, confidence, log)
        if _score(scorer, end) > _score(scorer, best.values) + min_gain and \
                _support(scorer, end, best.values, draws) >= confidence:
            if log:
                log(f"calibrate: the end from {name} taken, IoU {_score(scorer, best.values):.2f} -> "
                    f"{_score(scorer, end):.2f}")
            best = Fitted(end, name)
    return best


def _descend(scorer: _Scorer, start: dict, sweeps: int, min_gain: float, confidence: float = CONFIDENCE,
             log=None) -> dict:
    """Coordinate descent over :data:`GRIDS` from ``start``: per setting in turn, the grid's best
    value is taken where it beats the current pooled IoU by more than ``min_gain`` and does so on
    at least ``confidence`` of :data:`BOOTSTRAP` resamples (with replacement, a fixed draw) of the
    images: a gain that only some of a few masks show is their noise, not the dataset's style
    (ties: the value nearest the current one, then the smaller). Stops after ``sweeps`` sweeps or
    one without a change."""

    draws = _draws(scorer, start)
    current = dict(start)
    best = _score(scorer, current)
    for sweep in range(sweeps):
        changed = False
        for name, grid in GRIDS.items():
            options = sorted(set(grid) | {current[name]}, key=lambda v: (abs(v - current[name]), v))
            scores = [_score(scorer, {**current, name: v}) for v in options]
            # the best value the resamples back, trying values in order of score
            for k in sorted(range(len(options)), key=lambda i: -scores[i]):  # stable: nearest first among ties
                value, top = options[k], scores[k]
                if not top > best + min_gain:
                    break
                support = _support(scorer, {**current, name: value}, current, draws)
                if support >= confidence:
                    if log:
                        log(f"calibrate: sweep {sweep + 1}: {name} {current[name]} -> {value}, "
                            f"IoU {best:.2f} -> {top:.2f} (ahead on {100 * support:.0f}% of resamples)")
                    current[name], best, changed = value, top, True
                    break
        if not changed:
            break
    return current


def _unsupported(scorer: _Scorer, fitted: dict, min_gain: float, confidence: float) -> list:
    """The moves from ``fitted`` that the drawn masks favour but too few of their resamples back:
    per setting, the grid's best value that beats ``fitted``'s pooled IoU by more than
    ``min_gain`` yet does so on fewer than ``confidence`` of the resamples (a gain a few of the
    masks carry). ``[{"setting", "value", "iou", "support"}]``, the largest gain first. Where the
    descent ended without a change, every value was scored there and nothing is recomputed."""
    draws = _draws(scorer, fitted)
    best = _score(scorer, fitted)
    out = []
    for name, grid in GRIDS.items():
        options = [v for v in grid if v != fitted[name]]
        scores = [_score(scorer, {**fitted, name: v}) for v in options]
        k = max(range(len(options)), key=lambda i: scores[i], default=None)
        if k is None or not scores[k] > best + min_gain:
            continue
        support = _support(scorer, {**fitted, name: options[k]}, fitted, draws)
        if support < confidence:
            out.append({"setting": name, "value": options[k], "iou": _round(scores[k]), "support": support})
    return sorted(out, key=lambda m: -m["iou"])


def calibrate(root, split: str, masks: int, seed: int = 0, points: str = "centroid",
              config: AnnotatorConfig | None = None, params: DiffusionParams | None = None,
              sweeps: int = 3, min_gain: float = 0.5, confidence: float = CONFIDENCE, log=None,
              bad_pixels=None) -> dict:
    """Fit the settings of :data:`GRIDS` on ``masks`` ground-truth masks of ``split`` (see the module
    docstring); ``config`` gives the other settings and the start (default :class:`AnnotatorConfig`),
    ``params`` the diffusion parameters (default :class:`DiffusionParams`). ``seed`` draws the ids
    (and seeds ``gen-coarse`` points). ``log``: a callable for progress lines, or None.
    ``bad_pixels``: the sensor's bad-pixel map (an image file, or a folder of maps by size),
    repaired in every image read, as ``annotate`` does with it (:class:`~d2d_ext.data.IRDataset`).

    Returns a JSON-ready dict: ``settings`` (the fitted fields only, name -> value), ``iou_before``
    (the start's pooled IoU, percent), ``iou_after``, ``start`` (where the fit was reached from:
    ``"the defaults"`` (``"the given settings"`` for another ``config``), ``"mask_margin N"`` or
    ``"the S style"``, a mask style of :data:`~d2d_ext.annotate.STYLES` the drawn masks are closer
    to), ``styles`` (each mask style's pooled IoU on the drawn masks as it is, the other fitted
    settings at the start's: ``d2d annotate --style`` with no file), ``ids`` (in the order drawn),
    ``dataset``, ``split``, ``masks``, ``seed``, ``points``, ``targets``, ``min_gain``, ``bounds`` (each grid's
    ends), ``unsupported`` (the moves the drawn masks favour that too few resamples back, which
    more masks may confirm: :func:`_unsupported`), ``bad_pixels`` (the map's pixel count and
    fingerprint, or None). Raises
    :class:`DataError` for bad input (``masks`` out of range, a missing or unreadable file).
    """
    base = config or AnnotatorConfig()
    params = params or DiffusionParams()
    ds = IRDataset(root, bad_pixels=bad_pixels)
    ids = pick_ids(ds.ids(split), int(masks), seed, split)
    t0 = time.perf_counter()
    images = [ds.load_image(i) for i in ids]
    pts = [ds.points(i, points, seed=seed) for i in ids]
    gts = [ds.load_mask(i) for i in ids]
    try:
        scorer = _Scorer(images, pts, gts, base, params)
        start = {name: getattr(base, name) for name in GRIDS}
        before = scorer.iou(start)
        fitted, reached_from = _fit(scorer, start, sweeps, min_gain, confidence, log)
        unsupported = _unsupported(scorer, fitted, min_gain, confidence)
    except ValueError as err:  # the annotator's own checks (a point outside its image)
        raise DataError(f"calibrate: {err}") from None
    after = scorer.iou(fitted)
    # each mask style as it is, on the drawn masks (scored already where the fit started from it)
    styles = {style: _round(scorer.iou({**start, **values})) for style, values in STYLES.items()}
    if log:
        for move in unsupported:
            log(f"calibrate: {move['setting']} {move['value']} scores {move['iou']:.2f} on the drawn masks "
                f"(+{move['iou'] - after:.2f}) but is ahead on {100 * move['support']:.0f}% of their resamples, "
                f"not {100 * confidence:.0f}%: a few of the masks carry it; more masks (--masks) would show "
                "whether the dataset's do")
        log("calibrate: each mask style as it is, IoU on the drawn masks: "
            + ", ".join(f"{style} {iou:.2f}" for style, iou in styles.items()))
        log(f"calibrate: {len(ids)} masks, {sum(len(p) for p in pts)} targets, {len(scorer.scores)} settings scored, "
            f"{len(scorer.prepared)} prepared, {time.perf_counter() - t0:.1f} s")
    return {
        "settings": {name: fitted[name] for name in GRIDS},
        "iou_before": _round(before), "iou_after": _round(after), "start": reached_from, "styles": styles,
        "ids": ids, "dataset": ds.name, "split": split, "masks": len(ids), "seed": int(seed), "points": points,
        "targets": sum(len(p) for p in pts), "min_gain": min_gain, "confidence": confidence,
        "bounds": {name: [min(grid), max(grid)] for name, grid in GRIDS.items()},
        "unsupported": unsupported,
        "bad_pixels": ds.bad_pixels_record,
    }


def _round(x: float) -> float:
    return x if math.isnan(x) else round(x, 4)


def load_settings(path) -> dict:
    """The ``"settings"`` object of a JSON file (as ``d2d calibrate`` writes): ``{name: value}`` of
    :class:`AnnotatorConfig` fields, numbers as the field's type (lists become tuples). Raises
    :class:`DataError` naming the file if it is unreadable, not JSON, has no ``"settings"`` object,
    names an unknown setting or gives a value of the wrong kind."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(f"cannot read settings file {path}: {err.strerror or err}") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise DataError(f"settings file {path} is not valid JSON: {err}") from None
    values = data.get("settings") if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise DataError(f'settings file {path} has no "settings" object (as d2d calibrate writes)')
    return checked_settings(values, f"settings file {path}")


def checked_settings(values: dict, source: str) -> dict:
    """``values`` ``{name: value}`` (as JSON or ``--set`` reads them) with each value as its
    :class:`AnnotatorConfig` field's type. Raises :class:`DataError` starting with ``source`` for
    an unknown name or a value of the wrong kind."""
    defaults = {f.name: f.default for f in dataclasses.fields(AnnotatorConfig)}
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise DataError(f"{source}: unknown annotator settings {unknown}; known: {sorted(defaults)}")
    out = {}
    for name, value in values.items():
        out[name] = _as_setting(value, defaults[name])
        if out[name] is None:
            raise DataError(f"{source}: {name} must be like its default {defaults[name]!r}, got {value!r}")
    return out


def _as_setting(value, default):
    """``value`` (as JSON reads it: a tuple may come as a list) as the type of ``default`` (int,
    float, a word or a tuple of numbers), or None if it is not one."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if isinstance(default, str):  # a choice (AnnotatorConfig checks which)
        return value if isinstance(value, str) else None

    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not all(number(v) for v in value):
            return None
        if all(isinstance(d, int) for d in default):  # window sizes and the like: whole pixels
            return tuple(int(v) for v in value) if all(float(v).is_integer() for v in value) else None
        return tuple(float(v) for v in value)
    if not number(value):
        return None
    if isinstance(default, int):
        return int(value) if float(value).is_integer() else None
    return float(value)
