"""The annotator: points to pseudo-masks (d2d_ext.annotate)."""

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import jpeg_coded, load_benchmark
from d2d_ext.annotate import (
    SETTING_SPANS,
    STYLES,
    Annotator,
    AnnotatorConfig,
    DiffusionParams,
    MaskOdds,
    binarize_targets,
    config_from_dict,
    leaking_targets,
    local_entropy,
    paste_masks,
    prepare_targets,
    soft_labels,
    target_steps,
)
from d2d_ext import annotate as annotate_module
from d2d_ext.calibrate import GRIDS
from d2d_ext import windows
from d2d_ext.data import IRDataset
from d2d_ext.metrics import ISTDMetrics, match_targets
from d2d_ext.reference import diffuse_reference
from d2d_ext.synthetic import make_bar, make_pressed, make_scene, write_dataset

annotation_datasets = load_benchmark("annotation/annotation_datasets")  # its probes and per-target errors

SIRST = Path(os.environ.get("D2D_SIRST_ROOT", Path(__file__).resolve().parents[2] / "shared/data/SIRST-v1"))
needs_sirst = pytest.mark.skipif(not (SIRST / "images").is_dir(), reason=f"SIRST-v1 not found at {SIRST}")


def _scenes(n, seed=0):
    return [make_scene(np.random.default_rng([seed, i]), 128, 128) for i in range(n)]


def test_bright_disc_on_flat_background_is_found_exactly():
    image = np.full((64, 64), 0.2, np.float32)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 30) ** 2 + (xx - 25) ** 2 <= 16  # radius 4: 49 pixels
    image[disc] = 0.8
    image += np.random.default_rng(0).normal(0, 0.01, image.shape).astype(np.float32)
    (mask,) = Annotator().annotate([image], [np.array([[25.3, 29.6]])])
    assert mask.dtype == bool and mask.shape == image.shape
    assert (mask == disc).all()


def test_two_targets_of_one_image_combine_and_background_stays_empty():
    image = np.full((80, 80), 0.1, np.float32)
    image[10:13, 10:13] = 0.9
    image[60:66, 50:54] = 0.7
    (mask,) = Annotator().annotate([image], [np.array([[11.0, 11.0], [51.5, 62.5]])])
    truth = np.zeros_like(mask)
    truth[10:13, 10:13] = True
    truth[60:66, 50:54] = True
    assert (mask == truth).all()


@pytest.mark.parametrize("corner", [(0, 0), (0, 60), (60, 0), (60, 60)])
def test_targets_cut_by_the_image_edge_are_kept_whole(corner):
    """A window side on the image's edge is no leak: a target there keeps all its pixels."""
    image = np.full((64, 64), 0.1, np.float32) + np.random.default_rng(2).normal(0, 0.01, (64, 64)).astype(np.float32)
    y, x = corner
    image[y:y + 4, x:x + 4] = 0.9
    (mask,) = Annotator().annotate([image], [np.array([[x + 1.0, y + 1.0]])])
    truth = np.zeros_like(mask)
    truth[y:y + 4, x:x + 4] = True
    assert (mask == truth).all()


def test_target_along_the_top_edge():
    image = np.full((64, 64), 0.1, np.float32) + np.random.default_rng(3).normal(0, 0.01, (64, 64)).astype(np.float32)
    image[0:3, 20:26] = 0.9
    (mask,) = Annotator().annotate([image], [np.array([[22.0, 1.0]])])
    assert mask.sum() == 18 and mask[0:3, 20:26].all()


def test_image_without_points_gives_an_empty_mask():
    image = np.random.default_rng(1).random((40, 50)).astype(np.float32)
    masks = Annotator().annotate([image, image], [np.zeros((0, 2)), np.array([[3.0, 4.0]])])
    assert masks[0].shape == (40, 50) and not masks[0].any()
    assert masks[1][4, 3]  # the point's pixel (or its snapped neighbour) is always in the mask


@pytest.mark.parametrize("values, words", [
    ({"half_sizes": []}, "at least one"),
    ({"half_sizes": [12, 6]}, "increasing"),
    ({"half_sizes": [6, 8.5]}, "whole numbers"),
    ({"half_sizes": [0, 6]}, ">= 1"),
    ({"wide_half_sizes": [20, 40]}, "above half_sizes"),
    ({"half_sizes": [1, 6]}, "start at band (2)"),
    ({"half_sizes": "6"}, "list of window half-sizes"),
])
def test_bad_window_sizes_are_refused_naming_the_setting(values, words):
    """Window sizes that the search cannot use (none, out of order, fractional, wide ones inside
    the small ones' range) are refused when the settings are made, not deep in the search."""
    name = next(iter(values))
    with pytest.raises(ValueError, match=name) as err:
        config_from_dict(values)
    assert words in str(err.value)


def test_a_mask_style_is_its_settings_over_the_defaults():
    """``config_from_dict(values, style)``: the defaults, then the style's settings, then
    ``values``; an unknown style is refused by name."""
    defaults = dataclasses.asdict(AnnotatorConfig())
    assert dataclasses.asdict(config_from_dict({}, "tight")) == defaults
    glow = dataclasses.asdict(config_from_dict({}, "glow"))
    assert {k for k in defaults if glow[k] != defaults[k]} == set(STYLES["glow"])
    assert all(glow[k] < defaults[k] for k in STYLES["glow"])  # a fainter edge: lower fractions and gate
    assert config_from_dict({"level": 0.2}, "glow").level == 0.2
    with pytest.raises(ValueError, match="unknown mask style 'halo'"):
        config_from_dict({}, "halo")


def _style_ious(images, points, tight):
    """``{(style, truth): pooled IoU}`` of each mask style's masks against the ``tight`` masks
    (``truth`` ``"tight"``) and against them with each target's glow drawn in at 0.15 of its
    contrast (``"glow"``, ``annotation_datasets.glow_mask``)."""
    truths = {"tight": tight, "glow": [annotation_datasets.glow_mask(im, m, 0.15) for im, m in zip(images, tight)]}
    out = {}
    for style in STYLES:
        masks = Annotator(config_from_dict({}, style)).annotate(images, points)
        for name, truth in truths.items():
            out[style, name] = sum((p & t).sum() for p, t in zip(masks, truth)) / sum(
                (p | t).sum() for p, t in zip(masks, truth))
    return out


def test_the_glow_style_fits_masks_that_draw_the_glow():
    """On scenes whose masks are drawn tight, the defaults fit them better; with each target's
    glow drawn in (``annotation_datasets.glow_mask``), the glow style does, by far more than
    either loses the other way."""
    scenes = _scenes(24, seed=3)
    iou = _style_ious([s.image for s in scenes], [s.points for s in scenes], [s.mask > 0 for s in scenes])
    assert iou["tight", "tight"] > iou["glow", "tight"] + 0.02
    assert iou["glow", "glow"] > iou["tight", "glow"] + 0.15


@needs_sirst
def test_the_glow_style_fits_real_masks_with_the_glow_drawn_in():
    """The same on 40 real images (SIRST-v1's test split) and their human points."""
    ds = IRDataset(SIRST)
    ids = ds.ids("test")[:40]
    iou = _style_ious([ds.load_image(i) for i in ids], [ds.points(i, "centroid") for i in ids],
                      [ds.load_mask(i) for i in ids])
    assert iou["tight", "tight"] > iou["glow", "tight"] + 0.05
    assert iou["glow", "glow"] > iou["tight", "glow"] + 0.15


@pytest.mark.parametrize("rings", [1, 2])
def test_mask_margin_grows_every_mask_by_whole_rings(rings):
    """``mask_margin`` n: the masks without it, grown by n rings of pixels (a 3x3 dilation n
    times, cut at the image's edge); targets next to the edge included."""
    scenes = _scenes(6, seed=11)
    images, points = [s.image for s in scenes], [s.points for s in scenes]
    plain = Annotator().annotate(images, points)
    grown = Annotator(config_from_dict({"mask_margin": rings})).annotate(images, points)
    for p, g in zip(plain, grown):
        assert p.any()
        assert np.array_equal(g, ndimage.binary_dilation(p, np.ones((3, 3), bool), iterations=rings))


@pytest.mark.parametrize("setting", ["mask_margin", "snap_reach"])
@pytest.mark.parametrize("value", [-1, 1.5, True, "1"])
def test_a_bad_whole_pixel_count_is_refused_naming_it(setting, value):
    with pytest.raises(ValueError, match=f"{setting} must be a whole number"):
        config_from_dict({setting: value})


@pytest.mark.parametrize("value", [-1, 8, True, "1"])
def test_a_bad_point_radius_is_refused_naming_it(value):
    with pytest.raises(ValueError, match="point_radius must be a distance"):
        config_from_dict({"point_radius": value})


@pytest.mark.parametrize("name, value", [("D0", 0.0), ("D0", -3.2), ("beta", -1.0), ("rho", 1.5), ("alpha", -0.1),
                                         ("gamma", -4.0), ("beta", float("nan")), ("rho", True)])
def test_a_diffusion_parameter_outside_its_span_is_refused_naming_it(name, value):
    """A D0 of 0 gave fields of NaN, a NaN beta too, a rho above 1 negative soft labels, a
    negative D0 the default's fields (its sign cancelled): each centre is checked when made."""
    with pytest.raises(ValueError, match=f"diffusion parameter {name} must be"):
        DiffusionParams(**{name: value})
    assert DiffusionParams(rho=1.0, gamma=0.0)()["rho"] == 1.0  # the ablations: no prior, no drift


def _outside(span) -> list:
    """Values a setting of ``span`` (:data:`SETTING_SPANS`) may not take: just past each end (the
    end itself where it is open), not a number, a truth value, a word, and a fraction for a count."""
    out = [float("nan"), float("inf"), True, "1"]
    step = 1 if span.whole else 0.01
    if span.low is not None:
        out.append(span.low if span.open in ("low", "both") else span.low - step)
    if span.high is not None:
        out.append(span.high if span.open in ("high", "both") else span.high + step)
    if span.whole:
        out.append(span.low + 0.5)
    return out


@pytest.mark.parametrize("name", sorted(SETTING_SPANS))
def test_a_setting_outside_its_span_is_refused_naming_it(name):
    """Every number setting is checked when the settings are made: a value outside its span
    would fail deep inside the search (``band`` 0) or be taken without meaning anything (a
    ``peak_fraction`` above 1, negative ``steps``). Its closed ends are taken, as its type."""
    span = SETTING_SPANS[name]
    for value in _outside(span):
        with pytest.raises(ValueError, match=f"annotator setting {name} must be"):
            config_from_dict({name: value})
    for end, side in ((span.low, "low"), (span.high, "high")):
        if end is not None and span.open not in (side, "both"):
            taken = getattr(config_from_dict({name: end}), name)
            assert taken == end and type(taken) is (int if span.whole else float)


def test_every_number_setting_has_a_span_that_holds_its_default_and_calibrate_grid():
    numbers = {f.name for f in dataclasses.fields(AnnotatorConfig)
               if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)}
    assert numbers == set(SETTING_SPANS)
    for name, values in GRIDS.items():
        for value in values:
            assert getattr(config_from_dict({name: value}), name) == value


def test_a_point_source_gets_the_disc_its_blur_covers():
    """A target that is one bright pixel on a flat background gets the peak and its 4 neighbours
    (``point_radius`` 1), the least an imaging system blurs a point source over; with
    ``point_radius`` 0 its one pixel. A 2x2 and a 3x3 target, whose masks do not lie within that
    disc, keep exactly their own pixels."""
    rng = np.random.default_rng(0)
    image = (0.2 + 0.01 * rng.standard_normal((40, 40))).astype(np.float32)
    image[12, 12] = 0.9
    image[12:14, 28:30] = 0.9
    image[27:30, 11:14] = 0.9
    points = np.array([[12.0, 12.0], [28.5, 12.5], [12.0, 28.0]])
    blocks = np.zeros((40, 40), bool)
    blocks[12:14, 28:30] = blocks[27:30, 11:14] = True
    cross = np.zeros((40, 40), bool)
    cross[11:14, 12] = cross[12, 11:14] = True
    (mask,) = Annotator().annotate([image], [points])
    (single,) = Annotator(config_from_dict({"point_radius": 0})).annotate([image], [points])
    assert np.array_equal(mask, blocks | cross)
    assert np.array_equal(single, blocks | (cross & (image == image.max()) & ~blocks))


def test_window_sizes_given_as_lists_are_used():
    """A JSON or Python list of half-sizes (as a settings file holds) works like the tuple."""
    config = config_from_dict({"half_sizes": [6, 10], "wide_half_sizes": [16]})
    assert config.half_sizes == (6, 10) and config.wide_half_sizes == (16,)
    scene = _scenes(1, seed=5)[0]
    (listed,) = Annotator(config).annotate([scene.image], [scene.points])
    (tupled,) = Annotator(AnnotatorConfig(half_sizes=(6, 10), wide_half_sizes=(16,))).annotate([scene.image], [scene.points])
    assert np.array_equal(listed, tupled) and listed.any()


def test_point_outside_the_image_raises_naming_it():
    image = np.zeros((10, 20), np.float32)
    with pytest.raises(ValueError, match=r"x=25.*outside the 20x10 image"):
        Annotator().annotate([image], [np.array([[25.0, 3.0]])])
    with pytest.raises(ValueError, match="must have shape"):
        Annotator().annotate([np.zeros((2, 3, 4))], [np.zeros((0, 2))])


def test_a_dead_pixel_near_a_point_raises_naming_it_and_one_far_from_every_point_changes_nothing():
    """A float frame's dead pixels read NaN (or infinity): near a point it would move the mask
    silently, so it is refused, naming the image, the point and the pixel; far from every point
    the masks are the frame's without it."""
    scene = _scenes(1, seed=1)[0]
    image = scene.image.astype(np.float32)
    (x, y) = scene.points[0]
    ann = Annotator()
    clean = ann.annotate([image], [scene.points])[0]
    col, row = int(np.floor(x + 0.5)) + 1, int(np.floor(y + 0.5))
    for bad in (np.nan, np.inf):
        near = image.copy()
        near[row, col] = bad
        with pytest.raises(ValueError, match=rf"image 0 has pixels that are not numbers .*: 1, the first at "
                                             rf"\(x={col}, y={row}\); dead pixels"):
            ann.annotate([near], [scene.points])
    far = image.copy()
    ys, xs = np.nonzero(~ndimage.binary_dilation(clean, iterations=40))  # beyond every field window
    far[ys[0], xs[0]] = np.nan
    assert np.array_equal(ann.annotate([far], [scene.points])[0], clean)


@pytest.mark.parametrize("offset, gain", [(0.1, 0.002), (0.5, 0.0005)])
def test_masks_do_not_depend_on_the_sensors_gain_and_offset(offset, gain):
    """A frame whose values span a few hundred counts of a 16-bit range (``offset + gain * I``)
    gets the masks of the same frame stretched to [0, 1]: no setting is an absolute intensity
    (float32 rounding of the mapped values may move a tie, hence the 1% allowance; an absolute
    amplitude floor of 1e-3 changed 15 to 19% of these pixels)."""
    scenes = _scenes(12, seed=3)
    ann = Annotator()
    base = ann.annotate([s.image for s in scenes], [s.points for s in scenes])
    mapped = ann.annotate([np.float32(offset + gain * s.image) for s in scenes], [s.points for s in scenes])
    differing = sum(int((a != b).sum()) for a, b in zip(mapped, base))
    assert differing <= 0.01 * sum(int(m.sum()) for m in base), differing


def _shared_range(pixels):
    """What two horizontal neighbours both reach at most, minus what both stay at or above at least."""
    pairs = np.stack([pixels[:, 1:], pixels[:, :-1]])
    return float(pairs.min(0).max()) - float(pairs.max(0).min())


def _raw_16_bit(scenes):
    """The scenes' images as a frame that spans a few hundred counts of a 16-bit range."""
    return [np.float32(0.1) + np.float32(0.002) * s.image.astype(np.float32) for s in scenes]


@pytest.mark.parametrize("what", ["a stuck pixel", "a saturated object"])
def test_something_at_the_top_of_a_raw_frames_range_leaves_the_masks(what):
    """A frame spanning a few hundred counts of a 16-bit range with, far from every target, one
    pixel stuck at the top of that range or an 11x11 object saturating it (the sun, a flare)
    gets the masks it gets without it. Each made the frame's range, which scaled the floor of
    every target's amplitude, as large as a dim target's amplitude, and masks were cut towards
    their peaks (118 of 814 mask pixels lost here to the stuck pixel)."""
    scenes = _scenes(12, seed=3)
    ann = Annotator()
    mapped = _raw_16_bit(scenes)
    base = ann.annotate(mapped, [s.points for s in scenes])
    spoilt = []
    for image, s in zip(mapped, scenes):
        far = ~ndimage.binary_dilation(s.mask > 0, iterations=40)
        far[:6], far[-6:], far[:, :6], far[:, -6:] = False, False, False, False
        ys, xs = np.nonzero(far)
        y, x = ys[len(ys) // 2], xs[len(xs) // 2]
        image = image.copy()
        reach = 0 if what == "a stuck pixel" else 5
        image[y - reach:y + reach + 1, x - reach:x + reach + 1] = 1.0
        spoilt.append(image)
    again = ann.annotate(spoilt, [s.points for s in scenes])
    assert all(np.array_equal(a, b) for a, b in zip(again, base))


def _pairs_range(pixels):
    """What two horizontal neighbours both reach at most, minus what both stay at or above at least."""
    pairs = np.stack([pixels[:, 1:], pixels[:, :-1]])
    return float(pairs.min(0).max()) - float(pairs.max(0).min())


def test_the_shared_range_is_not_set_by_a_stuck_pixel_and_follows_gain_and_offset():
    """The range that scales the amplitude floor: what neighbours share, so a pixel stuck at the
    top (or bottom) of the sensor's range, alone in its row, does not move it, while two
    neighbours do; it scales with a gain and ignores an offset."""
    image = np.float32(0.1) + np.float32(0.002) * np.random.default_rng(2).random((64, 80)).astype(np.float32)
    shared = annotate_module.shared_range(image)
    assert shared == _pairs_range(image) and 0.0019 < shared < 0.002
    for value in (1.0, 0.0):
        stuck = image.copy()
        stuck[31, 17] = value
        stuck[0, 0] = value  # at the corner too
        assert annotate_module.shared_range(stuck) == shared
    stuck[40, 5:7] = 1.5  # two neighbours: structure, not a defect
    assert annotate_module.shared_range(stuck) == _pairs_range(stuck) > 1.39  # 1.5 less the lowest pair (~0.1)
    mapped = np.float64(200.0) + 300.0 * image.astype(np.float64)
    assert annotate_module.shared_range(mapped) == pytest.approx(300.0 * shared, rel=1e-6)


def test_the_shared_range_of_single_pixels_on_a_flat_window_is_their_range():
    flat = np.zeros((20, 30))
    assert annotate_module.shared_range(flat) == 0.0
    flat[4, 7] = 0.5  # one bright pixel: nothing neighbours share, so the plain range
    assert annotate_module.shared_range(flat) == 0.5
    assert annotate_module.shared_range(np.array([[0.1], [0.4], [0.2]])) == pytest.approx(0.3)  # one column


@pytest.mark.parametrize("fill, pad", [("black", 16), ("black", 20), ("median", 20)])
def test_a_padded_frame_gets_the_masks_of_its_picture(fill, pad):
    """A picture padded to a larger frame (a letterbox, or a dataset's images padded to one size)
    gets its own masks, padded: a bright region the picture's edge cuts does not end in the
    padding and get taken whole (an extended scene's target took 6,541 pixels of it). Padding of
    the picture's median that ends on a coding block's boundary (16) is not asked for: there a
    picture line at about the median reads as coded padding (see ``picture_box``)."""
    scenes = _scenes(6, seed=3) + [make_scene(np.random.default_rng([11, i]), 256, 256, "mixed",
                                              area_range=(2.0, 2000.0)) for i in range(4)]
    ann = Annotator()
    base = ann.annotate([s.image for s in scenes], [s.points for s in scenes])
    value = [0.0 if fill == "black" else float(np.median(s.image)) for s in scenes]
    padded = ann.annotate([np.pad(s.image, pad, constant_values=np.float32(v)) for s, v in zip(scenes, value)],
                          [np.asarray(s.points, np.float64) + pad for s in scenes])
    for m, p in zip(base, padded):
        assert np.array_equal(p, np.pad(m, pad))


def test_masks_in_a_large_frame_are_those_of_crops_around_the_targets():
    """A target's mask depends on the pixels around it only: in a 1920x1080 frame and in a
    128x128 crop of it around the target, the same."""
    rng = np.random.default_rng(4)
    image = (0.2 + rng.normal(0, 0.01, (1080, 1920))).astype(np.float32)
    yy, xx = np.mgrid[:1080, :1920]
    points = np.array([[400.0, 300.0], [1500.0, 800.0]])
    for (x, y), sigma in zip(points, (1.2, 2.5)):
        image += np.float32(0.5) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma ** 2)).astype(np.float32)
    (full,) = Annotator().annotate([image], [points])
    for x, y in points:
        y0, x0 = int(y) - 64, int(x) - 64
        crop = np.ascontiguousarray(image[y0:y0 + 128, x0:x0 + 128])
        (mask,) = Annotator().annotate([crop], [np.array([[x - x0, y - y0]])])
        assert mask.sum() >= 5
        assert (mask == full[y0:y0 + 128, x0:x0 + 128]).all()
    assert full.sum() == sum(int(full[int(y) - 64:int(y) + 64, int(x) - 64:int(x) + 64].sum()) for x, y in points)


