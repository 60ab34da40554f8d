"""Tests of d2d_ext.synthetic: the synthetic infrared scenes and the dataset writer."""

import os
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from d2d_ext.data import IRDataset
from d2d_ext.synthetic import AREA_RANGE, GAP, Scene, make_bar, make_pressed, make_scene, write_dataset

EIGHT = np.ones((3, 3), dtype=bool)
N_SCENES = 40


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(s) for s in range(N_SCENES)]


def test_determinism():
    a, b, c = make_scene(7), make_scene(7), make_scene(8)
    assert isinstance(a, Scene)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.points, b.points)
    assert not np.array_equal(a.image, c.image)
    # A Generator is used (and advanced) in place.
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(make_scene(g1).image, make_scene(g2).image)
    assert not np.array_equal(make_scene(g1).image, make_scene(np.random.default_rng(5)).image)


@pytest.mark.parametrize("background", ["sky", "sea", "ground", "mixed"])
def test_value_range_and_shapes(background):
    sc = make_scene(3, height=96, width=128, background=background, n_targets=3)
    assert sc.image.shape == (96, 128) and sc.image.dtype == np.float32
    assert sc.mask.shape == (96, 128) and sc.mask.dtype == bool
    assert sc.points.shape == (3, 2) and sc.points.dtype == np.float64
    assert np.isfinite(sc.image).all()
    assert sc.image.min() >= 0.0 and sc.image.max() <= 1.0
    assert sc.image.std() > 0.01  # not flat
    if background != "mixed":
        assert sc.background == background


def test_bad_arguments():
    with pytest.raises(ValueError, match="background"):
        make_scene(0, background="space")
    with pytest.raises(ValueError):
        make_scene(0, height=8, width=8)
    for bad in [(0.5, 10.0), (50.0, 10.0), (2.0, float("inf")), (2.0, 10.0, 20.0)]:
        with pytest.raises(ValueError, match="area_range"):
            make_scene(0, area_range=bad)


def test_masks_components_points(scenes):
    kinds = set()
    for sc in scenes:
        kinds.add(sc.background)
        k = len(sc.points)
        assert 1 <= k <= 6
        np.testing.assert_array_equal(sc.labels > 0, sc.mask)
        _, n = ndimage.label(sc.mask, structure=EIGHT)
        assert n == k, "one 8-connected component per target, as many as points"
        assert sc.labels.max() == k
        for j in range(k):
            _, nj = ndimage.label(sc.labels == j + 1, structure=EIGHT)
            assert nj == 1
            x, y = sc.points[j]
            assert sc.labels[int(np.floor(y + 0.5)), int(np.floor(x + 0.5))] == j + 1
            # The point is the target's centroid unless that falls off a concave target.
            ys, xs = np.nonzero(sc.labels == j + 1)
            assert np.hypot(x - xs.mean(), y - ys.mean()) <= np.sqrt(len(xs))
    assert kinds == {"sky", "sea", "ground"}


def test_gaps_and_border(scenes):
    box = np.ones((2 * GAP + 1, 2 * GAP + 1), dtype=bool)
    for sc in scenes:
        h, w = sc.mask.shape
        ys, xs = np.nonzero(sc.mask)
        assert ys.min() >= 4 and xs.min() >= 4 and ys.max() <= h - 5 and xs.max() <= w - 5
        for j in range(len(sc.points)):
            near = ndimage.binary_dilation(sc.labels == j + 1, structure=box)
            others = sc.mask & (sc.labels != j + 1)
            assert not (near & others).any(), "fewer than 3 pixels between two targets"


def test_crowded_scenes_keep_gaps():
    # Small images with the maximum number of targets: placement must avoid touching masks.
    box = np.ones((2 * GAP + 1, 2 * GAP + 1), dtype=bool)
    for s in range(12):
        sc = make_scene(s, height=64, width=64, n_targets=6)
        assert len(sc.points) == 6
        _, n = ndimage.label(sc.mask, structure=EIGHT)
        assert n == 6
        for j in range(6):
            near = ndimage.binary_dilation(sc.labels == j + 1, structure=box)
            assert not (near & sc.mask & (sc.labels != j + 1)).any()


