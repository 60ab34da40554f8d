"""benchmarks/training/theta_sensitivity.py and benchmarks/training/alpha_label_quality.py: the
diagnoses of what bi-level training's two outer levers (theta, the sample weights) can act on; and
benchmarks/annotation/annotation_scale.py, the annotator by target size;
benchmarks/annotation/annotation_elongated.py, the annotator on long thin targets;
benchmarks/annotation/annotation_touching.py, the annotator on large targets pressed against a band;
benchmarks/annotation/annotation_crowded.py, the annotator against the number of targets in a frame;
benchmarks/annotation/annotation_files.py, a dataset annotated and scored with its files;
benchmarks/annotation/annotation_datasets.py, the annotator on every dataset apart."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import load_benchmark
from d2d_ext.annotate import STYLES, Annotator
from d2d_ext.morphology import grow, label
from d2d_ext.points import centroid_points
from d2d_ext.synthetic import make_scene, write_dataset
from d2d_ext.windows import Step

theta_sensitivity = load_benchmark("training/theta_sensitivity")
alpha_label_quality = load_benchmark("training/alpha_label_quality")
annotation_scale = load_benchmark("annotation/annotation_scale")
annotation_elongated = load_benchmark("annotation/annotation_elongated")
annotation_touching = load_benchmark("annotation/annotation_touching")
annotation_crowded = load_benchmark("annotation/annotation_crowded")
annotation_files = load_benchmark("annotation/annotation_files")
annotation_datasets = load_benchmark("annotation/annotation_datasets")
settings_leaveout = load_benchmark("annotation/settings_leaveout")
probe_sweep = load_benchmark("annotation/probe_sweep")
bit_hashes = load_benchmark("ops/bit_hashes")
bad_pixel_search = load_benchmark("annotation/bad_pixel_search")
search_paths = load_benchmark("annotation/search_paths")
setup_cost = load_benchmark("ops/setup_cost")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth"), n_images=6, seed=3, height=96, width=96)


def test_auc_and_spearman_on_known_values():
    auc = alpha_label_quality.auc
    assert auc(np.array([2.0, 3.0]), np.array([1.0])) == 1.0
    assert auc(np.array([1.0]), np.array([2.0, 3.0])) == 0.0
    assert auc(np.array([1.0, 3.0]), np.array([2.0, 1.0])) == pytest.approx(0.625)  # (0.5 + 0 + 1 + 1) / 4
    assert np.isnan(auc(np.array([1.0]), np.array([])))
    rho = alpha_label_quality.spearman
    a = np.array([0.3, 0.1, 0.9, 0.5, 0.5])
    assert rho(a, a ** 3) == pytest.approx(1.0)
    assert rho(a, -a) == pytest.approx(-1.0)
    scipy_stats = pytest.importorskip("scipy.stats")
    b = np.array([1.0, 4.0, 2.0, 2.0, 8.0])
    assert rho(a, b) == pytest.approx(scipy_stats.spearmanr(a, b)[0])


def test_alpha_label_quality_table(dataset, tmp_path, capsys):
    ids = [line for line in (dataset / "img_idx" / "train_SYNTH.txt").read_text().splitlines() if line]
    run = tmp_path / "run"
    run.mkdir()
    (run / "alpha.csv").write_text("id,alpha,label_area,targets\n" + "".join(
        f"{i},{1.0 + 0.1 * k},10,1\n" for k, i in enumerate(ids)))
    out = tmp_path / "table.md"
    assert alpha_label_quality.main([str(run), "--dataset", str(dataset), "--bad", "1.01", "--out", str(out)]) == 0
    row = [line for line in out.read_text().splitlines() if line.startswith(f"| {run} ")]
    # every label's IoU is below 1.01: all bad, so no AUC, and the bad images' mean weight is the mean
    assert len(row) == 1 and f"| {len(ids)} | {len(ids)} |" in row[0]
    assert row[0].split("|")[5].strip() == "nan"
    assert float(row[0].split("|")[7]) == pytest.approx(1.0 + 0.1 * (len(ids) - 1) / 2, abs=1e-3)
    with pytest.raises(SystemExit, match="alpha.csv: not found"):
        alpha_label_quality.main([str(tmp_path), "--dataset", str(dataset)])


def test_theta_sensitivity_rows(dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # a run that ended with beta at 2 (1 + 0.3 * 0.5): tanh(raw) = 0.5 for beta, 0 elsewhere
    theta = {"D0": 3.2, "beta": 2.3, "rho": 0.84, "alpha": 0.6, "gamma": 4.0, "D0_max": 4.16}
    (run / "log.jsonl").write_text(json.dumps({"epoch": 0, "theta": theta}) + "\n")
    assert theta_sensitivity.run_direction(run) == pytest.approx([0, 0.5, 0, 0, 0])
    out = tmp_path / "table.md"
    assert theta_sensitivity.main(["--dataset", str(dataset), "--run", str(run), "--out", str(out)]) == 0
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [r[0].strip() for r in rows]
    assert names[0] == "default" and len(names) == 1 + 10 + 3
    assert float(rows[0][1]) == 0.0 and int(rows[0][2]) == 0  # the default against itself
    # the run's final theta and its direction at reach 0.5 are the same point: the same labels
    assert rows[-3][1:] == rows[-2][1:]
    for r in rows:
        assert 0.0 <= float(r[1]) and 0 <= int(r[2]) <= 3 and 0.0 <= float(r[3]) <= 100.0
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no epochs logged"):
        theta_sensitivity.main(["--dataset", str(dataset), "--run", str(empty)])


def test_per_target_scores_the_components_that_touch_each_target():
    labels = np.zeros((20, 20), int)
    labels[2:6, 2:6] = 1  # 16 pixels
    labels[12:16, 12:16] = 2
    pred = np.zeros((20, 20), bool)
    pred[2:6, 2:8] = True  # target 1 and 8 pixels more, one component
    pred[0, 19] = True  # a false alarm touching no target
    assert annotation_scale.per_target(pred, labels) == [(16, 16, 24), (16, 0, 16)]
    rows = annotation_scale.bin_rows("m", [(16, 16, 24), (16, 0, 16), (400, 300, 500)])
    assert rows[0] == ["m", "0-50", 2, f"{100 * (16 / 24) / 2:.1f}", "50.0", f"{100 * 16 / 40:.1f}"]
    assert rows[1][:3] == ["m", "200-800", 1] and rows[-1][:3] == ["m", "all", 3]


def test_annotation_scale_table(tmp_path, capsys):
    out = tmp_path / "scale.md"
    assert annotation_scale.main(["--scenes", "3", "--size", "128", "--max-area", "400", "--out", str(out)]) == 0
    text = out.read_text()
    assert capsys.readouterr().out.strip() == text.strip()  # print adds a newline
    assert "| ours | all |" in text and "| ours, windows not grown | all |" in text and "| local threshold | all |" in text
    assert annotation_scale.main(["--scenes", "2", "--size", "96", "--set", "settle_fraction=0"]) == 0
    assert "settle_fraction=0" in capsys.readouterr().out


def test_annotation_elongated_table(tmp_path, capsys):
    out = tmp_path / "bars.md"
    assert annotation_elongated.main(["--seeds", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert capsys.readouterr().out.strip() == text.strip()
    rows = [line for line in text.splitlines() if line.startswith("| 60x6 |")]
    assert len(rows) == 4 and {r.split("|")[2].strip() for r in rows} == {"0", "30", "45"}


def test_annotation_touching_table(tmp_path, capsys):
    """One row per case, each with its target's size and one mask size per seed for ours and the
    local threshold; no mask of ours takes the band (three times the target)."""
    out = tmp_path / "touching.md"
    assert annotation_touching.main(["--seeds", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert capsys.readouterr().out.strip() == text.strip()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line[:3] in ("| 6", "| 1")]
    assert len(rows) == len(annotation_touching.CASES)
    for sigma, gap, band, target, ours, local in rows:
        assert 0 < int(ours) <= 3 * int(target) and int(local) > 0, (sigma, gap, band)


def test_annotation_crowded_table(tmp_path, capsys):
    """One row per frame size, target count and method; every scene holds exactly the asked-for
    targets (their points and 8-connected masks); a count the frame cannot hold apart is refused
    with the generator's reason."""
    s = annotation_crowded.crowded_set(96, 6, 2, seed=1)
    assert len(s.ids) == 2 and all(len(p) == 6 for p in s.points)
    assert all(label(m)[1] == 6 for m in s.masks)
    out = tmp_path / "crowded.md"
    assert annotation_crowded.main(["--scenes", "1", "--targets", "2,6", "--sizes", "96", "--repeats", "1",
                                    "--out", str(out)]) == 0
    text = out.read_text()
    assert capsys.readouterr().out.strip() == text.strip()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| 96x96")]
    assert [(r[0], r[1]) for r in rows] == [("96x96, 2 targets", "ours"), ("96x96, 2 targets", "local threshold"),
                                          ("96x96, 6 targets", "ours"), ("96x96, 6 targets", "local threshold")]
    assert all(0.0 <= float(r[2]) <= 100.0 for r in rows)
    with pytest.raises(SystemExit):
        annotation_crowded.main(["--scenes", "1", "--targets", "500", "--sizes", "64"])
    assert "could not place 500" in capsys.readouterr().err
    wide = annotation_crowded.crowded_set((120, 80), 3, 1, seed=1)  # W x H, as --sizes 120x80
    assert wide.name == "120x80, 3 targets" and wide.images[0].shape == (80, 120)
    with pytest.raises(SystemExit):
        annotation_crowded.main(["--scenes", "1", "--sizes", "96y96"])
    assert "--sizes" in capsys.readouterr().err
    for setting, why in (("no_such_setting=1", "unknown annotator settings"), ("level=2", "level must be")):
        with pytest.raises(SystemExit):  # refused by name before any scene is made
            annotation_crowded.main(["--scenes", "1", "--sizes", "96", "--set", setting])
        assert why in capsys.readouterr().err


