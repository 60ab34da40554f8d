"""Synthetic infrared small-target scenes: the embedded default data (no download).

:func:`make_scene` draws one single-frame infrared image with its exact ground truth and
human-like point labels; :func:`write_dataset` writes a set of them in the BasicIRSTD / LESPS
layout that :class:`d2d_ext.data.IRDataset` reads. :func:`make_bar` draws a probe of another
kind: one long thin flat-topped target on noise alone.

The physics, in units of the sensor's temporal noise (std 1):

- Background: 1/f texture (power spectrum ``~ f^-beta`` with a random slope ``beta``, made by
  filtering white noise in the Fourier domain) plus a scene model: ``"sky"`` (smooth gradients,
  vignetting, bright clouds with sharp-ish edges), ``"sea"`` (horizon line, sky above, horizontally
  stretched wave clutter and sun glints below), ``"ground"`` (strong texture, bright man-made
  rectangles and lines, sometimes a skyline), ``"mixed"`` (one of the three at random).
- Optics and sensor: the scene is blurred by a Gaussian PSF (std 0.35-0.75 px), then Gaussian noise
  and a fixed-pattern column stripe are added.
- Targets: 1 to 6, area log-uniform (by default most small, median ~20 px, from 1 px to 100+ px;
  ``area_range`` sets the range), shapes from Gaussian point targets to elongated flat-topped or
  irregular extended blobs, blurred by the same PSF, with a peak of ``snr`` times the local
  background std (``snr`` from ~2.5, faint, to 30, bright); some are placed next to clutter
  (strong background edges).
- Ground truth: a target's mask is exactly the set of pixels where its own added (blurred) signal
  exceeds 0.3 of its peak; it is one 8-connected component, at least 4 px from the border, with at
  least 3 background pixels between any two targets' masks.
- The image is mapped to ``[0, 1]`` per image (random offset and gain, bright clutter may clip,
  targets never do) and returned as float32.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .files import write_bytes_atomic, write_png_atomic
from .metrics import EIGHT_CONNECTED

__all__ = ["Scene", "make_scene", "make_bar", "make_pressed", "write_dataset", "BACKGROUNDS", "MASK_FRACTION",
           "AREA_RANGE"]

#: Background kinds of :func:`make_scene`.
BACKGROUNDS = ("sky", "sea", "ground", "mixed")
#: A target's mask: the pixels where its added signal exceeds this fraction of its own peak.
MASK_FRACTION = 0.3
#: Minimum distance of a mask pixel from the image border, in pixels.
BORDER = 4
#: Minimum number of background pixels between two targets' masks (Chebyshev gap).
GAP = 3

_MIXED_P = {"sky": 0.45, "sea": 0.25, "ground": 0.30}
_N_TARGETS_P = np.array([0.50, 0.22, 0.12, 0.08, 0.05, 0.03])  # P(1..6 targets)
#: Default log-uniform range of target areas (pixels, before the mask threshold).
AREA_RANGE = (2.0, 200.0)
_SNR_RANGE = (2.5, 30.0)  # log-uniform local SNR (peak / local background std)
_LN_THR = float(np.log(1.0 / MASK_FRACTION))


@dataclass
class Scene:
    """One synthetic infrared scene.

    - ``image``: ``(H, W)`` float32 in ``[0, 1]``.
    - ``mask``: ``(H, W)`` bool, the union of the targets' masks.
    - ``points``: ``(K, 2)`` float64 ``(x, y)`` 0-based pixel coordinates, one per target: the
      centroid of the target's mask pixels (a human's click), or, when the centroid's pixel is off
      a concave target, the target pixel nearest to it; ``round(point)`` is always on the target.
    - ``labels``: ``(H, W)`` int32, 0 for background, ``k + 1`` on target ``k`` (``points[k]``).
    - ``snr``: ``(K,)`` float64, each target's peak over the local background std.
    - ``background``: the background kind drawn (``"sky"``, ``"sea"`` or ``"ground"``; ``"flat"``
      for :func:`make_bar`'s noise alone).
    """

    image: np.ndarray
    mask: np.ndarray
    points: np.ndarray
    labels: np.ndarray
    snr: np.ndarray
    background: str

    @property
    def areas(self) -> np.ndarray:
        """``(K,)`` int64 mask area of each target, in pixels."""
        return np.bincount(self.labels.ravel(), minlength=len(self.points) + 1)[1:]


# --------------------------------------------------------------------------------------------
# Texture primitives
# --------------------------------------------------------------------------------------------


def _powerlaw(rng, h, w, beta, ax=1.0, ay=1.0):
    """``(h, w)`` float64 zero-mean unit-std field with power spectrum ``~ f^-beta`` where
    ``f = sqrt((ax fx)^2 + (ay fy)^2)``; ``ax > 1`` stretches structures horizontally."""
    fy = np.fft.fftfreq(h)[:, None] * ay
    fx = np.fft.rfftfreq(w)[None, :] * ax
    f2 = fx * fx + fy * fy
    f2[0, 0] = 1.0
    amp = f2 ** (-beta / 4.0)
    amp[0, 0] = 0.0
    spec = rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)
    field = np.fft.irfft2(spec * amp, s=(h, w))
    field -= field.mean()
    return field / (field.std() + 1e-12)


def _profile(rng, n, beta):
    """``(n,)`` zero-mean unit-std 1-D 1/f profile (skylines, coastlines)."""
    f = np.fft.rfftfreq(n)
    f[0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0] = 0.0
    spec = (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)) * amp
    p = np.fft.irfft(spec, n=n)
    p -= p.mean()
    return p / (p.std() + 1e-12)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _grid(h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return yy, xx


def _clouds(rng, h, w):
    """Cloud brightness in ``[0, ~1.5]``: thresholded 1/f field with sharp-ish edges and texture."""
    n = _powerlaw(rng, h, w, rng.uniform(2.6, 3.4), ax=rng.uniform(1.0, 2.5))
    cover = rng.uniform(0.08, 0.5)
    thr = np.quantile(n, 1.0 - cover)
    soft = rng.uniform(0.06, 0.35)
    d = _sigmoid((n - thr) / soft)
    core = np.clip(n - thr, 0.0, None)
    inner = 1.0 + rng.uniform(0.1, 0.4) * _powerlaw(rng, h, w, rng.uniform(2.2, 3.0))
    return d * (0.6 + 0.4 * np.tanh(2.0 * core)) * inner


def _sky(rng, h, w, yy, xx, clouds=True):
    gy = rng.uniform(-10.0, 40.0)
    gx = rng.uniform(-15.0, 15.0)
    bg = gy * yy / h + gx * xx / w
    if rng.random() < 0.3:  # vignetting / radial shading
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / float(max(h, w)) ** 2
        bg += rng.uniform(-40.0, 40.0) * r2
    bg += rng.uniform(0.5, 4.0) * _powerlaw(rng, h, w, rng.uniform(2.6, 3.6))
    if clouds and rng.random() < 0.65:
        bg += rng.uniform(5.0, 60.0) * _clouds(rng, h, w)
    return bg


def _sea(rng, h, w, yy, xx):
    horizon = rng.uniform(-0.3, 0.6) * h  # < 0: only sea in view
    tilt = np.tan(np.deg2rad(rng.uniform(-2.0, 2.0)))
    yh = horizon + tilt * (xx[0] - w / 2.0)
    if rng.random() < 0.4:  # distant coastline
        yh = yh - np.abs(_profile(rng, w, rng.uniform(1.5, 2.5))) * rng.uniform(0.5, 4.0)
    yh = yh[None, :]
    sky = _sky(rng, h, w, yy, xx, clouds=rng.random() < 0.4)
    depth = np.clip((yy - yh) / h, 0.0, 1.0)
    level = np.median(sky) + rng.uniform(-25.0, 25.0)
    waves = _powerlaw(rng, h, w, rng.uniform(1.8, 2.8), ax=rng.uniform(3.0, 8.0))
    sea = level + rng.uniform(-15.0, 15.0) * depth + rng.uniform(1.0, 6.0) * (0.3 + depth) * waves
    if rng.random() < 0.6:  # sun glints: small bright horizontal streaks, target-like clutter
        n = rng.poisson(rng.uniform(5.0, 60.0))
        imp = np.zeros((h, w))
        gy = rng.integers(0, h, n)
        gx = rng.integers(0, w, n)
        imp[gy, gx] += rng.exponential(rng.uniform(3.0, 15.0), n)
        sy, sx = rng.uniform(0.4, 0.8), rng.uniform(0.8, 2.5)
        sea += ndimage.gaussian_filter(imp, (sy, sx)) * (2.0 * np.pi * sy * sx)
    s = _sigmoid((yy - yh) / rng.uniform(0.4, 1.2))
    bg = (1.0 - s) * sky + s * sea
    width = rng.uniform(0.6, 1.5)
    bg += rng.uniform(-8.0, 12.0) * np.exp(-0.5 * ((yy - yh) / width) ** 2)  # horizon line
    return bg


def _ground(rng, h, w, yy, xx):
    g = rng.uniform(3.0, 12.0) * _powerlaw(rng, h, w, rng.uniform(1.5, 2.4))
    g += rng.uniform(5.0, 20.0) * _powerlaw(rng, h, w, rng.uniform(2.8, 3.4))
    g += rng.uniform(-10.0, 10.0) * yy / h
    # Man-made structures: rectangles (buildings, vehicles) with sharp edges, lines (roads, wires).
    for _ in range(int(rng.integers(0, 9))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        hh, hw = rng.uniform(2.0, 25.0), rng.uniform(2.0, 25.0)
        a = np.deg2rad(rng.choice([0.0, rng.uniform(-90.0, 90.0)], p=[0.6, 0.4]))
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        e = rng.uniform(0.3, 0.8)
        inside = _sigmoid((hw - np.abs(u)) / e) * _sigmoid((hh - np.abs(v)) / e)
        g += rng.uniform(-10.0, 50.0) * inside
        if rng.random() < 0.5:  # hot outline
            dist = np.minimum(np.abs(np.abs(u) - hw), np.abs(np.abs(v) - hh))
            edge = np.exp(-0.5 * (dist / 0.7) ** 2)
            g += rng.uniform(5.0, 20.0) * edge * (np.abs(u) < hw + 1) * (np.abs(v) < hh + 1)
    for _ in range(int(rng.integers(0, 5))):
        py, px = rng.uniform(0, h), rng.uniform(0, w)
        a = rng.uniform(0.0, np.pi)
        dist = np.abs(-(xx - px) * np.sin(a) + (yy - py) * np.cos(a))
        g += rng.uniform(-10.0, 20.0) * _sigmoid((rng.uniform(0.5, 2.5) - dist) / 0.4)
    if rng.random() < 0.5:  # skyline: sky above a ridge
        ridge = rng.uniform(0.05, 0.5) * h
        ridge = ridge + rng.uniform(2.0, 15.0) * _profile(rng, w, rng.uniform(1.8, 2.8))
        sky = _sky(rng, h, w, yy, xx, clouds=rng.random() < 0.3)
        s = _sigmoid((yy - ridge[None, :]) / 0.6)
        g = (1.0 - s) * sky + s * (g + np.median(sky) + rng.uniform(-20.0, 30.0))
    return g


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


def _target_patch(rng, area, psf):
    """One target's blurred signal on a local patch, peak 1: ``(patch (n, n) float64, mask
    (n, n) bool, centre offset)``; the mask (signal > MASK_FRACTION) is one 8-connected blob."""
    for _ in range(20):
        kind = "point"
        if area >= 12.0:
            kind = rng.choice(["point", "flat", "irregular"], p=[0.3, 0.35, 0.35])
        aspect = rng.uniform(1.0, 1.4) if kind == "point" else rng.uniform(1.0, 3.0)
        theta = rng.uniform(0.0, np.pi)
        # Threshold ellipse of a Gaussian with stds (sa, sb): area 2 ln(1/f) pi sa sb.
        sab = area / (2.0 * _LN_THR * np.pi)
        sa, sb = np.sqrt(sab * aspect), np.sqrt(sab / aspect)
        extent = 3.5 * max(sa, 1.0) + 4.0 * psf + 3.0
        r = int(np.ceil(extent))
        off = rng.uniform(-0.5, 0.5, 2)  # sub-pixel position of the centre
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
        xx -= off[0]
        yy -= off[1]
        c, s = np.cos(theta), np.sin(theta)
        pix = psf * psf + 1.0 / 12.0  # PSF and pixel integration (box ~ Gaussian of var 1/12)

        def gauss(dx, dy, a, b):
            u = (xx - dx) * c + (yy - dy) * s
            v = -(xx - dx) * s + (yy - dy) * c
            va = max(a * a, pix)  # the blur sets a floor on the spot size
            vb = max(b * b, pix)
            return np.exp(-0.5 * (u * u / va + v * v / vb))

        if kind == "point":
            sig = gauss(0.0, 0.0, sa, sb)
        elif kind == "flat":
            p = rng.uniform(1.5, 3.0)  # super-Gaussian: flat top, steep edges
            rho2 = (2.0 * _LN_THR) ** (1.0 / p)  # threshold radius^2 in units of (a, b)
            scale = np.sqrt(2.0 * _LN_THR / rho2)
            a, b = sa * scale, sb * scale
            u = xx * c + yy * s
            v = -xx * s + yy * c
            sig = np.exp(-0.5 * ((u / a) ** 2 + (v / b) ** 2) ** p)
            sig = ndimage.gaussian_filter(sig, np.sqrt(pix), mode="constant")
        else:
            sig = gauss(0.0, 0.0, sa * 0.85, sb * 0.85)
            for _k in range(int(rng.integers(1, 4))):
                ang = rng.uniform(0.0, 2.0 * np.pi)
                d = rng.uniform(0.5, 1.2)
                dx = d * sa * np.cos(ang) * c - d * sb * np.sin(ang) * s
                dy = d * sa * np.cos(ang) * s + d * sb * np.sin(ang) * c
                k = rng.uniform(0.45, 0.85)
                sig += rng.uniform(0.3, 0.8) * gauss(dx, dy, sa * k, sb * k)
        sig /= sig.max()
        mask = sig > MASK_FRACTION
        # The patch must hold the whole mask with margin, as one 8-connected blob.
        if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
            continue
        _, ncomp = ndimage.label(mask, structure=EIGHT_CONNECTED)
        if ncomp == 1:
            return sig, mask, r
    raise RuntimeError("could not draw a single-blob target")  # pragma: no cover


def _human_point(mask_local, y0, x0):
    """Centroid of a target's pixels (x, y) in image coordinates; the nearest target pixel when
    the centroid's (rounded) pixel is off the target."""
    ys, xs = np.nonzero(mask_local)
    cx, cy = xs.mean(), ys.mean()
    rx, ry = int(np.floor(cx + 0.5)), int(np.floor(cy + 0.5))
    if not mask_local[ry, rx]:
        j = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
        cx, cy = float(xs[j]), float(ys[j])
    return cx + x0, cy + y0


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


