"""Point labels: one ``(x, y)`` per target, read from a dataset or generated from its masks.

Points are ``(K, 2)`` float64 arrays with columns ``(x, y)`` in 0-based pixel units, ``(0, 0)``
being the centre of the top-left pixel (see :func:`points_inside` for when a point lies inside its
image). Sources (:data:`POINT_SOURCES`): the blobs of the LESPS point-label folders
(``masks_centroid``, ``masks_coarse``), a CSV ``image,x,y``, or the LESPS protocols applied to
the ground truth (``gen-centroid``, ``gen-coarse``). Problems raise :class:`DataError` naming the
file.
"""

from __future__ import annotations

import csv
import math
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from .files import DataError, find_image_file, read_mask
from .metrics import component_moments
from .morphology import label

__all__ = [
    "POINT_SOURCES",
    "INSIDE_RULE",
    "PointLabels",
    "label_targets",
    "connected_points",
    "centroid_points",
    "coarse_points",
    "read_points_csv",
    "valid_point_source",
    "point_source",
    "points_inside",
    "point_pixels",
    "point_pixel",
]

#: The point sources of :meth:`PointLabels.get` (``"csv:FILE"`` takes a file name after the colon).
POINT_SOURCES = ("centroid", "coarse", "csv:FILE", "gen-centroid", "gen-coarse")

# LESPS coarse protocol: offsets are (bbox_extent / 2) * N(0, 1/4), i.e. std 0.5 * extent / 2.
_COARSE_STD = 0.5
_COARSE_MAX_DRAWS = 100


class PointLabels:
    """The point labels of one :class:`d2d_ext.data.IRDataset` (``dataset.points`` calls
    :meth:`get`); each point CSV is parsed once and kept."""

    def __init__(self, dataset):
        self.dataset = dataset
        self._csv: dict[Path, dict[str, np.ndarray]] = {}

    def get(self, id, source: str, seed: int = 0) -> np.ndarray:
        """The point labels of image ``id``: ``(K, 2)`` float64, columns ``(x, y)``, 0-based pixels.

        ``source``:

        - ``"centroid"`` / ``"coarse"``: the blobs of ``masks_centroid/<id>.png`` /
          ``masks_coarse/<id>.png``, one point per 8-connected blob at its pixel mean.
        - ``"csv:FILE"``: the rows of ``image == id`` of a CSV with header ``image,x,y``
          (sub-pixel allowed; an id without rows has no points). ``FILE`` is a path, tried as
          given and then relative to the dataset root. Parsed once per file and cached.
        - ``"gen-centroid"``: generated from the ground truth, one point per 8-connected target at
          ``floor`` of its centroid (the LESPS centroid protocol).
        - ``"gen-coarse"``: generated from the ground truth by the LESPS coarse protocol: per
          target and axis ``c + (extent / 2) * N(0, 1/4)`` (std ``extent / 4``; ``c`` the
          centroid, ``extent`` the bounding-box size in pixels), rounded to a pixel and redrawn
          until it lies on the target; after 100 failed draws the pixel nearest the centroid on
          the target. Seeded by ``(seed, crc32(id))``: independent of the order ids are visited.

        Raises :class:`DataError` for an unknown source (listing the valid ones), a missing point
        file or mask (naming the expected path), or a point outside its image (naming the id, the
        point and the source file).
        """
        source = str(source)
        if source in ("centroid", "coarse"):
            path = find_image_file(self.dataset.root / f"masks_{source}", id)
            if not path.is_file():
                if path.parent.is_dir():
                    raise DataError(f"point-label file not found: {path} (image id {id!r})")
                # a dataset published with masks only: the same protocol's points come from them
                hint = (f"; the source 'gen-{source}' derives this protocol's points from the ground-truth masks "
                        f"in {self.dataset.root / 'masks'}" if (self.dataset.root / "masks").is_dir() else "")
                raise DataError(f"point-label folder not found: {path.parent} (image id {id!r}){hint}")
            blobs = read_mask(path)
            self.dataset.check_size(id, path, blobs.shape)
            pts = connected_points(blobs)
        elif source.startswith("csv:"):
            path = self._csv_path(source[4:])
            table = self._read_csv(path)
            pts = table.get(str(id), np.zeros((0, 2), dtype=np.float64)).copy()
        elif source in ("gen-centroid", "gen-coarse"):
            path = self.dataset.mask_path(id)
            if not path.is_file():
                raise DataError(
                    f"points {source!r} need the ground-truth mask, but {path} does not exist "
                    f"(image id {id!r}){self.dataset.mask_name_hint(id)}"
                )
            mask = self.dataset.load_mask(id)
            if source == "gen-centroid":
                pts = centroid_points(mask)
            else:
                pts = coarse_points(mask, _rng_for(seed, id))
        else:
            raise DataError(
                f"unknown point source {source!r}; valid sources: " + ", ".join(POINT_SOURCES)
            )
        self._check_points(id, pts, path, source)
        return pts

    def _check_points(self, id, pts: np.ndarray, path: Path, source: str) -> None:
        if len(pts) == 0:
            return
        h, w = self.dataset.image_size(id)
        bad = ~points_inside(pts, (h, w))
        if bad.any():
            x, y = pts[int(np.flatnonzero(bad)[0])]
            raise DataError(
                f"point (x={x:g}, y={y:g}) of image {id!r} lies outside the {w}x{h} (WxH) "
                f"image {self.dataset.image_path(id)} ({INSIDE_RULE.format(w=w, h=h)}; source {source!r}, file {path})"
            )

    def _csv_path(self, name: str) -> Path:
        p = Path(name).expanduser()
        if p.is_file():
            return p.resolve()
        if not p.is_absolute() and (self.dataset.root / p).is_file():
            return (self.dataset.root / p).resolve()
        raise DataError(f"point CSV not found: {name} (also looked in {self.dataset.root})")

    def _read_csv(self, path: Path) -> dict[str, np.ndarray]:
        cached = self._csv.get(path)
        if cached is not None:
            return cached
        table = read_points_csv(path)
        self._csv[path] = table
        return table