def test_result_does_not_depend_on_the_batch():
    scenes = _scenes(6)
    ann = Annotator()
    together = ann.annotate([s.image for s in scenes], [s.points for s in scenes])
    alone = [ann.annotate([s.image], [s.points])[0] for s in scenes]
    for a, b in zip(together, alone):
        assert (a == b).all()


def _mixed_scenes():
    """SIRST-like and extended targets: some bright regions leak out of their field windows."""
    return _scenes(4, seed=5) + [make_scene(np.random.default_rng([11, i]), 256, 256, "mixed", area_range=(2.0, 2000.0))
                                 for i in range(4)]


def test_masks_compute_fields_only_where_they_are_read():
    """``annotate`` gives each target its entropy, superpixel prior and heat field only where its
    bright region leaks (the only masks that read the field): the masks are the eager ones."""
    scenes = _mixed_scenes()
    images, points = [s.image for s in scenes], [s.points for s in scenes]
    ann = Annotator()
    eager = prepare_targets(images, points, ann.config)
    lazy = prepare_targets(images, points, ann.config, lazy=True)
    assert eager.ready is None
    leaks = leaking_targets(eager, ann.config)
    assert (lazy.ready == leaks).all()
    # the leak test's bright regions are kept for binarisation at its settings, not on a sub-batch
    assert eager.regions is None and lazy.regions[0] == (ann.config.low_fraction, ann.config.level)
    assert lazy.central(np.arange(2), lazy.contrast.shape[-1] // 2).regions is None
    assert 0 < leaks.sum() < len(leaks), "the scenes must hold targets of both kinds"
    skipped = ~lazy.ready
    assert (lazy.entropy[torch.from_numpy(skipped)] == 0).all() and (lazy.superpixel[torch.from_numpy(skipped)] == 0).all()
    ready = torch.from_numpy(lazy.ready)
    assert torch.equal(lazy.entropy[ready], eager.entropy[ready])
    assert torch.equal(lazy.superpixel[ready], eager.superpixel[ready])
    for a, b in zip(ann.annotate(images, points), ann.masks(eager)):
        assert (a == b).all()
    # a field changed where no mask reads it changes no mask
    soft = ann.soft(eager)
    soft[torch.from_numpy(~leaks)] = torch.rand_like(soft[torch.from_numpy(~leaks)])
    assert (binarize_targets(eager, soft, ann.config) == binarize_targets(eager, ann.soft(eager), ann.config)).all()


def test_masks_of_a_prepared_batch_diffuse_only_the_leaking_targets(monkeypatch):
    """The trainer's label updates (``Annotator.masks`` on a batch prepared once, after each theta
    step) diffuse only the targets whose masks read their fields, and give the masks of every
    field, at any theta."""
    scenes = _mixed_scenes()
    ann = Annotator()
    batch = ann.prepare([s.image for s in scenes], [s.points for s in scenes])
    leaks = leaking_targets(batch, ann.config)
    with torch.no_grad():
        ann.params.raw += 0.5  # another theta: the heat field changes
    diffused = []
    soft = Annotator.soft
    monkeypatch.setattr(Annotator, "soft", lambda self, b: diffused.append(len(b)) or soft(self, b))
    masks = ann.masks(batch)
    assert diffused == [int(leaks.sum())] and 0 < diffused[0] < len(batch)
    with torch.no_grad():
        every = binarize_targets(batch, soft(ann, batch), ann.config)
    for m, e in zip(masks, paste_masks(batch, every)):
        assert (m == e).all()


def test_lazy_batch_refuses_soft_labels_and_other_settings():
    scenes = _mixed_scenes()
    images, points = [s.image for s in scenes], [s.points for s in scenes]
    ann = Annotator()
    lazy = prepare_targets(images, points, ann.config, lazy=True)
    with pytest.raises(ValueError, match="lazy=True"):
        ann.masks_and_soft(lazy)
    with pytest.raises(ValueError, match="lazy=True"):
        soft_labels(lazy, ann.params())
    # at a lower low_fraction more bright regions leak: their fields were never computed
    lower = AnnotatorConfig(low_fraction=0.05)
    assert (leaking_targets(lazy, lower) & ~lazy.ready).any()
    with pytest.raises(ValueError, match="prepared without its field"):
        binarize_targets(lazy, torch.zeros(lazy.contrast.shape), lower)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_full_hd_frame_with_26_targets(seed):
    """The largest frames and the most targets per image users annotate (1920x1080, 26 targets):
    every target found but at most two, and each mask its own (no two targets merged, no mask
    grown into the scene)."""
    scene = make_scene(np.random.default_rng([4, seed]), 1080, 1920, "mixed", n_targets=26)
    gt = scene.mask > 0
    mask = Annotator().annotate([scene.image], [scene.points])[0]
    assert mask.shape == (1080, 1920)
    metrics = ISTDMetrics()
    metrics.update(mask, gt)
    r = metrics.compute()
    assert r["pd"] >= 100 * 24 / 26 and r["iou"] >= 50, r
    assert match_targets(mask, gt)[2] <= 600  # false-alarm pixels of the frame
    # no component holds two targets' points (the scene's targets do not touch)
    labels, _ = ndimage.label(mask, np.ones((3, 3)))
    held = [labels[int(np.floor(y + 0.5)), int(np.floor(x + 0.5))] for x, y in scene.points]
    held = [h for h in held if h]
    assert len(held) >= 24 and len(set(held)) == len(held)


def test_synthetic_quality():
    scenes = _scenes(24, seed=3)
    masks = Annotator().annotate([s.image for s in scenes], [s.points for s in scenes])
    metrics = ISTDMetrics()
    for s, m in zip(scenes, masks):
        metrics.update(m, s.mask)
    result = metrics.compute()
    assert result["pd"] >= 90.0
    assert result["iou"] >= 55.0
    # the point alone: a floor the annotator must clear by far
    points_only = ISTDMetrics()
    for s in scenes:
        p = np.zeros_like(s.mask)
        p[np.floor(s.points[:, 1] + 0.5).astype(int), np.floor(s.points[:, 0] + 0.5).astype(int)] = True
        points_only.update(p, s.mask)
    assert result["iou"] > points_only.compute()["iou"] + 30


def _extended_target(kind, radius, seed, size=200, amp=12.0):
    """A noisy image (noise std 1) holding one extended target of peak ``amp`` at its centre:
    ``"gauss"`` (0.3-level radius ``radius``) or a flat-topped ``"disc"``; ``(image, mask, point)``
    with the mask where the target's own signal exceeds 0.3 of its peak (as make_scene does)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    cy, cx = size / 2 + 0.3, size / 2 - 0.4
    d = np.hypot(yy - cy, xx - cx)
    signal = 1 / (1 + np.exp((d - radius) / 0.7)) if kind == "disc" else np.exp(-(d * 1.55 / radius) ** 2 / 2)
    image = np.random.default_rng(seed).normal(0, 1, (size, size)) + amp * signal
    image = ((image - image.min()) / np.ptp(image)).astype(np.float32)
    return image, signal > 0.3, np.array([[cx, cy]])


@pytest.mark.parametrize("kind, radius, floor", [("gauss", 11, 0.65), ("gauss", 16, 0.65), ("disc", 30, 0.9), ("disc", 40, 0.9)])
def test_extended_targets_are_found_whole(kind, radius, floor):
    """Targets larger than the first windows: a smooth one puts the small windows' bands on its
    own hull, a flat one wider than every window of ``half_sizes`` leaves no window that holds
    it. The window grows (``settle_fraction``, ``wide_half_sizes``) until its band is on the
    background; without the growth the mask is a small core (IoU below 0.3)."""
    fixed = Annotator(AnnotatorConfig(settle_fraction=0.0, wide_half_sizes=()))
    for seed in range(2):
        image, truth, point = _extended_target(kind, radius, seed)
        (mask,) = Annotator().annotate([image], [point])
        assert (mask & truth).sum() / (mask | truth).sum() >= floor, (kind, radius, seed)
        (core,) = fixed.annotate([image], [point])
        assert (core & truth).sum() / (core | truth).sum() < 0.3


@pytest.mark.parametrize("cloud_amp, cloud_sigma", [(6, 10), (12, 6), (12, 20)])
def test_small_target_on_a_bright_cloud_does_not_grow_into_it(cloud_amp, cloud_sigma):
    """A point target on a smooth bright cloud: the small window's band lies on the cloud, whose
    level falls off outward like a target's hull would; the growth must not take the cloud."""
    yy, xx = np.mgrid[:160, :160].astype(np.float64)
    target = np.exp(-((yy - 80) ** 2 + (xx - 80) ** 2) / (2 * 1.2 ** 2))
    cloud = cloud_amp * np.exp(-((yy - 80) ** 2 + (xx - 85) ** 2) / (2 * cloud_sigma ** 2))
    image = np.random.default_rng(0).normal(0, 1, yy.shape) + cloud + 10 * target
    image = ((image - image.min()) / np.ptp(image)).astype(np.float32)
    (mask,) = Annotator().annotate([image], [np.array([[80.0, 80.0]])])
    assert mask.sum() <= 60, mask.sum()  # the target's 0.3-level set is 9 pixels, the cloud's thousands
    assert mask[80, 80]


@pytest.mark.parametrize("radius, distance", [(11, 24), (14, 32)])
def test_close_extended_targets_are_not_grown_into_one(radius, distance):
    """Two extended targets whose hulls meet: a grown window whose component holds the other
    target's peak would merge them (one component: a target lost to Pd), so it is not taken."""
    yy, xx = np.mgrid[:160, :160].astype(np.float64)
    centres = [(80.0, 80.0 - distance / 2), (80.0, 80.0 + distance / 2)]
    image = np.random.default_rng(0).normal(0, 1, yy.shape)
    for cy, cx in centres:
        image += 12 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) * 1.55 ** 2 / radius ** 2 / 2)
    image = ((image - image.min()) / np.ptp(image)).astype(np.float32)
    (mask,) = Annotator().annotate([image], [np.array([[cx, cy] for cy, cx in centres])])
    labels, n = ndimage.label(mask, np.ones((3, 3)))
    assert n == 2 and labels[80, int(centres[0][1])] != labels[80, int(centres[1][1])]


@pytest.mark.parametrize("distance, sigma", [(4, 1.5), (5, 2.0), (7, 2.0)])
def test_two_close_point_targets_keep_a_component_each(monkeypatch, distance, sigma):
    """Two point targets (Gaussian blurs, the second 0.8 as bright) ``distance`` pixels apart: each
    one's mask reaches over the saddle between them, and pasted together the two made one
    component (one target lost to Pd). They are split along the valley: two components, each
    holding its own point; the pixels dropped all lie between the two points."""
    yy, xx = np.mgrid[:64, :64].astype(np.float64)
    left, right = 32 - distance / 2, 32 + distance / 2
    image = (np.exp(-((yy - 32) ** 2 + (xx - left) ** 2) / (2 * sigma ** 2))
             + 0.8 * np.exp(-((yy - 32) ** 2 + (xx - right) ** 2) / (2 * sigma ** 2)))
    image = (0.1 + image + np.random.default_rng(0).normal(0, 0.01, image.shape)).astype(np.float32)
    points = np.array([[left, 32.0], [right, 32.0]])
    (mask,) = Annotator().annotate([image], [points])
    labels, n = ndimage.label(mask, np.ones((3, 3)))
    assert n == 2 and labels[32, int(left)] and labels[32, int(right)] and labels[32, int(left)] != labels[32, int(right)]
    monkeypatch.setattr(annotate_module, "keep_apart", lambda batch, maps: maps)
    (joined,) = Annotator().annotate([image], [points])
    assert ndimage.label(joined, np.ones((3, 3)))[1] == 1
    dropped = joined & ~mask
    assert not (mask & ~joined).any() and dropped.sum() <= 0.25 * joined.sum()
    assert ((np.nonzero(dropped)[1] > left) & (np.nonzero(dropped)[1] < right)).all()  # between the points


def test_split_at_valleys_separates_along_the_saddle():
    """``morphology.split_at_valleys``: two blobs joined over a saddle split into two parts that no
    8-neighbour pair joins, each holding its seed, the dropped pixels at the saddle; three
    seeds give three parts; two touching seeds give None."""
    from d2d_ext.morphology import split_at_valleys
    yy, xx = np.mgrid[:21, :31].astype(np.float64)
    values = np.exp(-((yy - 10) ** 2 + (xx - 10) ** 2) / 18) + np.exp(-((yy - 10) ** 2 + (xx - 20) ** 2) / 18)
    region = values > 0.3
    assert ndimage.label(region, np.ones((3, 3)))[1] == 1
    parts = split_at_valleys(region, values, [(10, 10), (10, 20)])
    assert parts[10, 10] == 1 and parts[10, 20] == 2
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = parts[max(-dy, 0):21 - max(dy, 0), max(-dx, 0):31 - max(dx, 0)]
        b = parts[max(dy, 0):, max(dx, 0):][:a.shape[0], :a.shape[1]]
        assert not ((a > 0) & (b > 0) & (a != b)).any()
    dropped = region & (parts == 0)
    assert dropped.any() and set(np.nonzero(dropped)[1]) <= {14, 15, 16}
    assert ((parts > 0) == (region & ~dropped)).all()
    three = split_at_valleys(region, values, [(10, 10), (10, 20), (10, 15)])
    assert set(np.unique(three[region])) >= {1, 2, 3}
    assert split_at_valleys(region, values, [(10, 10), (11, 11)]) is None


def _point_target_beside(structure: np.ndarray, target_amp: float, seed: int):
    """A point target (Gaussian, sigma 1.5 px) at row 80, column 60 of a smooth 160x160 scene:
    ``structure`` plus weak spatially correlated noise (real infrared clutter is smooth, so the
    bands' spreads are small), scaled to [0, 1]."""
    yy, xx = np.mgrid[:160, :160].astype(np.float64)
    target = np.exp(-((yy - 80) ** 2 + (xx - 60) ** 2) / (2 * 1.5 ** 2))
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 1, yy.shape), 1.5)
    image = 0.05 * noise / noise.std() + structure + target_amp * target
    return ((image - image.min()) / np.ptp(image)).astype(np.float32), np.array([[60.0, 80.0]])


@pytest.mark.parametrize("seed", [0, 1])
def test_point_target_touching_a_large_bright_building_stays_small(seed):
    """A point target on the side of a large bright block that runs to the image's edge (a
    building): the small windows' bands lie on the block on one side. The window growth took the
    whole block (6,500 pixels); a target must surround its peak and stay off the image's edge."""
    yy, xx = np.mgrid[:160, :160].astype(np.float64)
    block = 0.8 * ndimage.gaussian_filter(((yy > 50) & (xx >= 61) & (xx < 120)).astype(float), 1.5)
    block += 0.2 * (1 - xx / 160) * (yy > 50)  # the building's own shading
    image, point = _point_target_beside(block, 1.0, seed)
    (mask,) = Annotator().annotate([image], [point])
    assert mask[80, 60] and mask.sum() <= 60, mask.sum()


def test_the_window_search_records_its_decisions_without_changing_them():
    """``strict_component(trace=...)``: the same component with a trace as without, on the scenes
    of every kind of search path; the trace ends in the result with the component's pixels. A
    point beside a building: every window leaks into the building at the first fraction, and the
    window accepted at the next is not grown. A target on a flat background: accepted at the
    first fraction, the growth stops where the band settles. A frame of one value: no window holds
    anything, and the peak alone is the component."""
    cfg = AnnotatorConfig()
    yy, xx = np.mgrid[:160, :160].astype(np.float64)
    block = 0.8 * ndimage.gaussian_filter(((yy > 50) & (xx >= 61) & (xx < 120)).astype(float), 1.5)
    block += 0.2 * (1 - xx / 160) * (yy > 50)
    beside, point = _point_target_beside(block, 1.0, 0)
    flat, _ = _point_target_beside(np.zeros((160, 160)), 1.0, 0)
    scenes = [(beside, point), (flat, point)] + [(s.image, s.points) for s in _scenes(6)]
    traces = []
    for image, points in scenes:
        for x, y in points:
            py, px = windows.find_peak(image, x, y, cfg)
            steps = []
            plain, traced = (windows.strict_component(image, py, px, cfg, trace=t) for t in (None, steps))
            assert plain.box == traced.box and plain.bg == traced.bg and np.array_equal(plain.comp, traced.comp)
            assert steps[-1].stage == "result" and steps[-1].pixels == int(traced.comp.sum())
            assert all(isinstance(st, windows.Step) and st.outcome for st in steps)
            traces.append(steps)
    first = [st for st in traces[0] if st.fraction == cfg.peak_fraction]
    assert len(first) == len(cfg.half_sizes) and all(st.outcome.startswith("leaked") for st in first)
    assert [st.outcome for st in traces[0] if st.stage == "window"][-1] == "accepted"
    assert traces[0][-2].outcome.startswith("no growth") and traces[0][-1].pixels <= 60
    assert traces[1][0] == windows.Step("window", cfg.half_sizes[0], cfg.peak_fraction, traces[1][0].pixels, "accepted")
    assert traces[1][1].stage == "grow" and "settled" in traces[1][1].outcome
    assert "half-size   6, fraction 0.30" in str(traces[1][0]) and str(traces[1][0]).endswith(": accepted")
    flat_out = []  # nothing stands above anything: no window holds a component, and the peak is the mask
    alone = windows.strict_component(np.full((64, 64), 0.3, np.float32), 32, 32, cfg, trace=flat_out)
    assert alone.comp.sum() == 1 and all(st.outcome == "nothing above the threshold" for st in flat_out[:-1])
    assert flat_out[-1].stage == "result" and flat_out[-1].pixels == 1 and "peak alone" in flat_out[-1].outcome