def make_scene(
    rng_or_seed=None, height=256, width=256, background="mixed", n_targets=None, area_range=AREA_RANGE
) -> Scene:
    """Draw one synthetic infrared scene (see the module doc for the model).

    ``rng_or_seed``: a ``numpy.random.Generator`` (advanced in place) or anything
    ``numpy.random.default_rng`` takes (an int seed, a list of ints). ``height``, ``width``: image
    size in pixels (at least 24 each). ``background``: ``"sky"``, ``"sea"``, ``"ground"`` or
    ``"mixed"`` (one of the three at random). ``n_targets``: the number of targets (default: 1 to 6
    at random, mostly 1 or 2, fewer in small images). ``area_range``: ``(low, high)`` pixels, the
    log-uniform range of the targets' areas (drawn before the mask threshold; the default
    :data:`AREA_RANGE` is SIRST-like, most targets small; a larger ``high`` gives the extended
    targets of IRSTD-1k-like data, in images large enough to hold them). Returns a
    :class:`Scene`; the same seed and arguments give the same scene. Raises ``ValueError`` for bad
    arguments or when ``n_targets`` targets cannot be placed without touching (far too many for
    the image).
    """
    rng = np.random.default_rng(rng_or_seed)
    h, w = int(height), int(width)
    if h < 24 or w < 24:
        raise ValueError(f"make_scene: height and width must be >= 24, got {h}x{w}")
    if background not in BACKGROUNDS:
        raise ValueError(f"make_scene: background must be one of {BACKGROUNDS}, got {background!r}")
    if background == "mixed":
        kinds = list(_MIXED_P)
        background = str(rng.choice(kinds, p=[_MIXED_P[k] for k in kinds]))
    if n_targets is None:
        n_targets = int(rng.choice(np.arange(1, 7), p=_N_TARGETS_P))
        # Small images hold fewer targets (about one per 20 x 20 pixels of the usable area).
        n_targets = min(n_targets, max(1, (h - 2 * BORDER) * (w - 2 * BORDER) // 400))
    n_targets = int(n_targets)
    if n_targets < 0:
        raise ValueError(f"make_scene: n_targets must be >= 0, got {n_targets}")
    if len(area_range) != 2:
        raise ValueError(f"make_scene: area_range must be (low, high), got {area_range!r}")
    area_lo, area_hi = (float(a) for a in area_range)
    if not 1.0 <= area_lo <= area_hi < np.inf:
        raise ValueError(f"make_scene: area_range must be (low, high) with 1 <= low <= high, got {tuple(area_range)}")

    yy, xx = _grid(h, w)
    if background == "sky":
        bg = _sky(rng, h, w, yy, xx)
    elif background == "sea":
        bg = _sea(rng, h, w, yy, xx)
    else:
        bg = _ground(rng, h, w, yy, xx)

    psf = rng.uniform(0.35, 0.75)
    scene = ndimage.gaussian_filter(bg, psf, mode="reflect")
    # Clutter map (strong edges of the blurred scene) for placing some targets next to clutter.
    gy, gx = np.gradient(scene)
    grad = np.hypot(gy, gx)
    clutter_thr = np.quantile(grad, 0.95)
    # Sensor: temporal noise (std 1, the unit of everything) and column fixed-pattern stripes.
    noisy = scene + rng.standard_normal((h, w))
    noisy += rng.normal(0.0, rng.uniform(0.05, 0.4), (1, w))

    labels = np.zeros((h, w), dtype=np.int32)
    forbidden = np.zeros((h, w), dtype=bool)  # within GAP of an existing target's mask
    signal = np.zeros((h, w))
    points, snrs = [], []
    lo_a, hi_a = np.log(area_lo), np.log(area_hi)
    box = np.ones((2 * GAP + 1, 2 * GAP + 1), dtype=bool)
    for k in range(n_targets):
        placed = False
        fresh = True
        for attempt in range(400):
            if fresh or attempt % 20 == 0:
                # A fresh shape every 20 placements; smaller ones when the image is crowded.
                cap = max(lo_a, hi_a - 0.4 * (attempt // 20))
                area = float(np.exp(rng.uniform(lo_a, cap)))
                sig, tmask, r = _target_patch(rng, area, psf)
                ty, tx = np.nonzero(tmask)
                ylo, yhi, xlo, xhi = ty.min() - r, ty.max() - r, tx.min() - r, tx.max() - r
                fresh = False
            # Centre pixel: near clutter sometimes, else uniform; the mask must keep BORDER.
            cy_min, cy_max = BORDER - ylo, h - 1 - BORDER - yhi
            cx_min, cx_max = BORDER - xlo, w - 1 - BORDER - xhi
            if cy_min > cy_max or cx_min > cx_max:
                fresh = True  # this shape does not fit the image at all
                continue
            cy = int(rng.integers(cy_min, cy_max + 1))
            cx = int(rng.integers(cx_min, cx_max + 1))
            if rng.random() < 0.3:
                cand = np.flatnonzero(grad[cy_min : cy_max + 1, cx_min : cx_max + 1] >= clutter_thr)
                if cand.size:
                    j = int(cand[rng.integers(cand.size)])
                    cy = cy_min + j // (cx_max - cx_min + 1)
                    cx = cx_min + j % (cx_max - cx_min + 1)
            my, mx = ty + cy - r, tx + cx - r
            if forbidden[my, mx].any():
                continue
            # Peak = snr * local std of the (noisy) background around the target.
            y0, y1 = max(cy - 7, 0), min(cy + 8, h)
            x0, x1 = max(cx - 7, 0), min(cx + 8, w)
            local_std = max(float(noisy[y0:y1, x0:x1].std()), 1.0)
            snr = float(np.exp(rng.uniform(np.log(_SNR_RANGE[0]), np.log(_SNR_RANGE[1]))))
            # Add the patch (clipped to the image; only sub-threshold tails can be clipped).
            py0, px0 = cy - r, cx - r
            sy0, sx0 = max(-py0, 0), max(-px0, 0)
            sy1 = sig.shape[0] - max(py0 + sig.shape[0] - h, 0)
            sx1 = sig.shape[1] - max(px0 + sig.shape[1] - w, 0)
            amp = snr * local_std
            signal[py0 + sy0 : py0 + sy1, px0 + sx0 : px0 + sx1] += amp * sig[sy0:sy1, sx0:sx1]
            labels[my, mx] = k + 1
            dil = ndimage.binary_dilation(tmask, structure=box)
            dy_, dx_ = np.nonzero(dil)
            dy_, dx_ = dy_ + cy - r, dx_ + cx - r
            ok = (dy_ >= 0) & (dy_ < h) & (dx_ >= 0) & (dx_ < w)
            forbidden[dy_[ok], dx_[ok]] = True
            points.append(_human_point(tmask, cy - r, cx - r))
            snrs.append(snr)
            placed = True
            break
        if not placed:
            raise ValueError(
                f"make_scene: could not place {n_targets} non-touching targets in a {h}x{w} image"
            )

    img = noisy + signal
    mask = labels > 0
    # Per-image mapping to [0, 1]: the brightest clutter (above a percentile between 98 and 99.95)
    # may clip, targets never do (hi covers every target pixel).
    lo = np.percentile(img, rng.uniform(0.0, 1.0))
    hi = np.percentile(img, rng.uniform(98.0, 99.95))
    if mask.any():
        hi = max(hi, float(img[mask].max()))
    offset = rng.uniform(0.02, 0.3)
    span = min(rng.uniform(0.45, 0.95), 0.98 - offset)
    out = np.clip(offset + span * (img - lo) / max(hi - lo, 1e-9), 0.0, 1.0).astype(np.float32)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return Scene(out, mask, pts, labels, np.asarray(snrs, dtype=np.float64), background)


def make_bar(length: float, width: float, snr: float, seed: int, size: int = 200, angle: float = 0.0) -> Scene:
    """One long thin target (a ship's hull, an aircraft side-on) at the centre of a ``size``-square
    image: a flat-topped bar ``length`` x ``width`` pixels at ``angle`` degrees from the rows,
    blurred by the optics (Gaussian PSF, std 1 px), ``snr`` times the noise above it; the noise is
    spatially correlated (white noise blurred by 1 px, scaled to std 1). The point is the bar's
    centre; the mask is where the bar's own signal exceeds :data:`MASK_FRACTION` of its top."""
    yy, xx = _grid(size, size)
    c = size / 2
    t = np.deg2rad(angle)
    along = (xx - c) * np.cos(t) + (yy - c) * np.sin(t)
    across = -(xx - c) * np.sin(t) + (yy - c) * np.cos(t)
    signal = ndimage.gaussian_filter(((np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)).astype(float), 1.0)
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 1, (size, size)), 1.0)
    image = noise / noise.std() + snr * signal
    mask = signal > MASK_FRACTION
    return Scene(((image - image.min()) / np.ptp(image)).astype(np.float32), mask, np.array([[c, c]]),
                 mask.astype(np.int32), np.array([float(snr)]), "flat")


def make_pressed(sigma: float, gap: float, half_length: float, half_thickness: float, seed: int,
                 size: int = 320) -> Scene:
    """A large target pressed against a bright band (a cloud bank, a roof), in a ``size``-square
    image: a flat band ``2 * half_length`` x ``2 * half_thickness`` pixels at 0.97, its edges
    blurred over 4 pixels, on a background of 0.42, and below it a Gaussian target of peak 0.95
    (std ``sigma`` across the band, 1.5 times that along it) whose centre lies ``gap`` pixels past
    the band's edge; white noise of std 0.01 (``seed``). The band is as bright as the target, and
    the two meet over a saddle. The point is the target's centre; the mask is where the target's
    own signal exceeds :data:`MASK_FRACTION` of its peak."""
    yy, xx = _grid(size, size)
    cy, cx = 0.375 * size, 0.5 * size
    edge = 4.0  # the band's edges fall off over this many pixels
    across = 1 / (1 + np.exp((np.abs(yy - cy) - half_thickness) / edge))
    band = across / (1 + np.exp((np.abs(xx - cx) - half_length) / edge))
    ty = cy + half_thickness + gap
    target = np.exp(-((yy - ty) ** 2 + ((xx - cx) / 1.5) ** 2) / (2 * sigma ** 2))
    image = np.maximum(0.42 + 0.55 * band, 0.42 + 0.53 * target)
    image += 0.01 * np.random.default_rng(seed).standard_normal(image.shape)
    mask = target > MASK_FRACTION
    return Scene(np.clip(image, 0, 1).astype(np.float32), mask, np.array([[cx, ty]]), mask.astype(np.int32),
                 np.array([0.53 / 0.01]), "flat")


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


def write_dataset(root, n_images=40, seed=0, height=256, width=256, name="SYNTH", n_targets=None) -> Path:
    """Write ``n_images`` synthetic scenes (``background="mixed"``) in the BasicIRSTD layout:

    - ``images/<id>.png`` (8-bit, ``round(255 * image)``), ``masks/<id>.png`` (0 / 255),
    - ``masks_centroid/<id>.png``: one 255 pixel per target at its rounded point,
    - ``points_centroid.csv``: ``image,x,y`` with the sub-pixel points (3 decimals),
    - ``img_idx/train_<name>.txt``, ``img_idx/test_<name>.txt``: a deterministic half / half
      split (train gets ``n_images // 2``).

    Ids are ``<name>_0000``, ``<name>_0001``, ...; scene ``i`` is
    ``make_scene(numpy.random.default_rng([seed, i]), height, width, "mixed", n_targets)`` (``None``:
    the scene draws its own count), so the same seed
    gives byte-identical files (on the same platform and numpy). Every file is written atomically
    (:func:`d2d_ext.files.write_png_atomic`); files of the same name are replaced, others under
    ``root`` are left alone. Returns ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root)
    n_images = int(n_images)
    if n_images < 0:
        raise ValueError(f"write_dataset: n_images must be >= 0, got {n_images}")
    seed = int(seed) % (1 << 64)
    ids = [f"{name}_{i:04d}" for i in range(n_images)]
    rows = io.StringIO()
    rows.write("image,x,y\n")
    for i, id_ in enumerate(ids):
        sc = make_scene(np.random.default_rng([seed, i]), height, width, "mixed", n_targets)
        img8 = np.clip(np.floor(sc.image.astype(np.float64) * 255.0 + 0.5), 0, 255).astype(np.uint8)
        write_png_atomic(root / "images" / f"{id_}.png", img8)
        write_png_atomic(root / "masks" / f"{id_}.png", sc.mask.astype(np.uint8) * 255)
        clicks = np.zeros((height, width), dtype=np.uint8)
        for x, y in sc.points:
            clicks[int(np.floor(y + 0.5)), int(np.floor(x + 0.5))] = 255
            rows.write(f"{id_},{x:.3f},{y:.3f}\n")
        write_png_atomic(root / "masks_centroid" / f"{id_}.png", clicks)
    write_bytes_atomic(root / "points_centroid.csv", rows.getvalue().encode("utf-8"))
    order = np.random.default_rng([seed, 0x5B117]).permutation(n_images)
    n_train = n_images // 2
    train = sorted(ids[j] for j in order[:n_train])
    test = sorted(ids[j] for j in order[n_train:])
    for split, members in (("train", train), ("test", test)):
        text = "".join(f"{i}\n" for i in members)
        write_bytes_atomic(root / "img_idx" / f"{split}_{name}.txt", text.encode("utf-8"))
    return root
