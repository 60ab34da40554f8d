"""Infrared small-target datasets in the BasicIRSTD / LESPS folder layout.

Layout of a dataset root ``ROOT`` (the one ISTD users already have on disk)::

    ROOT/images/<id>.png            the image (any PNG mode; read as one channel in [0, 1])
    ROOT/masks/<id>.png             ground truth, 0 / 255 (every nonzero pixel is target)
    ROOT/masks_centroid/<id>.png    point labels: each 8-connected nonzero blob is one point
    ROOT/masks_coarse/<id>.png      the same, for the LESPS "coarse" point labels
    ROOT/img_idx/<split>_<NAME>.txt one id per line, no extension (e.g. train_SIRST-v1.txt)

Coordinates: points are ``(K, 2)`` float64 arrays with columns ``(x, y)`` in 0-based pixel units,
``(0, 0)`` being the centre of the top-left pixel, so a point on pixel ``(row, col)`` reads
``(col, row)``; a point lies inside its image when it rounds to one of its pixels
(:func:`points_inside`). Images are ``(H, W)`` float32 in ``[0, 1]``; masks ``(H, W)`` bool.

Every problem with the input (missing file, unreadable or truncated PNG, size mismatch, bad split
file, point outside its image) raises :class:`DataError` whose message names the offending file.
"""

from __future__ import annotations

import csv
import io
import os
import re
import secrets
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .metrics import EIGHT_CONNECTED

__all__ = [
    "DataError",
    "IRDataset",
    "POINT_SOURCES",
    "read_gray",
    "write_png_atomic",
    "write_bytes_atomic",
    "remove_stale_temps",
    "connected_points",
    "label_targets",
    "points_inside",
    "valid_point_source",
]

#: The point sources of :meth:`IRDataset.points` (``"csv:FILE"`` takes a file name after the colon).
POINT_SOURCES = ("centroid", "coarse", "csv:FILE", "gen-centroid", "gen-coarse")

# LESPS coarse protocol: offsets are (bbox_extent / 2) * N(0, 1/4), i.e. std 0.5 * extent / 2.
_COARSE_STD = 0.5
_COARSE_MAX_DRAWS = 100


class DataError(ValueError):
    """Bad or missing input; the message names the file."""


# --------------------------------------------------------------------------------------------
# Reading and writing PNGs
# --------------------------------------------------------------------------------------------


