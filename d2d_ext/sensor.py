"""Stuck sensor pixels: a bad-pixel map, and images repaired from it before anything reads them.

A pixel stuck at the top of the range right beside a target's point takes the point's snap to the
brightest pixel of its 3x3, and the target's mask shrinks to its core (``benchmarks/RESULTS.md``,
"Hot pixels"). From the image alone such a pixel cannot be told from a sharp target's own peak;
the sensor's bad-pixel map tells it. :func:`repair` gives every mapped pixel the median of its
good 8-neighbours (a cluster is filled from its rim inwards), and ``d2d annotate --bad-pixels``
and ``d2d calibrate --bad-pixels`` (:class:`d2d_ext.data.IRDataset`) repair every image they load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .files import DataError, lossy, read_gray

__all__ = ["read_bad_pixel_map", "repair", "map_record"]

_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def read_bad_pixel_map(path) -> np.ndarray:
    """The bad-pixel map in the image file ``path``: ``(H, W)`` bool, True where the file's pixel
    is nonzero (above half its range for a JPEG, whose compression noise lifts zeros, as for
    masks). Raises :class:`DataError` naming the file if it is missing or unreadable, or if it
    marks every pixel."""
    bad = read_gray(Path(path)) > (0.5 if lossy(path) else 0)
    if bad.all():
        raise DataError(f"bad-pixel map {path} marks every pixel: nothing is left to repair them from")
    return bad


def map_record(bad: np.ndarray | None) -> dict | None:
    """What identifies a bad-pixel map in a record of the work done with it (an annotation
    folder's manifest, calibrate's result): ``{"pixels": how many it marks, "map": a short hash
    of its size and pixels}``, or None without a map."""
    if bad is None:
        return None
    bad = np.asarray(bad, dtype=bool)
    h = hashlib.sha1(np.asarray(bad.shape, np.int64).tobytes() + np.packbits(bad).tobytes())
    return {"pixels": int(bad.sum()), "map": h.hexdigest()[:16]}


def repair(image: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """A copy of ``image`` ``(H, W)`` in which every pixel where ``bad`` ``(H, W)`` is True holds
    the median of its 8-neighbours that are good (outside the map, or repaired in an earlier
    pass): a cluster of bad pixels is filled from its rim inwards, one ring per pass. Raises
    ``ValueError`` if the shapes differ or no pixel is good."""
    image = np.asarray(image)
    bad = np.asarray(bad, dtype=bool)
    if image.shape != bad.shape or image.ndim != 2:
        raise ValueError(f"repair: image {image.shape} and bad-pixel map {bad.shape} must be the same (H, W)")
    out = image.copy()
    todo = bad.copy()
    if not todo.any():
        return out
    if todo.all():
        raise ValueError("repair: every pixel is in the bad-pixel map")
    good = ~todo
    H, W = bad.shape
    while todo.any():
        ys, xs = np.nonzero(todo)
        values = np.full((len(ys), len(_NEIGHBOURS)), np.nan)
        for k, (dy, dx) in enumerate(_NEIGHBOURS):
            yy, xx = ys + dy, xs + dx
            ok = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            ok[ok] = good[yy[ok], xx[ok]]
            values[ok, k] = out[yy[ok], xx[ok]]
        have = ~np.isnan(values).all(axis=1)  # the rim of what is left: at least one good neighbour
        ys, xs = ys[have], xs[have]
        out[ys, xs] = np.nanmedian(values[have], axis=1)
        good[ys, xs] = True
        todo[ys, xs] = False
    return out
