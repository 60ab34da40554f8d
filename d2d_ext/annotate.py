"""Points to pseudo-masks: physics-induced diffusion annotation (the paper's Section 3.2).

Every target is one point ``(x, y)`` (0-based pixel coordinates, sub-pixel allowed) on an image
``(H, W)`` float32 in [0, 1]. Only the image and the points are read; nothing here can see a
ground-truth mask. A frame whose columns (or rows) carry a readout offset of their own, the
stripes of an uncooled sensor, is read with that pattern removed first (``destripe``,
:mod:`d2d_ext.stripes`); a frame without one is read as it is. Rows and columns of one value at a
frame's edges (a letterbox, padding) are not read, nor, in a JPEG-coded frame, the padding's
lines that share a coding block with the picture: the picture is what they frame
(:func:`d2d_ext.picture.picture_box`). Then, for each point:

1. **Snap and window** (:mod:`d2d_ext.windows`). The point moves to the brightest pixel of
   its 3x3 neighbourhood (the peak), or to a small target's peak a pixel or two farther that it
   missed; square windows of growing size are tried around it, each
   thresholded between its outer band's background and the peak, until one holds the peak's
   component clear of its band (the *leak guard*); an extended target grows the window while
   its band still lies on the target's hull. The result is the target's *strict component* and
   its background level, from the image alone.
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
   and a target's own extension ends as sharply as the target does. A part that ends sharply
   but pulls the mask's centroid more than ``centre_shift`` pixels farther from the point is a
   neighbour (a building, a patch of clutter): the point marks its target's middle. The
   target's pseudo-mask is the strict component united with that part
   (:func:`d2d_ext.morphology.target_part`); a mask that lies within ``point_radius`` of the peak
   (one or two pixels) is a point source's, and gets that whole disc, the least that the imaging
   blurs a point over; it is grown by ``mask_margin`` rings of pixels where a
   dataset's annotators draw a margin beyond the target (0 by default; ``d2d calibrate`` fits
   it), and the targets of one image are united into its mask.
7. **Targets kept apart.** One point marks one target, so where the united mask holds several
   peaks in one component (two close targets whose masks bridge the saddle between them) that
   component is split along the valleys between the peaks and the pixels where the parts meet
   are dropped on the darker side (:func:`keep_apart`): each point keeps its own component.

So a mask reads the fused field only where its bright region leaks (a few percent of real targets):
:meth:`Annotator.annotate` computes steps 3 to 5 (and the entropy) for those targets alone, and
:meth:`Annotator.masks` (the trainer's label updates) diffuses only them. Soft labels, and the
trainer's theta step that differentiates them, need every target's field. For a trainer that
reads soft labels as probabilities, :func:`mask_soft_labels` recasts the fields as odds about each
mask's edge, at least 0.5 exactly on the mask (``masks_and_soft(style="mask")``).

Typical use::

    annotator = Annotator()
    masks = annotator.annotate([image1, image2], [points1, points2])   # list of (H, W) bool
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
import torch
from skimage.segmentation import slic

from .points import point_pixel  # noqa: F401  (part of this module's API)
from .diffusion import diffuse
from .morphology import component, fill_holes, grow, label, split_at_valleys, target_part
from .picture import picture_box
from .spans import Span
from .stripes import AXES, destripe
from .windows import FrameTop, Step, check_points, find_peak, outer_band, snap, strict_component, window_box

__all__ = [
    "AnnotatorConfig",
    "SETTING_SPANS",
    "STYLES",
    "DiffusionParams",
    "TargetBatch",
    "Annotator",
    "prepare_targets",
    "target_rates",
    "soft_labels",
    "mask_soft_labels",
    "MaskOdds",
    "SOFT_STYLES",
    "binarize_targets",
    "image_masks",
    "leaking_targets",
    "ready_fields",
    "superpixel_prior",
    "paste_masks",
    "keep_apart",
    "crop_maps",
    "fuse_prior",
    "point_pixel",
    "TargetTrace",
    "Step",
    "explain_targets",
]


_PIXELS = "a whole number of pixels"
_FRACTION = "a fraction of the target's amplitude"
#: Every number setting of :class:`AnnotatorConfig` and the values it may take (the window sizes
#: and ``destripe`` are checked on their own).
SETTING_SPANS = {
    "snap_radius": Span(0, whole=True, what=_PIXELS),
    "snap_reach": Span(0, whole=True, what=_PIXELS),
    "settle_fraction": Span(0, 1, what=_FRACTION),
    "side_cover": Span(0, 1, what="a share of a band's side"),
    "plateau_step": Span(0, 1, open="high", what=_FRACTION),
    "band": Span(1, whole=True, what=_PIXELS),
    "k_sigma": Span(0, what="a number of noise spreads"),
    "lone_peak_pixels": Span(0, whole=True, what=_PIXELS),
    "skirt_ratio": Span(0, what="a ratio of edge slopes"),
    "peak_fraction": Span(0, 1, open="both", what=_FRACTION),
    "fraction_step": Span(0, 1, what=_FRACTION),
    "field_grow": Span(0, open="low", what="a factor"),
    "field_half_max": Span(1, whole=True, what=_PIXELS),
    "steps": Span(0, whole=True, what="a whole number of diffusion steps"),
    "steps_extent": Span(1, whole=True, what=_PIXELS),
    "steps_max": Span(0, whole=True, what="a whole number of diffusion steps"),
    "slic_segments": Span(1, whole=True, what="a whole number of segments"),
    "slic_compactness": Span(0, open="low", what="a number"),
    "low_fraction": Span(0, 1, what="a contrast fraction"),
    "level": Span(0, 1, what="a level of the fused label"),
    "halo_cover": Span(0, 1, what="a share of a ring"),
    "edge_ratio": Span(0, what="a ratio of edge slopes"),
    "centre_shift": Span(0, what="a distance in pixels"),
    "point_radius": Span(0, 8, open="high", what="a distance in pixels"),
    "mask_margin": Span(0, whole=True, what=_PIXELS),
}


@dataclass(frozen=True)
class AnnotatorConfig:
    """Settings of the annotator that are not learned (pixels unless stated)."""

    snap_radius: int = 1  # the point moves to the brightest pixel within this Chebyshev radius
    # ... or, where that pixel shows no bump above the noise and lies below the body of a peak
    # that does within this radius, to that peak: a click that missed a small target by a pixel
    # or two (windows.find_peak; at most snap_radius: never)
    snap_reach: int = 2
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
    # where at most this many pixels (the peak alone) clear k_sigma * sd, the component is taken at
    # bg + f * (peak - bg) instead if that holds more: the floor detected the target but did not
    # measure it (0: never)
    lone_peak_pixels: int = 1
    # the strict component's smooth skirt is dropped: while the pixels a threshold plateau_step of
    # the amplitude higher drops (less the rings around what it keeps that they surround, which
    # halo_cover reads) end in an edge less steep than skirt_ratio times the kept part's, they are
    # background the target sits on, a cloud's flank that fades out (0: never)
    skirt_ratio: float = 0.4
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
    # ... and only where adding it moves the mask's centroid at most centre_shift pixels farther
    # from the target's point: a point marks its target's middle, and a neighbour to one side pulls
    # the centroid away from it where a target's own extension does not (0: no test)
    centre_shift: float = 3.0
    # a target's mask that lies within this distance of its peak is that whole disc (1: the peak
    # and its 4 neighbours): an imaging system blurs a point source over its neighbours, so a mask
    # of one or two pixels marks where the target is brightest, not how far it reaches (0: never)
    point_radius: float = 1.0
    # every target's mask grown by this many rings of pixels (chessboard distance 1, 2, ...; within
    # the image): the margin that some datasets' annotators draw beyond what the image shows of a
    # target, a convention of the dataset (``d2d calibrate`` fits it from a few masks; 0: none)
    mask_margin: int = 0
    # what of a sensor's readout pattern to remove before anything reads a frame: one offset per
    # column ("columns", an uncooled sensor's stripes), per row ("rows", its row noise), "both" or
    # "none"; only a pattern that stands out of its estimate's noise is removed (stripes.destripe),
    # so a frame without one is read as it is, and a probe per axis costs a fraction of a target
    destripe: str = "both"

    def __post_init__(self):
        # window sizes may come as lists (JSON settings files): kept as tuples, checked here, since
        # a bad one would only fail deep inside the window search
        for name in ("half_sizes", "wide_half_sizes"):
            sizes = getattr(self, name)
            if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
                raise ValueError(f"annotator setting {name} must be a list of window half-sizes, got {sizes!r}")
            sizes = tuple(sizes)
            if any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1 for h in sizes) or \
                    any(b <= a for a, b in zip(sizes, sizes[1:])):
                raise ValueError(f"annotator setting {name} must hold increasing whole numbers >= 1, got {list(sizes)}")
            object.__setattr__(self, name, tuple(int(h) for h in sizes))
        for name, span in SETTING_SPANS.items():
            object.__setattr__(self, name, span.checked(name, getattr(self, name), "annotator setting "))
        if self.destripe not in AXES:
            raise ValueError(f"annotator setting destripe must be one of {', '.join(AXES)}, got {self.destripe!r}")
        if not self.half_sizes:
            raise ValueError("annotator setting half_sizes must hold at least one window half-size")
        if self.half_sizes[0] < self.band:
            raise ValueError(f"annotator setting half_sizes must start at band ({self.band}) or above: a window's "
                             f"outer band must leave its peak inside it, got {list(self.half_sizes)}")
        if self.wide_half_sizes and self.wide_half_sizes[0] <= self.half_sizes[-1]:
            raise ValueError(f"annotator setting wide_half_sizes must lie above half_sizes (the largest is "
                             f"{self.half_sizes[-1]}), got {list(self.wide_half_sizes)}")


class DiffusionParams(torch.nn.Module):
    """The learnable diffusion parameters ``theta``, bounded around their centres.

    ``D0 = 3.2 (1 + 0.3 tanh t0)``, ``beta = 2 (1 + 0.3 tanh t1)``, ``rho = 0.84 + 0.05 tanh t2``,
    ``alpha = 0.6 + 0.05 tanh t3`` (the reference code's parametrisation) and
    ``gamma = gamma0 (1 + 0.5 tanh t4)`` for the drift; the raw ``t`` start at zero. Each centre
    lies in its :data:`CENTRES` span (a D0 of 0 gives fields of NaN, a rho above 1 negative soft
    labels): another is refused naming it.

    ``beta`` is the reference code's 6 divided by 3. There it multiplies the gradient of the
    image's own intensities; here that of the contrast ``I'``, which spans the target's whole
    amplitude (0 at the background, 1 at the peak), so the same edge reads several times steeper:
    at 6 the conductance inside a textured or lobed target falls so low that the heat stays near
    its peak: the soft labels cover less of their targets, and where a bright region leaks, its
    mask (the part the heat reached) is cut to the target's core. The centre 2 was chosen on every
    dataset and the synthetic scenes, by the masks under every probe and by the soft labels
    (``benchmarks/annotation/annotation_datasets.py --soft``; RESULTS.md).
    """

    NAMES = ("D0", "beta", "rho", "alpha", "gamma")
    #: The values each centre may take: a positive speed, a conductance's non-negative edge
    #: sensitivity, the heat's share of the fused label and the gradient's share of the
    #: conductance's edge term (rho 1: no superpixel prior), and a drift toward bright pixels or none.
    CENTRES = {"D0": Span(0, open="low"), "beta": Span(0), "rho": Span(0, 1, what="a share"),
               "alpha": Span(0, 1, what="a share"), "gamma": Span(0)}

    def __init__(self, D0: float = 3.2, beta: float = 2.0, rho: float = 0.84, alpha: float = 0.6, gamma: float = 4.0):
        super().__init__()
        D0, beta, rho, alpha, gamma = (self.CENTRES[name].checked(name, value, "diffusion parameter ") for name, value
                                       in zip(self.NAMES, (D0, beta, rho, alpha, gamma)))
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
    point: np.ndarray  # (T, 2) int64: (row, col) of the pixel of the target's point inside the crop
    half: np.ndarray  # (T,) int64: field window half-size (the crop's centre +- half holds the field window)
    contrast: torch.Tensor  # (T, S, S) float32: I' = (I - bg) / (peak - bg)
    grad: torch.Tensor  # (T, S, S) float32: |grad I'| (per pixel)
    entropy: torch.Tensor  # (T, S, S) float32: 5x5 local entropy (bits)
    inside: torch.Tensor  # (T, S, S) bool: inside the field window and the image
    superpixel: torch.Tensor  # (T, S, S) float32: the SLIC segment of the peak (0/1)
    strict: np.ndarray  # (T, S, S) bool: the leak-guarded threshold component
    ring: np.ndarray  # (T, S, S) bool: the field window's outer band (leak guard of the grown component)
    seconds: dict = field(default_factory=dict)  # time per stage
    # (T,) bool: the targets whose heat field can be computed (their entropy and superpixel prior
    # are filled in); None: every target. See prepare_targets(lazy=True).
    ready: np.ndarray | None = None
    # ((low_fraction, level), [per target: _bright_region's result]) from the leak test of
    # prepare_targets(lazy=True), which binarize_targets reuses at those settings; None: none kept
    regions: tuple | None = None

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
            peak=self.peak[sel] - (c - r), point=self.point[sel] - (c - r), half=self.half[sel],
            contrast=self.contrast[tcut], grad=self.grad[tcut],
            entropy=self.entropy[tcut], inside=self.inside[tcut], superpixel=self.superpixel[tcut],
            strict=self.strict[cut], ring=self.ring[cut], ready=None if self.ready is None else self.ready[sel],
            regions=None)

    def to(self, dtype: torch.dtype) -> "TargetBatch":
        """A copy whose float tensors have ``dtype`` (float64 for gradient checks)."""
        return dataclasses.replace(
            self, contrast=self.contrast.to(dtype), grad=self.grad.to(dtype),
            entropy=self.entropy.to(dtype), superpixel=self.superpixel.to(dtype))


# The smallest amplitude (peak - background) a target's contrast is divided by, as a fraction of the
# range of its field window that neighbouring pixels share (a point on a flat background would
# otherwise divide by zero). Local, so that a saturated object elsewhere in a raw frame (the sun, a
# flare) cannot make the floor as large as a dim target's amplitude; shared by neighbours, so that
# a stuck pixel in the window cannot either.
AMPLITUDE_FLOOR = 1e-3


def shared_range(pixels: np.ndarray) -> float:
    """The range of ``pixels`` ``(h, w)`` that two horizontal neighbours share: the largest value
    two of them both reach minus the smallest both stay at or above; the plain range where that is
    0 (a flat array with single bright pixels, or one column)."""
    if pixels.shape[1] > 1:
        both = np.minimum(pixels[:, 1:], pixels[:, :-1])
        top = float(both.max())
        np.maximum(pixels[:, 1:], pixels[:, :-1], out=both)
        shared = top - float(both.min())
        if shared > 0.0:
            return shared
    return float(pixels.max()) - float(pixels.min())


class _Target(NamedTuple):
    """One target's image-only data before the batch's crops are laid out."""

    image: int  # index of its image in the batch
    fbox: tuple  # field window (y0, y1, x0, x1) in the image
    box: tuple  # accepted strict window (y0, y1, x0, x1) in the image
    py: int  # peak row
    px: int  # peak column
    point: tuple  # (row, col) of the pixel of the target's point
    half: int  # field window half-size
    contrast: np.ndarray  # (h, w) over the field window: I' = (I - bg) / (peak - bg)
    grad: np.ndarray  # (h, w) over the field window: |grad I'|
    comp: np.ndarray  # (h', w') bool over the strict window: the strict component
    steps: int  # diffusion steps


def _prepare_target(image: np.ndarray, b: int, point: tuple, py: int, px: int, others: list, cfg: AnnotatorConfig,
                    seconds: dict, top: FrameTop | None = None, trace: list | None = None) -> _Target:
    """Step 1 and the contrast of step 2 for the peak ``(py, px)`` of ``image`` (index ``b`` of
    the batch), snapped from the pixel ``point`` ``(row, col)``; ``others``: the image's other
    peaks; ``top``: the image's :class:`~d2d_ext.windows.FrameTop`, shared by its targets; adds
    each stage's time to ``seconds``; ``trace``: receives the window search's decisions."""
    H, W = image.shape
    t0 = time.perf_counter()
    strict = strict_component(image, py, px, cfg, others, top, trace)
    box = strict.box
    ys, xs = np.nonzero(strict.comp)
    extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    # the field window holds the strict window (which the image's edge may have cut off-centre)
    # and twice the strict component
    reach = max(py - box[0], box[1] - 1 - py, px - box[2], box[3] - 1 - px)
    half = min(max(reach, int(cfg.field_grow * extent + 3)), max(cfg.field_half_max, reach))
    fbox = window_box(py, px, half, H, W)
    t1 = time.perf_counter()
    win = image[fbox[0]:fbox[1], fbox[2]:fbox[3]].astype(np.float64)
    if not np.isfinite(win).all():  # what the mask is read from: a NaN there would move it silently
        ys, xs = np.nonzero(~np.isfinite(win))
        raise ValueError(f"annotate: image {b} has pixels that are not numbers (NaN or infinity) near its point "
                         f"at pixel (x={point[1]}, y={point[0]}): {len(ys)}, the first at (x={xs[0] + fbox[2]}, "
                         f"y={ys[0] + fbox[0]}); dead pixels: repair them first (d2d_ext.sensor.repair with "
                         "their map)")
    # The amplitude's floor (a point on a flat background) is a fraction of the window's own range
    # (AMPLITUDE_FLOOR), so that no setting depends on the sensor's gain and offset: a 16-bit frame
    # whose values span a few hundred counts gives the masks of the same frame stretched to [0, 1].
    contrast = (win - strict.bg) / max(strict.peak - strict.bg, AMPLITUDE_FLOOR * shared_range(win), 1e-30)
    gy, gx = gradient(contrast)
    seconds["window"] += t1 - t0
    seconds["features"] += time.perf_counter() - t1
    return _Target(image=b, fbox=fbox, box=box, py=py, px=px, point=point, half=half, contrast=contrast,
                   grad=np.hypot(gy, gx), comp=strict.comp, steps=target_steps(extent, cfg))


def gradient(values: np.ndarray) -> tuple:
    """``(d/dy, d/dx)`` of ``values`` ``(h, w)`` float: ``np.gradient``'s values (central
    differences inside, one-sided on the edges), zero along an axis of length 1, without that
    function's generic set-up (one call per target)."""
    gy, gx = np.zeros_like(values), np.zeros_like(values)
    h, w = values.shape
    if h > 1 and w > 1:
        gy[1:-1] = (values[2:] - values[:-2]) / 2.0
        gy[0], gy[-1] = values[1] - values[0], values[-1] - values[-2]
        gx[:, 1:-1] = (values[:, 2:] - values[:, :-2]) / 2.0
        gx[:, 0], gx[:, -1] = values[:, 1] - values[:, 0], values[:, -1] - values[:, -2]
    return gy, gx


