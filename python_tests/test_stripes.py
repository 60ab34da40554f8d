"""A sensor's column (or row) readout pattern: found, removed, and left alone where there is none."""

import os
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import median_filter, uniform_filter1d

from d2d_ext.annotate import Annotator, AnnotatorConfig
from d2d_ext.data import IRDataset
from d2d_ext.metrics import ISTDMetrics
from d2d_ext import _C
from d2d_ext.stripes import _offsets, _offsets_numpy, _row_median, destripe, line_offsets, median_of
from d2d_ext.synthetic import make_scene
from d2d_ext.windows import pixel_noise

SIRST = Path(os.environ.get("D2D_SIRST_ROOT", Path(__file__).resolve().parents[2] / "shared/data/SIRST-v1"))


def _scenes(n, seed=0, size=256):
    return [make_scene(np.random.default_rng([seed, i]), size, size, "mixed") for i in range(n)]


def _striped(image, times, seed, axis=1):
    """``image`` with one offset per column (``axis=1``) or row of ``times`` its pixel noise."""
    rng = np.random.default_rng(seed)
    offsets = times * pixel_noise(image) * rng.standard_normal(image.shape[axis])
    shift = offsets[None, :] if axis == 1 else offsets[:, None]
    return np.clip(image + shift, 0.0, 1.0).astype(np.float32), offsets


@pytest.mark.parametrize("width", [3, 5, 7, 9])
def test_row_median_is_scipys_median_filter_along_rows(width):
    """The sorting network gives each pixel the median of its row's ``width`` pixels, the edge
    pixels repeated beyond the edge, exactly (ties and repeated values included)."""
    rng = np.random.default_rng(width)
    v = rng.random((23, 41)).astype(np.float32)
    v[5, 10:20] = 0.5  # ties
    v[:, 0] = np.round(v[:, 0] * 4) / 4
    assert np.array_equal(_row_median(v, width), median_filter(v, size=(1, width), mode="nearest"))


@pytest.mark.parametrize("shape", [(1, 9), (2, 7), (31, 128), (32, 57), (64, 40), (65, 40), (200, 33)])
@pytest.mark.parametrize("width", [3, 7])
def test_compiled_offsets_are_numpys(shape, width):
    """The compiled column offsets (each column's median departure from its rows' running median)
    and the pattern's size are numpy's to the bit, the standard error to float32 rounding: an odd
    and an even number of rows, on either side of the row count where a column's median stops
    being a network and becomes a selection, ties and a striped frame included."""
    rng = np.random.default_rng([shape[0], shape[1], width])
    cases = [rng.random(shape).astype(np.float32),
             (rng.integers(0, 4, shape) / 4).astype(np.float32),  # many ties
             (rng.random(shape) * 0.1 + rng.standard_normal(shape[1]) * 0.05).astype(np.float32)]  # stripes
    for rows in cases:
        offsets, size, error = _offsets(rows, width)
        want = _offsets_numpy(rows, width)
        assert offsets.dtype == np.float32 and offsets.shape == (shape[1],)
        assert np.array_equal(offsets, want[0]) and size == want[1]
        assert error == pytest.approx(want[2], rel=1e-6, abs=1e-12)
        assert _offsets(rows.astype(np.float64)[::-1], width)[1] == _offsets_numpy(rows[::-1], width)[1]


def test_a_frame_with_a_non_finite_pixel_has_no_pattern():
    """A NaN or an infinity (a dead pixel of a float frame) gives no offsets to remove: the frame
    comes back as it is, its pattern unread, rather than every pixel shifted by a NaN."""
    striped, _ = _striped(_scenes(1, seed=3)[0].image, 3.0, seed=3)
    assert line_offsets(striped).any()  # the pattern stands out where every pixel is finite
    for bad in (np.nan, np.inf):
        frame = striped.copy()
        frame[40, 50] = bad
        offsets, size, error = _offsets(np.ascontiguousarray(frame[::2]), 7)
        assert np.isnan(size) and np.isnan(error) and np.isnan(offsets).all()
        assert not line_offsets(frame).any() and not line_offsets(frame.T).any()
        assert destripe(frame, "both") is frame


def test_compiled_offsets_refuse_bad_arrays():
    rows = np.zeros((4, 9), np.float32)
    out = np.zeros((1, 9), np.float32)
    with pytest.raises(ValueError, match="line_offsets: rows must have dtype"):
        _C.line_offsets(rows.astype(np.float64), 3, out)
    with pytest.raises(ValueError, match="line_offsets: rows must be C-contiguous"):
        _C.line_offsets(np.zeros((4, 18), np.float32)[:, ::2], 3, out)
    with pytest.raises(ValueError, match=r"offsets \(1, 8\) must have shape \(1, 9\)"):
        _C.line_offsets(rows, 3, np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="width must be odd"):
        _C.line_offsets(rows, 4, out)
    with pytest.raises(ValueError, match="width must be odd"):
        _C.line_offsets(rows, 11, out)
    with pytest.raises(ValueError, match="offsets must be writable"):
        _C.line_offsets(rows, 3, np.broadcast_to(np.zeros(9, np.float32), (1, 9)))


