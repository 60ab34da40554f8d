"""Pseudo-mask quality of the annotator on every dataset, each reported apart (markdown table).

    python benchmarks/annotation/annotation_datasets.py [--data DIR] [--synthetic-seeds 0,1]
        [--worst 3] [--style glow] [--set NAME=VALUE ...] [--settings FILE.json] [--theta NAME=VALUE ...] [--soft [--soft-odds P,Q]]
        [--dilate N] [--glow F] [--against FILE.py]
        [--repeats N] [--map OFFSET,GAIN] [--hot beside|FRACTION [--repair]] [--saturate SIZE]
        [--reticle W [--repair | --find-map]] [--crop SIZE]
        [--mosaic N [--mosaic-gap G]] [--jitter N] [--zoom F] [--shrink F] [--blur SIGMA] [--smear L] [--noise F]
        [--stripes F] [--row-stripes F]
        [--jpeg Q] [--equalize global|local] [--ramp F] [--levels N]
        [--pad N [--pad-median] [--pad-noise SD] [--pad-jpeg Q]]
        [--out FILE.md]

Sets, loaded once: every real dataset under ``--data`` (default ``<workspace>/shared/data``; the
BasicIRSTD / LESPS layout) split by split (``img_idx/<split>_<name>.txt``; SIRST-v1's LESPS
train/test halves, the other datasets' one listed split), with the LESPS centroid points
(``masks_centroid``); then, per ``--synthetic-seeds`` seed, 60 SIRST-like 256x256 scenes and 24
512x512 scenes with extended targets (areas log-uniform 2 to 3000 px), from their human-like
points. On each set, side by side in one process: ours (with ``--set`` / ``--settings``) and the
local-threshold baseline (mean + 1 std in 15x15, the component of the point).

Columns: IoU (pooled over the set), nIoU, Pd, Fa (``d2d_ext.metrics.ISTDMetrics``, native
resolution), pixel precision and recall (pooled), the worst image's false-alarm pixels (pixels of
its predicted components that match no target, as Fa counts them) and ms per target (compute only,
one torch thread, chunks of 16 images). ``--worst K`` lists each set's K images with the most
false-alarm pixels under the table, and its K targets with the most missed pixels: a mean hides
them. Under those, where each set's wrong pixels lie: every target's mask (the predicted
components that touch it) by its size against the target's (none, under half, about right, over
twice), with the target pixels it misses and the pixels it takes beyond the target; then each
method's IoU with its 95% interval over the set's images (:func:`iou_interval`, a bootstrap): a
set is one sample of its kind of images, and a held-out split of the same kind may score anywhere
in it. Then where each set's masks lie against their targets (:func:`target_offsets`): the
mean offset of the ground truth's and of ours from the targets' intensity centroids, which shows
a dataset whose masks were drawn off their images by a fraction of a pixel. ``--theta NAME=VALUE``
sets a diffusion parameter's centre (:class:`~d2d_ext.annotate.DiffusionParams`) for ours (and
``--against``'s); ``--soft`` also scores ours' soft labels, what ``d2d annotate --soft`` writes,
against the ground truth in both soft styles (``--soft-style``; :func:`soft_score`: their pooled soft IoU,
the best single threshold's IoU, the IoU at 0.5 and the squared error). ``--dilate N``
scores against every ground-truth mask grown by N pixels (8-connected): a stand-in for
datasets whose annotators draw generous masks, to see what a change costs them; ``--glow F``
draws each target's glow into its mask instead (the pixels within 3 of it above ``F`` of its
contrast, :func:`glow_mask`). ``--against FILE.py`` adds the rows of another
version of the annotator (its ``annotate.py``, e.g. ``git show REV:d2d_ext/annotate.py >
FILE.py``), run in the same process, its passes interleaved with ours: run-to-run timing noise on
a shared machine is larger than many changes. ``--repeats N`` times each method N times and
keeps the fastest pass (quality is the same every time). ``--map OFFSET,GAIN`` annotates every
image as ``OFFSET + GAIN * I`` (float32): a stand-in for a sensor whose frames span a few hundred
counts of a 16-bit range, to see that nothing depends on an absolute intensity. ``--hot beside``
sets one pixel beside every point (an 8-neighbour drawn with a fixed seed) to 1, a stuck sensor
pixel next to each target: the worst case for the snap to the brightest pixel of the point's 3x3;
``--hot FRACTION`` sets that fraction of every image's pixels, drawn at random, to 1 (a sensor's
uncorrected hot pixels); ``--repair`` then repairs them from their map before annotating, as
``d2d annotate --bad-pixels`` does. ``--saturate SIZE`` sets a SIZE x SIZE block at least
:data:`SATURATE_CLEAR` pixels from every target to 1 (after ``--map``: the sun or a flare filling a raw frame's range).
``--reticle W`` burns a crosshair W pixels wide, at 1, through every image's middle, never over a
target's pixels (:func:`add_reticle`: a display's on-screen overlay that a frame grabbed from a
camera's video output carries; ``--repair`` then repairs its pixels from the overlay's map, as
``d2d annotate --bad-pixels`` does, and ``--find-map`` from the map that ``d2d find-bad-pixels``'
search makes of the set's own frames: :func:`repair_from_found`). ``--pad N`` pads every image by
N pixels of 0 (``--pad-median``: of its median) on each side, last (:func:`pad_set`): a picture
letterboxed into a video frame, or images padded to one size; ``--pad-noise SD`` puts Gaussian noise of that
deviation in the padding (the dark bars of a frame captured from a camera's video output, which
are no longer one value, so that the picture's bright regions end inside the frame);
``--pad-jpeg Q`` then writes every padded frame as 8-bit JPEG at quality Q, padding and picture
coded together. ``--crop SIZE`` scores every set as SIZE x SIZE crops, one per target, with the
crop's own centroid points (:func:`crop_set`): targets near a frame's edge, and clutter that the
edge cuts, which whole frames seldom show. ``--mosaic N`` scores every set as frames of N x N of
its images tiled (:func:`mosaic_set`): large frames of many targets, where a target's windows, up
to the widest, reach the clutter around it that a small image's edge cuts off (``--mosaic-gap G``:
each image G pixels apart from the next, at its median). ``--jitter N`` moves every point by up to
``N`` whole pixels per axis (:func:`jitter_points`): clicks that miss the centroid. ``--zoom F``
scores every set sampled ``F`` times finer (:func:`zoom_set`): a sensor of finer pixels, where
targets and clutter span more pixels than the windows were chosen on; its ground truth, replicated,
keeps the coarse pixels' outline, so the output also scores each method's masks on the finer
images against its masks on the images as they are (:func:`sampling_agreement`, no ground truth
read); ``--shrink F`` samples it
``F`` times coarser (:func:`shrink_set`): a sensor of coarser pixels, whose targets of a few pixels
become one and whose gaps of a pixel between a target and the clutter beside it close.
``--blur SIGMA`` blurs every image by a Gaussian (:func:`blur_images`, before the noise): optics
softer than the pixels, which spread each target and fill the same gaps; ``--smear L`` averages
every image over ``L`` pixels along its rows (:func:`smear_images`, after the blur): a sensor that
panned while it integrated, which spreads each target sideways into what lies beside it.
``--noise F``,
``--stripes F`` and ``--row-stripes F`` add sensor noise of ``F`` times each image's own pixel
noise (:func:`add_sensor_noise`): white, an offset per column (the column fixed-pattern noise of
an uncooled sensor's readout) or an offset per row (its row noise), before ``--map`` and
``--hot``. ``--jpeg Q`` reads every image after
an 8-bit JPEG round trip at quality ``Q`` (:func:`jpeg_round_trip`, after the noise): datasets
shipped as JPEG files, whose 8x8 blocks smooth a faint target away and draw edges in clutter.
``--equalize global`` / ``local`` passes every image through a camera's display map
(:func:`equalize_images`, after the noise, before the JPEG round trip): global histogram
equalization, or a contrast-limited one per tile (CLAHE), each to 8 bits, as the automatic gain
control of many infrared cameras writes its frames; the masks stay those drawn on the linear
images. ``--ramp F`` adds to every image a plane that rises by ``F`` times the image's range across its
larger side, each image in its own seeded direction (:func:`add_ramp`, after the JPEG round
trip): a background that is not flat (a sky's gradient towards the horizon, a lens's shading),
seen through each target's windows as a slope. ``--levels N`` rounds every image to ``N`` grey
levels over [0, 1] (:func:`quantize_images`, last): a converter or a file of fewer bits than the
scene's contrast needs, which cuts a faint target to a few steps. ``probe_sweep.py`` runs a
change to the annotator under all of these at once (its ``PROBES``) and compares two such runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio  # scikit-image's own image I/O (its dependency), for --jpeg
import numpy as np
import torch
from scipy import ndimage
from skimage import exposure

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: md_table, workspace
from md_table import command_line, emit  # noqa: E402
from workspace import SHARED_DATA  # noqa: E402

import d2d_ext.annotate as annotate_module
from d2d_ext.annotate import SOFT_STYLES, STYLES, DiffusionParams, MaskOdds, config_from_dict
from d2d_ext.baselines import local_threshold_masks
from d2d_ext.calibrate import checked_settings, load_settings
from d2d_ext.cli import parse_settings
from d2d_ext.data import DataError, IRDataset
from d2d_ext.metrics import EIGHT_CONNECTED, ISTDMetrics, match_targets
from d2d_ext.morphology import grow
from d2d_ext.points import centroid_points, coarse_points, point_pixel
from d2d_ext.sensor import HotPixelSearch
from d2d_ext.sensor import repair as repair_pixels
from d2d_ext.synthetic import make_scene
from d2d_ext.windows import pixel_noise

DEFAULT_DATA = SHARED_DATA
CHUNK = 16


@dataclass
class EvalSet:
    """One scored set: images ``(H, W)`` in [0, 1], points ``(K, 2)`` (x, y), ground-truth masks."""

    name: str
    ids: list
    images: list
    points: list
    masks: list

    @property
    def targets(self) -> int:
        return sum(len(p) for p in self.points)


@dataclass
class Score:
    """A method's result on one set."""

    iou: float
    niou: float
    pd: float
    fa: float
    precision: float
    recall: float
    worst: list  # [(false-alarm pixels, image id)], most first
    ms: float  # per target
    stages: dict | None = None  # ms per target by stage of the annotator (its last_seconds), fastest pass
    by_mask: dict | None = None  # mask class -> TargetErrors (see target_errors)
    most_missed: list | None = None  # [(missed pixels, image id, target pixels, mask pixels)], most first
    # the pooled IoU's 95% interval over the set's images (iou_interval): how far another sample of
    # images like these, a held-out split, may score from this one
    iou_interval: tuple | None = None
    # mean (rows, columns) of the targets' ground-truth and predicted mask centroids from their
    # intensity centroids (target_offsets), None without a target read
    offsets: tuple | None = None


