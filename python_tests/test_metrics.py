"""Tests of d2d_ext.metrics (IoU, nIoU, Pd, Fa) on small hand-computed cases.

Coordinates in comments are (row y, column x). Every expected number is worked out by hand in
the comment next to it.
"""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from d2d_ext.metrics import IoUMetric, ISTDMetrics, PdFaMetric, _components, binarize, match_targets


def mask(h, w, pixels):
    """A bool (h, w) mask with the given (y, x) pixels set."""
    m = np.zeros((h, w), dtype=bool)
    for y, x in pixels:
        m[y, x] = True
    return m


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-12)


# --------------------------------------------------------------------------------------------
# IoU / nIoU
# --------------------------------------------------------------------------------------------


def test_iou_dataset_level_differs_from_niou():
    # Image A (4x4): gt = pred = 2x2 block rows 0-1, cols 0-1 -> inter 4, union 4, IoU 1.
    gt_a = np.zeros((4, 4), bool)
    gt_a[0:2, 0:2] = True
    pred_a = gt_a.copy()
    # Image B (4x4): gt = single pixel (2, 2); pred = rows 2-3, cols 0-3 (8 px, contains (2,2))
    # -> inter 1, union 8, IoU 1/8.
    gt_b = mask(4, 4, [(2, 2)])
    pred_b = np.zeros((4, 4), bool)
    pred_b[2:4, :] = True
    m = ISTDMetrics()
    m.update(pred_a, gt_a)
    m.update(pred_b, gt_b)
    r = m.compute()
    # IoU = (4 + 1) / (4 + 8) = 5/12 = 41.666...%
    assert r["iou"] == approx(100.0 * 5 / 12)
    # nIoU = (1 + 1/8) / 2 = 0.5625 = 56.25%
    assert r["niou"] == approx(56.25)
    assert r["iou"] != approx(r["niou"])
    assert r["images"] == 2
    # Targets: A has 1 component (the block), B has 1 (the pixel); both detected:
    # A's pred centroid (0.5, 0.5) == gt centroid; B's pred centroid (2.5, 1.5) is at
    # sqrt(0.25 + 0.25) from (2, 2) -> Pd 100%, no false alarm.
    assert r["targets"] == 2
    assert r["pd"] == 100.0
    assert r["fa"] == 0.0
    # The IoU accumulator alone gives the same two numbers.
    iou = IoUMetric()
    iou.update(np.stack([pred_a, pred_b]), np.stack([gt_a, gt_b]))
    assert iou.compute() == {"iou": approx(100.0 * 5 / 12), "niou": approx(56.25)}


def test_iou_random_cross_check():
    rng = np.random.default_rng(1234)
    B, H, W = 6, 32, 40
    prob = rng.random((B, H, W))
    gt = rng.random((B, H, W)) > 0.7
    gt[3] = False  # one image without target
    prob[3] = 0.0  # ... and without prediction: skipped by nIoU
    m = IoUMetric()
    m.update(prob[:2], gt[:2])
    m.update(prob[2:], gt[2:])
    p = prob > 0.5
    inter = (p & gt).sum(axis=(1, 2))
    union = (p | gt).sum(axis=(1, 2))
    assert union[3] == 0 and (union[[0, 1, 2, 4, 5]] > 0).all()
    keep = union > 0
    r = m.compute()
    assert r["iou"] == approx(100.0 * inter.sum() / union.sum())
    assert r["niou"] == approx(100.0 * np.mean(inter[keep] / union[keep]))
    # Sanity: the random data is not degenerate.
    assert 5.0 < r["iou"] < 95.0


# --------------------------------------------------------------------------------------------
# Empty masks, false alarms, missed targets
# --------------------------------------------------------------------------------------------


