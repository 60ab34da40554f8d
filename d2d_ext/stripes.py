"""Column and row readout patterns: an offset shared by a whole column (or row) of a frame.

Uncooled infrared sensors read each column through its own amplifier, and their non-uniformity
correction drifts: the frame carries one offset per column on top of the scene, a pattern of
vertical stripes. The annotator reads a target against the background band around its window;
with stripes that band's spread is the stripes', its median depends on which columns it holds,
and a target's threshold follows them (``benchmarks/RESULTS.md``, "Noisier sensors").

An offset is estimated from the frame itself, in the only direction a scene does not mimic:
along the whole column. Each sampled row is compared with its own running median across the
columns (width ``width``: an edge between two structures stays where it is, a stripe narrower
than half the window does not), and a column's offset is the median, over the sampled rows, of
its pixels' departures from that running median. A target, or a structure that covers a minority of the rows,
does not move it; a pattern is removed only where it stands out of what the estimate's own noise
gives (``significance``), so a frame without one is left exactly as it is.
"""

from __future__ import annotations

import math

import numpy as np

from . import _C

__all__ = ["AXES", "line_offsets", "destripe", "median_of"]

#: What :func:`destripe` may flatten: one offset per column, per row, both, or neither.
AXES = ("none", "columns", "rows", "both")