@pytest.mark.parametrize("n", [1, 3, 9, 15])
def test_median_of_is_numpys_median_of_the_stacked_arrays(n):
    """Elementwise, exactly, ties included, in any dtype the arrays share; an even count refused."""
    rng = np.random.default_rng(n)
    for dtype in (np.float32, np.float64, np.int16):
        arrays = [(rng.integers(0, 6, (7, 9)) if dtype == np.int16 else rng.random((7, 9))).astype(dtype)
                  for _ in range(n)]
        arrays[0][2, :] = arrays[-1][2, :]  # ties
        expected = np.median(np.stack(arrays), axis=0).astype(dtype)
        got = median_of([a.copy() for a in arrays])
        assert got.dtype == dtype and np.array_equal(got, expected)
    with pytest.raises(ValueError, match="odd number"):
        median_of([np.zeros(3), np.ones(3)])


def _fine(columns):
    """What varies from column to column: less the 7-column running mean. A pattern's part that
    is smooth over a few columns looks like the scene's own gradient, to the annotator as well."""
    return columns - uniform_filter1d(columns, 7, mode="nearest")


@pytest.mark.parametrize("times, left_at_most", [(1.0, 0.55), (3.0, 0.3)])
def test_a_column_pattern_is_removed(times, left_at_most):
    """The columns' offsets of a striped scene are found and taken off: what is left of the
    pattern (the column means of the destriped frame less the clean one's) is a fraction of it."""
    for k, scene in enumerate(_scenes(4, seed=1)):
        striped, _ = _striped(scene.image, times, seed=k)
        left = _fine((destripe(striped) - scene.image).mean(axis=0)).std()
        added = _fine((striped - scene.image).mean(axis=0)).std()
        assert left < left_at_most * added, (k, left / added)


def test_frames_without_a_pattern_come_back_as_they_are():
    """No pattern, no change: a scene, a scene with white noise of twice its own, and pure noise
    come back as the same array under every axis setting."""
    rng = np.random.default_rng(5)
    frames = [s.image for s in _scenes(12, seed=2)]
    frames += [np.clip(f + 2 * pixel_noise(f) * rng.standard_normal(f.shape), 0, 1).astype(np.float32) for f in frames[:6]]
    frames += [np.float32(0.5 + 0.05 * rng.standard_normal((240, 320))) for _ in range(3)]
    for f in frames:
        for axes in ("columns", "rows", "both", "none"):
            assert destripe(f, axes) is f
        assert not line_offsets(f).any()


def test_a_pole_that_covers_most_of_its_column_is_scene():
    """A dark pole over 70% of a column's rows is not a readout offset: above the pole its column
    keeps the background's level, where taking the pole's offset off would draw a bright line;
    the stripes around it still go."""
    scene = _scenes(1, seed=4)[0]
    image = scene.image.copy()
    image[77:, 100] = 0.02
    striped, offsets = _striped(image, 2.0, seed=3)
    out = destripe(striped)
    noise = pixel_noise(scene.image)
    above = out[:70, 100] - np.median(out[:70, 96:105], axis=1)
    assert abs(float(np.median(above))) < 3 * noise + 2 * abs(offsets[100])
    assert np.all(out[77:, 100] < 0.1)  # the pole itself is not lifted
    left = np.delete(_fine((out - image).mean(axis=0)), range(96, 105)).std()
    assert left < 0.3 * np.delete(_fine((striped - image).mean(axis=0)), range(96, 105)).std()


def test_saturated_pixels_stay_saturated_and_values_stay_in_range():
    scene = _scenes(1, seed=6)[0]
    image = scene.image.copy()
    image[20:40, 30:60] = 1.0
    image[200:210, 10:20] = 0.0
    striped, _ = _striped(image, 3.0, seed=1)
    striped[20:40, 30:60] = 1.0
    out = destripe(striped)
    assert out is not striped and out.dtype == np.float32
    assert np.all(out[20:40, 30:60] == 1.0)
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("offset, gain", [(1000.0, 3000.0), (-0.4, 0.8)])
def test_a_frame_of_other_values_is_destriped_as_the_same_frame_in_0_1(offset, gain):
    """Raw counts or a normalised frame: the offsets scale with it (medians and the significance
    test are unchanged by a gain and an offset), and its values stay within its own range."""
    scene = _scenes(1, seed=11)[0]
    striped, _ = _striped(np.float32(0.2 + 0.6 * scene.image), 2.0, seed=4)  # nothing at 0 or 1
    unit = destripe(striped)
    frame = np.float32(offset + gain * striped)
    other = destripe(frame)
    assert unit is not striped
    top = frame >= max(float(frame.max()), 1.0)  # raw counts: the frame's maximum is its full scale
    assert np.array_equal(other[top], frame[top])
    assert np.allclose(other[~top], (offset + gain * unit)[~top], rtol=0, atol=1e-4 * gain)
    assert other.min() >= min(float(frame.min()), 0.0) and other.max() <= max(float(frame.max()), 1.0)