@dataclass
class TargetErrors:
    """The wrong pixels of a set's targets of one mask class (see :func:`target_errors`)."""

    targets: int = 0
    missed: int = 0  # target pixels no touching component holds
    extra: int = 0  # pixels of the touching components outside the target


MASK_CLASSES = ("no mask", "under half", "about right", "over twice")


@dataclass
class Agreement:
    """A method's masks on a set sampled finer against its masks on the set as it is, each pixel of
    those replicated to the finer grid (see :func:`sampling_agreement`)."""

    iou: float  # percent, pooled over the set's images
    coarse: int  # pixels of the replicated masks
    fine: int  # pixels of the masks on the finer images
    worst: list  # [(pixels in one of the two masks only, image id)], most first


def target_errors(pred: np.ndarray, gt: np.ndarray) -> list:
    """Per ground-truth target (8-connected): ``(target pixels, mask pixels, pixels of both,
    mask class)``, where the mask is the predicted components that touch the target and the class
    says how its size compares with the target's (``MASK_CLASSES``: none, under half, within a
    factor of 2, over twice). Where a set's wrong pixels lie: a mean hides a target cut to its
    peak as well as one that took a building."""
    targets, n = ndimage.label(gt, EIGHT_CONNECTED)
    comps, _ = ndimage.label(pred, EIGHT_CONNECTED)
    out = []
    for k in range(1, n + 1):
        t = targets == k
        touching = np.unique(comps[t & (comps > 0)])
        mask = np.isin(comps, touching) if touching.size else np.zeros_like(t)
        area, size, both = int(t.sum()), int(mask.sum()), int((mask & t).sum())
        cls = MASK_CLASSES[0 if size == 0 else 1 if size < 0.5 * area else 3 if size > 2 * area else 2]
        out.append((area, size, both, cls))
    return out


#: target_offsets: the targets read (pixels; a point target's centroid is its one pixel, a large
#: target's intensity runs past the reach below) and how far around a target its intensity is
#: read (REGION) and its background ring lies (RING, beyond REGION), in chessboard pixels
OFFSET_SIZES = (6, 400)
OFFSET_REGION, OFFSET_RING = 3, 5


def target_offsets(image: np.ndarray, pred: np.ndarray, gt: np.ndarray) -> list:
    """Per ground-truth target (8-connected) of ``OFFSET_SIZES`` pixels: ``(ground truth's
    offset, prediction's offset or None)``, each ``(rows, columns)`` of the mask's centroid from
    the target's intensity centroid (the image above the median of a ring around the target,
    weighted, over the pixels within ``OFFSET_REGION`` of it; the prediction's pixels there).
    Where a dataset's masks were drawn on a resampled image they sit off their targets by a
    fraction of a pixel, which no threshold of the image reaches."""
    targets, n = ndimage.label(gt, EIGHT_CONNECTED)
    out = []
    for k, (rows, cols) in enumerate(ndimage.find_objects(targets), start=1):
        m = OFFSET_REGION + OFFSET_RING
        y0, x0 = max(rows.start - m, 0), max(cols.start - m, 0)
        cut = np.s_[y0:rows.stop + m, x0:cols.stop + m]
        t = targets[cut] == k
        if not OFFSET_SIZES[0] <= t.sum() <= OFFSET_SIZES[1]:
            continue
        region = ndimage.binary_dilation(t, EIGHT_CONNECTED, iterations=OFFSET_REGION)
        ring = ndimage.binary_dilation(region, EIGHT_CONNECTED, iterations=OFFSET_RING) & ~region
        weight = np.clip(image[cut].astype(np.float64) - np.median(image[cut][ring]), 0, None) * region
        if not ring.any() or weight.sum() <= 0:
            continue
        ys, xs = np.indices(t.shape)
        centre = np.array([(weight * ys).sum(), (weight * xs).sum()]) / weight.sum()
        mine = pred[cut] & region
        out.append((tuple(np.argwhere(t).mean(0) - centre),
                    tuple(np.argwhere(mine).mean(0) - centre) if mine.any() else None))
    return out


GLOW_REACH = 3  # --glow: how far (chessboard pixels) beyond a ground-truth target its glow is drawn


def glow_mask(image: np.ndarray, mask: np.ndarray, fraction: float, reach: int = GLOW_REACH) -> np.ndarray:
    """``mask`` ``(H, W)`` bool with each target's glow drawn in, as annotators who mark the faint
    halo around a target do: per 8-connected target, the pixels within ``reach`` rings of it
    (chessboard distance) whose intensity is at least ``bg + fraction * (peak - bg)``, where that
    joins them to the target (8-connected); ``peak`` is the target's brightest pixel of ``image``
    and ``bg`` the median of the three rings beyond ``reach``. A stand-in for a dataset whose
    masks follow another style than the ones the defaults were chosen on, less tied to the
    annotator's own edge than a uniform growth (``--dilate``)."""
    labels, _ = ndimage.label(mask, EIGHT_CONNECTED)
    out = mask.copy()
    H, W = mask.shape
    m = reach + 3
    for k, (rows, cols) in enumerate(ndimage.find_objects(labels), 1):
        y0, y1, x0, x1 = max(rows.start - m, 0), min(rows.stop + m, H), max(cols.start - m, 0), min(cols.stop + m, W)
        target, img = labels[y0:y1, x0:x1] == k, image[y0:y1, x0:x1]
        near = grow(target, reach)
        ring = grow(target, m) & ~near
        if not ring.any():
            continue
        bg = float(np.median(img[ring]))
        bright = near & (img >= bg + fraction * (float(img[target].max()) - bg))
        joined, _ = ndimage.label(bright | target, EIGHT_CONNECTED)
        out[y0:y1, x0:x1] |= np.isin(joined, np.unique(joined[target]))
    return out


def restyle(s: "EvalSet", dilate: int = 0, glow: float = 0.0) -> None:
    """Replaces ``s``'s ground-truth masks by another style's: grown by ``dilate`` pixels (3x3,
    ``dilate`` times), or with each target's glow drawn in (:func:`glow_mask` at ``glow``)."""
    if dilate > 0:
        s.masks = [grow(m, dilate) for m in s.masks]
    if glow > 0:
        s.masks = [glow_mask(im, m, glow) for im, m in zip(s.images, s.masks)]


def real_sets(data: Path, names=None) -> list:
    """Every ``DATA/<name>`` dataset, split by split (SIRST-v1's LESPS halves, else its splits)."""
    out = []
    for root in sorted(p for p in Path(data).iterdir() if (p / "images").is_dir()):
        if names and root.name not in names:
            continue
        ds = IRDataset(root)
        # the dataset's own split files (<split>_<name>.txt; SIRST-v1 also lists other splits'
        # files), else every split file
        files = [f for f in ds.split_files() if f.name.endswith(f"_{ds.name}.txt")] or ds.split_files()
        order = {"train": 0, "val": 1, "test": 2}
        for f in sorted(files, key=lambda f: (order.get(f.name.split("_")[0], 3), f.name)):
            out.append(load_set(ds, f"{ds.name} {f.name.split('_')[0]}", ds.ids(str(f))))
    return out


def load_set(ds: IRDataset, name: str, ids: list) -> EvalSet:
    """Images ``ids`` of ``ds`` with their LESPS centroid points and masks, loaded once."""
    return EvalSet(name, ids, [ds.load_image(i) for i in ids], [ds.points(i, "centroid") for i in ids],
                   [ds.load_mask(i) for i in ids])