def read_gray(path) -> np.ndarray:
    """Read an image file as one channel: ``(H, W)`` float32 in ``[0, 1]``.

    Any PNG mode works: palette images are first expanded to their colours; RGB(A) becomes the
    luminance ``0.299 R + 0.587 G + 0.114 B`` (alpha dropped); grey + alpha keeps the grey;
    16-bit images are divided by 65535, 8-bit ones by 255, 1-bit ones give 0 / 1.
    The file is fully decoded here, so a missing, unreadable or truncated file raises
    :class:`DataError` naming ``path``.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # full decode: a truncated file fails here, not later
            return _to_gray(img, path)
    except DataError:
        raise
    except FileNotFoundError as err:
        raise DataError(f"image file not found: {path}") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def _to_gray(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "1":
        return np.asarray(img, dtype=np.float32)  # bool -> 0 / 1
    if mode in ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
        if mode not in ("RGB", "RGBA", "RGBX"):
            img = img.convert("RGB")
        a = np.asarray(img, dtype=np.float64)
        lum = 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
        return np.clip(lum / 255.0, 0.0, 1.0).astype(np.float32)
    if mode in ("L", "LA", "La"):
        a = np.asarray(img)
        if a.ndim == 3:
            a = a[..., 0]
        return (a.astype(np.float32) / np.float32(255.0)).astype(np.float32)
    if mode.startswith("I;16") or mode == "I":
        # 16-bit PNGs open as "I;16" (or "I" with older Pillow); values are 0..65535.
        a = np.asarray(img).astype(np.float64)
        return np.clip(a / 65535.0, 0.0, 1.0).astype(np.float32)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        return np.clip(a, 0.0, 1.0).astype(np.float32)
    raise DataError(f"unsupported image mode {mode!r} in {path}")


def _image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header (no decode)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError as err:
        raise DataError(f"image file not found: {path}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err
    return int(h), int(w)


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory is written,
    flushed to disk and moved over ``path`` with :func:`os.replace`, so readers (and an
    interrupted run) never see a partial file. Creates missing parent directories."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with mode 0o666 honours the umask (mkstemp would make the file 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise _write_error(path, err) from err
        raise
    return path


def _write_error(path: Path, err: OSError) -> OSError:
    """The same kind of ``OSError`` (``errno`` kept: a full disk stays ``ENOSPC``, a read-only
    folder ``PermissionError``), its message naming the file that could not be written."""
    if err.errno is None:
        return OSError(f"cannot write {path}: {err}")
    return OSError(err.errno, f"cannot write {path}: {err.strerror or err}")


_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def remove_stale_temps(folder) -> list:
    """Delete the temporary files that :func:`write_bytes_atomic` leaves in ``folder`` when its
    process dies mid-write (``kill -9``, power loss): ``.<name>.<pid>.<8 hex>.tmp`` whose process
    is gone (or is this one, which is not writing now). Files of a live process are kept. Returns
    the paths removed."""
    folder = Path(folder)
    removed = []
    try:
        candidates = sorted(folder.glob(".*.tmp"))
    except OSError:
        return removed
    for p in candidates:
        m = _TEMP_NAME.fullmatch(p.name)
        if not m:
            continue
        pid = int(m.group("pid"))
        if pid != os.getpid() and _process_alive(pid):
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:  # gone already, or a folder we may not write (the write will say so)
            pass
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def json_line(obj) -> str:
    """``obj`` as one line of strict JSON: non-finite floats (an undefined metric, e.g. Pd of a
    split without targets) become ``null``, which every JSON parser reads."""
    import json
    import math

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), allow_nan=False)


def write_png_atomic(path, array) -> Path:
    """Write a ``(H, W)`` uint8 array as an 8-bit greyscale PNG, a ``(H, W)`` uint16 array as a
    16-bit greyscale one (:func:`read_gray` divides it by 65535) or a ``(H, W, 3)`` uint8 array as
    RGB at ``path``, atomically (see :func:`write_bytes_atomic`); creates parent directories. The
    bytes depend only on the array (no timestamps), so equal arrays give byte-identical files.
    Returns ``path``."""
    a = np.asarray(array)
    rgb = a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8
    wide = a.ndim == 2 and a.dtype.kind == "u" and a.dtype.itemsize == 2  # uint16, either byte order
    if not ((a.ndim == 2 and a.dtype == np.uint8) or rgb or wide):
        raise ValueError(
            f"write_png_atomic({path}): expected a (H, W) uint8 or uint16 or a (H, W, 3) uint8 array, "
            f"got shape {a.shape} dtype {a.dtype}"
        )
    buf = io.BytesIO()
    if wide:  # Pillow's "I;16" is little-endian 16-bit grey, saved as a 16-bit PNG
        image = Image.fromarray(np.ascontiguousarray(a, dtype="<u2"))
    else:
        image = Image.fromarray(np.ascontiguousarray(a), mode="RGB" if rgb else "L")
    image.save(buf, format="PNG", compress_level=6)
    return write_bytes_atomic(path, buf.getvalue())


# --------------------------------------------------------------------------------------------
# Blobs
# --------------------------------------------------------------------------------------------


def label_targets(mask) -> tuple[np.ndarray, int]:
    """8-connected components of a ``(H, W)`` boolean mask: ``(labels int32 (H, W), count)``,
    labels ``1..count`` in raster order of each component's first pixel (scipy.ndimage.label)."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    labels, n = ndimage.label(m, structure=EIGHT_CONNECTED)
    return labels.astype(np.int32, copy=False), int(n)


def connected_points(mask) -> np.ndarray:
    """Centres of the 8-connected blobs of a ``(H, W)`` boolean mask: ``(K, 2)`` float64,
    columns ``(x, y)`` (the mean column and row of each blob's pixels), in label order
    (``scipy.ndimage.label``'s raster order). An empty mask gives a ``(0, 2)`` array."""
    labels, n = label_targets(mask)
    if n == 0:
        return np.zeros((0, 2), dtype=np.float64)
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    count = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    sx = np.bincount(lab, weights=xs, minlength=n + 1)[1:]
    sy = np.bincount(lab, weights=ys, minlength=n + 1)[1:]
    return np.stack([sx / count, sy / count], axis=1)


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


