"""``d2d_ext.metrics``: IoU, nIoU, Pd and Fa for infrared small-target detection (ISTD).

Pure NumPy/SciPy accumulators that can be dropped into any evaluation loop (BasicIRSTD- or
LESPS-style: call :meth:`ISTDMetrics.update` once per test image or batch, then
:meth:`ISTDMetrics.compute`). Nothing here needs the compiled ops.

Definitions (everything is evaluated at the image's native resolution; nothing is resized)
-------------------------------------------------------------------------------------------
Inputs
    ``pred`` and ``target`` are NumPy arrays or torch tensors (converted with
    ``.detach().cpu().numpy()``) of shape ``(H, W)`` (one image), ``(B, H, W)`` (a batch) or
    ``(B, 1, H, W)`` (a batch with a channel axis, which is squeezed). After that normalisation
    both must have the same ``(B, H, W)`` shape, else ``ValueError`` naming both shapes.

Binarisation (:func:`binarize`)
    * ``bool``: as is;
    * ``uint8`` (0/255 masks): ``value > 127``;
    * float (probabilities in [0, 1]): ``value > threshold`` (``threshold = 0.5`` by default, so
      exactly 0.5 is negative). A NaN anywhere raises ``ValueError``.
    * other integer dtypes (e.g. int64 0/1 label tensors) are compared like floats,
      ``value > threshold``.

    Predictions use the metric's ``threshold``; ground truth always uses the default rules
    (bool; uint8 ``> 127``; float ``> 0.5``).

IoU (dataset level, percent)
    ``100 * sum_images |P ∩ G| / sum_images |P ∪ G|``; ``nan`` when the total union is 0.

nIoU (mean of per-image IoU, percent)
    ``100 * mean_i(|P_i ∩ G_i| / |P_i ∪ G_i|)`` over the images whose union is non-empty. An image
    with neither a target nor a predicted pixel has nothing to segment and is *skipped* (it
    neither raises nor lowers nIoU); ``nan`` when no image counted.

Pd and Fa (target level)
    Targets are the 8-connected components (``scipy.ndimage.label`` with a 3x3 structure of
    ones) of ``G``; predicted objects are the 8-connected components of ``P``. The centroid of
    a component is the mean ``(y, x)`` of its pixels (not rounded). Ground-truth targets are
    visited in label order (raster order of their first pixel); each is matched to one predicted
    component that is still unmatched and whose centroid lies at Euclidean distance strictly
    less than ``match_distance`` (3 px by default) from the target's centroid. Which one is the
    ``pd_match`` rule (:data:`PD_MATCH_RULES`):

    * ``"nearest"`` (default): the nearest such component (ties: the lower predicted label);
    * ``"first"``: the first such component in label order, as BasicIRSTD's and LESPS'
      ``PD_FA.update`` takes it (it walks the remaining predicted regions in order and removes
      the first one within the distance). The two differ only where two unmatched predicted
      components lie within the distance of one target.

    Matching is one-to-one.

    * ``pd = 100 * matched targets / all targets`` (percent; ``nan`` when there is no target);
    * ``fa = 1e6 * (pixels of unmatched predicted components) / (all pixels of all images)``
      (false-alarm pixels per million pixels; ``nan`` before any image). Pixels of matched
      predicted components are never false alarms, even where they lie outside the target.
      (BasicIRSTD's and LESPS' code instead drops from Fa every unmatched component whose pixel
      count equals that of a matched one in the same image; both rules count the unmatched
      components here, so Fa differs from theirs only in such coincidences.)

Counts
    ``images``: images passed to ``update``; ``targets``: ground-truth components counted.
"""

from typing import Dict, Tuple

import numpy as np
from scipy import ndimage

__all__ = ["binarize", "match_targets", "component_moments", "IoUMetric", "PdFaMetric", "ISTDMetrics", "PD_MATCH_RULES"]

#: How a ground-truth target picks among the predicted components within the distance (see the
#: module docstring): the nearest one, or the first in label order (BasicIRSTD / LESPS).
PD_MATCH_RULES = ("nearest", "first")