def test_empty_images_false_alarm_and_missed_target():
    H = W = 8  # 64 pixels per image, 3 images -> 192 pixels
    # img0: no target, no prediction -> skipped by nIoU, still 64 pixels of Fa's denominator.
    pred0, gt0 = mask(H, W, []), mask(H, W, [])
    # img1: background only, a 2-pixel false alarm at (0,0),(0,1): inter 0, union 2, IoU 0.
    pred1, gt1 = mask(H, W, [(0, 0), (0, 1)]), mask(H, W, [])
    # img2: targets (1,1) and (6,6); only (1,1) predicted: inter 1, union 2, IoU 1/2.
    pred2, gt2 = mask(H, W, [(1, 1)]), mask(H, W, [(1, 1), (6, 6)])
    m = ISTDMetrics()
    for p, g in [(pred0, gt0), (pred1, gt1), (pred2, gt2)]:
        m.update(p, g)
    r = m.compute()
    assert r["images"] == 3
    assert r["targets"] == 2
    # IoU = (0 + 0 + 1) / (0 + 2 + 2) = 25%.
    assert r["iou"] == 25.0
    # nIoU = mean(0, 1/2) over the 2 counted images = 25% (counting img0 as 1 would give 50%,
    # as 0 would give 16.67%).
    assert r["niou"] == 25.0
    # Pd = 1 of 2 targets = 50%.
    assert r["pd"] == 50.0
    # Fa = 2 false-alarm pixels / 192 pixels * 1e6 = 10416.666...
    assert r["fa"] == approx(2 / 192 * 1e6)


def test_only_empty_image_gives_nan():
    m = ISTDMetrics()
    m.update(np.zeros((5, 5), bool), np.zeros((5, 5), bool))
    r = m.compute()
    assert math.isnan(r["iou"])  # total union 0
    assert math.isnan(r["niou"])  # no image counted
    assert math.isnan(r["pd"])  # no target
    assert r["fa"] == 0.0  # 0 false-alarm pixels of 25
    assert r["images"] == 1 and r["targets"] == 0


def test_fresh_and_reset():
    m = ISTDMetrics()
    r = m.compute()
    assert all(math.isnan(r[k]) for k in ("iou", "niou", "pd", "fa"))
    assert r["images"] == 0 and r["targets"] == 0
    m.update(mask(4, 4, [(0, 0)]), mask(4, 4, [(3, 3)]))
    r = m.compute()
    # inter 0, union 2; target (3,3) missed; false alarm 1 px of 16 -> 62500 per 1e6.
    assert (r["iou"], r["niou"], r["pd"], r["fa"]) == (0.0, 0.0, 0.0, 62500.0)
    m.reset()
    r = m.compute()
    assert math.isnan(r["iou"]) and r["images"] == 0 and r["targets"] == 0


# --------------------------------------------------------------------------------------------
# Pd / Fa matching
# --------------------------------------------------------------------------------------------


def test_merged_targets():
    # gt: two single-pixel targets (5,5) and (5,9) (not connected).
    gt = mask(16, 16, [(5, 5), (5, 9)])
    # pred: one merged blob, row 5, cols 2..9 (8 px), centroid (5, 5.5):
    # distance 0.5 to (5,5) (match), 3.5 to (5,9) (no match).
    pred = mask(16, 16, [(5, x) for x in range(2, 10)])
    assert match_targets(pred, gt) == (2, 1, 0)  # the matched blob's 8 px are not false alarms
    m = PdFaMetric()
    m.update(pred, gt)
    assert m.compute() == {"pd": 50.0, "fa": 0.0}


def test_split_target():
    # gt: one target, row 8, cols 2..8 (7 px), centroid (8, 5).
    gt = mask(16, 16, [(8, x) for x in range(2, 9)])
    # pred blob 1: row 8, cols 2..6 (5 px), centroid (8, 4), distance 1 -> matched.
    # pred blob 2: (8,8),(9,8) (2 px), separated from blob 1 by column 7 -> unmatched.
    pred = mask(16, 16, [(8, x) for x in range(2, 7)] + [(8, 8), (9, 8)])
    assert match_targets(pred, gt) == (1, 1, 2)
    m = PdFaMetric()
    m.update(pred, gt)
    # Pd 100%; Fa = 2 / 256 * 1e6 = 7812.5.
    assert m.compute() == {"pd": 100.0, "fa": 7812.5}


def test_nearest_prediction_wins_not_first_label():
    gt = mask(10, 10, [(5, 5)])
    # pred A: (3,4),(3,5), label 1 (raster order), centroid (3, 4.5), distance sqrt(4.25)=2.06.
    # pred B: (5,6), label 2, distance 1 -> the nearest, so B is matched and A's 2 px are false
    # alarms (matching A instead would leave 1 false-alarm pixel).
    pred = mask(10, 10, [(3, 4), (3, 5), (5, 6)])
    assert match_targets(pred, gt) == (1, 1, 2)