def test_explain_follows_each_point_to_its_mask():
    """``Annotator.explain``: per point of a padded frame, the point as given, its peak and the
    strict component as the search finds them on the picture inside the padding (frame
    coordinates), and the pixels of the mask ``annotate`` gives that target, the last step's (two
    targets whose masks join: each split off along the valley between them)."""
    scene = make_scene(3, height=96, width=96)
    frame = np.pad(scene.image, 8)
    points = scene.points + 8.0
    annotator = Annotator()
    given = []
    traces = annotator.explain(frame, points, given)
    (mask,) = annotator.annotate([frame], [points])
    assert len(given) == 1 and np.array_equal(given[0], mask)  # annotate's mask, from explain's own pass
    labels, _ = ndimage.label(mask, np.ones((3, 3)))
    cfg = annotator.config
    for t, (x, y) in zip(traces, points):
        assert t.point == (x, y)
        qy, qx = windows.find_peak(scene.image, x - 8, y - 8, cfg)
        assert t.peak == (qx + 8, qy + 8)
        assert t.mask == int((labels == labels[t.peak[1], t.peak[0]]).sum()) > 0
        (result,) = [st for st in t.steps if st.stage == "result"]
        assert t.strict == result.pixels and t.steps[-1].pixels == t.mask
    # two targets 5 px apart: their masks join, and each keeps its side of the valley between them
    yy, xx = np.mgrid[:64, :64].astype(np.float64)
    pair = 0.2 + sum(0.6 * np.exp(-((yy - 32) ** 2 + (xx - cx) ** 2) / (2 * 2.2 ** 2)) for cx in (29.5, 34.5))
    pair = (pair + 0.005 * np.random.default_rng(0).normal(size=pair.shape)).astype(np.float32)
    for t in annotator.explain(pair, np.array([[29.5, 32.0], [34.5, 32.0]])):
        assert t.steps[-1].stage == "apart" and t.steps[-1].pixels == t.mask < t.steps[-2].pixels
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        annotator.explain(np.zeros((4, 4, 3)), points)


@pytest.mark.parametrize("amp, seed", [(0.16, 0), (0.16, 1), (0.16, 2), (0.16, 3), (0.18, 0)])
def test_target_on_a_block_that_brightens_beside_it_does_not_grow_into_it(monkeypatch, amp, seed):
    """A point target (``amp`` above the block under it) on a 70x55 block 0.45 above the
    surround, which brightens by 0.1 just below the target (a sunlit face of a building). At
    0.16, at fraction 0.3 every window's component runs into that brighter part and leaks; at 0.4
    the target stands alone, its peak some 30 pixel-noise deviations above the band. At 0.18
    (seed 0) a half-20 window holds it at 0.3, but its band lies on the block's edges and the
    peak does not clear the band's spread. Either way it is a target on the block, whose window
    does not grow. A larger window, whose background lies off the block, holds the whole block
    (about 4,000 pixels), as it does where every peak may grow."""
    yy, xx = np.mgrid[:160, :160].astype(np.float64)
    inside = (yy >= 50) & (yy < 120) & (xx >= 35) & (xx < 90)
    level = 0.80 + 0.10 * np.clip((yy - 71) / 4, 0, 1)
    block = 0.35 + ndimage.gaussian_filter(inside * (level - 0.35), 1.5)
    target = np.exp(-((yy - 70) ** 2 + (xx - 60) ** 2) / (2 * 1.3 ** 2))
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 1, yy.shape), 1.0)
    image = (0.004 * noise / noise.std() + block + amp * target).astype(np.float32)
    point = np.array([[60.0, 70.0]])
    (mask,) = Annotator().annotate([image], [point])
    assert mask[70, 60] and mask.sum() <= 40, int(mask.sum())
    monkeypatch.setattr(windows, "NOISE_BUMP", 1e6)  # every peak a noise bump: every window grows
    (grown,) = Annotator().annotate([image], [point])
    assert grown.sum() > 3000


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_point_target_above_ground_that_runs_off_the_image_stays_small(seed):
    """A point target (0.6 above the sky) whose skirt meets a bright ground, half as bright, that
    runs off the image's bottom-left corner. Every window leaked into the ground, until one whose
    bottom and left sides lay on the image's edges, where there is no band: it took target and
    ground whole (680 pixels, seeds 0 and 2). The ground crosses those sides dimmer than a
    target's body, and the component reaches the other way from the peak less than half as far
    as the edge lies from it: it runs off the image, and nothing shows that it ends."""
    yy, xx = np.mgrid[:64, :64].astype(np.float64)
    ground = ndimage.gaussian_filter(((yy >= 46) & (xx <= 36)).astype(float), 1.5)
    target = np.exp(-((yy - 43) ** 2 + (xx - 20) ** 2) / (2 * 1.6 ** 2))
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 1, yy.shape), 1.0)
    image = (0.2 + 0.01 * noise / noise.std() + 0.3 * ground + 0.6 * target).astype(np.float32)
    (mask,) = Annotator().annotate([image], [np.array([[20.0, 43.0]])])
    assert mask[43, 20] and mask.sum() <= 40, int(mask.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_large_target_cut_by_the_image_edge_keeps_its_cut_side(seed):
    """A flat-topped disc of radius 12 whose centre lies 7 pixels from the image's bottom edge,
    clicked at its visible part's centroid (farther from the edge than the first window reaches):
    its component runs off the image, bright to the edge and reaching farther from the peak the
    other way, a target the image cuts, and keeps every pixel the image shows."""
    yy, xx = np.mgrid[:64, :64].astype(np.float64)
    disc = (yy - 56) ** 2 + (xx - 32) ** 2 <= 12 ** 2
    noise = np.random.default_rng(seed).normal(0, 0.01, yy.shape)
    image = (0.2 + noise + 0.5 * ndimage.gaussian_filter(disc.astype(float), 0.7)).astype(np.float32)
    ys, xs = np.nonzero(disc)
    (mask,) = Annotator().annotate([image], [np.array([[xs.mean(), ys.mean()]])])
    assert (mask & disc).sum() == disc.sum() and (mask & ~disc).sum() <= 20, int(mask.sum())


@pytest.mark.parametrize("cloud, target", [(0.8, 0.2), (0.8, 0.4), (0.6, 0.15)])
def test_target_at_the_top_of_a_bright_cloud_does_not_take_the_cloud(cloud, target):
    """A faint point target just inside a bright cloud that runs off the image: no small window
    separates it from the cloud, and the wide windows' components (the cloud, ending on the
    image's edge where no band guards it) were taken as the target (9,500 pixels)."""
    yy, xx = np.mgrid[:160, :160].astype(np.float64)
    shape = ((yy - 160) ** 2 / 84 ** 2 + (xx - 70) ** 2 / 70 ** 2) <= 1
    image, point = _point_target_beside(cloud * ndimage.gaussian_filter(shape.astype(float), 5), target, 1)
    (mask,) = Annotator().annotate([image], [point])
    assert mask[80, 60] and mask.sum() <= 60, mask.sum()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_point_target_at_the_rim_of_a_small_cloud_is_not_given_the_cloud(seed):
    """A point target at the rim of a small cloud patch (about half the target's brightness,
    20x14 pixels): the small windows leak into the patch and a larger one holds target and patch
    whole (about 190 pixels). That component is a plateau (a threshold ``plateau_step`` higher
    drops most of it), so the search passes it over for a higher fraction, which holds the target
    alone; without the plateau test (``plateau_step=0``) the patch comes back."""
    yy, xx = np.mgrid[:160, :160].astype(np.float64)
    patch = ((yy - 84) ** 2 / 7 ** 2 + (xx - 70) ** 2 / 10 ** 2) <= 1
    image, point = _point_target_beside(0.45 * ndimage.gaussian_filter(patch.astype(float), 1.5), 1.0, seed)
    (mask,) = Annotator().annotate([image], [point])
    assert mask[80, 60] and mask.sum() <= 40 and not (mask & patch).sum() > 10, int(mask.sum())
    (untested,) = Annotator(AnnotatorConfig(plateau_step=0.0)).annotate([image], [point])
    assert untested.sum() > 150


def test_faint_target_in_a_textured_cloud_is_not_given_the_cloud(monkeypatch):
    """A faint, slightly elongated target (57 pixels) inside a textured cloud of a synthetic
    scene, clicked 2 pixels right of and 1 below its centre: every small window leaks into the
    cloud at every fraction, and a wide window's component (the cloud, 1,900 pixels) runs through
    the first window's band on two opposite sides, as a long thin target's body would. It is
    about as wide as it is long, so it does not stand in for the target (the mask was the cloud,
    2,184 pixels). The cloud holds the larger bands too, and the crossing is now read on the
    largest of them, where the cloud crosses one side; without the aspect test a wide window's
    component still crosses that band both ways and, the straight-line share lifted too (the
    cloud bends away from the point), stands in (614 pixels)."""
    scene = annotation_datasets.synthetic_scene(0, "SIRST-like 256", 36)
    x, y = scene.points[2]
    labels, _ = ndimage.label(scene.mask > 0, np.ones((3, 3)))
    target = labels == labels[int(y), int(x)]
    assert 40 <= target.sum() <= 80
    point = np.array([[x + 2.0, y + 1.0]])
    (mask,) = Annotator().annotate([scene.image], [point])
    assert mask.sum() <= 3 * target.sum() and (mask & target).any(), int(mask.sum())
    monkeypatch.setattr(windows, "LONG_ASPECT", 0.0)  # any shape through the band is a long target
    monkeypatch.setattr(windows, "STAR_SHARE", 0.0)
    (cloud,) = Annotator().annotate([scene.image], [point])
    assert cloud.sum() > 3 * target.sum()


def test_point_on_an_equalized_cloud_ridge_is_not_given_the_ridge(monkeypatch):
    """The target in a textured cloud of the test above (57 pixels), clicked at its centroid,
    after CLAHE (``annotation_datasets.py --equalize local``), which lifts the cloud's ridges to
    the target's level: every small window leaked at every fraction, and the widest window's
    component, ridges that curve away from the target (1,806 pixels), stood in for it. The
    straight lines from the peak reach under 60% of it (``STAR_SHARE``): it does not stand in,
    and the mask stays near the target; without the test the ridges come back."""
    scene = annotation_datasets.synthetic_scene(0, "SIRST-like 256", 36)
    x, y = scene.points[2]
    labels, _ = ndimage.label(scene.mask > 0, np.ones((3, 3)))
    target = labels == labels[int(y), int(x)]
    assert target.sum() == 57
    one = _as_set(scene.image)
    annotation_datasets.equalize_images(one, "local")
    point = np.array([[x, y]])
    (mask,) = Annotator().annotate(one.images, [point])
    assert mask.sum() <= 2 * target.sum() and (mask & target).sum() >= 0.3 * target.sum(), int(mask.sum())
    monkeypatch.setattr(windows, "STAR_SHARE", 0.0)
    (ridges,) = Annotator().annotate(one.images, [point])
    assert ridges.sum() > 20 * target.sum()


def test_click_off_the_middle_of_a_flat_topped_target_takes_the_target(monkeypatch):
    """A flat-topped, noisy target of a synthetic scene (1,421 pixels, about 30x60), clicked 20
    pixels from its centroid near one end (a LESPS coarse point): every window centred there
    holds part of the target's edge in its band, so every one leaked until the fraction rose to
    0.9, where one noisy pixel of the top stood alone (a mask of 11 pixels). That pixel stands no
    higher above its band than noise does, so the wide windows are tried at the lower fractions
    first and hold the target. Without the noise test (a pixel noise of 0) the bump comes back."""
    scene = annotation_datasets.synthetic_scene(0, "extended 512", 7)
    labels, _ = ndimage.label(scene.mask > 0, np.ones((3, 3)))
    target = labels == labels[199, 463]
    assert 1300 <= target.sum() <= 1500
    point = np.array([[463.0, 199.0]])
    (mask,) = Annotator().annotate([scene.image], [point])
    assert (mask & target).sum() / (mask | target).sum() >= 0.8
    monkeypatch.setattr(windows, "pixel_noise", lambda values: 0.0)
    (bump,) = Annotator().annotate([scene.image], [point])
    assert bump.sum() < 50


def _saturated_cloud(seed: int, centre: tuple, axes: tuple, blur: float, target: tuple | None,
                     noise: float = 0.01) -> tuple:
    """A 256 x 256 frame at 0.2 with an elliptic cloud (``centre`` and semi-axes ``axes``, rows
    then columns) and, at ``target`` (row, col) unless None, a small target (a disc of radius
    2.5), both as bright, blurred by ``blur`` and scaled so that the sensor's full scale clips
    their middles to 1, with white noise of ``noise``: ``(image, cloud)``, the image float64."""
    yy, xx = np.mgrid[:256, :256].astype(np.float64)
    cloud = ((yy - centre[0]) ** 2 / axes[0] ** 2 + (xx - centre[1]) ** 2 / axes[1] ** 2) <= 1
    lit = cloud.copy()
    if target is not None:
        lit |= ((yy - target[0]) ** 2 + (xx - target[1]) ** 2) <= 2.5 ** 2
    field = 0.2 + 1.3 * ndimage.gaussian_filter(lit.astype(float), blur)
    return np.clip(field + np.random.default_rng(seed).normal(0, noise, field.shape), 0, 1), cloud


def _target_at_a_saturated_clouds_rim(seed: int, inset: int, top_elsewhere: bool = False, noise: float = 0.01):
    """A cloud bank (60 x 28 pixels, blurred by 3) whose middle the sensor's full scale clips to
    1, in a 256 x 256 frame with white noise of ``noise``, and a small target (a disc of radius
    2.5, as bright) ``inset`` pixels inside its lower rim, the point on it: ``(image, point)``.
    ``top_elsewhere``: the frame at 0.9 of that, and a 3 x 3 block elsewhere at 1, so that the
    cloud's plateau is not the frame's top."""
    y = 124 - inset
    image, _ = _saturated_cloud(seed, (110, 128), (14, 30), 3.0, (y, 140), noise)
    if top_elsewhere:
        image = 0.9 * image
        image[20:23, 20:23] = 1.0
    return image.astype(np.float32), np.array([[140.0, float(y)]])


@pytest.mark.parametrize("seed, inset", [(0, 2), (1, 2), (0, 4), (2, 4)])
def test_target_at_the_rim_of_a_saturated_cloud_is_not_given_the_cloud(seed, inset):
    """A target inside the rim of a cloud that saturates the sensor, the whole cloud inside the
    widest window (a small image's edge would cut it): every small window leaks into the cloud at
    every fraction, and a wide window's component (the cloud, about 1,700 pixels) stood in for the
    target. The peak sits on the cloud's clipped plateau, where the image cannot show where the
    target ends, so no wide window stands in and the mask stays at the point. Where the plateau
    lies below the frame's top (nothing there was clipped) the wide window still stands in."""
    image, point = _target_at_a_saturated_clouds_rim(seed, inset)
    (mask,) = Annotator().annotate([image], [point])
    x, y = (int(v) for v in point[0])
    assert mask[y - 1:y + 2, x - 1:x + 2].any() and mask.sum() <= 30, int(mask.sum())
    image, point = _target_at_a_saturated_clouds_rim(seed, inset, top_elsewhere=True)
    (cloud,) = Annotator().annotate([image], [point])
    assert cloud.sum() > 1000


def _coded(image: np.ndarray, below: int) -> np.ndarray:
    """``image`` as an 8-bit file whose coding moved the pixels at the top grey level (255) to
    ``below`` levels under it, as a lossy coding (JPEG) moves a saturated region's, and a 3 x 3
    block in the corner left at the top."""
    levels = np.round(np.clip(image, 0, 1) * 255)
    levels[levels == 255] = 255 - below
    levels[20:23, 20:23] = 255
    return np.float32(levels / 255)


@pytest.mark.parametrize("seed, inset", [(0, 2), (2, 4)])
def test_target_at_the_rim_of_a_saturated_cloud_coded_below_the_top_is_not_given_the_cloud(seed, inset,
                                                                                         monkeypatch):
    """The saturated cloud above in a noiseless 8-bit file whose coding moved its clipped plateau to
    the grey level below the top (``annotation_datasets.py --jpeg 50`` does so to MDFA's saturated
    skies): the pixel noise reads zero there, and only the file's grey level shows that the
    plateau was clipped. No wide window stands in for the target; without the grey-level
    tolerance (``CLIP_LEVELS``) the cloud does, and so it does where the plateau lies two levels
    below the top (the tolerance takes in the level below the top only)."""
    image, point = _target_at_a_saturated_clouds_rim(seed, inset, noise=0.0)
    x, y = (int(v) for v in point[0])
    (mask,) = Annotator().annotate([_coded(image, 1)], [point])
    assert mask[y - 1:y + 2, x - 1:x + 2].any() and mask.sum() <= 30, int(mask.sum())
    (cloud,) = Annotator().annotate([_coded(image, 2)], [point])
    assert cloud.sum() > 1000
    monkeypatch.setattr(windows, "CLIP_LEVELS", -1.0)
    (cloud,) = Annotator().annotate([_coded(image, 1)], [point])
    assert cloud.sum() > 1000


def _small_saturated_cloud(seed: int, a: int, b: int, centred: bool = False):
    """An elliptic cloud (semi-axes ``a`` rows, ``b`` columns, blurred by 2) whose middle the
    sensor's full scale clips to 1, small enough for a window of ``half_sizes`` to hold it, in a
    256 x 256 frame with white noise of 0.01, and a small target (a disc of radius 2.5, as
    bright) 2 pixels inside its lower rim, the point on it: ``(image, point, cloud)``. ``centred``:
    no target, and the point at the cloud's middle (a saturated target of that shape)."""
    y = 128 + a - 2
    image, cloud = _saturated_cloud(seed, (128, 128), (a, b), 2.0, None if centred else (y, 134))
    point = np.array([[128.0, 128.0]]) if centred else np.array([[134.0, float(y)]])
    return image.astype(np.float32), point, cloud


@pytest.mark.parametrize("seed, a, b", [(0, 8, 12), (1, 10, 14), (2, 9, 9)])
def test_target_at_the_rim_of_a_small_saturated_cloud_is_not_given_the_cloud(seed, a, b, monkeypatch):
    """A small saturated cloud (250 to 440 pixels) with a target at its rim: the first window
    leaks into the cloud, and a larger window of ``half_sizes`` held the cloud whole, clear of its
    band (the wide windows' clipped-plateau test never asked). The plateau lies on the peak but
    its middle lies far from it (over ``CLIP_CENTRE`` of its radius): a saturated cloud the target
    lies at the rim of, not the target's top. The mask stays at the point; with the point at the
    cloud's middle (a saturated target that shape) the cloud is found whole, and with the test
    lifted the cloud comes back for the target at its rim."""
    image, point, cloud = _small_saturated_cloud(seed, a, b)
    x, y = (int(v) for v in point[0])
    (mask,) = Annotator().annotate([image], [point])
    assert mask[y - 1:y + 2, x - 1:x + 2].any() and mask.sum() <= 30, int(mask.sum())
    target, centre, _ = _small_saturated_cloud(seed, a, b, centred=True)
    (whole,) = Annotator().annotate([target], [centre])
    assert (whole & cloud).sum() >= 0.95 * cloud.sum()
    monkeypatch.setattr(windows, "CLIP_CENTRE", float("inf"))
    (taken,) = Annotator().annotate([image], [point])
    assert (taken & cloud).sum() >= 0.95 * cloud.sum()


def _target_inside_a_saturated_region(seed: int, radius: int, inset: int, bump: float = 0.06) -> tuple:
    """A round region (``radius`` px, blurred by 3) just under the sensor's full scale (0.985 at its
    middle, white noise of 0.01 clipped at 1, so that part of it reads as clipped) in a 256 x 256
    frame at 0.2, and a small target (a disc of radius 2.5 blurred by 1, ``bump`` above it)
    ``inset`` pixels inside its lower rim, the point on it: ``(image, point, region)``. The whole
    region lies inside the frame, as a cloud or sky does that ends in the picture."""
    yy, xx = np.mgrid[:256, :256].astype(np.float64)
    region = ndimage.gaussian_filter((np.hypot(yy - 128, xx - 128) <= radius).astype(float), 3.0)
    y, x = 128 + radius - inset, 131
    target = ndimage.gaussian_filter((np.hypot(yy - y, xx - x) <= 2.5).astype(float), 1.0)
    field = 0.2 + 0.785 * region + bump * target + np.random.default_rng(seed).normal(0, 0.01, yy.shape)
    return np.clip(field, 0, 1).astype(np.float32), np.array([[float(x), float(y)]]), region > 0.5


@pytest.mark.parametrize("seed, radius, inset", [(0, 30, 14), (1, 40, 14), (2, 30, 10)])
def test_target_inside_the_rim_of_a_saturated_region_does_not_grow_into_it(seed, radius, inset, monkeypatch):
    """A small target a little inside the rim of a region that saturates the sensor in part
    (2,800 to 5,000 pixels), the region wholly inside the frame: the first window's band lies on
    the region, the target is one of its noise bumps at a raised fraction, and the growth took
    the region whole (a larger window holds it clear of its band: nothing cuts it but its own
    edge). Its clipped plateau holds the peak but its middle lies far from it
    (``CLIP_CENTRE``), so the growth stops at the target; with the point near the region's
    middle (3 px off: a saturated target of that size) the region is found whole, and with the
    test lifted the region comes back for the target at its rim."""
    image, point, region = _target_inside_a_saturated_region(seed, radius, inset)
    x, y = (int(v) for v in point[0])
    (mask,) = Annotator().annotate([image], [point])
    assert mask[y - 1:y + 2, x - 1:x + 2].any() and mask.sum() <= 150, int(mask.sum())
    whole_image, middle, _ = _target_inside_a_saturated_region(seed, radius, radius, bump=0.0)
    (whole,) = Annotator().annotate([whole_image], [middle])
    assert (whole & region).sum() >= 0.95 * region.sum()
    monkeypatch.setattr(windows, "CLIP_CENTRE", float("inf"))
    (taken,) = Annotator().annotate([image], [point])
    assert (taken & region).sum() >= 0.8 * region.sum()


def test_grey_step_is_one_level_of_the_file():
    """:func:`~d2d_ext.windows.grey_step`: one grey level of an 8-bit image read into [0, 1],
    whatever levels are missing; 0 for a single value; next to nothing for a float image."""
    levels = np.array([3, 3, 7, 8, 200, 255], np.float32) / 255
    assert windows.grey_step(levels) == pytest.approx(1 / 255, rel=1e-5)
    assert windows.grey_step(np.full((4, 4), 0.5, np.float32)) == 0.0
    assert windows.grey_step(np.random.default_rng(0).random(1000)) < 1e-4


def _target_on_a_textured_sky(radius: float, offset: int, seed: int = 0):
    """A round sky patch (``radius`` px, its centre ``offset`` px right of the target) at 0.77 with a
    texture of deviation 0.03 (white noise blurred by 3 px) on a dark frame at 0.2 (320 x 320,
    the patch's rim blurred by 1 px), and on it a target: a disc of radius 6 blurred by 1.5 px, 0.15
    above the sky, at the frame's centre, with white noise of 0.005: ``(image, point, target)``, the
    target the pixels above half its contrast."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:320, :320].astype(np.float64)
    sky = np.hypot(yy - 160, xx - 160 - offset) <= radius
    texture = ndimage.gaussian_filter(rng.normal(0, 1, yy.shape), 3)
    field = ndimage.gaussian_filter(np.where(sky, 0.77 + 0.03 * texture / texture.std(), 0.2), 1.0)
    target = 0.15 * ndimage.gaussian_filter((np.hypot(yy - 160, xx - 160) <= 6).astype(float), 1.5)
    image = field + target + rng.normal(0, 0.005, yy.shape)
    return image.astype(np.float32), np.array([[160.0, 160.0]]), target > 0.075


@pytest.mark.parametrize("radius, offset", [(40, 0), (40, 15), (60, 0), (60, 15)])
def test_target_on_a_textured_sky_is_not_given_the_sky(radius, offset, monkeypatch):
    """A target of about 100 pixels on a textured sky patch whose whole lies inside the widest
    window: the first window's band lies on the target's hull, and every larger band on the sky's
    texture a little below it, so no band reads as settled; windows of 8 to 20 hold the target
    apart (clear of their bands, the same in the next window), and the first whose band lies off
    the sky held the sky whole (5,100 to 11,400 pixels). The growth takes no component more than
    ``APART_GROWTH`` times the one that held the target apart: the mask stays at the target, and
    without that bound the sky comes back."""
    image, point, target = _target_on_a_textured_sky(radius, offset)
    (mask,) = Annotator().annotate([image], [point])
    assert mask.sum() <= 1.5 * target.sum() and (mask & target).sum() >= 0.7 * target.sum(), int(mask.sum())
    monkeypatch.setattr(windows, "APART_GROWTH", float("inf"))
    (sky,) = Annotator().annotate([image], [point])
    assert sky.sum() > 4000


def _small_target_on(surround: np.ndarray, seed: int):
    """A small target (Gaussian, sigma 0.5 px, 0.16 above what it sits on) at row 40, column 40 of
    ``surround`` ``(80, 80)`` plus white noise of deviation 0.004: an MDFA-like scene."""
    yy, xx = np.mgrid[:80, :80].astype(np.float64)
    target = 0.16 * np.exp(-((yy - 40) ** 2 + (xx - 40) ** 2) / (2 * 0.5 ** 2))
    noise = np.random.default_rng(seed).normal(0.0, 0.004, yy.shape)
    return (surround + target + noise).astype(np.float32)


def _small_target_on_a_plateau(seed: int):
    yy, xx = np.mgrid[:80, :80].astype(np.float64)
    square = ((abs(yy - 40) < 20) & (abs(xx - 40) < 20)).astype(float)
    return _small_target_on(0.2 + 0.21 * ndimage.gaussian_filter(square, 1.0), seed)


@pytest.mark.parametrize("seed", [3, 4, 7])
def test_click_that_misses_a_small_target_moves_to_it(seed):
    """A click two pixels off a small target (MDFA train_005923 with ``--jitter 2``), onto the
    bright plateau it sits on: the brightest pixel of the click's 3x3 is a bump of the plateau's
    noise, and the search took the whole plateau (there: 1,185 pixels for a target of 5). The
    point now moves to the target's peak, which stands well above the noise, and the mask is the
    target's. With the reach at the snap's radius (no move) the plateau comes back."""
    image, point = _small_target_on_a_plateau(seed), np.array([[42.0, 42.0]])
    assert windows.find_peak(image, 42.0, 42.0, AnnotatorConfig()) == (40, 40)
    (mask,) = Annotator().annotate([image], [point])
    assert mask[40, 40] and mask.sum() <= 9, int(mask.sum())
    (plateau,) = Annotator(AnnotatorConfig(snap_reach=1)).annotate([image], [point])
    assert plateau.sum() > 1000


def test_clicks_that_miss_a_small_target_get_its_mask_whatever_the_noise():
    """The scene above under twelve noise draws (the search without the move takes the plateau
    under seven of them): every mask is the target's."""
    for seed in range(12):
        (mask,) = Annotator().annotate([_small_target_on_a_plateau(seed)], [np.array([[42.0, 42.0]])])
        assert mask[40, 40] and mask.sum() <= 9, (seed, int(mask.sum()))


def test_a_missed_click_does_not_move_onto_another_points_peak():
    """A point on the flat surround two pixels from another point's target keeps its pixel: that
    peak is the other point's, and two points on one peak would be one target."""
    image = _small_target_on(np.full((80, 80), 0.3), seed=0)
    cfg = AnnotatorConfig()
    assert windows.find_peak(image, 42.0, 42.0, cfg) == (40, 40)
    alone = windows.snap(image, 42.0, 42.0, cfg.snap_radius)
    assert windows.find_peak(image, 42.0, 42.0, cfg, others=[(40, 40)]) == alone != (40, 40)


def test_pixel_noise_reads_the_noise_not_the_structure():
    """``windows.pixel_noise``: the standard deviation of white noise within 10%, the same on a
    steep smooth ramp or with a bright block's edge through the window; 0 on a flat window."""
    from d2d_ext.windows import pixel_noise
    rng = np.random.default_rng(5)
    noise = rng.normal(0.0, 0.02, (49, 49))
    yy, xx = np.mgrid[:49, :49].astype(np.float64)
    for structure in (0.0 * yy, 0.01 * xx + 0.004 * yy, 0.5 * (xx > 30)):
        assert pixel_noise(noise + structure) == pytest.approx(0.02, rel=0.1)
    assert pixel_noise(np.full((13, 13), 0.4)) == 0.0


@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_flat_topped_target_is_not_passed_over_as_a_plateau(fraction):
    """A flat-topped extended target of a synthetic scene (386 pixels): at ``peak_fraction`` 0.5
    the first window leaks and the larger ones hold a component that a threshold
    ``plateau_step`` higher halves, like a cloud beside a point; but it surrounds its peak, so it
    is taken (passed over, the mask was 79 of its pixels)."""
    scene = annotation_datasets.synthetic_scene(1, "extended 512", 13)
    labels, _ = ndimage.label(scene.mask > 0, np.ones((3, 3)))
    target = labels == labels[257, 456]
    assert target.sum() > 300
    (mask,) = Annotator(AnnotatorConfig(peak_fraction=fraction)).annotate([scene.image], [scene.points])
    near = ndimage.binary_dilation(target, iterations=20)
    assert (mask & target).sum() / (mask | target)[near].sum() >= 0.75


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_long_thin_target_is_found_whole(seed):
    """A flat-topped bar 60x6 pixels (longer than every window of ``half_sizes``), SNR 8: every
    small window leaks at every fraction, and the search used to end on a bump of the bar's top
    (IoU 0.00 to 0.20). The largest small window's component runs through its band, symmetric
    about the point and as bright as the bar, so the wide windows are tried at that fraction."""
    bar = make_bar(60, 6, 8.0, seed)
    (mask,) = Annotator().annotate([bar.image], [bar.points])
    assert (mask & bar.mask).sum() / (mask | bar.mask).sum() >= 0.8


@pytest.mark.parametrize("length, width, snr, angle, seed", [
    (80, 10, 8.0, 0, 1), (60, 6, 8.0, 30, 1), (60, 6, 5.0, 0, 2)])
def test_long_bar_whose_top_fills_the_band_is_not_cut_to_a_bump(length, width, snr, angle, seed):
    """Bars of ``annotation_elongated.py`` that got masks of 23 to 28 pixels: in a small window
    the bar's top fills part of the band, whose spread then puts the noise floor above the
    peak-relative level, and the floor cut the top to a bump clear of the band. The component at
    the peak-relative level runs through the band as the bar's body (the test of a long target's
    leak), so that window counts as leaked and the bar is found whole."""
    bar = make_bar(length, width, snr, seed, angle=angle)
    (mask,) = Annotator().annotate([bar.image], [bar.points])
    assert (mask & bar.mask).sum() / (mask | bar.mask).sum() >= 0.8


@pytest.mark.parametrize("sigma, gap, half_length, half_thickness, seed",
                         [(6, 6, 60, 12, 1), (6, 6, 60, 20, 1), (10, 12, 60, 12, 0), (14, 6, 60, 20, 1),
                          (14, 12, 90, 20, 0)])
def test_large_target_pressed_against_a_band_as_bright_does_not_take_it(sigma, gap, half_length, half_thickness,
                                                                        seed):
    """Cases of ``annotation_touching.py`` whose masks took the band (4,000 to 10,000 pixels for
    targets of 409 to 2,227): the first window lies inside the target, so its band is on the
    target's hull and every larger component, band and target, surrounds the point as that
    band reads it. The band is as bright as the target and meets it over a saddle: a second
    structure as bright as the peak, so the window does not grow into it."""
    scene = make_pressed(sigma, gap, half_length, half_thickness, seed)
    (mask,) = Annotator().annotate([scene.image], [scene.points])
    assert mask.sum() <= scene.mask.sum() and (mask & scene.mask).sum() >= 0.9 * mask.sum(), int(mask.sum())


def _bar_with_neighbour(neighbour: str, level: float, seed: int):
    """A flat-topped 5x19 target (row 70, columns 55-73, edges blurred by the optics) on a dark
    128x128 scene with weak correlated noise, and beside it either a dimmer ``"roof"`` (a block
    of ``level`` times the target's brightness above and left of it, touching it, larger than the
    window search's windows, fading out over a few pixels) or a ``"hull"`` (a long bar to its left
    nearly as bright as the target, joined to it by a dimmer neck, with edges as sharp as the
    target's: one object, like a ship's hull beside its superstructure). Returns the image, the
    point, the target and the neighbour's pixels."""
    yy, xx = np.mgrid[:128, :128].astype(np.float64)
    bar = (np.abs(yy - 70) <= 2) & (np.abs(xx - 64) <= 9)
    if neighbour == "roof":
        block = ((yy >= 42) & (yy <= 69) & (xx >= 38) & (xx <= 60)).astype(float)
        extra = level * ndimage.gaussian_filter(block, 3.0)
    else:
        row = np.abs(yy - 71) <= 1
        extra = 0.85 * (row & (xx >= 36) & (xx <= 52)) + 0.45 * (row & (xx >= 53) & (xx <= 54))
    extra = ndimage.gaussian_filter(extra, 0.8)
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 1, yy.shape), 1.0)
    image = 0.2 + 0.5 * (ndimage.gaussian_filter(bar.astype(float), 0.8) + extra) + 0.01 * noise / noise.std()
    return image.astype(np.float32), np.array([[64.0, 70.0]]), bar, (extra > 0.3 * extra.max()) & ~bar


