"""Tests of d2d_ext.data, d2d_ext.points and d2d_ext.files: the BasicIRSTD / LESPS dataset reader,
point sources and PNG writing.

Tiny datasets are built in tmp_path; the real SIRST-v1 checks skip where ../shared/data is absent.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from d2d_ext import files as F
from d2d_ext import points as P
from d2d_ext.data import IRDataset
from d2d_ext.files import DataError, read_gray, read_mask, write_png_atomic
from d2d_ext.points import connected_points, label_targets, points_inside

SIRST_ROOT = Path(
    os.environ.get(
        "D2D_SIRST_ROOT", Path(__file__).resolve().parents[2] / "shared/data/SIRST-v1"
    )
)
requires_sirst = pytest.mark.skipif(
    not (SIRST_ROOT / "images").is_dir(),
    reason=f"SIRST-v1 not found at {SIRST_ROOT} (set D2D_SIRST_ROOT to run the real-data checks)",
)

H, W = 12, 16


def _save(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _gray(a):
    return Image.fromarray(np.asarray(a, dtype=np.uint8), mode="L")


def make_tiny(root: Path, name_files=True):
    """A 5-image dataset in the BasicIRSTD layout, one image per PNG mode, ids a..e.

    Image a (L) has two ground-truth targets; all masks are H x W."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (H, W)).astype(np.uint8)
    _save(root / "images/a.png", _gray(base))
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[0, 3] = (255, 255, 255)
    _save(root / "images/b.png", Image.fromarray(rgb, mode="RGB"))
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 3] = 7  # nearly transparent: alpha must be dropped, not blended
    rgba[0, 0] = (0, 0, 255, 7)
    rgba[0, 1] = (10, 20, 30, 255)
    _save(root / "images/c.png", Image.fromarray(rgba, mode="RGBA"))
    pal = Image.new("P", (W, H), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0, 255, 0, 0] + [0] * (256 * 3 - 9))
    pal.putpixel((0, 0), 1)  # green
    pal.putpixel((1, 0), 2)  # red
    _save(root / "images/d.png", pal)
    i16 = np.zeros((H, W), np.uint16)
    i16[0, 0] = 65535
    i16[0, 1] = 32768
    i16[0, 2] = 1
    _save(root / "images/e.png", Image.fromarray(i16))
    # Ground truth: two targets on a (an L shape and a 4x2 bar), one on each of b..e.
    m = np.zeros((H, W), np.uint8)
    m[5, 5] = m[5, 6] = m[6, 5] = 255  # L shape: centroid (5.33, 5.33)
    m[2:4, 10:14] = 255  # bar: centroid (11.5, 2.5)
    _save(root / "masks/a.png", _gray(m))
    for i in "bcde":
        mm = np.zeros((H, W), np.uint8)
        mm[6:9, 3:8] = 255
        _save(root / f"masks/{i}.png", _gray(mm))
    if name_files:
        name = root.name
        (root / "img_idx").mkdir(exist_ok=True)
        (root / f"img_idx/train_{name}.txt").write_text("a\r\nc\r\n\n")  # CRLF, blank line
        (root / f"img_idx/test_{name}.txt").write_text("b\nd\ne")  # no final newline
        (root / "img_idx/val_other-split.txt").write_text("e\n")
    return root


@pytest.fixture
def tiny(tmp_path):
    return make_tiny(tmp_path / "TINY")


# ------------------------------------------------------------------------------------------
# ids and splits
# ------------------------------------------------------------------------------------------


def test_missing_images_folder(tmp_path):
    with pytest.raises(DataError, match="images"):
        IRDataset(tmp_path / "nothing")


def test_ids_all_train_test(tiny):
    ds = IRDataset(tiny)
    assert ds.name == "TINY"
    assert ds.ids("all") == ["a", "b", "c", "d", "e"]
    assert ds.ids("train") == ["a", "c"]
    assert ds.ids("test") == ["b", "d", "e"]
    # A path to a .txt file works too, relative or absolute.
    assert ds.ids(str(tiny / "img_idx/test_TINY.txt")) == ["b", "d", "e"]
    assert ds.ids(tiny / "img_idx/train_TINY.txt") == ["a", "c"]


def test_ids_by_size_groups_frames_by_their_headers(tiny):
    """Frames of two sizes: grouped as ``(W, H)``, each group in the order of the ids given."""
    _save(tiny / "images/c.png", _gray(np.zeros((H + 3, W + 5))))
    groups = IRDataset(tiny).ids_by_size(["e", "c", "a", "b", "d"])
    assert groups == {(W, H): ["e", "a", "b", "d"], (W + 5, H + 3): ["c"]}


def test_ids_single_file_fallback(tiny):
    # No val_TINY.txt, but exactly one val_*.txt.
    assert IRDataset(tiny).ids("val") == ["e"]


def test_ids_exact_name_wins_over_fallback(tiny):
    (tiny / "img_idx/train_TINY-427.txt").write_text("b\n")
    assert IRDataset(tiny).ids("train") == ["a", "c"]


def test_ids_missing_split_lists_available(tiny):
    with pytest.raises(DataError) as e:
        IRDataset(tiny).ids("holdout")
    msg = str(e.value)
    for f in ("train_TINY.txt", "test_TINY.txt", "val_other-split.txt"):
        assert f in msg


def test_ids_ambiguous_fallback(tiny):
    (tiny / "img_idx/val_second.txt").write_text("a\n")
    with pytest.raises(DataError, match="val_second.txt"):
        IRDataset(tiny).ids("val")


def test_ids_without_image(tiny):
    (tiny / "img_idx/train_TINY.txt").write_text("a\nzz9\n")
    with pytest.raises(DataError) as e:
        IRDataset(tiny).ids("train")
    assert "zz9" in str(e.value) and "train_TINY.txt" in str(e.value)


def test_ids_duplicates(tiny):
    (tiny / "img_idx/test_TINY.txt").write_text("b\nd\nb\n")
    with pytest.raises(DataError) as e:
        IRDataset(tiny).ids("test")
    assert "'b'" in str(e.value) and "test_TINY.txt" in str(e.value)