class IRDataset:
    """An infrared small-target dataset in the BasicIRSTD / LESPS layout (see the module doc).

    ``IRDataset(root)`` raises :class:`DataError` if ``root/images`` is missing. Nothing else is
    read up front; files are read (and checked) when asked for.
    """

    def __init__(self, root):
        self.root = Path(root).expanduser()
        self.images_dir = self.root / "images"
        if not self.images_dir.is_dir():
            raise DataError(
                f"not a dataset root: {self.images_dir} is missing (expected the BasicIRSTD "
                "layout images/, masks/, img_idx/)"
            )
        self.masks_dir = self.root / "masks"
        self.idx_dir = self.root / "img_idx"
        #: The dataset name: the folder name of ``root`` (used to find img_idx/<split>_<name>.txt).
        self.name = Path(os.path.abspath(self.root)).name
        self._csv_cache: dict[Path, dict[str, np.ndarray]] = {}

    def __repr__(self):
        return f"IRDataset({str(self.root)!r})"

    # ---- ids -------------------------------------------------------------------------------

    def split_files(self) -> list[Path]:
        """The split files ``img_idx/*.txt`` present, sorted by name."""
        if not self.idx_dir.is_dir():
            return []
        return sorted(p for p in self.idx_dir.glob("*.txt") if p.is_file())

    def split_file(self, split: str) -> Path:
        """The file that lists ``split``'s ids (see :meth:`ids`)."""
        split = str(split)
        as_path = Path(split).expanduser()
        if split.endswith(".txt") or "/" in split or os.sep in split:
            for cand in (as_path, self.root / as_path, self.idx_dir / as_path):
                if cand.is_file():
                    return cand
            raise DataError(f"split file not found: {split} (also looked in {self.idx_dir})")
        exact = self.idx_dir / f"{split}_{self.name}.txt"
        if exact.is_file():
            return exact
        matches = sorted(p for p in self.idx_dir.glob(f"{split}_*.txt") if p.is_file())
        if len(matches) == 1:
            return matches[0]
        available = ", ".join(p.name for p in self.split_files()) or "none"
        if len(matches) > 1:
            raise DataError(
                f"split {split!r} of {self.root} is ambiguous: {exact.name} does not exist and "
                f"several files match {split}_*.txt; pass one as a path. Available split files in "
                f"{self.idx_dir}: {available}"
            )
        raise DataError(
            f"no split file for split {split!r} of {self.root}: {exact} does not exist and no "
            f"{split}_*.txt matches. Available split files in {self.idx_dir}: {available} "
            "(or use split='all')"
        )

    def ids(self, split: str = "all") -> list[str]:
        """The image ids of ``split``.

        ``"all"``: every image stem in ``images/`` (``*.png``), sorted. Otherwise the ids listed,
        in file order, by ``img_idx/<split>_<name>.txt``; if that file does not exist but exactly
        one ``img_idx/<split>_*.txt`` does, that one; ``split`` may also be a path to a ``.txt``
        file. Blank lines and surrounding whitespace (CRLF endings) are ignored. Raises
        :class:`DataError` if no file fits (listing the available ones), if an id appears twice,
        or if a listed id has no image (naming the split file and the id).
        """
        if split == "all":
            return sorted(p.stem for p in self.images_dir.glob("*.png") if p.is_file())
        path = self.split_file(split)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read split file {path}: {err}") from err
        ids = [line.strip() for line in text.splitlines()]
        ids = [i for i in ids if i]
        seen: set[str] = set()
        dups = []
        for i in ids:
            if i in seen and i not in dups:
                dups.append(i)
            seen.add(i)
        if dups:
            raise DataError(f"split file {path} lists ids more than once: {_short_list(dups)}")
        missing = [i for i in ids if not self.image_path(i).is_file()]
        if missing:
            raise DataError(
                f"split file {path} lists ids without an image in {self.images_dir}: "
                f"{_short_list(missing)}"
            )
        return ids

    # ---- files -----------------------------------------------------------------------------

    def image_path(self, id) -> Path:
        """``root/images/<id>.png``."""
        return self.images_dir / f"{id}.png"

    def mask_path(self, id) -> Path:
        """``root/masks/<id>.png``."""
        return self.masks_dir / f"{id}.png"

    def has_mask(self, id) -> bool:
        """Whether ``root/masks/<id>.png`` exists."""
        return self.mask_path(id).is_file()

    def image_size(self, id) -> tuple[int, int]:
        """``(H, W)`` of the image, from its header."""
        return _image_size(self.image_path(id))

    def load_image(self, id) -> np.ndarray:
        """The image as ``(H, W)`` float32 in ``[0, 1]`` (see :func:`read_gray`)."""
        return read_gray(self.image_path(id))

    def load_mask(self, id) -> np.ndarray:
        """The ground truth as ``(H, W)`` bool (every nonzero pixel is target). Raises
        :class:`DataError` naming the file if it is missing or unreadable, or if its size differs
        from the image's."""
        path = self.mask_path(id)
        if not path.is_file():
            raise DataError(f"ground-truth mask not found: {path} (image id {id!r})")
        m = read_gray(path) > 0
        self._check_size(id, path, m.shape)
        return m

    def _check_size(self, id, path: Path, shape) -> None:
        hw = self.image_size(id)
        if tuple(shape) != hw:
            raise DataError(
                f"{path} is {shape[1]}x{shape[0]} (WxH) but its image {self.image_path(id)} is "
                f"{hw[1]}x{hw[0]}"
            )

    # ---- points ----------------------------------------------------------------------------

    def points(self, id, source: str, seed: int = 0) -> np.ndarray:
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
            path = self.root / f"masks_{source}" / f"{id}.png"
            if not path.is_file():
                raise DataError(f"point-label file not found: {path} (image id {id!r})")
            blobs = read_gray(path) > 0
            self._check_size(id, path, blobs.shape)
            pts = connected_points(blobs)
        elif source.startswith("csv:"):
            path = self._csv_path(source[4:])
            table = self._read_csv(path)
            pts = table.get(str(id), np.zeros((0, 2), dtype=np.float64)).copy()
        elif source in ("gen-centroid", "gen-coarse"):
            path = self.mask_path(id)
            if not path.is_file():
                raise DataError(
                    f"points {source!r} need the ground-truth mask, but {path} does not exist "
                    f"(image id {id!r})"
                )
            mask = self.load_mask(id)
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
        h, w = self.image_size(id)
        bad = ~points_inside(pts, (h, w))
        if bad.any():
            x, y = pts[int(np.flatnonzero(bad)[0])]
            raise DataError(
                f"point (x={x:g}, y={y:g}) of image {id!r} lies outside the {w}x{h} (WxH) "
                f"image {self.image_path(id)} ({INSIDE_RULE.format(w=w, h=h)}; source {source!r}, file {path})"
            )

    def _csv_path(self, name: str) -> Path:
        p = Path(name).expanduser()
        if p.is_file():
            return p.resolve()
        if not p.is_absolute() and (self.root / p).is_file():
            return (self.root / p).resolve()
        raise DataError(f"point CSV not found: {name} (also looked in {self.root})")

    def _read_csv(self, path: Path) -> dict[str, np.ndarray]:
        cached = self._csv_cache.get(path)
        if cached is not None:
            return cached
        table = read_points_csv(path)
        self._csv_cache[path] = table
        return table


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