def test_rows_are_columns_of_the_transposed_frame():
    scene = _scenes(1, seed=7)[0]
    striped, _ = _striped(scene.image, 2.0, seed=2, axis=0)
    rows = destripe(striped, "rows")
    assert rows is not striped
    assert np.array_equal(rows, destripe(np.ascontiguousarray(striped.T), "columns").T)
    assert destripe(striped, "columns") is striped  # a row pattern is no column pattern
    both, _ = _striped(striped, 2.0, seed=8)
    out = destripe(both, "both")
    for axis in (0, 1):  # each pattern mostly gone
        assert _fine((out - scene.image).mean(axis=axis)).std() < 0.5 * _fine((both - scene.image).mean(axis=axis)).std()


@pytest.mark.parametrize("call, words", [
    (lambda: destripe(np.zeros((64, 64), np.float32), "diagonal"), "axes must be one of"),
    (lambda: destripe(np.zeros((2, 64, 64), np.float32)), "(H, W)"),
    (lambda: line_offsets(np.zeros((64, 64), np.float32), width=6), "width must be odd"),
    (lambda: AnnotatorConfig(destripe="diagonal"), "destripe must be one of"),
])
def test_bad_input_is_refused_naming_it(call, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_small_frames_are_left_alone():
    """Too few rows to average or columns to compare: nothing is estimated."""
    rng = np.random.default_rng(0)
    for shape in ((16, 200), (200, 10)):
        f = np.float32(0.5 + 0.01 * rng.standard_normal(shape)) + np.float32(0.05) * (np.arange(shape[1]) % 2)
        assert destripe(f) is f


def _iou(masks, truth):
    m = ISTDMetrics()
    for p, g in zip(masks, truth):
        m.update(p, g)
    return m.compute()["iou"]


def test_masks_on_a_striped_sensor():
    """The annotator reads a striped frame destriped (its default): with offsets of three times
    the pixel noise per column the masks keep most of the clean frames' IoU, where reading the
    stripes as they are loses several times more."""
    scenes = _scenes(36, seed=10)
    images = [_striped(s.image, 3.0, seed=k)[0] for k, s in enumerate(scenes)]
    points, truth = [s.points for s in scenes], [s.mask for s in scenes]
    clean = _iou(Annotator().annotate([s.image for s in scenes], points), truth)
    read = _iou(Annotator().annotate(images, points), truth)
    raw = _iou(Annotator(AnnotatorConfig(destripe="none")).annotate(images, points), truth)
    assert clean - read < 4 and clean - raw > 3 * (clean - read) + 2, (clean, read, raw)


def test_masks_on_a_sensor_with_row_noise():
    """Row offsets are removed by default too: with three times the pixel noise per row the masks
    keep most of the clean frames' IoU, where removing only column offsets loses several times more."""
    scenes = _scenes(36, seed=10)  # the scenes of the column test above
    images = [_striped(s.image, 3.0, seed=k, axis=0)[0] for k, s in enumerate(scenes)]
    points, truth = [s.points for s in scenes], [s.mask for s in scenes]
    clean = _iou(Annotator().annotate([s.image for s in scenes], points), truth)
    read = _iou(Annotator().annotate(images, points), truth)
    columns = _iou(Annotator(AnnotatorConfig(destripe="columns")).annotate(images, points), truth)
    assert AnnotatorConfig().destripe == "both"
    assert clean - read < 4 and clean - columns > 3 * (clean - read) + 2, (clean, read, columns)


@pytest.mark.skipif(not (SIRST / "images").is_dir(), reason=f"SIRST-v1 not found at {SIRST}")
def test_real_frames_are_read_as_they_are():
    """Of SIRST-v1's 427 frames (a cooled sensor's), at most 1% show a column pattern that stands
    out, and those lose nothing but the pattern: their offsets are within a few grey levels."""
    ds = IRDataset(SIRST)
    changed = 0
    for i in ds.ids("all"):
        image = ds.load_image(i)
        out = destripe(image)
        if out is not image:
            changed += 1
            assert np.abs(out - image).max() <= 4 / 255
    assert changed <= 0.01 * len(ds.ids("all"))