def test_distance_exactly_three_is_not_a_match():
    gt = mask(20, 20, [(10, 10)])
    # Column x=13, rows 6..14 (9 px): centroid (10, 13), distance exactly 3 -> no match.
    col = [(y, 13) for y in range(6, 15)]
    assert match_targets(mask(20, 20, col), gt) == (1, 0, 9)
    # Adding (10,12) (connected to (10,13)): 10 px, centroid x = (9*13 + 12)/10 = 12.9,
    # y = 10 -> distance 2.9 -> match, no false alarm.
    assert match_targets(mask(20, 20, col + [(10, 12)]), gt) == (1, 1, 0)
    # A larger match_distance accepts the distance-3 blob.
    assert match_targets(mask(20, 20, col), gt, max_distance=3.01) == (1, 1, 0)
    m = PdFaMetric(match_distance=3.01)
    m.update(mask(20, 20, col), gt)
    assert m.compute()["pd"] == 100.0


def test_one_to_one():
    # Two targets (5,5) and (5,9); one prediction (5,7) at distance 2 from both.
    gt = mask(12, 12, [(5, 5), (5, 9)])
    pred = mask(12, 12, [(5, 7)])
    assert match_targets(pred, gt) == (2, 1, 0)
    m = ISTDMetrics()
    m.update(pred, gt)
    assert m.compute()["pd"] == 50.0
    # With a second prediction (5,11) (distance 2 from (5,9), 4 from (5,5)) both are matched:
    # the first target takes (5,7), the second skips the taken (5,7) and takes (5,11).
    assert match_targets(mask(12, 12, [(5, 7), (5, 11)]), gt) == (2, 2, 0)


def test_first_rule_takes_the_first_label_within_reach():
    # Targets T1 (5,5) and T2 (5,9), labels 1 and 2. Predicted single pixels P1 (5,7) (label 1,
    # raster order: row 5 comes first) and P2 (6,5) (label 2); they do not touch.
    # Distances: T1-P1 2, T1-P2 1, T2-P1 2, T2-P2 sqrt(1 + 16) = 4.12 (out of reach).
    gt = mask(12, 12, [(5, 5), (5, 9)])
    pred = mask(12, 12, [(5, 7), (6, 5)])
    # nearest: T1 takes P2 (1 < 2), T2 takes P1 -> both detected, no false alarm.
    assert match_targets(pred, gt) == (2, 2, 0)
    # first (BasicIRSTD): T1 takes P1, the first label within reach; T2 has only P2, 4.12 away ->
    # missed, and P2's pixel is a false alarm.
    assert match_targets(pred, gt, pd_match="first") == (2, 1, 1)
    nearest, first = ISTDMetrics(), ISTDMetrics(pd_match="first")
    for m in (nearest, first):
        m.update(pred, gt)
    assert nearest.compute()["pd"] == 100.0 and nearest.compute()["fa"] == 0.0
    # Pd 1 / 2; Fa 1 / 144 pixels * 1e6 = 6944.44...
    assert first.compute()["pd"] == 50.0 and first.compute()["fa"] == approx(1e6 / 144)
    # One target, two components within reach: A (3,4),(3,5), label 1, centroid (3, 4.5), 2.06
    # away; B (5,6), label 2, 1 away. nearest takes B (A's 2 px are false alarms), first takes A
    # (B's 1 px is).
    one = mask(10, 10, [(5, 5)])
    two = mask(10, 10, [(3, 4), (3, 5), (5, 6)])
    assert match_targets(two, one) == (1, 1, 2)
    assert match_targets(two, one, pd_match="first") == (1, 1, 1)
    pdfa = PdFaMetric(pd_match="first")
    pdfa.update(two, one)
    assert pdfa.compute() == {"pd": 100.0, "fa": 1e6 / 100}


def _their_matches(pred, gt):
    """BasicIRSTD's PD_FA matching written out: regionprops of both (8-connected, label order),
    each target in turn takes the first remaining region whose centroid is closer than 3."""
    from skimage import measure

    regions = measure.regionprops(measure.label(pred, connectivity=2))
    matched = 0
    for target in measure.regionprops(measure.label(gt, connectivity=2)):
        for m, region in enumerate(regions):
            if np.linalg.norm(np.array(region.centroid) - np.array(target.centroid)) < 3:
                matched += 1
                del regions[m]
                break
    return matched