# --------------------------------------------------------------------------------------------
# Generated point labels (LESPS protocols)
# --------------------------------------------------------------------------------------------


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


#: What :func:`points_inside` accepts, for error messages (``.format(w=W, h=H)``).
INSIDE_RULE = "a point lies inside when -0.5 <= x < {w} - 0.5 and -0.5 <= y < {h} - 0.5"


def points_inside(points, shape) -> np.ndarray:
    """Which of the ``(K, 2)`` ``(x, y)`` points lie inside an image of ``shape = (H, W)``:
    ``(K,)`` bool.

    Pixel centres sit at integer coordinates (see the module docstring), so pixel ``(row, col)``
    covers ``[col - 0.5, col + 0.5) x [row - 0.5, row + 0.5)`` and a point belongs to pixel
    ``(floor(y + 0.5), floor(x + 0.5))``: rounded half up, the rule the annotator places points
    by (:func:`d2d_ext.annotate.point_pixel`). A point is inside when that pixel is:
    ``-0.5 <= x < W - 0.5`` and ``-0.5 <= y < H - 0.5``. So ``x = -0.4`` (pixel 0) is inside and
    ``x = W - 0.3`` or ``x = W - 0.5`` (pixel ``W``) is not; NaN and infinities are outside.
    The dataset check and the annotator both use this one rule.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    H, W = shape
    with np.errstate(invalid="ignore"):  # NaN compares False: outside, as it should
        col, row = np.floor(pts[:, 0] + 0.5), np.floor(pts[:, 1] + 0.5)
        return (col >= 0) & (col < W) & (row >= 0) & (row < H)


def _short_list(items, limit: int = 10) -> str:
    items = [repr(i) for i in items]
    if len(items) > limit:
        return ", ".join(items[:limit]) + f", ... ({len(items)} in all)"
    return ", ".join(items)