def label_targets(mask) -> tuple[np.ndarray, int]:
    """8-connected components of a ``(H, W)`` boolean mask: ``(labels int32 (H, W), count)``,
    labels ``1..count`` in raster order of each component's first pixel (scipy.ndimage.label)."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    labels, n = label(m)  # compiled: scipy's labels, at half its time on a whole frame
    return labels, int(n)


def connected_points(mask) -> np.ndarray:
    """Centres of the 8-connected blobs of a ``(H, W)`` boolean mask: ``(K, 2)`` float64,
    columns ``(x, y)`` (the mean column and row of each blob's pixels), in label order
    (``scipy.ndimage.label``'s raster order). An empty mask gives a ``(0, 2)`` array."""
    labels, n = label_targets(mask)
    _, cy, cx = component_moments(np.asarray(mask, dtype=bool), labels, n)
    return np.stack([cx, cy], axis=1)


def read_points_csv(path) -> dict[str, np.ndarray]:
    """Parse a point CSV with header ``image,x,y`` (0-based, sub-pixel allowed) into
    ``{id: (K, 2) float64 (x, y)}`` in file order. Raises :class:`DataError` naming the file
    (and line) for a missing column or a value that is not a finite number."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            if not {"image", "x", "y"} <= set(fields):
                raise DataError(
                    f"point CSV {path} must have the header image,x,y; found {','.join(fields)}"
                )
            reader.fieldnames = fields
            rows: dict[str, list[tuple[float, float]]] = {}
            for row in reader:
                line = reader.line_num
                img = (row.get("image") or "").strip()
                if not img:
                    if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                        continue  # blank line
                    raise DataError(f"point CSV {path}, line {line}: empty image id")
                try:
                    x = float(row["x"])
                    y = float(row["y"])
                except (TypeError, ValueError) as err:
                    raise DataError(
                        f"point CSV {path}, line {line}: bad coordinates "
                        f"x={row.get('x')!r} y={row.get('y')!r}"
                    ) from err
                if not (np.isfinite(x) and np.isfinite(y)):
                    raise DataError(f"point CSV {path}, line {line}: non-finite point ({x}, {y})")
                rows.setdefault(img, []).append((x, y))
    except FileNotFoundError as err:
        raise DataError(f"point CSV not found: {path}") from err
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read point CSV {path}: {err}") from err
    return {k: np.asarray(v, dtype=np.float64).reshape(-1, 2) for k, v in rows.items()}


def _rng_for(seed: int, id) -> np.random.Generator:
    """A generator that depends only on ``(seed, id)``: the same points whatever the order the
    ids are visited in."""
    key = zlib.crc32(str(id).encode("utf-8"))
    return np.random.default_rng([int(seed) % (1 << 64), key, 0xC0A25E])


def centroid_points(mask) -> np.ndarray:
    """One point per 8-connected target of a ``(H, W)`` bool mask at ``floor`` of its centroid
    (LESPS centroid protocol): ``(K, 2)`` float64 ``(x, y)`` with integer values, label order.
    ``floor`` of a concave target's centroid may fall off the target."""
    return np.floor(connected_points(mask))


def coarse_points(mask, rng: np.random.Generator) -> np.ndarray:
    """LESPS coarse points: ``(K, 2)`` float64 ``(x, y)`` pixel positions, one per 8-connected
    target of ``mask`` (label order), each on its target. Per target and axis the offset from the
    centroid is ``(extent / 2) * N(0, 1/4)`` (``extent``: bounding-box size in pixels), rounded to
    a pixel and redrawn until on the target; after 100 misses: the target pixel nearest the
    centroid (the centroid's own pixel when it is on the target)."""
    labels, n = label_targets(mask)
    out = np.zeros((n, 2), dtype=np.float64)
    if n == 0:
        return out
    objects = ndimage.find_objects(labels)
    for k in range(n):
        sl = objects[k]
        sub = labels[sl] == (k + 1)
        ys, xs = np.nonzero(sub)
        cy, cx = ys.mean(), xs.mean()
        ey, ex = sub.shape  # bounding-box extent (rows, columns)
        point = None
        for _ in range(_COARSE_MAX_DRAWS):
            dx, dy = rng.normal(0.0, _COARSE_STD, size=2)
            px = int(np.floor(cx + 0.5 * ex * dx + 0.5))
            py = int(np.floor(cy + 0.5 * ey * dy + 0.5))
            if 0 <= py < ey and 0 <= px < ex and sub[py, px]:
                point = (px, py)
                break
        if point is None:
            d2 = (xs - cx) ** 2 + (ys - cy) ** 2
            j = int(np.argmin(d2))  # the centroid's own pixel if on target (distance <= 0.5)
            point = (int(xs[j]), int(ys[j]))
        out[k] = (point[0] + sl[1].start, point[1] + sl[0].start)
    return out


def valid_point_source(source: str) -> bool:
    """Whether ``source`` names a point source of :meth:`IRDataset.points` (one of
    :data:`POINT_SOURCES`, ``csv:`` followed by a file name); whether the files exist is not
    checked here."""
    source = str(source)
    fixed = [s for s in POINT_SOURCES if not s.endswith(":FILE")]
    return source in fixed or (source.startswith("csv:") and len(source) > len("csv:"))


def point_source(text: str) -> str:
    """``text`` if it names a point source (:func:`valid_point_source`), else ``ValueError`` listing
    the valid ones: the command line checks it before any file is written."""
    if not valid_point_source(text):
        raise ValueError(f"invalid point source {text!r} (choose from {', '.join(POINT_SOURCES)})")
    return text


#: What :func:`points_inside` accepts, for error messages (``.format(w=W, h=H)``).
INSIDE_RULE = "a point lies inside when -0.5 <= x < {w} - 0.5 and -0.5 <= y < {h} - 0.5"


def points_inside(points, shape) -> np.ndarray:
    """Which of the ``(K, 2)`` ``(x, y)`` points lie inside an image of ``shape = (H, W)``:
    ``(K,)`` bool.

    Pixel centres sit at integer coordinates (see the module docstring), so pixel ``(row, col)``
    covers ``[col - 0.5, col + 0.5) x [row - 0.5, row + 0.5)`` and a point belongs to pixel
    ``(floor(y + 0.5), floor(x + 0.5))``: rounded half up, the rule the annotator places points
    by (:func:`point_pixel`). A point is inside when that pixel is:
    ``-0.5 <= x < W - 0.5`` and ``-0.5 <= y < H - 0.5``. So ``x = -0.4`` (pixel 0) is inside and
    ``x = W - 0.3`` or ``x = W - 0.5`` (pixel ``W``) is not; NaN and infinities are outside.
    The dataset check and the annotator both use this one rule.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    H, W = shape
    with np.errstate(invalid="ignore"):  # NaN compares False: outside, as it should
        row, col = point_pixels(pts)
        return (col >= 0) & (col < W) & (row >= 0) & (row < H)


def point_pixels(points: np.ndarray) -> tuple:
    """``(rows, cols)``, float ``(K,)`` each: the pixel that holds each of the ``(K, 2)`` ``(x, y)``
    points, rounded half up as in :func:`points_inside` and not clamped."""
    return np.floor(points[:, 1] + 0.5), np.floor(points[:, 0] + 0.5)


def point_pixel(x: float, y: float, H: int, W: int) -> tuple:
    """``(row, col)`` of the pixel that holds point ``(x, y)`` (rounded half up, clamped to the image).

    The points the annotator accepts are those :func:`points_inside` accepts, the
    ones this rounding places without clamping."""
    row = min(max(int(math.floor(float(y) + 0.5)), 0), H - 1)
    col = min(max(int(math.floor(float(x) + 0.5)), 0), W - 1)
    return row, col
