"""From a point to its strict component: the window search around the point (image only, numpy).

The search, in order (:func:`strict_component`):

1. **Peak.** The point moves to the brightest pixel of its 3x3 neighbourhood (:func:`snap`).
   A click can miss a small target by a pixel or two, onto the flat or textured surround that
   the search would then take whole. So where that pixel shows no bump of its own (a *noise
   bump*, step 4, against the first window's band) and the brightest pixel within ``snap_reach``
   does, the point moves to that one, unless the first lies in its body (at or above
   ``peak_fraction`` of its amplitude, as a click on a target's dim hull or flat top does) or that
   pixel is another point's peak (:func:`find_peak`).
2. **Leak-guarded threshold.** Square windows of growing half-size (``config.half_sizes``) are
   tried around the peak. In each, the background ``bg`` and spread ``sd`` come from the window's
   outer band (median and 1.4826 x median absolute deviation), the threshold is
   ``bg + max(k_sigma * sd, f * (peak - bg))`` and the candidate is the 8-connected component of
   the peak above it, holes filled. The first window whose candidate does not reach the band is
   accepted (the *leak guard*: a component that touches the band has leaked into clutter); if
   none is, ``f`` rises by ``fraction_step`` and the windows are tried again. A side of a window
   on the image's edge has no band (a target cut by the edge has not leaked), but a window beyond
   the first whose component runs off the image on one side of the peak counts as leaked: on a
   side that lies on the edge where the first window's does not, it reaches the pixels a band
   would take, it reaches the other way from the peak less than half as far as the edge lies
   from it, and it is dimmer there than ``LONG_BODY`` of the peak's amplitude. A target the
   image cuts is bright where it is cut (its body) or surrounds its peak; a field, roof or cloud
   beside a target that runs off the image is neither, and the window that holds it has no band
   to show where it ends. A window beyond the first also counts as leaked where its component
   holds a second structure as bright as the peak (step 3's test) that reaches beyond the first
   window: the smaller windows leaked into a building, a cloud or another target that the
   target touches, once softer optics or coarser pixels close the gap between them, and this
   window holds both. A higher fraction may isolate the target. Parts inside the first window
   are lobes of the target the point lies on. So does one whose component holds a clipped
   plateau (step 4) larger than the first window apart from the peak's own part, or as the
   peak's part with its middle more than ``CLIP_CENTRE`` of its radius from the peak: the top of
   a saturated cloud or sky at whose rim the target lies (a click on a saturated target lands
   near the middle of its plateau).

   *A peak alone above the noise floor.* ``k_sigma`` spreads of the band are a detection floor,
   not a measure of the target. Where no more than ``lone_peak_pixels`` pixels (the peak alone)
   clear it but the peak-relative threshold ``bg + f * (peak - bg)`` gives the peak a larger
   component, that component stands for the window instead: a large dim target whose body lies
   under the floor (its peak one noisy pixel of it), or a bar on a textured cloud whose band
   spread exceeds the bar's contrast, has its body measured as any other target's, under the
   same leak guard and growth tests. A point source, whose neighbours lie at the background,
   keeps its one pixel either way.
3. **Growth for extended targets.** An extended target puts the first windows' bands on its own
   hull, so the accepted window grows through the larger ``half_sizes`` and the
   ``wide_half_sizes`` while the next window's band lies more than ``settle_fraction`` of the
   amplitude below its own (or the peak did not clear its band). Where the peak is a noise bump
   (step 4), that amplitude is measured from the mean of its 3 x 3 neighbourhood, the top it
   stands on: measured from the bump it holds the sensor's noise, and a band still on the top
   would read as settled. A larger window replaces it only if its component passes the *target
   tests*:

   - it is clear of its own band, the peak clears ``k_sigma`` spreads of that band, and it holds
     most of the smaller window's band and at least ``side_cover`` of each of that band's sides:
     a target surrounds its peak, a building or a cloud beside the point lies on one side;
   - it reaches no image edge the smaller component did not: an edge has no band, so a
     component that runs off the image is unguarded;
   - it holds no other point of the image (that would merge two targets), nor a second
     structure as bright as the peak: above a level a noise bar (or ``plateau_step`` of the
     amplitude) below the peak, no part apart from the peak's own is as large and comes within a
     noise bar of the peak. A target larger than the first window puts that window's band on its
     own hull, so the test above cannot see a cloud the target is pressed against; the cloud,
     as bright as the target, meets it over a saddle, where a target's own top is one part
     (from a window whose peak did not clear its band, the noise bar is read on whichever of the
     two windows shows less, as in step 4: a display map that stretches a cloud's grey levels
     makes its texture read as noise where it fills the small window);
   - it changes by at most 25% in the next window (the background level has settled); the
     largest window, with no next one, only where the window below it held no candidate, and
     only from a component that reaches ``HULL_REACH`` of the way out to its band: a hull's top
     does; a small spike on a cloud that the smaller band lay on stays at its peak, and the
     largest window, whose band lies off the cloud, would take the whole cloud from it;
   - it is no *plateau*: at a threshold ``plateau_step`` of the amplitude higher it keeps at least
     half its pixels. A target's hull falls off gradually; a bright sky or cloud around the
     target ends in a step, and a window whose threshold drops below its level takes all of it;
   - it holds no *clipped plateau* apart from the peak's own (step 4), nor one of the peak's whose
     middle lies more than ``CLIP_CENTRE`` of its radius from the peak (step 2's test): the
     sensor's full scale cut the top of something there that the peak's part does not reach, or
     that the peak lies at the rim of, while a target's image is brightest at its middle, where
     the point lies. A noise bump in a bright sky would grow into the sky, and a target inside
     the rim of a saturated cloud that ends inside the frame (nothing cuts it but its own edge)
     into the cloud.

   A target that has *stood apart* grows no further into a much larger component: where a larger
   window's component, not taken, is clear of its band and the same in the next window without
   holding the accepted window's band all around (the target ended near that band), a later
   window is taken only if its component is at most ``APART_GROWTH`` times that one. A target on
   a larger bright region (a sky, a cloud, a roof) stands apart on it in window after window while
   the region's level falls off too slowly for any band to read as settled, until a window whose
   band lies off the region holds the region whole; a hull runs on through the accepted band, and
   the next component that holds that band adds a band's worth of pixels. A peak that does not
   clear its band's spread, or a speck of noise on a flat top, shows no such end.

   A window accepted at a raised fraction, or one whose peak does not clear its band's spread,
   grows only where its peak is a noise bump (step 4). In the first case every window leaked at
   the lower fractions; in the second the band lies on a structure's edges rather than on a
   hull. A component standing clear of the pixel noise there is a target on a larger bright
   structure, which a wider background would hand it whole.

4. **Wide windows standing in.** A target wider than every window of ``half_sizes`` gets the wide
   ones when nothing else holds it, under the same tests against the smallest window (a second
   structure as bright as the peak included, its noise bar read on whichever of the two windows
   shows less: where a target and a building's edge fill the smallest, their edges read as
   noise): a faint point on a cloud's rim is held by no small window, and the cloud must not
   stand in for it. Nor may a component that bends away from the peak: a wide window stands in
   only where the straight line from the peak reaches at least ``STAR_SHARE`` of its component's
   pixels without leaving it (:func:`~d2d_ext.morphology.star_share`). A target is one compact
   body seen through optics whose blur falls off smoothly from its centre, and over an even
   background such an image is convex above every level (a convex body blurred by a Gaussian is
   log-concave): each straight line out from the peak leaves it once. A ridge of cloud the point
   lies on, or the outline of a building, is followed around its bends by a component that the
   straight lines from the peak do not keep to.
   They are also tried, at the fractions below, before a component found at a raised fraction
   whose peak stands no higher above its band than the window's largest pixel could in pure
   noise (a *noise bump*: ``NOISE_BUMP`` times ``sqrt(2 ln n)`` pixel-noise deviations, ``n`` its
   pixels; :func:`pixel_noise`): every window leaked at the lower fractions into what that bump
   sits on, and a click off the middle of a flat-topped target larger than the windows ends on a
   bump of its top's noise that way. A target on a roof or a cloud stands well above that noise,
   and keeps its component. No wide window stands in where its component holds a *clipped
   plateau* larger than the first window: pixels at the frame's largest value, where the
   sensor's full scale (or a display map's top) cut what lies there to one level (within the
   pixel noise, or within a grey level of the file where a lossy coding smoothed the noise away
   and moved the plateau to the level below the top). Where the peak
   sits on it, a small target at the rim of a saturated cloud and a target that fills the
   plateau read the same, and the image cannot show that the plateau is the target; where it
   lies apart from the peak, the top of what the window holds is not the peak's (a faint point
   in a bright sky whose far part the sensor's range cut). A small image's edge hides both,
   since it cuts such a cloud or sky and the wide windows' edge test refuses it, while in a
   large frame the region ends inside the widest window.
5. **A structure beside the point.** A window of ``half_sizes`` beyond the first (one the
   smaller windows leaked out of) whose component lies to one side of the peak (it does not
   surround it as ``side_cover`` reads the first window's band) and is a plateau is passed over
   for the next window or fraction, and taken only if nothing else is found before the wide
   windows: beside a bright roof or cloud band, a larger window whose band lies past the
   structure holds target and structure whole. A flat-topped target wider than the first
   window is a plateau too, but it surrounds its peak. Where the peak is faint (it does not
   clear ``k_sigma`` band spreads) the plateau test reads noise, so there a one-sided component
   larger than the first window is passed over and not kept in reserve: a peak no brighter than
   the noise beside a structure of its own level cannot be told from that structure.
6. **Long thin targets.** A target longer than every window of ``half_sizes`` (a ship's hull, an
   aircraft side-on) crosses each band on two opposite sides and leaks at every fraction. Where
   the largest window's component runs through its band symmetrically through the peak (not all
   around) and is at least half as bright as the peak where it crosses, the wide windows are
   tried at that fraction before a higher one; a wide window's component that runs through the
   first window's band that way counts as surrounding the peak where it is long and thin (at
   least ``LONG_ASPECT`` times as long as it is wide): a textured cloud that a faint point lies
   in can cross that band on two opposite sides too, but is as wide as it is long. Where larger
   windows' bands lie on the bright region too (their median at the first fraction's level over
   the wide window's background or above), the first window sits inside that region (a target
   larger than it, pressed against a cloud), and everything through the region crosses its band:
   the crossing is read on the largest such band instead.

   Where a bar's flat top fills part of a window's band, the band's spread is the bar's own
   contrast, not noise: the noise floor (``k_sigma`` spreads) then lies above the peak-relative
   level and cuts the top down to one of its noise bumps, clear of the band, and the window
   would take that bump. So where the floor lies above that level and the component at the
   level runs through the band as such a body does (the tests above), the window counts as
   leaked, as it would at the peak-relative level alone.
7. **A smooth skirt dropped.** A target on a bright cloud or haze puts the cloud's flank beside
   it above the window's threshold too: a bar on a cloud's rim gets a lobe of cloud as large as
   itself. The component is thresholded ``plateau_step`` of the amplitude higher, and what that
   drops is read as in the annotator's binarisation: the rings around the part kept that it
   surrounds (``halo_cover`` of each) are the target's flank and stay; the rest is a skirt of
   background if it ends in an edge less steep (mean ``|grad I|`` where it meets the pixels
   outside the component) than ``skirt_ratio`` times the kept part's own edge. A cloud's flank
   fades out; a target's body, however uniform inside, ends in its outline. The skirt is dropped
   and the next level tried, until what a level drops surrounds the core or ends in an edge.
8. **Tightening.** The accepted window is cut down to the smallest that holds the component (the
   background level stays the wider window's), so that the field window around it does not
   reach beyond the target.

The result, the *strict component*, never depends on ground truth: the window size comes from
the image around the point. Everything here reads the image and the points only; the settings
are an :class:`d2d_ext.annotate.AnnotatorConfig`. The search (:class:`_Search`, each test one of
its methods) records each decision it takes, a :class:`Step`, where asked to
(``strict_component(trace=...)``, ``d2d explain``).
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from .morphology import component, elongation, fill_holes, inner_edge, label, star_share, with_halo
from .points import INSIDE_RULE, point_pixel, points_inside

if TYPE_CHECKING:  # the settings' class lives with the annotator, which imports this module
    from .annotate import AnnotatorConfig

__all__ = ["Strict", "Step", "FrameTop", "snap", "find_peak", "strict_component", "check_points", "window_box",
           "outer_band"]

# step 6: how many times longer than wide a wide window's component that runs through the first
# window's band must be to count as a long thin target (see morphology.elongation)
LONG_ASPECT = 2.0
# steps 2 and 6: where a target's body crosses a window's band (a long target's), or the image's
# edge (a target the image cuts), it stands at least this fraction of the peak's amplitude above
# the band's level, as a flat top does (a dimmer streak, wall or field beside the point does not)
LONG_BODY = 0.5
# steps 1, 3 and 4: a peak within this many times sqrt(2 ln n) pixel-noise deviations of its window's
# background (n the window's pixels: the largest of n noise samples lies near sqrt(2 ln n)
# deviations) shows no bump of its own. Neighbour differences read sqrt(1 - r) of the noise's
# deviation where neighbouring pixels correlate by r, as optics that blur the noise make them: 2
# holds up to r = 0.75.
NOISE_BUMP = 2.0
# step 3: the growth reaches the largest window only from a component that reaches at least this
# fraction of the way from the peak to its window's band (Chebyshev). A hull that falls from the
# peak to the band's level puts the component at the first fraction half-way out or more
# (Gaussian, exponential and Lorentzian profiles at the levels the growth needs).
HULL_REACH = 0.25
# step 4: a pixel within this many pixel-noise deviations (of the wide window's pixels) of the
# frame's largest value lies on a clipped plateau. A saturated area read through a file's coding
# spreads over the top few grey levels (MDFA's over 252 to 255 of 255), which 2 deviations of the
# windows' noise around its targets take in (train_004592: 4 grey levels); the top of a synthetic
# extended target that is the brightest thing in its frame, but not clipped, lies outside them
CLIP_NOISE = 2.0
# step 4: ... or within this many of the file's grey levels (the smallest gap between distinct
# values of the component's pixels, :func:`grey_step`), whatever the noise reads there. A lossy
# coding (JPEG) smooths a saturated region's noise away and moves most of its pixels to the level
# below the top (MDFA's skies at quality 50: most of the plateau at 254 of 255), where the pixel
# noise of an 8-bit file reads zero; 1.5 takes that level in and not the one below it
CLIP_LEVELS = 1.5
# step 2: a window beyond the first whose component holds a clipped plateau larger than the first
# window on the peak is taken only where the plateau's middle lies within this fraction of its
# radius (of a disc of its area) from the peak. A click at the centroid of a saturated target lands
# near its plateau's middle (a coarse LESPS point, an eighth of the extent off, at about a quarter
# of the radius); a target at the rim of a saturated cloud sits at the plateau's edge, about a
# radius from its middle
CLIP_CENTRE = 0.5
# step 3: a target that stood apart grows into no component more than this many times the one that
# held it apart. A hull adds a band's worth of pixels to that component (a third of it at most, on
# every set as it is and as mosaics); the sky or cloud the target lies on, several times the target
APART_GROWTH = 2.0
# step 4: a wide window stands in only with a component that the straight lines from its peak
# reach, without leaving it, for at least this share of its pixels. A compact target's image is
# convex above each level (share 1) but where noise, a textured top or a lobe of what it lies
# against dents it; a ridge or an outline followed around its bends leaves much of itself out of
# the lines' reach. Higher, large textured targets sampled finer lose their stand-in too
STAR_SHARE = 0.6


def snap(image: np.ndarray, x: float, y: float, radius: int) -> tuple:
    """``(row, col)`` of the brightest pixel of ``image`` ``(H, W)`` within Chebyshev ``radius`` of
    the pixel that holds point ``(x, y)`` (the target's peak)."""
    H, W = image.shape
    py, px = point_pixel(x, y, H, W)
    if radius <= 0:
        return py, px
    y0, y1 = max(py - radius, 0), min(py + radius + 1, H)
    x0, x1 = max(px - radius, 0), min(px + radius + 1, W)
    flat = int(np.argmax(image[y0:y1, x0:x1]))
    return y0 + flat // (x1 - x0), x0 + flat % (x1 - x0)


def find_peak(image: np.ndarray, x: float, y: float, cfg: AnnotatorConfig, others: Sequence = ()) -> tuple:
    """``(row, col)`` of the peak of the target at point ``(x, y)`` of ``image`` ``(H, W)``: the
    :func:`snap` within ``cfg.snap_radius``, or the brightest pixel within ``cfg.snap_reach``
    where the click missed a small target (step 1 of the module's docstring). ``others``: the
    other points' snapped peaks ``(row, col)``, never moved onto."""
    py, px = snap(image, x, y, cfg.snap_radius)
    if cfg.snap_reach <= cfg.snap_radius:
        return py, px
    qy, qx = snap(image, x, y, cfg.snap_reach)
    if (qy, qx) == (py, px) or (qy, qx) in others:
        return py, px
    bg, bar = _first_window(image, py, px, cfg)
    if image[py, px] - bg > bar:  # the point's own pixel stands clear of the noise: its target
        return py, px
    bg, bar = _first_window(image, qy, qx, cfg)
    amplitude = float(image[qy, qx]) - bg
    if amplitude > bar and image[py, px] < bg + cfg.peak_fraction * amplitude:
        return qy, qx
    return py, px


def _first_window(image: np.ndarray, py: int, px: int, cfg: AnnotatorConfig) -> tuple:
    """``(background, noise bar)`` of the first window of ``cfg.half_sizes`` around ``(py, px)``:
    its band's median and :func:`noise_bar`."""
    H, W = image.shape
    box = window_box(py, px, cfg.half_sizes[0], H, W)
    win = image[box[0]:box[1], box[2]:box[3]]
    return band_median(win[outer_band(box, cfg.band, H, W)]), noise_bar(win)


def noise_bar(win: np.ndarray, noise: float | None = None) -> float:
    """How far above its background the largest of window ``win``'s ``n`` pixels could stand in
    pure noise: ``NOISE_BUMP`` times ``sqrt(2 ln n)`` times :func:`pixel_noise` (``noise``, where
    the caller has it already). A peak no higher is a *noise bump*: the image shows no bump of its
    own there."""
    noise = pixel_noise(win) if noise is None else noise
    return NOISE_BUMP * math.sqrt(2 * math.log(max(win.size, 2))) * noise


def outer_band(box: tuple, width: int, H: int, W: int) -> np.ndarray:
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


def band_median(values: np.ndarray) -> float:
    """``np.median`` of a small 1-d array, the same value without its per-call overhead (a target
    tries several windows, each with two medians)."""
    s = np.sort(values)
    n = s.size
    return float(s[n // 2]) if n % 2 else float((s[n // 2 - 1] + s[n // 2]) / 2)


def pixel_noise(values: np.ndarray) -> float:
    """The pixel noise of ``values`` ``(h, w)``: 1.4826 times the median absolute deviation of
    the differences between neighbouring pixels (down and across), over sqrt(2). A smooth
    structure's slope, or the few differences across an edge, barely move it where a band's
    spread takes them in."""
    v = values.astype(np.float64)
    d = np.concatenate([(v[1:] - v[:-1]).ravel(), (v[:, 1:] - v[:, :-1]).ravel()])
    if d.size == 0:
        return 0.0
    return 1.4826 * band_median(np.abs(d - band_median(d))) / math.sqrt(2)


def grey_step(values: np.ndarray) -> float:
    """The smallest gap between the distinct values of ``values`` (any shape; 0 where they hold
    fewer than two): one grey level of a file of few levels (1/255 for an 8-bit one read into [0,
    1]), and next to nothing for a float or 16-bit image."""
    gaps = np.diff(np.unique(values))
    gaps = gaps[gaps > 0]
    return float(gaps.min()) if gaps.size else 0.0


def window_box(py: int, px: int, half: int, H: int, W: int) -> tuple:
    return max(py - half, 0), min(py + half + 1, H), max(px - half, 0), min(px + half + 1, W)


class Strict(NamedTuple):
    """The leak-guarded threshold component of one target (see :func:`strict_component`)."""

    box: tuple  # (y0, y1, x0, x1): the accepted window in the image
    comp: np.ndarray  # (h, w) bool: the peak's component in that window, holes filled
    bg: float  # background level (median of the accepted window's band)
    peak: float  # the peak's intensity


class Step(NamedTuple):
    """One decision of the window search, as :func:`strict_component` records it in ``trace``
    (and of the annotator's binarisation after it, :func:`d2d_ext.annotate.binarize_targets`)."""

    # "window" (steps 2, 4 to 6), "grow" (step 3), "skirt" (step 7), "result" (the strict
    # component); "binarize" (the annotator's step 6, in the field window), "apart" (its step 7)
    stage: str
    half: int  # the window's half-size (the field window's, for "binarize")
    fraction: float  # the fraction of the peak's amplitude its threshold was read at
    pixels: int  # its component's pixels, band or not (0 where it has none)
    outcome: str  # what was made of it, in words

    def __str__(self) -> str:
        return (f"{self.stage:8s} half-size {self.half:3d}, fraction {self.fraction:.2f}, {self.pixels:6d} px: "
                f"{self.outcome}")


class FrameTop:
    """The largest value of one frame, read the first time one of its targets' searches asks for
    it (a clipped plateau's level) and then kept: a frame's targets share one (a 1920x1080 frame
    is read once, not once per target)."""

    def __init__(self, image: np.ndarray):
        self.image = image

    @cached_property
    def value(self) -> float:
        return float(np.nanmax(self.image))


class _Clipped(NamedTuple):
    """A component's pixels on a clipped plateau (see :meth:`_Search.clipped`)."""

    own: int  # in the peak's part of them
    apart: int  # in the largest part apart from the peak's
    # how far the middle (centroid) of the peak's part lies from the peak, in radii of a disc of
    # its area (0 where the peak's part is no larger than the first window)
    shift: float = 0.0

    @property
    def largest(self) -> int:
        return max(self.own, self.apart)


class _Window(NamedTuple):
    """One window tried around a peak (see :class:`_Search`)."""

    box: tuple  # (y0, y1, x0, x1) in the image
    bg: float  # median of its band
    faint: bool  # the peak does not clear bg + k_sigma * sd
    comp: np.ndarray | None  # the peak's component, None where it reaches the band (or is empty)
    band: np.ndarray  # (h, w) bool, the outer band
    whole: np.ndarray | None  # the peak's component, band or not (None where empty)


def strict_component(image: np.ndarray, py: int, px: int, cfg: AnnotatorConfig, others: Sequence = (),
                     top: FrameTop | None = None, trace: list | None = None) -> Strict:
    """Leak-guarded threshold component of the peak at ``(py, px)`` (a :class:`Strict`).

    The first window of ``half_sizes`` that holds a component is accepted, then grown through the
    larger windows while its band still sits on the target's hull (see :class:`AnnotatorConfig`,
    ``settle_fraction``); a larger window whose component holds one of ``others`` (the other
    targets' peaks ``(row, col)`` in this image) would merge two targets and is not taken. If no
    window of ``half_sizes`` holds a component at any fraction, the ``wide_half_sizes`` are tried
    too; if none does, the component is the peak pixel. ``top``: the image's :class:`FrameTop`
    where its targets share one. ``trace``: a list that receives each decision of the search, a
    :class:`Step` (the windows tried and why each was passed over, the growth's windows, the
    skirt dropped, the result), for a reader who asks why a target got its mask.
    """
    return _Search(image, py, px, cfg, others, top, trace).run()


class _Search:
    """The window search around one peak (steps 2 to 8 of the module's docstring) for
    :func:`strict_component`: the image, the peak ``(py, px)``, the settings and the other
    targets' peaks, and what the search has read of the image so far. The tests ask for some
    windows, band statistics and noise levels more than once (a window read by step 2, the wide
    stand-in and the growth): each is computed once, the first time it is asked for."""

    def __init__(self, image: np.ndarray, py: int, px: int, cfg: AnnotatorConfig, others: Sequence = (),
                 top: FrameTop | None = None, trace: list | None = None):
        self.image, self.py, self.px, self.cfg, self.others = image, py, px, cfg, others
        self.trace = trace  # a list that receives a Step for each decision, or None
        self.H, self.W = image.shape
        self.peak = float(image[py, px])
        self.first_box = window_box(py, px, cfg.half_sizes[0], self.H, self.W)
        self.stats = {}  # half-size -> (band median, band spread, band)
        self.noise = {}  # window box -> pixel_noise of the image there
        self.tried = {}  # (half-size, fraction, sd_of) -> _Window
        self.top = top if top is not None else FrameTop(image)
        self.clip_area = (2 * cfg.half_sizes[0] + 1) ** 2  # a clipped plateau larger than the first window
        tries = max(1, math.ceil((1.0 - cfg.peak_fraction) / cfg.fraction_step - 1e-9)) if cfg.fraction_step > 0 else 1
        self.fractions = [cfg.peak_fraction + attempt * cfg.fraction_step for attempt in range(tries)]

    def note(self, stage: str, half: int, f: float, win: _Window | np.ndarray | None, outcome: str) -> None:
        """Records a decision in ``trace`` (a :class:`Step`; nothing without a trace): ``win``
        is the window decided on (its component's pixels, band or not, are counted), a component
        itself, or None."""
        if self.trace is None:
            return
        comp = win if win is None or isinstance(win, np.ndarray) else win.comp if win.comp is not None else win.whole
        self.trace.append(Step(stage, half, round(float(f), 4), 0 if comp is None else int(comp.sum()), outcome))

    def larger(self, half: int) -> list:
        """The configured half-sizes above ``half``, in the order they are tried."""
        return [h for h in self.cfg.half_sizes + self.cfg.wide_half_sizes if h > half]

    def window(self, half: int, f: float, sd_of: int | None = None) -> _Window:
        """The window of half-size ``half`` at fraction ``f`` (the band spread of window
        ``sd_of`` if given, else its own). The tests ask for some windows more than once (the
        first window, a plateau's higher level): each is computed once."""
        key = (half, f, sd_of)
        if key not in self.tried:
            self.tried[key] = self._window(half, f, sd_of)
        return self.tried[key]

    def _window(self, half: int, f: float, sd_of: int | None) -> _Window:
        box = window_box(self.py, self.px, half, self.H, self.W)
        win = self.image[box[0]:box[1], box[2]:box[3]]
        if half not in self.stats:
            band = outer_band(box, self.cfg.band, self.H, self.W)
            ring = win[band]
            bg = band_median(ring)
            self.stats[half] = (bg, 1.4826 * band_median(np.abs(ring - bg)), band)
        bg, sd, band = self.stats[half]
        if sd_of is not None:
            sd = self.stats[sd_of][1]
        relative = bg + f * (self.peak - bg)
        # bg + max(k_sigma * sd, f * (peak - bg)), the same number: adding bg keeps the order
        thr = max(bg + self.cfg.k_sigma * sd, relative)
        faint = self.peak <= thr
        if faint:  # faint target: the peak-relative part alone
            thr = relative
        at = (self.py - box[0], self.px - box[2])
        comp = component(win > thr, at)
        if not faint and thr > relative and comp.sum() <= self.cfg.lone_peak_pixels:
            # the noise floor detected the peak but cut the target down to it: the target's
            # extent is read at the peak-relative level, as for any target the floor does not cut
            # (the peak clears both levels, so neither component is None)
            wider = component(win > relative, at)
            if wider.sum() > self.cfg.lone_peak_pixels:
                comp = wider
        elif not faint and thr > relative and not comp[band].any() and \
                (win[band] - bg).max() >= LONG_BODY * (self.peak - bg):
            # the floor held the component off the band: where the band's spread is a long
            # target's body crossing it, the floor cut that target's top to a bump (step 6), and
            # the window has leaked as at the peak-relative level (no band pixel as bright as
            # such a body: no crossing to look for)
            wider = component(win > relative, at)
            if wider[band].any() and self.long_body(leaked := _Window(box, bg, faint, None, band, wider)):
                return leaked
        return _Window(box, bg, faint, None if comp is None or comp[band].any() else comp, band, comp)

    def covers(self, outer: _Window, inner: _Window) -> bool:
        """Whether ``outer``'s component holds most of ``inner``'s band, and at least
        ``side_cover`` of each of its sides: the band lay on the target's hull all around the
        peak. A point beside a larger bright structure (a building, a cloud's edge) has that
        structure on one or two sides only."""
        oy, ox = inner.box[0] - outer.box[0], inner.box[2] - outer.box[2]
        h, w = inner.band.shape
        held = outer.comp[oy:oy + h, ox:ox + w]
        b = self.cfg.band
        sides = [(slice(None, b), slice(None)), (slice(h - b, None), slice(None)),
                 (slice(None), slice(None, b)), (slice(None), slice(w - b, None))]
        per = [held[s][inner.band[s]].mean() for s in sides if inner.band[s].any()]
        return min(per) >= self.cfg.side_cover and held[inner.band].mean() >= 0.5

    def escapes(self, win: _Window) -> bool:
        """Whether ``win``'s component runs off the image on one side of the peak (step 2): on a
        side of the window that lies on the image's edge where the first window's does not, it
        reaches the rows or columns a band would take, reaches the other way from the peak less
        than half as far as the edge lies from it, and is dimmer there than a target's body
        (:meth:`body_across`)."""
        fy0, fy1, fx0, fx1 = self.first_box
        y0, y1, x0, x1 = win.box
        py, px, H, W = self.py, self.px, self.H, self.W
        on_edge = (y0 == 0 < fy0, y1 == H > fy1, x0 == 0 < fx0, x1 == W > fx1)  # top, bottom, left, right
        if not any(on_edge):
            return False
        c, b = win.comp, self.cfg.band
        ys, xs = np.nonzero(c)
        ys, xs = ys + y0, xs + x0
        # how far the component reaches from the peak away from each side, against half the
        # distance from the peak to that side
        one_sided = (ys.max() - py < 0.5 * py, py - ys.min() < 0.5 * (H - 1 - py),
                     xs.max() - px < 0.5 * px, px - xs.min() < 0.5 * (W - 1 - px))
        edge = np.zeros_like(c)
        for on, alone, side in zip(on_edge, one_sided, (np.s_[:b], np.s_[-b:], np.s_[:, :b], np.s_[:, -b:])):
            if on and alone:
                edge[side] = True
        return bool((c & edge).any()) and not self.body_across(win, c & edge)

    def body_across(self, win: _Window, where: np.ndarray) -> bool:
        """Whether the image over ``where`` (bool over ``win``'s box) stands on average at least
        ``LONG_BODY`` of the peak's amplitude above ``win``'s background, as a target's body
        does where a band or the image's edge cuts it."""
        crossing = self.image[win.box[0]:win.box[1], win.box[2]:win.box[3]][where]
        return bool((crossing - win.bg).mean() >= LONG_BODY * (self.peak - win.bg))

    def touches_edge(self, win: _Window, b: int = 1) -> tuple:
        """The image edges (top, bottom, left, right) that ``win``'s component reaches (comes
        within ``b`` pixels of)."""
        y0, y1, x0, x1 = win.box
        c = win.comp
        return (y0 == 0 and c[:b].any(), y1 == self.H and c[-b:].any(), x0 == 0 and c[:, :b].any(),
                x1 == self.W and c[:, -b:].any())

    def stable(self, half: int, f: float, cand: _Window) -> bool:
        """Whether the next larger window finds about the same component (within 25%), with
        ``cand``'s band spread: what is tested is the shift of the background level. The largest
        window has no next one to show it, so it stands only where the window below it held no
        candidate (its component leaked, as an extended target's runs through that window's
        band, or it was a plateau). Where that window held a candidate of its own, nothing tests
        the largest one (a candidate taken there was already compared with it): a target on a
        bright roof or cloud patch inside a darker surround grew past such windows into the
        whole patch there, every band of the windows between having fallen as they left it.
        The growth reaches it only from a hull's top (:meth:`hull_top`)."""
        up = self.larger(half)
        if not up:
            below = [h for h in self.cfg.half_sizes + self.cfg.wide_half_sizes if h < half]
            if not below:
                return True
            prev = self.window(below[-1], f)
            return prev.comp is None or self.plateau(below[-1], f, prev)
        if window_box(self.py, self.px, up[0], self.H, self.W) == cand.box:
            return True  # cut to this one by the image's edges: the same component
        nxt = self.window(up[0], f, sd_of=half)
        return nxt.comp is not None and abs(int(nxt.comp.sum()) - int(cand.comp.sum())) <= 0.25 * cand.comp.sum()

    def merges(self, cand: _Window) -> bool:
        """Whether ``cand``'s component holds another target's peak."""
        y0, y1, x0, x1 = cand.box
        return any(y0 <= oy < y1 and x0 <= ox < x1 and cand.comp[oy - y0, ox - x0] for oy, ox in self.others)

    def plateau(self, half: int, f: float, cand: _Window) -> bool:
        """Whether ``cand``'s component is mostly a plateau just above its threshold: at a
        threshold ``plateau_step`` of the amplitude higher, less than half of it stays. A target's
        hull falls off gradually; a bright region the target sits in (a sky, a cloud) ends in a
        step, and a window whose threshold drops below its level takes all of it."""
        if self.cfg.plateau_step <= 0:
            return False
        higher = self.window(half, f + self.cfg.plateau_step)
        return higher.comp is None or (higher.comp & cand.comp).sum() < 0.5 * cand.comp.sum()

    def rival(self, found: _Window, cand: _Window, lobes: bool = False, quieter: bool = False) -> bool:
        """Whether ``cand``'s component holds a second structure as bright as the peak: above a
        level one noise bar of ``found`` (:func:`noise_bar`), or ``plateau_step`` of the
        amplitude if more, below the peak, a part apart from the peak's own part, at least as
        large, that comes within a noise bar of the peak. A large target pressed against a cloud
        as bright as itself meets it over a saddle; a target's own top is one part there, and the
        bumps its noise leaves apart are small. With ``lobes``, a part that lies wholly inside
        ``found``'s window does not count: a point on one lobe of a target of several as bright
        has the others within the smallest window, while a building, a cloud or another target
        reaches beyond it. With ``quieter``, the noise bar is the smaller of ``found``'s and
        ``cand``'s: a small window that a target and a building's edge fill reads their edges as
        noise, and a bar that high joins the two at the level where they are told apart; the wider
        window holds the background whose noise the sensor has. The wide stand-in reads it so, and
        the growth from a window whose peak does not clear its band (``faint``): that band's
        spread is structure, not the sensor's noise, and so are its neighbouring pixels'
        differences."""
        bar = min(self.window_bar(found), self.window_bar(cand)) if quieter else self.window_bar(found)
        y0, y1, x0, x1 = cand.box
        win = self.image[y0:y1, x0:x1]
        above = cand.comp & (win > self.peak - max(bar, self.cfg.plateau_step * (self.peak - cand.bg)))
        own = component(above, (self.py - y0, self.px - x0))
        if own is None or not (above & ~own).any():
            return False
        parts, n = label(above & ~own)
        large = np.flatnonzero(np.bincount(parts.ravel(), minlength=n + 1)[1:] >= own.sum()) + 1
        if lobes:
            inner = np.zeros_like(above)
            inner[found.box[0] - y0:found.box[1] - y0, found.box[2] - x0:found.box[3] - x0] = True
            large = [k for k in large if not inner[parts == k].all()]
        return any(win[parts == k].max() >= self.peak - bar for k in large)

    def top_level(self, found: _Window) -> float:
        """The level the growth measures the amplitude from: the peak, or where the peak stands
        no higher above ``found``'s band than noise could (:meth:`noise_bump`), the mean of its
        3 x 3 neighbourhood. A noise bump on a flat top stands above the top by the sensor's noise;
        measured from the bump, the amplitude holds that noise too, and a band that fell by a
        fifth of the top's own amplitude would read as settled inside the top."""
        if not self.noise_bump(found):
            return self.peak
        return float(self.image[max(self.py - 1, 0):self.py + 2, max(self.px - 1, 0):self.px + 2].mean())

    def hull_top(self, found: _Window) -> bool:
        """Whether ``found``'s component reaches ``HULL_REACH`` of the way from the peak to its
        window's band: the top of a target whose hull that band lies on, rather than a small
        target on a larger structure."""
        y0, y1, x0, x1 = found.box
        return peak_reach(found.comp, found.box, self.py, self.px) >= HULL_REACH * (max(y1 - y0, x1 - x0) // 2)

    def grow(self, half: int, f: float, found: _Window) -> _Window:
        """Grow the accepted window while its band lies on the target's hull: the next band lies
        well below it, or the peak did not clear it (a plateau), and a larger window's component
        (clear of its own band, the peak clearing it, stable in the window after, no clipped
        plateau beside the target: :meth:`clipped_beside`) holds most of it,
        and, where the windows between leaked, holds the largest of their bands as well or is
        less than twice ``LONG_ASPECT`` times longer than wide. Once a window has held the target
        apart (:meth:`apart`), the growth takes no component more than ``APART_GROWTH`` times
        that one, and ends there."""
        top = self.top_level(found)
        leaked = found  # the largest window passed since found whose component leaked
        held = None  # pixels of the last component that held the target apart since found
        for nxt in self.larger(half):
            if window_box(self.py, self.px, nxt, self.H, self.W) == found.box:
                self.note("grow", nxt, f, None, "the image's edge stops the growth")
                break
            cand = self.window(nxt, f)
            settled = found.bg - cand.bg <= self.cfg.settle_fraction * (top - cand.bg)
            if settled and not found.faint:
                self.note("grow", nxt, f, cand, "the band has settled: the growth ends")
                break
            if cand.comp is not None and self.plateau(nxt, f, cand):
                self.note("grow", nxt, f, cand, "a plateau: passed over")
                continue
            if not self.larger(nxt) and not self.hull_top(found):
                # the largest window, which no larger one tests for stability (see stable)
                self.note("grow", nxt, f, cand, "the largest window, and no hull's top to grow from: the growth ends")
                break
            why = self.refusal(f, found, leaked, nxt, cand)
            if why is None:
                if held is not None and cand.comp.sum() > APART_GROWTH * held:
                    self.note("grow", nxt, f, cand, "the region the target stood apart on: the growth ends")
                    break
                self.note("grow", nxt, f, cand, "taken")
                found = leaked = cand
                held = None
            elif cand.comp is None:
                self.note("grow", nxt, f, cand, f"not taken ({why})")
                leaked = cand
            elif self.apart(nxt, f, found, cand):
                self.note("grow", nxt, f, cand, f"not taken ({why}); the target stands apart in it")
                held = int(cand.comp.sum())
            else:
                self.note("grow", nxt, f, cand, f"not taken ({why})")
        return found

    def refusal(self, f: float, found: _Window, leaked: _Window, half: int, cand: _Window) -> str | None:
        """Why the growth from ``found`` does not take window ``half``'s component ``cand`` (the
        first of the target tests of :meth:`grow` it fails, in words), or None where it passes
        them all. ``leaked``: the largest window passed since ``found`` whose component leaked."""
        if cand.comp is None:
            return "nothing above the threshold" if cand.whole is None else "it reaches its band"
        if cand.faint:
            return "the peak does not clear its band's spread"
        if not self.covers(cand, found):
            return "it does not hold the smaller window's band all around"
        if self.merges(cand):
            return "it holds another point"
        if self.rival(found, cand, quieter=found.faint):
            return "it holds a second structure as bright as the peak"
        if any(e and not f0 for e, f0 in zip(self.touches_edge(cand), self.touches_edge(found))):
            return "it reaches an image edge the smaller one did not"
        if not self.stable(half, f, cand):
            return "it changes in the next window"
        if self.clipped_beside(cand):
            return "it holds a clipped plateau beside the peak"
        # stepping over windows that leaked: a hull lies on their bands too, or is no longer than a
        # compact target; a long band (a cloud bank, a ridge) the target sits in crosses them on
        # two sides only
        if not (leaked is found or self.covers(cand, leaked) or elongation(cand.comp) < 2 * LONG_ASPECT):
            return "a long band across the windows that leaked"
        return None

    def apart(self, half: int, f: float, found: _Window, cand: _Window) -> bool:
        """Whether window ``half``'s component ``cand``, which the growth from ``found`` does not
        take, holds the target apart: it is clear of its own band and the same in the next window
        (:meth:`stable`) without holding ``found``'s band all around (:meth:`covers`), so the
        target ended near that band rather than running on through it as a hull does. A target
        on a larger bright region (a sky, a cloud, a roof) stands apart on it so, in window after
        window, while the region's level falls off too slowly for any band to read as settled,
        until a window whose band lies off the region holds it whole. Not where ``found``'s peak
        does not clear its band's spread (``faint``: the band lies on a structure's edges, and
        what stands apart of it may be one part of a target), nor where it is a speck of noise on
        a flat top (a :meth:`noise_bump` that reaches less than ``HULL_REACH`` of the way to its
        band: :meth:`hull_top`): every window then finds the same few pixels."""
        if found.faint or (self.noise_bump(found) and not self.hull_top(found)):
            return False
        return not self.covers(cand, found) and self.stable(half, f, cand)

    def wide_target(self, f: float) -> tuple | None:
        """``(half, f, window)``: the first of ``wide_half_sizes`` whose component at fraction ``f``
        can be the point's target although no smaller window held one: it surrounds the peak on
        every side (the smallest window's band) or runs through it (a long thin target), stays
        a band's width off the image's edges (a bright structure the point merely touches does
        none of these; one that ends a pixel short of an edge, where the sensor's last lines read
        darker or coarse grey levels cut its faint end, runs off the image as well),
        is no plateau, holds no second structure as bright as the peak (:meth:`rival`, its noise
        read on the quieter of the two windows: a building or a cloud band that the target
        touches, once optics, coarse pixels or the sensor's motion close the gap between them,
        runs through the point as a long target would), and is seen from the peak in straight
        lines (``STAR_SHARE`` of it at least, holes filled: a ridge or an outline followed around
        a bend is not). None if there is none."""
        first = self.window(self.cfg.half_sizes[0], f)
        for half in self.cfg.wide_half_sizes:
            cand = self.window(half, f)
            if cand.comp is None or self.clipped(cand).largest > self.clip_area:
                continue
            long_thin = self.through(cand, self.crossed(cand)) and elongation(cand.comp) >= LONG_ASPECT
            if ((self.covers(cand, first) or long_thin) and not any(self.touches_edge(cand, self.cfg.band))
                    and not self.plateau(half, f, cand) and not self.rival(first, cand, quieter=True)
                    and star_share(fill_holes(cand.comp), (self.py - cand.box[0], self.px - cand.box[2]))
                    >= STAR_SHARE):
                return half, f, cand
        return None

    def clipped(self, win: _Window) -> _Clipped:
        """The pixels of ``win``'s component on a *clipped plateau*: at the frame's largest value
        (within ``CLIP_NOISE`` pixel-noise deviations of ``win``'s pixels, or ``CLIP_LEVELS`` of
        the file's grey levels where the noise reads less), in the peak's part of them and in the
        largest part apart from it (8-connected). The sensor's full scale, or a
        display map's top, cut what lies there to one level: on the peak's part, a small target
        at a saturated cloud's rim and a target that fills the plateau read the same; apart from
        it lies the top of something the peak's part does not reach, a sky or cloud the point
        lies in rather than the target. A plateau is one part: the noisy top of a target that is
        the brightest thing in its frame puts pixels within those deviations of its largest one
        too, scattered over it in small parts."""
        y0, y1, x0, x1 = win.box
        pixels = self.image[y0:y1, x0:x1]
        level = self.top.value - max(CLIP_NOISE * self.window_noise(win), CLIP_LEVELS * grey_step(pixels[win.comp]))
        flat = win.comp & (pixels >= level)
        own = component(flat, (self.py - y0, self.px - x0)) if self.peak >= level else None
        rest = flat if own is None else flat & ~own
        apart = 0
        if rest.sum() > self.clip_area:  # no part can be larger otherwise
            parts, n = label(rest)
            apart = int(np.bincount(parts.ravel(), minlength=n + 1)[1:].max())
        n_own = 0 if own is None else int(own.sum())
        shift = 0.0
        if n_own > self.clip_area:
            ys, xs = np.nonzero(own)
            shift = math.hypot(ys.mean() + y0 - self.py, xs.mean() + x0 - self.px) / math.sqrt(n_own / math.pi)
        return _Clipped(n_own, apart, shift)

    def clipped_beside(self, win: _Window) -> bool:
        """Whether ``win``'s component holds a clipped plateau larger than the first window that is
        not the target's top: a part apart from the peak's, or the peak's part with its middle
        more than ``CLIP_CENTRE`` of its radius from the peak. A target's image is brightest at its
        middle, where the point lies; a saturated cloud or sky whose rim the point lies on puts
        the peak at the edge of its plateau."""
        c = self.clipped(win)
        return c.apart > self.clip_area or (c.own > self.clip_area and c.shift > CLIP_CENTRE)

    def crossed(self, cand: _Window) -> _Window:
        """The window of ``half_sizes`` whose band a long target in wide window ``cand`` is
        read crossing: the largest whose band's median reaches the first fraction's level over
        ``cand``'s background, else the first. Where a bright region holds the first window whole
        (a target larger than it, pressed against a cloud), every component through that region
        crosses the first band; a larger band on the region too shows whether the component runs
        through the peak or lies to one side. The first fraction's level: a raised fraction cuts
        fewer bands, and would hand the test back to the first window."""
        level = cand.bg + self.fractions[0] * (self.peak - cand.bg)
        ref = self.cfg.half_sizes[0]
        for half in self.cfg.half_sizes[1:]:
            if self.window(half, self.fractions[0]).bg >= level:
                ref = half
        return self.window(ref, self.fractions[0])

    def through(self, outer: _Window, inner: _Window) -> bool:
        """Whether ``outer``'s component (band or not: ``whole``) holds ``inner``'s band
        symmetrically through the peak: of the band pixels it holds whose mirror image through the
        peak is on the band too, at least half have that mirror held as well. A long target
        through the point crosses the band on two opposite sides; a structure beside the point
        lies on one."""
        oy, ox = inner.box[0] - outer.box[0], inner.box[2] - outer.box[2]
        h, w = inner.band.shape
        held = outer.whole[oy:oy + h, ox:ox + w] & inner.band
        ys, xs = np.nonzero(held)
        my, mx = 2 * (self.py - inner.box[0]) - ys, 2 * (self.px - inner.box[2]) - xs
        mirrored = (my >= 0) & (my < h) & (mx >= 0) & (mx < w)
        mirrored[mirrored] = inner.band[my[mirrored], mx[mirrored]]
        return bool(mirrored.any()) and held[my[mirrored], mx[mirrored]].mean() >= 0.5

    def long_leak(self, half: int, f: float) -> bool:
        """Whether window ``half``'s component at fraction ``f`` leaked as the body of a long
        target through the peak: it runs through the band (:meth:`through`) without holding it
        all around (an extended blob does, and its growth finds it), and where it crosses the
        band it is at least half as bright as the peak above the background, as a flat-topped
        target's body is (a dimmer streak or wall that the point lies on is not). Such a target
        is longer than every window of ``half_sizes``; a higher fraction finds a bump of its top."""
        win = self.window(half, f)
        return win.comp is None and win.whole is not None and self.long_body(win)

    def long_body(self, win: _Window) -> bool:
        """Whether ``win``'s component, band or not (``whole``), runs through its band as the body
        of a long target through the peak (see :meth:`long_leak`)."""
        if self.covers(win._replace(comp=win.whole), win) or not self.through(win, win):
            return False
        return self.body_across(win, win.whole & win.band)

    def beside(self, half: int, f: float, cand: _Window) -> bool:
        """Whether ``cand``'s component, in a window the smaller ones leaked out of, is a bright
        structure beside the peak rather than the target: it lies to one side of the peak (does
        not surround it as ``covers`` reads the first window's band) and is a plateau just above
        its threshold, or, where the peak is faint (the plateau test then reads noise), is larger
        than the first window."""
        first = self.cfg.half_sizes[0]
        if cand.faint:
            structure = cand.comp.sum() > (2 * first + 1) ** 2
        else:
            structure = self.plateau(half, f, cand)
        return structure and not self.covers(cand, self.window(first, f))

    def slopes(self, first: np.ndarray, second: np.ndarray, y0: int, x0: int) -> tuple:
        """The mean gradient magnitudes of the image over the pixels of ``first`` and of
        ``second`` (bool, of one shape, the top-left pixel at image row ``y0``, column ``x0``):
        central differences, one-sided on the image's edge (as ``np.gradient``), at those pixels
        only."""
        ys, xs = np.nonzero(first)
        ys2, xs2 = np.nonzero(second)
        ys, xs = np.concatenate([ys, ys2]) + y0, np.concatenate([xs, xs2]) + x0
        image = self.image
        up, down = np.maximum(ys - 1, 0), np.minimum(ys + 1, self.H - 1)
        left, right = np.maximum(xs - 1, 0), np.minimum(xs + 1, self.W - 1)
        gy = (image[down, xs].astype(np.float64) - image[up, xs]) / np.maximum(down - up, 1)
        gx = (image[ys, right].astype(np.float64) - image[ys, left]) / np.maximum(right - left, 1)
        g = np.hypot(gy, gx)
        n = len(g) - len(ys2)
        return float(g[:n].mean()), float(g[n:].mean())

    def skirt(self, found: _Window, f: float) -> np.ndarray:
        """``found``'s component (accepted at fraction ``f``) without the smooth skirt of
        background it sits on (step 7 of the module's docstring)."""
        if self.cfg.skirt_ratio <= 0 or self.cfg.plateau_step <= 0:
            return found.comp
        # the tests read the component's bounding box and one pixel around it (within the window:
        # beyond it, as beyond the box, lies the outside of the component)
        ys, xs = np.nonzero(found.comp)
        cut = slice(max(ys.min() - 1, 0), ys.max() + 2), slice(max(xs.min() - 1, 0), xs.max() + 2)
        comp = found.comp[cut]
        y0, x0 = found.box[0] + cut[0].start, found.box[2] + cut[1].start
        win = self.image[y0:y0 + comp.shape[0], x0:x0 + comp.shape[1]]
        at = (self.py - y0, self.px - x0)
        edge = inner_edge(comp)
        level = f
        while (level := level + self.cfg.plateau_step) < 1.0:
            core = component(comp & (win > found.bg + level * (self.peak - found.bg)), at)
            if core is None:
                break
            if core.sum() == comp.sum():  # the noise floor cut the component above this level
                continue
            kept = with_halo(comp, core, self.cfg.halo_cover)
            ends = edge & ~kept
            if not ends.any():
                break  # what the higher level drops surrounds the core: its flank
            outer, own = self.slopes(ends, inner_edge(core), y0, x0)
            if outer >= self.cfg.skirt_ratio * own:
                break  # ... or ends in an outline, as a target does
            comp, edge = kept, inner_edge(kept)
        out = found.comp.copy()
        out[cut] = comp
        return out

    def window_noise(self, win: _Window) -> float:
        """:func:`pixel_noise` of ``win``'s pixels (asked again by accept, by the growth's tests
        for the window the search accepts and by the wide windows' test at every fraction:
        computed once)."""
        y0, y1, x0, x1 = win.box
        if win.box not in self.noise:
            self.noise[win.box] = pixel_noise(self.image[y0:y1, x0:x1])
        return self.noise[win.box]

    def window_bar(self, win: _Window) -> float:
        """:func:`noise_bar` of ``win``'s pixels, from their :meth:`window_noise`."""
        y0, y1, x0, x1 = win.box
        return noise_bar(self.image[y0:y1, x0:x1], self.window_noise(win))

    def noise_bump(self, win: _Window) -> bool:
        """Whether the peak stands no higher above ``win``'s background than noise could
        (:func:`noise_bar`)."""
        return self.peak - win.bg <= self.window_bar(win)

    def accept(self, half: int, f: float, found: _Window) -> Strict:
        # A component found at a raised fraction, or in a window whose band's spread its peak
        # does not clear, yet standing clear of the pixel noise, is a target on a bright
        # structure (every window leaked into it at the lower fractions, or the band lies on its
        # edges): it does not grow into that. A noise bump there is part of a flat top, and grows.
        if self.cfg.settle_fraction > 0 and ((f <= self.fractions[0] and not found.faint) or self.noise_bump(found)):
            found = self.grow(half, f, found)
        else:
            self.note("grow", half, f, found, "no growth: accepted at a raised fraction, or its peak does not "
                      "clear the band's spread, and no noise bump")
        kept = self.skirt(found, f)
        if self.trace is not None and kept.sum() < found.comp.sum():
            self.note("skirt", half, f, found, f"a smooth skirt of {int(found.comp.sum() - kept.sum())} pixels "
                      "dropped")
        found = found._replace(comp=kept)
        box, comp = tighten(found.box, found.comp, self.py, self.px, self.cfg, self.H, self.W)
        strict = Strict(box, fill_holes(comp), found.bg, self.peak)
        self.note("result", max(box[1] - box[0], box[3] - box[2]) // 2, f, strict.comp, "the strict component")
        return strict

    def run(self) -> Strict:
        """The strict component (a :class:`Strict`): the first window of ``half_sizes`` that holds
        one at the lowest fraction that does, accepted and grown (:meth:`accept`); else a
        structure passed over beside the peak, a wide window standing in, or the peak alone."""
        first = self.cfg.half_sizes[0]
        passed_over = None  # the first window passed over as a structure beside the peak
        for i, f in enumerate(self.fractions):
            for half in self.cfg.half_sizes:
                found = self.window(half, f)
                if found.comp is None:
                    self.note("window", half, f, found, "nothing above the threshold" if found.whole is None
                              else "leaked: its component reaches the band")
                    continue
                # a window the smaller ones leaked out of that runs off the image, or holds a second
                # structure as bright as the peak beyond the first window: leaked too
                if half != first and self.escapes(found):
                    self.note("window", half, f, found, "leaked: it runs off the image's edge on one side")
                    continue
                if half != first and self.rival(self.window(first, f), found, lobes=True):
                    self.note("window", half, f, found, "leaked: a second structure as bright as the peak")
                    continue
                if half != first and self.clipped_beside(found):
                    # ... or holds the top of a saturated cloud or sky the peak lies at the rim of
                    self.note("window", half, f, found, "leaked: a clipped plateau the peak lies at the rim of")
                    continue
                if half != first and self.beside(half, f, found):
                    # the smaller windows leaked into a bright structure beside the peak that this
                    # one holds whole: a higher fraction or a wider background may isolate the
                    # target. A faint peak's is not even kept in reserve: the image does not tell
                    # that peak from the structure.
                    if not found.faint:
                        passed_over = passed_over or (half, f, found)
                    self.note("window", half, f, found, "a bright structure beside the peak: passed over"
                              + ("" if found.faint else ", kept in reserve"))
                    continue
                if i > 0 and self.noise_bump(found):
                    # every window leaked at the lower fractions into what this bump sits on: the flat
                    # top of a target wider than the windows, whose noise the raised fraction cut up
                    wide = next((w for g in self.fractions[:i] if (w := self.wide_target(g)) is not None), None)
                    if wide is not None:
                        self.note("window", *wide, f"window {half} at fraction {f:.2f} holds a noise bump: this "
                                  "wide window stands in")
                        return self.accept(*wide)
                self.note("window", half, f, found, "accepted")
                return self.accept(half, f, found)
            # a long target through the point: the wide windows now, before a higher fraction
            if self.long_leak(self.cfg.half_sizes[-1], f) and (wide := self.wide_target(f)) is not None:
                self.note("window", wide[0], wide[1], wide[2], "a long target through the point: this wide window "
                          "stands in")
                return self.accept(*wide)
        if passed_over is not None:
            self.note("window", *passed_over, "no window held the target alone: the structure passed over "
                      "stands in")
            return self.accept(*passed_over)
        for f in self.fractions:
            if (wide := self.wide_target(f)) is not None:
                self.note("window", *wide, "no smaller window held a component: this wide window stands in")
                return self.accept(*wide)
        box = self.first_box
        comp = np.zeros((box[1] - box[0], box[3] - box[2]), dtype=bool)
        comp[self.py - box[0], self.px - box[2]] = True
        bg = self.stats[first][0] if self.stats else self.peak
        self.note("result", first, self.fractions[-1], comp, "no window held a component: the peak alone")
        return Strict(box, comp, bg, self.peak)


def peak_reach(comp: np.ndarray, box: tuple, py: int, px: int) -> int:
    """How far ``comp`` (bool over ``box`` in the image, not empty) reaches from the peak at
    ``(py, px)``: the Chebyshev distance to its farthest pixel."""
    ys, xs = np.nonzero(comp)
    return int(max(np.abs(ys + box[0] - py).max(), np.abs(xs + box[2] - px).max()))


def tighten(box: tuple, comp: np.ndarray, py: int, px: int, cfg: AnnotatorConfig, H: int, W: int) -> tuple:
    """The smallest window of the configured sizes, no larger than ``box``, that holds ``comp``
    clear of its band: ``(box, comp cropped to it)``. A window grown for its background level
    then does not widen the field window (and the bright region's reach) beyond the target."""
    reach = peak_reach(comp, box, py, px)
    for half in sorted(cfg.half_sizes + cfg.wide_half_sizes):
        inner = window_box(py, px, half, H, W)
        if half >= reach + cfg.band + 1 or inner == box:
            if inner[1] - inner[0] > box[1] - box[0] or inner[3] - inner[2] > box[3] - box[2]:
                break
            y0, x0 = inner[0] - box[0], inner[2] - box[2]
            return inner, comp[y0:y0 + inner[1] - inner[0], x0:x0 + inner[3] - inner[2]]
    return box, comp


def check_points(points: np.ndarray, shape: tuple, index: int) -> np.ndarray:
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