def test_first_rule_agrees_with_basicirstd_on_random_scenes():
    rng = np.random.default_rng(5)
    differ = 0
    for _ in range(60):
        gt = rng.random((24, 24)) > 0.93
        pred = gt & (rng.random((24, 24)) > 0.3) | (rng.random((24, 24)) > 0.92)
        n_t, n_first, _ = match_targets(pred, gt, pd_match="first")
        assert n_first == _their_matches(pred, gt)
        differ += match_targets(pred, gt)[1] != n_first
    assert differ > 0  # the scenes are crowded enough for the rules to disagree somewhere


def test_unknown_pd_match_names_the_rules():
    for make in (lambda: ISTDMetrics(pd_match="closest"), lambda: PdFaMetric(pd_match="closest"),
                 lambda: match_targets(mask(4, 4, []), mask(4, 4, []), pd_match="closest")):
        with pytest.raises(ValueError, match=r"pd_match must be one of \('nearest', 'first'\), got 'closest'"):
            make()


def test_eight_connectivity():
    diag = [(2, 2), (3, 3), (4, 4)]
    # Diagonal pixels form ONE gt target (4-connectivity would give 3).
    assert match_targets(mask(8, 8, diag), mask(8, 8, diag)) == (1, 1, 0)
    # A diagonal prediction is one blob with centroid (3,3), sqrt(2) from the target (2,2):
    # matched, no false alarm (4-connectivity would leave 2 unmatched pixels).
    assert match_targets(mask(8, 8, diag), mask(8, 8, [(2, 2)])) == (1, 1, 0)
    # Anti-diagonal touching too.
    assert match_targets(mask(8, 8, [(1, 3), (2, 2)]), mask(8, 8, []))[2] == 2
    m = ISTDMetrics()
    m.update(mask(8, 8, []), mask(8, 8, diag))
    assert m.compute()["targets"] == 1


def test_fa_per_million_pixels_over_all_images():
    # 2 images of 10x10 = 200 pixels; 3 false-alarm pixels in the first, none in the second.
    pred = np.zeros((2, 10, 10), bool)
    pred[0, 0, 0:3] = True
    gt = np.zeros((2, 10, 10), bool)
    m = PdFaMetric()
    m.update(pred, gt)
    # 3 / 200 * 1e6 = 15000
    assert m.compute()["fa"] == 15000.0


# --------------------------------------------------------------------------------------------
# Binarisation and input forms
# --------------------------------------------------------------------------------------------


def test_binarize_rules():
    f = np.array([0.0, 0.49, 0.5, 0.51, 1.0], dtype=np.float32)
    assert binarize(f).tolist() == [False, False, False, True, True]
    assert binarize(f.astype(np.float64)).tolist() == [False, False, False, True, True]
    assert binarize(f, threshold=0.3).tolist() == [False, True, True, True, True]
    u = np.array([0, 127, 128, 255], dtype=np.uint8)
    assert binarize(u).tolist() == [False, False, True, True]
    b = np.array([True, False])
    assert binarize(b).tolist() == [True, False]
    assert binarize(torch.tensor([0.5, 0.51])).tolist() == [False, True]
    assert binarize(torch.tensor([127, 128], dtype=torch.uint8)).tolist() == [False, True]
    assert binarize(torch.tensor([0, 1], dtype=torch.int64)).tolist() == [False, True]
    assert binarize(f).dtype == np.bool_


def test_threshold_rules_in_metric():
    gt = mask(6, 6, [(2, 2)])
    # Float pred 0.5 exactly at the target -> negative: target missed, nothing predicted.
    p = np.zeros((6, 6), np.float32)
    p[2, 2] = 0.5
    m = ISTDMetrics()
    m.update(p, gt)
    assert m.compute()["pd"] == 0.0
    # 0.51 -> positive: detected, IoU 100%.
    p[2, 2] = 0.51
    m = ISTDMetrics()
    m.update(p, gt)
    assert (m.compute()["pd"], m.compute()["iou"]) == (100.0, 100.0)
    # uint8 128 -> positive.
    u = np.zeros((6, 6), np.uint8)
    u[2, 2] = 128
    m = ISTDMetrics()
    m.update(u, gt.astype(np.uint8) * 255)
    assert (m.compute()["pd"], m.compute()["iou"]) == (100.0, 100.0)
    # Custom threshold applies to float predictions, not to the (float) ground truth:
    # pred 0.4 > 0.3 positive; gt 0.5 stays negative -> pixel is a false alarm, no target.
    p[2, 2] = 0.4
    g = np.zeros((6, 6), np.float32)
    g[2, 2] = 0.5
    m = ISTDMetrics(threshold=0.3)
    m.update(p, g)
    r = m.compute()
    assert r["targets"] == 0 and r["fa"] == approx(1 / 36 * 1e6) and r["iou"] == 0.0