def superpixel_prior(image: np.ndarray, box: tuple, py: int, px: int, cfg: AnnotatorConfig) -> np.ndarray:
    """Step 4: the SLIC segment of the peak ``(py, px)`` in the accepted window ``box`` (the
    region the point's statistics came from), ``(h', w')`` bool over that window."""
    seg = slic(image[box[0]:box[1], box[2]:box[3]], n_segments=cfg.slic_segments, compactness=cfg.slic_compactness,
               channel_axis=None, start_label=0, enforce_connectivity=True)
    return seg == seg[py - box[0], px - box[2]]


def _picture_and_peaks(image: np.ndarray, pts, b: int, cfg: AnnotatorConfig, seconds: dict) -> tuple:
    """What the targets of image ``b`` of a batch are read from: ``(picture, points, corner,
    peaks)``, the picture (float32; its padding left out, :func:`~d2d_ext.picture.picture_box`,
    and its column pattern removed, :func:`~d2d_ext.stripes.destripe`), the points ``(K, 2)`` in
    it, its top-left pixel ``(row, col)`` in the frame and each point's peak ``(row, col)`` in it
    (:func:`~d2d_ext.windows.find_peak`, never moved onto another point's). Adds each stage's time
    to ``seconds``."""
    image = image.astype(np.float32, copy=False)
    pts = check_points(pts, image.shape, b)
    t0 = time.perf_counter()
    y0, y1, x0, x1 = picture_box(image, pts)
    if (y1 - y0, x1 - x0) != image.shape:  # the target's frame is the picture, not its padding
        image, pts = image[y0:y1, x0:x1], pts - np.array([x0, y0], pts.dtype)
    seconds["picture"] += time.perf_counter() - t0
    if len(pts) and cfg.destripe != "none":
        t0 = time.perf_counter()
        image = destripe(image, cfg.destripe)
        seconds["destripe"] += time.perf_counter() - t0
    near = [snap(image, x, y, cfg.snap_radius) for x, y in pts]
    peaks = [find_peak(image, x, y, cfg, near[:k] + near[k + 1:]) for k, (x, y) in enumerate(pts)]
    return image, pts, (y0, x0), peaks


