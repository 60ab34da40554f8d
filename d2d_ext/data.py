"""Infrared small-target datasets in the BasicIRSTD / LESPS folder layout.

Layout of a dataset root ``ROOT`` (the one ISTD users already have on disk)::

    ROOT/images/<id>.png            the image (any PNG mode; read as one channel in [0, 1]);
                                    .bmp, .jpg, .tif also (see files.IMAGE_SUFFIXES), here and below
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

import os
from pathlib import Path

import numpy as np

from .files import IMAGE_SUFFIXES, DataError, find_image_file, image_size, read_gray, read_mask
from .points import PointLabels
from .sensor import map_record, read_bad_pixel_map, read_bad_pixel_maps, repair

# Reading and writing files (d2d_ext.files) and point labels (d2d_ext.points) have modules of
# their own; the names users (and earlier versions of annotate.py) know from here stay importable
# from here.
from .files import remove_stale_temps, write_bytes_atomic, write_png_atomic  # noqa: F401
from .points import INSIDE_RULE, POINT_SOURCES, connected_points, label_targets, points_inside, valid_point_source  # noqa: F401

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


class IRDataset:
    """An infrared small-target dataset in the BasicIRSTD / LESPS layout (see the module doc).

    ``IRDataset(root)`` raises :class:`DataError` if ``root/images`` is missing. Nothing else is
    read up front; files are read (and checked) when asked for.

    ``bad_pixels``: the sensor's bad-pixel map, an image file (nonzero = stuck pixel, read by
    :func:`d2d_ext.sensor.read_bad_pixel_map`) or an ``(H, W)`` bool array; :meth:`load_image`
    then repairs those pixels from their neighbours (:func:`d2d_ext.sensor.repair`) in every
    image, which must have the map's size. Or a folder of maps named by size (``WxH.png``,
    :func:`d2d_ext.sensor.read_bad_pixel_maps`) for a dataset of several sensors: each image is
    repaired from the map of its size, and read as it is where its size has none.
    """

    def __init__(self, root, bad_pixels=None):
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
        #: The point labels (files, CSV, generated from the masks): ``points`` reads them.
        self.point_labels = PointLabels(self)
        #: The bad-pixel map ``(H, W)`` bool, or None (also with a folder of maps, which are in
        #: ``bad_pixel_maps`` by size); ``bad_pixels_source`` names it in messages.
        self.bad_pixels, self.bad_pixels_source = None, None
        self.bad_pixel_maps: dict = {}
        if isinstance(bad_pixels, (str, os.PathLike)) and Path(bad_pixels).is_dir():
            self.bad_pixel_maps, self.bad_pixels_source = read_bad_pixel_maps(bad_pixels), str(bad_pixels)
        elif isinstance(bad_pixels, (str, os.PathLike)):
            self.bad_pixels, self.bad_pixels_source = read_bad_pixel_map(bad_pixels), str(bad_pixels)
        elif bad_pixels is not None:
            self.bad_pixels, self.bad_pixels_source = np.asarray(bad_pixels, dtype=bool), "the bad-pixel map"

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

        ``"all"``: every image stem in ``images/`` (``*.png``, or another of
        :data:`~d2d_ext.files.IMAGE_SUFFIXES`), sorted. Otherwise the ids listed,
        in file order, by ``img_idx/<split>_<name>.txt``; if that file does not exist but exactly
        one ``img_idx/<split>_*.txt`` does, that one; ``split`` may also be a path to a ``.txt``
        file. Blank lines and surrounding whitespace (CRLF endings) are ignored. Raises
        :class:`DataError` if no file fits (listing the available ones), if an id appears twice,
        or if a listed id has no image (naming the split file and the id).
        """
        if split == "all":
            return sorted({p.stem for p in self.images_dir.iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()})
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
        """``root/images/<id>.png`` (or ``.bmp``, ... : :func:`~d2d_ext.files.find_image_file`)."""
        return find_image_file(self.images_dir, id)

    def mask_path(self, id) -> Path:
        """``root/masks/<id>.png`` (or ``.bmp``, ...)."""
        return find_image_file(self.masks_dir, id)

    def has_mask(self, id) -> bool:
        """Whether ``root/masks/<id>.png`` (or ``.bmp``, ...) exists."""
        return self.mask_path(id).is_file()

    def image_size(self, id) -> tuple[int, int]:
        """``(H, W)`` of the image, from its header."""
        return image_size(self.image_path(id))

    def ids_by_size(self, ids) -> dict:
        """``{(W, H): [id, ...]}``: ``ids`` grouped by their images' size (read from the headers),
        in their order; one sensor's frames share one size."""
        out: dict = {}
        for i in ids:
            h, w = self.image_size(i)
            out.setdefault((w, h), []).append(i)
        return out

    def load_image(self, id) -> np.ndarray:
        """The image as ``(H, W)`` float32 in ``[0, 1]`` (see :func:`read_gray`), its stuck pixels
        repaired where the dataset has a bad-pixel map (a :class:`DataError` naming both if their
        sizes differ)."""
        path = self.image_path(id)
        image = read_gray(path)
        if self.bad_pixel_maps:
            bad = self.bad_pixel_maps.get(image.shape)
            return image if bad is None else repair(image, bad)
        if self.bad_pixels is None:
            return image
        if image.shape != self.bad_pixels.shape:
            h, w = self.bad_pixels.shape
            raise DataError(f"{path} is {image.shape[1]}x{image.shape[0]} (WxH) but {self.bad_pixels_source} "
                            f"is {w}x{h}")
        return repair(image, self.bad_pixels)

    @property
    def bad_pixels_record(self) -> dict | None:
        """The bad-pixel map's (or maps') record for manifests (:func:`d2d_ext.sensor.map_record`),
        or None without one."""
        return map_record(self.bad_pixel_maps or self.bad_pixels)

    def load_mask(self, id) -> np.ndarray:
        """The ground truth as ``(H, W)`` bool (every nonzero pixel is target). Raises
        :class:`DataError` naming the file if it is missing or unreadable, or if its size differs
        from the image's."""
        path = self.mask_path(id)
        if not path.is_file():
            raise DataError(f"ground-truth mask not found: {path} (image id {id!r}){self.mask_name_hint(id)}")
        m = read_mask(path)
        self.check_size(id, path, m.shape)
        return m

    def mask_name_hint(self, id) -> str:
        """For an error on a missing ``root/masks/<id>.png``: where the original SIRST (NUAA-SIRST)
        release's name for it, ``<id>_pixels0.png``, is there, how to rename the masks; else ``""``."""
        original = find_image_file(self.masks_dir, f"{id}_pixels0")
        if not original.is_file():
            return ""
        return (f"; {original.name} is there: the original SIRST release names its masks <id>_pixels0, "
                f"rename them to <id>{original.suffix} (the BasicIRSTD layout)")

    def check_size(self, id, path: Path, shape) -> None:
        """Raises :class:`DataError` naming ``path`` unless ``shape`` is image ``id``'s ``(H, W)``."""
        hw = self.image_size(id)
        if tuple(shape) != hw:
            raise DataError(
                f"{path} is {shape[1]}x{shape[0]} (WxH) but its image {self.image_path(id)} is "
                f"{hw[1]}x{hw[0]}"
            )

    # ---- points ----------------------------------------------------------------------------

    def points(self, id, source: str, seed: int = 0) -> np.ndarray:
        """The point labels of image ``id``: ``(K, 2)`` float64, columns ``(x, y)``, 0-based
        pixels, from ``source`` (one of :data:`POINT_SOURCES`; see :meth:`PointLabels.get`)."""
        return self.point_labels.get(id, source, seed)


def _short_list(items, limit: int = 10) -> str:
    items = [repr(i) for i in items]
    if len(items) > limit:
        return ", ".join(items[:limit]) + f", ... ({len(items)} in all)"
    return ", ".join(items)