def median_of(copies: list) -> np.ndarray:
    """The elementwise median of an odd number of arrays of one shape and dtype, ``copies`` (their
    contents and order are used up): an odd-even transposition sort (as many rounds of
    compare-exchanges of neighbours as there are arrays sorts that many values), elementwise and
    in place, then the middle one. Exact (the median is one of the values), and on a few arrays of
    many pixels several times faster than ``np.partition`` along a short axis."""
    n = len(copies)
    if n % 2 == 0:
        raise ValueError(f"median_of: needs an odd number of arrays, got {n}")
    low = np.empty_like(copies[0])
    for r in range(n):
        for i in range(r % 2, n - 1, 2):
            np.minimum(copies[i], copies[i + 1], out=low)
            np.maximum(copies[i], copies[i + 1], out=copies[i + 1])
            copies[i], low = low, copies[i]
    return copies[n // 2]


def _row_median(v: np.ndarray, width: int) -> np.ndarray:
    """The median of the ``width`` pixels centred on each pixel of its row of ``v`` ``(n, W)``
    float32, the edge pixels repeated beyond the edge (:func:`median_of` the ``width`` shifted
    copies)."""
    n, W = v.shape
    h = width // 2
    padded = np.empty((n, W + 2 * h), v.dtype)
    padded[:, h:h + W], padded[:, :h], padded[:, h + W:] = v, v[:, :1], v[:, -1:]
    return median_of([padded[:, j:j + W].copy() for j in range(width)])


def line_offsets(image: np.ndarray, width: int = 7, samples: int = 32768, probe: int = 4096, min_rows: int = 32,
                 significance: float = 2.0, probe_significance: float = 1.4, outlier: float = 5.0) -> np.ndarray:
    """The offset that each column of ``image`` ``(H, W)`` carries as a whole: ``(W,)`` float32,
    all zero where no column pattern stands out.

    A sampled pixel's departure is its value less the median of the ``width`` pixels centred on
    it in its row (the edge repeated); a column's offset is the median of its departures over
    the sampled rows. The pattern counts only where its robust size (1.4826 times the median
    absolute offset) exceeds ``significance`` times one offset's standard error (that of a median
    over the rows, of departures whose spread is read with the offsets removed): a frame without
    a pattern stays under it whatever its scene, since a structure moves the few columns it
    covers and not the median over all of them. A column whose offset exceeds ``outlier`` times
    the pattern's size keeps its values: a pole or mast that covers most of a column's rows moves
    its offset far beyond any readout's, and removing it would draw its negative where it ends.

    Rows are sampled evenly, never fewer than ``min_rows`` (or all of them): first about
    ``probe`` pixels of a block of columns across the middle, where a frame stops unless its
    pattern's size reaches ``probe_significance`` standard errors, then about ``samples`` pixels
    of every column for the offsets themselves (the estimate's noise falls as one over the square
    root of the rows, its cost grows with the pixels).
    """
    v = np.asarray(image)
    if v.ndim != 2:
        raise ValueError(f"line_offsets: image must have shape (H, W), got {v.shape}")
    H, W = v.shape
    if width < 3 or width % 2 == 0:
        raise ValueError(f"line_offsets: width must be odd and at least 3, got {width}")
    zero = np.zeros(W, np.float32)
    if W < 2 * width or H < min_rows:
        return zero  # too few columns to tell a stripe from the scene, or rows to average
    # the probe: a block of columns across the middle (a readout pattern spans the frame), every
    # step-th row; where most frames without a pattern stop, at a fraction of the cost
    cols = min(W, max(probe // min_rows, 8 * width))
    c0, step = (W - cols) // 2, max(1, H // max(min_rows, probe // cols))
    full = max(1, H // max(min_rows, samples // W))  # the row step of the estimate
    offsets, size, error = _offsets(v[::step, c0:c0 + cols], width)
    if not size > probe_significance * error:  # (a NaN, from a non-finite pixel, is no pattern)
        return zero
    if cols < W or step != full:  # else the probe read what the estimate would
        offsets, size, error = _offsets(v[::full], width)
    if not size > significance * error:
        return zero
    # a readout's offsets are a population of like size; one far beyond it is a structure that
    # covers most of its column (a pole, a mast), which is scene and stays
    return np.where(np.abs(offsets) > outlier * size, np.float32(0), offsets)


def _offsets(rows: np.ndarray, width: int) -> tuple:
    """:func:`line_offsets` on the sampled ``rows`` ``(n, W)``: the offsets ``(W,)`` float32,
    their robust size and one offset's standard error. Compiled (``_C.line_offsets``): on the
    probe's few thousand pixels numpy's fifty-odd calls cost more than their work
    (:func:`_offsets_numpy` is the same in numpy, for the tests)."""
    v = np.ascontiguousarray(rows, dtype=np.float32)
    offsets = np.empty((1, v.shape[1]), np.float32)
    size, error = _C.line_offsets(v, width, offsets)
    return offsets[0], size, error


def _offsets_numpy(rows: np.ndarray, width: int) -> tuple:
    """:func:`_offsets` in numpy."""
    v = np.ascontiguousarray(rows, dtype=np.float32)
    n = v.shape[0]
    departure = v - _row_median(v, width)
    departure.sort(axis=0)  # each column ranked: its median, faster than np.median's
    offsets = 0.5 * (departure[(n - 1) // 2] + departure[n // 2])
    size = 1.4826 * float(np.median(np.abs(offsets)))
    # a median's standard error is 1.2533 sd / sqrt(n); the sd of Gaussian departures 1.2533
    # times their mean absolute value
    error = 1.2533 * 1.2533 * float(np.mean(np.abs(departure - offsets))) / math.sqrt(n)
    return offsets.astype(np.float32), size, error


def destripe(image: np.ndarray, axes: str = "columns", **kwargs) -> np.ndarray:
    """``image`` ``(H, W)`` float in [0, 1] with its column offsets (``axes="columns"``), row
    offsets (``"rows"``), both (columns first) or neither (``"none"``) removed
    (:func:`line_offsets`; ``kwargs`` go there). Values stay in [0, 1], and pixels at 1 stay at 1:
    a saturated pixel read the sensor's full scale, whatever its column's offset. (A frame of
    other values, raw counts or normalised, stays within its own range, its maximum kept: the
    offsets scale with the frame.) A frame without
    a pattern comes back unchanged (the same array when nothing was removed). Raises
    ``ValueError`` for an unknown ``axes`` or an image that is not 2-d."""
    if axes not in AXES:
        raise ValueError(f"destripe: axes must be one of {', '.join(AXES)}, got {axes!r}")
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"destripe: image must have shape (H, W), got {image.shape}")
    out, bounds = image, None
    for axis in (("columns", "rows") if axes == "both" else (axes,) if axes != "none" else ()):
        flip = axis == "rows"
        offsets = line_offsets(out.T if flip else out, **kwargs)
        if not offsets.any():
            continue
        # the range [0, 1], or the frame's own where it reaches beyond (raw counts, a normalised
        # frame): its full-scale pixels stay, the rest stays within it; read once for both axes
        bounds = bounds or (min(float(image.min()), 0.0), max(float(image.max()), 1.0))
        lo, hi = bounds
        shift = offsets[:, None] if flip else offsets[None, :]
        out = np.where(image >= hi, image, np.clip(out - shift, lo, hi)).astype(image.dtype, copy=False)
    return out