# ------------------------------------------------------------------------------------------
# reading images and masks
# ------------------------------------------------------------------------------------------


def test_read_gray_modes(tiny):
    ds = IRDataset(tiny)
    for i in ds.ids("all"):
        img = ds.load_image(i)
        assert img.shape == (H, W) and img.dtype == np.float32
        assert img.min() >= 0.0 and img.max() <= 1.0
    tol = 1.0 / 255.0
    a = ds.load_image("a")
    ref = np.asarray(Image.open(tiny / "images/a.png"), dtype=np.float64) / 255.0
    np.testing.assert_allclose(a, ref, atol=1e-6)
    b = ds.load_image("b")
    assert abs(b[0, 0] - 0.299) < tol
    assert abs(b[0, 1] - 0.587) < tol
    assert abs(b[0, 2] - 0.114) < tol
    assert abs(b[0, 3] - 1.0) < 1e-6 and b[1, 1] == 0.0
    c = ds.load_image("c")  # alpha dropped
    assert abs(c[0, 0] - 0.114) < tol
    assert abs(c[0, 1] - (0.299 * 10 + 0.587 * 20 + 0.114 * 30) / 255) < tol
    d = ds.load_image("d")  # palette -> colours -> luminance
    assert abs(d[0, 0] - 0.587) < tol and abs(d[0, 1] - 0.299) < tol and d[1, 1] == 0.0
    e = ds.load_image("e")  # 16-bit
    assert Image.open(tiny / "images/e.png").mode.startswith("I")
    assert e[0, 0] == 1.0
    assert abs(e[0, 1] - 32768 / 65535) < 1e-6
    assert abs(e[0, 2] - 1 / 65535) < 1e-8