def _random_batch(seed=0, B=4, H=24, W=24):
    rng = np.random.default_rng(seed)
    prob = rng.random((B, H, W)).astype(np.float32) ** 4  # sparse-ish positives
    gt = (rng.random((B, H, W)) > 0.93).astype(np.uint8) * 255
    return prob, gt


def test_torch_input_equals_numpy_input():
    prob, gt = _random_batch(seed=3)
    m_np = ISTDMetrics()
    m_np.update(prob, gt)
    m_t = ISTDMetrics()
    # (B, 1, H, W) tensors, prediction requiring grad (detached inside).
    m_t.update(torch.from_numpy(prob)[:, None].requires_grad_(True), torch.from_numpy(gt)[:, None])
    r_np, r_t = m_np.compute(), m_t.compute()
    assert r_np == r_t
    assert r_np["targets"] > 0 and r_np["fa"] > 0 and 0 < r_np["pd"] < 100


def test_batch_update_equals_per_image_updates():
    prob, gt = _random_batch(seed=5)
    m_batch = ISTDMetrics()
    m_batch.update(prob, gt)
    m_single = ISTDMetrics()
    for p, g in zip(prob, gt):
        m_single.update(p, g)
    assert m_batch.compute() == m_single.compute()
    assert m_batch.compute()["images"] == prob.shape[0]


def test_composition_matches_parts():
    prob, gt = _random_batch(seed=7)
    full, iou, pdfa = ISTDMetrics(), IoUMetric(), PdFaMetric()
    for m in (full, iou, pdfa):
        m.update(prob, gt)
    r = full.compute()
    assert {k: r[k] for k in ("iou", "niou")} == iou.compute()
    assert {k: r[k] for k in ("pd", "fa")} == pdfa.compute()


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes():
    m = ISTDMetrics()
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(2, 4, 5\)"):
        m.update(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="shape"):
        match_targets(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


@pytest.mark.parametrize("shape", [(16,), (1, 2, 3, 4, 5), (2, 3, 4, 4)])
def test_wrong_rank(shape):
    m = ISTDMetrics()
    with pytest.raises(ValueError, match=re_shape(shape)):
        m.update(np.zeros(shape), np.zeros(shape))


def re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def test_nan_prediction_raises_and_leaves_state():
    m = ISTDMetrics()
    m.update(mask(4, 4, [(1, 1)]), mask(4, 4, [(1, 1)]))
    before = m.compute()
    p = np.zeros((4, 4), np.float32)
    p[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.update(p, mask(4, 4, []))
    with pytest.raises(ValueError, match="NaN"):
        m.update(torch.from_numpy(p), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="NaN"):
        binarize(p)
    assert m.compute() == before  # IoU 100, Pd 100, 1 image
    assert before["images"] == 1 and before["iou"] == 100.0


@pytest.mark.parametrize("density", [0.001, 0.3])
def test_components_are_scipys_areas_and_centroids(density):
    """Each 8-connected component's pixel count and mean row and column, in label order, as
    scipy measures them, on a whole frame sparse and dense."""
    mask = np.random.default_rng(7).random((540, 960)) < density
    labels, n = ndimage.label(mask, np.ones((3, 3), bool))
    areas, cy, cx = _components(mask)
    index = np.arange(1, n + 1)
    assert np.array_equal(areas, ndimage.sum(mask, labels, index).astype(np.int64))
    centres = np.array(ndimage.center_of_mass(mask, labels, index)).reshape(-1, 2)
    np.testing.assert_allclose(np.stack([cy, cx], 1), centres, rtol=0, atol=1e-9)