def prepare_targets(images: Sequence[np.ndarray], points: Sequence[np.ndarray], config: AnnotatorConfig | None = None,
                    lazy: bool = False, trace: list | None = None) -> TargetBatch:
    """Image-only work for every target of a batch of images (steps 1, 2's features and 4).

    Args:
        images: ``B`` arrays ``(H_b, W_b)``, float in [0, 1].
        points: ``B`` arrays ``(K_b, 2)`` of ``(x, y)`` pixel coordinates (``K_b`` may be 0).
        lazy: only the targets whose mask reads their fused field (those whose bright region
            leaks, see :func:`binarize_targets`) get the field's inputs (local entropy and
            superpixel prior); ``batch.ready`` marks them. Enough for masks at ``config``'s
            binarisation settings, which are then those of the eager batch; not for soft labels.
        trace: a list that receives, per target in the batch's order, the list of the window
            search's decisions (:class:`~d2d_ext.windows.Step`; ``strict_component(trace=...)``).
    """
    cfg = config or AnnotatorConfig()
    if len(images) != len(points):
        raise ValueError(f"annotate: {len(images)} images but {len(points)} point arrays")
    rows = []
    seconds = {"picture": 0.0, "destripe": 0.0, "window": 0.0, "features": 0.0, "superpixel": 0.0}
    shapes, arrays, frames, corners = [], [], [], []
    for b, (image, pts) in enumerate(zip(images, points)):
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"annotate: image {b} must have shape (H, W), got {image.shape}")
        frames.append(tuple(image.shape))
        image, pts, corner, peaks = _picture_and_peaks(image, pts, b, cfg, seconds)
        corners.append(corner)
        shapes.append(tuple(image.shape))
        arrays.append(image)
        top = FrameTop(image)
        for (x, y), (py, px) in zip(pts, peaks):
            steps = None if trace is None else []
            rows.append(_prepare_target(image, b, point_pixel(x, y, *image.shape), py, px,
                                        [q for q in peaks if q != (py, px)], cfg, seconds, top, steps))
            if trace is not None:
                trace.append(steps)
    batch = _lay_out(rows, shapes, cfg, seconds)
    if lazy:
        t0 = time.perf_counter()
        regions = _bright_regions(batch, cfg)
        batch.ready = _leaking(regions)
        batch.regions = ((cfg.low_fraction, cfg.level), regions)
        seconds["leak test"] = time.perf_counter() - t0
    _field_inputs(batch, rows, arrays, np.arange(len(rows)) if batch.ready is None else np.flatnonzero(batch.ready), cfg)
    # from the pictures' coordinates to their frames'
    batch.origin += np.array(corners, np.int64).reshape(-1, 2)[batch.image_index]
    batch.image_shapes = frames
    return batch