def test_read_gray_la_and_bilevel(tmp_path):
    la = np.zeros((3, 4, 2), np.uint8)
    la[0, 0] = (51, 0)
    _save(tmp_path / "la.png", Image.fromarray(la, mode="LA"))
    g = read_gray(tmp_path / "la.png")
    assert g.shape == (3, 4) and abs(g[0, 0] - 0.2) < 1e-6
    bi = Image.new("1", (4, 3), 0)
    bi.putpixel((2, 1), 1)
    _save(tmp_path / "bi.png", bi)
    g = read_gray(tmp_path / "bi.png")
    assert g[1, 2] == 1.0 and g.sum() == 1.0


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_read_mask_is_read_gray_thresholded_in_every_mode(tmp_path, suffix):
    """``read_mask``: every pixel ``read_gray`` reads above 0 (above 0.5 in a JPEG), whatever the
    file's mode; 8-bit grey files take a path without the float image, with the same result."""
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (9, 13)).astype(np.uint8)
    grey[0, :4] = (0, 1, 127, 128)  # the edges of both thresholds
    images = {"L": Image.fromarray(grey, mode="L"),
              "RGB": Image.fromarray(np.stack([grey, 255 - grey, grey // 2], -1), mode="RGB")}
    if suffix == ".png":
        images["P"] = images["RGB"].convert("P")
        images["1"] = Image.fromarray(grey > 100)
        images["I;16"] = Image.fromarray(grey.astype(np.uint16) * 257)
    for mode, img in images.items():
        path = tmp_path / f"m_{mode.replace(';', '')}{suffix}"
        img.save(path)
        expected = read_gray(path) > (0.5 if suffix == ".jpg" else 0)
        got = read_mask(path)
        assert got.dtype == bool and np.array_equal(got, expected), mode
    if suffix == ".png":  # lossless: the values as written
        assert read_mask(tmp_path / "m_L.png")[0, :4].tolist() == [False, True, True, True]
        named = tmp_path / "lossless.jpg"  # read as a JPEG's mask (the name), its values exact
        images["L"].save(named, format="PNG")
        assert np.array_equal(read_mask(named), read_gray(named) > 0.5)
        assert read_mask(named)[0, :4].tolist() == [False, False, False, True]
    with pytest.raises(DataError, match="nothing.png"):
        read_mask(tmp_path / "nothing.png")


@pytest.mark.parametrize("density", [0.0005, 0.1, 0.5])
def test_label_targets_and_connected_points_are_scipys(density):
    """``label_targets`` (compiled) gives scipy's 8-connected labels in its raster order, and
    ``connected_points`` the mean pixel of each, on whole frames sparse and dense."""
    mask = np.random.default_rng(int(density * 1e4)).random((270, 480)) < density
    labels, n = label_targets(mask)
    expected, m = ndimage.label(mask, np.ones((3, 3), bool))
    assert labels.dtype == np.int32 and n == m and np.array_equal(labels, expected)
    centres = np.array([ndimage.center_of_mass(mask, expected, k)[::-1] for k in range(1, m + 1)]).reshape(-1, 2)
    np.testing.assert_allclose(connected_points(mask), centres, rtol=0, atol=1e-9)


def test_truncated_png_names_file(tiny):
    path = tiny / "images/a.png"
    noisy = np.random.default_rng(1).integers(0, 256, (64, 64)).astype(np.uint8)
    _gray(noisy).save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="a.png"):
        read_gray(path)
    with pytest.raises(DataError, match="a.png"):
        IRDataset(tiny).load_image("a")


def test_float_frame_with_a_nan_is_refused_naming_the_file_and_pixel(tmp_path):
    """A 32-bit float TIFF in [0, 1] reads as it is; one with a NaN or an infinity (a dead pixel)
    is refused with the file, the count and the first one's place, instead of annotated around."""
    frame = np.random.default_rng(2).random((12, 16)).astype(np.float32)
    path = tmp_path / "frame.tif"
    Image.fromarray(frame, mode="F").save(path)
    np.testing.assert_array_equal(read_gray(path), frame)
    for dead in (np.nan, np.inf, -np.inf):
        bad = frame.copy()
        bad[3, 7] = bad[5, 1] = dead
        Image.fromarray(bad, mode="F").save(path)
        with pytest.raises(DataError, match=r"frame.tif has pixels that are not finite numbers \(NaN or infinity\): "
                                            r"2, the first at \(x=7, y=3\)"):
            read_gray(path)


def test_radiometric_frames_read_scaled_not_clipped(tmp_path):
    """A sensor's frame in its own units (a float TIFF in kelvin, a 32-bit integer TIFF of raw
    counts) reads scaled from its smallest value to its largest, not clipped to one level of 1;
    annotated from a dataset of such files, a scene gets the masks of its [0, 1] image. A mask
    stored the same way is every pixel above zero."""
    from d2d_ext.annotate import Annotator
    from d2d_ext.synthetic import make_scene

    scene = make_scene(np.random.default_rng(5), 96, 128, "mixed")
    kelvin = (285.0 + 25.0 * scene.image.astype(np.float64)).astype(np.float32)
    counts = np.round(3000 + 200000 * scene.image.astype(np.float64)).astype(np.int32)
    truth = np.where(scene.mask > 0, 255.0, 0.0).astype(np.float32)
    for stem, frame in (("kelvin", kelvin), ("counts", counts)):
        _save(tmp_path / "images" / f"{stem}.tif", Image.fromarray(frame))
        _save(tmp_path / "masks" / f"{stem}.tif", Image.fromarray(truth))
    ds = IRDataset(tmp_path)
    annotator = Annotator()
    expected = annotator.annotate([scene.image], [scene.points])[0]
    for stem, frame in (("kelvin", kelvin), ("counts", counts)):
        image = ds.load_image(stem)
        lo, hi = float(frame.min()), float(frame.max())
        np.testing.assert_allclose(image, (frame.astype(np.float64) - lo) / (hi - lo), rtol=0, atol=1e-6)
        assert image.min() == 0.0 and image.max() == 1.0
        np.testing.assert_array_equal(ds.load_mask(stem), scene.mask > 0)
        got = annotator.annotate([image], [scene.points])[0]
        assert got.any() and (got != expected).sum() <= 0.01 * expected.sum(), stem
    # a frame of one value outside [0, 1] has no contrast: all 0; a mask of one positive value is whole
    Image.fromarray(np.full((6, 5), 300.0, np.float32)).save(tmp_path / "flat.tif")
    np.testing.assert_array_equal(read_gray(tmp_path / "flat.tif"), np.zeros((6, 5), np.float32))
    assert read_mask(tmp_path / "flat.tif").all()


def test_missing_and_garbage_files(tiny):
    with pytest.raises(DataError, match="nope.png"):
        read_gray(tiny / "images/nope.png")
    (tiny / "images/junk.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="junk.png"):
        read_gray(tiny / "images/junk.png")


def test_load_mask(tiny):
    ds = IRDataset(tiny)
    m = ds.load_mask("a")
    assert m.dtype == bool and m.shape == (H, W) and m.sum() == 3 + 8
    assert ds.has_mask("a")
    (tiny / "masks/b.png").unlink()
    assert not ds.has_mask("b")
    with pytest.raises(DataError, match=r"masks[/\\]b\.png"):
        ds.load_mask("b")


def test_load_mask_names_the_original_sirst_mask_name(tiny):
    """A dataset in the original SIRST release's naming (``masks/<id>_pixels0.png``): the error
    names the expected file and the one found, and says how to rename it, as the points drawn from
    the masks do; elsewhere it says nothing more."""
    (tiny / "masks/b.png").rename(tiny / "masks/b_pixels0.png")
    with pytest.raises(DataError, match=r"masks[/\\]b\.png .*b_pixels0\.png is there.*rename them to <id>\.png"):
        IRDataset(tiny).load_mask("b")
    with pytest.raises(DataError, match=r"'gen-centroid' need the ground-truth mask.*b_pixels0\.png is there"):
        IRDataset(tiny).points("b", "gen-centroid")
    (tiny / "masks/c.png").unlink()
    with pytest.raises(DataError) as e:
        IRDataset(tiny).load_mask("c")
    assert "pixels0" not in str(e.value)


def test_mask_size_mismatch(tiny):
    _save(tiny / "masks/c.png", _gray(np.zeros((H + 1, W), np.uint8)))
    with pytest.raises(DataError, match=r"masks[/\\]c\.png"):
        IRDataset(tiny).load_mask("c")


# ------------------------------------------------------------------------------------------
# point sources
# ------------------------------------------------------------------------------------------


def test_bmp_jpeg_and_tiff_datasets(tmp_path):
    """Sensors' datasets stored as BMP, JPEG or TIFF read like PNG ones: ids, images, masks and
    point-label masks; a PNG wins over another file of the same stem; a JPEG mask's compression
    noise is not target."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W)).astype(np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[3:6, 4:8] = 255
    point = np.zeros((H, W), np.uint8)
    point[4, 5] = 255
    noisy = mask.copy()
    noisy[0, 0], noisy[3, 4] = 9, 240  # what a JPEG makes of 0 and 255
    for stem, suffix in (("a", ".bmp"), ("b", ".jpg"), ("c", ".TIF")):
        _save(tmp_path / "images" / f"{stem}{suffix}", _gray(image))
        _save(tmp_path / "masks_centroid" / f"{stem}.bmp", _gray(point))
        _save(tmp_path / "masks" / f"{stem}.png", _gray(mask))
    _save(tmp_path / "images" / "d.png", _gray(image))
    _save(tmp_path / "images" / "d.bmp", _gray(255 - image))
    ds = IRDataset(tmp_path)
    assert ds.ids("all") == ["a", "b", "c", "d"]
    assert ds.image_path("a").name == "a.bmp" and ds.image_path("c").name == "c.TIF"
    assert ds.image_path("d").name == "d.png"
    np.testing.assert_array_equal(ds.load_image("a"), image / np.float32(255))
    np.testing.assert_array_equal(ds.load_image("c"), image / np.float32(255))
    assert np.abs(ds.load_image("b") - image / 255).max() < 0.5  # lossy, but the same image
    np.testing.assert_array_equal(ds.points("a", "centroid"), [[5.0, 4.0]])
    assert (ds.load_mask("a") == (mask > 0)).all()
    # a JPEG mask: values near 0 are background, near 255 target
    (tmp_path / "masks" / "b.png").unlink()
    path = tmp_path / "masks" / "b.jpg"
    _save(path, _gray(noisy))
    assert ds.mask_path("b") == path
    assert not ds.load_mask("b")[0, 0] and ds.load_mask("b")[3, 4]
    # a missing file is named with the layout's default suffix
    with pytest.raises(DataError, match=r"masks/e\.png"):
        ds.load_mask("e")


def test_connected_points_diagonal_blob():
    m = np.zeros((H, W), bool)
    m[3, 2] = m[3, 3] = True  # blob 1: centre (2.5, 3)
    m[7, 10] = m[8, 11] = True  # blob 2, diagonal neighbours (8-connected): (10.5, 7.5)
    np.testing.assert_array_equal(connected_points(m), [[2.5, 3.0], [10.5, 7.5]])
    assert connected_points(np.zeros((4, 4), bool)).shape == (0, 2)


def test_points_centroid_folder(tiny):
    m = np.zeros((H, W), np.uint8)
    m[3, 2] = m[3, 3] = 255
    m[7, 10] = m[8, 11] = 255  # diagonal: one blob
    for src in ("centroid", "coarse"):
        _save(tiny / f"masks_{src}/a.png", _gray(m))
        pts = IRDataset(tiny).points("a", src)
        assert pts.dtype == np.float64
        np.testing.assert_array_equal(pts, [[2.5, 3.0], [10.5, 7.5]])


def test_points_centroid_file_missing(tiny):
    (tiny / "masks_centroid").mkdir()  # the folder, without a's file
    with pytest.raises(DataError, match=r"point-label file not found: .*masks_centroid[/\\]a\.png"):
        IRDataset(tiny).points("a", "centroid")


def test_points_folder_missing_names_the_generated_source(tiny):
    """A dataset published with masks but no point folder: the error names the folder and the
    source that derives the same protocol's points from the masks, which then work."""
    assert not (tiny / "masks_centroid").exists()
    with pytest.raises(DataError, match=r"point-label folder not found: .*masks_centroid .*'gen-centroid'"):
        IRDataset(tiny).points("a", "centroid")
    assert len(IRDataset(tiny).points("a", "gen-centroid")) == 2


def test_points_csv(tiny):
    (tiny / "pts.csv").write_text("image,x,y\na,1.25,2.75\nb,0,0\na,3.5,4.0\n")
    ds = IRDataset(tiny)
    np.testing.assert_array_equal(ds.points("a", "csv:pts.csv"), [[1.25, 2.75], [3.5, 4.0]])
    np.testing.assert_array_equal(ds.points("b", f"csv:{tiny / 'pts.csv'}"), [[0.0, 0.0]])
    assert ds.points("c", "csv:pts.csv").shape == (0, 2)


def test_points_csv_parsed_once(tiny, monkeypatch):
    (tiny / "pts.csv").write_text("image,x,y\na,1,2\n")
    ds = IRDataset(tiny)
    calls = []
    real = P.read_points_csv
    monkeypatch.setattr(P, "read_points_csv", lambda p: calls.append(p) or real(p))
    for i in ("a", "b", "a", "c"):
        ds.points(i, "csv:pts.csv")
    assert len(calls) == 1


def test_points_csv_bad_header(tiny):
    (tiny / "pts.csv").write_text("name,x,y\na,1,2\n")
    with pytest.raises(DataError, match="pts.csv"):
        IRDataset(tiny).points("a", "csv:pts.csv")


def test_point_outside_image(tiny):
    (tiny / "pts.csv").write_text(f"image,x,y\na,1,1\nd,{W},3\nb,2,-0.6\n")
    ds = IRDataset(tiny)
    assert ds.points("a", "csv:pts.csv").shape == (1, 2)
    for i in ("d", "b"):
        with pytest.raises(DataError) as e:
            ds.points(i, "csv:pts.csv")
        assert f"'{i}'" in str(e.value) and "pts.csv" in str(e.value)


# A point belongs to pixel floor(x + 0.5) (pixel centres at integers): inside iff
# -0.5 <= x < W - 0.5 (and the same for y). Values on both sides of both edges.
EDGE_X_INSIDE = [-0.5, -0.4, 0.0, W - 1, W - 0.51]
EDGE_X_OUTSIDE = [-0.51, -1.0, W - 0.5, W - 0.3, W]


def test_points_inside_rounds_to_the_pixel_index():
    def as_y(x):  # the same place relative to the top or bottom edge
        return x if x < W / 2 else x - W + H

    for x in EDGE_X_INSIDE:
        assert points_inside([[x, 3.0], [3.0, as_y(x)]], (H, W)).tolist() == [True, True], x
    for x in EDGE_X_OUTSIDE + [float("nan"), float("inf"), -float("inf")]:
        assert points_inside([[x, 3.0], [3.0, as_y(x)]], (H, W)).tolist() == [False, False], x
    assert points_inside(np.zeros((0, 2)), (H, W)).shape == (0,)


@pytest.mark.parametrize("x", EDGE_X_INSIDE + EDGE_X_OUTSIDE)
def test_dataset_and_annotator_agree_on_edge_points(tiny, x):
    """The dataset check passes exactly the points the annotator then accepts; a refused point
    is named with its image id and file."""
    from d2d_ext.annotate import Annotator

    (tiny / "pts.csv").write_text(f"image,x,y\na,{x},3\n")
    ds = IRDataset(tiny)
    if x in EDGE_X_INSIDE:
        pts = ds.points("a", "csv:pts.csv")
        mask = Annotator().annotate([ds.load_image("a")], [pts])[0]
        assert mask.shape == (H, W) and mask.any()
    else:
        with pytest.raises(DataError) as e:
            ds.points("a", "csv:pts.csv")
        message = str(e.value)
        assert f"x={x:g}" in message and "'a'" in message and "pts.csv" in message
        assert f"-0.5 <= x < {W} - 0.5" in message
        with pytest.raises(ValueError, match=rf"point \(x={x:g}, y=3\) of image 0 lies outside the {W}x{H} image"):
            Annotator().annotate([ds.load_image("a")], [np.array([[x, 3.0]])])


def test_points_gen_centroid_is_floor(tiny):
    pts = IRDataset(tiny).points("a", "gen-centroid")
    # Label (raster) order: the bar (row 2) comes first. floor((11.5, 2.5)) = (11, 2), where
    # rounding would give (12, 2) or (12, 3); floor((5.33, 5.33)) = (5, 5).
    np.testing.assert_array_equal(pts, [[11.0, 2.0], [5.0, 5.0]])


def _blobby_mask():
    m = np.zeros((40, 50), np.uint8)
    m[3:10, 4:15] = 255  # 7 x 11 rectangle
    for k in range(12):  # diagonal line, 8-connected
        m[15 + k, 20 + k] = 255
    m[30:38, 5:13] = 255  # ring: concave, centroid off target
    m[32:36, 7:11] = 0
    m[20, 45] = 255  # single pixel
    return m


def test_points_gen_coarse(tmp_path):
    root = tmp_path / "GC"
    for i in ("p", "q", "r"):
        _save(root / f"images/{i}.png", _gray(np.zeros((40, 50), np.uint8)))
        _save(root / f"masks/{i}.png", _gray(_blobby_mask()))
    ds = IRDataset(root)
    gt = ds.load_mask("p")
    from scipy import ndimage

    labels, n = ndimage.label(gt, structure=np.ones((3, 3)))
    a = ds.points("p", "gen-coarse", seed=3)
    assert a.shape == (n, 2) and a.dtype == np.float64
    # Each point is a pixel on its own target (label order).
    np.testing.assert_array_equal(a, np.round(a))
    for k, (x, y) in enumerate(a):
        assert labels[int(y), int(x)] == k + 1
    # Repeatable with the seed; another seed or another id differs.
    np.testing.assert_array_equal(a, ds.points("p", "gen-coarse", seed=3))
    assert not np.array_equal(a, ds.points("p", "gen-coarse", seed=4))
    assert not np.array_equal(a, ds.points("q", "gen-coarse", seed=3))
    # Independent of the order ids are visited (fresh dataset objects).
    fwd = {i: IRDataset(root).points(i, "gen-coarse", seed=3) for i in ("p", "q", "r")}
    ds2 = IRDataset(root)
    bwd = {i: ds2.points(i, "gen-coarse", seed=3) for i in ("r", "q", "p")}
    for i in fwd:
        np.testing.assert_array_equal(fwd[i], bwd[i])
    np.testing.assert_array_equal(fwd["p"], a)


def test_gen_coarse_spread_and_fallback():
    m = _blobby_mask() > 0
    # Many seeds: points scatter around the centroid of the rectangle (std ~ extent / 4 before
    # rejection), not all on one pixel; the single pixel target always gets its own pixel.
    pts = np.stack([P.coarse_points(m, np.random.default_rng(s)) for s in range(200)])
    rect = pts[:, 0]
    assert len({tuple(p) for p in rect}) > 10
    assert abs(rect[:, 0].mean() - 9.0) < 0.5 and abs(rect[:, 1].mean() - 6.0) < 0.5
    assert 1.0 < rect[:, 0].std() < 3.5  # x extent 11: std <= 11 / 4 = 2.75 (less after rejection)
    assert (pts[:, 2] == [45.0, 20.0]).all()  # label order: rect, line, pixel (row 20), ring
    # A target the draws can never hit within 100 tries -> the pixel nearest to its centroid.
    class Far:
        def normal(self, loc, scale, size):
            return np.full(size, 1e6)

    np.testing.assert_array_equal(P.coarse_points(m[:12, :20], Far()), [[9.0, 6.0]])
    ring = np.zeros((10, 10), bool)
    ring[1:9, 1:9] = True
    ring[3:7, 3:7] = False  # centroid (4.5, 4.5) is off the ring
    (x, y), = P.coarse_points(ring, Far())
    assert ring[int(y), int(x)] and abs(x - 4.5) + abs(y - 4.5) == 3.0


def test_gen_points_need_mask(tiny):
    (tiny / "masks/e.png").unlink()
    for src in ("gen-centroid", "gen-coarse"):
        with pytest.raises(DataError, match=r"masks[/\\]e\.png"):
            IRDataset(tiny).points("e", src)


def test_unknown_source(tiny):
    with pytest.raises(DataError) as e:
        IRDataset(tiny).points("a", "centre")
    for s in ("centroid", "coarse", "csv:", "gen-centroid", "gen-coarse"):
        assert s in str(e.value)


# ------------------------------------------------------------------------------------------
# atomic PNG writing
# ------------------------------------------------------------------------------------------


def test_write_png_atomic_roundtrip(tmp_path):
    a = np.random.default_rng(2).integers(0, 256, (9, 13)).astype(np.uint8)
    p = tmp_path / "deep/er/x.png"
    write_png_atomic(p, a)
    assert sorted(os.listdir(p.parent)) == ["x.png"]  # no temporary file left
    np.testing.assert_array_equal(np.asarray(Image.open(p)), a)
    b = 255 - a
    write_png_atomic(p, b)  # overwrite
    assert sorted(os.listdir(p.parent)) == ["x.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(p)), b)
    with pytest.raises(ValueError):
        write_png_atomic(tmp_path / "y.png", a.astype(np.float32))


def test_write_png_atomic_16_bit_roundtrip(tmp_path):
    a = np.random.default_rng(3).integers(0, 65536, (9, 13)).astype(np.uint16)
    a[0, :3] = (0, 1, 65535)
    p = tmp_path / "x16.png"
    write_png_atomic(p, a)
    with Image.open(p) as img:
        assert img.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(img), a)
    g = read_gray(p)  # value / 65535, every level kept
    assert g.dtype == np.float32 and g[0, 2] == 1.0
    np.testing.assert_array_equal(np.round(g.astype(np.float64) * 65535).astype(np.uint16), a)
    write_png_atomic(tmp_path / "y16.png", a.byteswap().view(a.dtype.newbyteorder()))  # big-endian input
    assert (tmp_path / "y16.png").read_bytes() == p.read_bytes()
    with pytest.raises(ValueError):
        write_png_atomic(tmp_path / "z.png", np.zeros((4, 4, 3), np.uint16))


def test_write_png_atomic_interrupted(tmp_path, monkeypatch):
    p = tmp_path / "x.png"
    old = np.zeros((4, 4), np.uint8)
    write_png_atomic(p, old)

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(F.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_png_atomic(p, np.full((4, 4), 9, np.uint8))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["x.png"]  # temp file cleaned up
    np.testing.assert_array_equal(np.asarray(Image.open(p)), old)  # old file intact


# ------------------------------------------------------------------------------------------
# real data: SIRST-v1
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sirst():
    return IRDataset(SIRST_ROOT)


@requires_sirst
def test_sirst_splits(sirst):
    assert len(sirst.ids("all")) == 427
    train, test = sirst.ids("train"), sirst.ids("test")
    assert (len(train), len(test)) == (213, 214)
    assert sorted(train + test) == sirst.ids("all")


@requires_sirst
def test_sirst_human_points_on_targets(sirst):
    from scipy import ndimage

    n_points = 0
    for i in sirst.ids("all"):
        img = sirst.load_image(i)
        mask = sirst.load_mask(i)
        assert img.shape == mask.shape and img.dtype == np.float32
        pts = sirst.points(i, "centroid")
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        hit = labels[np.round(pts[:, 1]).astype(int), np.round(pts[:, 0]).astype(int)]
        assert (hit > 0).all(), f"{i}: a human point lies off the ground truth"
        assert len(pts) == n, f"{i}: {len(pts)} points for {n} targets"
        n_points += len(pts)
    assert n_points == 533


@requires_sirst
def test_sirst_point_mask_agrees_with_csv(sirst):
    src = f"csv:{SIRST_ROOT / 'points_centroid.csv'}"
    for i in sirst.ids("all"):
        a = sirst.points(i, "centroid")
        b = sirst.points(i, src)
        assert a.shape == b.shape, i
        d = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2)  # Chebyshev distances
        assert (d.min(axis=1) <= 1.0).all() and (d.min(axis=0) <= 1.0).all(), i


# ------------------------------------------------------------------------------------------
# stuck sensor pixels (d2d_ext.sensor)
# ------------------------------------------------------------------------------------------


def test_repair_takes_the_median_of_good_neighbours():
    from d2d_ext.sensor import repair

    image = np.arange(30, dtype=np.float32).reshape(5, 6) / 30
    bad = np.zeros((5, 6), bool)
    bad[2, 3] = True  # one pixel: its 8 neighbours are all good
    bad[0, 0] = True  # a corner: 3 neighbours
    out = repair(image, bad)
    assert out[2, 3] == pytest.approx(np.median(np.delete(image[1:4, 2:5].ravel(), 4)))
    assert out[0, 0] == pytest.approx(np.median([image[0, 1], image[1, 0], image[1, 1]]))
    assert np.array_equal(out[~bad], image[~bad]) and out.dtype == image.dtype
    assert image[2, 3] == np.float32(15 / 30)  # the input is not changed


def test_repair_fills_a_cluster_from_its_rim_inwards():
    from d2d_ext.sensor import repair

    image = np.full((7, 7), 0.25, np.float32)
    bad = np.zeros((7, 7), bool)
    bad[2:5, 2:5] = True
    image[bad] = 1.0  # a 3x3 block stuck at the top of the range on a flat background
    out = repair(image, bad)
    assert np.allclose(out, 0.25)  # the centre has no good neighbour until its ring is filled
    assert np.array_equal(repair(image, np.zeros((7, 7), bool)), image)
    with pytest.raises(ValueError, match="same"):
        repair(image, np.zeros((7, 6), bool))
    with pytest.raises(ValueError, match="every pixel"):
        repair(image, np.ones((7, 7), bool))


def test_dataset_repairs_images_from_a_bad_pixel_map(tiny, tmp_path):
    bad = np.zeros((H, W), np.uint8)
    bad[4, 7] = 255
    bad[0, 0] = 255
    _save(tmp_path / "bad.png", _gray(bad))
    plain = IRDataset(tiny)
    repaired = IRDataset(tiny, bad_pixels=tmp_path / "bad.png")
    for i in "abcde":
        a, b = plain.load_image(i), repaired.load_image(i)
        assert np.array_equal(a[bad == 0], b[bad == 0])
        assert b[4, 7] == pytest.approx(np.median(np.delete(a[3:6, 6:9].ravel(), 4)))
    assert np.array_equal(repaired.load_mask("a"), plain.load_mask("a"))  # masks are not touched
    # a map of another size: the error names the image and the map
    _save(tmp_path / "small.png", _gray(np.zeros((H, W - 1), np.uint8) + 255 * np.eye(H, W - 1, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"a\.png is 16x12 \(WxH\) but .*small\.png is 15x12"):
        IRDataset(tiny, bad_pixels=tmp_path / "small.png").load_image("a")
    with pytest.raises(DataError, match="missing.png"):
        IRDataset(tiny, bad_pixels=tmp_path / "missing.png")
    Image.fromarray(bad).save(tmp_path / "bad.jpg", quality=70)  # compression noise around the stuck pixels
    assert np.array_equal(IRDataset(tiny, bad_pixels=tmp_path / "bad.jpg").bad_pixels, bad > 0)
    _save(tmp_path / "all.png", _gray(np.full((H, W), 255, np.uint8)))
    with pytest.raises(DataError, match="every pixel"):
        IRDataset(tiny, bad_pixels=tmp_path / "all.png")


def _frames_with_stuck_pixels(n=20, size=64, seed=0):
    """n synthetic scenes of one sensor whose pixels in ``stuck`` read at the top of the range,
    each with a 1-pixel bright spot at a random place (a moving, unlabelled point target)."""
    from d2d_ext.synthetic import make_scene

    stuck = np.zeros((size, size), bool)
    stuck[10, 20] = True  # alone
    stuck[30, 40:42] = True  # a pair
    stuck[50:52, 10:12] = True  # a 2x2 cluster
    stuck[0, 33] = True  # on the border
    stuck[size - 1, size - 1] = True  # in a corner
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        scene = make_scene(seed * 1000 + k, height=size, width=size)
        image = scene.image.copy()
        y, x = rng.integers(3, size - 3, 2)
        image[y, x] = min(1.0, float(image[y - 1:y + 2, x - 1:x + 2].max()) + 0.5)
        image[stuck] = 1.0
        frames.append((image, scene.points))
    return frames, stuck


def test_hot_pixel_search_finds_stuck_pixels_and_not_moving_targets():
    from d2d_ext.sensor import HotPixelSearch

    frames, stuck = _frames_with_stuck_pixels()
    search = HotPixelSearch(stuck.shape)
    for image, points in frames:
        search.add(image, points)
    found = search.result()
    assert np.array_equal(found.map, stuck)
    assert found.share[stuck].min() >= 0.9 and found.share[~stuck].max() < 0.2
    assert found.frames.max() == len(frames)
    assert not search.result(min_frames=len(frames) + 1).map.any()  # too few frames: nothing is called stuck
    clean = HotPixelSearch(stuck.shape)
    for image, points in _frames_with_stuck_pixels(seed=1)[0]:
        clean.add(np.where(stuck, np.median(image), image), points)
    assert not clean.result().map.any()


def test_hot_pixel_search_leaves_a_labelled_target_that_stays_in_place():
    """A 1-pixel target at the same place in every frame (a staring sensor) stands out as a stuck
    pixel would; its point labels keep it out of the map."""
    from d2d_ext.sensor import HotPixelSearch

    frames, _ = _frames_with_stuck_pixels(n=12)
    labelled, unlabelled = HotPixelSearch((64, 64)), HotPixelSearch((64, 64))
    for image, _ in frames:
        image = image.copy()
        image[40, 12] = 1.0
        labelled.add(image, np.array([[12.3, 39.8]]))
        unlabelled.add(image)
    assert not labelled.result().map[40, 12] and labelled.result().frames[40, 12] == 0
    assert unlabelled.result().map[40, 12]
    with pytest.raises(ValueError, match=r"\(64, 63\)"):
        labelled.add(np.zeros((64, 63)))
    with pytest.raises(ValueError, match="share"):
        HotPixelSearch((64, 64), share=0)


def _overlay(shape) -> np.ndarray:
    """A display's overlay: a crosshair of 2-pixel lines with a gap at its middle, and a 1-pixel
    box in a corner (a frame's mark)."""
    H, W = shape
    ov = np.zeros(shape, bool)
    ov[H // 2:H // 2 + 2, 4:W // 2 - 6] = ov[H // 2:H // 2 + 2, W // 2 + 6:W - 4] = True
    ov[4:H // 2 - 6, W // 2:W // 2 + 2] = ov[H // 2 + 6:H - 4, W // 2:W // 2 + 2] = True
    ov[5:14, 5] = ov[5:14, 13] = ov[5, 5:14] = ov[13, 5:14] = True
    return ov


def test_hot_pixel_search_finds_a_burned_in_overlay():
    """An overlay drawn at one value into 70% of the frames of a sensor (the rest grabbed without
    it) is found whole, and apart from the stuck pixels; nothing else is."""
    from d2d_ext.sensor import HotPixelSearch

    frames, stuck = _frames_with_stuck_pixels(n=30)
    ov = _overlay(stuck.shape) & ~stuck
    search = HotPixelSearch(stuck.shape)
    for k, (image, points) in enumerate(frames):
        search.add(np.where(ov, 0.9, image) if k % 10 < 7 else image, points)
    found = search.result()
    assert np.array_equal(found.map, ov | stuck)
    assert np.array_equal(found.overlay, ov)
    assert found.held[ov].min() >= 0.5 and found.held[~(ov | stuck)].max() < 0.2
    clean = HotPixelSearch(stuck.shape)
    for image, points in frames:
        clean.add(np.where(stuck, np.median(image), image), points)
    assert not clean.result().map.any()


def test_hot_pixel_search_leaves_what_a_staring_sensor_sees_through_its_noise():
    """The same scene in every frame (a staring sensor, 8-bit files) with a thin bright wire across
    it: through the sensor's noise of three grey levels the wire is the scene's and is left;
    burned in at one value, it is an overlay and is found. (At a grey level of noise or less the
    file hardly moves, and what stays in place holds its value as an overlay does.)"""
    from d2d_ext.sensor import HotPixelSearch
    from d2d_ext.synthetic import make_scene

    scene = make_scene(3, height=64, width=64)
    wire = np.zeros((64, 64), bool)
    wire[np.arange(8, 56), np.arange(8, 56)] = True  # a diagonal, 1 pixel wide
    base = 0.2 + 0.5 * scene.image + 0.25 * wire  # nothing near the top of the range
    rng = np.random.default_rng(0)
    seen, burned = HotPixelSearch((64, 64)), HotPixelSearch((64, 64))
    for _ in range(40):
        noisy = np.round(base * 255 + rng.normal(0, 3.0, base.shape)).astype(np.float32) / 255
        seen.add(noisy, scene.points)
        burned.add(np.where(wire, np.float32(240 / 255), noisy), scene.points)
    assert not seen.result().map.any() and seen.result().held.max() < 0.5
    assert np.array_equal(burned.result().overlay, wire) and np.array_equal(burned.result().map, wire)
    with pytest.raises(ValueError, match="reach"):
        HotPixelSearch((64, 64), reach=0)


@pytest.mark.parametrize("name", ["NUDT-SIRST", "MDFA"])
def test_hot_pixel_search_finds_nothing_on_real_frames(name):
    """Real frames of one size (no stuck pixels known): nothing is called stuck, and no pixel
    stands out, or holds as an overlay's stroke, in more than a few percent of its frames; the same
    frames with stuck pixels added give those back, and with an overlay burned in, that."""
    from d2d_ext.sensor import HotPixelSearch

    root = SIRST_ROOT.parent / name
    if not (root / "images").is_dir():
        pytest.skip(f"{name} not found at {root}")
    ds = IRDataset(root)
    ids = ds.ids("all")[:200]
    shape = ds.image_size(ids[0])
    clean, dirty, overlaid = (HotPixelSearch(shape) for _ in range(3))
    stuck = np.zeros(shape, bool)
    stuck[[5, 60, 100], [7, 90, 3]] = True
    ov = _overlay(shape)
    for i in ids:
        image, points = ds.load_image(i), ds.points(i, "centroid")
        clean.add(image, points)
        dirty.add(np.where(stuck, 1.0, image), points)
        overlaid.add(np.where(ov, 1.0, image), points)
    assert not clean.result().map.any() and clean.result().share.max() < 0.05 and clean.result().held.max() < 0.05
    assert np.array_equal(dirty.result().map, stuck)
    assert np.array_equal(overlaid.result().map, ov) and np.array_equal(overlaid.result().overlay, ov)


@pytest.mark.parametrize("shape", [(3, 3), (4, 7), (5, 5), (9, 4), (31, 17), (256, 256)])
def test_ring_maximum_is_scipys_filter_with_the_ring_footprint(shape):
    from scipy import ndimage as ndi

    from d2d_ext.sensor import HotPixelSearch

    im = np.random.default_rng(shape).random(shape).astype(np.float32)
    im[0, :] = 0.5  # ties
    expected = ndi.maximum_filter(im, footprint=HotPixelSearch._RING, mode="constant", cval=-np.inf)
    got = HotPixelSearch._ring_max(im)
    assert got.dtype == np.float32 and np.array_equal(got, expected)


def test_hot_pixel_search_matches_the_filters_it_stands_for():
    """Per frame, the pixels that stand out are those of the rule written with scipy.ndimage's
    filters over the whole frame (ring maximum, 8-neighbour median mirrored at the edges, noise
    from the 3x3 median reflected), though the search takes the median only where the ring test
    passes and, in a frame over 65,536 pixels, the noise from a grid of them."""
    from scipy import ndimage as ndi

    from d2d_ext.sensor import HotPixelSearch
    from d2d_ext.synthetic import make_scene

    def by_filters(im, noise_step=1):
        ring = ndi.maximum_filter(im, footprint=HotPixelSearch._RING, mode="constant", cval=-np.inf)
        med8 = ndi.median_filter(im, footprint=HotPixelSearch._EIGHT, mode="mirror")
        resid = np.abs(im - ndi.median_filter(im, size=3, mode="reflect"))[::noise_step, ::noise_step]
        margin = max(6.0 * 1.4826 * float(np.median(resid)), 0.05)
        return (im - ring > margin) & (im - med8 > margin)

    for seed, (h, w, step) in enumerate([(96, 120, 1), (200, 240, 1), (600, 450, 2)]):
        im = make_scene(seed, height=h, width=w).image.copy()
        im[[0, 5, h - 1, h // 2], [7, 0, w // 3, w - 1]] = 1.0  # on every edge and inside
        search = HotPixelSearch((h, w))
        search.add(im)
        resid = np.abs(im - ndi.median_filter(im, size=3, mode="reflect"))[::step, ::step]
        assert HotPixelSearch._noise(im) == 1.4826 * float(np.median(resid))  # the noise itself, exactly
        expected = by_filters(im, step)
        assert expected.sum() >= 4 and np.array_equal(search.stood_out.astype(bool), expected)


def test_bad_pixel_maps_of_several_sensors_from_a_folder(tiny, tmp_path):
    """A folder of maps named by size: images of a size with a map are repaired from it, others
    are read as they are; a folder without maps, or with a map whose name is no size, is refused
    naming it."""
    from d2d_ext.sensor import read_bad_pixel_maps

    maps = tmp_path / "maps"
    bad = np.zeros((H, W), np.uint8)
    bad[4, 7] = 255
    _save(maps / f"{W}x{H}.png", _gray(bad))
    _save(maps / "33x21.png", _gray(np.zeros((21, 33), np.uint8)))  # another sensor's, with nothing stuck
    (maps / "notes.txt").write_text("not a map\n")  # not an image: left alone
    assert sorted(read_bad_pixel_maps(maps)) == [(H, W), (21, 33)]
    plain, repaired = IRDataset(tiny), IRDataset(tiny, bad_pixels=maps)
    a, b = plain.load_image("a"), repaired.load_image("a")
    assert b[4, 7] == pytest.approx(np.median(np.delete(a[3:6, 6:9].ravel(), 4)))
    assert repaired.bad_pixels_record["maps"] == 2 and repaired.bad_pixels_record["pixels"] == 1
    (maps / f"{W}x{H}.png").unlink()
    (maps / "33x21.png").unlink()
    _save(maps / "5x5.png", _gray(np.zeros((5, 5))))
    assert np.array_equal(IRDataset(tiny, bad_pixels=maps).load_image("a"), a)  # no map of its size: as it is
    (maps / "5x5.png").unlink()
    with pytest.raises(DataError, match="no bad-pixel map in"):
        IRDataset(tiny, bad_pixels=maps)
    _save(maps / "sensor1.png", _gray(bad))
    with pytest.raises(DataError, match=r"sensor1\.png: .*named by its size"):
        IRDataset(tiny, bad_pixels=maps)


@pytest.mark.parametrize("quality", [95, 85, 75])
def test_hot_pixel_search_through_jpeg_compression(quality):
    """Frames saved as JPEG after the stuck pixels were read out and a display's crosshair drawn:
    compression smears each stuck pixel over its 8x8 block and moves the crosshair's pixels by a
    level or so, and the stuck pixels are still found, nearly all of the crosshair (the coding
    moves a few of its pixels further, most where a line meets a busy block), and nothing else."""
    import io

    from d2d_ext.sensor import HotPixelSearch
    from d2d_ext.synthetic import make_scene

    stuck = np.zeros((128, 128), bool)
    stuck[[10, 40, 90, 120], [20, 77, 5, 100]] = True
    cross = np.zeros((128, 128), bool)
    cross[64, 8:120] = cross[8:120, 64] = True
    search = HotPixelSearch(stuck.shape)
    for k in range(30):
        scene = make_scene(k, height=128, width=128)
        image = scene.image.copy()
        image[stuck] = np.minimum(image[stuck] + 0.3, 1.0)
        image[cross] = 1.0
        buf = io.BytesIO()
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
        search.add(np.asarray(Image.open(io.BytesIO(buf.getvalue())), np.float32) / 255, scene.points)
    found = search.result()
    assert np.array_equal(found.map & ~cross, stuck)
    assert (found.overlay & cross).sum() >= 0.95 * cross.sum() and not (found.overlay & ~cross).any()