def test_annotation_files_table(tmp_path, capsys):
    """One row per synthetic frame size (W x H) and per dataset on disk, with its frame count and
    targets per frame; times positive, the annotation's share within its job's; bad arguments
    refused with their reason."""
    root = write_dataset(tmp_path / "D" / "D", n_images=4, seed=2, height=72, width=72, name="D", n_targets=1)
    out = tmp_path / "files.md"
    assert annotation_files.main(["--sizes", "96,80x64", "--images", "3", "--targets", "2", "--repeats", "1",
                                  "--dataset", f"{root}:all", "--out", str(out)]) == 0
    text = out.read_text()
    assert capsys.readouterr().out.strip() == text.strip()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| frames")]
    assert [(r[0], r[1]) for r in rows] == [("96x96 (synthetic), 3", "2.00"), ("80x64 (synthetic), 3", "2.00"),
                                          ("D all, 4", "1.00")]
    for r in rows:
        annotate, annotation, evaluate = map(float, r[2:5])
        assert 0 < annotation <= annotate and evaluate > 0
    assert [r[5] for r in rows] == ["-", "-", "-"]  # under the 10 frames a stuck-pixel search needs
    assert annotation_files.main(["--sizes", "64", "--images", "10", "--targets", "1", "--repeats", "1"]) == 0
    row = [c.strip() for c in capsys.readouterr().out.strip().splitlines()[-1].strip("|").split("|")]
    assert row[0] == "64x64 (synthetic), 10" and float(row[5]) > 0
    with pytest.raises(SystemExit):
        annotation_files.main(["--dataset", str(tmp_path / "nowhere") + ":all"])
    assert "expected ROOT:SPLIT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        annotation_files.main(["--sizes", ""])
    assert "nothing to time" in capsys.readouterr().err


def test_annotation_datasets_scores_on_known_masks():
    """Pooled precision and recall, and the false-alarm pixels of the worst image, on masks
    whose counts are known: image a has an exact target and a 4-pixel stray blob (false alarm),
    image b a target half found."""
    gt_a = np.zeros((20, 20), bool)
    gt_a[2:5, 2:5] = True
    pred_a = gt_a.copy()
    pred_a[10:12, 10:12] = True
    gt_b = np.zeros((20, 20), bool)
    gt_b[5:9, 5:9] = True
    pred_b = np.zeros((20, 20), bool)
    pred_b[5:9, 5:7] = True
    s = annotation_datasets.EvalSet("t", ["a", "b"], [None, None], [np.zeros((1, 2))] * 2, [gt_a, gt_b])
    r = annotation_datasets.score(s, [pred_a, pred_b], seconds=0.002, worst=2)
    assert r.precision == pytest.approx(100 * (9 + 8) / (13 + 8))
    assert r.recall == pytest.approx(100 * (9 + 8) / (9 + 16))
    assert r.worst == [(4, "a"), (0, "b")]
    assert r.ms == pytest.approx(1.0)  # 2 ms over 2 targets
    # the stray blob touches no target: it is in no target's mask
    right = r.by_mask["about right"]
    assert (right.targets, right.missed, right.extra) == (2, 8, 0)
    assert r.most_missed == [(8, "b", 16, 8), (0, "a", 9, 9)]
    # resamples of the two images: a twice (9 / 13), a and b (17 / 29), b twice (8 / 16), the
    # extremes a quarter of the time each
    assert r.iou == pytest.approx(100 * 17 / 29)
    assert r.iou_interval == pytest.approx((50.0, 100 * 9 / 13))
    assert all(np.isnan(annotation_datasets.iou_interval([], [])))


def test_annotation_datasets_sorts_each_target_by_its_mask():
    """Four targets, one of each mask class: no component touches the first, a 2-pixel one the
    9-pixel second (under half), the third's mask is exact, and the fourth's runs on to 3 times
    its size. Two components touching one target both count as its mask."""
    gt = np.zeros((30, 30), bool)
    pred = np.zeros((30, 30), bool)
    gt[1:4, 1:4] = True  # no mask
    gt[1:4, 10:13] = True
    pred[2, 10:12] = True  # under half: 2 of 9
    gt[10:13, 1:4] = True
    pred[10:13, 1:4] = True  # about right
    gt[20:22, 20:22] = True
    pred[20:22, 20:24] = True
    pred[23, 20:24] = True
    pred[22, 20] = True  # over twice: 4 of the target's and 9 beyond it
    pred[10:12, 20:22] = True  # touches no target
    got = sorted(annotation_datasets.target_errors(pred, gt))
    assert got == sorted([(9, 0, 0, "no mask"), (9, 2, 2, "under half"), (9, 9, 9, "about right"),
                          (4, 13, 4, "over twice")])


def test_bit_hashes_compare(tmp_path, capsys):
    """The same build compares equal with itself; a fingerprint changed in the file shows as that
    case and output, and the exit code says so."""
    mine = tmp_path / "mine.json"
    assert bit_hashes.main(["--out", str(mine)]) == 0
    prints = json.loads(mine.read_text())
    assert len(prints) == 220
    assert bit_hashes.main(["--compare", str(mine)]) == 0
    key = "float32 3x64x64 7 steps 2 threads"
    prints[key][2] = "0" * 40
    other = tmp_path / "other.json"
    other.write_text(json.dumps(prints))
    capsys.readouterr()
    assert bit_hashes.main(["--compare", str(other)]) == 1
    out = capsys.readouterr().out
    assert f"differs: {key}: grad rates" in out and "1 of 220 cases differ" in out


def test_annotation_datasets_hot_pixels():
    """``--hot beside`` sets exactly one 8-neighbour of every point to 1; ``--hot 0.01`` sets that
    share of the pixels; the images are copies (the loaded set's originals stay)."""
    image = np.full((30, 40), 0.2, np.float32)
    points = np.array([[5.0, 6.0], [30.5, 20.2]])
    s = annotation_datasets.EvalSet("t", ["a"], [image], [points], [np.zeros((30, 40), bool)])
    annotation_datasets.add_hot_pixels(s, "beside")
    hot = np.argwhere(s.images[0] == 1.0)
    assert len(hot) == 2 and (image == 0.2).all()
    for (x, y), (r, c) in zip(points, sorted(hot.tolist(), key=lambda rc: rc[1])):
        assert max(abs(r - int(y)), abs(c - int(x))) == 1
    s.images = [image]
    annotation_datasets.add_hot_pixels(s, "0.01")
    assert 1 <= (s.images[0] == 1.0).sum() <= 12  # 12 drawn, with repeats
    with pytest.raises(SystemExit):
        annotation_datasets.main(["--hot", "2", "--synthetic-seeds", ""])


def test_annotation_datasets_target_offsets_read_masks_against_their_targets():
    """A symmetric blob centred on a pixel, its ground truth drawn one row up and ours centred:
    offsets (-1, 0) and (0, 0); a target under ``OFFSET_SIZES[0]`` pixels is not read, and one
    with no predicted pixel near it has no prediction offset."""
    yy, xx = np.mgrid[:60, :80].astype(np.float64)
    image = 0.1 + 0.8 * np.exp(-((yy - 20) ** 2 + (xx - 30) ** 2) / (2 * 1.5 ** 2))
    image += 0.8 * np.exp(-((yy - 45) ** 2 + (xx - 60) ** 2) / (2 * 1.5 ** 2))
    disc = (yy - 20) ** 2 + (xx - 30) ** 2 <= 3 ** 2
    gt = np.roll(disc, -1, axis=0) | ((np.abs(yy - 45) <= 1) & (np.abs(xx - 60) <= 1))  # a 9-pixel second target
    gt[5, 5] = True  # a one-pixel target: not read
    pred = disc.copy()
    (first, second) = annotation_datasets.target_offsets(np.float32(image), pred, gt)
    # (the blob's far tails lie outside the pixels read: a thousandth of a pixel)
    assert np.allclose(first[0], (-1.0, 0.0), atol=2e-3) and np.allclose(first[1], (0.0, 0.0), atol=2e-3)
    assert np.allclose(second[0], (0.0, 0.0), atol=2e-3) and second[1] is None
    # score reads them where asked (the means over the targets read; ours over those it reached)
    s = annotation_datasets.EvalSet("t", ["a"], [np.float32(image)], [np.zeros((0, 2))], [gt])
    assert annotation_datasets.score(s, [pred], seconds=0.001).offsets is None
    truth, ours = annotation_datasets.score(s, [pred], seconds=0.001, offsets=True).offsets
    assert np.allclose(truth, (-0.5, 0.0), atol=2e-3) and np.allclose(ours, (0.0, 0.0), atol=2e-3)


