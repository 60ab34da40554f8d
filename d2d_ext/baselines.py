"""Annotation baselines to compare the diffusion annotator (:mod:`d2d_ext.annotate`) against.

Every baseline reads the image and the points only (never a ground-truth mask), like the
annotator. Points are ``(K, 2)`` arrays of ``(x, y)`` pixel coordinates (0-based, sub-pixel
allowed); images are ``(H, W)`` float arrays in ``[0, 1]``; masks are ``(H, W)`` bool.

- :func:`monte_carlo_labels` / :func:`monte_carlo_masks`: the paper's reference code estimates the
  heat field with a particle walk. Here the walk uses exactly the jump rates of
  :func:`d2d_ext.annotate.target_rates` (``tau = 1``), so its expectation *is* the field that
  :func:`d2d_ext.diffuse` integrates deterministically; the only difference is sampling noise.
  Everything else (prior, fusion, binarisation) is the annotator's.
- :func:`superpixel_masks`: the annotator's superpixel prior alone (the SLIC segment of the point).
- :func:`local_threshold_masks`: mean + k std in a fixed box around the point, component of the point.
- :func:`point_masks`: the point pixel alone (the floor of any annotation).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .annotate import (
    AnnotatorConfig,
    DiffusionParams,
    TargetBatch,
    fuse_prior,
    image_masks,
    paste_masks,
    prepare_targets,
    ready_fields,
    target_rates,
)
from .morphology import component
from .points import point_pixel

__all__ = [
    "monte_carlo_walk",
    "monte_carlo_labels",
    "monte_carlo_masks",
    "superpixel_masks",
    "local_threshold_masks",
    "point_masks",
]


def monte_carlo_walk(rates, peak: np.ndarray, steps, particles: int = 1000, seed: int = 0) -> np.ndarray:
    """Final positions of a particle walk on the pixel grid, as counts per pixel.

    Args:
        rates: ``(T, 4, S, S)`` non-negative jump probabilities per step (a tensor or an array),
            channels as :func:`d2d_ext.diffuse` (``0`` east ``(y, x+1)``, ``1`` west, ``2`` south
            ``(y+1, x)``, ``3`` north); ``sum_d rates[t, d, p] <= 1`` at every pixel. Channels that
            point outside the crop are ignored (zero-flux boundary, as :func:`d2d_ext.diffuse`).
        peak: ``(T, 2)`` int ``(row, col)`` of every target's start pixel.
        steps: number of steps: an int for every target, or ``(T,)`` ints, one per target.
        particles: walkers per target.
        seed: seed of the ``numpy.random.default_rng`` that draws the walk (an int or a sequence
            of ints, e.g. ``[seed, chunk]``).

    Every step, a walker at ``p`` draws one uniform ``U``; it jumps to ``q_d(p)`` for the first
    ``d`` with ``U < sum_{d' <= d} rates[t, d', p]`` and stays if there is none. All walkers of all
    targets move together (vectorised over walkers; a loop over steps only).

    Returns:
        ``(T, S, S)`` int64 counts of final positions; each target's counts sum to ``particles``.
        ``counts / particles`` estimates ``diffuse(u0, rates, 1.0, steps)`` for the one-hot
        ``u0`` at ``peak`` (its expectation is exactly that), with binomial standard error
        ``sqrt(u (1 - u) / particles)`` per pixel.
    """
    r = rates.detach().cpu().double().numpy() if isinstance(rates, torch.Tensor) else np.asarray(rates, np.float64)
    if r.ndim != 4 or r.shape[1] != 4 or r.shape[2] != r.shape[3]:
        raise ValueError(f"monte_carlo_walk: rates must have shape (T, 4, S, S), got {r.shape}")
    T, _, S, _ = r.shape
    peak = np.asarray(peak, dtype=np.int64).reshape(-1, 2)
    if peak.shape[0] != T:
        raise ValueError(f"monte_carlo_walk: {T} targets in rates but {peak.shape[0]} peaks")
    particles = int(particles)
    steps = np.broadcast_to(np.asarray(steps, dtype=np.int64), (T,))
    if particles < 1 or (steps < 0).any():
        raise ValueError(f"monte_carlo_walk: need particles >= 1 and steps >= 0, got {particles}, {steps}")
    if T == 0:
        return np.zeros((0, S, S), dtype=np.int64)
    r = r.copy()
    r[:, 0, :, S - 1] = 0.0  # moves that would leave the crop are not taken (zero flux)
    r[:, 1, :, 0] = 0.0
    r[:, 2, S - 1, :] = 0.0
    r[:, 3, 0, :] = 0.0
    if (r < 0).any() or (r.sum(1) > 1.0 + 1e-6).any():
        raise ValueError("monte_carlo_walk: rates must be >= 0 and sum to <= 1 per pixel (tau = 1)")
    # Per pixel (global index t*S*S + y*S + x): cumulative jump probabilities and the 5 destinations.
    cum = np.cumsum(r, axis=1).transpose(0, 2, 3, 1).reshape(T * S * S, 4)
    here = np.arange(T * S * S, dtype=np.int64)
    dest = np.stack([here + 1, here - 1, here + S, here - S, here], axis=1)  # east, west, south, north, stay
    start = np.arange(T, dtype=np.int64) * S * S + peak[:, 0] * S + peak[:, 1]
    # Walkers ordered by their target's step count, longest first: the ones still walking at step
    # s are a prefix of length active[s].
    order = np.argsort(-steps, kind="stable")
    pos = np.repeat(start[order], particles)
    active = particles * (steps[order][None, :] > np.arange(int(steps.max(initial=0)))[:, None]).sum(1)
    rng = np.random.default_rng(seed)
    for n in active:
        u = rng.random(n)
        choice = (u[:, None] >= cum[pos[:n]]).sum(axis=1)  # 0..3: that jump; 4: stay
        pos[:n] = dest[pos[:n], choice]
    return np.bincount(pos, minlength=T * S * S).reshape(T, S, S)


def monte_carlo_labels(batch: TargetBatch, theta: dict, config: AnnotatorConfig | None = None,
                       particles: int = 1000, seed: int = 0) -> torch.Tensor:
    """``(T, S, S)`` soft pseudo-labels in [0, 1] from a particle walk (the reference code's way).

    Same as :func:`d2d_ext.annotate.soft_labels` except for the heat field: ``particles`` walkers
    per target start at the peak and take ``config.steps`` steps with the jump probabilities
    ``target_rates(batch, theta)`` (detached; ``tau = 1``); the histogram of their final positions
    divided by its maximum replaces the normalised ``u``. If the batch carries per-target step
    counts ``batch.steps`` ``(T,)`` (larger targets diffuse longer), the walkers of target ``t``
    take ``batch.steps[t]`` steps, as ``soft_labels`` integrates them. Then ``y = rho u + (1 - rho) C``
    (``C = batch.superpixel``) divided by its maximum. Not differentiable. Float32, like
    ``soft_labels``.
    """
    cfg = config or AnnotatorConfig()
    T, S = len(batch), batch.contrast.shape[-1]
    if T == 0:
        return torch.zeros(0, S, S)
    with torch.no_grad():
        rates = target_rates(batch, theta).detach()
    # Per-target step counts when the annotator sets them (larger targets diffuse longer), as
    # soft_labels does; else config.steps for every target.
    steps = getattr(batch, "steps", None)
    steps = int(cfg.steps) if steps is None else np.asarray(steps, dtype=np.int64)
    counts = monte_carlo_walk(rates, batch.peak, steps, particles, seed)
    return fuse_prior(torch.from_numpy(counts).to(rates.dtype), batch, theta["rho"].detach())


def monte_carlo_masks(images: Sequence[np.ndarray], points: Sequence[np.ndarray], config: AnnotatorConfig | None = None,
                      params: DiffusionParams | None = None, particles: int = 1000, seed: int = 0) -> list:
    """``B`` images ``(H, W)`` and their points ``(K, 2)`` ``(x, y)`` -> ``B`` ``(H, W)`` bool masks,
    the annotator's pipeline with the particle estimate of the heat field
    (:func:`prepare_targets`, :func:`monte_carlo_labels`, :func:`image_masks`).
    Like :meth:`Annotator.annotate`, it estimates the fields only of the targets whose masks read
    them (``prepare_targets(lazy=True)``).
    """
    cfg = config or AnnotatorConfig()
    params = params or DiffusionParams()
    batch = prepare_targets(images, points, cfg, lazy=True)
    with torch.no_grad():
        theta = params()
    soft = ready_fields(batch, lambda sub: monte_carlo_labels(sub, theta, cfg, particles, seed))
    return image_masks(batch, soft, cfg)


def superpixel_masks(images: Sequence[np.ndarray], points: Sequence[np.ndarray], config: AnnotatorConfig | None = None) -> list:
    """``B`` ``(H, W)`` bool masks: the annotator's superpixel prior alone, i.e. for every point the
    SLIC segment that holds its (snapped) peak, computed on the window the annotator accepts for
    that point (``batch.superpixel > 0.5`` pasted back). Runs the whole of :func:`prepare_targets`.
    """
    batch = prepare_targets(images, points, config or AnnotatorConfig())
    return paste_masks(batch, batch.superpixel.numpy() > 0.5)


def local_threshold_masks(images: Sequence[np.ndarray], points: Sequence[np.ndarray], window: int = 15, k: float = 1.0) -> list:
    """``B`` ``(H, W)`` bool masks by a local threshold around each point.

    For a point on pixel ``(row, col)`` (rounded), the ``window x window`` box centred on it
    (clipped to the image) is thresholded at ``mean + k * std`` of the box (pixels strictly above);
    the mask of the point is the 8-connected component of that set which holds the point pixel.
    If the point pixel is not above the threshold, the mask is the point pixel alone. The points
    of one image are united.
    """
    if len(images) != len(points):
        raise ValueError(f"local_threshold_masks: {len(images)} images but {len(points)} point arrays")
    half = int(window) // 2
    out = []
    for image, pts in zip(images, points):
        image = np.asarray(image, dtype=np.float64)
        H, W = image.shape
        mask = np.zeros((H, W), dtype=bool)
        for x, y in np.asarray(pts, dtype=np.float64).reshape(-1, 2):
            row, col = point_pixel(x, y, H, W)
            y0, y1 = max(row - half, 0), min(row + half + 1, H)
            x0, x1 = max(col - half, 0), min(col + half + 1, W)
            box = image[y0:y1, x0:x1]
            comp = component(box > box.mean() + k * box.std(), (row - y0, col - x0))
            if comp is None:
                mask[row, col] = True
            else:
                mask[y0:y1, x0:x1] |= comp
        out.append(mask)
    return out


def point_masks(images: Sequence[np.ndarray], points: Sequence[np.ndarray]) -> list:
    """``B`` ``(H, W)`` bool masks that hold only the (rounded) point pixels."""
    out = []
    for image, pts in zip(images, points):
        H, W = np.shape(image)
        mask = np.zeros((H, W), dtype=bool)
        for x, y in np.asarray(pts, dtype=np.float64).reshape(-1, 2):
            mask[point_pixel(x, y, H, W)] = True
        out.append(mask)
    return out