def scene_set(name: str, scenes: list) -> EvalSet:
    """Synthetic scenes (:class:`d2d_ext.synthetic.Scene`) as a set named ``name``, ids
    ``scene<i>``, with their own points and exact masks."""
    return EvalSet(name, [f"scene{i}" for i in range(len(scenes))], [s.image for s in scenes],
                   [s.points for s in scenes], [s.mask > 0 for s in scenes])


# the synthetic sets: kind -> (scenes per seed, side in pixels, target areas or None for the generator's own)
SYNTHETIC_KINDS = {"SIRST-like 256": (60, 256, None), "extended 512": (24, 512, (2.0, 3000.0))}


def synthetic_scene(seed: int, kind: str, index: int):
    """Scene ``index`` of the synthetic set ``kind`` (a key of :data:`SYNTHETIC_KINDS`) of ``seed``:
    a :class:`d2d_ext.synthetic.Scene`, the same as that set holds."""
    _, size, area = SYNTHETIC_KINDS[kind]
    kw = {} if area is None else {"area_range": area}
    return make_scene(np.random.default_rng([seed, 7, index]), size, size, "mixed", **kw)


def synthetic_sets(seeds) -> list:
    return [scene_set(f"synthetic {kind}, seed {seed}", [synthetic_scene(seed, kind, i) for i in range(n)])
            for seed in seeds for kind, (n, _, _) in SYNTHETIC_KINDS.items()]


EQUALIZE = ("global", "local")  # --equalize: the display maps (see equalize_images)
CROP_MARGIN = 8  # --crop: a target's point lies at least this far inside its crop, where the image allows


def crop_set(s: EvalSet, size: int, seed: int = 0) -> EvalSet:
    """``s`` as a dataset of ``size`` x ``size`` crops, as some datasets are cut from larger frames:
    one crop per target (of the images at least that large) at a seeded random place that holds the
    target's point at least ``CROP_MARGIN`` pixels inside where the image allows, with the crop's
    own ground truth and its points at the centroids of the crop's targets (the LESPS centroid
    protocol, so that a target the crop cuts has the point its visible part would get). Targets
    near a crop's edge, and bright structures the edge cuts, are then common."""
    rng = np.random.default_rng([seed, size])
    ids, images, points, masks = [], [], [], []
    for i, image, pts, mask in zip(s.ids, s.images, s.points, s.masks):
        H, W = image.shape
        if H < size or W < size:
            continue
        for k, (x, y) in enumerate(np.asarray(pts, dtype=np.float64).reshape(-1, 2)):
            y0 = int(np.clip(int(y) - rng.integers(CROP_MARGIN, size - CROP_MARGIN), 0, H - size))
            x0 = int(np.clip(int(x) - rng.integers(CROP_MARGIN, size - CROP_MARGIN), 0, W - size))
            m = mask[y0:y0 + size, x0:x0 + size]
            ids.append(f"{i}@{k}")
            images.append(image[y0:y0 + size, x0:x0 + size])
            points.append(centroid_points(m))
            masks.append(m)
    return EvalSet(f"{s.name}, {size}x{size} crops", ids, images, points, masks)