def test_annotation_datasets_ramp_is_a_plane_across_the_image_range():
    """``--ramp F`` adds a plane, zero at the image's centre, that rises by ``F`` times the image's
    range across its larger side in a seeded direction per image: every 2x2 block's second
    difference is zero, the steepest rise over the larger side is ``F`` times the range, images
    of one set get their own directions, and the same seed draws the same planes."""
    rng = np.random.default_rng(5)
    images = [np.float32(0.2 + 0.5 * rng.random((60, 90))) for _ in range(3)]
    originals = [im.copy() for im in images]
    mask = np.zeros((60, 90), bool)

    def ramped(fraction, seed=0):
        s = annotation_datasets.EvalSet("t", list("abc"), images, [np.zeros((0, 2))] * 3, [mask] * 3)
        annotation_datasets.add_ramp(s, fraction, seed)
        return [np.float64(r) - o for r, o in zip(s.images, images)]

    planes = ramped(0.5)
    for plane, image in zip(planes, images):
        span = float(image.max()) - float(image.min())
        gy, gx = plane[1, 0] - plane[0, 0], plane[0, 1] - plane[0, 0]
        assert np.allclose(plane[1:, 1:] - plane[1:, :-1] - plane[:-1, 1:] + plane[:-1, :-1], 0, atol=1e-5)
        assert abs(np.hypot(gy, gx) * 90 / (0.5 * span) - 1) < 1e-3
        assert abs(plane[29:31, 44:46].mean()) < 1e-5  # zero at the centre
    directions = [np.arctan2(p[1, 0] - p[0, 0], p[0, 1] - p[0, 0]) for p in planes]
    assert len({round(float(d), 3) for d in directions}) == 3
    assert all(np.array_equal(a, b) for a, b in zip(planes, ramped(0.5)))
    assert not np.allclose(planes[0], ramped(0.5, seed=1)[0], atol=1e-4)
    assert all(np.array_equal(i, o) for i, o in zip(images, originals))
    with pytest.raises(SystemExit):
        annotation_datasets.main(["--ramp", "-1", "--synthetic-seeds", ""])


def test_annotation_datasets_shrink_samples_the_same_scene_coarser():
    """``--shrink F``: every image the mean of its F x F blocks (a partial block at the edge
    dropped), a coarse pixel target where half its block or more is, the points at the coarse
    targets' centroids; a target no coarse pixel keeps loses its point; a factor below 1 is
    refused."""
    H, W, F = 13, 17, 2  # an odd size: the last row and column are dropped
    rng = np.random.default_rng(3)
    image = np.float32(rng.random((H, W)))
    mask = np.zeros((H, W), bool)
    mask[4:8, 8:12] = True  # four whole blocks
    mask[1, 2] = True  # a quarter of one block: gone
    mask[10:12, 0] = True  # half of one block: kept
    s = annotation_datasets.EvalSet("t", ["a"], [image], [np.zeros((3, 2))], [mask])
    c = annotation_datasets.shrink_set(s, F)
    coarse, m = c.images[0], c.masks[0]
    assert coarse.shape == m.shape == (6, 8) and coarse.dtype == np.float32
    assert np.isclose(coarse[2, 3], image[4:6, 6:8].mean(), atol=1e-6)
    assert np.allclose(coarse, np.float64(image[:12, :16]).reshape(6, 2, 8, 2).mean(axis=(1, 3)), atol=1e-6)
    assert m.sum() == 5 and m[2:4, 4:6].all() and m[5, 0] and not m[0, 1]
    assert sorted(map(tuple, c.points[0])) == [(0.0, 5.0), (4.0, 2.0)]  # floored, as LESPS does
    assert c.name == "t, 2x coarser" and c.ids == ["a"]
    with pytest.raises(SystemExit):
        annotation_datasets.main(["--shrink", "0", "--synthetic-seeds", ""])


def test_annotation_datasets_blur_spreads_each_target_in_place():
    """``--blur SIGMA`` blurs every image by a Gaussian of SIGMA pixels: a point becomes the
    Gaussian (its sum kept, its spread SIGMA in each axis, its centre where it was), the masks and
    points stay as they are, and a negative sigma is refused."""
    image = np.zeros((41, 41), np.float32)
    image[20, 17] = 1.0
    mask = np.zeros((41, 41), bool)
    mask[20, 17] = True
    points = np.array([[17.0, 20.0]])
    s = annotation_datasets.EvalSet("t", ["a"], [image], [points], [mask])
    annotation_datasets.blur_images(s, 1.5)
    out = np.float64(s.images[0])
    ys, xs = np.mgrid[:41, :41]
    assert s.images[0].dtype == np.float32 and abs(out.sum() - 1) < 1e-5
    assert np.isclose((out * ys).sum(), 20, atol=1e-4) and np.isclose((out * xs).sum(), 17, atol=1e-4)
    assert np.isclose(np.sqrt((out * (xs - 17) ** 2).sum()), 1.5, atol=0.01)
    assert s.masks[0] is mask and s.points[0] is points
    with pytest.raises(SystemExit):
        annotation_datasets.main(["--blur", "-1", "--synthetic-seeds", ""])


def test_annotation_datasets_smear_spreads_each_target_along_its_row():
    """``--smear L`` averages every image over L pixels along its rows: a point becomes a run of
    L pixels of 1 / L on its own row, centred where it was; masks and points stay as they are, and
    a negative length is refused."""
    image = np.zeros((9, 21), np.float32)
    image[4, 10] = 1.0
    points = np.array([[10.0, 4.0]])
    mask = image > 0
    s = annotation_datasets.EvalSet("t", ["a"], [image], [points], [mask])
    annotation_datasets.smear_images(s, 5)
    out = s.images[0]
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.allclose(out[4, 8:13], 0.2) and np.count_nonzero(out) == 5
    assert s.masks[0] is mask and s.points[0] is points
    with pytest.raises(SystemExit):
        annotation_datasets.main(["--smear", "-1", "--synthetic-seeds", ""])


def test_annotation_datasets_levels_round_every_image_to_its_grey_levels():
    """``--levels N`` rounds every image to N grey levels evenly spaced over [0, 1] (values outside
    it clipped): each pixel moves to its nearest level, at most half a step; fewer than 2 levels
    are refused."""
    rng = np.random.default_rng(0)
    image = np.float32(rng.uniform(-0.1, 1.1, (16, 16)))
    s = annotation_datasets.EvalSet("t", ["a"], [image], [np.zeros((0, 2))], [np.zeros((16, 16), bool)])
    annotation_datasets.quantize_images(s, 5)
    out = np.float64(s.images[0])
    assert s.images[0].dtype == np.float32
    assert set(np.round(out * 4, 6).ravel()) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    assert np.abs(out - np.clip(image, 0, 1)).max() <= 0.125 + 1e-6
    assert out.min() == 0.0 and out.max() == 1.0
    with pytest.raises(SystemExit):
        annotation_datasets.main(["--levels", "1", "--synthetic-seeds", ""])


def test_annotation_datasets_equalize_maps_each_image_as_a_camera_display_does():
    """``--equalize global`` moves each grey level to its rank, written to 8 bits: the order of the
    pixels is kept, about half of them end above 0.5, and a target 10 noise deviations above its
    background is squeezed into the top grey levels with the background's brightest pixels.
    ``--equalize local`` (CLAHE) writes 8 bits too. Masks and points stay as they are, and an
    unknown map is refused."""
    rng = np.random.default_rng(0)
    image = np.float32(np.clip(0.3 + 0.02 * rng.standard_normal((64, 64)), 0, 1))
    image[30:33, 30:33] = 0.5  # 10 deviations above the background
    mask = image > 0.45
    points = np.array([[31.0, 31.0]])
    for how in annotation_datasets.EQUALIZE:
        s = annotation_datasets.EvalSet("t", ["a"], [image.copy()], [points], [mask])
        annotation_datasets.equalize_images(s, how)
        out = np.float64(s.images[0])
        assert s.images[0].dtype == np.float32 and out.shape == image.shape
        assert np.allclose(out * 255, np.round(out * 255)) and 0 <= out.min() and out.max() <= 1
        assert s.masks[0] is mask and s.points[0] is points
        if how == "global":
            order = np.argsort(image.ravel(), kind="stable")
            assert (np.diff(out.ravel()[order]) >= 0).all()
            assert abs((out > 0.5).mean() - 0.5) < 0.02
            background = out[~mask]
            assert out[mask].min() == 1.0 and np.quantile(background, 0.995) >= 0.99
            # before the map the target stood about 0.15 above the background's 99.5th percentile
            assert image[mask].min() - np.quantile(image[~mask], 0.995) > 0.1
    with pytest.raises(ValueError, match="how must be one of"):
        annotation_datasets.equalize_images(annotation_datasets.EvalSet("t", ["a"], [image], [points], [mask]), "gamma")
    with pytest.raises(SystemExit):
        annotation_datasets.main(["--equalize", "gamma", "--synthetic-seeds", ""])