def test_binarisation_records_what_it_makes_of_each_region():
    """``binarize_targets(trace=...)``: the same masks with a trace as without, and per target its
    bright region first and its mask last. Beside a dimmer roof, the region's part over the roof
    is dropped for its soft end; beside a hull, the hull is dropped for pulling the centroid off
    the point (``Annotator.explain``, which gives both searches' steps)."""
    for neighbour, reason in (("roof", "as steep as"), ("hull", "pulls the centroid")):
        image, point, _, _ = _bar_with_neighbour(neighbour, 0.5, 0)
        (t,) = Annotator().explain(image, point)
        later = [st for st in t.steps if st.stage == "binarize"]
        assert later[0].outcome.startswith("the bright region") and later[-1].outcome == "the target's mask"
        assert later[-1].pixels == t.mask
        assert any(st.outcome.startswith("a further part, dropped") and reason in st.outcome for st in later)
    cfg = AnnotatorConfig()
    scenes = _scenes(6)
    batch = prepare_targets([sc.image for sc in scenes], [sc.points for sc in scenes], cfg)
    soft = Annotator(cfg).soft(batch)
    trace = []
    plain, traced = binarize_targets(batch, soft, cfg), binarize_targets(batch, soft, cfg, trace)
    assert np.array_equal(plain, traced) and len(trace) == len(batch)
    assert all(steps[-1].pixels == int(m.sum()) and steps[0].stage == "binarize" for steps, m in zip(trace, traced))