def test_human_point_on_concave_target():
    from d2d_ext.synthetic import _human_point

    ring = np.zeros((12, 12), dtype=bool)
    ring[2:10, 2:10] = True
    ring[4:8, 4:8] = False  # centroid (5.5, 5.5) lies in the hole
    x, y = _human_point(ring, 100, 200)  # patch origin (y0, x0) = (100, 200)
    assert ring[int(round(y)) - 100, int(round(x)) - 200]
    blob = np.zeros((12, 12), dtype=bool)
    blob[3:6, 4:9] = True
    assert _human_point(blob, 0, 0) == (6.0, 4.0)  # convex: the centroid itself


def test_area_distribution(scenes):
    areas = np.concatenate([sc.areas for sc in scenes])
    assert areas.min() <= 4
    assert areas.max() >= 80
    assert 8 <= np.median(areas) <= 60
    assert (areas < 40).mean() > 0.5  # most are small


def test_area_range_draws_extended_targets():
    """The default range is AREA_RANGE (the same scenes as before it was a parameter); a wider
    one gives IRSTD-1k-like extended targets, each still one blob clear of the border."""
    np.testing.assert_array_equal(make_scene(5).image, make_scene(5, area_range=AREA_RANGE).image)
    big = [make_scene(np.random.default_rng([4, i]), 384, 384, area_range=(200.0, 3000.0)) for i in range(6)]
    areas = np.concatenate([sc.areas for sc in big])
    assert areas.min() >= 100 and areas.max() >= 1000
    for sc in big:
        _, n = ndimage.label(sc.mask, EIGHT)
        assert n == len(sc.points)
        assert not sc.mask[:4].any() and not sc.mask[-4:].any() and not sc.mask[:, :4].any() and not sc.mask[:, -4:].any()


def test_targets_visible_and_contrast_varied(scenes):
    box = np.ones((11, 11), dtype=bool)
    visible, total = 0, 0
    snr = np.concatenate([sc.snr for sc in scenes])
    assert snr.min() < 4.0 and snr.max() > 15.0
    for sc in scenes:
        for j in range(len(sc.points)):
            t = sc.labels == j + 1
            ring = ndimage.binary_dilation(t, structure=box) & ~sc.mask
            total += 1
            visible += sc.image[t].max() > np.percentile(sc.image[ring], 90)
        # Targets are not clipped at the top.
        assert sc.image[sc.mask].max() < 1.0
    assert visible >= 0.85 * total


def test_runtime_40_scenes():
    t0 = time.perf_counter()
    for s in range(100, 100 + N_SCENES):
        make_scene(s, 256, 256)
    assert time.perf_counter() - t0 < 10.0