def test_annotation_datasets_sensor_noise_is_white_per_column_or_per_row_at_the_image_noise():
    """``--noise F`` adds independent noise of ``F`` times the image's own pixel noise; ``--stripes F``
    one offset per column of that size, ``--row-stripes F`` one per row (drawn after the others,
    which it leaves as they were); saturated pixels stay at 1, values stay in [0, 1], the loaded
    images are not changed, and the same seed draws the same noise."""
    rng = np.random.default_rng(3)
    image = np.float32(0.5 + 0.01 * rng.standard_normal((200, 300)))
    image[:20, :20] = 1.0  # a saturated patch
    original = image.copy()
    mask = np.zeros(image.shape, bool)

    def noisy(white, stripes, rows=0.0):
        s = annotation_datasets.EvalSet("t", ["a"], [image], [np.zeros((0, 2))], [mask])
        annotation_datasets.add_sensor_noise(s, white, stripes, row_stripes=rows)
        return s.images[0]

    sd = annotation_datasets.pixel_noise(image)
    assert 0.009 < sd < 0.011
    added = (noisy(2.0, 0.0) - image)[20:]
    assert abs(added.std() / (2 * sd) - 1) < 0.05 and abs(added.mean(axis=0)).max() < 0.8 * sd
    stripes = noisy(0.0, 1.5)
    columns = (stripes - image)[20:]
    assert columns.std(axis=0).max() < 1e-6  # one offset per column
    assert abs(columns[0].std() / (1.5 * sd) - 1) < 0.15
    assert (stripes[:20, :20] == 1.0).all() and (noisy(3.0, 3.0) <= 1.0).all()
    rows = (noisy(0.0, 0.0, 1.5) - image)[:, 20:]
    assert rows.std(axis=1).max() < 1e-6 and abs(rows[:, 0].std() / (1.5 * sd) - 1) < 0.15  # one offset per row
    both = noisy(0.0, 1.5, 1.5) - image
    assert np.allclose((both - (stripes - image))[20:, 20:], rows[20:], atol=1e-6)  # the columns as without rows
    assert np.array_equal(noisy(1.0, 1.0), noisy(1.0, 1.0)) and np.array_equal(image, original)
    with pytest.raises(SystemExit):
        annotation_datasets.main(["--noise", "-1", "--synthetic-seeds", ""])
    with pytest.raises(SystemExit):
        annotation_datasets.main(["--row-stripes", "-1", "--synthetic-seeds", ""])


def test_annotation_datasets_jpeg_round_trip():
    """``--jpeg Q``: every image comes back as float32 in [0, 1] of its size, on the 8-bit grid;
    at quality 100 within a few grey levels of the original, at 30 farther (the blocks), and the
    loaded images are not changed."""
    scene = make_scene(np.random.default_rng(4), 96, 128)
    original = scene.image.copy()

    def trip(q):
        s = annotation_datasets.EvalSet("t", ["a"], [scene.image], [scene.points], [scene.mask])
        annotation_datasets.jpeg_round_trip(s, q)
        return s.images[0]

    best, worst = trip(100), trip(30)
    for out in (best, worst):
        assert out.dtype == np.float32 and out.shape == (96, 128) and 0.0 <= out.min() and out.max() <= 1.0
        assert np.allclose(out * 255, np.round(out * 255), atol=1e-3)
    assert np.abs(best - original).max() <= 4 / 255
    assert np.abs(worst - original).mean() > 2 * np.abs(best - original).mean()
    assert np.array_equal(scene.image, original)
    with pytest.raises(SystemExit):
        annotation_datasets.main(["--jpeg", "101", "--synthetic-seeds", ""])


def test_annotation_datasets_jitter_moves_points_by_whole_pixels_within_reach():
    """``--jitter N``: every point moves by whole pixels, at most ``N`` per axis, stays inside its
    image (a point on the edge too), and the same seed moves it the same way."""
    image = np.zeros((30, 40), np.float32)
    points = np.array([[0.0, 0.0], [20.5, 10.2], [39.0, 29.0]] * 20)
    s = annotation_datasets.EvalSet("t", ["a"], [image], [points], [np.zeros((30, 40), bool)])
    annotation_datasets.jitter_points(s, 2)
    moved = s.points[0]
    step = moved - points
    inner = step[1::3]  # (20.5, 10.2): never cut by the edge
    assert np.allclose(inner, np.round(inner)) and np.abs(inner).max() == 2 and (inner != 0).any(axis=1).sum() > 10
    assert np.abs(step).max() <= 2
    assert (moved >= 0).all() and (moved[:, 0] <= 39).all() and (moved[:, 1] <= 29).all()
    again = annotation_datasets.EvalSet("t", ["a"], [image], [points], [np.zeros((30, 40), bool)])
    annotation_datasets.jitter_points(again, 2)
    assert np.array_equal(again.points[0], moved)
    with pytest.raises(SystemExit):
        annotation_datasets.main(["--jitter", "-1", "--synthetic-seeds", ""])


def test_annotation_datasets_glow_draws_what_reaches_the_fraction_next_to_a_target():
    """``--glow``: a 3x3 target of contrast 1 on a flat background with a glow ring at 0.2 (within
    reach) and a bright pixel 6 away (beyond it) and another beside a second target: at 0.15
    the ring joins its target, the far pixel does not, and each target is measured against its
    own peak and background; at 0.25 nothing is added."""
    image = np.full((40, 40), 0.1, np.float32)
    mask = np.zeros((40, 40), bool)
    image[9:16, 9:16] = 0.1 + 0.2  # the glow: one ring around the target
    image[10:15, 10:15] = 0.1 + 0.2
    image[11:14, 11:14] = 1.1
    mask[11:14, 11:14] = True
    image[12, 19] = 1.1  # 6 pixels off the target: beyond the reach
    image[30:33, 30:33] = 0.6  # a dimmer second target, its own scale
    mask[30:33, 30:33] = True
    image[29, 30] = 0.1 + 0.1  # 0.2 of that target's contrast, joined to it
    got = annotation_datasets.glow_mask(image, mask, 0.15)
    want = mask.copy()
    want[9:16, 9:16] = True
    want[29, 30] = True
    assert np.array_equal(got, want)
    assert np.array_equal(annotation_datasets.glow_mask(image, mask, 0.25), mask)


def test_annotation_datasets_crops_hold_each_point_with_the_crops_own_centroids():
    """``--crop``: one crop per target of each image at least that large, the crop's pixels and
    ground truth cut from the image, the point at least the margin inside wherever the image
    allows, and the points the crop's own targets' centroids: a target the crop cuts gets the
    centroid of the part it keeps. The same seed gives the same crops."""
    rng = np.random.default_rng(0)
    image = rng.random((100, 120)).astype(np.float32)
    mask = np.zeros((100, 120), bool)
    mask[40:45, 50:55] = True  # inside any 32x32 crop that holds its point 8 px in
    mask[2:6, 110:118] = True  # by the top-right corner: the crop there is pinned to the image's corner
    points = np.array([[52.0, 42.0], [113.5, 3.5]])
    small = np.zeros((20, 20), np.float32)
    s = annotation_datasets.EvalSet("t", ["a", "b"], [image, small], [points, points[:1] * 0.1],
                                    [mask, np.zeros((20, 20), bool)])
    c = annotation_datasets.crop_set(s, 32)
    assert c.ids == ["a@0", "a@1"] and c.name == "t, 32x32 crops"
    for crop, m, pts, (x, y) in zip(c.images, c.masks, c.points, points):
        assert crop.shape == m.shape == (32, 32)
        found = [(r, q) for r in range(100 - 31) for q in range(120 - 31)
                 if np.array_equal(image[r:r + 32, q:q + 32], crop)]
        assert len(found) == 1
        y0, x0 = found[0]
        assert np.array_equal(mask[y0:y0 + 32, x0:x0 + 32], m)
        px, py = x - x0, y - y0
        margin = annotation_datasets.CROP_MARGIN
        assert min(px, py) >= min(margin, x, y) and 31 - px >= min(margin, 119 - x) and 31 - py >= min(margin, 99 - y)
        assert np.array_equal(pts, centroid_points(m))
    again = annotation_datasets.crop_set(s, 32)
    assert all(np.array_equal(a, b) for a, b in zip(c.images, again.images))
    with pytest.raises(SystemExit):
        annotation_datasets.main(["--crop", "16", "--synthetic-seeds", ""])


def test_annotation_datasets_end_to_end(dataset, tmp_path, capsys):
    """Every split of every dataset in a folder is a set of its own, ours beside the baseline."""
    data = Path(dataset).parent
    out = tmp_path / "t.md"
    assert annotation_datasets.main(["--data", str(data), "--synthetic-seeds", "", "--out", str(out)]) == 0
    text = out.read_text()
    names = {s.name for s in annotation_datasets.real_sets(data)}
    assert names and all(f"| {n} | ours |" in text and f"| {n} | local threshold |" in text for n in names)
    assert "Worst images" in text


