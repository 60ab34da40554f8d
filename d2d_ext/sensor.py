"""Bad sensor pixels (stuck, or under an overlay burned in): a bad-pixel map, and images repaired from it.

A pixel stuck at the top of the range right beside a target's point takes the point's snap to the
brightest pixel of its 3x3, and the target's mask shrinks to its core (``benchmarks/RESULTS.md``,
"Hot pixels"). From the image alone such a pixel cannot be told from a sharp target's own peak;
the sensor's bad-pixel map tells it. :func:`repair` gives every mapped pixel the median of its
good 8-neighbours (a cluster is filled from its rim inwards), and ``d2d annotate --bad-pixels``
and ``d2d calibrate --bad-pixels`` (:class:`d2d_ext.data.IRDataset`) repair every image they load.

Without the sensor's map, :class:`HotPixelSearch` (``d2d find-bad-pixels``) makes one from many
frames of the sensor: a pixel stuck high stands out above everything around it at the same place
in most frames, where a target moves from frame to frame and the scene's bright structures are
larger than a pixel or two. Only pixels stuck *high* are sought: they are what takes a point's
snap and looks like a target; a dark pixel does neither. The same search finds a display's
overlay burned into frames grabbed from a video output (a crosshair, a frame's marks): thin bright
strokes that hold one value at the same place in most frames, which no scene does through a
sensor's noise. A target beside such a line takes it in or snaps onto it, as beside a stuck
pixel, and repaired from its neighbours the line is gone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .files import IMAGE_SUFFIXES, DataError, read_mask
from .stripes import median_of
from .windows import grey_step

__all__ = ["read_bad_pixel_map", "read_bad_pixel_maps", "parse_size", "repair", "map_record", "HotPixelSearch",
           "HotPixels"]

_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def read_bad_pixel_map(path) -> np.ndarray:
    """The bad-pixel map in the image file ``path``: ``(H, W)`` bool, True where the file's pixel
    is nonzero (above half its range for a JPEG, whose compression noise lifts zeros, as for
    masks). Raises :class:`DataError` naming the file if it is missing or unreadable, or if it
    marks every pixel."""
    bad = read_mask(Path(path))
    if bad.all():
        raise DataError(f"bad-pixel map {path} marks every pixel: nothing is left to repair them from")
    return bad


def parse_size(text: str) -> tuple:
    """``"320x240"`` -> ``(320, 240)``: an image size ``WxH`` as the maps of several sensors are
    named and ``find-bad-pixels --size`` takes it. Raises ``ValueError`` for anything else."""
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"{text!r} is not WxH (e.g. 320x240)") from None
    return w, h


def read_bad_pixel_maps(folder) -> dict:
    """The bad-pixel maps of several sensors in ``folder``, one per image size, each named
    ``<W>x<H>`` (``320x240.png``, as ``d2d find-bad-pixels --out FOLDER`` writes them):
    ``{(H, W): (H, W) bool}``. Files that are not images are left alone. Raises
    :class:`DataError` naming the file if an image's name is not a size, or not its own size, or
    if the folder holds no map."""
    folder = Path(folder)
    maps = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            w, h = parse_size(path.stem)
        except ValueError:
            raise DataError(f"bad-pixel map {path}: in a folder of maps each is named by its size, WxH "
                            "(e.g. 320x240.png)") from None
        bad = read_bad_pixel_map(path)
        if bad.shape != (h, w):
            raise DataError(f"bad-pixel map {path} is {bad.shape[1]}x{bad.shape[0]} (WxH), not the size its name says")
        maps[(h, w)] = bad
    if not maps:
        raise DataError(f"no bad-pixel map in {folder} (expected files named WxH.png)")
    return maps


def map_record(bad) -> dict | None:
    """What identifies a bad-pixel map in a record of the work done with it (an annotation
    folder's manifest, calibrate's result): ``{"pixels": how many it marks, "map": a short hash
    of its size and pixels}``, or None without a map. For several maps (``{(H, W): map}``, see
    :func:`read_bad_pixel_maps`), the hash covers all of them and ``"maps"`` counts them."""
    if bad is None:
        return None
    maps = bad if isinstance(bad, dict) else {np.shape(bad): bad}
    h = hashlib.sha1()
    pixels = 0
    for key in sorted(maps):
        m = np.asarray(maps[key], dtype=bool)
        h.update(np.asarray(m.shape, np.int64).tobytes() + np.packbits(m).tobytes())
        pixels += int(m.sum())
    record = {"pixels": pixels, "map": h.hexdigest()[:16]}
    if isinstance(bad, dict):
        record["maps"] = len(maps)
    return record


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


class HotPixels(NamedTuple):
    """What :meth:`HotPixelSearch.result` found: ``map`` ``(H, W)`` bool, the bad pixels (stuck
    high, or of an overlay); ``share`` ``(H, W)`` float, the share of each pixel's frames in which
    it stood out as a stuck pixel; ``frames`` ``(H, W)`` int, how many frames each pixel was looked
    at in (all but those that put a point near it); ``overlay`` ``(H, W)`` bool, the pixels of
    ``map`` found as a burned-in overlay and not as stuck; ``held`` ``(H, W)`` float, the share of
    each pixel's frames in which it held its value as an overlay's stroke."""

    map: np.ndarray
    share: np.ndarray
    frames: np.ndarray
    overlay: np.ndarray
    held: np.ndarray


class HotPixelSearch:
    """Finds the pixels of one sensor that are stuck high, from many of its frames.

    ``add(image, points)`` each frame, ``(H, W)`` of ``shape``; then :meth:`result`. In a frame, a
    pixel stands out when it exceeds both the brightest pixel two steps away (the ring around its
    3x3; a cluster of two or three stuck pixels still stands out over it) and the median of its 8
    neighbours by more than ``z`` times the frame's noise (the robust spread of the image minus
    its 3x3 median) and by at least ``floor`` of the range, which keeps fine texture and
    compression steps of flat frames out. A pixel is stuck when it stands out in at least
    ``share`` of its frames. Pixels within ``near`` pixels of a frame's point labels are not looked
    at in that frame, so a target that stays in place over a sequence is never taken for a stuck
    pixel, however often it is labelled there.

    A pixel is also bad where it *holds* as a burned-in overlay's stroke in at least ``share`` of
    its frames: it stands above both pixels ``reach`` steps away across it (along a row, a column
    or a diagonal) by that margin, a bright line or mark up to ``reach`` pixels wide, and lies
    within ``levels`` of the file's grey levels of the brightest value it showed in the frames
    before. A display draws its overlay at one value whatever the scene behind it; a scene's thin
    bright structure, even one that stays in place before a staring sensor, moves by the sensor's
    noise from frame to frame (unless the sensor saturates it, or its noise is about a grey level
    or less: then it holds its value too, and is found). The brightest value, not the first
    frame's, is what an overlay holds where frames without it are mixed in, and a grey level of
    give keeps an overlay found through a lossy coding (JPEG), which moves its pixels by about
    one. A grey level is the frame's smallest step between values
    (:func:`~d2d_ext.windows.grey_step`: 1/255 in an 8-bit file; a float file's overlay holds
    exactly).
    """

    _RING = np.pad(np.zeros((3, 3), bool), 1, constant_values=True)  # 5x5, the 3x3 left out
    _EIGHT = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], bool)

    def __init__(self, shape, z: float = 6.0, floor: float = 0.05, share: float = 0.5, near: int = 3,
                 reach: int = 4, levels: float = 1.0):
        self.shape = tuple(int(v) for v in shape)
        if len(self.shape) != 2 or min(self.shape) < 3:
            raise ValueError(f"HotPixelSearch: shape must be (H, W), both at least 3, got {shape}")
        if not 0 < share <= 1:
            raise ValueError(f"HotPixelSearch: share must be in (0, 1], got {share}")
        if reach < 1 or levels < 0:
            raise ValueError(f"HotPixelSearch: reach must be at least 1 and levels at least 0, got {reach} and "
                             f"{levels}")
        self.z, self.floor, self.share, self.near = float(z), float(floor), float(share), int(near)
        self.reach, self.levels = int(reach), float(levels)
        self.stood_out = np.zeros(self.shape, np.int64)
        self.looked = np.zeros(self.shape, np.int64)
        self.stroke_held = np.zeros(self.shape, np.int64)
        self.brightest = np.full(self.shape, -np.inf, np.float32)  # each pixel's brightest value in the frames so far

    def add(self, image: np.ndarray, points=()) -> None:
        """One frame: ``image`` ``(H, W)`` in ``[0, 1]``, ``points`` ``(K, 2)`` its point labels
        ``(x, y)`` (may be empty). Raises ``ValueError`` if the image is not ``shape``."""
        im = np.asarray(image, dtype=np.float32)
        if im.shape != self.shape:
            raise ValueError(f"HotPixelSearch: a frame is {im.shape}, the others {self.shape}")
        # Past the frame's edge: nothing for the ring; for the 8 neighbours, the pixels across the
        # edge mirrored ("reflect" would give an edge pixel itself as its neighbour).
        ring = self._ring_max(im)
        margin = max(self.z * self._noise(im), self.floor)
        ys, xs = np.nonzero(im - ring > margin)  # few: the 8 neighbours' median is taken there only
        med8 = np.partition(_neighbours(im, ys, xs), 4, axis=1)[:, 4]  # scipy's median of 8
        out = np.zeros(self.shape, bool)
        out[ys, xs] = im[ys, xs] - med8 > margin
        looked = np.ones(self.shape, bool)
        r = self.near
        for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2):
            cx, cy = int(round(x)), int(round(y))
            looked[max(0, cy - r):max(0, cy + r + 1), max(0, cx - r):max(0, cx + r + 1)] = False
        self.stood_out += out & looked
        self.looked += looked
        held = self._stroke(im, margin)
        # within the give of the brightest value before (-inf before any frame: the first never holds)
        held &= np.abs(im - self.brightest) <= (self.levels + 0.5) * grey_step(im[self._grid(im)])
        self.stroke_held += held & looked
        np.maximum(self.brightest, np.where(looked, im, -np.inf), out=self.brightest)

    def _stroke(self, im: np.ndarray, margin: float) -> np.ndarray:
        """``(H, W)`` bool: the pixels that stand above both pixels ``reach`` steps away across
        them, along a row, a column or either diagonal, by more than ``margin`` (past the frame's
        edge, the edge pixel repeated): bright lines and marks up to ``reach`` pixels wide, their
        crossings included (a diagonal runs off both lines of a crosshair)."""
        d = self.reach
        H, W = im.shape
        padded = np.pad(im, d, mode="edge")
        out = np.zeros(im.shape, bool)
        for dy, dx in ((d, 0), (0, d), (d, d), (d, -d)):
            ahead = padded[d + dy:d + dy + H, d + dx:d + dx + W]
            behind = padded[d - dy:d - dy + H, d - dx:d - dx + W]
            out |= im - np.maximum(ahead, behind) > margin
        return out

    @staticmethod
    def _ring_max(im: np.ndarray) -> np.ndarray:
        """``(H, W)``: each pixel's brightest pixel two steps away (the 5x5 around it less its
        3x3, ``_RING``; nothing past the frame's edge, ``-inf`` where nothing is left), as
        ``scipy.ndimage.maximum_filter`` with that footprint gives it. The ring is two rows of
        five and two columns of three: maxima of shifted slices of the frame padded with
        ``-inf``, under a third of the filter's time on a large frame (its footprint is not
        separable)."""
        H, W = im.shape
        padded = np.full((H + 4, W + 4), -np.inf, im.dtype)
        padded[2:-2, 2:-2] = im
        five = np.maximum(padded[:, 0:W], padded[:, 1:W + 1])  # (H + 4, W): columns x - 2 to x + 2
        for dx in (2, 3, 4):
            np.maximum(five, padded[:, dx:dx + W], out=five)
        three = np.maximum(padded[1:H + 1], padded[2:H + 2])  # (H, W + 4): rows y - 1 to y + 1
        np.maximum(three, padded[3:H + 3], out=three)
        ring = np.maximum(five[:H], five[4:])  # the rows two above and two below
        np.maximum(ring, three[:, :W], out=ring)  # the columns two left and two right
        return np.maximum(ring, three[:, 4:], out=ring)

    @staticmethod
    def _grid(im: np.ndarray) -> tuple:
        """The slices of a regular grid of about 65,536 of the frame's pixels (every pixel of a
        smaller frame), on which its noise and its grey level are read: a large frame's are
        those of any part of it that size (an 8-bit frame shows all its levels there)."""
        step = max(1, int(np.sqrt(im.size / 65536)))
        return np.s_[::step, ::step]

    @staticmethod
    def _noise(im: np.ndarray) -> float:
        """The frame's noise: 1.4826 times the median of |pixel - its 3x3 median| (the edge
        pixel repeated beyond the edge), over every pixel of a frame of up to 65,536 pixels and
        over a regular grid of about that many in a larger one. The nine values of each pixel's
        3x3 are nine strided views of the edge-padded frame, their median
        :func:`~d2d_ext.stripes.median_of` (not a gather and a partition per pixel: a quarter of
        the time)."""
        grid = HotPixelSearch._grid(im)
        H, W = im.shape
        padded = np.pad(im, 1, mode="edge")
        nine = [padded[1 + dy:1 + dy + H, 1 + dx:1 + dx + W][grid].copy() for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        centre = im[grid]
        return 1.4826 * float(np.median(np.abs(centre - median_of(nine))))

    def result(self, min_frames: int = 10) -> HotPixels:
        """The bad pixels: those that stood out as stuck, or held as an overlay's stroke, in at
        least ``share`` of at least ``min_frames`` frames."""
        enough = self.looked >= min_frames
        share = self.stood_out / np.maximum(self.looked, 1)
        held = self.stroke_held / np.maximum(self.looked, 1)
        stuck = enough & (share >= self.share)
        # a stuck pixel holds its value too: the overlay is what holds and is not stuck
        overlay = enough & (held >= self.share) & ~stuck
        return HotPixels(map=stuck | overlay, share=share, frames=self.looked.copy(), overlay=overlay, held=held)


def _neighbours(im: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``(len(ys), 8)``: the 8 neighbours of pixels ``(ys, xs)``; past the edge, the pixel across
    it (-1 reads 1), as scipy.ndimage's "mirror" mode."""
    H, W = im.shape

    def fold(i, n):
        return np.abs(np.where(i > n - 1, 2 * (n - 1) - i, i))

    return np.stack([im[fold(ys + dy, H), fold(xs + dx, W)] for dy, dx in _NEIGHBOURS], axis=1)