def mosaic_set(s: EvalSet, n: int, gap: int = 0) -> EvalSet:
    """``s`` as frames of ``n`` x ``n`` of its images tiled in the set's order (the last frame
    holds what remains, row by row), each image in a cell of the frame's largest image height and
    width (plus ``gap`` pixels on each side), ``gap`` pixels in from the cell's top-left corner, the
    rest of the cell at the image's median; points and masks moved with their images; a frame's id
    names its first and last image (``a..d``).

    A stand-in for large frames of many targets (up to 1920x1080 and dozens of targets): every
    target's windows, up to the widest, reach the clutter that a small image's edge cuts off, and a
    frame holds many points. The seams between tiles are edges no sensor draws: a bright structure
    that a tile's edge cut is closed there by the next tile's darker one, or crossed by a brighter
    one, so a loss here names frames to look at, not yet a fault. With a ``gap``, every structure
    that an image's edge cuts ends in the gap at the image's median: the worst case of a frame whose
    clouds and buildings all end just beyond the part the dataset kept."""
    ids, images, points, masks = [], [], [], []
    for start in range(0, len(s.images), n * n):
        tiles = range(start, min(start + n * n, len(s.images)))
        h = max(s.images[k].shape[0] for k in tiles) + 2 * gap
        w = max(s.images[k].shape[1] for k in tiles) + 2 * gap
        rows = -(-len(tiles) // n)
        frame = np.zeros((rows * h, min(n, len(tiles)) * w), np.float32)
        mask = np.zeros(frame.shape, bool)
        pts = []
        for j, k in enumerate(tiles):
            y0, x0 = (j // n) * h, (j % n) * w
            frame[y0:y0 + h, x0:x0 + w] = np.median(s.images[k])
            y0, x0 = y0 + gap, x0 + gap
            ih, iw = s.images[k].shape
            frame[y0:y0 + ih, x0:x0 + iw] = s.images[k]
            mask[y0:y0 + ih, x0:x0 + iw] = s.masks[k]
            pts.append(np.asarray(s.points[k], dtype=np.float64).reshape(-1, 2) + [x0, y0])
        if len(tiles) % n:  # the last row's empty cells: the frame's median
            frame[(rows - 1) * h:, (len(tiles) % n) * w:] = np.median(frame[:(rows - 1) * h] if rows > 1 else frame)
        ids.append(f"{s.ids[tiles[0]]}..{s.ids[tiles[-1]]}" if len(tiles) > 1 else str(s.ids[tiles[0]]))
        images.append(frame)
        points.append(np.concatenate(pts))
        masks.append(mask)
    apart = f", {gap} px apart" if gap else ""
    return EvalSet(f"{s.name}, {n}x{n} mosaics{apart}", ids, images, points, masks)


def sampling_agreement(ids: list, coarse: list, fine: list, factor: int, worst: int = 3) -> Agreement:
    """How far the masks ``fine`` (each ``(H * factor, W * factor)`` bool) of the images ``ids``
    sampled ``factor`` times finer (:func:`zoom_set`) agree with the masks ``coarse`` (``(H, W)``)
    of the same images as they are, each pixel of those replicated ``factor`` x ``factor``: an
    annotator that read the scene and not the pixel grid would give the same masks on both. No
    ground truth is read, so none of the finer grid's ground truth's own bias (replicated from the
    coarse masks, it keeps their blocky outline) enters."""
    inter = union = n_coarse = n_fine = 0
    apart = []
    block = np.ones((factor, factor), dtype=bool)
    for iid, c, f in zip(ids, coarse, fine):
        up = np.kron(np.asarray(c, dtype=bool), block)
        if up.shape != f.shape:
            raise ValueError(f"sampling_agreement: image {iid}'s masks are {c.shape} and {f.shape}, "
                             f"not {factor} times apart")
        i, u = int((up & f).sum()), int((up | f).sum())
        inter, union = inter + i, union + u
        n_coarse, n_fine = n_coarse + int(up.sum()), n_fine + int(f.sum())
        apart.append((u - i, iid))
    apart.sort(key=lambda t: -t[0])
    return Agreement(100.0 * inter / union if union else 100.0, n_coarse, n_fine, apart[:worst])


def zoom_set(s: EvalSet, factor: int) -> EvalSet:
    """``s`` sampled ``factor`` times finer: every image upsampled by bilinear interpolation (pixel
    centres kept, edges held: ``align_corners=False``), every ground-truth mask by pixel
    replication, and the points at the centroids of the zoomed masks (the LESPS centroid
    protocol). A stand-in for a sensor of finer pixels (frames up to 1920x1080) that sees the same
    scenes: targets and clutter both span ``factor`` times more pixels, and the noise is
    correlated over about ``factor`` pixels."""
    images, points, masks = [], [], []
    for image, mask in zip(s.images, s.masks):
        fine = torch.nn.functional.interpolate(torch.from_numpy(np.float32(image))[None, None], scale_factor=factor,
                                               mode="bilinear", align_corners=False)
        m = np.kron(mask, np.ones((factor, factor), dtype=bool))
        images.append(fine[0, 0].numpy())
        masks.append(m)
        points.append(centroid_points(m))
    return EvalSet(f"{s.name}, zoomed {factor}x", list(s.ids), images, points, masks)


def shrink_set(s: EvalSet, factor: int) -> EvalSet:
    """``s`` sampled ``factor`` times coarser: every image the mean of each ``factor`` x
    ``factor`` block (the rows and columns beyond a whole block dropped), a coarse pixel target
    where at least half its block is, and the points at the centroids of the coarse masks (the
    LESPS centroid protocol; a target that no coarse pixel keeps has no point). A stand-in for a
    sensor of coarser pixels that sees the same scenes: targets of a few pixels shrink to one,
    and a gap of a pixel between a target and the clutter beside it closes."""
    images, points, masks = [], [], []
    for image, mask in zip(s.images, s.masks):
        H, W = image.shape[0] // factor * factor, image.shape[1] // factor * factor
        blocks = (H // factor, factor, W // factor, factor)
        images.append(np.float32(np.float64(image[:H, :W]).reshape(blocks).mean(axis=(1, 3))))
        m = mask[:H, :W].reshape(blocks).mean(axis=(1, 3)) >= 0.5
        masks.append(m)
        points.append(centroid_points(m))
    return EvalSet(f"{s.name}, {factor}x coarser", list(s.ids), images, points, masks)


def blur_images(s: EvalSet, sigma: float) -> None:
    """Blurs every image of ``s`` by a Gaussian of ``sigma`` pixels (the edges mirrored), leaving
    its masks and points: optics softer than the sensor's pixels (see ``--blur``). A target keeps
    its place and spreads; the gap between it and the clutter beside it fills in."""
    s.images = [np.float32(ndimage.gaussian_filter(np.float64(image), sigma, mode="mirror")) for image in s.images]


def smear_images(s: EvalSet, length: int) -> None:
    """Averages every image of ``s`` over ``length`` pixels along its rows (a box, the edges
    mirrored), leaving its masks and points: the sensor panned across the scene while it
    integrated. A target keeps its place and row and spreads sideways, into whatever lies beside
    it on its row."""
    s.images = [np.float32(ndimage.uniform_filter1d(np.float64(image), length, axis=1, mode="mirror"))
                for image in s.images]


def quantize_images(s: EvalSet, levels: int) -> None:
    """Rounds every image of ``s`` to ``levels`` grey levels evenly spaced over [0, 1] (values
    outside it clipped first), leaving its masks and points: a converter or a file of fewer bits
    than the scene's contrast needs, which cuts a faint target to a few steps and its background's
    noise to flat runs."""
    top = levels - 1
    s.images = [np.float32(np.round(np.clip(np.float64(image), 0.0, 1.0) * top) / top) for image in s.images]


def equalize_images(s: EvalSet, how: str) -> None:
    """Passes every image of ``s`` through a camera's display map, leaving its masks and points:
    ``"global"``, histogram equalization over 256 bins of the image's range (each grey level
    moves to its rank); ``"local"``, the contrast-limited equalization of tiles an eighth of the
    image's smaller side (CLAHE, clip limit 0.01). Both are written to 8 bits, as a camera's
    automatic gain control writes its frames. The map stretches the grey levels that many pixels
    share (the background) and squeezes the rare bright ones, a target's among them, into the top
    few levels."""
    if how not in EQUALIZE:
        raise ValueError(f"equalize_images: how must be one of {EQUALIZE}, got {how!r}")
    out = []
    for image in s.images:
        x = np.clip(np.float64(image), 0.0, 1.0)
        if how == "global":
            x = exposure.equalize_hist(x, nbins=256)
        else:
            x = exposure.equalize_adapthist(x, kernel_size=max(8, min(x.shape) // 8), clip_limit=0.01)
        out.append(np.float32(np.round(x * 255) / 255))
    s.images = out


def jitter_points(s: EvalSet, reach: int, seed: int = 0) -> None:
    """Moves every point of ``s`` by whole pixels, each axis by an offset drawn uniformly from
    ``-reach`` to ``reach`` (seeded), kept within its image: a stand-in for clicks that miss the
    centroid by a pixel or two (see ``--jitter``)."""
    rng = np.random.default_rng(seed)
    moved = []
    for image, points in zip(s.images, s.points):
        q = np.asarray(points, dtype=np.float64).reshape(-1, 2) + rng.integers(-reach, reach + 1, size=(len(points), 2))
        H, W = image.shape
        moved.append(np.stack([np.clip(q[:, 0], 0, W - 1), np.clip(q[:, 1], 0, H - 1)], axis=1))
    s.points = moved


def add_hot_pixels(s: EvalSet, how: str, seed: int = 0, repair: bool = False) -> None:
    """Sets pixels of every image of ``s`` to 1: one beside each point (``how == "beside"``) or a
    random fraction ``float(how)`` of each image's pixels (see ``--hot``); with ``repair``, then
    repairs them from their map as ``annotate --bad-pixels`` does (:func:`d2d_ext.sensor.repair`)."""
    rng = np.random.default_rng(seed)
    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    images = []
    for image, points in zip(s.images, s.points):
        image = image.copy()
        H, W = image.shape
        hot = np.zeros((H, W), bool)
        if how == "beside":
            for x, y in points:
                py, px = point_pixel(x, y, H, W)
                dy, dx = ring[rng.integers(len(ring))]
                hot[min(max(py + dy, 0), H - 1), min(max(px + dx, 0), W - 1)] = True
        else:
            n = max(1, round(float(how) * H * W))
            hot[rng.integers(0, H, n), rng.integers(0, W, n)] = True
        image[hot] = 1.0
        images.append(repair_pixels(image, hot) if repair else image)
    s.images = images


def pad_set(s: EvalSet, pad: int, median: bool = False, noise: float = 0.0, seed: int = 0) -> EvalSet:
    """``s`` with every image padded by ``pad`` pixels of 0 on each side (``median``: of the
    image's median), as a sensor's picture letterboxed into a video frame or a dataset's images
    padded to one size; masks padded with background and points moved to match. ``noise``: the
    padding carries Gaussian noise of that deviation about its value (seeded, clipped to [0, 1]),
    as the dark bars of a frame captured from a camera's video output do: no longer one value,
    they are read as scene, and the picture's bright regions end in them inside the frame."""
    rng = np.random.default_rng(seed)
    images = []
    for im in s.images:
        frame = np.pad(im, pad, constant_values=np.float32(np.median(im) if median else 0.0)).astype(np.float32)
        if noise > 0 and pad > 0:
            bars = np.ones(frame.shape, dtype=bool)
            bars[pad:-pad, pad:-pad] = False
            frame[bars] = np.clip(frame[bars] + noise * rng.standard_normal(int(bars.sum())), 0.0, 1.0)
        images.append(frame)
    points = [np.asarray(p, dtype=np.float64).reshape(-1, 2) + pad for p in s.points]
    return EvalSet(f"{s.name}, padded by {pad}", list(s.ids), images, points, [np.pad(m, pad) for m in s.masks])


#: --saturate: how far (pixels) the saturated block stays from every ground-truth target
SATURATE_CLEAR = 40


def add_saturated_block(s: EvalSet, size: int) -> None:
    """Sets a ``size`` x ``size`` block of every image of ``s`` to 1 (the sun, a flare: an object
    that fills the sensor's range), centred on the middle one (in raster order) of the pixels at
    least :data:`SATURATE_CLEAR` from every ground-truth target and whose block fits in the image;
    an image without such a pixel is left as it is."""
    images = []
    for image, mask in zip(s.images, s.masks):
        H, W = image.shape
        r = size // 2
        free = ~grow(mask, SATURATE_CLEAR) if mask.any() else np.ones((H, W), bool)
        free[:r], free[H - r:], free[:, :r], free[:, W - r:] = False, False, False, False
        ys, xs = np.nonzero(free)
        if len(ys):
            image = image.copy()
            y, x = ys[len(ys) // 2], xs[len(xs) // 2]
            image[y - r:y - r + size, x - r:x - r + size] = 1.0
        images.append(image)
    s.images = images


def crosshair(shape: tuple, width: int) -> np.ndarray:
    """``shape`` ``(H, W)`` bool: a crosshair's pixels, a row and a column ``width`` pixels wide
    through the middle."""
    H, W = shape
    line = np.zeros((H, W), dtype=bool)
    line[(H - width) // 2:(H + width) // 2, :] = True
    line[:, (W - width) // 2:(W + width) // 2] = True
    return line


def add_reticle(s: EvalSet, width: int, repair: bool = False) -> None:
    """Burns a crosshair into every image of ``s`` (:func:`crosshair`), set to 1 (a display's
    on-screen overlay, brighter than any target), except over ground-truth target pixels, so that
    every target stays whole and some lie beside a line. With ``repair``, then repairs the
    crosshair's pixels (all of them: the overlay's map) from their neighbours as ``annotate
    --bad-pixels`` does (:func:`d2d_ext.sensor.repair`)."""
    images = []
    for image, mask in zip(s.images, s.masks):
        line = crosshair(image.shape, width)
        image = image.copy()
        image[line & ~mask] = 1.0
        images.append(repair_pixels(image, line) if repair else image)
    s.images = images


def repair_from_found(s: EvalSet, min_frames: int = 10) -> dict:
    """Repairs the images of ``s`` from the bad-pixel maps that ``d2d find-bad-pixels``' search
    (:class:`d2d_ext.sensor.HotPixelSearch`, its defaults, the set's points) makes of the set's own
    frames, one per image size of at least ``min_frames`` frames (one sensor's); images of other
    sizes stay as they are. Returns ``{(H, W): pixels mapped}`` for the sizes searched."""
    sizes = {}
    for k, image in enumerate(s.images):
        sizes.setdefault(image.shape, []).append(k)
    found = {}
    for shape, ks in sizes.items():
        if len(ks) < min_frames:
            continue
        search = HotPixelSearch(shape)
        for k in ks:
            search.add(s.images[k], s.points[k])
        bad = search.result(min_frames).map
        found[shape] = int(bad.sum())
        if bad.any():
            for k in ks:
                s.images[k] = repair_pixels(s.images[k], bad)
    return found


def add_sensor_noise(s: EvalSet, white: float = 0.0, stripes: float = 0.0, seed: int = 0,
                     row_stripes: float = 0.0) -> None:
    """Adds to every image of ``s`` Gaussian noise of ``white`` times the image's own pixel noise
    (:func:`d2d_ext.windows.pixel_noise`, read from its neighbour differences) and, per column, an
    offset of ``stripes`` times it, per row one of ``row_stripes`` times it: a noisier sensor, or
    one whose column or row readout is not flat (see ``--noise``, ``--stripes``,
    ``--row-stripes``). Seeded per image (the row offsets drawn last, so that the others do not
    depend on them). Values stay in [0, 1], and pixels at 1 (a saturated sensor reads its full
    scale whatever the noise) stay there."""
    images = []
    for k, image in enumerate(s.images):
        rng = np.random.default_rng([seed, k])
        sd = pixel_noise(image)
        columns = rng.standard_normal((1, image.shape[1]))
        white_noise = rng.standard_normal(image.shape)
        rows = rng.standard_normal((image.shape[0], 1))
        noisy = image + sd * (white * white_noise + stripes * columns + row_stripes * rows)
        images.append(np.where(image >= 1.0, image, np.clip(noisy, 0.0, 1.0)).astype(np.float32))
    s.images = images


def jpeg_round_trip(s: EvalSet, quality: int) -> None:
    """Replaces every image of ``s`` (in [0, 1]) by its 8-bit JPEG at ``quality`` (1 to 100), read
    back into [0, 1] as float32: a dataset shipped as JPEG files (see ``--jpeg``)."""
    images = []
    for image in s.images:
        data = iio.imwrite("<bytes>", np.uint8(np.clip(np.round(255 * image), 0, 255)), extension=".jpg",
                           quality=int(quality))
        images.append(np.float32(iio.imread(data, extension=".jpg")) / np.float32(255))
    s.images = images


def add_ramp(s: EvalSet, fraction: float, seed: int = 0) -> None:
    """Adds to every image of ``s`` a plane that rises by ``fraction`` times the image's range
    (maximum less minimum) across its larger side, in a direction drawn per image (seeded), zero at
    the image's centre: a background gradient (see ``--ramp``). The images are not clipped (a
    float frame: the annotator reads any range), so pixels keep their contrast to their
    neighbours."""
    images = []
    for k, image in enumerate(s.images):
        angle = np.random.default_rng([seed, k, 2]).uniform(0.0, 2 * np.pi)
        H, W = image.shape
        slope = fraction * (float(image.max()) - float(image.min())) / max(H, W)
        rows, cols = np.ogrid[:H, :W]
        plane = slope * (np.cos(angle) * (cols - (W - 1) / 2) + np.sin(angle) * (rows - (H - 1) / 2))
        images.append((image + plane).astype(np.float32))
    s.images = images


#: Resamples of a set's images behind each IoU interval (seeded, so a rerun prints the same).
RESAMPLES = 1000


def iou_interval(inter: np.ndarray, union: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> tuple:
    """The 2.5th and 97.5th percentiles of the pooled IoU (percent; ``sum inter / sum union``)
    over ``resamples`` bootstrap resamples of the images, whose intersection and union pixels
    are ``inter`` and ``union`` ``(N,)``: the images drawn with replacement, as many as there
    are; NaN for a set of no images."""
    inter, union = np.asarray(inter, np.float64), np.asarray(union, np.float64)
    if not len(inter):
        return float("nan"), float("nan")
    draw = np.random.default_rng(seed).integers(0, len(inter), (resamples, len(inter)))
    iou = 100 * inter[draw].sum(1) / np.maximum(union[draw].sum(1), 1)
    low, high = np.percentile(iou, [2.5, 97.5])
    return float(low), float(high)


def score(s: EvalSet, masks: list, seconds: float, worst: int = 3, stages: dict | None = None,
          offsets: bool = False) -> Score:
    """``masks`` scored against ``s``'s ground truth; ``offsets``: also where the masks lie against
    their targets (:func:`target_offsets`; :func:`evaluate` asks for them for ours only, the only
    method whose offsets the report prints)."""
    metrics = ISTDMetrics()
    tp = npred = ngt = 0
    fa, missed, inter, union = [], [], [], []
    by_mask = {c: TargetErrors() for c in MASK_CLASSES}
    truth_off, pred_off = [], []
    for i, image, p, g in zip(s.ids, s.images, masks, s.masks):
        metrics.update(p, g)
        for t_off, p_off in target_offsets(image, p, g) if offsets and image is not None else ():
            truth_off.append(t_off)
            pred_off += [p_off] if p_off is not None else []
        inter.append(int((p & g).sum()))
        union.append(int((p | g).sum()))
        tp += int((p & g).sum())
        npred += int(p.sum())
        ngt += int(g.sum())
        fa.append((match_targets(p, g)[2], i))  # pixels of unmatched components, as Fa counts
        for area, size, both, cls in target_errors(p, g):
            e = by_mask[cls]
            e.targets, e.missed, e.extra = e.targets + 1, e.missed + area - both, e.extra + size - both
            missed.append((area - both, i, area, size))
    r = metrics.compute()
    fa.sort(key=lambda x: -x[0])
    missed.sort(key=lambda x: -x[0])
    return Score(r["iou"], r["niou"], r["pd"], r["fa"], 100 * tp / max(npred, 1), 100 * tp / max(ngt, 1),
                 fa[:max(worst, 1)], 1e3 * seconds / max(s.targets, 1),
                 {k: 1e3 * v / max(s.targets, 1) for k, v in stages.items()} if stages else None,
                 by_mask, missed[:max(worst, 1)], iou_interval(inter, union),
                 (tuple(np.mean(truth_off, axis=0)), tuple(np.mean(pred_off, axis=0))) if pred_off else None)


#: --soft: the single thresholds tried on the soft labels (finer at the low end, where the
#: fields' tails lie)
SOFT_THRESHOLDS = np.array([0.005, 0.01, 0.02, 0.03, 0.04] + [round(t, 2) for t in np.arange(0.05, 0.951, 0.05)])


@dataclass
class SoftScore:
    """A set's soft labels (``d2d annotate --soft``, in one ``--soft-style``) against its ground
    truth: the pooled soft IoU ``sum y g / sum (y + g - y g)`` (percent; one minus the soft-IoU loss
    a trainer on them minimises, without smoothing), the single threshold of
    :data:`SOFT_THRESHOLDS` whose masks ``y >= t`` score the best pooled IoU, that IoU, the IoU of
    ``y >= 0.5`` (a trainer that reads the labels as probabilities), and the squared error
    ``sum (y - g)^2`` over every pixel per pixel of the truth (for a mask, its wrong pixels per
    true one): how far the labels are from the truth read as probabilities, on one scale for every
    style."""

    soft_iou: float
    threshold: float
    iou: float
    iou_half: float
    squared_error: float


def soft_score(s: EvalSet, annotator, style: str = "field", odds: MaskOdds = MaskOdds()) -> SoftScore:
    """:class:`SoftScore` of ``annotator``'s soft labels in ``style`` (the mask style's ``odds``) on
    ``s`` (every target's field computed)."""
    return soft_scores(s, annotator, (style,), odds)[style]


def soft_scores(s: EvalSet, annotator, styles=SOFT_STYLES, odds: MaskOdds = MaskOdds()) -> dict:
    """``{style: SoftScore}`` of ``annotator``'s soft labels on ``s`` in each of ``styles``, from one
    preparation of each chunk of images (see :func:`soft_score`)."""
    sums = {style: _SoftSums() for style in styles}
    for k in range(0, len(s.images), CHUNK):
        batch = annotator.prepare(s.images[k:k + CHUNK], s.points[k:k + CHUNK])
        for style in styles:
            _, fields = annotator.masks_and_soft(batch, style=style, odds=odds)
            for y, g in zip(fields, s.masks[k:k + CHUNK]):
                sums[style].add(y.astype(np.float64), g)
    return {style: total.score() for style, total in sums.items()}


@dataclass
class _SoftSums:
    """What :class:`SoftScore` pools over a set's images."""

    num: float = 0.0
    den: float = 0.0
    squared: float = 0.0
    truth: float = 0.0
    inter: np.ndarray = field(default_factory=lambda: np.zeros(len(SOFT_THRESHOLDS)))
    union: np.ndarray = field(default_factory=lambda: np.zeros(len(SOFT_THRESHOLDS)))
    half: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def add(self, y: np.ndarray, g: np.ndarray) -> None:
        """One image's soft label ``y`` (float64) and bool truth ``g``."""
        self.num += float((y * g).sum())
        self.den += float((y + g - y * g).sum())
        above = y[None] >= SOFT_THRESHOLDS[:, None, None]
        self.inter += (above & g).sum((1, 2))
        self.union += (above | g).sum((1, 2))
        self.half += (((y >= 0.5) & g).sum(), ((y >= 0.5) | g).sum())
        self.squared += float(((y - g) ** 2).sum())
        self.truth += float(g.sum())

    def score(self) -> SoftScore:
        iou = 100 * self.inter / np.maximum(self.union, 1)
        best = int(iou.argmax())
        return SoftScore(100 * self.num / max(self.den, 1e-12), float(SOFT_THRESHOLDS[best]), float(iou[best]),
                         100 * self.half[0] / max(self.half[1], 1), self.squared / max(self.truth, 1))


def run(fn, s: EvalSet) -> tuple:
    """``fn(images, points) -> masks`` over ``s`` in chunks: ``(masks, seconds, stages)``, where
    ``stages`` sums the annotator's seconds by stage when ``fn`` is an annotator's method (else {})."""
    masks, seconds, stages = [], 0.0, {}
    owner = getattr(fn, "__self__", None)
    for k in range(0, len(s.images), CHUNK):
        t0 = time.perf_counter()
        masks += fn(s.images[k:k + CHUNK], s.points[k:k + CHUNK])
        seconds += time.perf_counter() - t0
        for stage, t in getattr(owner, "last_seconds", {}).items():
            stages[stage] = stages.get(stage, 0.0) + t
    return masks, seconds, stages


def load_annotator_module(path: str, index: int = 0):
    """The annotator module in file ``path`` (an ``annotate.py`` of another version), imported as
    module ``d2d_ext._against<index>`` of the installed package, so that its relative imports
    resolve (and in ``sys.modules``, where its dataclasses look themselves up)."""
    name = f"d2d_ext._against{index}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or not Path(path).is_file():
        raise SystemExit(f"--against: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def annotator(settings: dict | None = None, theta: dict | None = None, module=annotate_module):
    """``module``'s ``Annotator`` (ours, or another version's: see :func:`load_annotator_module`)
    with ``settings`` and the diffusion parameters' centres ``theta`` (its defaults where absent)."""
    return module.Annotator(module.config_from_dict(settings or {}), module.DiffusionParams(**(theta or {})))


def evaluate(sets: list, settings: dict | None = None, worst: int = 3, baseline: bool = True,
             against: dict | None = None, repeats: int = 1, theta: dict | None = None,
             keep: dict | None = None) -> list:
    """``[(set, method, Score)]``: ours with ``settings`` and the diffusion parameters ``theta``
    (``DiffusionParams`` centres; its defaults where absent), the annotators of ``against`` (label
    -> module with ``Annotator``, ``DiffusionParams`` and ``config_from_dict``) with the same, and
    (``baseline``) the local threshold. Each method's time is its fastest of ``repeats`` passes,
    the methods' passes interleaved. ``keep``, a dict, receives every method's masks by ``(set
    name, method)``."""
    methods = {"ours": annotator(settings, theta).annotate}
    for label, module in (against or {}).items():
        methods[label] = annotator(settings, theta, module).annotate
    if baseline:
        methods["local threshold"] = local_threshold_masks
    for fn in methods.values():
        fn([sets[0].images[0]], [sets[0].points[0]])  # warm-up
    out = []
    for s in sets:
        masks, fastest = {}, {}
        for _ in range(max(repeats, 1)):
            for m, fn in methods.items():
                masks[m], t, stages = run(fn, s)
                if m not in fastest or t < fastest[m][0]:
                    fastest[m] = (t, stages)
        out += [(s.name, m, score(s, masks[m], *fastest[m][:1], worst, fastest[m][1], offsets=m.startswith("ours")))
                for m in methods]
        if keep is not None:
            keep.update({(s.name, m): masks[m] for m in methods})
    return out


# the columns of table_rows
TABLE_HEADER = ["set", "method", "IoU", "nIoU", "Pd", "Fa (1e-6)", "precision", "recall", "worst image's Fa px",
                "ms/target"]


def table_rows(results: list) -> list:
    return [[name, method, f"{r.iou:.2f}", f"{r.niou:.2f}", f"{r.pd:.2f}", f"{r.fa:.1f}", f"{r.precision:.1f}",
             f"{r.recall:.1f}", r.worst[0][0], f"{r.ms:.2f}"] for name, method, r in results]


def argument_parser() -> argparse.ArgumentParser:
    """The command line of :func:`main`; ``probe_sweep.py`` reads each of its probes with it too."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="folder of datasets (BasicIRSTD / LESPS layout)")
    ap.add_argument("--datasets", help="comma-separated dataset names under --data (default: all)")
    ap.add_argument("--synthetic-seeds", default="0,1", help="comma-separated seeds ('' for none)")
    ap.add_argument("--worst", type=int, default=3, help="images listed per set, most false-alarm pixels first")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an AnnotatorConfig setting")
    ap.add_argument("--settings", help="a JSON file of AnnotatorConfig settings (as d2d calibrate writes); --set wins")
    ap.add_argument("--style", choices=STYLES, default="tight",
                    help="the mask style's settings (d2d_ext.annotate.STYLES); --settings and --set win")
    ap.add_argument("--theta", action="append", default=[], metavar="NAME=VALUE",
                    help="a diffusion parameter's centre (DiffusionParams: D0, beta, rho, alpha, gamma)")
    ap.add_argument("--soft", action="store_true",
                    help="also score ours' soft labels (as d2d annotate --soft writes them; see soft_score)")
    ap.add_argument("--soft-odds", metavar="POWER,QUANTILE",
                    help="with --soft: the mask style's odds power and edge quantile instead of the package's "
                         "(MASK_ODDS_POWER, MASK_EDGE_QUANTILE)")
    ap.add_argument("--dilate", type=int, default=0, help="grow every ground-truth mask by this many pixels")
    ap.add_argument("--glow", type=float, default=0.0, metavar="FRACTION",
                    help="draw each ground-truth target's glow in: the pixels within 3 of it above this "
                         "fraction of its contrast (see glow_mask)")
    ap.add_argument("--against", action="append", default=[], metavar="FILE.py",
                    help="also run the annotator of this annotate.py (another version), interleaved with ours")
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per method and set; the fastest is kept")
    ap.add_argument("--map", metavar="OFFSET,GAIN", help="annotate OFFSET + GAIN * image instead of the image")
    ap.add_argument("--hot", metavar="beside|FRACTION",
                    help="set one pixel beside every point, or this fraction of each image's pixels, to 1")
    ap.add_argument("--pad", type=int, default=0, metavar="N",
                    help="pad every image by N pixels of 0 on each side (last): a letterbox, or images padded "
                         "to one size")
    ap.add_argument("--pad-median", action="store_true", help="with --pad: pad with each image's median instead")
    ap.add_argument("--pad-noise", type=float, default=0.0, metavar="SD",
                    help="with --pad: Gaussian noise of this deviation (of the full range, seed 0) in the padding: "
                         "the dark bars of a frame captured from a camera's video output, no longer one value")
    ap.add_argument("--pad-jpeg", type=int, default=0, metavar="Q",
                    help="with --pad: then write every padded frame as 8-bit JPEG at quality Q (1 to 100): a dataset "
                         "padded to one size and shipped as JPEG, whose padding's lines beside the picture carry "
                         "the coding's ringing")
    ap.add_argument("--saturate", type=int, default=0, metavar="SIZE",
                    help=f"set a SIZE x SIZE block of every image, at least {SATURATE_CLEAR} px from every target, "
                         "to 1 (after --map and --hot): an object that fills the sensor's range")
    ap.add_argument("--reticle", type=int, default=0, metavar="W",
                    help="burn a crosshair W px wide through every image's middle, set to 1 except over "
                         "ground-truth targets (after --saturate): a display's on-screen overlay")
    ap.add_argument("--repair", action="store_true",
                    help="with --hot or --reticle: repair those pixels from their map before annotating "
                         "(annotate --bad-pixels)")
    ap.add_argument("--find-map", action="store_true",
                    help="with --reticle: repair the images from the map find-bad-pixels' search makes of the "
                         "set's own frames (one per image size of at least 10 frames; other sizes as they are)")
    ap.add_argument("--points", choices=("centroid", "coarse"), default="centroid",
                    help="centroid: the LESPS centroid points (the datasets' own, the scenes'); coarse: LESPS "
                         "coarse points drawn from every ground-truth mask (seed 0), off the centroid by about "
                         "an eighth of the target's extent")
    ap.add_argument("--jitter", type=int, default=0, metavar="N",
                    help="move every point by whole pixels, each axis by -N to N drawn uniformly (seed 0): "
                         "clicks that miss the centroid")
    ap.add_argument("--crop", type=int, default=0, metavar="SIZE",
                    help="score every set as SIZE x SIZE crops, one per target, each holding the target's "
                         "point at least 8 px inside, with the crop's centroid points (see crop_set)")
    ap.add_argument("--mosaic", type=int, default=1, metavar="N",
                    help="score every set as frames of N x N of its images tiled (see mosaic_set)")
    ap.add_argument("--mosaic-gap", type=int, default=0, metavar="G",
                    help="with --mosaic: G pixels of each image's median around it in its cell")
    ap.add_argument("--zoom", type=int, default=1, metavar="F",
                    help="score every set sampled F times finer: images upsampled (bilinear), masks by "
                         "pixel replication, points at the zoomed masks' centroids (see zoom_set)")
    ap.add_argument("--shrink", type=int, default=1, metavar="F",
                    help="score every set sampled F times coarser: images block means, a coarse pixel target "
                         "where half its block is, points at the coarse masks' centroids (see shrink_set)")
    ap.add_argument("--blur", type=float, default=0.0, metavar="SIGMA",
                    help="blur every image by a Gaussian of SIGMA pixels, masks and points as they are: "
                         "softer optics (before --noise)")
    ap.add_argument("--smear", type=int, default=0, metavar="L",
                    help="average every image over L pixels along its rows, masks and points as they are: a "
                         "sensor that panned while it integrated (after --blur, before --noise)")
    ap.add_argument("--noise", type=float, default=0.0, metavar="F",
                    help="add white noise of F times each image's own pixel noise (seeded)")
    ap.add_argument("--stripes", type=float, default=0.0, metavar="F",
                    help="add to each column an offset of F times each image's own pixel noise (seeded): a "
                         "sensor's column fixed-pattern noise")
    ap.add_argument("--row-stripes", type=float, default=0.0, metavar="F",
                    help="add to each row an offset of F times each image's own pixel noise (seeded): a sensor's "
                         "row noise")
    ap.add_argument("--jpeg", type=int, default=0, metavar="Q",
                    help="read every image after an 8-bit JPEG round trip at quality Q (1 to 100), after --noise")
    ap.add_argument("--ramp", type=float, default=0.0, metavar="F",
                    help="add a plane rising by F times each image's range across its larger side, in a seeded "
                         "direction per image: a background gradient")
    ap.add_argument("--equalize", choices=EQUALIZE, default=None,
                    help="pass every image through a camera's display map, to 8 bits, after --noise and before "
                         "--jpeg: global histogram equalization, or local (CLAHE)")
    ap.add_argument("--levels", type=int, default=0, metavar="N",
                    help="round every image to N grey levels over [0, 1], after --ramp: a converter or file of "
                         "fewer bits")
    ap.add_argument("--out")
    return ap


def soft_odds(text: str) -> MaskOdds:
    """``--soft-odds``' ``POWER,QUANTILE`` as :class:`~d2d_ext.annotate.MaskOdds`; ``ValueError``
    where it is not two numbers, the power above 0 and the quantile in [0, 1]."""
    power, quantile = (float(v) for v in text.split(","))
    if not (power > 0 and 0 <= quantile <= 1):
        raise ValueError(text)
    return MaskOdds(power, quantile)


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses (``ap.error``) options out of their range, each by name."""
    for option, quality in (("--jpeg", args.jpeg), ("--pad-jpeg", args.pad_jpeg)):  # 0: no JPEG
        if not 0 <= quality <= 100:
            ap.error(f"{option} must be a JPEG quality from 1 to 100, got {quality}")
    if min(args.noise, args.stripes, args.row_stripes, args.ramp) < 0:
        ap.error(f"--noise, --stripes, --row-stripes and --ramp must be >= 0, got {args.noise}, {args.stripes}, "
                 f"{args.row_stripes} and {args.ramp}")
    if args.jitter < 0:
        ap.error(f"--jitter must be a whole number of pixels >= 0, got {args.jitter}")
    if args.mosaic < 1:
        ap.error(f"--mosaic must be a whole number of images per side >= 1, got {args.mosaic}")
    if args.mosaic_gap < 0 or (args.mosaic_gap and args.mosaic < 2):
        ap.error(f"--mosaic-gap must be a number of pixels >= 0, with --mosaic 2 or more, got {args.mosaic_gap}")
    if args.zoom < 1 or args.shrink < 1:
        ap.error(f"--zoom and --shrink must be whole factors >= 1, got {args.zoom} and {args.shrink}")
    if args.blur < 0:
        ap.error(f"--blur must be a Gaussian's sigma >= 0 pixels, got {args.blur}")
    if args.pad < 0:
        ap.error(f"--pad must be a number of pixels >= 0, got {args.pad}")
    if args.pad_median and not args.pad:
        ap.error("--pad-median needs --pad")
    if args.pad_jpeg and not args.pad:
        ap.error("--pad-jpeg needs --pad")
    if args.pad_noise < 0 or (args.pad_noise and not args.pad):
        ap.error(f"--pad-noise needs --pad and a deviation >= 0, got {args.pad_noise}")
    if args.saturate < 0:
        ap.error(f"--saturate must be a block's side in pixels >= 0, got {args.saturate}")
    if args.reticle < 0:
        ap.error(f"--reticle must be a line's width in pixels >= 0, got {args.reticle}")
    if args.find_map and (not args.reticle or args.repair):
        ap.error("--find-map needs --reticle, and not --repair")
    if args.smear < 0:
        ap.error(f"--smear must be a whole number of pixels >= 0, got {args.smear}")
    if args.levels and args.levels < 2:
        ap.error(f"--levels must be a number of grey levels >= 2, got {args.levels}")
    if args.crop and args.crop <= 2 * CROP_MARGIN:
        ap.error(f"--crop must exceed {2 * CROP_MARGIN} pixels, got {args.crop}")
    if args.soft_odds is not None:
        try:
            soft_odds(args.soft_odds)
        except ValueError:
            ap.error(f"--soft-odds must be POWER,QUANTILE with POWER > 0 and QUANTILE in [0, 1], got {args.soft_odds!r}")
        if not args.soft:
            ap.error("--soft-odds needs --soft")
    if args.hot and args.hot != "beside":
        try:
            if not 0.0 < float(args.hot) < 1.0:
                raise ValueError
        except ValueError:
            ap.error(f"--hot must be 'beside' or a fraction between 0 and 1, got {args.hot!r}")


def load_sets(args: argparse.Namespace) -> list:
    """The sets as they are: the real datasets of ``--data`` / ``--datasets``, then the synthetic
    scenes of ``--synthetic-seeds``."""
    sets = []
    if Path(args.data).is_dir():
        sets += real_sets(Path(args.data), args.datasets.split(",") if args.datasets else None)
    else:
        print(f"no datasets: {args.data} is not a folder; synthetic scenes only", file=sys.stderr)
    return sets + synthetic_sets([int(s) for s in args.synthetic_seeds.split(",") if s.strip()])


def probe_sets(args: argparse.Namespace, sets: list | None = None) -> list:
    """The sets as ``args``' probes give them (sampling, crops, points, optics, sensor, file, mask
    style; in that order), from ``sets`` (:func:`load_sets`' result, changed in place) or loaded."""
    sets = load_sets(args) if sets is None else sets
    if args.zoom > 1:
        sets = [zoom_set(s, args.zoom) for s in sets]
    if args.shrink > 1:
        sets = [shrink_set(s, args.shrink) for s in sets]
    if args.crop:
        sets = [c for c in (crop_set(s, args.crop) for s in sets) if c.ids]
    if args.mosaic > 1:
        sets = [mosaic_set(s, args.mosaic, args.mosaic_gap) for s in sets]
    if args.points == "coarse":
        for s in sets:
            s.points = [coarse_points(m, np.random.default_rng([0, k])) for k, m in enumerate(s.masks)]
    if args.jitter:
        for s in sets:
            jitter_points(s, args.jitter)
    if args.blur:  # the optics, before the sensor adds its noise
        for s in sets:
            blur_images(s, args.blur)
    if args.smear > 1:
        for s in sets:
            smear_images(s, args.smear)
    if args.noise or args.stripes or args.row_stripes:  # on the images in [0, 1], before --map moves them
        for s in sets:
            add_sensor_noise(s, args.noise, args.stripes, row_stripes=args.row_stripes)
    if args.equalize:  # the camera's display map, before the file's encoding
        for s in sets:
            equalize_images(s, args.equalize)
    if args.jpeg:
        for s in sets:
            jpeg_round_trip(s, args.jpeg)
    if args.ramp:
        for s in sets:
            add_ramp(s, args.ramp)
    if args.levels:  # the converter (or the file) last, after everything the scene and sensor add
        for s in sets:
            quantize_images(s, args.levels)
    if args.map:
        offset, gain = (float(v) for v in args.map.split(","))
        for s in sets:
            s.images = [np.float32(offset + gain * im) for im in s.images]
    if args.hot:
        for s in sets:
            add_hot_pixels(s, args.hot, repair=args.repair)
    if args.saturate:
        for s in sets:
            add_saturated_block(s, args.saturate)
    if args.reticle:
        for s in sets:
            add_reticle(s, args.reticle, repair=args.repair)
            if args.find_map:
                repair_from_found(s)
    if args.pad:
        sets = [pad_set(s, args.pad, args.pad_median, args.pad_noise) for s in sets]
        if args.pad_jpeg:  # the file codes the whole frame, padding and picture together
            for s in sets:
                jpeg_round_trip(s, args.pad_jpeg)
    for s in sets:
        restyle(s, args.dilate, args.glow)
    return sets


def probe_description(args: argparse.Namespace) -> str:
    """What ``args``' probes did to the sets, as ``"; "``-led clauses ("" for the sets as they are)."""
    grown = f"; ground truth grown by {args.dilate} px" if args.dilate > 0 else ""
    grown += f"; each target's glow drawn in at {args.glow} of its contrast" if args.glow > 0 else ""
    grown += f"; sampled {args.zoom}x finer" if args.zoom > 1 else ""
    grown += f"; sampled {args.shrink}x coarser" if args.shrink > 1 else ""
    grown += f"; every image blurred by a Gaussian of sigma {args.blur} px" if args.blur else ""
    grown += f"; every image averaged over {args.smear} px along its rows" if args.smear > 1 else ""
    grown += f"; {args.crop}x{args.crop} crops, one per target" if args.crop else ""
    apart = f", {args.mosaic_gap} px of each image's median around it" if args.mosaic_gap else ""
    grown += f"; frames of {args.mosaic}x{args.mosaic} images tiled{apart}" if args.mosaic > 1 else ""
    grown += "; LESPS coarse points drawn from the masks (seed 0)" if args.points == "coarse" else ""
    grown += f"; points moved by up to {args.jitter} px per axis (seed 0)" if args.jitter else ""
    grown += f"; images mapped to {args.map.replace(',', ' + ')} * I" if args.map else ""
    grown += f"; hot pixels: {args.hot}{', repaired from their map' if args.repair else ''}" if args.hot else ""
    grown += (f"; a {args.saturate}x{args.saturate} block set to 1, {SATURATE_CLEAR} px from every target"
              if args.saturate else "")
    grown += (f"; a crosshair {args.reticle} px wide at 1 through every image's middle"
              f"{', repaired from its map' if args.repair else ''}"
              f"{', repaired from the map found in the set' if args.find_map else ''}" if args.reticle else "")
    grown += (f"; every image padded by {args.pad} px of {'its median' if args.pad_median else '0'}"
              + (f" with noise of deviation {args.pad_noise}" if args.pad_noise else "")
              + (f", then through 8-bit JPEG at quality {args.pad_jpeg}" if args.pad_jpeg else "") if args.pad else "")
    grown += f"; white noise of {args.noise}x each image's pixel noise added (seed 0)" if args.noise else ""
    grown += f"; column offsets of {args.stripes}x each image's pixel noise added (seed 0)" if args.stripes else ""
    grown += f"; row offsets of {args.row_stripes}x each image's pixel noise added (seed 0)" if args.row_stripes else ""
    grown += f"; every image through a {args.equalize} histogram equalization to 8 bits" if args.equalize else ""
    grown += f"; every image through 8-bit JPEG at quality {args.jpeg}" if args.jpeg else ""
    grown += f"; a plane rising by {args.ramp} of each image's range across it added (seed 0)" if args.ramp else ""
    grown += f"; every image rounded to {args.levels} grey levels" if args.levels else ""
    return grown


def read_settings(args: argparse.Namespace) -> dict:
    """The annotator settings of ``--style`` (a mask style of ``STYLES``), ``--settings`` (a file
    as ``d2d calibrate`` writes) and ``--set`` (each wins over the ones before), each as its
    field's type and within its span, as ``d2d annotate`` reads them; raises :class:`DataError`
    naming the file or setting at fault, before any set is loaded."""
    settings = dict(STYLES[getattr(args, "style", None) or "tight"])
    if getattr(args, "settings", None):
        settings.update(load_settings(args.settings))
    settings.update(checked_settings(parse_settings(args.set), "--set"))
    try:
        config_from_dict(settings)  # the spans, and the window sizes against the band, of all of them together
    except ValueError as err:
        raise DataError(str(err)) from None
    return settings


def read_theta(args: argparse.Namespace) -> dict:
    """The diffusion parameters' centres of ``--theta`` (:class:`DiffusionParams` names, each within
    its span); raises :class:`DataError` naming the one at fault."""
    theta = {}
    for name, value in parse_settings(args.theta).items():
        if name not in DiffusionParams.NAMES:
            raise DataError(f"--theta {name}: not a diffusion parameter (one of {', '.join(DiffusionParams.NAMES)})")
        try:
            theta[name] = DiffusionParams.CENTRES[name].checked(name, value, "--theta ")
        except ValueError as err:
            raise DataError(str(err)) from None
    return theta


def main(argv=None) -> int:
    ap = argument_parser()
    args = ap.parse_args(argv)
    check_args(ap, args)
    torch.set_num_threads(1)
    try:
        settings = read_settings(args)
        theta = read_theta(args)
    except DataError as e:
        ap.error(str(e))
    sets = probe_sets(args)
    against = {f"ours at {Path(f).name}": load_annotator_module(f, i) for i, f in enumerate(args.against)}
    kept = {}
    results = evaluate(sets, settings, args.worst, against=against, repeats=args.repeats, theta=theta, keep=kept)
    counts = "; ".join(f"{s.name}: {len(s.ids)} images, {s.targets} targets" for s in sets)
    grown = probe_description(args) + (f"; diffusion parameters {theta}" if theta else "")
    text = emit(f"settings {settings or 'default'}{grown}; command: `{command_line()}`\n\n{counts}", TABLE_HEADER,
                table_rows(results))
    worst = ["", "Worst images (false-alarm pixels, image):", ""]
    worst += [f"- {name}, {method}: " + ", ".join(f"{n} {i}" for n, i in r.worst)
              for name, method, r in results if method.startswith("ours")]
    worst += ["", "Most missed pixels (missed, image, target pixels / mask pixels):", ""]
    worst += [f"- {name}, {method}: " + ", ".join(f"{n} {i} ({a}/{m})" for n, i, a, m in r.most_missed)
              for name, method, r in results if method.startswith("ours")]
    worst += ["", "Where the wrong pixels lie, by each target's mask (the predicted components that touch it) "
              "against its size: targets, missed pixels, extra pixels (share of the set's wrong pixels):", ""]
    for name, method, r in results:
        if method.startswith("ours"):
            wrong = max(sum(e.missed + e.extra for e in r.by_mask.values()), 1)
            worst.append(f"- {name}, {method}: " + "; ".join(
                f"{c} {e.targets}, {e.missed} ({e.missed / wrong:.0%}), {e.extra} ({e.extra / wrong:.0%})"
                for c, e in r.by_mask.items() if e.targets))
    worst += ["", f"IoU's 95% interval over each set's images (the images resampled with replacement, "
                  f"{RESAMPLES:,} times, seed 0): what another sample of such images, a held-out split, may "
                  "score:", ""]
    worst += [f"- {name}, {method}: {r.iou:.2f} ({r.iou_interval[0]:.2f} to {r.iou_interval[1]:.2f})"
              for name, method, r in results]
    worst += ["", "Where the masks lie against their targets: the mean offset (rows, columns; + is down, right) of "
                  "each target's mask centroid from its intensity centroid (targets of "
                  f"{OFFSET_SIZES[0]} to {OFFSET_SIZES[1]} pixels), ground truth / ours:", ""]
    worst += [f"- {name}, {method}: {r.offsets[0][0]:+.2f}, {r.offsets[0][1]:+.2f} / "
              f"{r.offsets[1][0]:+.2f}, {r.offsets[1][1]:+.2f}"
              for name, method, r in results if method.startswith("ours") and r.offsets]
    worst += ["", "Time of ours by stage (ms per target, the fastest pass):", ""]
    worst += [f"- {name}, {method}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.stages.items())
              for name, method, r in results if method.startswith("ours") and r.stages]
    if args.zoom > 1 and not (args.shrink > 1 or args.crop or args.mosaic > 1 or args.pad):
        # the same probes on the images as they are: a change of the pixel grid alone
        coarse = probe_sets(argparse.Namespace(**{**vars(args), "zoom": 1}))
        methods = {"ours": annotator(settings, theta).annotate, "local threshold": local_threshold_masks}
        worst += ["", f"Agreement across sampling (no ground truth read): each method on the images sampled "
                      f"{args.zoom}x finer against the same on the images as they are, each of those masks' pixels "
                      f"replicated {args.zoom} x {args.zoom}: IoU; pixels, replicated / finer; the images where they "
                      "differ most (pixels in one mask only):", ""]
        for s, c in zip(sets, coarse):
            for m, fn in methods.items():
                a = sampling_agreement(s.ids, run(fn, c)[0], kept[s.name, m], args.zoom, args.worst)
                worst.append(f"- {s.name}, {m}: {a.iou:.2f}; {a.coarse} / {a.fine}; "
                             + ", ".join(f"{n} {i}" for n, i in a.worst))
    if args.soft:
        odds = MaskOdds() if args.soft_odds is None else soft_odds(args.soft_odds)
        ours = annotator(settings, theta)
        worst += ["", "Soft labels of ours (what `d2d annotate --soft` writes, in each `--soft-style`) against the "
                      "ground truth: pooled soft IoU; the best single threshold (IoU at it); IoU at 0.5; squared "
                      "error per pixel of the truth:", ""]
        for s in sets:
            parts = [f"{style} {r.soft_iou:.2f}; {r.threshold:.2f} ({r.iou:.2f}); {r.iou_half:.2f}; "
                     f"{r.squared_error:.3f}" for style, r in soft_scores(s, ours, SOFT_STYLES, odds).items()]
            worst.append(f"- {s.name}: " + " / ".join(parts))
    print("\n".join(worst))
    if args.out:
        from d2d_ext.files import write_bytes_atomic
        write_bytes_atomic(args.out, (text + "\n".join(worst) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