#: The 3x3 structuring element of 8-connectivity: what a "target" (a connected component) is,
#: here and everywhere in d2d_ext that labels components.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _to_numpy(x) -> np.ndarray:
    """A NumPy view/copy of ``x`` (torch tensors via ``.detach().cpu().numpy()``)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor (without importing torch here)
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def binarize(x, threshold: float = 0.5, *, name: str = "input") -> np.ndarray:
    """Binarise a mask or probability map, keeping its shape.

    Args:
        x: NumPy array or torch tensor of any shape: ``bool`` (used as is), ``uint8`` 0/255 mask
            (``> 127``), float probabilities (``> threshold``; exactly ``threshold`` is
            negative) or another integer dtype (``> threshold``).
        threshold: the cut for float (and non-uint8 integer) inputs.
        name: how error messages call ``x``.

    Returns:
        ``np.ndarray`` of dtype ``bool`` and the shape of ``x``.

    Raises:
        ValueError: ``x`` is floating point and contains NaN.
        TypeError: ``x`` is neither boolean, integer nor real floating point.
    """
    a = _to_numpy(x)
    if a.dtype == np.bool_:
        return a
    if a.dtype == np.uint8:
        return a > 127
    if np.issubdtype(a.dtype, np.floating):
        if np.isnan(a).any():
            raise ValueError(f"d2d_ext.metrics: {name} contains NaN")
        return a > threshold
    if np.issubdtype(a.dtype, np.integer):
        return a > threshold
    raise TypeError(
        f"d2d_ext.metrics: {name} must be bool, integer or float, got dtype {a.dtype}"
    )


def _as_batch(a: np.ndarray, name: str) -> np.ndarray:
    """``(H, W)`` -> ``(1, H, W)``; ``(B, H, W)`` as is; ``(B, 1, H, W)`` -> ``(B, H, W)``."""
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        return a
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    raise ValueError(
        f"d2d_ext.metrics: {name} must have shape (H, W), (B, H, W) or (B, 1, H, W), "
        f"got {tuple(a.shape)}"
    )


def _prepare(pred, target, threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """Validate and binarise a (pred, target) pair into two bool ``(B, H, W)`` arrays."""
    p_raw, g_raw = _to_numpy(pred), _to_numpy(target)
    p = _as_batch(p_raw, "pred")
    g = _as_batch(g_raw, "target")
    if p.shape != g.shape:
        raise ValueError(
            f"d2d_ext.metrics: pred shape {tuple(p_raw.shape)} does not match "
            f"target shape {tuple(g_raw.shape)}"
        )
    return binarize(p, threshold, name="pred"), binarize(g, 0.5, name="target")


def _components(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components of a bool ``(H, W)`` mask.

    Returns:
        ``(areas, cy, cx)``: per component (in label order) its pixel count and the mean row and
        column of its pixels; each of shape ``(n,)``.
    """
    labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
    return component_moments(mask, labels, n)