def _files(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_write_dataset(tmp_path):
    n, seed = 6, 11
    root = write_dataset(tmp_path / "SYN", n_images=n, seed=seed, height=64, width=80, name="SYN")
    assert root == tmp_path / "SYN"
    ds = IRDataset(root)
    ids = ds.ids("all")
    assert ids == [f"SYN_{i:04d}" for i in range(n)]
    train, test = ds.ids("train"), ds.ids("test")
    assert len(train) == len(test) == n // 2 and sorted(train + test) == ids
    files = _files(root)
    assert not [f for f in files if f.endswith(".tmp")]
    for i, id_ in enumerate(ids):
        sc = make_scene(np.random.default_rng([seed, i]), 64, 80, "mixed")
        img = ds.load_image(id_)
        assert img.shape == (64, 80)
        assert np.abs(img - sc.image).max() <= 0.5 / 255 + 1e-6
        np.testing.assert_array_equal(ds.load_mask(id_), sc.mask)
        pc = ds.points(id_, "centroid")  # rounded clicks
        assert pc.shape == sc.points.shape
        d = np.abs(pc[:, None, :] - sc.points[None, :, :]).max(axis=2)
        assert (d.min(axis=1) <= 0.5).all() and (d.min(axis=0) <= 0.5).all()
        pv = ds.points(id_, "csv:points_centroid.csv")  # sub-pixel, file order = scene order
        np.testing.assert_allclose(pv, sc.points, atol=5e-4)
        # One 255 pixel per target in masks_centroid.
        clicks = np.asarray(Image.open(root / "masks_centroid" / f"{id_}.png"))
        assert set(np.unique(clicks)) <= {0, 255} and (clicks > 0).sum() == len(sc.points)
    # Same seed: byte-identical; another seed: different images.
    again = write_dataset(tmp_path / "SYN2", n_images=n, seed=seed, height=64, width=80, name="SYN")
    files2 = _files(again)
    assert files2.keys() == files.keys()
    for k in files:
        assert files[k] == files2[k], k
    other = _files(write_dataset(tmp_path / "SYN3", n, seed + 1, 64, 80, name="SYN"))
    assert other["images/SYN_0000.png"] != files["images/SYN_0000.png"]


def test_write_dataset_with_a_set_number_of_targets(tmp_path):
    """``n_targets``: every scene holds that many targets (as ``make_scene`` with it draws them)."""
    root = write_dataset(tmp_path / "MANY", n_images=2, seed=4, height=128, width=160, name="MANY", n_targets=12)
    ds = IRDataset(root)
    for i, id_ in enumerate(ds.ids("all")):
        sc = make_scene(np.random.default_rng([4, i]), 128, 160, "mixed", 12)
        assert len(sc.points) == 12
        np.testing.assert_allclose(ds.points(id_, "csv:points_centroid.csv"), sc.points, atol=5e-4)
        np.testing.assert_array_equal(ds.load_mask(id_), sc.mask)


def test_write_dataset_defaults(tmp_path):
    root = write_dataset(tmp_path / "d", n_images=4)
    ds = IRDataset(root)
    assert len(ds.ids("train")) == 2 and len(ds.ids("test")) == 2
    assert ds.load_image(ds.ids("all")[0]).shape == (256, 256)
    assert os.path.isfile(root / "img_idx" / "train_SYNTH.txt")


@pytest.mark.parametrize("angle", [0.0, 45.0])
def test_make_bar_geometry_and_contrast(angle):
    """The bar's mask is the bar and the pixel of its blurred rim on each side (the blur cut at
    MASK_FRACTION of the top), centred on the point, at the given angle; the top stands ``snr``
    noise deviations above the background."""
    bar = make_bar(40, 6, 8.0, seed=0, angle=angle)
    assert bar.points.tolist() == [[100.0, 100.0]] and bar.mask[100, 100]
    yy, xx = np.mgrid[:200, :200]
    t = np.deg2rad(angle)
    along = (xx - 100.0) * np.cos(t) + (yy - 100.0) * np.sin(t)
    across = -(xx - 100.0) * np.sin(t) + (yy - 100.0) * np.cos(t)
    assert 20.5 <= np.abs(along[bar.mask]).max() <= 22.0 and 3.0 <= np.abs(across[bar.mask]).max() <= 4.5
    top = bar.image[(np.abs(along) <= 15) & (np.abs(across) <= 1)].mean()  # away from the blurred edges
    far = ~ndimage.binary_dilation(bar.mask, iterations=4)
    assert 7.0 < (top - bar.image[far].mean()) / bar.image[far].std() < 9.0


def test_make_pressed_puts_the_target_against_a_band_as_bright():
    """The target's mask is an ellipse around the point, 1.5 times as long along the band as
    across (sigma 6: about 4.6 x 1.5 x 6 pixels wide); the band above it is at least as bright as
    the target's peak, and the pixels between them dip to a saddle; the same seed gives the same
    image, another seed other noise."""
    scene = make_pressed(6, 6, 60, 12, seed=0)
    (x, y), = scene.points
    assert scene.image.dtype == np.float32 and scene.image.shape == (320, 320) and scene.mask[int(y), int(x)]
    ys, xs = np.nonzero(scene.mask)
    assert 1.3 < np.ptp(xs) / np.ptp(ys) < 1.7 and 250 < scene.mask.sum() < 500
    column = ndimage.uniform_filter(scene.image.astype(np.float64), 5)[:, int(x)]
    band, peak = column[120], column[int(y)]
    saddle = column[120:int(y)].min()
    assert band >= peak - 0.02 and saddle < peak - 0.05
    assert np.array_equal(make_pressed(6, 6, 60, 12, seed=0).image, scene.image)
    assert not np.array_equal(make_pressed(6, 6, 60, 12, seed=1).image, scene.image)