def test_annotation_datasets_against_another_version(dataset, tmp_path):
    """``--against`` runs another annotate.py beside ours in one process: given a copy whose
    default ``low_fraction`` is changed, its rows differ from ours; given an unchanged copy, they
    are the same to the digit (quality does not depend on the interleaving)."""
    data = Path(dataset).parent
    source = (Path(__file__).resolve().parents[1] / "d2d_ext" / "annotate.py").read_text()
    same, other = tmp_path / "same.py", tmp_path / "other.py"
    same.write_text(source)
    assert "low_fraction: float = 0.3" in source
    other.write_text(source.replace("low_fraction: float = 0.3", "low_fraction: float = 0.9"))
    out = tmp_path / "t.md"
    argv = ["--data", str(data), "--synthetic-seeds", "", "--repeats", "2", "--out", str(out)]
    assert annotation_datasets.main(argv + ["--against", str(same), "--against", str(other)]) == 0
    rows = {tuple(line.split(" | ")[:2]): line.split(" | ")[2:-1] for line in out.read_text().splitlines()
            if line.startswith("| ") and " | ours" in line}
    names = {s.name for s in annotation_datasets.real_sets(data)}
    for n in names:
        ours = rows[(f"| {n}", "ours")]
        assert rows[(f"| {n}", "ours at same.py")] == ours
        assert rows[(f"| {n}", "ours at other.py")] != ours


def test_annotation_datasets_reads_settings_as_d2d_annotate_does(tmp_path, capsys):
    """``--settings`` and ``--set`` as ``d2d annotate`` reads them (``--set`` wins, each value as
    its field's type); a file without a "settings" object, or an unknown setting, is refused by
    name before anything is annotated."""
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"settings": {"low_fraction": 0.35, "half_sizes": [6, 8]}}))
    bad.write_text(json.dumps({"low_fraction": 0.35}))
    args = annotation_datasets.argument_parser().parse_args(["--settings", str(good), "--set", "low_fraction=0.4"])
    assert annotation_datasets.read_settings(args) == {"low_fraction": 0.4, "half_sizes": (6, 8)}
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps({"settings": {"band": 8}}))  # the first window (6) inside its own band
    for argv, why in ((["--settings", str(bad)], 'has no "settings" object'),
                      (["--set", "no_such_setting=1"], "unknown annotator settings"),
                      (["--set", "band=0"], "band must be a whole number of pixels >= 1"),
                      (["--settings", str(wide)], "half_sizes must start at band (8)")):
        with pytest.raises(SystemExit):
            annotation_datasets.main(["--synthetic-seeds", "", "--data", str(tmp_path / "none")] + argv)
        assert why in capsys.readouterr().err
    # the settings are checked together: a file's band with --set's windows
    args = annotation_datasets.argument_parser().parse_args(["--settings", str(wide), "--set", "half_sizes=[8,12]"])
    assert annotation_datasets.read_settings(args) == {"band": 8, "half_sizes": (8, 12)}
    # --style: the style's settings under the file's and --set's
    args = annotation_datasets.argument_parser().parse_args(["--style", "glow", "--settings", str(good),
                                                            "--set", "level=0.05"])
    assert annotation_datasets.read_settings(args) == {**STYLES["glow"], "low_fraction": 0.35, "half_sizes": (6, 8),
                                                       "level": 0.05}
    args = annotation_datasets.argument_parser().parse_args(["--style", "glow"])
    assert annotation_datasets.read_settings(args) == STYLES["glow"]


def test_annotation_datasets_saturates_a_block_far_from_every_target():
    """``--saturate SIZE``: one SIZE x SIZE block of each image set to 1, at least 40 pixels from
    every ground-truth target; an image with no such place is left as it is."""
    rng = np.random.default_rng(3)
    s = annotation_datasets.scene_set("scenes", [make_scene(rng, 256, 256, "mixed") for _ in range(3)])
    small = np.zeros((64, 64), bool)
    small[32, 32] = True  # every pixel of a 64x64 image lies within 40 of it
    s.ids.append("small")
    s.images.append(np.full((64, 64), 0.2, np.float32))
    s.points.append(np.array([[32.0, 32.0]]))
    s.masks.append(small)
    before = [im.copy() for im in s.images]
    annotation_datasets.add_saturated_block(s, 11)
    for im, old, mask in zip(s.images[:3], before, s.masks):
        ys, xs = np.nonzero(im != old)
        assert len(ys) <= 121 and ys.max() - ys.min() == 10 and xs.max() - xs.min() == 10
        assert (im[ys.min():ys.max() + 1, xs.min():xs.max() + 1] == 1.0).all()
        assert not (grow(mask, 39) & (im == 1.0)).any()
    assert np.array_equal(s.images[3], before[3])


def test_annotation_datasets_soft_score_against_known_fields():
    """``--soft``'s scores: the pooled soft IoU ``sum y g / sum (y + g - y g)`` and the best single
    threshold, on fields made from the ground truth: the truth itself scores 100 at every
    threshold (the first is kept), the truth at half height 50 and 100 from a threshold at or
    below one half, the truth plus a faint halo of the same area 100 / (1 + 0.2) and 100 at
    thresholds above the halo. The IoU at 0.5 and the squared error (over every pixel, per pixel of
    the truth) read the labels as probabilities. Both styles are scored from one preparation of
    each chunk of images."""
    rng = np.random.default_rng(0)
    scenes = [make_scene(rng, 64, 64, "mixed") for _ in range(3)]
    s = annotation_datasets.scene_set("scenes", scenes)

    class Fields:  # an annotator's prepare / masks_and_soft, the fields made by `field` from the truth
        def __init__(self, field):
            self.field = field

        def prepare(self, images, points):
            return [next(sc.mask > 0 for sc in scenes if sc.image is im) for im in images]

        def masks_and_soft(self, truths, style="field", odds=None):
            return truths, [self.field(g) for g in truths]

    r = annotation_datasets.soft_score(s, Fields(lambda g: g.astype(np.float32)))
    lowest = annotation_datasets.SOFT_THRESHOLDS[0]
    assert r.soft_iou == pytest.approx(100.0) and r.iou == pytest.approx(100.0) and r.threshold == lowest
    assert r.iou_half == pytest.approx(100.0) and r.squared_error == 0.0
    r = annotation_datasets.soft_score(s, Fields(lambda g: 0.5 * g.astype(np.float32)))
    assert r.soft_iou == pytest.approx(50.0) and r.iou == pytest.approx(100.0) and r.threshold == lowest
    assert r.iou_half == pytest.approx(100.0) and r.squared_error == pytest.approx(0.25)
    r = annotation_datasets.soft_score(s, Fields(lambda g: 0.45 * g.astype(np.float32)))
    assert r.iou_half == 0.0 and r.iou == pytest.approx(100.0)

    def halo(g):  # the truth at 1, and as many pixels beside it at 0.2
        ring = np.zeros_like(g)
        ring.flat[np.flatnonzero(~g)[:int(g.sum())]] = True
        return (g + 0.2 * ring).astype(np.float32)

    r = annotation_datasets.soft_score(s, Fields(halo))
    assert r.soft_iou == pytest.approx(100 / 1.2) and r.iou == pytest.approx(100.0) and r.threshold == 0.25
    assert r.squared_error == pytest.approx(0.04)  # 0.2^2 on the halo, as many pixels as the truth

    class Styled(Fields):  # each style its own field; the preparations counted
        prepared = 0

        def prepare(self, images, points):
            Styled.prepared += 1
            return super().prepare(images, points)

        def masks_and_soft(self, truths, style="field", odds=None):
            return truths, [g.astype(np.float32) * (1.0 if style == "mask" else 0.5) for g in truths]

    both = annotation_datasets.soft_scores(s, Styled(None), ("field", "mask"))
    assert Styled.prepared == 1  # one chunk, prepared once for both styles
    assert both["field"].soft_iou == pytest.approx(50.0) and both["mask"].soft_iou == pytest.approx(100.0)


def test_annotation_datasets_reads_theta_by_name(tmp_path, capsys):
    """``--theta NAME=VALUE`` sets a diffusion parameter's centre for ours; an unknown name or a
    value outside its span is refused by name before anything is annotated."""
    args = annotation_datasets.argument_parser().parse_args(["--theta", "beta=6", "--theta", "gamma=0"])
    assert annotation_datasets.read_theta(args) == {"beta": 6.0, "gamma": 0.0}
    for argv, why in ((["--theta", "bogus=1"], "--theta bogus: not a diffusion parameter"),
                      (["--theta", "rho=1.5"], "--theta rho must be a share in [0, 1], got 1.5")):
        with pytest.raises(SystemExit):
            annotation_datasets.main(["--synthetic-seeds", "", "--data", str(tmp_path / "none")] + argv)
        assert why in capsys.readouterr().err