def component_moments(mask: np.ndarray, labels: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(areas, cy, cx)`` of the ``n`` components that ``labels`` ``(H, W)`` (1..n, 0 outside)
    numbers in bool ``mask`` ``(H, W)`` (nonzero exactly where ``mask`` is): per component, in
    label order, its pixel count and the mean row and column of its pixels; each ``(n,)``."""
    if n == 0:
        empty = np.zeros(0, dtype=np.float64)
        return np.zeros(0, dtype=np.int64), empty, empty
    # foreground pixels only (cheap for sparse masks), found on the bool mask: the same pixels in
    # the same order as on the labels, several times faster on a whole frame
    idx = np.flatnonzero(mask)
    lab = labels.ravel()[idx]
    w = mask.shape[1]
    areas = np.bincount(lab, minlength=n + 1)[1:]
    cy = np.bincount(lab, weights=idx // w, minlength=n + 1)[1:] / areas
    cx = np.bincount(lab, weights=idx % w, minlength=n + 1)[1:] / areas
    return areas.astype(np.int64), cy, cx


def _check_pd_match(pd_match: str) -> str:
    if pd_match not in PD_MATCH_RULES:
        raise ValueError(f"d2d_ext.metrics: pd_match must be one of {PD_MATCH_RULES}, got {pd_match!r}")
    return pd_match


def match_targets(pred_bool, gt_bool, max_distance: float = 3.0, pd_match: str = "nearest") -> Tuple[int, int, int]:
    """Match the ground-truth targets of one image to its predicted components.

    Args:
        pred_bool: ``(H, W)`` predicted mask (bool; other dtypes go through :func:`binarize`).
        gt_bool: ``(H, W)`` ground-truth mask, same shape.
        max_distance: a match needs centroid distance strictly below this (pixels).
        pd_match: ``"nearest"`` or ``"first"`` (see the module docstring).

    Returns:
        ``(n_targets, n_matched, false_alarm_pixels)``: the number of 8-connected ground-truth
        components, how many of them were matched (greedy in label order, each to the nearest,
        or the first in label order, still-unmatched predicted component within the distance,
        one-to-one), and the pixel count of the predicted components left unmatched.
    """
    _check_pd_match(pd_match)
    p = binarize(pred_bool, name="pred")
    g = binarize(gt_bool, name="target")
    if p.ndim != 2 or g.ndim != 2 or p.shape != g.shape:
        raise ValueError(
            "d2d_ext.metrics.match_targets: pred and target must be 2-D of the same shape, "
            f"got {tuple(p.shape)} and {tuple(g.shape)}"
        )
    _, gy, gx = _components(g)
    p_area, py, px = _components(p)
    n_t, n_p = gy.size, py.size
    if n_t == 0 or n_p == 0:
        return int(n_t), 0, int(p_area.sum())
    # Squared distances (n_t, n_p); comparing squares keeps exact integer cases exact.
    d2 = (gy[:, None] - py[None, :]) ** 2 + (gx[:, None] - px[None, :]) ** 2
    d2[d2 >= float(max_distance) ** 2] = np.inf
    free = np.ones(n_p, dtype=bool)
    matched = 0
    for t in range(n_t):  # few targets per image; the greedy order is inherently sequential
        row = np.where(free, d2[t], np.inf)
        # argmin: the nearest (ties: lowest label); argmax of "within reach": the lowest label
        j = int(np.argmin(row)) if pd_match == "nearest" else int(np.argmax(np.isfinite(row)))
        if np.isfinite(row[j]):
            free[j] = False
            matched += 1
    return int(n_t), matched, int(p_area[free].sum())


class IoUMetric:
    """Accumulates dataset-level IoU and the mean per-image IoU (nIoU).

    ``update(pred, target)`` takes ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` arrays/tensors;
    ``compute()`` returns ``{"iou": percent, "niou": percent}`` (``nan`` where undefined, see
    the module docstring).
    """

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        self.total_inter = 0  # pixels, summed over images
        self.total_union = 0
        self.niou_sum = 0.0  # sum of per-image IoU (fractions) over counted images
        self.niou_count = 0  # images with a non-empty union

    def update(self, pred, target) -> None:
        p, g = _prepare(pred, target, self.threshold)
        self._update_bool(p, g)

    def _update_bool(self, p: np.ndarray, g: np.ndarray) -> None:
        inter = np.logical_and(p, g).sum(axis=(1, 2), dtype=np.int64)
        union = np.logical_or(p, g).sum(axis=(1, 2), dtype=np.int64)
        self.total_inter += int(inter.sum())
        self.total_union += int(union.sum())
        counted = union > 0
        self.niou_sum += float((inter[counted] / union[counted]).sum())
        self.niou_count += int(counted.sum())

    def compute(self) -> Dict[str, float]:
        iou = 100.0 * self.total_inter / self.total_union if self.total_union else float("nan")
        niou = 100.0 * self.niou_sum / self.niou_count if self.niou_count else float("nan")
        return {"iou": iou, "niou": niou}


class PdFaMetric:
    """Accumulates the probability of detection (Pd, percent) and the false-alarm rate (Fa, per
    million pixels) with centroid matching (see :func:`match_targets`).

    ``update(pred, target)`` takes ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` arrays/tensors;
    ``compute()`` returns ``{"pd": percent, "fa": false-alarm pixels per 1e6 pixels}``.
    ``pd_match``: ``"nearest"`` (default) or ``"first"`` (BasicIRSTD's rule; see the module
    docstring).
    """

    def __init__(self, threshold: float = 0.5, match_distance: float = 3.0, pd_match: str = "nearest"):
        if not match_distance > 0:
            raise ValueError(f"d2d_ext.metrics: match_distance must be > 0, got {match_distance}")
        self.threshold = float(threshold)
        self.match_distance = float(match_distance)
        self.pd_match = _check_pd_match(pd_match)
        self.reset()

    def reset(self) -> None:
        self.n_targets = 0  # ground-truth components
        self.n_matched = 0
        self.false_alarm_pixels = 0
        self.total_pixels = 0  # all pixels of all images (Fa's denominator)

    def update(self, pred, target) -> None:
        p, g = _prepare(pred, target, self.threshold)
        self._update_bool(p, g)

    def _update_bool(self, p: np.ndarray, g: np.ndarray) -> None:
        for pi, gi in zip(p, g):
            n_t, n_m, fa_px = match_targets(pi, gi, self.match_distance, self.pd_match)
            self.n_targets += n_t
            self.n_matched += n_m
            self.false_alarm_pixels += fa_px
        self.total_pixels += int(p.size)

    def compute(self) -> Dict[str, float]:
        pd = 100.0 * self.n_matched / self.n_targets if self.n_targets else float("nan")
        fa = float("nan")
        if self.total_pixels:
            fa = 1e6 * self.false_alarm_pixels / self.total_pixels
        return {"pd": pd, "fa": fa}


class ISTDMetrics:
    """Accumulates IoU, nIoU, Pd and Fa over images; usable from other codebases
    (BasicIRSTD/LESPS-style loops).

    Args:
        threshold: cut for float predictions (``pred > threshold``); ground truth always uses the
            default rules of :func:`binarize`.
        match_distance: centroid distance (pixels) below which a prediction detects a target.
        pd_match: ``"nearest"`` (default): a target takes the nearest predicted component within
            the distance; ``"first"``: the first in label order, as BasicIRSTD / LESPS do.

    ``update(pred, target)`` takes one image ``(H, W)`` or a batch ``(B, H, W)`` /
    ``(B, 1, H, W)``, as NumPy arrays or torch tensors. ``compute()`` returns
    ``{"iou", "niou", "pd"}`` in percent, ``"fa"`` per 1e6 pixels, and the ints ``"images"`` and
    ``"targets"``. Definitions are in the module docstring.
    """

    def __init__(self, threshold: float = 0.5, match_distance: float = 3.0, pd_match: str = "nearest"):
        self.threshold = float(threshold)
        self.match_distance = float(match_distance)
        self.pd_match = pd_match
        self.iou_metric = IoUMetric(threshold)
        self.pdfa_metric = PdFaMetric(threshold, match_distance, pd_match)
        self.images = 0

    def reset(self) -> None:
        self.iou_metric.reset()
        self.pdfa_metric.reset()
        self.images = 0

    def update(self, pred, target) -> None:
        # Validate and binarise once, before touching any state (a bad input leaves it intact).
        p, g = _prepare(pred, target, self.threshold)
        self.iou_metric._update_bool(p, g)
        self.pdfa_metric._update_bool(p, g)
        self.images += int(p.shape[0])

    def compute(self) -> dict:
        out = {}
        out.update(self.iou_metric.compute())
        out.update(self.pdfa_metric.compute())
        out["images"] = self.images
        out["targets"] = self.pdfa_metric.n_targets
        return out
