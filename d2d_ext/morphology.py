"""Mask morphology of the annotator: rings, edges and holes of small boolean masks, and the
target's part of a bright region (:func:`target_part`).

The window search (:mod:`d2d_ext.windows`) and the binarisation (:mod:`d2d_ext.annotate`) run a
few of these per target on masks of tens to a few hundred pixels a side, where scipy's per-call
set-up (or, for holes, a dilation repeated until it settles) costs more than the work: each is
written here with numpy slices or one labelling (:func:`label`, compiled), and tested against
scipy's result.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from . import _C

__all__ = ["label", "component", "dilate8", "grow", "fill_holes", "inner_edge", "elongation", "star_share", "with_halo",
           "pulls", "target_part", "split_at_valleys"]


def label(mask: np.ndarray, connectivity: int = 8) -> tuple:
    """``(labels, count)``: the ``(h, w)`` int32 labels of the ``connectivity`` (4 or 8) connected
    components of ``mask`` ``(h, w)`` bool and their number, as ``scipy.ndimage.label`` with a
    cross (4) or a 3x3 (8) structure returns them (numbered from 1 in raster order of each
    component's first pixel, background 0). Compiled (``_C.label``), without scipy's per-call
    set-up, which on a target's window costs more than the labelling."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    labels = np.empty(mask.shape, np.int32)
    return labels, _C.label(mask, labels, connectivity)


def component(mask: np.ndarray, seed: tuple) -> np.ndarray | None:
    """``(h, w)`` bool: the 8-connected component of ``mask`` ``(h, w)`` bool that holds pixel
    ``seed`` ``(row, col)``, or None where that pixel is not in ``mask``."""
    labels, _ = label(mask)
    lab = labels[seed]
    return labels == lab if lab else None


def dilate8(mask: np.ndarray) -> np.ndarray:
    """``mask`` ``(h, w)`` bool grown by one pixel in all 8 directions (within the array): as
    ``binary_dilation`` with a 3x3 structure, without that call's set-up (several run per target)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    rows = out.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def grow(mask: np.ndarray, rings: int) -> np.ndarray:
    """``mask`` ``(h, w)`` bool with the ``rings`` rings of pixels around it (chessboard distance 1
    to ``rings``, within the array): :func:`dilate8` ``rings`` times."""
    for _ in range(rings):
        mask = dilate8(mask)
    return mask


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` ``(h, w)`` bool with its holes filled: as ``binary_fill_holes`` (the background
    4-connected to the array's border stays background), by one labelling of the background
    instead of a dilation repeated until it settles (which grows with the mask's size)."""
    background, n = label(~mask, 4)
    border = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    if n == 0 or (n == 1 and border.any()):  # the usual case: no hole, nothing to look up
        return mask.copy()
    outer = np.zeros(n + 1, bool)
    outer[border] = True
    outer[0] = False
    return ~outer[background]


def inner_edge(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` ``(h, w)`` bool with an 8-neighbour outside it, beyond the array
    counting as outside (``mask & binary_dilation(~mask, border_value=1)``)."""
    inner = np.zeros_like(mask)  # every 8-neighbour in the mask (none on the array's border)
    if mask.shape[0] > 2 and mask.shape[1] > 2:
        column = mask[:-2] & mask[1:-1] & mask[2:]
        inner[1:-1, 1:-1] = column[:, :-2] & column[:, 1:-1] & column[:, 2:]
    return mask & ~inner


def elongation(mask: np.ndarray) -> float:
    """How many times longer than wide ``mask`` (bool, at least one pixel) is: the square root of
    the ratio of its pixel coordinates' principal second moments (``L / W`` for an ``L x W``
    rectangle at any angle, 1 for a disc or a square; inf for a straight line of pixels)."""
    ys, xs = np.nonzero(mask)
    dy, dx = ys - ys.mean(), xs - xs.mean()
    syy, sxx, sxy = (dy * dy).mean(), (dx * dx).mean(), (dy * dx).mean()
    half_gap = math.hypot((syy - sxx) / 2, sxy)
    small = (syy + sxx) / 2 - half_gap
    return math.inf if small <= 1e-12 else math.sqrt(((syy + sxx) / 2 + half_gap) / small)


def star_share(mask: np.ndarray, seed: tuple, most: int = 1024) -> float:
    """The share of ``mask``'s pixels (``(h, w)`` bool, not empty, holding ``seed`` ``(row, col)``)
    that the straight line from ``seed`` reaches without leaving ``mask``: 1 for a disc or a square
    from any pixel of it and about 1 for a convex mask from its middle (a bar off the pixel grid has
    steps for edges), less where the mask bends away from the seed (an arc, an L, a ridge that
    curves). Each line is sampled once per pixel step along its longer axis, each sample rounded to
    its pixel. At most ``most`` of the pixels are read, evenly spaced in raster order."""
    ys, xs = np.nonzero(mask)
    if len(ys) > most:
        pick = np.linspace(0, len(ys) - 1, most).round().astype(np.intp)
        ys, xs = ys[pick], xs[pick]
    dy, dx = ys - seed[0], xs - seed[1]
    steps = np.maximum(np.abs(dy), np.abs(dx))  # each line's samples: one per pixel along its longer axis
    # row k of t is the k-th sample of every line, a line that has ended staying at its pixel
    t = np.minimum(np.arange(int(steps.max()) + 1)[:, None] / np.maximum(steps, 1), 1.0)
    rows = np.rint(seed[0] + t * dy).astype(np.intp)
    cols = np.rint(seed[1] + t * dx).astype(np.intp)
    return float(mask[rows, cols].all(axis=0).mean())


def with_halo(region: np.ndarray, core: np.ndarray, cover: float, inside: np.ndarray | None = None) -> np.ndarray:
    """``core`` and the pixels of ``region`` in the rings around it (chessboard distance 1, 2, ...;
    each ring counted within ``inside`` if given) outward while ``region`` covers at least
    ``cover`` of each ring: a glow, or a target's own flank, surrounds its core; a structure
    beside it lies on one side."""
    extra = region & ~core
    kept, reached = core.copy(), core
    while (extra & ~reached).any():
        grown = dilate8(reached)
        ring = grown & ~reached
        counted = ring if inside is None else ring & inside
        if not counted.any() or (extra & counted).sum() < cover * counted.sum():
            break
        kept |= extra & ring
        reached = grown
    return kept


def pulls(base: np.ndarray, parts: np.ndarray, n: int, centre: tuple) -> np.ndarray:
    """``(n + 1,)``: entry ``j`` is how many pixels farther from ``centre`` ``(row, col)`` the
    centroid of ``base`` (bool) moves when the pixels of ``parts == j`` (an ``int`` label array of
    the same shape, labels 1 to ``n``, disjoint from ``base``) are added to it (negative where it
    moves closer; entry 0 is meaningless). One pass for every part: the centroid of the union
    comes from the coordinate sums of ``base`` and of the part."""
    ys, xs = np.nonzero(base)
    count, sy, sx = len(ys), float(ys.sum()), float(xs.sum())
    before = math.hypot(sy / count - centre[0], sx / count - centre[1])
    py, px = np.nonzero(parts)
    lab = parts[py, px]
    m = count + np.bincount(lab, minlength=n + 1)
    after = np.hypot((sy + np.bincount(lab, py, n + 1)) / m - centre[0], (sx + np.bincount(lab, px, n + 1)) / m - centre[1])
    return after - before


def target_part(region: np.ndarray, core: np.ndarray, grad: np.ndarray, halo_cover: float, edge_ratio: float,
                inside: np.ndarray | None = None, centre: tuple | None = None, centre_shift: float = 0.0,
                trace: list | None = None) -> np.ndarray:
    """The part of a bright ``region`` ``(S, S)`` bool that belongs to the target whose core is
    ``core`` (a subset of it, or not): ``core``, its halo, and the region's further parts that end
    in a target-like edge, connected to ``core``, holes filled.

    The halo is :func:`with_halo`'s rings (``halo_cover``; within ``inside`` if given). A further
    part (8-connected) is kept where it ends (its pixels next to the outside of the region) in a
    mean ``grad`` at least ``edge_ratio`` times the core's own edge: a target's extension ends in an outline as sharp as
    the target's; a dimmer structure beside it (a roof, a cloud's flank) lies on one side and
    fades out. Where ``centre`` (the target's point, ``(row, col)``) is given and ``centre_shift``
    is positive, such a part is kept only if adding it to the core and halo moves their centroid
    at most ``centre_shift`` pixels farther from the point: the point marks the target's middle,
    so its own extension lies around it, while a neighbour to one side pulls the centroid away.
    ``grad`` is a gradient magnitude of the image (any scale: only ratios are read). ``trace``: a
    list that receives ``(pixels, what became of them)`` for the halo and for each further part."""
    if not (region & ~core).any():
        return region | core
    kept = with_halo(region, core, halo_cover, inside)
    if trace is not None:
        trace.append((int((kept & ~core).sum()), "the halo: rings around the strict component that the region covers"))
    rest = region & ~kept
    if rest.any():
        core_edge = grad[inner_edge(core)].mean()
        rim = rest & inner_edge(region)  # where each part ends
        labels, n = label(rest)
        # per part (label): the mean gradient where it ends, then the centre test; every part is
        # tested against the core and halo alone, so all of them in one pass
        ends = labels[rim]
        count = np.bincount(ends, minlength=n + 1)
        slope = np.bincount(ends, grad[rim], n + 1) / np.maximum(count, 1)
        keep = (count > 0) & (slope >= edge_ratio * core_edge)
        keep[0] = False
        sharp, pull = keep.copy(), None
        if keep.any() and centre is not None and centre_shift > 0:
            pull = pulls(kept, labels, n, centre)
            keep &= pull <= centre_shift
        if trace is not None:
            _trace_parts(trace, labels, n, count, slope / max(core_edge, 1e-30), sharp, pull, edge_ratio,
                         centre_shift)
        kept |= keep[labels]
    labels, _ = label(kept)
    held = np.unique(labels[core])
    return fill_holes(np.isin(labels, held[held > 0]))


def _trace_parts(trace: list, labels: np.ndarray, n: int, ends: np.ndarray, ratio: np.ndarray, sharp: np.ndarray,
                 pull: np.ndarray | None, edge_ratio: float, centre_shift: float) -> None:
    """:func:`target_part`'s record of its further parts: per part (``labels`` 1 to ``n``), its
    pixels and why it stays or goes (``ends``: its pixels at the region's edge; the slope
    ``ratio`` of its end to the core's edge, ``sharp`` where at least ``edge_ratio``; its ``pull``
    on the centroid, None where not read)."""
    size = np.bincount(labels.ravel(), minlength=n + 1)
    for j in range(1, n + 1):
        if not ends[j]:
            why = "dropped: it does not reach the region's edge (filled back where the target surrounds it)"
        elif not sharp[j]:
            why = f"dropped: its end is {ratio[j]:.2f} as steep as the strict component's edge (< {edge_ratio})"
        elif pull is not None and pull[j] > centre_shift:
            why = f"dropped: it pulls the centroid {pull[j]:.1f} px farther from the point (> {centre_shift})"
        else:
            why = f"kept where it joins the target: its end is {ratio[j]:.2f} as steep as the strict component's edge"
        trace.append((int(size[j]), f"a further part, {why}"))


def split_at_valleys(region: np.ndarray, values: np.ndarray, seeds: list) -> np.ndarray | None:
    """``region`` ``(h, w)`` bool, one 8-connected component holding every seed ``(row, col)``
    (two or more, distinct), split into one part per seed: ``(h, w)`` int32, 0 outside the parts,
    ``k + 1`` on seed ``k``'s. Each pixel goes to the seed it is first reached from by a flood
    that enters the brightest pixels first (``values`` ``(h, w)``, ordered as the image's
    brightness: a watershed, whose lines follow the valleys between the seeds); then of each two
    8-neighbouring pixels of different parts the darker is dropped (the other where the darker is
    a seed), so that no two parts touch. None where two seeds touch: nothing lies between them."""
    h, w = region.shape
    seeds = [tuple(int(v) for v in s) for s in seeds]
    seeded = set(seeds)
    if any((y + dy, x + dx) in seeded for y, x in seeds for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx):
        return None
    part = np.zeros((h, w), np.int32)
    heap = []
    for k, (y, x) in enumerate(seeds):
        part[y, x] = k + 1
        heap.append((-float(values[y, x]), k, y, x))
    heapq.heapify(heap)
    count = len(heap)  # ties in brightness go first come, first served
    while heap:
        _, _, y, x = heapq.heappop(heap)
        for ny in range(max(y - 1, 0), min(y + 2, h)):
            for nx in range(max(x - 1, 0), min(x + 2, w)):
                if region[ny, nx] and not part[ny, nx]:
                    part[ny, nx] = part[y, x]
                    heapq.heappush(heap, (-float(values[ny, nx]), count, ny, nx))
                    count += 1
    is_seed = np.zeros((h, w), bool)
    is_seed[tuple(np.array(seeds).T)] = True
    drop = np.zeros((h, w), bool)
    # every pair of 8-neighbours once: across, down, and the two diagonals down
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = (slice(0, h - dy), slice(max(-dx, 0), w - max(dx, 0)))
        b = (slice(dy, h), slice(max(dx, 0), w - max(-dx, 0)))
        pa, pb = part[a], part[b]
        meet = (pa > 0) & (pb > 0) & (pa != pb)
        if not meet.any():
            continue
        va, vb = values[a], values[b]
        a_darker = (va < vb) | ((va == vb) & (pa > pb))
        drop_a = meet & ~is_seed[a] & (a_darker | is_seed[b])
        drop[a] |= drop_a
        drop[b] |= meet & ~drop_a
    part[drop] = 0
    return part