def test_settings_leaveout_chooses_on_the_other_groups_only():
    """A dataset left out is scored under the combination best on the others (by their mean, and
    by their worst), beside the defaults and its own best; the synthetic group is never left out."""
    d, a, b = {"peak_fraction": 0.3}, {"peak_fraction": 0.2}, {"peak_fraction": 0.4}
    scored = [(a, {"X": 90.0, "Y": 50.0, "synthetic": 60.0}),
              (d, {"X": 70.0, "Y": 60.0, "synthetic": 61.0}),
              (b, {"X": 40.0, "Y": 80.0, "synthetic": 40.0})]
    rows = {r.left_out: r for r in settings_leaveout.leave_each_out(scored, d)}
    assert set(rows) == {"X", "Y"}
    x = rows["X"]  # others Y and synthetic: mean a 55, d 60.5, b 60 -> d; worst a 50, d 60, b 40 -> d
    assert x.defaults == 70.0 and x.by_mean == (d, 70.0) and x.by_worst == (d, 70.0) and x.own == (a, 90.0)
    y = rows["Y"]  # others X and synthetic: mean a 75, d 65.5, b 40 -> a; worst a 60, d 61, b 40 -> d
    assert y.by_mean == (a, 50.0) and y.by_worst == (d, 60.0) and y.own == (b, 80.0)
    assert settings_leaveout.group_of("SIRST-v1 test") == "SIRST-v1"
    assert settings_leaveout.group_of("synthetic extended 512, seed 0") == "synthetic"
    assert settings_leaveout.group_scores({"X train": [1, 2], "X test": [3, 4]}) == {"X": 100 * (0.5 + 0.75) / 2}


def test_settings_leaveout_table_and_cache(tmp_path, capsys):
    """Two datasets of a folder: each left out in turn; every combination's counts cached and a
    rerun annotates none; a cache of other sets or of another version of d2d_ext, and a grid
    without the default, are refused."""
    data = tmp_path / "data"
    for name, seed in (("AA", 3), ("BB", 4), ("CC", 5)):
        write_dataset(data / name, n_images=4, seed=seed, height=96, width=96, name=name)
    cache, out = tmp_path / "c.json", tmp_path / "t.md"
    argv = ["--data", str(data), "--datasets", "AA,BB", "--synthetic-seeds", "", "--grid", "peak_fraction=0.3,0.9",
            "--jobs", "1", "--cache", str(cache)]
    assert settings_leaveout.main(argv + ["--out", str(out)]) == 0
    assert "2 of 2 combinations to annotate" in capsys.readouterr().err
    stored = json.loads(cache.read_text())
    assert sorted(stored["sets"]) == ["AA test", "AA train", "BB test", "BB train"] and len(stored["counts"]) == 2
    for counts in stored["counts"].values():
        assert all(0 < inter <= union for inter, union in counts.values())
    text = out.read_text()
    assert "| AA | " in text and "| BB | " in text
    assert settings_leaveout.main(argv) == 0
    assert "0 of 2 combinations to annotate" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a third dataset: the sets are not the cache's
        settings_leaveout.main(["--data", str(data), "--datasets", "AA,BB,CC"] + argv[4:])
    assert "made on other sets" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # scored against another mask style: not the cache's counts
        settings_leaveout.main(argv + ["--glow", "0.15"])
    assert "scored against masks as drawn, this run glow 0.15" in capsys.readouterr().err
    glow_cache = tmp_path / "g.json"
    assert settings_leaveout.main(argv[:-1] + [str(glow_cache), "--glow", "0.15"]) == 0
    glow = json.loads(glow_cache.read_text())
    assert glow["truth"] == "glow 0.15" and glow["counts"].keys() == stored["counts"].keys()
    for key, counts in glow["counts"].items():  # the same masks against truth that takes in each glow
        assert all(counts[n][1] >= stored["counts"][key][n][1] for n in counts)
        assert any(counts[n] != stored["counts"][key][n] for n in counts)
    capsys.readouterr()
    assert stored["annotator"] == settings_leaveout.annotator_digest()
    cache.write_text(json.dumps(dict(stored, annotator="0" * 16)))  # as another version of d2d_ext left it
    with pytest.raises(SystemExit):
        settings_leaveout.main(argv)
    assert "another version of d2d_ext" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        settings_leaveout.main(argv[:6] + ["--grid", "peak_fraction=0.2,0.4", "--cache", str(tmp_path / "d.json")])
    assert "must be one of its values" in capsys.readouterr().err
    for bad in ("no_such_setting=1,2", "peak_fraction=0.3,0..4", "peak_fraction=0.3,1.5"):
        with pytest.raises(SystemExit):
            settings_leaveout.main(argv[:6] + ["--grid", bad, "--cache", str(tmp_path / "d.json")])
        assert f"--grid '{bad}'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one dataset alone leaves nothing to choose on
        settings_leaveout.main(["--data", str(data), "--datasets", "AA", "--synthetic-seeds", "",
                                "--cache", str(tmp_path / "d.json")])
    assert "need a real dataset and at least one more group" in capsys.readouterr().err
    assert not (tmp_path / "d.json").exists()  # refused before anything is annotated or written


def test_probe_sweep_reads_each_probe_as_annotation_datasets_does():
    """A probe is a line of annotation_datasets.py options read by that script's parser; one that
    sets what the sweep sets (settings, data), or one that parser or its checks refuse, is refused
    naming the probe."""
    common = ["--data", "/nonexistent", "--synthetic-seeds", ""]
    args = probe_sweep.probe_args("--zoom 2 --blur 1", common)
    assert args.zoom == 2 and args.blur == 1.0 and args.synthetic_seeds == ""
    assert "sampled 2x finer" in annotation_datasets.probe_description(args)
    assert annotation_datasets.probe_description(probe_sweep.probe_args("", common)) == ""
    described = [annotation_datasets.probe_description(probe_sweep.probe_args(p, common)) for p in probe_sweep.PROBES]
    assert described[0] == "" and all(described[1:])  # every default probe is an option that changes the sets
    for bad, why in (("--set steps=128", "--set is the sweep's"), ("--data /tmp", "--data is the sweep's"),
                     ("--jpeg 500", "--jpeg must be"), ("--no-such-probe", "unrecognized"),
                     ("--zoom two", "invalid int"), ("--blur '1", "quotation")):
        with pytest.raises(ValueError) as e:
            probe_sweep.probe_args(bad, common)
        assert f"--probe {bad!r}" in str(e.value) and why in str(e.value)


def test_noisy_bars_frame_the_picture_unchanged():
    """``--pad N --pad-noise SD`` (:func:`annotation_datasets.pad_set`): the picture as it was, its
    masks and points moved by N, and bars of seeded noise about 0 around it, clipped to [0, 1]:
    no line of them is one value, so :func:`~d2d_ext.picture.picture_box` keeps the whole frame.
    Without --pad it is refused."""
    from d2d_ext.picture import picture_box

    rng = np.random.default_rng(0)
    image = rng.random((20, 30)).astype(np.float32)
    mask = np.zeros((20, 30), bool)
    mask[5:8, 9:12] = True
    one = annotation_datasets.EvalSet("t", ["t"], [image], [np.array([[10.0, 6.0]])], [mask])
    framed = annotation_datasets.pad_set(one, 8, noise=0.01)
    frame = framed.images[0]
    assert frame.shape == (36, 46) and frame.dtype == np.float32
    np.testing.assert_array_equal(frame[8:-8, 8:-8], image)
    np.testing.assert_array_equal(framed.masks[0][8:-8, 8:-8], mask)
    assert framed.masks[0].sum() == mask.sum()
    np.testing.assert_array_equal(framed.points[0], [[18.0, 14.0]])
    bars = np.ones(frame.shape, bool)
    bars[8:-8, 8:-8] = False
    assert frame[bars].min() == 0.0 and 0.0 < frame[bars].max() < 0.1 and 0.003 < frame[bars].std() < 0.01
    assert picture_box(frame, framed.points[0]) == (0, 36, 0, 46)
    np.testing.assert_array_equal(annotation_datasets.pad_set(one, 8, noise=0.01).images[0], frame)  # seeded
    assert picture_box(annotation_datasets.pad_set(one, 8).images[0], framed.points[0]) == (8, 28, 8, 38)
    with pytest.raises(ValueError, match="--pad-noise needs --pad"):
        probe_sweep.probe_args("--pad-noise 0.01", ["--data", "/nonexistent", "--synthetic-seeds", ""])