@pytest.mark.parametrize("level", [0.4, 0.5, 0.6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_target_beside_a_dimmer_roof_does_not_take_it(level, seed):
    """A target touching a dimmer structure that lies on one side of it and fades out (a roof, a
    cloud's flank): the bright region at ``low_fraction`` takes the roof (5 to 7 times the target's
    95 pixels before the rule), which is neither the target's halo nor ends in an edge like the
    target's, so the mask stays the target."""
    image, point, bar, roof = _bar_with_neighbour("roof", level, seed)
    (mask,) = Annotator().annotate([image], [point])
    assert mask[bar].all() and (mask & roof).sum() <= 0.1 * roof.sum(), (int(mask.sum()), int((mask & roof).sum()))
    assert mask.sum() <= 1.3 * bar.sum(), int(mask.sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_extension_that_ends_like_the_target_is_kept(seed):
    """A one-sided extension nearly as bright as the target, joined through a dimmer neck and
    ending in an edge as steep as the target's (a ship's hull beside its superstructure) is part
    of the target: kept. With the point on the superstructure's middle it is the edge test that
    keeps it (the halo rings do not reach it; with an edge test no extension passes, it goes),
    once the centre test is off: there the hull pulls the centroid about 7 pixels away from the
    point and reads as a neighbour. With the point in the middle of the whole ship (the LESPS
    centroid point), the default keeps it."""
    image, point, bar, hull = _bar_with_neighbour("hull", 0.0, seed)
    (mask,) = Annotator(AnnotatorConfig(centre_shift=0.0)).annotate([image], [point])
    assert mask[bar].all() and mask[hull].mean() >= 0.95, (int(mask.sum()), float(mask[hull].mean()))
    (strict_only,) = Annotator(AnnotatorConfig(edge_ratio=100.0, centre_shift=0.0)).annotate([image], [point])
    assert strict_only[hull].mean() <= 0.1 and strict_only[bar].mean() >= 0.95
    (on_top,) = Annotator().annotate([image], [point])
    assert on_top[hull].mean() <= 0.1 and on_top[bar].mean() >= 0.95
    ys, xs = np.nonzero(bar | hull)
    (centred,) = Annotator().annotate([image], [np.floor([[xs.mean(), ys.mean()]])])
    assert centred[bar].all() and centred[hull].mean() >= 0.95, (int(centred.sum()), float(centred[hull].mean()))


def test_mask_morphology_matches_scipy():
    """``dilate8``, ``inner_edge``, ``fill_holes`` and ``with_halo`` (the window search's and
    binarisation's morphology, written without scipy's per-call set-up or repeated dilation)
    give scipy's results on random masks of every small shape, one-pixel-wide arrays included."""
    from d2d_ext.morphology import dilate8, fill_holes, inner_edge, with_halo
    eight = np.ones((3, 3), bool)
    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = rng.integers(1, 12, 2)
        mask = rng.random((h, w)) < rng.random()
        assert (dilate8(mask) == ndimage.binary_dilation(mask, eight)).all()
        assert (fill_holes(mask) == ndimage.binary_fill_holes(mask)).all()
        assert (inner_edge(mask) == (mask & ndimage.binary_dilation(~mask, eight, border_value=1))).all()
        core = mask & (rng.random((h, w)) < 0.3)
        if not core.any():
            continue
        extra = mask & ~core
        for inside in (None, rng.random((h, w)) < 0.9):
            # the rings by a distance transform, as the halo was first written
            dist = ndimage.distance_transform_cdt(~core, metric="chessboard")
            reach = 0
            for d in range(1, int(dist[extra].max(initial=0)) + 1):
                ring = (dist == d) if inside is None else (dist == d) & inside
                if not ring.any() or (extra & ring).sum() < 0.4 * ring.sum():
                    break
                reach = d
            assert (with_halo(mask, core, 0.4, inside) == (core | (extra & (dist <= reach)))).all()


def test_elongation_is_length_over_width():
    """``morphology.elongation``: an axis-aligned ``L x W`` rectangle gives the ratio of its
    coordinates' standard deviations, ``sqrt((L^2 - 1) / (W^2 - 1))``, at any place; rotating it
    keeps about ``L / W``; a disc and a square give 1; the principal moments match numpy's
    eigenvalues of the coordinates' covariance on random masks; a line of pixels is infinitely long."""
    from d2d_ext.morphology import elongation
    for length, width, y0, x0 in ((40, 6, 3, 5), (9, 3, 0, 0), (20, 20, 7, 1)):
        rect = np.zeros((50, 50), bool)
        rect[y0:y0 + width, x0:x0 + length] = True
        expected = np.sqrt((length ** 2 - 1) / (width ** 2 - 1))
        assert elongation(rect) == pytest.approx(expected, rel=1e-12)
        assert elongation(rect.T) == pytest.approx(expected, rel=1e-12)
    bar = np.zeros((80, 80), bool)
    bar[37:43, 10:70] = True
    for angle in (30, 45, 60):
        turned = ndimage.rotate(bar.astype(float), angle, reshape=False, order=1) > 0.5
        assert elongation(turned) == pytest.approx(10.0, rel=0.1)
    yy, xx = np.mgrid[:41, :41]
    assert elongation((yy - 20) ** 2 + (xx - 20) ** 2 <= 15 ** 2) == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(3)
    for _ in range(50):
        mask = rng.random((12, 9)) < 0.4
        ev = np.linalg.eigvalsh(np.cov(np.nonzero(mask), bias=True))
        assert elongation(mask) == pytest.approx(np.sqrt(ev[1] / ev[0]), rel=1e-9)
    line = np.zeros((5, 7), bool)
    line[np.arange(5), np.arange(5)] = True
    assert elongation(line) == np.inf


def test_star_share_is_the_share_seen_in_straight_lines_from_the_seed():
    """``morphology.star_share``: a disc and a square give 1 from any pixel of them, a bar turned
    off the pixel grid nearly 1 from its middle (its sampled edges are steps), even 3 pixels wide;
    an arc (half an annulus) read from one end, and an L read from the end of one arm, leave out
    of the line's reach what lies around the bend; on random blobs the share matches a reference
    that walks each pixel's line with the same sampling."""
    from d2d_ext.morphology import star_share
    yy, xx = np.mgrid[:81, :81]
    r2 = (yy - 40) ** 2 + (xx - 40) ** 2
    disc = r2 <= 30 ** 2
    assert star_share(disc, (40, 40)) == 1.0 and star_share(disc, (40, 12)) == 1.0
    assert star_share(np.ones((9, 9), bool), (0, 8)) == 1.0
    for half_width, least in ((3, 0.97), (1, 0.8)):
        bar = ((abs(yy - 40) <= half_width) & (abs(xx - 40) <= 30)).astype(float)
        assert star_share(ndimage.rotate(bar, 30, reshape=False, order=1) > 0.5, (40, 40)) >= least
    arc = (r2 >= 25 ** 2) & (r2 <= 30 ** 2) & (yy <= 40)
    assert star_share(arc, (40, 13)) < 0.4
    ell = np.zeros((60, 60), bool)
    ell[5:55, 5:12] = True
    ell[48:55, 5:55] = True
    assert 0.2 < star_share(ell, (6, 8)) < 0.75

    def reference(mask, seed):
        seen = []
        for y, x in zip(*np.nonzero(mask)):
            steps = max(abs(y - seed[0]), abs(x - seed[1]))
            line = [(round(seed[0] + t * (y - seed[0])), round(seed[1] + t * (x - seed[1])))
                    for t in (np.linspace(0.0, 1.0, steps + 1) if steps else [0.0])]
            seen.append(all(mask[a, b] for a, b in line))
        return np.mean(seen)

    rng = np.random.default_rng(5)
    for _ in range(20):
        blob = ndimage.binary_opening(rng.random((30, 30)) < 0.7)
        labels, _ = ndimage.label(blob, np.ones((3, 3)))
        ys, xs = np.nonzero(labels == 1)
        seed = (ys[len(ys) // 2], xs[len(xs) // 2])
        assert star_share(labels == 1, seed) == pytest.approx(reference(labels == 1, seed), abs=1e-12)


def test_gradient_matches_numpy():
    """``annotate.gradient`` (the contrast's gradient, written as slices) gives ``np.gradient``'s
    values bit for bit, and zeros where an axis has one element (as the annotator had it)."""
    from d2d_ext.annotate import gradient
    rng = np.random.default_rng(2)
    for _ in range(300):
        h, w = rng.integers(1, 30, 2)
        values = rng.normal(size=(h, w))
        gy, gx = gradient(values)
        if h > 1 and w > 1:
            want_y, want_x = np.gradient(values)
            assert np.array_equal(gy, want_y) and np.array_equal(gx, want_x)
        else:
            assert not gy.any() and not gx.any() and gy.shape == gx.shape == (h, w)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_label_matches_scipy(connectivity):
    """``morphology.label`` (compiled) gives ``scipy.ndimage.label``'s array and count,
    numbering included, on random masks of every small shape (one-pixel-wide, empty and full
    ones, sparse noise and dilated blobs), on a mask the size of a wide window and on a strided
    view; ``component`` (8-connected) is a pixel's component of it."""
    from d2d_ext.morphology import component, label
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    rng = np.random.default_rng(connectivity)
    masks = [np.zeros((0, 5), bool), np.zeros((3, 0), bool), np.zeros((4, 4), bool), np.ones((4, 7), bool)]
    for i in range(600):
        h, w = rng.integers(1, 24, 2)
        mask = rng.random((h, w)) < rng.random()
        masks.append(ndimage.binary_dilation(mask) if i % 3 == 0 else mask)
    big = rng.random((161, 203)) < 0.55  # large, winding components
    masks += [big, big[::2, 1::3], big.T]
    for mask in masks:
        got, n = label(mask, connectivity)
        want, count = ndimage.label(mask, structure)
        assert got.dtype == np.int32 and got.shape == mask.shape
        assert np.array_equal(got, want) and n == count
        if connectivity == 8 and mask.size:
            seed = tuple(int(rng.integers(size)) for size in mask.shape)
            held = component(mask, seed)
            assert (held is None) if not mask[seed] else np.array_equal(held, want == want[seed])


def test_label_names_a_bad_array():
    """The compiled labelling refuses what it cannot read as a C-contiguous 2-D array of the
    right dtype, naming the problem (``morphology.label`` converts; the module function does not)."""
    from d2d_ext import _C
    mask = np.zeros((4, 5), bool)
    labels = np.empty((4, 5), np.int32)
    for args, message in [
        ((mask.astype(np.uint8), labels, 8), "mask must have dtype"),
        ((mask, labels.astype(np.int64), 8), "labels must have dtype"),
        ((mask[None], labels, 8), "mask must have 2 dimensions"),
        ((np.zeros((4, 10), bool)[:, ::2], labels, 8), "mask must be C-contiguous"),
        ((mask, np.empty((5, 4), np.int32), 8), r"labels \(5, 4\) must have mask's shape \(4, 5\)"),
        ((mask, labels, 6), "connectivity must be 4 or 8, got 6"),
        (([[True]], labels, 8), "mask must be a numpy array"),
    ]:
        with pytest.raises(ValueError, match=message):
            _C.label(*args)
    labels.flags.writeable = False
    with pytest.raises(ValueError, match="labels must be writable"):
        _C.label(mask, labels, 8)


def test_centroid_pulls_of_every_part_at_once():
    """``pulls`` (every part of a label array in one pass) against the distance of each union's
    centroid from the centre, part by part."""
    from d2d_ext.morphology import pulls
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, w = rng.integers(2, 20, 2)
        base = rng.random((h, w)) < 0.3
        if not base.any():
            continue
        parts, n = ndimage.label((rng.random((h, w)) < 0.3) & ~base, np.ones((3, 3)))
        centre = (rng.uniform(-2, h + 2), rng.uniform(-2, w + 2))

        def distance(mask):
            ys, xs = np.nonzero(mask)
            return np.hypot(ys.mean() - centre[0], xs.mean() - centre[1])

        got = pulls(base, parts, n, centre)
        assert got.shape == (n + 1,)
        for j in range(1, n + 1):
            assert got[j] == pytest.approx(distance(base | (parts == j)) - distance(base), abs=1e-9)


def _bar_under_a_cloud_lobe(seed: int, sigma: float, rise: float):
    """The flat-topped 5x19 target of :func:`_bar_with_neighbour` with a smooth cloud lobe (a
    Gaussian of spread ``sigma``, half the target's brightness) centred ``rise`` pixels above it:
    the lobe lies above the window's threshold beside the target and fades out. Returns the image,
    the point, the target's and the lobe's pixels (the lobe at a third of its peak or more)."""
    yy, xx = np.mgrid[:128, :128].astype(np.float64)
    bar = (np.abs(yy - 70) <= 2) & (np.abs(xx - 64) <= 9)
    lobe = 0.5 * np.exp(-((yy - 70 + rise) ** 2 + (xx - 62) ** 2) / (2 * sigma ** 2))
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 1, yy.shape), 1.0)
    image = 0.2 + 0.5 * (ndimage.gaussian_filter(bar.astype(float), 0.8) + lobe) + 0.01 * noise / noise.std()
    return image.astype(np.float32), np.array([[64.0, 70.0]]), bar, (lobe > 0.3) & ~bar


@pytest.mark.parametrize("sigma, rise", [(5, 7), (6, 8)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_target_on_a_cloud_lobe_sheds_the_lobe(sigma, rise, seed):
    """A target on the flank of a smooth cloud lobe smaller than the windows: the window's
    component holds target and lobe (the lobe is no plateau, so nothing passes it over), and
    without the skirt rule the mask keeps 45 to 74 of the lobe's 80 to 112 pixels. What a higher
    threshold drops there ends in the lobe's gentle slope, not in an outline, so it is shed."""
    image, point, bar, lobe = _bar_under_a_cloud_lobe(seed, sigma, rise)
    (mask,) = Annotator().annotate([image], [point])
    assert mask[bar].all() and (mask & lobe).sum() <= 0.1 * lobe.sum(), (int(mask.sum()), int((mask & lobe).sum()))
    assert mask.sum() <= 1.25 * bar.sum(), int(mask.sum())
    (kept,) = Annotator(AnnotatorConfig(skirt_ratio=0.0)).annotate([image], [point])
    assert (kept & lobe).sum() >= 0.3 * lobe.sum(), int((kept & lobe).sum())


def test_large_targets_of_synthetic_scenes():
    """Synthetic 384x384 scenes with target areas up to 3000 pixels (``area_range``): the
    targets over 200 pixels reach a mean IoU of 0.55 (0.62 when written), clearly above the fixed
    small windows (0.51)."""
    scenes = [make_scene(np.random.default_rng([11, i]), 384, 384, area_range=(2.0, 3000.0)) for i in range(16)]
    images, points = [s.image for s in scenes], [s.points for s in scenes]
    ious = {}
    for name, ann in [("grown", Annotator()), ("fixed", Annotator(AnnotatorConfig(settle_fraction=0.0, wide_half_sizes=())))]:
        vals = []
        for s, m in zip(scenes, ann.annotate(images, points)):
            comp, _ = ndimage.label(m, np.ones((3, 3)))
            for k in range(1, s.labels.max() + 1):
                t = s.labels == k
                if t.sum() > 200:  # the predicted components that touch the target, against it
                    p = np.isin(comp, np.unique(comp[t & (comp > 0)]))
                    vals.append((p & t).sum() / (p | t).sum())
        ious[name] = float(np.mean(vals))
    assert len(vals) >= 8
    assert ious["grown"] >= 0.55 and ious["grown"] >= ious["fixed"] + 0.08, ious


def test_large_dim_target_under_the_noise_floor_is_measured_whole():
    """A synthetic 1421-pixel target whose body lies under ``k_sigma`` spreads of every small
    window's band, its peak one noisy pixel of that body (extended scene 7 of seed 0, as
    ``annotation_datasets.py`` draws it): the floor let the peak alone through, and the mask was
    8 pixels. The body is measured at the peak-relative threshold now."""
    scene = annotation_datasets.synthetic_scene(0, "extended 512", 7)
    target = scene.labels == 1  # points[0]'s target
    assert target.sum() > 1000
    ious = {}
    for lone in (1, 0):
        (mask,) = Annotator(AnnotatorConfig(lone_peak_pixels=lone)).annotate([scene.image], [scene.points[:1]])
        ious[lone] = float((mask & target).sum() / (mask | target).sum())
    assert ious[1] >= 0.8 and ious[0] <= 0.05, ious


def test_heat_field_is_the_op_applied_to_the_rates():
    """soft_labels runs d2d.diffuse on target_rates: check against the plain-torch reference."""
    scenes = _scenes(2)
    cfg = AnnotatorConfig(level=0.0)
    batch = prepare_targets([s.image for s in scenes], [s.points for s in scenes], cfg).to(torch.float64)
    theta = DiffusionParams()()
    theta = {k: v.detach() for k, v in theta.items()}
    theta_no_sp = dict(theta, rho=torch.tensor(1.0, dtype=torch.float64))
    soft = soft_labels(batch, theta_no_sp)  # rho = 1: the normalised heat alone
    from d2d_ext.annotate import target_rates

    rates = target_rates(batch, theta_no_sp)
    T, S = len(batch), batch.contrast.shape[-1]
    for t in range(T):
        u0 = torch.zeros(1, S, S, dtype=torch.float64)
        u0[0, batch.peak[t, 0], batch.peak[t, 1]] = 1
        u = diffuse_reference(u0, rates[t:t + 1], 1.0, int(batch.steps[t]))[0]
        torch.testing.assert_close(soft[t], u / u.max(), rtol=1e-9, atol=1e-12)
    # mass stays inside each target's field window (zero-flux at the window's edge)
    assert rates[~batch.inside.unsqueeze(1).expand_as(rates)].abs().max() == 0
    assert (rates.sum(1).amax(dim=(1, 2)) <= 0.9 + 1e-9).all()


def test_each_step_count_diffuses_on_its_own_central_crop():
    """A batch of point targets and one extended target: the point targets' step group diffuses
    on a crop far smaller than the batch's, with the same fields as on the whole crop (the heat
    never leaves a field window), and the fields are zero outside every field window."""
    image, _, point = _extended_target("disc", 30, 0)
    scenes = _scenes(2)
    batch = prepare_targets([image] + [s.image for s in scenes], [point] + [s.points for s in scenes]).to(torch.float64)
    theta = {k: v.detach() for k, v in DiffusionParams()().items()}
    from d2d_ext.annotate import fuse_prior, target_rates
    from d2d_ext.diffusion import diffuse

    S = batch.contrast.shape[-1]
    small = batch.steps == batch.steps.min()
    assert small.sum() >= 3 and 2 * batch.half[small].max() + 1 < S / 2  # the crop really shrinks
    soft = soft_labels(batch, theta)
    rates = target_rates(batch, theta)  # on the whole crop
    for k in np.unique(batch.steps):
        sel = np.flatnonzero(batch.steps == k)
        u0 = torch.zeros(len(sel), S, S, dtype=torch.float64)
        u0[torch.arange(len(sel)), torch.from_numpy(batch.peak[sel, 0]), torch.from_numpy(batch.peak[sel, 1])] = 1
        whole = diffuse(u0, rates[sel], 1.0, int(k))
        sub = batch.central(sel, S // 2)
        torch.testing.assert_close(soft[sel], fuse_prior(whole, sub, theta["rho"]), rtol=1e-10, atol=1e-13)
    assert soft[~batch.inside].abs().max() == 0
    with pytest.raises(ValueError, match="half-size"):
        batch.central(np.arange(1), S)


def test_a_field_without_gradient_comes_from_a_large_source_and_equals_the_unit_ones():
    """Without a gradient the heat starts at ``HEAT_SOURCE`` (2^126) instead of 1, so that the
    heat far across a window's edges stays a normal float32 number (subnormal arithmetic runs many
    times slower): the normalised field is the unit source's to the bit wherever that one is above
    1e-30, and differs by less than 1e-40 where it falls near or below float32's smallest normal
    number, which keeps more of the value (extended synthetic scenes, whose large windows carry
    heat down that far under a conductance three times as sensitive to edges as the default's)."""
    scenes = [annotation_datasets.synthetic_scene(1, "extended 512", i) for i in range(6)]
    batch = prepare_targets([s.image for s in scenes], [s.points for s in scenes])
    theta = DiffusionParams(beta=6.0)()
    with torch.no_grad():
        scaled = soft_labels(batch, theta)
    unit = soft_labels(batch, theta).detach()  # theta requires its gradient: a unit source
    above = unit >= 1e-30
    assert torch.equal(scaled[above], unit[above])
    assert (scaled - unit).abs().max() < 1e-40
    assert not torch.equal(scaled, unit)  # the large source ran: it kept heat the unit one lost
    assert annotate_module.HEAT_SOURCE * 2 < torch.finfo(torch.float32).max  # all the heat, anywhere


def test_default_beta_spreads_heat_through_its_targets():
    """The soft labels of the default conductance (``beta`` 2) cover their targets better than
    those of the reference code's ``beta`` 6, which reads the gradient of the intensities where
    ours reads that of the contrast: on synthetic scenes their pooled soft IoU, what a trainer on
    them maximises, is higher (the masks read them only where a bright region leaks)."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        s = annotation_datasets.scene_set("scenes", [make_scene(rng, 128, 128, "mixed") for _ in range(4)])
        ours = annotation_datasets.soft_score(s, Annotator())
        reference = annotation_datasets.soft_score(s, Annotator(params=DiffusionParams(beta=6.0)))
        assert ours.soft_iou > reference.soft_iou, (seed, ours, reference)


def test_soft_labels_are_differentiable_in_theta():
    scenes = _scenes(2, seed=5)
    cfg = AnnotatorConfig()
    batch = prepare_targets([s.image for s in scenes], [s.points for s in scenes], cfg).to(torch.float64)
    params = DiffusionParams().double()
    weight = torch.rand(len(batch), *batch.contrast.shape[1:], dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    raw = (torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.3).requires_grad_()

    def f(r):
        return (soft_labels(batch, params(r)) * weight).sum()

    assert torch.autograd.gradcheck(f, (raw,), eps=1e-6, atol=1e-5, rtol=1e-4)
    grad, = torch.autograd.grad(f(raw), raw)
    assert (grad.abs() > 0).all()  # every parameter moves the label


def test_local_entropy_matches_a_direct_count():
    rng = np.random.default_rng(0)
    values = rng.random((9, 11))
    ent = local_entropy(values, bins=4, size=3)
    q = np.minimum((values - values.min()) / (values.max() - values.min()) * 4, 3).astype(int)
    for y in range(9):
        for x in range(11):
            nb = q[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].ravel()
            p = np.bincount(nb, minlength=4) / nb.size
            p = p[p > 0]
            assert ent[y, x] == pytest.approx(-(p * np.log2(p)).sum(), abs=1e-6)


def test_target_steps_grow_with_size():
    cfg = AnnotatorConfig(steps=64, steps_extent=12, steps_max=1024)
    assert target_steps(1, cfg) == 64 and target_steps(12, cfg) == 64
    assert target_steps(13, cfg) == 128 and target_steps(24, cfg) == 256
    assert target_steps(1000, cfg) == 1024


def test_ground_truth_is_never_read(tmp_path):
    """Changing or deleting every mask changes no pseudo-label."""
    from d2d_ext.jobs import annotate_dataset

    root = write_dataset(tmp_path / "SYN", n_images=6, seed=2)
    first = annotate_dataset(root, "all", "centroid", tmp_path / "a", progress=False)
    for path in (root / "masks").iterdir():  # scramble every mask ...
        arr = np.zeros((256, 256), np.uint8)
        arr[::7, ::5] = 255
        from d2d_ext.files import write_png_atomic

        write_png_atomic(path, arr)
    second = annotate_dataset(root, "all", "centroid", tmp_path / "b", progress=False)
    shutil.rmtree(root / "masks")  # ... then delete them
    third = annotate_dataset(root, "all", "centroid", tmp_path / "c", progress=False)
    assert first["targets"] == second["targets"] == third["targets"] > 0
    for name in sorted(p.name for p in (tmp_path / "a").glob("*.png")):
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


@needs_sirst
@pytest.mark.slow
def test_sirst_v1_goal_with_human_points():
    """All 427 SIRST-v1 images, human points: IoU >= 75 and Pd >= 97 (the quality goal)."""
    ds = IRDataset(SIRST)
    ids = ds.ids("all")
    ann = Annotator()
    metrics = ISTDMetrics()
    for start in range(0, len(ids), 32):
        chunk = ids[start:start + 32]
        masks = ann.annotate([ds.load_image(i) for i in chunk], [ds.points(i, "centroid") for i in chunk])
        for i, m in zip(chunk, masks):
            metrics.update(m, ds.load_mask(i))
    result = metrics.compute()
    assert result["targets"] == 533
    assert result["iou"] >= 75.0, result
    assert result["pd"] >= 97.0, result


DATA = SIRST.parent
needs_nudt = pytest.mark.skipif(not (DATA / "NUDT-SIRST/images").is_dir(), reason=f"NUDT-SIRST not found at {DATA}")
needs_mdfa = pytest.mark.skipif(not (DATA / "MDFA/images").is_dir(), reason=f"MDFA not found at {DATA}")


@pytest.mark.parametrize("name, ids", [
    pytest.param("NUDT-SIRST", ["000621", "000306", "000911", "000274"], marks=needs_nudt),
    pytest.param("MDFA", ["train_009290", "train_005219", "train_004506", "train_002655"], marks=needs_mdfa),
])
def test_real_targets_beside_buildings_and_clouds_keep_small_masks(name, ids):
    """Real images where a target's mask took a whole building, cloud or sky gradient (2,600 to
    13,000 pixels against targets of 5 to 160), and NUDT-SIRST 000274, a target on a roof found
    at a raised fraction, the roof held whole by a wide window at a lower one (a mask of 553
    pixels for 71, were that window to stand in for every component found at a raised
    fraction): every mask stays near its targets' size."""
    ds = IRDataset(DATA / name)
    images = [ds.load_image(i) for i in ids]
    masks = Annotator().annotate(images, [ds.points(i, "centroid") for i in ids])
    for i, m in zip(ids, masks):
        gt = ds.load_mask(i)
        assert m.sum() <= 3 * gt.sum() + 60, (i, int(m.sum()), int(gt.sum()))


def _mdfa_in_its_mosaic(iid: str, gap: int = 0) -> tuple:
    """MDFA ``iid`` tiled with the 15 images beside it in its split into a 4 x 4 frame
    (``annotation_datasets.py --mosaic 4 --mosaic-gap GAP``), annotated as one frame: ``(mask, gt)``,
    the mask of the image's tile and its ground truth."""
    ds = IRDataset(DATA / "MDFA")
    ids = ds.ids("train")
    start = ids.index(iid) // 16 * 16
    tiles = ids[start:start + 16]
    s = annotation_datasets.EvalSet("t", tiles, [ds.load_image(i) for i in tiles],
                                    [ds.points(i, "centroid") for i in tiles], [ds.load_mask(i) for i in tiles])
    frame = annotation_datasets.mosaic_set(s, 4, gap)
    (mask,) = Annotator().annotate(frame.images, frame.points)
    gt = ds.load_mask(iid)
    (h, w), k = gt.shape, tiles.index(iid)
    cell_h, cell_w = (side // 4 for side in frame.images[0].shape)  # 4 x 4 cells, each the largest image and its gap
    y0, x0 = (k // 4) * cell_h + gap, (k % 4) * cell_w + gap
    return mask[y0:y0 + h, x0:x0 + w], gt


@needs_mdfa
def test_real_target_at_a_saturated_clouds_rim_in_a_large_frame_is_not_given_the_cloud():
    """MDFA train_004592 (a 34-pixel target at the rim of a saturated cloud that runs off the
    128 x 128 image) tiled with the 15 images beside it in its split into a 512 x 512 frame
    (``annotation_datasets.py --mosaic 4``): the cloud ends inside the widest window there, and
    that window's component (761 pixels) stood in for the target, a mask of 800 pixels. The peak
    sits on the cloud's clipped plateau, and the mask stays near the target, as it is in the image
    alone."""
    tile, gt = _mdfa_in_its_mosaic("train_004592")
    assert gt.sum() == 34 and (tile & gt).any() and tile.sum() <= 3 * gt.sum(), int(tile.sum())


@needs_mdfa
@pytest.mark.parametrize("iid, target", [("train_009290", 155), ("train_008972", 162)])
def test_real_target_on_a_bright_sky_in_a_large_frame_is_not_given_the_sky(iid, target, monkeypatch):
    """MDFA targets on a bright sky or cloud that runs off the 128 x 128 image, tiled into a frame
    with the images 4 px apart (``annotation_datasets.py --mosaic 4 --mosaic-gap 4``), so that the
    sky ends inside the widest window. The sky's level falls off too slowly around the target for
    any band to read as settled; windows of 10 to 20 hold the target apart (components of 84 to
    183 pixels, each the same in the next window), then the windows leak into the sky, and the
    widest held it whole: masks of 7,213 and 4,694 pixels. A target that has stood apart grows into no
    component more than ``APART_GROWTH`` times the one that held it apart, and the mask stays near
    the target; without that bound the sky comes back."""
    tile, gt = _mdfa_in_its_mosaic(iid, gap=4)
    assert gt.sum() == target
    assert tile.sum() <= 2 * gt.sum() and (tile & gt).sum() >= 0.5 * gt.sum(), int(tile.sum())
    monkeypatch.setattr(windows, "APART_GROWTH", float("inf"))
    sky, _ = _mdfa_in_its_mosaic(iid, gap=4)
    assert sky.sum() > 4000


@needs_nudt
@pytest.mark.parametrize("spread, size", [("blur", 0.7), ("blur", 1.0), ("smear", 5)])
def test_real_target_blurred_into_a_building_does_not_take_it(spread, size):
    """NUDT-SIRST 000108 blurred by a Gaussian of 0.7 or 1 pixel, as softer optics would see it,
    or averaged over 5 pixels along its rows, as a sensor that panned while it integrated would:
    a 16-pixel target at the corner of a building as bright as itself, the gap between them
    filled in. Every window of ``half_sizes`` leaked, the largest as a long body through the
    point, and the widest window's component (the building and the city around it, elongated)
    stood in as a long thin target: a mask of 4,637, 4,737 or 4,728 pixels. That component holds
    a second structure as bright as the peak (the building's top, apart from the target's), which
    a wide window standing in for the target may not, and the mask stays near the target.
    Smeared, the first window's noise bar (target and building edges fill it) joined the two at
    the level where they are told apart; the wide window's quieter bar keeps them apart."""
    ds = IRDataset(DATA / "NUDT-SIRST")
    image = _spread(ds.load_image("000108"), spread, size)
    gt = ds.load_mask("000108")
    assert gt.sum() == 16
    (mask,) = Annotator().annotate([image], [ds.points("000108", "centroid")])
    assert mask.sum() <= 3 * gt.sum() + 10 and (mask & gt).sum() >= 0.5 * gt.sum(), int(mask.sum())


def _as_set(image: np.ndarray, mask: np.ndarray | None = None):
    """One image (and its mask, or none) as a set of ``annotation_datasets``, whose probes
    transform sets."""
    return annotation_datasets.EvalSet("t", ["t"], [image], [np.zeros((0, 2))],
                                       [np.zeros(image.shape, bool) if mask is None else mask])


def _without_clipped_test(monkeypatch) -> None:
    """Lifts the clipped-plateau test: the frame's top (:class:`~d2d_ext.windows.FrameTop`) read
    as infinite, above every pixel, so that nothing reads as clipped."""
    monkeypatch.setattr(windows.FrameTop, "value", property(lambda self: float("inf")))


@needs_sirst
def test_real_target_on_an_equalized_cloud_does_not_grow_into_it():
    """SIRST-v1 Misc_278 written through a global histogram equalization to 8 bits, as a camera's
    automatic gain control writes its frames (``annotation_datasets.py --equalize global``): a
    12-pixel target at 0.99 beside cloud lobes the map lifted to 0.94. The map stretches the
    cloud's grey levels, so the first window that holds the target (21 x 21, filled by the cloud)
    reads a pixel noise of eight grey levels: its peak clears neither its band's spread nor that
    noise, and the window grows, as a noise bump on a flat top does. Its noise bar (a quarter of
    the range) joined target and cloud lobes at the level where they are told apart, and a wide
    window's component, the cloud, was taken: a mask of 2,276 pixels. Read on the quieter
    of the two windows, the bar keeps the lobes apart as a second structure as bright as the
    peak, and the mask stays at the target."""
    ds = IRDataset(SIRST)
    one = _as_set(ds.load_image("Misc_278"))
    annotation_datasets.equalize_images(one, "global")
    gt = ds.load_mask("Misc_278")
    assert gt.sum() == 12
    (mask,) = Annotator().annotate(one.images, [ds.points("Misc_278", "centroid")])
    assert mask.sum() <= 3 * gt.sum() + 10 and (mask & gt).sum() >= 0.5 * gt.sum(), int(mask.sum())


def _probed(name: str, iid: str, how: str):
    """Image ``iid`` of dataset ``name`` as ``annotation_datasets.py`` probes it (``how``: ``"zoom"``
    for ``--zoom 2``, ``"smear"`` for ``--smear 5``, ``"blur"`` for ``--blur 1``, ``"jpeg<Q>"`` for
    ``--jpeg Q``, ``"global"`` / ``"local"`` for ``--equalize``): ``(image, points, gt)``."""
    ds = IRDataset(DATA / name)
    image, points, gt = ds.load_image(iid), ds.points(iid, "centroid"), ds.load_mask(iid)
    if how == "zoom":  # the points at the zoomed mask's centroids
        finer = annotation_datasets.zoom_set(_as_set(image, gt), 2)
        return finer.images[0], finer.points[0], finer.masks[0]
    if how in ("smear", "blur"):
        return _spread(image, how, 5 if how == "smear" else 1), points, gt
    if how.startswith("jpeg"):
        one = _as_set(image)
        annotation_datasets.jpeg_round_trip(one, int(how[4:]))
        return one.images[0], points, gt
    one = _as_set(image)
    annotation_datasets.equalize_images(one, how)
    return one.images[0], points, gt


@pytest.mark.parametrize("name, iid, how, target", [
    pytest.param("NUDT-SIRST", "001094", "local", 66, marks=needs_nudt),
    pytest.param("NUDT-SIRST", "000953", "zoom", 344, marks=needs_nudt),
    pytest.param("SIRST-v1", "Misc_289", "global", 13, marks=needs_sirst),
    pytest.param("MDFA", "train_002626", "smear", 12, marks=needs_mdfa),
])
def test_real_target_on_a_ridge_is_not_given_a_ridge_that_bends_away(name, iid, how, target, monkeypatch):
    """Real targets on cloud ridges and bright clutter, as a display map (CLAHE, or a global
    histogram equalization), a sensor of finer pixels (2x) or a panning one (5 px along the
    rows) shows them: every small window leaked at every fraction, and a wide window's component
    stood in, the ridge or clutter the point lies on followed around its bends (masks of 1,094 to
    4,203 pixels). The straight lines from the peak reach under 60% of such a component, where a
    target's image, convex above each level, leaves none of itself out of their reach: it does
    not stand in, and the mask stays near the target; without the test (and the clipped-plateau
    test, which the smeared one fails too) the ridge comes back."""
    image, points, gt = _probed(name, iid, how)
    assert gt.sum() == target
    (mask,) = Annotator().annotate([image], [points])
    assert mask.sum() <= 5 * gt.sum() + 10 and (mask & gt).any(), int(mask.sum())
    monkeypatch.setattr(windows, "STAR_SHARE", 0.0)
    _without_clipped_test(monkeypatch)
    (ridge,) = Annotator().annotate([image], [points])
    assert ridge.sum() > 10 * gt.sum()


@pytest.mark.parametrize("name, iid, how, target", [
    pytest.param("MDFA", "train_002626", "blur", 12, marks=needs_mdfa),
    pytest.param("MDFA", "train_002626", "jpeg50", 12, marks=needs_mdfa),
    pytest.param("NUDT-SIRST", "000136", "global", 38, marks=needs_nudt),
])
def test_real_target_in_a_region_the_sensors_range_cut_is_not_given_the_region(name, iid, how, target,
                                                                                monkeypatch):
    """Real targets in bright regions whose brightest part lies at the frame's largest value, as
    softer optics (a Gaussian of 1 pixel), a JPEG file (quality 50, which moved most of the
    saturated region to the grey level below the top and left the frame's pixel noise at zero) or
    a display map (a global histogram equalization) show them: a wide window's component, or a
    larger window the growth reached, held the region (masks of 2,534 to 3,121 pixels) and a
    clipped plateau: the top of what it holds is not the target's. It is not taken; without the
    clipped-plateau test the region comes back."""
    image, points, gt = _probed(name, iid, how)
    assert gt.sum() == target
    (mask,) = Annotator().annotate([image], [points])
    assert mask.sum() <= 8 * gt.sum() and (mask & gt).any(), int(mask.sum())
    _without_clipped_test(monkeypatch)
    (region,) = Annotator().annotate([image], [points])
    assert region.sum() > 15 * gt.sum()


@needs_mdfa
@pytest.mark.parametrize("iid, how, target", [("train_004592", "blur", 34), ("train_000798", "coarser", 12)])
def test_real_target_at_the_rim_of_a_saturated_sky_is_not_given_the_sky(iid, how, target, monkeypatch):
    """MDFA targets at the rim of a saturated sky, through softer optics (a Gaussian of 0.5
    pixel) or pixels 2x coarser (``annotation_datasets.py --blur 0.5``, ``--shrink 2``): a window
    of ``half_sizes`` beyond the first held the sky's clipped top (masks of 468 and 316 pixels),
    the peak at its edge. Not the target's top (``CLIP_CENTRE``): the mask stays at the target,
    and with the test lifted the sky comes back."""
    ds = IRDataset(DATA / "MDFA")
    image, points, gt = ds.load_image(iid), ds.points(iid, "centroid"), ds.load_mask(iid)
    if how == "blur":
        image = _spread(image, "blur", 0.5)
    else:
        image, gt, points = _coarser(image, gt)
    assert gt.sum() == target
    (mask,) = Annotator().annotate([image], [points])
    assert (mask & gt).any() and mask.sum() <= 2 * gt.sum() + 10, int(mask.sum())
    monkeypatch.setattr(windows, "CLIP_CENTRE", float("inf"))
    (sky,) = Annotator().annotate([image], [points])
    assert sky.sum() > 8 * gt.sum()


@needs_mdfa
def test_real_target_in_a_saturated_corner_framed_by_noisy_bars_is_not_given_the_corner(monkeypatch):
    """MDFA train_005241 (a 17-pixel target inside a saturated region in its image's corner) with
    noisy dark bars around it, as a frame captured from a camera's video output carries them
    (``annotation_datasets.py --pad 32 --pad-noise 0.01``): the bars are no padding of one value,
    so the region ends inside the frame, and the growth from the target's noise bump took it
    whole (3,724 pixels). The peak lies at the rim of the region's clipped plateau: the mask
    stays at the target, and with the test lifted the region comes back."""
    ds = IRDataset(DATA / "MDFA")
    iid = "train_005241"
    one = annotation_datasets.EvalSet("t", [iid], [ds.load_image(iid)], [ds.points(iid, "centroid")],
                                      [ds.load_mask(iid)])
    framed = annotation_datasets.pad_set(one, 32, noise=0.01)
    image, points, gt = framed.images[0], framed.points[0], framed.masks[0]
    assert gt.sum() == 17
    (mask,) = Annotator().annotate([image], [points])
    assert (mask & gt).any() and mask.sum() <= 3 * gt.sum(), int(mask.sum())
    monkeypatch.setattr(windows, "CLIP_CENTRE", float("inf"))
    (region,) = Annotator().annotate([image], [points])
    assert region.sum() > 100 * gt.sum()


@needs_mdfa
def test_real_target_in_a_bright_sky_set_apart_is_not_given_the_sky(monkeypatch):
    """MDFA's train_005217 to train_005333 as one frame of 4 x 4 images, 4 pixels of each image's
    median apart (``annotation_datasets.py --mosaic 4 --mosaic-gap 4``): a 5-pixel target one grey
    level above the bright sky it lies in (train_005219), whose far part sits at the sensor's full
    scale. In its own 128x128 image the sky runs off the edge and no wide window may hold it; set
    apart it ends inside the widest window, whose component was the sky (7,029 pixels). A
    clipped plateau apart from the peak is the top of something other than the target: the sky
    does not stand in, and the growth from the peak's noise bump does not take it either."""
    ds = IRDataset(DATA / "MDFA")
    ids = ds.ids("train")
    tile = ids[ids.index("train_005217"):][:16]
    s = annotation_datasets.EvalSet("t", tile, [ds.load_image(i) for i in tile],
                                    [ds.points(i, "centroid") for i in tile], [ds.load_mask(i) for i in tile])
    frame = annotation_datasets.mosaic_set(s, 4, gap=4)
    image, points, gt = frame.images[0], frame.points[0], frame.masks[0]
    labels, _ = ndimage.label(gt, np.ones((3, 3)))
    target = labels == labels[118, 215]
    assert target.sum() == 5

    def own_mask() -> np.ndarray:
        (mask,) = Annotator().annotate([image], [points])
        parts, _ = ndimage.label(mask, np.ones((3, 3)))
        return parts == parts[118, 215] if parts[118, 215] else np.zeros_like(mask)

    mask = own_mask()
    assert (mask & target).any() and mask.sum() <= 40, int(mask.sum())
    _without_clipped_test(monkeypatch)
    assert own_mask().sum() > 5000


@pytest.mark.parametrize("seed", [4, 7])
def test_point_in_a_bright_sky_whose_far_part_is_clipped_is_not_given_the_sky(seed, monkeypatch):
    """A synthetic frame: a textured sky (a disc of 7,213 pixels, 8-bit) over dark clutter,
    brightening to one side, where the frame's top (its brightest few hundred pixels) lies; a
    one-pixel target a grey level above the sky on the other side. Every small window leaks into
    the sky's texture, and the sky, clear of the image's edges, stood in whole. A clipped plateau
    apart from the peak is the top of something other than the target: the sky is not taken (the
    mask stays within 8 pixels of the point); without the test it comes back."""
    rng = np.random.default_rng(seed)
    n = 200
    yy, xx = np.mgrid[:n, :n].astype(np.float64)
    clutter = ndimage.gaussian_filter(rng.normal(0, 1, (n, n)), 2)
    image = 0.2 + 0.06 * clutter / clutter.std() + rng.normal(0, 0.01, (n, n))
    c, r = n / 2, 48
    sky = (yy - c) ** 2 + (xx - c) ** 2 <= r * r
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (n, n)), 1.5)
    image[sky] = (0.965 + 0.045 * ((c - yy) + (c - xx)) / (2 * r) + 0.006 * texture / texture.std())[sky]
    ty, tx = int(c + 0.45 * r), int(c + 0.3 * r)
    image[ty, tx] = image[ty - 1:ty + 2, tx - 1:tx + 2].max() + 0.004
    image = np.float32(np.round(np.clip(image, 0, 1) * 255) / 255)
    point = np.array([[float(tx), float(ty)]])
    (mask,) = Annotator().annotate([image], [point])
    ys, xs = np.nonzero(mask)
    assert mask[ty, tx] and mask.sum() <= 50 and np.abs(ys - ty).max() <= 8 and np.abs(xs - tx).max() <= 8
    _without_clipped_test(monkeypatch)
    (whole,) = Annotator().annotate([image], [point])
    assert whole.sum() >= 0.9 * sky.sum()


def test_frame_top_is_read_once_per_frame(monkeypatch):
    """The clipped-plateau level reads the frame's largest value; a frame's targets share one
    read of it (:class:`~d2d_ext.windows.FrameTop`), however many of their searches ask, and each
    search finds the same component as one that reads the value itself."""
    scene = annotation_datasets.synthetic_scene(0, "extended 512", 3)  # two of its targets' searches ask
    points = scene.points
    reads = []
    nanmax = np.nanmax
    monkeypatch.setattr(windows.np, "nanmax", lambda a, *args, **kw: reads.append(a.shape) or nanmax(a, *args, **kw))
    alone = [windows.strict_component(scene.image, *windows.find_peak(scene.image, x, y, AnnotatorConfig()),
                                      AnnotatorConfig()) for x, y in points]
    assert reads.count(scene.image.shape) >= 2
    reads.clear()
    top = windows.FrameTop(scene.image)
    shared = [windows.strict_component(scene.image, *windows.find_peak(scene.image, x, y, AnnotatorConfig()),
                                       AnnotatorConfig(), top=top) for x, y in points]
    assert reads.count(scene.image.shape) == 1
    for a, b in zip(alone, shared):
        assert a.box == b.box and np.array_equal(a.comp, b.comp) and a.bg == b.bg
    reads.clear()
    Annotator().annotate([scene.image], [points])
    assert reads.count(scene.image.shape) == 1


def _spread(image: np.ndarray, how: str, size) -> np.ndarray:
    """``image`` blurred by a Gaussian of ``size`` pixels (``how="blur"``) or averaged over ``size``
    pixels along its rows (``"smear"``), as ``annotation_datasets.py --blur`` / ``--smear`` do."""
    one = _as_set(image)
    (annotation_datasets.blur_images if how == "blur" else annotation_datasets.smear_images)(one, size)
    return one.images[0]


def _coarser(image: np.ndarray, mask: np.ndarray) -> tuple:
    """``(image, mask, points)`` sampled twice coarser, as ``annotation_datasets.py --shrink 2``
    samples them (:func:`shrink_set`: block means, a coarse pixel target where half its block is,
    the coarse targets' centroid points)."""
    coarse = annotation_datasets.shrink_set(_as_set(image, mask), 2)
    return coarse.images[0], coarse.masks[0], coarse.points[0]


@pytest.mark.parametrize("seed, index, area", [(1, 39, 2), (0, 7, 10)])
def test_small_target_in_clutter_sampled_coarser_does_not_take_it(seed, index, area):
    """Synthetic scenes of ``annotation_datasets.py`` sampled twice coarser, where the gap between
    a small target and the textured clutter beside it closes: every small window leaked into the
    clutter and a window whose band lay beyond it took target and clutter (a target of 2 pixels
    got 85, one of 10 got 97). That window's component holds a second structure as bright as the
    peak beyond the first window, so it counts as leaked, and the target keeps a mask of its
    size."""
    scene = annotation_datasets.synthetic_scene(seed, "SIRST-like 256", index)
    image, truth, points = _coarser(scene.image, scene.mask)
    (mask,) = Annotator().annotate([image], [points])
    sizes = [size for a, size, _, _ in annotation_datasets.target_errors(mask, truth) if a == area]
    assert sizes and all(size <= 3 * area + 5 for size in sizes), sizes


@pytest.mark.parametrize("how, index", [("levels", 7), ("noise", 17)])
def test_extended_target_grows_from_a_noise_bump_of_its_top(how, index):
    """Extended synthetic scenes of ``annotation_datasets.py`` (seed 0) rounded to 64 grey levels
    (scene 7, a target of 1,421 pixels) or with white noise of twice their pixel noise added
    (scene 17, 1,442 pixels; the noise drawn as the benchmark draws it for that scene). The point
    lies on the target's top, whose brightest pixel near it is a bump of the noise (or a step of
    the levels): the first window holds the bump, and the next window's band, still on the top,
    lies less than a fifth of the bump's height below its own: the growth stopped there, a mask
    of 76 or 34 pixels. Measured from the mean of the bump's 3 x 3 neighbourhood (the top's
    level), the band has not settled, and the growth reaches the target's edge."""
    scenes = [annotation_datasets.synthetic_scene(0, "extended 512", i) for i in range(index + 1)]
    s = annotation_datasets.scene_set("t", scenes)
    if how == "levels":
        annotation_datasets.quantize_images(s, 64)
    else:
        annotation_datasets.add_sensor_noise(s, white=2.0)
    (mask,) = Annotator().annotate([s.images[index]], [s.points[index]])
    targets, _ = ndimage.label(s.masks[index], np.ones((3, 3)))
    target = targets == np.argmax(np.bincount(targets.ravel())[1:]) + 1
    assert target.sum() > 1400
    assert (mask & target).sum() >= 0.7 * target.sum() and mask.sum() <= 1.1 * target.sum(), int(mask.sum())


def test_small_spike_on_a_blurred_cloud_does_not_grow_into_it():
    """Synthetic SIRST-like scene 53 of ``annotation_datasets.py`` (seed 0) blurred by a Gaussian
    of 1 pixel: a 5-pixel target on a textured cloud. The first window that held it alone (3
    pixels, half-size 16) lay on the cloud, and the growth passed over the windows that leaked or
    failed its tests up to the largest, whose band lies off the cloud and which no larger window
    tests for stability: a mask of 7,097 pixels. A component that stays at its peak is no hull's
    top (``HULL_REACH``), so the growth does not reach the largest window from it."""
    scene = annotation_datasets.synthetic_scene(0, "SIRST-like 256", 53)
    image = _spread(scene.image, "blur", 1.0)
    assert scene.mask.sum() == 5
    (mask,) = Annotator().annotate([image], [scene.points])
    assert mask.sum() <= 40 and (mask & scene.mask).sum() >= 4, int(mask.sum())


@pytest.mark.parametrize("name, iid", [pytest.param("MDFA", "train_008060", marks=needs_mdfa),
                                       pytest.param("NUDT-SIRST", "000354", marks=needs_nudt)])
def test_real_target_beside_clutter_sampled_coarser_does_not_take_it(name, iid):
    """MDFA train_008060 and NUDT-SIRST 000354 sampled twice coarser: targets of one pixel beside a
    smooth blob and at the corner of a building, each as bright as the target, once the gap
    between them closes (masks with 512 and 132 wrong pixels). The windows that hold target and
    clutter count as leaked (a second structure as bright as the peak beyond the first window),
    and each mask stays near its target."""
    ds = IRDataset(DATA / name)
    image, truth, points = _coarser(ds.load_image(iid), ds.load_mask(iid))
    (mask,) = Annotator().annotate([image], [points])
    assert (mask ^ truth).sum() <= 3 * truth.sum() + 10, (int(mask.sum()), int(truth.sum()))
    assert (mask & truth).any()


@needs_nudt
def test_real_click_on_one_lobe_keeps_the_whole_target():
    """NUDT-SIRST 000580: a target of 58 pixels with three lobes as bright as each other, clicked
    on one of them (the LESPS coarse point there, off the centroid). Its first window leaks into
    the other lobes, and the next window's component holds the whole target with the other lobes
    as parts as bright as the peak: they lie inside the first window, lobes of the target, not a
    second structure, and the target is kept whole (a mask of 11 pixels were they counted)."""
    ds = IRDataset(DATA / "NUDT-SIRST")
    image, gt = ds.load_image("000580"), ds.load_mask("000580")
    labels, _ = ndimage.label(gt, np.ones((3, 3)))
    target = labels == labels[13, 90]
    assert target.sum() == 58
    (mask,) = Annotator().annotate([image], [np.array([[90.0, 13.0]])])
    assert (mask & target).sum() >= 0.9 * target.sum() and mask.sum() <= 1.5 * target.sum(), int(mask.sum())


@needs_nudt
def test_real_target_above_ground_cut_by_a_crop_does_not_take_the_ground():
    """A 64x64 crop of NUDT-SIRST 001015 (rows 126 to 189, columns 161 to 224, as a dataset cut
    from larger frames has it): a 68-pixel target just above a bright field that runs off the
    crop's bottom-left corner, half the target's brightness. A window whose sides lay on the
    crop's edges took the field: a mask of 564 pixels."""
    ds = IRDataset(DATA / "NUDT-SIRST")
    image = ds.load_image("001015")[126:190, 161:225]
    gt = ds.load_mask("001015")[126:190, 161:225]
    (mask,) = Annotator().annotate([image], [np.array([[21.0, 47.0]])])
    assert mask.sum() <= 3 * gt.sum() + 60 and (mask & gt).sum() >= 0.8 * gt.sum(), (int(mask.sum()), int(gt.sum()))


@needs_sirst
def test_real_close_targets_keep_a_component_each():
    """SIRST-v1 Misc_247 and Misc_307: two targets a few pixels apart whose masks bridged the
    saddle between them (one component of 69 and of 23 pixels: a target lost to Pd). Each now has
    its own component, which holds nearly all of its target (Misc_247's windows that hold both
    targets count as leaked, the other target a second structure as bright as the peak: its
    masks keep off the dim rim between the two and miss 2 of their 40 pixels)."""
    ds = IRDataset(SIRST)
    for iid in ("Misc_247", "Misc_307"):
        image, gt = ds.load_image(iid), ds.load_mask(iid)
        (mask,) = Annotator().annotate([image], [ds.points(iid, "centroid")])
        assert ndimage.label(mask, np.ones((3, 3)))[1] == 2, iid
        assert (mask & gt).sum() >= 0.9 * gt.sum(), iid
        n_targets, matched, _ = match_targets(mask, gt)
        assert matched == n_targets == 2, iid


@needs_nudt
def test_real_target_on_a_block_found_at_a_raised_fraction_does_not_grow_into_it(monkeypatch):
    """NUDT-SIRST 000123: a 17-pixel target on a bright block that brightens just below it,
    clicked two pixels right of its centroid point. Every window leaked into the block up
    to fraction 0.6; at 0.7 a 20-pixel component stood alone, and the window grew into the
    half-32 one, whose background lies off the block: a mask of 905 pixels. Its peak stands 16
    pixel-noise deviations above its band, a target on the block, so it no longer grows."""
    ds = IRDataset(DATA / "NUDT-SIRST")
    image, gt = ds.load_image("000123"), ds.load_mask("000123")
    point = np.array([[69.0, 182.0]])
    labels, _ = ndimage.label(gt, np.ones((3, 3)))
    target = labels == labels[182, 67]
    assert 10 <= target.sum() <= 25
    (mask,) = Annotator().annotate([image], [point])
    assert mask.sum() <= 3 * target.sum() + 10 and (mask & target).sum() >= 0.5 * target.sum(), int(mask.sum())
    monkeypatch.setattr(windows, "NOISE_BUMP", 1e6)
    (grown,) = Annotator().annotate([image], [point])
    assert grown.sum() > 500


@needs_nudt
def test_real_target_pressed_against_a_cloud_at_twice_the_sampling_does_not_take_it():
    """NUDT-SIRST 001064 upsampled twice (bilinear, as a sensor of finer pixels would see it): an
    aircraft of 300 pixels pressed against a long cloud as bright as itself. Every window of
    ``half_sizes`` leaked at every fraction; the first lies inside the aircraft, so the wide
    window's cloud-and-aircraft component (elongated) crossed its band on opposite sides and
    stood in as a long thin target: a mask of 4,221 pixels. Read on the largest band that lies on
    the bright region, the crossing is one-sided, and the mask stays small."""
    ds = IRDataset(DATA / "NUDT-SIRST")
    image, gt = ds.load_image("001064"), ds.load_mask("001064")
    fine = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], scale_factor=2, mode="bilinear",
                                           align_corners=False)[0, 0].numpy()
    truth = np.kron(gt, np.ones((2, 2), dtype=bool))
    (mask,) = Annotator().annotate([fine], [np.array([[365.0, 71.0]])])
    assert truth.sum() == 300 and mask.sum() <= truth.sum(), int(mask.sum())
    assert (mask & truth).any()


@needs_mdfa
@pytest.mark.parametrize("iid, point", [("train_005923", (95.0, 96.0)), ("train_004932", (117.0, 101.0))])
def test_real_click_that_misses_a_one_pixel_target_takes_the_target(iid, point):
    """MDFA one-pixel targets (masks of 5) clicked two pixels off (``--jitter 2``), outside the
    3x3 the point snaps in: the search took the flat or faintly textured surround (1,185 and 743
    pixels). The point now moves to the target's peak, and the mask matches the target."""
    ds = IRDataset(DATA / "MDFA")
    image, gt = ds.load_image(iid), ds.load_mask(iid)
    (mask,) = Annotator().annotate([image], [np.array([point])])
    n_targets, matched, _ = match_targets(mask, gt)
    assert mask.sum() <= 3 * gt.sum() and matched == n_targets == 1, (int(mask.sum()), int(gt.sum()))
    (surround,) = Annotator(AnnotatorConfig(snap_reach=1)).annotate([image], [np.array([point])])
    assert surround.sum() > 500


@pytest.mark.parametrize("name, ids", [
    pytest.param("SIRST-v1", ["Misc_45", "Misc_60", "Misc_130"], marks=needs_sirst),
    pytest.param("NUDT-SIRST", ["000247", "000444", "000459"], marks=needs_nudt),
])
def test_real_centroid_points_on_a_flat_top_stay_in_its_body(name, ids):
    """Centroid points of extended targets whose 3x3 peak is a bump of the target's own flat top
    (the first window's band lies on the top too), with a pixel within two that stands above its
    window's noise: the point lies in that pixel's body (at 0.5 to 1.0 of its amplitude), on the
    same target, and stays where the snap puts it. A form of the move without that test cost
    SIRST-v1's test split 1.6 IoU."""
    ds = IRDataset(DATA / name)
    cfg = AnnotatorConfig()
    for iid in ids:
        image = ds.load_image(iid)
        tested = 0
        for x, y in ds.points(iid, "centroid"):
            peak, reach = windows.snap(image, x, y, cfg.snap_radius), windows.snap(image, x, y, cfg.snap_reach)
            if peak != reach:
                bg, bar = windows._first_window(image, *peak, cfg)
                tested += image[peak] - bg <= bar  # a noise bump: the body test decides
            assert windows.find_peak(image, x, y, cfg) == peak, iid
        assert tested, (iid, "no point of this image reaches the body test")


@needs_nudt
def test_real_click_beside_the_centroid_does_not_grow_into_the_roof():
    """NUDT-SIRST 000549: a 54-pixel target on a bright roof inside a darker block. A click one
    pixel right and two up of its centroid point snaps to another of its brightest pixels,
    whose window grew past windows that held candidates of their own, every band falling as the
    windows left the roof, into the largest window, where no larger one could test that it had
    settled: a mask of 3,825 pixels. The largest window now stands only where the window below
    it held no candidate; the mask stays near the target's size and matches it."""
    ds = IRDataset(DATA / "NUDT-SIRST")
    image, gt = ds.load_image("000549"), ds.load_mask("000549")
    (mask,) = Annotator().annotate([image], [np.array([[55.0, 182.0]])])
    n_targets, matched, _ = match_targets(mask, gt)
    assert mask.sum() <= 3 * gt.sum() and matched == n_targets == 1, (int(mask.sum()), int(gt.sum()), matched)


@needs_mdfa
@pytest.mark.parametrize("iid", ["train_000022", "train_000111", "train_000313", "train_000339"])
def test_real_point_targets_get_the_disc_of_their_blur(iid):
    """MDFA point targets, one bright pixel over neighbours near the background, that got masks
    of one or two pixels for targets of 5: their masks are now the peak and its 4 neighbours,
    which is the whole target in each."""
    ds = IRDataset(DATA / "MDFA")
    image, points, gt = ds.load_image(iid), ds.points(iid, "centroid"), ds.load_mask(iid)
    (mask,) = Annotator().annotate([image], [points])
    (single,) = Annotator(config_from_dict({"point_radius": 0})).annotate([image], [points])
    assert single.sum() <= 2 and np.array_equal(mask, gt), (int(single.sum()), int(mask.sum()), int(gt.sum()))


@needs_nudt
@pytest.mark.parametrize("iid", ["000360", "000444", "000422"])
def test_real_targets_beside_a_bright_plateau_are_found_alone(iid):
    """NUDT-SIRST targets beside a bright roof or cloud patch that the small windows leak into:
    a larger window held target and patch together (masks of 55 to 236 pixels for targets of 5
    to 149, the target unmatched). The patch is a plateau just above the threshold, so that window
    is passed over for one that holds the target alone; every target is matched, its mask within
    twice its size (000360's 5 pixels get 9: the ring its blur spreads over)."""
    ds = IRDataset(DATA / "NUDT-SIRST")
    image, points, gt = ds.load_image(iid), ds.points(iid, "centroid"), ds.load_mask(iid)
    (mask,) = Annotator().annotate([image], [points])
    n_targets, matched, false_pixels = match_targets(mask, gt)
    assert matched == n_targets and false_pixels == 0 and mask.sum() <= 2 * gt.sum(), (int(mask.sum()), int(gt.sum()))
    (untested,) = Annotator(AnnotatorConfig(plateau_step=0.0)).annotate([image], [points])
    assert match_targets(untested, gt)[1] < n_targets


@needs_nudt
def test_real_faint_targets_beside_a_structure_of_their_level_take_less_of_it():
    """NUDT-SIRST 000504 and 000943: a target no brighter than the noise of its windows' bands,
    at the edge of a cloud band of its own level. Every small window leaks at every fraction, and
    a larger one held target and band (masks of 387 and 254 pixels for 116 and 78; 304 and 254
    false-alarm pixels). Such a one-sided component is passed over: 000504's two targets are
    both matched and its mask stays within its targets' size; 000943's mask shrinks by a third."""
    ds = IRDataset(DATA / "NUDT-SIRST")
    ids = ["000504", "000943"]
    masks = Annotator().annotate([ds.load_image(i) for i in ids], [ds.points(i, "centroid") for i in ids])
    gts = [ds.load_mask(i) for i in ids]
    n_targets, matched, false_pixels = match_targets(masks[0], gts[0])
    assert matched == n_targets == 2 and false_pixels == 0 and masks[0].sum() <= gts[0].sum(), int(masks[0].sum())
    assert masks[1].sum() <= 200 and (masks[1] & gts[1]).sum() >= 0.7 * gts[1].sum(), int(masks[1].sum())


@needs_nudt
def test_real_target_on_a_dimmer_streak_through_it_does_not_take_it_at_a_low_fraction():
    """NUDT-SIRST 001093: a 55-pixel target on a dimmer diagonal streak that runs through it. At
    ``peak_fraction`` 0.15 (as ``calibrate`` picks for generous masks) the small windows leak
    along the streak on two opposite sides, as they do along a long target's body; the streak is
    dimmer than half the peak where it crosses the band, so the wide windows are not tried early
    (they took the streak: a mask of 372 pixels)."""
    ds = IRDataset(DATA / "NUDT-SIRST")
    iid = "001093"
    (mask,) = Annotator(AnnotatorConfig(peak_fraction=0.15)).annotate([ds.load_image(iid)], [ds.points(iid, "centroid")])
    assert mask.sum() < 300, int(mask.sum())


@needs_nudt
def test_real_bar_on_a_textured_cloud_is_not_cut_to_its_peak():
    """NUDT-SIRST 000958: a 66-pixel bar on a cloud whose texture puts the small windows' band
    spread above the bar's contrast, so only the bar's brightest pixel cleared ``k_sigma``
    spreads and its mask was that pixel. Measured at the peak-relative threshold, the mask holds
    most of the bar and nothing of the cloud."""
    ds = IRDataset(DATA / "NUDT-SIRST")
    iid = "000958"
    image, points, gt = ds.load_image(iid), ds.points(iid, "centroid"), ds.load_mask(iid)
    (mask,) = Annotator().annotate([image], [points])
    assert (mask & gt).sum() >= 0.6 * gt.sum() and (mask & ~gt).sum() <= 0.2 * gt.sum(), (int(mask.sum()), int((mask & gt).sum()))
    # without the peak-relative reading the mask is the peak alone (the disc of a point source
    # left out, which would make it 5 pixels)
    (floor_only,) = Annotator(AnnotatorConfig(lone_peak_pixels=0, point_radius=0)).annotate([image], [points])
    assert floor_only.sum() <= 2


@pytest.mark.parametrize("name, floor, pd_floor", [pytest.param("NUDT-SIRST", 68.5, 97.5, marks=needs_nudt),
                                                   pytest.param("MDFA", 76.5, 99.5, marks=needs_mdfa)])
def test_real_datasets_have_no_catastrophic_mask(name, floor, pd_floor):
    """Every image of the split: dataset IoU and Pd above floors (IoU 69.8 and 77.2, Pd 98.5 and
    99.9 measured; the window growth had dropped IoU to 47 and 43, and before the rule on dimmer
    structures beside a target NUDT-SIRST stood at IoU 64.7, Pd 96.2) and no image with more than
    600 false-alarm pixels (13,363 before)."""
    ds = IRDataset(DATA / name)
    ids = ds.ids("train")
    ann = Annotator()
    metrics, worst = ISTDMetrics(), 0
    for s in range(0, len(ids), 64):
        chunk = ids[s:s + 64]
        masks = ann.annotate([ds.load_image(i) for i in chunk], [ds.points(i, "centroid") for i in chunk])
        for i, m in zip(chunk, masks):
            gt = ds.load_mask(i)
            metrics.update(m, gt)
            worst = max(worst, match_targets(m, gt)[2])  # the image's false-alarm pixels
    r = metrics.compute()
    assert r["iou"] >= floor and r["pd"] >= pd_floor and worst <= 600, (r, worst)


@pytest.mark.parametrize("name, ids", [
    pytest.param("NUDT-SIRST", ["000970", "000429", "001061", "001015", "000251"], marks=needs_nudt),
    pytest.param("MDFA", ["train_005355", "train_006332"], marks=needs_mdfa),
])
def test_real_targets_beside_dimmer_structures_keep_their_own_size(name, ids):
    """Real targets whose masks took a dimmer roof or cloud flank beside them (masks of 150 to 350
    pixels for targets of 30 to 70, the centroid pulled away so the target was also missed): each
    mask now stays within 2.5 times its target (4 to 6 times before) and every target is matched."""
    ds = IRDataset(DATA / name)
    masks = Annotator().annotate([ds.load_image(i) for i in ids], [ds.points(i, "centroid") for i in ids])
    for i, m in zip(ids, masks):
        gt = ds.load_mask(i)
        n_targets, matched, _ = match_targets(m, gt)
        assert m.sum() <= 2.5 * gt.sum() and matched == n_targets, (i, int(m.sum()), int(gt.sum()), matched)


@pytest.mark.parametrize("name, iid", [
    pytest.param("NUDT-SIRST", "001022", marks=needs_nudt),
    pytest.param("NUDT-SIRST", "000962", marks=needs_nudt),
    pytest.param("NUDT-SIRST", "000681", marks=needs_nudt),
    pytest.param("MDFA", "train_001371", marks=needs_mdfa),
])
def test_real_targets_on_a_cloud_shed_its_skirt(name, iid):
    """Real targets whose window's component took a lobe of the cloud or haze they sit on
    (NUDT-SIRST 001022: 205 pixels for a 60-pixel target; 000962: 152 for 51; 000681: 59 for 21;
    MDFA train_001371: 133 for 82): the lobe fades out where a target ends in an outline, so the
    mask sheds it (a fifth or more of the mask) and keeps nearly every target pixel it held."""
    ds = IRDataset(DATA / name)
    image, points, gt = ds.load_image(iid), ds.points(iid, "centroid"), ds.load_mask(iid)
    (mask,) = Annotator().annotate([image], [points])
    (kept,) = Annotator(AnnotatorConfig(skirt_ratio=0.0)).annotate([image], [points])
    assert mask.sum() <= 0.8 * kept.sum() and (mask & gt).sum() >= 0.9 * (kept & gt).sum(), \
        (int(mask.sum()), int(kept.sum()), int((mask & gt).sum()), int((kept & gt).sum()))


@pytest.mark.parametrize("name, iid, found", [
    pytest.param("NUDT-SIRST", "000274", True, marks=needs_nudt),
    pytest.param("NUDT-SIRST", "000549", False, marks=needs_nudt),
    pytest.param("NUDT-SIRST", "000522", True, marks=needs_nudt),
    pytest.param("NUDT-SIRST", "000602", True, marks=needs_nudt),
    pytest.param("MDFA", "train_004231", True, marks=needs_mdfa),
])
def test_real_neighbours_that_pull_the_mask_off_the_point_are_left_out(name, iid, found):
    """Real targets beside a building or in clutter whose edges are as steep as the target's, so
    that binarisation's edge test took them as the target's extension (NUDT-SIRST 000274: a
    251-pixel mask for a 71-pixel target, 000549: 222 for 54, 000522: 191 for 98, 000602: 176
    for 58; MDFA train_004231: 307 for 130), its centroid pulled off the target so that most
    were missed. Each lies to one side and pulls the mask's centroid more than 3 pixels farther
    from the point: left out, the masks shrink by a third or more, and every target but 000549's
    (whose strict component already leans into the clutter: 116 pixels for 54) is matched."""
    ds = IRDataset(DATA / name)
    image, points, gt = ds.load_image(iid), ds.points(iid, "centroid"), ds.load_mask(iid)
    (mask,) = Annotator().annotate([image], [points])
    (untested,) = Annotator(AnnotatorConfig(centre_shift=0.0)).annotate([image], [points])
    n_targets, matched, _ = match_targets(mask, gt)
    assert mask.sum() <= 0.75 * untested.sum() and (matched == n_targets or not found), \
        (int(mask.sum()), int(untested.sum()), matched)


@needs_sirst
@pytest.mark.parametrize("iid, floor", [("Misc_63", 0.85), ("Misc_104", 0.75)])
def test_real_vehicles_keep_their_uniform_bodies(iid, floor):
    """SIRST-v1 vehicles whose bodies are dimmer than a hot spot and uniform inside (no gradient
    within them) but end in a sharp outline: the skirt rule reads where a dropped part ends, not
    its inside, so the bodies stay (IoU 0.90 and 0.79; a rule that read the dropped part's inside
    cut them to 0.63 and 0.61)."""
    ds = IRDataset(SIRST)
    (m,) = Annotator().annotate([ds.load_image(iid)], [ds.points(iid, "centroid")])
    gt = ds.load_mask(iid)
    assert (m & gt).sum() / (m | gt).sum() >= floor


@needs_mdfa
@pytest.mark.parametrize("iid, fraction, clipped", [("train_008972", 0.45, False), ("train_008972", 0.5, False),
                                                    ("train_002655", 0.35, True)])
def test_real_target_inside_a_bright_region_at_raised_fractions(iid, fraction, clipped, monkeypatch):
    """MDFA targets inside a bright sky region: at a raised ``peak_fraction`` (as ``calibrate``
    may choose) the larger windows' threshold fell below the region's level and the growth, or
    the wide windows' stand-in, took the whole region (1,291 to 1,969 pixels for targets of 57
    and 162); the region is a plateau that a threshold ``plateau_step`` higher drops, so it is
    not taken. Without that test (``plateau_step=0``) the failure comes back (shown with the
    column pattern removed only, since removing train_002655's row pattern as well, the default,
    happens to keep its region apart at 0.35 too), except where the region is saturated
    (train_002655): the peak sits on its clipped plateau, and the wide windows do not stand in.
    train_008972's target also stands apart in the windows below the region's (``APART_GROWTH``
    bounds its growth too), so that bound is lifted for the test without the plateau's."""
    ds = IRDataset(DATA / "MDFA")
    image, points, gt = ds.load_image(iid), ds.points(iid, "centroid"), ds.load_mask(iid)
    (mask,) = Annotator(AnnotatorConfig(peak_fraction=fraction)).annotate([image], [points])
    n_targets, matched, _ = match_targets(mask, gt)
    assert mask.sum() <= 2 * gt.sum() and matched == n_targets, (int(mask.sum()), int(gt.sum()))
    unguarded_config = AnnotatorConfig(peak_fraction=fraction, plateau_step=0.0, destripe="columns")
    monkeypatch.setattr(windows, "APART_GROWTH", float("inf"))
    (unguarded,) = Annotator(unguarded_config).annotate([image], [points])
    assert (unguarded.sum() <= 2 * gt.sum()) == clipped, int(unguarded.sum())


@needs_sirst
def test_real_ship_keeps_its_hull():
    """SIRST-v1 Misc_4: a ship whose hull, nearly as bright as its superstructure and one-sided,
    ends in a sharp edge: the rule against dimmer neighbours keeps it (IoU 0.84; 0.52 without
    the hull)."""
    ds = IRDataset(SIRST)
    (m,) = Annotator().annotate([ds.load_image("Misc_4")], [ds.points("Misc_4", "centroid")])
    gt = ds.load_mask("Misc_4")
    assert (m & gt).sum() / (m | gt).sum() >= 0.8


# ------------------------------------------------------------------------------ soft labels in the masks' terms


def _soft_in_both_styles(images, points, mask_odds=MaskOdds()):
    ann = Annotator()
    batch = ann.prepare(images, points)
    masks, fields = ann.masks_and_soft(batch)
    again, odds = ann.masks_and_soft(batch, style="mask", odds=mask_odds)
    return ann, batch, masks, fields, again, odds


@pytest.mark.parametrize("mask_odds", [MaskOdds(), MaskOdds(power=4.0, quantile=0.3)])
def test_mask_style_soft_labels_are_half_exactly_on_the_masks(mask_odds):
    """``style="mask"``: each target's field as odds about its mask's edge, ``y^k / (y^k + e^k)``,
    ``e`` the field's ``quantile`` over the target's mask (by default ``k`` 2 and the 10th
    percentile): at least 0.5 on the mask and below it elsewhere, after a 16-bit PNG's rounding
    too; near 1 at each peak; the masks are the field style's; a target alone in its field window
    follows the formula off its mask."""
    from d2d_ext.annotate import MASK_EDGE_QUANTILE, MASK_ODDS_POWER, crop_maps
    from d2d_ext.jobs import soft_png
    from d2d_ext.morphology import component

    assert MaskOdds() == (MASK_ODDS_POWER, MASK_EDGE_QUANTILE)
    scenes = _mixed_scenes()
    ann, batch, masks, fields, again, odds = _soft_in_both_styles([s.image for s in scenes], [s.points for s in scenes],
                                                                  mask_odds)
    for m, a, f, o in zip(masks, again, fields, odds):
        assert np.array_equal(m, a) and o.dtype == np.float32 and o.shape == f.shape
        assert np.array_equal(o >= 0.5, m) and o.min() >= 0.0 and o.max() <= 1.0
        assert np.array_equal(soft_png(o) >= 32768, m)  # what read_gray(...) >= 0.5 reads back
        assert not o[f == 0][~m[f == 0]].any()  # nothing beyond the fields and the masks
    y = (ann.soft(batch).detach() * batch.inside).double().numpy()
    held = crop_maps([m.astype(np.float32) for m in masks], batch).numpy() > 0.5
    pasted = crop_maps(odds, batch).numpy()
    inside = batch.inside.numpy()
    windows = [paste_masks(batch, np.eye(len(batch), dtype=bool)[:, t, None, None] & inside)[batch.image_index[t]]
               for t in range(len(batch))]
    alone = 0
    for t in range(len(batch)):
        peak = tuple(int(v) for v in batch.peak[t])
        assert pasted[t][peak] > 0.5
        b = batch.image_index[t]
        if any((windows[u] & windows[t]).any() for u in range(len(batch)) if u != t and batch.image_index[u] == b):
            continue
        alone += 1
        mask = component(held[t], peak)
        edge = np.quantile(y[t][mask], mask_odds.quantile)
        ratio = (y[t] / edge) ** mask_odds.power
        off = inside[t] & ~held[t]
        expected = np.minimum(ratio / (1 + ratio), 32767 / 65535)
        np.testing.assert_allclose(pasted[t][off], expected[off], rtol=1e-5, atol=1e-7)
    assert alone >= 5


def test_mask_style_soft_labels_are_nearer_the_truth_on_synthetic_scenes():
    """Read as probabilities, the mask style's labels are nearer the scenes' ground truth than the
    fields: their 0.5 level is the masks (whose IoU the fields' 0.5 level is far below) and their
    squared error over every pixel is lower."""
    scenes = _scenes(12, seed=21)
    _, _, masks, fields, _, odds = _soft_in_both_styles([s.image for s in scenes], [s.points for s in scenes])
    truth = [s.mask > 0 for s in scenes]

    def iou(labels):
        return sum(((y >= 0.5) & g).sum() for y, g in zip(labels, truth)) / sum(((y >= 0.5) | g).sum()
                                                                             for y, g in zip(labels, truth))

    def squared_error(labels):  # over every pixel
        return sum(((y - g) ** 2).sum() for y, g in zip(labels, truth))

    masks_iou = sum((m & g).sum() for m, g in zip(masks, truth)) / sum((m | g).sum() for m, g in zip(masks, truth))
    assert iou(odds) == pytest.approx(masks_iou) and masks_iou > 0.6
    assert iou(fields) < 0.6 * masks_iou
    assert squared_error(odds) < 0.7 * squared_error(fields), (squared_error(odds), squared_error(fields))


def test_an_unknown_soft_style_is_refused_by_name():
    scenes = _scenes(1, seed=0)
    ann = Annotator()
    with pytest.raises(ValueError, match=r"style must be one of \('field', 'mask'\), got 'probability'"):
        ann.masks_and_soft(ann.prepare([scenes[0].image], [scenes[0].points]), style="probability")


@needs_sirst
def test_real_mask_style_soft_labels_read_as_probabilities():
    """SIRST-v1's test split, human points: thresholded at 0.5, the fields give a fraction of the
    masks' IoU, the mask style exactly the masks'; and its squared error to the truth is lower."""
    ds = IRDataset(SIRST)
    ids = ds.ids("test")[:80]
    ann = Annotator()
    sums = np.zeros(6)
    for start in range(0, len(ids), 16):
        chunk = ids[start:start + 16]
        batch = ann.prepare([ds.load_image(i) for i in chunk], [ds.points(i, "centroid") for i in chunk])
        masks, fields = ann.masks_and_soft(batch)
        _, odds = ann.masks_and_soft(batch, style="mask")
        for i, m, f, o in zip(chunk, masks, fields, odds):
            g = ds.load_mask(i)
            sums += [(m & g).sum(), (m | g).sum(), ((f >= 0.5) & g).sum(), ((f >= 0.5) | g).sum(),
                     ((f - g) ** 2).sum() - ((o - g) ** 2).sum(), ((f - g) ** 2).sum()]
            assert np.array_equal(o >= 0.5, m)
    masks_iou, fields_iou = sums[0] / sums[1], sums[2] / sums[3]
    assert masks_iou > 0.7 and fields_iou < 0.5 * masks_iou, (masks_iou, fields_iou)
    assert sums[4] > 0.3 * sums[5]  # the mask style's squared error is under 70% of the fields'


@needs_mdfa
def test_real_padded_crops_get_the_masks_of_their_pictures():
    """MDFA's 128x128 crops padded by 16 pixels of 0: each gets its picture's masks, padded. The
    padding made a dark band where a crop's edge cuts a bright region, and masks took the whole
    crop (pooled IoU 31.6 on the 1,500 crops, 16,384 false pixels in one)."""
    ds = IRDataset(DATA / "MDFA")
    ids = ds.ids("train")[:96]
    images = [ds.load_image(i) for i in ids]
    points = [ds.points(i, "centroid") for i in ids]
    ann = Annotator()
    base = ann.annotate(images, points)
    padded = ann.annotate([np.pad(im, 16) for im in images], [np.asarray(p, np.float64) + 16 for p in points])
    for m, p in zip(base, padded):
        assert np.array_equal(p, np.pad(m, 16))


@needs_nudt
def test_a_wide_structure_that_ends_a_pixel_short_of_the_edge_is_not_taken():
    """NUDT-SIRST 000274 quantised to 64 grey levels: no window up to the largest of
    ``half_sizes`` holds the target near the bottom edge, and the wide windows' component is a
    bright structure that the coarse levels end a pixel short of the image's edge. It runs off the
    image as one that reaches the edge does, and is not taken (a mask of 656 pixels for a target of
    71 before)."""
    ds = IRDataset(DATA / "NUDT-SIRST")
    image = np.float32(np.round(np.clip(np.float64(ds.load_image("000274")), 0.0, 1.0) * 63) / 63)
    mask = Annotator().annotate([image], [ds.points("000274", "centroid")])[0]
    truth = ds.load_mask("000274")
    assert mask.sum() < 3 * truth.sum() and (mask & truth).sum() > 0.5 * truth.sum()


@needs_nudt
def test_a_target_in_a_cloud_band_does_not_grow_across_it_when_coded_as_jpeg():
    """NUDT-SIRST 001009 padded by 12 pixels and coded as JPEG (quality 90), its picture read
    alone: the aircraft is held by the 17x17 window and the growth steps over six windows its
    cloud band leaks out of, to one whose component is the band (132 x 28 pixels, a pixel short of
    the image's edge). Such a band crosses the windows stepped over on two sides, and is not taken
    (1,666 pixels for a target of 66 before; the image as it is gives 53)."""
    ds = IRDataset(DATA / "NUDT-SIRST")
    picture = jpeg_coded(np.pad(ds.load_image("001009"), 12), 90)[12:-12, 12:-12]
    mask = Annotator().annotate([picture], [ds.points("001009", "centroid")])[0]
    truth = ds.load_mask("001009")
    assert mask.sum() < 3 * truth.sum() and (mask & truth).sum() > 0.5 * truth.sum()


@needs_mdfa
def test_real_padded_crops_coded_as_jpeg_get_the_masks_of_their_pictures():
    """MDFA's crops padded by 12 pixels of 0 and written as JPEG: the padding's last lines share
    coding blocks with the picture and are not flat. The masks are those of the coded picture read
    alone (a crop as one mask, 2,489 pixels of a target of 5, before the coded lines were left out)."""
    ds = IRDataset(DATA / "MDFA")
    ids = ds.ids("train")[:96]
    frames = [jpeg_coded(np.pad(ds.load_image(i), 12), 90) for i in ids]
    points = [np.asarray(ds.points(i, "centroid"), np.float64) + 12 for i in ids]
    ann = Annotator()
    masks = ann.annotate(frames, points)
    alone = ann.annotate([f[12:-12, 12:-12] for f in frames], [p - 12 for p in points])
    assert sum(np.array_equal(m, np.pad(a, 12)) for m, a in zip(masks, alone)) >= 94
    assert max(int(m.sum()) for m in masks) <= 128 * 128 // 16