def _field_inputs(batch: TargetBatch, rows: list, images: list, sel: np.ndarray, cfg: AnnotatorConfig) -> None:
    """Fills in the local entropy (step 2) and the superpixel prior (step 4) of targets ``sel`` of
    ``batch`` (laid out from ``rows``, :class:`_Target`; ``images``: the batch's float32 images)."""
    entropy, prior = batch.entropy.numpy(), batch.superpixel.numpy()
    for t in sel:
        r = rows[t]
        oy, ox = batch.origin[t]
        t0 = time.perf_counter()
        image = images[r.image]
        win = image[r.fbox[0]:r.fbox[1], r.fbox[2]:r.fbox[3]].astype(np.float64)
        entropy[t, r.fbox[0] - oy:r.fbox[1] - oy, r.fbox[2] - ox:r.fbox[3] - ox] = local_entropy(win)
        t1 = time.perf_counter()
        prior[t, r.box[0] - oy:r.box[1] - oy, r.box[2] - ox:r.box[3] - ox] = superpixel_prior(image, r.box, r.py, r.px, cfg)
        batch.seconds["features"] += t1 - t0
        batch.seconds["superpixel"] += time.perf_counter() - t1


def _lay_out(rows: list, shapes: list, cfg: AnnotatorConfig, seconds: dict) -> TargetBatch:
    """The targets ``rows`` (:class:`_Target`) on ``S x S`` crops centred on their peaks, ``S`` the
    batch's largest field window (``shapes``: each image's ``(H, W)``)."""
    T = len(rows)
    R = max([r.half for r in rows], default=1)
    S = 2 * R + 1
    contrast = np.zeros((T, S, S), np.float32)
    grad = np.zeros((T, S, S), np.float32)
    ent = np.zeros((T, S, S), np.float32)  # the entropy and the prior are filled in later (_field_inputs)
    inside = np.zeros((T, S, S), bool)
    sup = np.zeros((T, S, S), np.float32)
    strict = np.zeros((T, S, S), bool)
    ring = np.zeros((T, S, S), bool)
    origin = np.array([(r.py - R, r.px - R) for r in rows], np.int64).reshape(T, 2)
    for t, r in enumerate(rows):
        oy, ox = origin[t]
        fy, fx = r.fbox[0] - oy, r.fbox[2] - ox
        h, w = r.contrast.shape
        field = (t, slice(fy, fy + h), slice(fx, fx + w))
        contrast[field] = r.contrast
        grad[field] = r.grad
        inside[field] = True
        ring[field] = outer_band(r.fbox, cfg.band, *shapes[r.image])
        window = (t, slice(r.box[0] - oy, r.box[1] - oy), slice(r.box[2] - ox, r.box[3] - ox))
        strict[window] = r.comp
    return TargetBatch(
        image_index=np.array([r.image for r in rows], np.int64), steps=np.array([r.steps for r in rows], np.int64),
        image_shapes=shapes, origin=origin, peak=np.full((T, 2), R, np.int64),
        point=np.array([r.point for r in rows], np.int64).reshape(T, 2) - origin,
        half=np.array([r.half for r in rows], np.int64),
        contrast=torch.from_numpy(contrast), grad=torch.from_numpy(grad), entropy=torch.from_numpy(ent),
        inside=torch.from_numpy(inside), superpixel=torch.from_numpy(sup), strict=strict, ring=ring,
        seconds=seconds,
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


#: The heat of a target's source where no gradient is taken. A unit source's heat falls by tens of
#: orders of magnitude across the edges of a large field window, below float32's smallest normal
#: number (1.2e-38), where x86 arithmetic on subnormal numbers runs several times slower. The
#: diffusion is linear, the field is divided by its maximum, and scaling by a power of two is
#: exact: a source of 2^126 (all the heat, at most 2^126 anywhere, stays below float32's largest
#: number, 2^128) gives the unit source's normalised field to the bit wherever that lies well
#: above the smallest normal number, and keeps 38 more decades normal (it differs, by under 1e-40,
#: only where the unit source's heat fell near or below it, where it keeps more of the value).
#: With a gradient the source stays 1: the adjoint would carry 2^-126 and fall below normal itself.
HEAT_SOURCE = 2.0 ** 126


def soft_labels(batch: TargetBatch, theta: dict) -> torch.Tensor:
    """``(T, S, S)`` soft pseudo-labels in [0, 1] (steps 3 and 5), differentiable in ``theta``."""
    T, S = len(batch), batch.contrast.shape[-1]
    if T == 0:
        return torch.zeros(0, S, S)
    if batch.ready is not None and not batch.ready.all():
        raise ValueError("soft_labels: targets of this batch were prepared without the inputs of their field "
                         "(prepare_targets(lazy=True), for masks only); prepare it with lazy=False")
    # One diffuse call per step count (usually one or two per batch), each on the smallest central
    # crop that holds its targets' field windows: the rates vanish outside a field window, so the
    # heat never leaves it and the smaller crop changes no value, while most targets of a batch
    # are far smaller than its largest. A target's result does not depend on its batch.
    source = 1.0 if torch.is_grad_enabled() and any(v.requires_grad for v in theta.values()) else HEAT_SOURCE
    fields = []
    for k in np.unique(batch.steps):
        sel = np.flatnonzero(batch.steps == k)
        sub = batch.central(sel, int(batch.half[sel].max()))
        rates = target_rates(sub, theta)
        u0 = torch.zeros(sub.contrast.shape, dtype=rates.dtype)
        u0[torch.arange(len(sel)), torch.from_numpy(sub.peak[:, 0]), torch.from_numpy(sub.peak[:, 1])] = source
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


def ready_fields(batch: TargetBatch, field_fn) -> torch.Tensor:
    """``(T, S, S)``: ``field_fn(sub_batch)`` (soft labels of a batch, e.g. :meth:`Annotator.soft`)
    for the targets of ``batch.ready`` (every target where it is None), zero for the others (a
    lazy batch: no mask reads their fields); in ``field_fn``'s dtype."""
    if batch.ready is None or batch.ready.all():
        return field_fn(batch)
    sel = np.flatnonzero(batch.ready)
    S = batch.contrast.shape[-1]
    if not sel.size:
        return torch.zeros(len(batch), S, S, dtype=batch.contrast.dtype)
    part = field_fn(batch.central(sel, S // 2))
    soft = part.new_zeros(len(batch), S, S)
    soft[torch.from_numpy(sel)] = part
    return soft


def _field_window(batch: TargetBatch, t: int) -> tuple:
    """Target ``t``'s field window in its crop (the crop's centre +- half: nothing of the field
    window lies outside it): ``(index of the window, peak within the window)``."""
    c = batch.contrast.shape[-1] // 2
    h = int(batch.half[t])
    return (t, slice(c - h, c + h + 1), slice(c - h, c + h + 1)), tuple(batch.peak[t] - (c - h))


def _bright_region(batch: TargetBatch, t: int, cfg: AnnotatorConfig) -> tuple:
    """Target ``t``'s bright region ``{I' >= low_fraction}`` in its field window: ``(bright
    pixels, the peak's 8-connected component of them (holes not filled) or None, whether it
    leaks)``. Where it leaks (reaches the window's outer band) the mask keeps only what the fused
    field reached. The test needs no filled holes: the band runs along the window's edge, so a
    hole that held a band pixel would be closed by band pixels of the component."""
    win, peak = _field_window(batch, t)
    bright = (batch.contrast.numpy()[win] >= cfg.low_fraction) & batch.inside.numpy()[win]
    comp = component(bright, peak)
    if comp is None:
        return bright, None, False
    return bright, comp, cfg.level > 0 and bool((comp & batch.ring[win]).any())


def leaking_targets(batch: TargetBatch, config: AnnotatorConfig | None = None) -> np.ndarray:
    """``(T,)`` bool: the targets whose bright region leaks, the only ones whose mask reads their
    fused field (at ``config``'s ``low_fraction`` and ``level``)."""
    return _leaking(_bright_regions(batch, config or AnnotatorConfig()))


def _bright_regions(batch: TargetBatch, cfg: AnnotatorConfig) -> list:
    """:func:`_bright_region` of every target of ``batch``."""
    return [_bright_region(batch, t, cfg) for t in range(len(batch))]


def _leaking(regions: list) -> np.ndarray:
    """``(T,)`` bool: which of :func:`_bright_regions`' regions leak."""
    return np.array([leaks for _, _, leaks in regions], bool)


def binarize_targets(batch: TargetBatch, soft: torch.Tensor, config: AnnotatorConfig | None = None,
                     trace: list | None = None) -> np.ndarray:
    """``(T, S, S)`` bool per-target masks (step 6). ``soft`` is read only for the targets whose
    bright region leaks (:func:`leaking_targets`). ``trace``: a list that receives, per target, the
    list of what the binarisation made of it (:class:`~d2d_ext.windows.Step`, stage
    ``"binarize"``: the bright region, the heat's gate, the leak guard, the halo and each further
    part, the point's disc, the margin)."""
    cfg = config or AnnotatorConfig()
    soft = soft.detach().cpu().numpy()
    # the bright regions the leak test found, where it ran at these settings
    regions = batch.regions[1] if batch.regions is not None and batch.regions[0] == (cfg.low_fraction, cfg.level) else None
    grad = batch.grad.numpy()
    inside = batch.inside.numpy()
    out = batch.strict.copy()
    disc = None
    if cfg.point_radius > 0:  # every crop's centre is its target's peak
        c = out.shape[-1] // 2
        rows, cols = np.ogrid[-c:c + 1, -c:c + 1]
        disc = rows * rows + cols * cols <= cfg.point_radius ** 2
    for t in range(len(batch)):
        win, peak = _field_window(batch, t)
        ring, strict, within = batch.ring[win], batch.strict[win], inside[win]
        bright, comp, leaks = regions[t] if regions is not None else _bright_region(batch, t, cfg)
        steps = None if trace is None else []
        note = _binarize_note(steps, int(batch.half[t]), cfg.low_fraction)
        note(comp, f"the bright region {{I' >= {cfg.low_fraction}}} at the peak"
             + (", which reaches the field window's band" if leaks else ""))
        if leaks:
            if batch.ready is not None and not batch.ready[t]:
                raise ValueError(f"binarize_targets: target {t}'s bright region leaks, but the batch was prepared "
                                 "without its field (prepare_targets(lazy=True) at other binarisation settings)")
            # the bright region leaks out of the window: keep the part the heat reached
            comp = component(bright & (soft[win] >= cfg.level), peak)
            note(comp, f"the part of it the heat reached (field >= {cfg.level})")
        grown = None if comp is None else fill_holes(comp)
        if grown is not None and not (grown & ring).any():  # leak guard
            centre = tuple(np.add(peak, batch.point[t] - batch.peak[t]))  # the point in the window
            parts = None if steps is None else []
            out[win] |= target_part(grown, strict, grad[win], cfg.halo_cover, cfg.edge_ratio, within,
                                    centre, cfg.centre_shift, parts)
            for pixels, what in parts or ():
                note(pixels, what)
        elif grown is not None:
            note(grown, "it still reaches the band: left out, the strict component stays")
        if disc is not None and not (out[t] & ~disc).any():  # a point source's mask: its blur's whole disc
            out[t] |= disc & inside[t]
            note(out[t], f"within {cfg.point_radius} px of the peak: a point source's mask, its blur's disc")
        if cfg.mask_margin > 0:
            out[t] = grow(out[t], cfg.mask_margin) & inside[t]
            note(out[t], f"grown by {cfg.mask_margin} rings of pixels (mask_margin)")
        if trace is not None:
            note(out[t], "the target's mask")
            trace.append(steps)
    return out


def _binarize_note(steps: list | None, half: int, fraction: float):
    """A recorder of :func:`binarize_targets`' decisions for one target: ``note(pixels, what)``
    appends a :class:`~d2d_ext.windows.Step` to ``steps`` (``pixels`` a count or a bool array, None
    for 0; nothing where ``steps`` is None)."""
    def note(pixels, what: str) -> None:
        if steps is not None:
            count = 0 if pixels is None else int(pixels) if np.isscalar(pixels) else int(np.sum(pixels))
            steps.append(Step("binarize", half, fraction, count, what))
    return note


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


def keep_apart(batch: TargetBatch, maps: list) -> list:
    """Per-image ``(H, W)`` bool masks (:func:`paste_masks`' result, changed in place and
    returned) where no two targets' peaks share a component: a component holding several peaks
    is split along the valleys between them (:func:`~d2d_ext.morphology.split_at_valleys`, on the
    contrast of a target whose field window holds the whole component), each peak keeping the
    part joined to it. One point marks one target, so two points' masks that touch bridge a
    saddle between two targets. Left whole where no field window holds the component or two
    peaks touch."""
    S = batch.contrast.shape[-1]
    contrast, inside = batch.contrast.numpy(), batch.inside.numpy()
    peaks = batch.origin + batch.peak  # (T, 2) in the image
    for b, mask in enumerate(maps):
        for group in _touching_crops(batch, b):
            # a component joins two peaks only through a chain of targets whose crops touch: the
            # group's crops hold all of it
            oy, ox = batch.origin[group].min(0)
            ey, ex = batch.origin[group].max(0) + S
            y0, x0 = max(int(oy), 0), max(int(ox), 0)
            labels, _ = label(mask[y0:max(int(ey), 0), x0:max(int(ex), 0)])
            held = {}
            for t in group:
                y, x = peaks[t] - (y0, x0)
                if 0 <= y < labels.shape[0] and 0 <= x < labels.shape[1] and labels[y, x]:
                    held.setdefault(int(labels[y, x]), []).append(int(t))
            for lab, ts in held.items():
                if len({tuple(peaks[t]) for t in ts}) > 1:
                    _split(mask, labels == lab, (y0, x0), ts, peaks, batch.origin, contrast, inside)
    return maps


def _touching_crops(batch: TargetBatch, b: int) -> list:
    """The groups (two or more; arrays of target indices) of image ``b``'s targets whose ``S x S``
    crops touch, directly or through others of the group."""
    targets = np.nonzero(batch.image_index == b)[0]
    if len(targets) < 2:
        return []
    S = batch.contrast.shape[-1]
    o = batch.origin[targets]
    near = np.abs(o[:, None] - o[None]).max(-1) <= S  # crops that overlap or share an edge
    group = np.arange(len(targets))
    changed = True
    while changed:  # each target takes the smallest index it is chained to
        low = np.where(near, group[None, :], len(targets)).min(1)
        changed = bool((low < group).any())
        group = np.minimum(group, low)
    return [targets[group == g] for g in np.unique(group) if (group == g).sum() > 1]


def _split(mask: np.ndarray, comp: np.ndarray, at: tuple, ts: list, peaks: np.ndarray, origin: np.ndarray,
           contrast: np.ndarray, inside: np.ndarray) -> None:
    """Splits the component ``comp`` (bool, over ``mask[at[0]:, at[1]:]``) of ``mask`` that holds
    the peaks of targets ``ts`` (see :func:`keep_apart`), in place."""
    ys, xs = np.nonzero(comp)
    y0, y1, x0, x1 = ys.min() + at[0], ys.max() + 1 + at[0], xs.min() + at[1], xs.max() + 1 + at[1]
    region = comp[y0 - at[0]:y1 - at[0], x0 - at[1]:x1 - at[1]]
    seeds = sorted({tuple(int(v) for v in peaks[t]) for t in ts})
    S = contrast.shape[-1]
    for t in ts:  # a target whose field window holds the whole component reads its brightness
        oy, ox = origin[t]
        cy, cx = slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox)
        if cy.start < 0 or cx.start < 0 or cy.stop > S or cx.stop > S or not inside[t][cy, cx][region].all():
            continue
        parts = split_at_valleys(region, contrast[t][cy, cx], [(y - y0, x - x0) for y, x in seeds])
        if parts is None:
            return
        kept = np.zeros_like(region)
        for k, (y, x) in enumerate(seeds):
            kept |= component(parts == k + 1, (y - y0, x - x0))
        window = mask[y0:y1, x0:x1]
        window[region] = kept[region]
        return


def image_masks(batch: TargetBatch, soft: torch.Tensor, config: AnnotatorConfig | None = None,
                trace: list | None = None) -> list:
    """Per-image ``(H, W)`` bool pseudo-masks from the targets' fields ``soft`` ``(T, S, S)``: each
    target's mask (:func:`binarize_targets`, which records its decisions in ``trace``), pasted
    into its image (:func:`paste_masks`), the targets kept apart (:func:`keep_apart`)."""
    return keep_apart(batch, paste_masks(batch, binarize_targets(batch, soft, config, trace)))


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


# Soft labels in the masks' terms (``d2d annotate --soft-style mask``). A target's field ``y``
# peaks at 1 and reaches over its whole field window, so a trainer that reads the field as a
# probability (or thresholds it at 0.5) sees only each target's core: its 0.5 level lies far inside
# the mask. Recast as odds about the field's level ``e`` at the mask's edge, ``s = y^k / (y^k + e^k)``
# is 0.5 there, near 1 at the peak and falls off outside as the heat does. ``e`` is a low quantile
# of the field over the mask, not its minimum: the contrast makes the mask, and one rim pixel the
# heat barely reached would otherwise lift every pixel around the target towards 0.5.
MASK_EDGE_QUANTILE = 0.1
MASK_ODDS_POWER = 2.0  # k: the odds' steepness in the ratio y / e
# the largest value outside a mask: below one half after a 16-bit PNG's rounding too (32767 / 65535)
BELOW_HALF = 32767 / 65535


class MaskOdds(NamedTuple):
    """The mask style's odds ``y^k / (y^k + e^k)``: ``power`` is ``k``; ``e`` is the ``quantile``
    quantile of a target's field over its mask (see :func:`mask_soft_labels`)."""

    power: float = MASK_ODDS_POWER
    quantile: float = MASK_EDGE_QUANTILE


def mask_soft_labels(batch: TargetBatch, soft: torch.Tensor, masks: list, odds: MaskOdds = MaskOdds()) -> list:
    """Per-image ``(H, W)`` float32 soft labels in [0, 1] whose 0.5 level is exactly ``masks``.

    Args:
        batch: the prepared targets.
        soft: ``(T, S, S)`` their fields (:func:`soft_labels`).
        masks: the images' ``(H, W)`` bool pseudo-masks from those fields (:func:`image_masks`).
        odds: :class:`MaskOdds` (by default :data:`MASK_ODDS_POWER` and :data:`MASK_EDGE_QUANTILE`).

    Each target's field becomes ``y^k / (y^k + e^k)`` (``k`` ``odds.power``, ``e`` the
    ``odds.quantile`` quantile of ``y`` over the target's component of its image's mask
    within its field window; a target without one gets ``e = 1``), the targets are combined by
    maximum, and every pixel is then lifted to at least 0.5 on the mask and held to at most
    :data:`BELOW_HALF` off it.
    """
    inside = batch.inside.numpy()
    y = soft.detach().float().numpy() * inside
    S = y.shape[-1]
    edges = np.ones(len(batch), np.float32)
    held = np.zeros((S, S), bool)
    for t in range(len(batch)):
        image = masks[batch.image_index[t]]
        in_image, in_crop = _crop_window(batch, t, S, *image.shape)
        held[:] = False
        held[in_crop] = image[in_image]
        mask = component(held & inside[t], tuple(int(v) for v in batch.peak[t]))
        if mask is not None:
            edges[t] = max(float(np.quantile(y[t][mask], odds.quantile)), 1e-12)
    with np.errstate(divide="ignore", over="ignore"):  # y = 0 (outside the window): odds 0
        labels = 1.0 / (1.0 + (edges[:, None, None] / y) ** np.float32(odds.power))
    maps = paste_masks(batch, labels, reduce="max")
    for labels, mask in zip(maps, masks):
        np.maximum(labels, np.float32(0.5), out=labels, where=mask)
        np.minimum(labels, np.float32(BELOW_HALF), out=labels, where=~mask)
    return maps


SOFT_STYLES = ("field", "mask")


class TargetTrace(NamedTuple):
    """How one target got its mask (:func:`explain_targets`)."""

    point: tuple  # (x, y) of its point in the frame, as given
    peak: tuple  # (x, y) of the pixel the point moved to (step 1), in the frame
    steps: list  # the window search's decisions (Step, from d2d_ext.windows), in order
    strict: int  # pixels of its strict component
    mask: int  # pixels of its mask (the component of the image's mask that holds its peak)


def explain_targets(image: np.ndarray, points: np.ndarray, config: AnnotatorConfig | None = None,
                    params: DiffusionParams | None = None, masks: list | None = None) -> list:
    """Why each target of one image ``(H, W)`` in [0, 1] with points ``(K, 2)`` (x, y) gets its
    mask: a :class:`TargetTrace` per point, the window search's decisions read on what the
    annotator reads (the picture inside its padding, its column pattern removed), then the
    binarisation's (:func:`binarize_targets`), and the mask :meth:`Annotator.annotate` gives at
    ``config`` and ``params``. For a reader who asks why a mask took a cloud or kept only a peak;
    the masks are not changed by asking. ``masks``: a list the image's ``(H, W)`` bool mask (that
    same one) is appended to, for a caller that scores it beside the decisions."""
    cfg = config or AnnotatorConfig()
    points = np.asarray(points, np.float64).reshape(-1, 2)
    searched, binarized = [], []
    batch = prepare_targets([image], [points], cfg, lazy=True, trace=searched)
    # the masks annotate gives, from the same pass
    (mask,), _ = Annotator(cfg, params).masks_and_soft(batch, fields=False, trace=binarized)
    if masks is not None:
        masks.append(mask)
    labels, _ = label(mask)
    out = []
    for t, ((x, y), steps, later) in enumerate(zip(points, searched, binarized)):
        py, px = (int(v) for v in batch.origin[t] + batch.peak[t])  # the peak in the frame
        k = labels[py, px]
        pixels = int((labels == k).sum()) if k else 0
        if pixels < later[-1].pixels:
            later.append(Step("apart", later[-1].half, later[-1].fraction, pixels, "split from a neighbour's mask "
                              "along the valley between their peaks"))
        out.append(TargetTrace((float(x), float(y)), (px, py), steps + later, int(batch.strict[t].sum()), pixels))
    return out


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
        """Per-image ``(H, W)`` bool pseudo-masks from prepared targets. Only the fields that the
        masks read are computed (those of :func:`leaking_targets`, or of ``batch.ready``), which
        keeps the trainer's label updates after each ``theta`` step cheap."""
        return self.masks_and_soft(batch, fields=False)[0]

    def explain(self, image: np.ndarray, points: np.ndarray, masks: list | None = None) -> list:
        """Why each target of one image gets its mask: :func:`explain_targets` at this
        annotator's settings and ``theta`` (``masks``: as it takes them)."""
        return explain_targets(image, points, self.config, self.params, masks)

    def annotate(self, images: Sequence[np.ndarray], points: Sequence[np.ndarray]) -> list:
        """``B`` images ``(H, W)`` in [0, 1] and their points ``(K, 2)`` (x, y) -> ``B`` bool masks.

        Only the targets whose masks read their fused field get one (``prepare_targets(lazy=True)``):
        the masks are those of ``self.masks(self.prepare(images, points))``, at less cost."""
        return self.masks(prepare_targets(images, points, self.config, lazy=True))

    def masks_and_soft(self, batch: TargetBatch, fields: bool = True, style: str = "field",
                       odds: MaskOdds = MaskOdds(), trace: list | None = None) -> tuple:
        """``(masks, fields)`` per image from one diffusion pass: the ``(H, W)`` bool pseudo-masks
        and (``fields``, else None) the ``(H, W)`` float32 soft labels in [0, 1]: in ``style``
        ``"field"`` the targets' fused fields combined by maximum (zero outside every target's
        field window), in ``"mask"`` those fields as ``odds`` about each mask's edge, 0.5 exactly
        there (:func:`mask_soft_labels`). ``trace``: as :func:`binarize_targets` takes it."""
        if style not in SOFT_STYLES:
            raise ValueError(f"masks_and_soft: style must be one of {SOFT_STYLES}, got {style!r}")
        t0 = time.perf_counter()
        with torch.no_grad():
            if fields:
                soft = self.soft(batch)  # soft_labels refuses a lazy batch
            else:  # the masks read only the fields of the targets whose bright regions leak
                read = batch.ready if batch.ready is not None else leaking_targets(batch, self.config)
                soft = ready_fields(dataclasses.replace(batch, ready=read), self.soft)
        t1 = time.perf_counter()
        maps = image_masks(batch, soft, self.config, trace)
        t2 = time.perf_counter()
        self.last_seconds = dict(batch.seconds, diffusion=t1 - t0, binarize=t2 - t1)
        if not fields:
            return maps, None
        if style == "mask":
            soft_maps = mask_soft_labels(batch, soft, maps, odds)
        else:
            soft_maps = paste_masks(batch, (soft * batch.inside).float().numpy(), reduce="max")
        self.last_seconds["soft"] = time.perf_counter() - t2
        return maps, soft_maps


#: Mask styles: what a dataset's annotators draw of a target, as the settings that differ from the
#: defaults. ``"tight"``: the defaults, masks at the edge of what the image shows of each target
#: (as SIRST-v1, NUDT-SIRST and MDFA draw them). ``"glow"``: masks that take in each target's faint
#: glow: the bright region grown down to 0.15 of the contrast instead of 0.3, and where it leaks,
#: cut where the heat fell below 0.01 of its peak instead of 0.1. The strict component and the
#: window search that guards it against clutter are the defaults': lowering ``peak_fraction`` too
#: gained about as much as it added false alarms. Chosen on the sets here with each target's glow
#: drawn into its mask at 0.1, 0.15 and 0.2 of its contrast; a dataset's own masks fit it closer
#: (``d2d calibrate``, which starts from each style).
STYLES = {
    "tight": {},
    "glow": {"low_fraction": 0.15, "level": 0.01},
}


def config_from_dict(values: dict, style: str = "tight") -> AnnotatorConfig:
    """An :class:`AnnotatorConfig` of mask style ``style`` (a key of :data:`STYLES`) with some
    fields replaced (unknown names raise ``TypeError``, an unknown style ``ValueError``)."""
    if style not in STYLES:
        raise ValueError(f"unknown mask style {style!r}; known: {', '.join(STYLES)}")
    names = {f.name for f in dataclasses.fields(AnnotatorConfig)}
    unknown = set(values) - names
    if unknown:
        raise TypeError(f"unknown annotator settings: {sorted(unknown)}")
    return dataclasses.replace(AnnotatorConfig(), **{**STYLES[style], **values})