def test_reticle_crosses_the_middle_and_spares_the_targets():
    """``--reticle W`` (:func:`annotation_datasets.add_reticle`): a row and a column W pixels wide
    through each image's middle set to 1, except over ground-truth target pixels; the rest of the
    image, masks and points as they were. A negative width is refused."""
    rng = np.random.default_rng(1)
    image = (0.5 * rng.random((20, 31))).astype(np.float32)
    mask = np.zeros((20, 31), bool)
    mask[9:12, 3:6] = True  # on the middle row
    one = annotation_datasets.EvalSet("t", ["t"], [image], [np.array([[4.0, 10.0]])], [mask])
    annotation_datasets.add_reticle(one, 2)
    out = one.images[0]
    line = np.zeros((20, 31), bool)
    line[9:11, :] = True
    line[:, 14:16] = True
    assert (out[line & ~mask] == 1.0).all() and line.sum() - (line & mask).sum() == (out == 1.0).sum()
    np.testing.assert_array_equal(out[~line | mask], image[~line | mask])
    assert one.masks[0] is mask and one.points[0].tolist() == [[4.0, 10.0]]
    # with its map repaired, every line pixel holds a value from the image's own range again
    fixed = annotation_datasets.EvalSet("t", ["t"], [image], [np.array([[4.0, 10.0]])], [mask])
    annotation_datasets.add_reticle(fixed, 2, repair=True)
    assert fixed.images[0].max() <= image.max()
    np.testing.assert_array_equal(fixed.images[0][~line], image[~line])
    with pytest.raises(ValueError, match="--reticle must be"):
        probe_sweep.probe_args("--reticle -1", ["--data", "/nonexistent", "--synthetic-seeds", ""])


def test_find_map_repairs_the_sizes_with_enough_frames():
    """``--reticle W --find-map`` (:func:`annotation_datasets.repair_from_found`): the crosshair of
    the 12 frames of one size is found by the search and repaired from its neighbours (the rest of
    each frame as it was); the 3 frames of another size, too few for a map, stay as they are; a
    probe asking for it without --reticle, or with --repair, is refused."""
    rng = np.random.default_rng(2)
    frames = [(0.3 * rng.random((24, 24))).astype(np.float32) for _ in range(12)]
    others = [(0.3 * rng.random((16, 20))).astype(np.float32) for _ in range(3)]
    images = frames + others
    pts = [np.array([[3.0, 3.0]]) for _ in images]
    s = annotation_datasets.EvalSet("t", [str(k) for k in range(15)], images, pts,
                                    [np.zeros(im.shape, bool) for im in images])
    annotation_datasets.add_reticle(s, 1)
    burned = list(s.images)
    found = annotation_datasets.repair_from_found(s)
    line = np.zeros((24, 24), bool)
    line[11, :] = line[:, 11] = True
    assert found == {(24, 24): int(line.sum())}
    for before, after, clean in zip(burned[:12], s.images[:12], frames):
        assert (before[line] == 1.0).all() and after[line].max() <= 0.3
        np.testing.assert_array_equal(after[~line], clean[~line])
    for before, after in zip(burned[12:], s.images[12:]):
        assert after is before
    for probe in ("--find-map", "--reticle 1 --repair --find-map"):
        with pytest.raises(ValueError, match="--find-map needs --reticle"):
            probe_sweep.probe_args(probe, ["--data", "/nonexistent", "--synthetic-seeds", ""])


def test_probe_sweep_names_each_loss_beyond_the_limit():
    """Between two sweeps: every set and probe that fell by more than LOSS, most first, and the
    largest gain; pairs only one sweep holds are passed over."""
    before = {"": {"A": {"iou": 70.0}, "B": {"iou": 60.0}}, "--zoom 2": {"A": {"iou": 50.0}},
              "--blur 1": {"A": {"iou": 40.0}}}
    after = {"": {"A": {"iou": 69.6}, "B": {"iou": 58.0}}, "--zoom 2": {"A": {"iou": 51.0}, "C": {"iou": 0.0}}}
    fell, best = probe_sweep.losses(before, after)
    assert [(round(c, 6), p, s) for c, p, s in fell] == [(-2.0, "", "B")]
    assert best == (1.0, "--zoom 2", "A")
    assert probe_sweep.losses(before, after, limit=0.3)[0][1][1:] == ("", "A")
    assert probe_sweep.losses(before, before) == ([], None)


def test_probe_sweep_table_cache_and_against(dataset, tmp_path, capsys):
    """Each probe's IoU is what annotation_datasets.py prints for that probe; the cache makes a
    rerun sweep nothing and refuses other settings or another version; ``--against`` another
    sweep's cache shows before -> after and names the losses."""
    data = Path(dataset).parent
    argv = ["--data", str(data), "--synthetic-seeds", "", "--probe", "", "--probe", "--jitter 1", "--jobs", "1"]
    first, second, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "t.md"
    assert probe_sweep.main(argv + ["--cache", str(first), "--out", str(out)]) == 0
    assert "2 of 2 probes to sweep" in capsys.readouterr().err
    stored = json.loads(first.read_text())
    assert set(stored["probes"]) == {"", "--jitter 1"} and stored["settings"] == {}
    names = {s.name for s in annotation_datasets.real_sets(data)}
    md = tmp_path / "d.md"
    assert annotation_datasets.main(["--data", str(data), "--synthetic-seeds", "", "--jitter", "1", "--out", str(md)]) == 0
    ours = {line.split(" | ")[0][2:]: [float(v) for v in line.split(" | ")[2:6]] for line in md.read_text().splitlines()
            if line.startswith("| ") and " | ours | " in line}  # IoU, nIoU, Pd, Fa
    assert set(stored["probes"]["--jitter 1"]) == names == set(ours)
    for n in names:
        r = stored["probes"]["--jitter 1"][n]
        assert abs(r["iou"] - ours[n][0]) < 0.006 and abs(r["pd"] - ours[n][2]) < 0.006 and abs(r["fa"] - ours[n][3]) < 0.06
    assert all(f"| `--jitter 1` | {n} | " in out.read_text() for n in names)
    capsys.readouterr()
    assert probe_sweep.main(argv + ["--cache", str(first)]) == 0
    assert "0 of 2 probes to sweep" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        probe_sweep.main(argv + ["--cache", str(first), "--set", "low_fraction=0.9"])
    assert "with other settings" in capsys.readouterr().err
    first.write_text(json.dumps(dict(stored, annotator="0" * 16)))  # as another version of d2d_ext left it
    with pytest.raises(SystemExit):
        probe_sweep.main(argv + ["--cache", str(first)])
    assert "another version of d2d_ext" in capsys.readouterr().err
    first.write_text(json.dumps(stored))
    assert probe_sweep.main(argv + ["--cache", str(second), "--set", "peak_fraction=0.8", "--set", "low_fraction=0.9",
                                    "--against", str(first), "--out", str(out)]) == 0
    text = out.read_text()
    assert all(f"| as they are | {n} | {stored['probes'][''][n]['iou']:.2f} -> " in text for n in names)
    assert "lost more than 0.5 IoU: " in text and "lost more than 0.5 IoU: none" not in text
    capsys.readouterr()
    (tmp_path / "e.json").write_text("{}")
    (tmp_path / "f.json").write_text(json.dumps({"probes": {"": {n: {"iou": 1.0} for n in names}}}))
    for against, why in ((md, "unreadable"), (tmp_path / "e.json", "not a probe_sweep.py cache"),
                         (tmp_path / "f.json", "not a probe_sweep.py cache of this version")):
        with pytest.raises(SystemExit):
            probe_sweep.main(argv + ["--cache", str(tmp_path / "c.json"), "--against", str(against)])
        assert f"--against {against}: {why}" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()  # refused before anything is annotated or written


