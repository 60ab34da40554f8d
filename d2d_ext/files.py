"""Reading and writing files: images as one channel, atomic writes, JSON lines.

Every write here is atomic (a temporary file in the same folder, flushed and moved over the target),
so a reader or an interrupted run never sees a partial file; :func:`remove_stale_temps` clears what
a killed process leaves behind. Every read failure raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "DataError",
    "IMAGE_SUFFIXES",
    "find_image_file",
    "lossy",
    "read_gray",
    "read_mask",
    "image_size",
    "write_bytes_atomic",
    "write_png_atomic",
    "remove_stale_temps",
    "json_line",
]


class DataError(ValueError):
    """Bad or missing input; the message names the file."""


# The file types a dataset's images, masks and point-label masks may have, in order of preference
# (BasicIRSTD-style datasets mostly store PNG; some sensors' sets come as BMP, JPEG or TIFF).
IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


def find_image_file(folder, stem: str) -> Path:
    """``folder/<stem><suffix>`` for the first suffix of :data:`IMAGE_SUFFIXES` (either case) that
    exists; ``folder/<stem>.png`` if none does (so that a read names the expected file)."""
    folder = Path(folder)
    for suffix in IMAGE_SUFFIXES:
        for s in (suffix, suffix.upper()):
            path = folder / f"{stem}{s}"
            if path.is_file():
                return path
    return folder / f"{stem}.png"


def lossy(path) -> bool:
    """Whether ``path`` is a JPEG, whose masks hold compression noise around 0 and 255."""
    return Path(path).suffix.lower() in (".jpg", ".jpeg")


def read_gray(path) -> np.ndarray:
    """Read an image file as one channel: ``(H, W)`` float32 in ``[0, 1]``.

    Any PNG mode works: palette images are first expanded to their colours; RGB(A) becomes the
    luminance ``0.299 R + 0.587 G + 0.114 B`` (alpha dropped); grey + alpha keeps the grey;
    16-bit images are divided by 65535, 8-bit ones by 255, 1-bit ones give 0 / 1. A float frame
    (a 32-bit TIFF) reads as it is where its values lie in ``[0, 1]``, and so does a 32-bit
    integer one divided by 65535; one whose values leave that range (a sensor's radiometric
    frame: counts, kelvin) reads scaled from its smallest value to its largest
    (:func:`_unit_range`), never clipped. A float frame with a pixel that is no finite number
    (a dead pixel written as NaN) is refused, naming the first such pixel.
    The file is fully decoded here, so a missing, unreadable or truncated file raises
    :class:`DataError` naming ``path``.
    """
    return _decoded(path, _to_gray)


def read_mask(path) -> np.ndarray:
    """Read a mask file (ground truth, point labels, a bad-pixel map) as ``(H, W)`` bool: every
    pixel above zero, or above half the range in a JPEG, whose compression leaves noise around 0
    and 255. The same as ``read_gray(path) > 0`` (``> 0.5``), without the float image where the
    file is 8-bit grey, as most masks are. Raises as :func:`read_gray`."""
    half = lossy(path)

    def to_mask(img: Image.Image, path: Path) -> np.ndarray:
        if img.mode == "L":  # read_gray's v / 255 is above 0 for v >= 1, above 0.5 for v >= 128
            a = np.asarray(img)
            return a >= 128 if half else a > 0
        if img.mode in ("F", "I"):  # a mask's pixels in its own units: above zero is the mask
            return np.asarray(img, dtype=np.float64) > 0
        return _to_gray(img, path) > (0.5 if half else 0.0)

    return _decoded(path, to_mask)


def _decoded(path, convert):
    """``convert(image, path)`` of the fully decoded image file ``path`` (a truncated file fails
    here, not later); a missing or unreadable file raises :class:`DataError` naming it."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return convert(img, path)
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
        return np.divide(a, np.float32(255.0), dtype=np.float32)  # cast to float32, then divided
    if mode.startswith("I;16") or mode == "I":
        # 16-bit PNGs open as "I;16" (or "I" with older Pillow); values are 0..65535. A 32-bit
        # integer TIFF opens as "I" too, and may hold more.
        return _unit_range(np.asarray(img).astype(np.float64) / 65535.0)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        bad = ~np.isfinite(a)
        if bad.any():  # a float frame's dead pixels: no value to annotate or score
            ys, xs = np.nonzero(bad)
            raise DataError(f"{path} has pixels that are not finite numbers (NaN or infinity): {len(ys)}, the "
                            f"first at (x={xs[0]}, y={ys[0]}); write a value in their place (their neighbours' median)")
        return _unit_range(a)
    raise DataError(f"unsupported image mode {mode!r} in {path}")


def _unit_range(a: np.ndarray) -> np.ndarray:
    """``a`` (float64, finite) as float32 in ``[0, 1]``: as it is where it lies in that range,
    else scaled linearly from its smallest value (0) to its largest (1; all 0 where they are one).
    Clipping would flatten a radiometric frame (kelvin, raw counts) to one level; the annotator
    reads contrasts against a window's own background and noise, which a linear map keeps."""
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a.astype(np.float32)


def image_size(path) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header (no decode)."""
    path = Path(path)
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
