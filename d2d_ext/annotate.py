"""Points to pseudo-masks: physics-induced diffusion annotation (the paper's Section 3.2).

Every target is one point ``(x, y)`` (0-based pixel coordinates, sub-pixel allowed) on an image
``(H, W)`` float32 in [0, 1]. Only the image and the points are read; nothing here can see a
ground-truth mask. For each point:

1. **Snap and window.** The point moves to the brightest pixel of its 3x3 neighbourhood (the
   peak). Square windows of growing half-size (``config.half_sizes``) are tried around it; in each,
   the background ``bg`` and spread ``sd`` come from the window's outer band (median and 1.4826 x
   median absolute deviation), the threshold is ``bg + max(k_sigma * sd, f * (peak - bg))`` and the
   candidate is the 8-connected component of the peak above it, holes filled. The first window
   whose candidate does not reach the outer band is accepted (the *leak guard*: a component that
   touches the band has leaked into clutter); if none is, ``f`` rises by ``fraction_step`` and the
   windows are tried again. Sides of a window that lie on the image's edge have no band (a target
   cut by the edge has not leaked). An extended target puts the first windows' bands on its own
   hull, so the accepted window grows, through ``half_sizes`` and the wider ``wide_half_sizes``,
   while the next window's band lies more than ``settle_fraction`` of the amplitude below its
   own (or the peak did not clear its band): a larger window replaces it where its component is
   clear of its band, holds most of the smaller window's band and at least ``side_cover`` of each
   of its sides (a target surrounds its peak; a building or cloud beside the point lies on one
   side), reaches no image edge the smaller component did not (an edge has no band, so a
   component that runs off the image is unguarded), holds no other point of the image (that
   would merge two targets) and changes by at most 25% in the window after. A target wider than
   every window of ``half_sizes`` gets the wide ones when nothing else holds it, under the same
   two tests against the smallest window (a faint point on a cloud's rim is held by no small
   window, and the cloud must not stand in for it). Neither a grown window nor a wide one is
   taken where its component is mostly a plateau just above its threshold (less than half of it
   stays at a threshold ``plateau_step`` of the amplitude higher): a target's hull falls off
   gradually, a bright sky or cloud around the target ends in a step. The
   accepted window is then cut down to the smallest that holds the component (the background
   level stays the wide one's). This *strict component* never depends on ground truth: the
   window size comes from the image around the point.
2. **Conductance and rates.** In a crop around the peak (the *field window*: twice the strict
   component's extent, at least the accepted window) the contrast ``I' = (I - bg) / (peak - bg)``
   gives the conductance ``c = D0 exp(-beta (alpha |grad I'| + (1 - alpha) E / 8))`` with ``E`` the
   5x5 local entropy in bits (the paper's code). The jump rate from ``p`` to a 4-neighbour ``q`` is
   ``sqrt(c_p c_q) exp(gamma (I'_q - I'_p) / 2)``: symmetric diffusion times a drift toward bright
   pixels whose stationary law is ``exp(gamma I')`` (``gamma = 0`` is the paper's pure diffusion).
   Rates are scaled per target so that the fastest pixel's total is ``0.9 D0 / D0_max`` (with
   ``tau = 1``): explicit steps stay stable whatever the target's contrast.
3. **Heat.** A unit heat source at the peak, ``config.steps`` steps of :func:`d2d_ext.diffuse` for
   every target of every image in one call per step count (on the smallest crop that holds those
   targets' field windows); ``u`` is divided by its maximum. A
   target whose strict component spans more than ``steps_extent`` pixels needs a longer diffusion
   time (it grows as the square of the size): it gets ``steps`` times the power of two that
   covers ``(extent / steps_extent)^2`` (at most ``steps_max``).
4. **Superpixel prior.** SLIC (scikit-image; ``slic_segments`` segments, ``slic_compactness``) of the
   accepted window; ``C`` is the segment that holds the peak.
5. **Fusion.** The soft pseudo-label ``y = rho u + (1 - rho) C``, divided by its maximum, in [0, 1].
   It is differentiable in ``theta = (D0, beta, rho, alpha, gamma)`` (:class:`DiffusionParams`)
   through the rates and the op.
6. **Binarisation.** The *bright region* is the 8-connected component of the peak in
   ``{I' >= low_fraction}`` inside the field window, holes filled. If it reaches the field
   window's outer band it has leaked into clutter, and only the part the heat reached is kept:
   the peak's component of ``{I' >= low_fraction} and {y >= level}``. The result is kept if it
   stays off the band (leak guard again), and only the target's part of it: the strict
   component's halo (the rings of pixels around it, outward while the region covers at least
   ``halo_cover`` of each ring) and the further parts that end in an edge at least ``edge_ratio``
   as steep as the strict component's. A dimmer structure touching the target (a roof, a cloud's
   flank) lies on one side and fades out, so neither holds for it; a glow surrounds the target,
   and a target's own extension ends as sharply as the target does. The target's pseudo-mask is
   the strict component united with that part, and the targets of one image are united into its
   mask.

Typical use::

    annotator = Annotator()
    masks = annotator.annotate([image1, image2], [points1, points2])   # list of (H, W) bool
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.segmentation import slic

from .data import INSIDE_RULE, points_inside
from .diffusion import diffuse
from .metrics import EIGHT_CONNECTED

__all__ = [
    "AnnotatorConfig",
    "DiffusionParams",
    "TargetBatch",
    "Annotator",
    "prepare_targets",
    "target_rates",
    "soft_labels",
    "binarize_targets",
    "paste_masks",
    "crop_maps",
    "fuse_prior",
    "point_pixel",
]


@dataclass(frozen=True)
class AnnotatorConfig:
    """Settings of the annotator that are not learned (pixels unless stated)."""

    snap_radius: int = 1  # the point moves to the brightest pixel within this Chebyshev radius
    half_sizes: tuple = (6, 8, 10, 13, 16, 20, 24)  # windows tried, smallest first
    # larger windows (extended targets): an accepted window grows through them while its band
    # lies on the target's hull, and they are tried when no window above holds a component
    wide_half_sizes: tuple = (32, 48, 64, 96)
    # the accepted window grows to the next one while the next band's median lies more than this
    # fraction of (peak - bg) below its own: its band is still on the target (0: never grows)
    settle_fraction: float = 0.2
    # ... and only where the larger window's component holds at least this share of each side of
    # the smaller window's band: a target surrounds its peak, a structure beside it does not
    side_cover: float = 0.25
    # ... and only where at a threshold plateau_step of the amplitude higher the larger window's
    # component keeps at least half its pixels (a hull falls off gradually; a bright sky or cloud
    # around the target is a plateau that a slightly higher threshold drops; 0: no test)
    plateau_step: float = 0.15
    band: int = 2  # width of a window's outer band (background statistics, leak guard)
    k_sigma: float = 2.0  # strict threshold: bg + max(k_sigma * sd, f * (peak - bg))
    peak_fraction: float = 0.3  # f, first try
    fraction_step: float = 0.1  # f rises by this when no window holds the component
    field_grow: float = 2.0  # field window half-size >= field_grow * extent of the strict component
    field_half_max: int = 32  # largest field window half-size
    steps: int = 64  # diffusion steps K of a target whose strict component spans <= steps_extent
    steps_extent: int = 12  # larger targets get steps * (extent / steps_extent)^2 (diffusion length ~ size)
    steps_max: int = 1024
    slic_segments: int = 16
    slic_compactness: float = 0.32
    low_fraction: float = 0.3  # grown component: contrast I' >= low_fraction
    level: float = 0.1  # where the bright region leaks: keep fused label y >= level (where the heat reached)
    # The bright region beyond the strict component stays where it is the target's halo (the rings
    # of pixels around the strict component, outward until one ring is covered less than
    # halo_cover) or where a part of it ends in an edge at least edge_ratio as steep as the strict
    # component's own edge. A dimmer structure beside the target (a roof, a cloud's flank) lies on
    # one side and fades out; a glow surrounds the target; a target's own extension (a ship's hull
    # beside its superstructure) ends as sharply as the target does.
    halo_cover: float = 0.4
    edge_ratio: float = 0.6


class DiffusionParams(torch.nn.Module):
    """The learnable diffusion parameters ``theta``, bounded around the paper's defaults.

    ``D0 = 3.2 (1 + 0.3 tanh t0)``, ``beta = 6 (1 + 0.3 tanh t1)``, ``rho = 0.84 + 0.05 tanh t2``,
    ``alpha = 0.6 + 0.05 tanh t3`` (the reference code's parametrisation) and
    ``gamma = gamma0 (1 + 0.5 tanh t4)`` for the drift; the raw ``t`` start at zero.
    """

    NAMES = ("D0", "beta", "rho", "alpha", "gamma")

    def __init__(self, D0: float = 3.2, beta: float = 6.0, rho: float = 0.84, alpha: float = 0.6, gamma: float = 4.0):
        super().__init__()
        self.register_buffer("center", torch.tensor([D0, beta, rho, alpha, gamma], dtype=torch.float64))
        self.register_buffer("spread", torch.tensor([0.3 * D0, 0.3 * beta, 0.05, 0.05, 0.5 * gamma], dtype=torch.float64))
        self.raw = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))

    def forward(self, raw: torch.Tensor | None = None) -> dict:
        """name -> 0-d float64 tensor, differentiable in ``raw`` ``(5,)`` (default: ``self.raw``);
        also ``D0_max``, the constant upper bound of ``D0``."""
        values = self.center + self.spread * torch.tanh(self.raw if raw is None else raw)
        theta = {name: values[i] for i, name in enumerate(self.NAMES)}
        theta["D0_max"] = self.center[0] + self.spread[0]
        return theta

    def values(self) -> dict:
        """name -> float (for logs)."""
        with torch.no_grad():
            return {k: float(v) for k, v in self.forward().items()}


@dataclass
class TargetBatch:
    """Image-only per-target data for ``T`` targets, on ``S x S`` crops (``S`` odd, the batch's
    largest field window).

    The crop of target ``t`` covers image rows ``origin[t, 0] ... + S`` and columns
    ``origin[t, 1] ... + S`` (it may stick out of the image; those pixels are outside ``inside``).
    Everything the soft label needs is here, so regenerating labels after a ``theta`` update only
    re-runs :func:`soft_labels` and :func:`binarize_targets`.
    """

    image_index: np.ndarray  # (T,) int64: which image the target belongs to
    steps: np.ndarray  # (T,) int64: diffusion steps this target needs (grows with its size)
    image_shapes: list  # per image (H, W)
    origin: np.ndarray  # (T, 2) int64: (row, col) of the crop's top-left pixel in the image
    peak: np.ndarray  # (T, 2) int64: (row, col) of the heat source inside the crop: its centre
    half: np.ndarray  # (T,) int64: field window half-size (the crop's centre +- half holds the field window)
    contrast: torch.Tensor  # (T, S, S) float32: I' = (I - bg) / (peak - bg)
    grad: torch.Tensor  # (T, S, S) float32: |grad I'| (per pixel)
    entropy: torch.Tensor  # (T, S, S) float32: 5x5 local entropy (bits)
    inside: torch.Tensor  # (T, S, S) bool: inside the field window and the image
    superpixel: torch.Tensor  # (T, S, S) float32: the SLIC segment of the peak (0/1)
    strict: np.ndarray  # (T, S, S) bool: the leak-guarded threshold component
    ring: np.ndarray  # (T, S, S) bool: the field window's outer band (leak guard of the grown component)
    seconds: dict = field(default_factory=dict)  # time per stage

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    def central(self, sel: np.ndarray, r: int) -> "TargetBatch":
        """Targets ``sel`` on the ``(2 r + 1)^2`` centre of their crops (``r`` at least their
        ``half``: the field windows stay whole); ``image_shapes`` and ``seconds`` are shared."""
        c = self.contrast.shape[-1] // 2
        if r > c:
            raise ValueError(f"central: r = {r} exceeds the crops' half-size {c}")
        cut = (sel, slice(c - r, c + r + 1), slice(c - r, c + r + 1))
        index = torch.from_numpy(np.asarray(sel, np.int64))
        tcut = (index,) + cut[1:]
        return dataclasses.replace(
            self, image_index=self.image_index[sel], steps=self.steps[sel], origin=self.origin[sel] + (c - r),
            peak=self.peak[sel] - (c - r), half=self.half[sel], contrast=self.contrast[tcut], grad=self.grad[tcut],
            entropy=self.entropy[tcut], inside=self.inside[tcut], superpixel=self.superpixel[tcut],
            strict=self.strict[cut], ring=self.ring[cut])

    def to(self, dtype: torch.dtype) -> "TargetBatch":
        """A copy whose float tensors have ``dtype`` (float64 for gradient checks)."""
        return dataclasses.replace(
            self, contrast=self.contrast.to(dtype), grad=self.grad.to(dtype),
            entropy=self.entropy.to(dtype), superpixel=self.superpixel.to(dtype))


def point_pixel(x: float, y: float, H: int, W: int) -> tuple:
    """``(row, col)`` of the pixel that holds point ``(x, y)`` (rounded half up, clamped to the image).

    The points the annotator accepts are those :func:`d2d_ext.data.points_inside` accepts, the
    ones this rounding places without clamping."""
    row = min(max(int(math.floor(float(y) + 0.5)), 0), H - 1)
    col = min(max(int(math.floor(float(x) + 0.5)), 0), W - 1)
    return row, col


def _snap(image: np.ndarray, x: float, y: float, radius: int) -> tuple:
    H, W = image.shape
    py, px = point_pixel(x, y, H, W)
    if radius <= 0:
        return py, px
    y0, y1 = max(py - radius, 0), min(py + radius + 1, H)
    x0, x1 = max(px - radius, 0), min(px + radius + 1, W)
    flat = int(np.argmax(image[y0:y1, x0:x1]))
    return y0 + flat // (x1 - x0), x0 + flat % (x1 - x0)


def _band(box: tuple, width: int, H: int, W: int) -> np.ndarray:
    """The outer band of window ``box`` (``(h, w)`` bool), on its sides inside the image only.

    A side that lies on the image's edge has no background beyond it, and a target cut by the
    edge has not leaked; if every side is on the edge, the whole border is the band.
    """
    y0, y1, x0, x1 = box
    band = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    if y0 > 0:
        band[:width] = True
    if y1 < H:
        band[-width:] = True
    if x0 > 0:
        band[:, :width] = True
    if x1 < W:
        band[:, -width:] = True
    if not band.any():
        band[:width] = band[-width:] = band[:, :width] = band[:, -width:] = True
    return band


def _median(values: np.ndarray) -> float:
    """``np.median`` of a small 1-d array, the same value without its per-call overhead (a target
    tries several windows, each with two medians)."""
    s = np.sort(values)
    n = s.size
    return float(s[n // 2]) if n % 2 else float((s[n // 2 - 1] + s[n // 2]) / 2)


def _box(py: int, px: int, half: int, H: int, W: int) -> tuple:
    return max(py - half, 0), min(py + half + 1, H), max(px - half, 0), min(px + half + 1, W)


class Strict(NamedTuple):
    """The leak-guarded threshold component of one target (see :func:`_strict_component`)."""

    box: tuple  # (y0, y1, x0, x1): the accepted window in the image
    comp: np.ndarray  # (h, w) bool: the peak's component in that window, holes filled
    bg: float  # background level (median of the accepted window's band)
    peak: float  # the peak's intensity


class _Window(NamedTuple):
    """One window tried around a peak (see :func:`_strict_component`)."""

    box: tuple  # (y0, y1, x0, x1) in the image
    bg: float  # median of its band
    faint: bool  # the peak does not clear bg + k_sigma * sd
    comp: np.ndarray | None  # the peak's component, None where it reaches the band (or is empty)
    band: np.ndarray  # (h, w) bool, the outer band


def _strict_component(image: np.ndarray, py: int, px: int, cfg: AnnotatorConfig, others: Sequence = ()) -> Strict:
    """Leak-guarded threshold component of the peak at ``(py, px)`` (a :class:`Strict`).

    The first window of ``half_sizes`` that holds a component is accepted, then grown through the
    larger windows while its band still sits on the target's hull (see :class:`AnnotatorConfig`,
    ``settle_fraction``); a larger window whose component holds one of ``others`` (the other
    targets' peaks ``(row, col)`` in this image) would merge two targets and is not taken. If no
    window of ``half_sizes`` holds a component at any fraction, the ``wide_half_sizes`` are tried
    too; if none does, the component is the peak pixel.
    """
    H, W = image.shape
    peak = float(image[py, px])
    stats = {}

    def larger(half: int) -> list:
        """The configured half-sizes above ``half``, in the order they are tried."""
        return [h for h in cfg.half_sizes + cfg.wide_half_sizes if h > half]

    def window(half: int, f: float, sd_of: int | None = None) -> _Window:
        """The window of half-size ``half`` at fraction ``f`` (the band spread of window
        ``sd_of`` if given, else its own)."""
        box = _box(py, px, half, H, W)
        win = image[box[0]:box[1], box[2]:box[3]]
        band = _band(box, cfg.band, H, W)
        if half not in stats:
            ring = win[band]
            bg = _median(ring)
            stats[half] = (bg, 1.4826 * _median(np.abs(ring - bg)))
        bg, sd = stats[half]
        if sd_of is not None:
            sd = stats[sd_of][1]
        thr = bg + max(cfg.k_sigma * sd, f * (peak - bg))
        faint = peak <= thr
        if faint:  # faint target: the peak-relative part alone
            thr = bg + f * (peak - bg)
        labels, _ = ndi.label(win > thr, EIGHT_CONNECTED)
        lab = labels[py - box[0], px - box[2]]
        comp = labels == lab if lab else None
        return _Window(box, bg, faint, None if comp is None or comp[band].any() else comp, band)

    def covers(outer: _Window, inner: _Window) -> bool:
        """Whether ``outer``'s component holds most of ``inner``'s band, and at least
        ``side_cover`` of each of its sides: the band lay on the target's hull all around the
        peak. A point beside a larger bright structure (a building, a cloud's edge) has that
        structure on one or two sides only."""
        oy, ox = inner.box[0] - outer.box[0], inner.box[2] - outer.box[2]
        h, w = inner.band.shape
        held = outer.comp[oy:oy + h, ox:ox + w]
        b = cfg.band
        sides = [(slice(None, b), slice(None)), (slice(h - b, None), slice(None)),
                 (slice(None), slice(None, b)), (slice(None), slice(w - b, None))]
        per = [held[s][inner.band[s]].mean() for s in sides if inner.band[s].any()]
        return min(per) >= cfg.side_cover and held[inner.band].mean() >= 0.5

    def touches_edge(win: _Window) -> tuple:
        """The image edges (top, bottom, left, right) that ``win``'s component reaches."""
        y0, y1, x0, x1 = win.box
        c = win.comp
        return (y0 == 0 and c[0].any(), y1 == H and c[-1].any(), x0 == 0 and c[:, 0].any(), x1 == W and c[:, -1].any())

    def stable(half: int, f: float, cand: _Window) -> bool:
        """Whether the next larger window finds about the same component (within 25%), with
        ``cand``'s band spread: what is tested is the shift of the background level."""
        up = larger(half)
        if not up or _box(py, px, up[0], H, W) == cand.box:
            return True
        nxt = window(up[0], f, sd_of=half)
        return nxt.comp is not None and abs(int(nxt.comp.sum()) - int(cand.comp.sum())) <= 0.25 * cand.comp.sum()

    def merges(cand: _Window) -> bool:
        """Whether ``cand``'s component holds another target's peak."""
        y0, y1, x0, x1 = cand.box
        return any(y0 <= oy < y1 and x0 <= ox < x1 and cand.comp[oy - y0, ox - x0] for oy, ox in others)

    def plateau(half: int, f: float, cand: _Window) -> bool:
        """Whether ``cand``'s component is mostly a plateau just above its threshold: at a
        threshold ``plateau_step`` of the amplitude higher, less than half of it stays. A target's
        hull falls off gradually; a bright region the target sits in (a sky, a cloud) ends in a
        step, and a window whose threshold drops below its level takes all of it."""
        if cfg.plateau_step <= 0:
            return False
        higher = window(half, f + cfg.plateau_step)
        return higher.comp is None or (higher.comp & cand.comp).sum() < 0.5 * cand.comp.sum()

    def grow(half: int, f: float, found: _Window) -> _Window:
        """Grow the accepted window while its band lies on the target's hull: the next band lies
        well below it, or the peak did not clear it (a plateau), and a larger window's component
        (clear of its own band, the peak clearing it, stable in the window after) holds most of it."""
        for nxt in larger(half):
            if _box(py, px, nxt, H, W) == found.box:  # the image's edge stops the growth
                break
            cand = window(nxt, f)
            settled = found.bg - cand.bg <= cfg.settle_fraction * (peak - cand.bg)
            if settled and not found.faint:
                break
            if cand.comp is not None and plateau(nxt, f, cand):
                continue
            if (cand.comp is not None and not cand.faint and covers(cand, found) and not merges(cand)
                    and not any(e and not f0 for e, f0 in zip(touches_edge(cand), touches_edge(found)))
                    and stable(nxt, f, cand)):
                found = cand
        return found

    def target_like(cand: _Window) -> bool:
        """Whether a wide window's component can be the point's target although no smaller window
        held a component: it surrounds the peak on every side (the smallest window's band) and
        stays off the image's edges (a bright structure the point merely touches does neither)."""
        return covers(cand, window(cfg.half_sizes[0], f)) and not any(touches_edge(cand))

    tries = max(1, math.ceil((1.0 - cfg.peak_fraction) / cfg.fraction_step - 1e-9)) if cfg.fraction_step > 0 else 1
    for wide, halves in ((False, cfg.half_sizes), (True, cfg.wide_half_sizes)):
        for attempt in range(tries):
            f = cfg.peak_fraction + attempt * cfg.fraction_step
            for half in halves:
                found = window(half, f)
                if found.comp is not None and (not wide or (target_like(found) and not plateau(half, f, found))):
                    if cfg.settle_fraction > 0:
                        found = grow(half, f, found)
                    box, comp = _tighten(found.box, found.comp, py, px, cfg, H, W)
                    return Strict(box, ndi.binary_fill_holes(comp), found.bg, peak)
    box = _box(py, px, cfg.half_sizes[0], H, W)
    comp = np.zeros((box[1] - box[0], box[3] - box[2]), dtype=bool)
    comp[py - box[0], px - box[2]] = True
    bg = stats[cfg.half_sizes[0]][0] if stats else peak
    return Strict(box, comp, bg, peak)


def _tighten(box: tuple, comp: np.ndarray, py: int, px: int, cfg: AnnotatorConfig, H: int, W: int) -> tuple:
    """The smallest window of the configured sizes, no larger than ``box``, that holds ``comp``
    clear of its band: ``(box, comp cropped to it)``. A window grown for its background level
    then does not widen the field window (and the bright region's reach) beyond the target."""
    ys, xs = np.nonzero(comp)
    reach = max(py - box[0] - ys.min(), ys.max() + box[0] - py, px - box[2] - xs.min(), xs.max() + box[2] - px)
    for half in sorted(cfg.half_sizes + cfg.wide_half_sizes):
        inner = _box(py, px, half, H, W)
        if half >= reach + cfg.band + 1 or inner == box:
            if inner[1] - inner[0] > box[1] - box[0] or inner[3] - inner[2] > box[3] - box[2]:
                break
            y0, x0 = inner[0] - box[0], inner[2] - box[2]
            return inner, comp[y0:y0 + inner[1] - inner[0], x0:x0 + inner[3] - inner[2]]
    return box, comp


def _check_points(points: np.ndarray, shape: tuple, index: int) -> np.ndarray:
    """``(K, 2)`` float64 points of image ``index``, each inside it by the dataset's rule (a
    point :func:`point_pixel` would have to clamp is refused, not moved)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) if len(points) else np.zeros((0, 2))
    H, W = shape
    bad = ~points_inside(pts, shape)
    if bad.any():
        x, y = pts[int(np.flatnonzero(bad)[0])]
        raise ValueError(f"annotate: point (x={x:g}, y={y:g}) of image {index} lies outside the {W}x{H} image "
                         f"({INSIDE_RULE.format(w=W, h=H)})")
    return pts


class _Target(NamedTuple):
    """One target's image-only data before the batch's crops are laid out."""

    image: int  # index of its image in the batch
    fbox: tuple  # field window (y0, y1, x0, x1) in the image
    box: tuple  # accepted strict window
    py: int  # peak row
    px: int  # peak column
    half: int  # field window half-size
    contrast: np.ndarray  # (h, w) over the field window, as the features below
    grad: np.ndarray
    entropy: np.ndarray
    superpixel: np.ndarray  # over the strict window, as comp
    comp: np.ndarray
    steps: int


def prepare_targets(images: Sequence[np.ndarray], points: Sequence[np.ndarray], config: AnnotatorConfig | None = None) -> TargetBatch:
    """Image-only work for every target of a batch of images (steps 1, 2's features and 4).

    Args:
        images: ``B`` arrays ``(H_b, W_b)``, float in [0, 1].
        points: ``B`` arrays ``(K_b, 2)`` of ``(x, y)`` pixel coordinates (``K_b`` may be 0).
    """
    cfg = config or AnnotatorConfig()
    if len(images) != len(points):
        raise ValueError(f"annotate: {len(images)} images but {len(points)} point arrays")
    R = cfg.field_half_max
    rows = []
    t_window = t_features = t_slic = 0.0
    for b, (image, pts) in enumerate(zip(images, points)):
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"annotate: image {b} must have shape (H, W), got {image.shape}")
        image = image.astype(np.float32, copy=False)
        H, W = image.shape
        peaks = [_snap(image, x, y, cfg.snap_radius) for x, y in _check_points(pts, image.shape, b)]
        for py, px in peaks:
            t0 = time.perf_counter()
            others = [q for q in peaks if q != (py, px)]
            box, comp, bg, peak = _strict_component(image, py, px, cfg, others)
            ys, xs = np.nonzero(comp)
            extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
            # the field window holds the strict window (which the image's edge may have cut
            # off-centre) and twice the strict component
            reach = max(py - box[0], box[1] - 1 - py, px - box[2], box[3] - 1 - px)
            half = min(max(reach, int(cfg.field_grow * extent + 3)), max(R, reach))
            fbox = _box(py, px, half, H, W)
            t1 = time.perf_counter()
            win = image[fbox[0]:fbox[1], fbox[2]:fbox[3]].astype(np.float64)
            contrast = (win - bg) / max(peak - bg, 1e-3)
            gy, gx = np.gradient(contrast) if min(win.shape) > 1 else (np.zeros_like(win), np.zeros_like(win))
            entropy = local_entropy(win)
            t2 = time.perf_counter()
            # the superpixel prior of the accepted window (the region the point's statistics came from)
            swin = image[box[0]:box[1], box[2]:box[3]]
            seg = slic(swin, n_segments=cfg.slic_segments, compactness=cfg.slic_compactness,
                       channel_axis=None, start_label=0, enforce_connectivity=True)
            sp = seg == seg[py - box[0], px - box[2]]
            t3 = time.perf_counter()
            t_window += t1 - t0
            t_features += t2 - t1
            t_slic += t3 - t2
            rows.append(_Target(b, fbox, box, py, px, half, contrast, np.hypot(gy, gx), entropy, sp, comp,
                                target_steps(extent, cfg)))
    T = len(rows)
    R = max([r.half for r in rows], default=1)  # crops as small as the batch's largest field window
    S = 2 * R + 1
    contrast = np.zeros((T, S, S), np.float32)
    grad = np.zeros((T, S, S), np.float32)
    ent = np.zeros((T, S, S), np.float32)
    inside = np.zeros((T, S, S), bool)
    sup = np.zeros((T, S, S), np.float32)
    strict = np.zeros((T, S, S), bool)
    ring = np.zeros((T, S, S), bool)
    origin = np.zeros((T, 2), np.int64)
    peak = np.zeros((T, 2), np.int64)
    halves = np.array([r.half for r in rows], np.int64)
    index = np.zeros(T, np.int64)
    steps = np.array([r.steps for r in rows], np.int64)
    batch_shapes = [np.asarray(im).shape for im in images]
    for t, (b, fbox, box, py, px, half, c, g, e, sp, comp, _) in enumerate(rows):
        oy, ox = py - R, px - R
        origin[t] = oy, ox
        peak[t] = R, R
        index[t] = b
        fy, fx = fbox[0] - oy, fbox[2] - ox
        h, w = c.shape
        contrast[t, fy:fy + h, fx:fx + w] = c
        grad[t, fy:fy + h, fx:fx + w] = g
        ent[t, fy:fy + h, fx:fx + w] = e
        inside[t, fy:fy + h, fx:fx + w] = True
        ring[t, fy:fy + h, fx:fx + w] = _band(fbox, cfg.band, *batch_shapes[b])
        strict[t, box[0] - oy:box[1] - oy, box[2] - ox:box[3] - ox] = comp
        sup[t, box[0] - oy:box[1] - oy, box[2] - ox:box[3] - ox] = sp
    shapes = [tuple(np.asarray(im).shape) for im in images]
    return TargetBatch(
        image_index=index, steps=steps, image_shapes=shapes, origin=origin, peak=peak, half=halves,
        contrast=torch.from_numpy(contrast), grad=torch.from_numpy(grad), entropy=torch.from_numpy(ent),
        inside=torch.from_numpy(inside), superpixel=torch.from_numpy(sup), strict=strict, ring=ring,
        seconds={"window": t_window, "features": t_features, "superpixel": t_slic},
    )


def local_entropy(values: np.ndarray, bins: int = 16, size: int = 5) -> np.ndarray:
    """``(h, w)`` float32 Shannon entropy (bits) of the ``size x size`` neighbourhood of every pixel.

    ``values`` ``(h, w)`` are quantised into ``bins`` equal bins between their minimum and maximum;
    neighbours outside the array count for nothing (edge pixels see fewer neighbours).
    """
    h, w = values.shape
    lo, hi = float(values.min()), float(values.max())
    q = np.minimum(((values - lo) / max(hi - lo, 1e-12) * bins).astype(np.intp), bins - 1)
    r = size // 2
    onehot = np.zeros((bins, h + 2 * r, w + 2 * r), np.uint8)  # zero margin of r on every side
    onehot[q, np.arange(h)[:, None] + r, np.arange(w)[None, :] + r] = 1
    # per-bin counts of each neighbourhood: box sums as shifted adds, rows then columns
    rows = onehot[:, :h].copy()
    for d in range(1, size):
        rows += onehot[:, d:d + h]
    counts = rows[:, :, :w].copy()
    for d in range(1, size):
        counts += rows[:, :, d:d + w]
    # -sum p log2 p = log2 n - sum c log2 c / n, with c the bin counts and n their sum (the
    # neighbours inside the array): one table lookup per count instead of a log per bin
    c = np.arange(size * size + 1, dtype=np.float64)
    c_log_c = c * np.log2(np.maximum(c, 1))
    ny = np.minimum(np.arange(h) + r, h - 1) - np.maximum(np.arange(h) - r, 0) + 1
    nx = np.minimum(np.arange(w) + r, w - 1) - np.maximum(np.arange(w) - r, 0) + 1
    n = np.outer(ny, nx).astype(np.float64)
    return (np.log2(n) - c_log_c[counts].sum(0) / n).astype(np.float32)


def target_steps(extent: int, config: AnnotatorConfig) -> int:
    """Diffusion steps for a target whose strict component spans ``extent`` pixels.

    The diffusion length grows as the square root of time, so a target larger than
    ``steps_extent`` gets ``steps * (extent / steps_extent)^2`` steps, rounded up to a power of two
    times ``steps`` (few distinct counts: few calls), at most ``steps_max``.
    """
    need = config.steps * max(1.0, extent / config.steps_extent) ** 2
    k = config.steps
    while k < need and k * 2 <= max(config.steps_max, config.steps):
        k *= 2
    return int(k)


def target_rates(batch: TargetBatch, theta: dict) -> torch.Tensor:
    """``(T, 4, S, S)`` jump rates (step 2), differentiable in ``theta`` (name -> 0-d tensor).

    The rate ``p -> q`` is ``sqrt(c_p c_q) exp(gamma (I'_q - I'_p) / 2)``, zero unless both ends
    are inside the field window. An explicit step is stable only while ``sum_d r <= 1`` (with
    ``tau = 1``), so each target's rates are divided by their fastest pixel's total and multiplied
    by ``0.9 D0 / D0_max``: ``D0`` sets the speed of diffusion as a fraction of the fastest stable
    one. The normalisation is part of the differentiated function.
    """
    dtype = batch.contrast.dtype
    D0, D0_max, beta, alpha, gamma = (theta[k].to(dtype) for k in ("D0", "D0_max", "beta", "alpha", "gamma"))
    log_c = -beta * (alpha * batch.grad + (1 - alpha) * batch.entropy / 8)  # log(c / D0)
    inside = batch.inside.to(dtype)
    level = batch.contrast.clamp(-1.0, 1.5)
    T, S, _ = log_c.shape
    # log of the edge conductance sqrt(c_p c_q) / D0 plus the drift exponent +-gamma (I'_q - I'_p) / 2
    ex = (log_c[:, :, :-1] + log_c[:, :, 1:]) / 2
    ey = (log_c[:, :-1, :] + log_c[:, 1:, :]) / 2
    dx = gamma * (level[:, :, 1:] - level[:, :, :-1]) / 2
    dy = gamma * (level[:, 1:, :] - level[:, :-1, :]) / 2
    mx = inside[:, :, :-1] * inside[:, :, 1:]
    my = inside[:, :-1, :] * inside[:, 1:, :]
    zx = log_c.new_zeros(T, S, 1)
    zy = log_c.new_zeros(T, 1, S)
    rates = torch.stack([
        torch.cat([mx * torch.exp(ex + dx), zx], 2),  # p -> east neighbour
        torch.cat([zx, mx * torch.exp(ex - dx)], 2),  # p -> west neighbour
        torch.cat([my * torch.exp(ey + dy), zy], 1),  # p -> south neighbour
        torch.cat([zy, my * torch.exp(ey - dy)], 1),  # p -> north neighbour
    ], 1)
    fastest = rates.sum(1).amax(dim=(1, 2)).clamp_min(1e-30)
    return rates * (0.9 * D0 / D0_max / fastest).view(T, 1, 1, 1)


def soft_labels(batch: TargetBatch, theta: dict) -> torch.Tensor:
    """``(T, S, S)`` soft pseudo-labels in [0, 1] (steps 3 and 5), differentiable in ``theta``."""
    T, S = len(batch), batch.contrast.shape[-1]
    if T == 0:
        return torch.zeros(0, S, S)
    # One diffuse call per step count (usually one or two per batch), each on the smallest central
    # crop that holds its targets' field windows: the rates vanish outside a field window, so the
    # heat never leaves it and the smaller crop changes no value, while most targets of a batch
    # are far smaller than its largest. A target's result does not depend on its batch.
    fields = []
    for k in np.unique(batch.steps):
        sel = np.flatnonzero(batch.steps == k)
        sub = batch.central(sel, int(batch.half[sel].max()))
        rates = target_rates(sub, theta)
        u0 = torch.zeros(sub.contrast.shape, dtype=rates.dtype)
        u0[torch.arange(len(sel)), torch.from_numpy(sub.peak[:, 0]), torch.from_numpy(sub.peak[:, 1])] = 1.0
        pad = (S - sub.contrast.shape[-1]) // 2
        fields.append((sel, torch.nn.functional.pad(fuse_prior(diffuse(u0, rates, 1.0, int(k)), sub, theta["rho"]), (pad,) * 4)))
    if len(fields) == 1:
        return fields[0][1]
    y = fields[0][1].new_zeros(T, S, S)
    for sel, part in fields:
        y = y.index_copy(0, torch.from_numpy(sel), part)
    return y


def fuse_prior(u: torch.Tensor, batch: TargetBatch, rho: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """Step 5: ``normalise(rho * normalise(u) + (1 - rho) * C)`` for heat fields ``u`` ``(T, S, S)``
    and the batch's superpixel priors ``C``; each map divided by its maximum (at least ``eps``)."""
    u = u / u.amax(dim=(1, 2), keepdim=True).clamp_min(eps)
    rho = rho.to(u.dtype)
    y = rho * u + (1 - rho) * batch.superpixel.to(u.dtype)
    return y / y.amax(dim=(1, 2), keepdim=True).clamp_min(eps)


def binarize_targets(batch: TargetBatch, soft: torch.Tensor, config: AnnotatorConfig | None = None) -> np.ndarray:
    """``(T, S, S)`` bool per-target masks (step 6)."""
    cfg = config or AnnotatorConfig()
    soft = soft.detach().cpu().numpy()
    contrast = batch.contrast.numpy()
    grad = batch.grad.numpy()
    inside = batch.inside.numpy()
    out = batch.strict.copy()
    c = contrast.shape[-1] // 2
    for t in range(len(batch)):
        # the target's field window (the crop's centre +- half): nothing of it lies outside
        h = int(batch.half[t])
        win = (t, slice(c - h, c + h + 1), slice(c - h, c + h + 1))
        peak = tuple(batch.peak[t] - (c - h))
        ring, strict, within = batch.ring[win], batch.strict[win], inside[win]
        bright = (contrast[win] >= cfg.low_fraction) & within
        grown = _component(bright, peak)
        if grown is not None and (grown & ring).any() and cfg.level > 0:
            # the bright region leaks out of the window: keep the part the heat reached
            grown = _component(bright & (soft[win] >= cfg.level), peak)
        if grown is not None and not (grown & ring).any():  # leak guard
            out[win] |= _target_part(grown, strict, within, grad[win], cfg)
    return out


def _target_part(region: np.ndarray, core: np.ndarray, inside: np.ndarray, grad: np.ndarray,
                 cfg: AnnotatorConfig) -> np.ndarray:
    """The part of the bright ``region`` ``(S, S)`` bool that belongs to the target whose strict
    component is ``core``: ``core``, its halo, and the region's further parts that end in a
    target-like edge (see ``halo_cover`` and ``edge_ratio``), connected to ``core``, holes filled.
    ``grad`` is ``|grad I'|`` (contrast per pixel); ``inside`` the field window."""
    extra = region & ~core
    if not extra.any():
        return region | core
    dist = ndi.distance_transform_cdt(~core, metric="chessboard")  # rings around the core
    reach = 0
    for d in range(1, int(dist[extra].max()) + 1):
        ring = (dist == d) & inside
        if not ring.any() or (region & ring).sum() < cfg.halo_cover * ring.sum():
            break
        reach = d
    kept = core | (region & (dist <= reach))
    rest = region & ~kept
    if rest.any():
        # outside the array is neither core nor region (border_value=1)
        core_edge = grad[core & ndi.binary_dilation(~core, EIGHT_CONNECTED, border_value=1)].mean()
        rim = rest & ndi.binary_dilation(~region, EIGHT_CONNECTED, border_value=1)  # where each part ends
        labels, n = ndi.label(rest, EIGHT_CONNECTED)
        for j in range(1, n + 1):
            part = labels == j
            end = part & rim
            if end.any() and grad[end].mean() >= cfg.edge_ratio * core_edge:
                kept |= part
    labels, _ = ndi.label(kept, EIGHT_CONNECTED)
    held = np.unique(labels[core])
    return ndi.binary_fill_holes(np.isin(labels, held[held > 0]))


def _component(mask: np.ndarray, seed: tuple) -> np.ndarray | None:
    """The 8-connected component of ``mask`` that holds pixel ``seed``, holes filled (or None)."""
    labels, _ = ndi.label(mask, EIGHT_CONNECTED)
    lab = labels[seed]
    return ndi.binary_fill_holes(labels == lab) if lab else None


def _crop_window(batch: TargetBatch, t: int, S: int, H: int, W: int) -> tuple:
    """Where target ``t``'s ``S x S`` crop meets its ``H x W`` image: ``(image slices, crop slices)``."""
    oy, ox = batch.origin[t]
    y0, y1, x0, x1 = max(oy, 0), min(oy + S, H), max(ox, 0), min(ox + S, W)
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))


def paste_masks(batch: TargetBatch, crops: np.ndarray, reduce: str = "or") -> list:
    """Per-image ``(H, W)`` maps from ``(T, S, S)`` crops: ``or`` for bool masks, ``max`` for soft labels."""
    maps = [np.zeros(shape, dtype=bool if reduce == "or" else np.float32) for shape in batch.image_shapes]
    S = crops.shape[-1]
    for t in range(len(batch)):
        out = maps[batch.image_index[t]]
        in_image, in_crop = _crop_window(batch, t, S, *out.shape)
        piece = crops[t][in_crop]
        region = out[in_image]
        if reduce == "or":
            region |= piece
        else:
            np.maximum(region, piece, out=region)
    return maps


def crop_maps(maps: list, batch: TargetBatch) -> torch.Tensor:
    """The inverse of :func:`paste_masks`: ``(T, S, S)`` float32 crops of per-image ``(H, W)`` maps
    at the targets' crop windows, zero outside each target's field window."""
    S = batch.contrast.shape[-1]
    out = np.zeros((len(batch), S, S), np.float32)
    for t in range(len(batch)):
        m = maps[batch.image_index[t]]
        in_image, in_crop = _crop_window(batch, t, S, *m.shape)
        out[t][in_crop] = m[in_image]
    return torch.from_numpy(out) * batch.inside


class Annotator:
    """Single points to pseudo-masks, batched over images (see the module docstring).

    Args:
        config: :class:`AnnotatorConfig` (fixed settings).
        params: :class:`DiffusionParams` (``theta``, learnable); a default one if omitted.
    """

    def __init__(self, config: AnnotatorConfig | None = None, params: DiffusionParams | None = None):
        self.config = config or AnnotatorConfig()
        self.params = params or DiffusionParams()
        self.last_seconds: dict = {}

    def prepare(self, images: Sequence[np.ndarray], points: Sequence[np.ndarray]) -> TargetBatch:
        return prepare_targets(images, points, self.config)

    def soft(self, batch: TargetBatch) -> torch.Tensor:
        """``(T, S, S)`` soft labels, differentiable in ``self.params``."""
        return soft_labels(batch, self.params())

    def masks(self, batch: TargetBatch) -> list:
        """Per-image ``(H, W)`` bool pseudo-masks from prepared targets."""
        return self.masks_and_soft(batch, fields=False)[0]

    def annotate(self, images: Sequence[np.ndarray], points: Sequence[np.ndarray]) -> list:
        """``B`` images ``(H, W)`` in [0, 1] and their points ``(K, 2)`` (x, y) -> ``B`` bool masks."""
        return self.masks(self.prepare(images, points))

    def masks_and_soft(self, batch: TargetBatch, fields: bool = True) -> tuple:
        """``(masks, fields)`` per image from one diffusion pass: the ``(H, W)`` bool pseudo-masks
        and (``fields``, else None) the ``(H, W)`` float32 soft labels in [0, 1], the targets'
        fused fields combined by maximum (zero outside every target's field window)."""
        t0 = time.perf_counter()
        with torch.no_grad():
            soft = self.soft(batch)
        t1 = time.perf_counter()
        maps = paste_masks(batch, binarize_targets(batch, soft, self.config))
        t2 = time.perf_counter()
        self.last_seconds = dict(batch.seconds, diffusion=t1 - t0, binarize=t2 - t1)
        if not fields:
            return maps, None
        soft_maps = paste_masks(batch, (soft * batch.inside).float().numpy(), reduce="max")
        self.last_seconds["soft"] = time.perf_counter() - t2
        return maps, soft_maps


def config_from_dict(values: dict) -> AnnotatorConfig:
    """An :class:`AnnotatorConfig` with some fields replaced (unknown names raise ``TypeError``)."""
    names = {f.name for f in dataclasses.fields(AnnotatorConfig)}
    unknown = set(values) - names
    if unknown:
        raise TypeError(f"unknown annotator settings: {sorted(unknown)}")
    return dataclasses.replace(AnnotatorConfig(), **values)