def test_bad_pixel_search_table(tmp_path, capsys):
    """Synthetic frames only (an empty --data): nothing found on the clean frames, every stuck
    pixel found at each level and every pixel of each crosshair, none falsely."""
    (tmp_path / "data").mkdir()
    assert bad_pixel_search.main(["--data", str(tmp_path / "data"), "--scenes", "12"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| synthetic")]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1:3] == ["12", "0"] and float(cells[3]) < 0.5 and float(cells[4]) < 0.5
    assert cells[5:] == ["37 of 37, 0 false"] * 3 + ["511 of 511, 0 false", "1527 of 1527, 0 false"]


def test_search_paths_file_every_target_once_per_table(capsys, tmp_path):
    """``search_paths.py`` on the synthetic scenes of seed 0 (no real data): in each table every
    target of a set falls on one way, the shares make 100%, the IoUs lie in [0, 100] and the
    lowest never above the mean; the ways are read from the decisions as recorded."""
    out = tmp_path / "paths.md"
    assert search_paths.main(["--data", str(tmp_path / "none"), "--synthetic-seeds", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text().strip() in printed
    sets = {s.name: s.targets for s in annotation_datasets.synthetic_sets([0])}
    tables = out.read_text().split("What the binarisation")
    assert len(tables) == 2
    for table in tables:
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
                if line.startswith("| synthetic")]
        for name, targets in sets.items():
            mine = [r for r in rows if r[0] == name]
            assert sum(int(r[2]) for r in mine) == targets
            assert sum(float(r[3].rstrip("%")) for r in mine) == pytest.approx(100, abs=0.5)
            assert all(0 <= float(r[5]) <= float(r[4]) <= 100 for r in mine)
    taken = [Step("window", 6, 0.3, 9, "accepted"), Step("grow", 8, 0.3, 20, "taken"),
             Step("result", 8, 0.3, 20, "the strict component"),
             Step("binarize", 16, 0.3, 30, "the bright region {I' >= 0.3} at the peak"),
             Step("binarize", 16, 0.3, 7, "a further part, dropped: its end is 0.20 as steep as the strict "
                                          "component's edge (< 0.6)")]
    assert search_paths.search_way(taken) == "accepted at the first fraction, grown"
    assert search_paths.binarize_way(taken) == "kept as the target's part, parts dropped"
    alone = [Step("window", 6, 0.3, 0, "nothing above the threshold"),
             Step("result", 6, 0.9, 1, "no window held a component: the peak alone")]
    assert search_paths.search_way(alone) == "the peak alone"


def test_setup_cost_splits_a_call(capsys):
    """Each shape's row: the 64-step call's time and rate, the steps' rate and the set-up, whose
    share of the call lies in [0, 100%) up to timing noise."""
    assert setup_cost.main(["--shapes", "64x16x16,2x40x40", "--reps", "3"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 64x16x16") or
            line.startswith("| 2x40x40")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1].endswith("G pixel-steps/s)") and cells[2].endswith("G pixel-steps/s")
        assert cells[3].endswith("%)")


def test_annotation_datasets_mosaic_tiles_the_images_into_large_frames():
    """``--mosaic N``: N x N images per frame in the set's order, each at its cell's top-left
    corner with the rest of its cell at its median, its mask and points moved with it; the last
    frame holds what remains (its empty cells at the frame's median), and annotating a frame gives
    each tile the masks its image gives alone where the windows see no other tile. With a gap,
    each image lies that far inside a cell that much larger on every side."""
    rng = np.random.default_rng(1)
    shapes = [(40, 50), (36, 50), (40, 44), (40, 50), (30, 30)]
    images, masks, points = [], [], []
    for k, (h, w) in enumerate(shapes):
        im = (0.2 + 0.01 * rng.random((h, w))).astype(np.float32)
        m = np.zeros((h, w), bool)
        y, x = 14 + k, 20 - k
        m[y - 1:y + 2, x - 1:x + 2] = True
        im[m] = 0.9
        images.append(im)
        masks.append(m)
        points.append(np.array([[float(x), float(y)]]))
    s = annotation_datasets.EvalSet("t", list("abcde"), images, points, masks)
    mo = annotation_datasets.mosaic_set(s, 2)
    assert mo.name == "t, 2x2 mosaics" and mo.ids == ["a..d", "e"]
    frame, mask = mo.images[0], mo.masks[0]
    assert frame.shape == mask.shape == (80, 100) and frame.dtype == np.float32
    for k, (y0, x0) in enumerate([(0, 0), (0, 50), (40, 0), (40, 50)]):
        h, w = shapes[k]
        assert np.array_equal(frame[y0:y0 + h, x0:x0 + w], images[k])
        assert np.array_equal(mask[y0:y0 + h, x0:x0 + w], masks[k])
        cell = frame[y0:y0 + 40, x0:x0 + 50].copy()
        cell[:h, :w] = np.median(images[k])
        assert np.all(cell == np.median(images[k]))  # the rest of the cell at the image's median
        assert np.array_equal(mo.points[0][k], points[k][0] + [x0, y0])
    assert mask.sum() == sum(m.sum() for m in masks[:4])
    assert mo.images[1].shape == (30, 30) and np.array_equal(mo.images[1], images[4])
    three = annotation_datasets.mosaic_set(s, 3)  # a last row of two cells of three
    assert three.ids == ["a..e"] and three.images[0].shape == (80, 150)
    empty = three.images[0][40:, 100:]
    assert np.all(empty == np.median(three.images[0][:40]))
    apart = annotation_datasets.mosaic_set(s, 2, gap=3)
    assert apart.name == "t, 2x2 mosaics, 3 px apart" and apart.images[0].shape == (92, 112)
    for k, (y0, x0) in enumerate([(3, 3), (3, 59), (49, 3), (49, 59)]):
        h, w = shapes[k]
        assert np.array_equal(apart.images[0][y0:y0 + h, x0:x0 + w], images[k])
        assert np.array_equal(apart.masks[0][y0:y0 + h, x0:x0 + w], masks[k])
        assert np.array_equal(apart.points[0][k], points[k][0] + [x0, y0])
        cell = apart.images[0][y0 - 3:y0 + 43, x0 - 3:x0 + 53].copy()
        cell[3:3 + h, 3:3 + w] = np.median(images[k])
        assert np.all(cell == np.median(images[k]))
    alone = Annotator().annotate(s.images[:4], s.points[:4])
    tiled = Annotator().annotate(mo.images[:1], mo.points[:1])[0]
    for k, (y0, x0) in enumerate([(0, 0), (0, 50), (40, 0), (40, 50)]):
        h, w = shapes[k]
        assert np.array_equal(tiled[y0:y0 + h, x0:x0 + w], alone[k])
    with pytest.raises(SystemExit):
        annotation_datasets.main(["--mosaic", "0", "--synthetic-seeds", ""])


def test_annotation_datasets_zoom_samples_the_same_scene_finer():
    """``--zoom F``: a ramp stays the ramp at the fine pixels' centres (bilinear, the edges held),
    every mask pixel becomes an F x F block, and the points lie at the zoomed targets' centroids
    (the LESPS centroid protocol); a factor below 1 is refused."""
    H, W, F = 12, 16, 2
    image = np.float32(np.add.outer(0.01 * np.arange(H), 0.02 * np.arange(W)))
    mask = np.zeros((H, W), bool)
    mask[5:7, 10:12] = True  # a 2x2 target
    mask[1, 2] = True  # a one-pixel target
    s = annotation_datasets.EvalSet("t", ["a"], [image], [np.zeros((2, 2))], [mask])
    z = annotation_datasets.zoom_set(s, F)
    fine, m = z.images[0], z.masks[0]
    assert fine.shape == m.shape == (H * F, W * F) and fine.dtype == np.float32
    ys = np.clip((np.arange(H * F) + 0.5) / F - 0.5, 0, H - 1)
    xs = np.clip((np.arange(W * F) + 0.5) / F - 0.5, 0, W - 1)
    assert np.allclose(fine, np.add.outer(0.01 * ys, 0.02 * xs), atol=1e-6)
    assert m.sum() == F * F * mask.sum() and m[10:14, 20:24].all() and m[2:4, 4:6].all()
    assert sorted(map(tuple, z.points[0])) == [(4.0, 2.0), (21.0, 11.0)]
    assert z.name == "t, zoomed 2x" and z.ids == ["a"]
    with pytest.raises(SystemExit):
        annotation_datasets.main(["--zoom", "0", "--synthetic-seeds", ""])


def test_sampling_agreement_scores_the_finer_masks_against_the_replicated_ones():
    """The masks on images sampled F times finer against the masks on the images as they are,
    each of those pixels an F x F block: the same masks agree wholly; a fine mask one fine row
    short of its replicated block, and an extra fine pixel elsewhere, lose exactly those pixels;
    masks not F times apart are refused, naming the image."""
    coarse = np.zeros((6, 8), bool)
    coarse[2:4, 3:5] = True  # 4 coarse pixels: 16 fine ones at F = 2
    fine = np.kron(coarse, np.ones((2, 2), bool))
    same = annotation_datasets.sampling_agreement(["a"], [coarse], [fine], 2)
    assert (same.iou, same.coarse, same.fine, same.worst) == (100.0, 16, 16, [(0, "a")])
    off = fine.copy()
    off[4] = False  # the block's top fine row: 4 pixels fewer
    off[0, 0] = True
    other = np.zeros_like(coarse)
    a = annotation_datasets.sampling_agreement(["a", "b"], [coarse, other], [off, np.zeros_like(fine)], 2)
    assert a.iou == pytest.approx(100.0 * 12 / 17) and (a.coarse, a.fine) == (16, 13)
    assert a.worst == [(5, "a"), (0, "b")]
    with pytest.raises(ValueError, match="image a"):
        annotation_datasets.sampling_agreement(["a"], [coarse], [fine], 3)


def test_annotation_datasets_zoom_reports_the_agreement_across_sampling(dataset, tmp_path):
    """``--zoom 2`` also prints ours and the local threshold on the finer images against the same
    on the images as they are; a probe that changes the frames' shape (``--crop``) leaves it out."""
    data = Path(dataset).parent
    out = tmp_path / "z.md"
    assert annotation_datasets.main(["--data", str(data), "--synthetic-seeds", "", "--zoom", "2",
                                     "--out", str(out)]) == 0
    text = out.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("- ") and ", zoomed 2x, " in ln and "; " in ln
             and "/" in ln.split(";")[1]]
    names = {s.name for s in annotation_datasets.real_sets(data)}
    assert "Agreement across sampling" in text
    for n in names:
        for method in ("ours", "local threshold"):
            (line,) = [ln for ln in lines if ln.startswith(f"- {n}, zoomed 2x, {method}: ")]
            assert 0.0 <= float(line.split(": ")[1].split(";")[0]) <= 100.0
    assert annotation_datasets.main(["--data", str(data), "--synthetic-seeds", "", "--zoom", "2", "--crop", "32",
                                     "--out", str(out)]) == 0
    assert "Agreement across sampling" not in out.read_text()
