"""The command line: annotate (atomic, resumable), evaluate, demo, and the train options made from
TrainConfig."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from scipy import ndimage

from d2d_ext.annotate import Annotator, AnnotatorConfig
from d2d_ext.cli import main
from d2d_ext.data import IRDataset
from d2d_ext.files import read_gray
from d2d_ext.jobs import annotate_dataset
from d2d_ext.metrics import ISTDMetrics
from d2d_ext.synthetic import write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "SYN", n_images=8, seed=1)


def _last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def test_annotate_writes_binary_masks_and_reports(dataset, tmp_path, capsys):
    out = tmp_path / "masks"
    code = main(["annotate", "--dataset", str(dataset), "--split", "all", "--points", "centroid",
                 "--out", str(out), "--overlay", str(tmp_path / "ov"), "--quiet"])
    assert code == 0
    report = _last_json(capsys.readouterr().out)
    ids = IRDataset(dataset).ids("all")
    assert report["images"] == len(ids) == 8 and report["skipped"] == 0
    assert report["targets"] == sum(len(IRDataset(dataset).points(i, "centroid")) for i in ids)
    assert report["seconds"] > 0 and report["ms_per_target"] == pytest.approx(
        1e3 * report["seconds"] / report["targets"], rel=1e-3)
    for i in ids:
        mask = np.asarray(read_gray(out / f"{i}.png"))
        assert set(np.unique(np.round(mask * 255)).tolist()) <= {0.0, 255.0}
        assert (tmp_path / "ov" / f"{i}.png").is_file()
    assert not list(out.glob(".*.tmp"))


def test_resume_regenerates_only_missing_files_identically(dataset, tmp_path):
    out = tmp_path / "m"
    first = annotate_dataset(dataset, "all", "centroid", out, progress=False)
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    victims = sorted(before)[:3]
    for name in victims:
        (out / name).unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    second = annotate_dataset(dataset, "all", "centroid", out, progress=False)
    assert second["images"] == 3 and second["skipped"] == first["images"] - 3
    after = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert after == before
    for name, t in mtimes.items():  # untouched files were not rewritten
        assert (out / name).stat().st_mtime_ns == t


def test_other_settings_in_the_same_folder_are_refused(dataset, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["annotate", "--dataset", str(dataset), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    code = main(["annotate", "--dataset", str(dataset), "--out", str(out), "--quiet", "--set", "k_sigma=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "config.k_sigma: 2.0 there, 3.0 now" in err


def test_a_choice_is_set_by_its_word(dataset, tmp_path, capsys):
    """``--set destripe=none`` (a bare word) is taken and recorded with the masks; a word that is
    no choice is an error naming the setting, before anything is written."""
    out = tmp_path / "m"
    assert main(["annotate", "--dataset", str(dataset), "--out", str(out), "--quiet", "--set", "destripe=none"]) == 0
    assert json.loads((out / ".d2d-annotate.json").read_text())["config"]["destripe"] == "none"
    capsys.readouterr()
    code = main(["annotate", "--dataset", str(dataset), "--out", str(tmp_path / "n"), "--quiet", "--set", "destripe=diag"])
    err = capsys.readouterr().err
    assert code == 2 and "destripe must be one of" in err and not (tmp_path / "n").exists()
    code = main(["annotate", "--dataset", str(dataset), "--out", str(tmp_path / "n"), "--quiet", "--set", "level=0.1x"])
    assert code == 2 and "cannot parse" in capsys.readouterr().err
    code = main(["annotate", "--dataset", str(dataset), "--out", str(tmp_path / "n"), "--quiet", "--set", "level=high"])
    assert code == 2 and "level must be like its default" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("setting, words", [
    ("band=0", "band must be a whole number of pixels >= 1, got 0"),
    ("peak_fraction=1.5", "peak_fraction must be a fraction of the target's amplitude in (0, 1), got 1.5"),
    ("steps=-3", "steps must be a whole number of diffusion steps >= 0, got -3"),
])
def test_a_setting_out_of_its_range_is_refused_before_anything_is_written(dataset, tmp_path, capsys, setting, words):
    """A number no annotator setting can take (``band`` 0 failed deep in the window search, a
    ``peak_fraction`` above 1 or negative ``steps`` were taken without meaning anything) is an
    error naming the setting, from ``--set`` and from a ``--settings`` file alike."""
    code = main(["annotate", "--dataset", str(dataset), "--out", str(tmp_path / "n"), "--quiet", "--set", setting])
    assert code == 2 and words in capsys.readouterr().err
    name, value = setting.split("=")
    (tmp_path / "s.json").write_text(json.dumps({"settings": {name: float(value)}}))
    code = main(["annotate", "--dataset", str(dataset), "--out", str(tmp_path / "n"), "--quiet",
                 "--settings", str(tmp_path / "s.json")])
    assert code == 2 and f"{name} must be" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("command, option, value, words", [
    ("annotate", "--batch-images", "0", "must be >= 1, got 0"),
    ("annotate", "--threads", "-1", "must be >= 0, got -1"),
    ("annotate", "--seed", "1.5", "'1.5' is not a whole number"),
    ("calibrate", "--masks", "0", "must be >= 1, got 0"),
    ("calibrate", "--seed", "-1", "must be >= 0, got -1"),
    ("find-bad-pixels", "--share", "2", "must be in (0, 1], got 2"),
    ("find-bad-pixels", "--min-frames", "0", "must be >= 1, got 0"),
    ("find-bad-pixels", "--floor", "nan", "'nan' is not a finite number"),
    ("select", "--top", "0", "must be in (0, 1], got 0"),
    ("demo", "--train-epochs", "-1", "must be >= 0, got -1"),
    ("demo", "--images", "1", "must be >= 2, got 1"),
])
def test_a_number_option_out_of_its_span_is_refused_before_anything_is_written(dataset, tmp_path, capsys, command,
                                                                                 option, value, words):
    """``--batch-images 0`` was a traceback deep in the annotation after its folder was made, a
    negative ``--seed`` numpy's error in calibrate, ``--threads -1`` or ``--train-epochs -1``
    were taken; each is now argparse's error naming the option."""
    out = tmp_path / "out"
    needs = {"annotate": ["--dataset", str(dataset), "--out", str(out), "--quiet"],
             "calibrate": ["--dataset", str(dataset), "--masks", "2", "--out", str(out), "--quiet"],
             "find-bad-pixels": ["--dataset", str(dataset), "--out", str(out)],
             "select": ["--run", str(tmp_path), "--out", str(out)],
             "demo": ["--out", str(out), "--quiet"]}[command]
    assert main([command, *needs, option, value]) == 2
    assert f"argument {option}: {words}" in capsys.readouterr().err
    assert not out.exists()


def test_demo_refuses_to_train_on_too_few_images_before_writing(tmp_path, capsys):
    """Half the demo's images train and one of those validates: with fewer than 4 the run failed
    after the dataset was written and annotated."""
    assert main(["demo", "--images", "3", "--out", str(tmp_path / "d"), "--quiet"]) == 2
    assert "training needs --images 4 or more" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_evaluate_matches_the_metrics_module(dataset, tmp_path, capsys):
    out = tmp_path / "m"
    annotate_dataset(dataset, "test", "centroid", out, progress=False)
    assert main(["evaluate", "--dataset", str(dataset), "--split", "test", "--pred", str(out), "--json", "--quiet"]) == 0
    result = _last_json(capsys.readouterr().out)
    ds = IRDataset(dataset)
    metrics = ISTDMetrics()
    for i in ds.ids("test"):
        metrics.update(read_gray(out / f"{i}.png") > 0.5, ds.load_mask(i))
    expected = metrics.compute()
    assert set(result) == {"iou", "niou", "pd", "fa", "images", "targets"}
    for key in ("iou", "niou", "pd", "fa"):
        assert result[key] == pytest.approx(expected[key], abs=1e-3)
    assert result["images"] == len(ds.ids("test"))


def test_evaluate_missing_prediction_names_the_file(dataset, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["evaluate", "--dataset", str(dataset), "--pred", str(tmp_path / "empty"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "prediction not found" in err and str(tmp_path / "empty") in err


def test_point_outside_its_image_stops_and_keeps_what_was_written(dataset, tmp_path, capsys):
    ids = IRDataset(dataset).ids("all")
    csv = tmp_path / "points.csv"
    rows = ["image,x,y"] + [f"{i},10,10" for i in ids[:-1]] + [f"{ids[-1]},999,5"]
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "m"
    code = main(["annotate", "--dataset", str(dataset), "--points", f"csv:{csv}", "--out", str(out),
                 "--quiet", "--batch-images", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert ids[-1] in err and "outside" in err and str(csv) in err
    written = sorted(p.stem for p in out.glob("*.png"))
    assert written == ids[:6]  # the batches before the bad one are complete; nothing half-written
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("large", [True, False])
def test_files_are_read_ahead_in_order_and_a_bad_one_stops_at_its_place(large):
    from d2d_ext.files import DataError
    from d2d_ext.jobs import READ_AHEAD_PIXELS, _read_ahead

    started, threads = [], set()

    def read(k):
        started.append(k)
        threads.add(threading.get_ident())
        if k == 3:
            raise DataError("item 3 is unreadable")
        return 10 * k

    def pixels(_):  # frames large enough to be read in a thread of their own, or not
        return READ_AHEAD_PIXELS if large else READ_AHEAD_PIXELS - 1

    got = []
    with pytest.raises(DataError, match="item 3"):
        for value in _read_ahead(read, list(range(9)), pixels):
            got.append(value)
            assert max(started) <= len(got)  # at most the next item is read while one is held
    assert got == [0, 10, 20]  # every item before the bad one, in order
    assert started == [0, 1, 2, 3]  # nothing past it
    assert (threading.get_ident() in threads, len(threads)) == ((True, 2) if large else (True, 1))
    assert list(_read_ahead(read, [], pixels)) == []


@pytest.mark.parametrize("readers", [2, 1])
def test_frames_are_read_two_at_a_time_in_order(readers):
    from d2d_ext.files import DataError
    from d2d_ext.jobs import _read_all

    threads = set()
    # two readers read two frames at once: the reads of items 1 and 2 meet here, or time out
    both = threading.Barrier(2, timeout=10)

    def read(k):
        threads.add(threading.get_ident())
        if readers == 2 and k in (1, 2):
            both.wait()
        if k == 5:
            raise DataError("item 5 is unreadable")
        return 10 * k

    assert _read_all(read, [0, 1, 2, 3], readers) == [0, 10, 20, 30]
    # the caller alone, or two readers beside it
    assert len(threads) == (2 if readers == 2 else 1) and (threading.get_ident() in threads) == (readers == 1)
    with pytest.raises(DataError, match="item 5"):
        _read_all(read, list(range(9)), readers)
    assert _read_all(read, [], readers) == [] and _read_all(read, [4], readers) == [40]


def test_annotate_reads_the_largest_frames_two_at_a_time_to_the_same_files(tmp_path, monkeypatch):
    """Every frame read by two threads (as frames of a million pixels and more are), a chunk ahead
    (as frames of 65,536 and more): the same mask files; a truncated frame mid-run stops after
    the chunks before it are written, and nothing is half-written."""
    import d2d_ext.jobs

    root = write_dataset(tmp_path / "SYN", n_images=7, seed=4, height=48, width=48)
    annotate_dataset(root, "all", "centroid", tmp_path / "one", progress=False, batch_images=3)
    monkeypatch.setattr(d2d_ext.jobs, "READ_AHEAD_PIXELS", 1)
    monkeypatch.setattr(d2d_ext.jobs, "TWO_READERS_PIXELS", 1)
    annotate_dataset(root, "all", "centroid", tmp_path / "two", progress=False, batch_images=3)
    ids = IRDataset(root).ids("all")
    for i in ids:
        assert (tmp_path / "two" / f"{i}.png").read_bytes() == (tmp_path / "one" / f"{i}.png").read_bytes()
    image = root / "images" / f"{ids[4]}.png"
    image.write_bytes(image.read_bytes()[:-40])
    from d2d_ext.files import DataError
    with pytest.raises(DataError, match=ids[4]):
        annotate_dataset(root, "all", "centroid", tmp_path / "broken", progress=False, batch_images=3)
    assert sorted(p.stem for p in (tmp_path / "broken").glob("*.png")) == ids[:3]
    assert not list((tmp_path / "broken").glob(".*.tmp"))


def test_module_entry_point_demo_runs(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "d2d_ext", "demo", "--images", "6", "--train-epochs", "2", "--out", str(tmp_path / "d"), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = _last_json(proc.stdout)
    assert result["images"] == 6 and result["targets"] > 0
    assert 0 < result["iou"] <= 100 and result["pd"] >= 50
    assert len(list((tmp_path / "d" / "pseudo_masks").glob("*.png"))) == 6
    assert set(result["detector"]) == {"iou", "niou", "pd", "fa", "images", "targets"}
    assert result["detector"]["images"] == 3  # the test half
    assert (tmp_path / "d" / "run" / "plots" / "curves.png").is_file()


# ---- annotate --soft: the soft labels as 16-bit PNGs ---------------------------------------


def _u16(path):
    from PIL import Image

    with Image.open(path) as img:
        assert img.mode == "I;16", f"{path} has mode {img.mode}"
        return np.asarray(img)


def _prepared(dataset, i, config=None):
    ds = IRDataset(dataset)
    ann = Annotator(config)
    batch = ann.prepare([ds.load_image(i)], [ds.points(i, "centroid")])
    return ann, batch, ann.soft(batch).detach()


def _alone(batch, crops, t):
    """Target ``t``'s crop pasted into its image, every other target's left out."""
    from d2d_ext.annotate import paste_masks

    only = np.zeros_like(crops)
    only[t] = crops[t]
    return paste_masks(batch, only, reduce="max")[batch.image_index[t]]


@pytest.fixture(scope="module")
def soft_run(dataset, tmp_path_factory):
    """``annotate --soft`` over the whole dataset and the same run without it."""
    work = tmp_path_factory.mktemp("soft")
    assert main(["annotate", "--dataset", str(dataset), "--out", str(work / "m"), "--soft", str(work / "s"),
                 "--quiet"]) == 0
    assert main(["annotate", "--dataset", str(dataset), "--out", str(work / "plain"), "--quiet"]) == 0
    return work


def test_soft_labels_are_16_bit_max_combined_fields(dataset, soft_run):
    from d2d_ext.annotate import paste_masks
    from d2d_ext.jobs import soft_png

    ds = IRDataset(dataset)
    for i in ds.ids("all"):
        png = _u16(soft_run / "s" / f"{i}.png")
        assert png.dtype == np.uint16 and png.shape == ds.load_image(i).shape
        # read_gray reads it back as y = value / 65535
        assert np.array_equal(np.round(read_gray(soft_run / "s" / f"{i}.png") * 65535).astype(np.uint16), png)
        _, batch, soft = _prepared(dataset, i)
        crops = soft.numpy()
        assert np.array_equal(png, soft_png(paste_masks(batch, crops, reduce="max")[0]))
        # zero outside every target's field window
        windows = paste_masks(batch, batch.inside.numpy())[0]
        assert not png[~windows].any()
        for t in range(len(batch)):
            field = _alone(batch, crops, t)
            assert (png >= soft_png(field)).all()  # targets combined by maximum
            # each target's field reaches 1 (65535) at its own maximum; the clicked pixel is
            # usually but not always that maximum (the drift may carry the heat to a brighter one)
            assert png.flat[int(np.argmax(field))] == 65535


def test_soft_output_leaves_the_masks_as_they_were(dataset, soft_run):
    for i in IRDataset(dataset).ids("all"):
        assert (soft_run / "m" / f"{i}.png").read_bytes() == (soft_run / "plain" / f"{i}.png").read_bytes()
    assert (json.loads((soft_run / "s" / ".d2d-annotate.json").read_text())
            == json.loads((soft_run / "m" / ".d2d-annotate.json").read_text()))


def _close_pair_dataset(root):
    """One 64x64 image with two bright blobs 8 pixels apart (their field windows overlap)."""
    from d2d_ext.files import write_bytes_atomic, write_png_atomic

    yy, xx = np.mgrid[:64, :64]
    image = 0.2 + 0.02 * np.random.default_rng(0).standard_normal((64, 64))
    clicks = np.zeros((64, 64), np.uint8)
    for cy, cx in ((32, 28), (32, 36)):
        image += 0.6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5 ** 2))
        clicks[cy, cx] = 255
    image8 = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    write_png_atomic(root / "images" / "pair.png", image8)
    write_png_atomic(root / "masks" / "pair.png", (image8 > 120).astype(np.uint8) * 255)
    write_png_atomic(root / "masks_centroid" / "pair.png", clicks)
    write_bytes_atomic(root / "img_idx" / f"test_{root.name}.txt", b"pair\n")
    return root


def test_overlapping_fields_take_the_maximum_not_the_sum(tmp_path):
    from d2d_ext.jobs import soft_png

    root = _close_pair_dataset(tmp_path / "PAIR")
    assert main(["annotate", "--dataset", str(root), "--out", str(tmp_path / "m"), "--soft", str(tmp_path / "s"),
                 "--quiet"]) == 0
    png = _u16(tmp_path / "s" / "pair.png")
    _, batch, soft = _prepared(root, "pair")
    assert len(batch) == 2
    a, b = (_alone(batch, soft.numpy(), t) for t in range(2))
    both = np.minimum(a, b) > 1e-3  # 65 and more in the 16-bit scale
    assert both.sum() >= 5  # the fields overlap ...
    assert np.array_equal(png, soft_png(np.maximum(a, b)))  # ... and are combined by maximum
    assert (png[both] < soft_png(a + b)[both]).any()


def test_rebinarising_from_the_written_soft_labels_gives_the_masks(dataset, tmp_path):
    """The soft PNG is the field the mask's heat gate thresholds: where a target's bright region
    leaks (many do at low_fraction=0.1), the mask beyond its strict component lies where the
    written soft label is >= level (holes filled: the drift leaves dim pixels inside a target with
    little heat), and binarising from the written labels gives the same masks
    (targets whose field windows overlap no other target's; quantisation is far below any change)."""
    from scipy.ndimage import binary_fill_holes, label

    from d2d_ext.annotate import binarize_targets, config_from_dict, crop_maps, paste_masks

    config = config_from_dict({"low_fraction": 0.1})
    assert main(["annotate", "--dataset", str(dataset), "--out", str(tmp_path / "m"), "--soft", str(tmp_path / "s"),
                 "--set", "low_fraction=0.1", "--quiet"]) == 0
    gated = compared = 0
    for i in IRDataset(dataset).ids("all"):
        _, batch, soft = _prepared(dataset, i, config)
        written = crop_maps([read_gray(tmp_path / "s" / f"{i}.png")], batch)
        exact = binarize_targets(batch, soft, config)
        again = binarize_targets(batch, written, config)
        assert np.array_equal(paste_masks(batch, exact)[0], read_gray(tmp_path / "m" / f"{i}.png") > 0.5)
        inside = batch.inside.numpy()
        windows = [_alone(batch, inside.astype(np.float32), t) > 0 for t in range(len(batch))]
        for t in range(len(batch)):
            if any((windows[u] & windows[t]).any() for u in range(len(batch)) if u != t):
                continue
            compared += 1
            assert np.array_equal(again[t], exact[t])
            labels, _ = label((batch.contrast[t].numpy() >= config.low_fraction) & inside[t], np.ones((3, 3)))
            bright = labels == labels[tuple(batch.peak[t])]
            if (bright & batch.ring[t]).any():  # the bright region leaked: the heat gate decided
                beyond = exact[t] & ~batch.strict[t]
                assert not (beyond & ~binary_fill_holes(written[t].numpy() >= config.level)).any()
                gated += int(beyond.any())
    assert compared >= 10 and gated >= 1


def test_one_diffusion_pass_gives_masks_and_soft_labels(dataset, tmp_path, monkeypatch):
    import d2d_ext.annotate

    calls = []
    soft_labels = d2d_ext.annotate.soft_labels

    def counting(batch, theta):
        calls.append(len(batch))
        return soft_labels(batch, theta)

    monkeypatch.setattr(d2d_ext.annotate, "soft_labels", counting)
    annotate_dataset(dataset, "all", "centroid", tmp_path / "a", progress=False)
    without = list(calls)
    calls.clear()
    summary = annotate_dataset(dataset, "all", "centroid", tmp_path / "b", progress=False, soft=tmp_path / "s")
    # with soft labels every target's field is computed once, in the pass that gives the masks
    assert sum(calls) == summary["targets"] and len(calls) <= summary["images"]
    # masks alone compute only the fields that the masks read (the leaking bright regions)
    assert sum(without) < sum(calls)
    written = sorted((tmp_path / "a").glob("*.png"))
    assert len(written) == summary["images"]
    for f in written:
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()


def test_killed_soft_run_resumes_to_identical_files(dataset, soft_run, tmp_path, monkeypatch):
    import d2d_ext.jobs
    from conftest import Killed

    out, soft = tmp_path / "m", tmp_path / "s"
    write_png = d2d_ext.jobs.write_png_atomic
    written = []

    def dying_write(path, array):  # the process dies after 5 files: in the middle of an id's pair
        if len(written) == 5:
            raise Killed
        written.append(path)
        return write_png(path, array)

    monkeypatch.setattr(d2d_ext.jobs, "write_png_atomic", dying_write)
    with pytest.raises(Killed):
        annotate_dataset(dataset, "all", "centroid", out, progress=False, soft=soft)
    monkeypatch.setattr(d2d_ext.jobs, "write_png_atomic", write_png)
    assert len(list(soft.glob("*.png"))) == 3 and len(list(out.glob("*.png"))) == 2  # soft first, then the mask
    kept = {p: p.stat().st_mtime_ns for p in written}
    second = annotate_dataset(dataset, "all", "centroid", out, progress=False, soft=soft)
    ids = IRDataset(dataset).ids("all")
    assert second["images"] == len(ids) - 2 and second["skipped"] == 2
    for folder, reference in ((out, soft_run / "m"), (soft, soft_run / "s")):
        assert sorted(p.name for p in folder.glob("*.png")) == [f"{i}.png" for i in ids]
        for i in ids:
            assert (folder / f"{i}.png").read_bytes() == (reference / f"{i}.png").read_bytes()
        assert not list(folder.glob(".*.tmp"))
    for p, t in kept.items():  # files already complete were not written again
        assert p.stat().st_mtime_ns == t


def test_soft_labels_can_be_added_to_a_finished_folder(dataset, soft_run, tmp_path):
    out = tmp_path / "m"
    annotate_dataset(dataset, "all", "centroid", out, progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    result = annotate_dataset(dataset, "all", "centroid", out, progress=False, soft=tmp_path / "s")
    assert result["images"] == len(mtimes) and result["soft"] == str(tmp_path / "s")
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == mtimes  # masks untouched
    for p in (soft_run / "s").glob("*.png"):
        assert (tmp_path / "s" / p.name).read_bytes() == p.read_bytes()
    (tmp_path / "s" / p.name).unlink()  # one soft label lost: only that image is redone
    again = annotate_dataset(dataset, "all", "centroid", out, progress=False, soft=tmp_path / "s")
    assert again["images"] == 1 and (tmp_path / "s" / p.name).read_bytes() == p.read_bytes()


def test_soft_folder_must_differ_and_match_its_settings(dataset, soft_run, tmp_path, capsys):
    code = main(["annotate", "--dataset", str(dataset), "--out", str(tmp_path / "m"), "--soft", str(tmp_path / "m"),
                 "--quiet"])
    assert code == 2 and "--soft" in capsys.readouterr().err
    code = main(["annotate", "--dataset", str(dataset), "--out", str(tmp_path / "m2"), "--soft", str(soft_run / "s"),
                 "--set", "level=0.2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "other settings" in err and str(soft_run / "s") in err



def test_mask_style_soft_labels_hold_the_masks_at_one_half(dataset, soft_run, tmp_path, capsys):
    """``--soft-style mask``: the written labels are at least 32768 (0.5 read back) exactly on the
    written masks, the masks are those of a run without soft labels, and the soft folder records
    the style: resuming it in the field style, or asking for the style without ``--soft``, is
    refused by name before anything is written."""
    out, soft = tmp_path / "m", tmp_path / "s"
    assert main(["annotate", "--dataset", str(dataset), "--out", str(out), "--soft", str(soft),
                 "--soft-style", "mask", "--quiet"]) == 0
    ds = IRDataset(dataset)
    ann = Annotator()
    for i in ds.ids("all"):
        assert (out / f"{i}.png").read_bytes() == (soft_run / "plain" / f"{i}.png").read_bytes()
        png = _u16(soft / f"{i}.png")
        mask = read_gray(out / f"{i}.png") > 0.5
        assert np.array_equal(png >= 32768, mask) and np.array_equal(read_gray(soft / f"{i}.png") >= 0.5, mask)
        _, odds = ann.masks_and_soft(ann.prepare([ds.load_image(i)], [ds.points(i, "centroid")]), style="mask")
        assert np.array_equal(png, np.round(odds[0] * 65535.0).astype(np.uint16))
    assert json.loads((soft / ".d2d-annotate.json").read_text())["soft_style"] == "mask"
    assert "soft_style" not in json.loads((out / ".d2d-annotate.json").read_text())
    capsys.readouterr()
    before = sorted(p.name for p in soft.iterdir())
    assert main(["annotate", "--dataset", str(dataset), "--out", str(tmp_path / "m2"), "--soft", str(soft),
                 "--quiet"]) == 2
    assert "soft_style" in capsys.readouterr().err and sorted(p.name for p in soft.iterdir()) == before
    assert main(["annotate", "--dataset", str(dataset), "--out", str(tmp_path / "m3"), "--soft-style", "mask",
                 "--quiet"]) == 2
    assert "--soft-style mask needs --soft DIR" in capsys.readouterr().err and not (tmp_path / "m3").exists()


# ------------------------------------------------------------------------------ settings with a few values

BAD_CHOICES = [
    (["train", "--dataset", "D", "--out", "O"], "--model", "unett", ["unet", "dnanet", "alclnet"]),
    (["train", "--dataset", "D", "--out", "O"], "--mode", "semi", ["bilevel", "full", "naive", "fixed"]),
    (["train", "--dataset", "D", "--out", "O"], "--schedule", "step", ["cosine", "constant"]),
    (["train", "--dataset", "D", "--out", "O"], "--meta-loss", "mean", ["per-sample", "pooled"]),
    (["train", "--dataset", "D", "--out", "O"], "--hypergradient", "approx", ["exact", "first-order"]),
    (["train", "--dataset", "D", "--out", "O"], "--select", "val-pd", ["val-loss", "val-iou"]),
    (["train", "--dataset", "D", "--out", "O"], "--points", "centriod", ["centroid", "coarse", "csv:FILE"]),
    (["annotate", "--dataset", "D", "--out", "O"], "--points", "csv:", ["gen-centroid", "gen-coarse"]),
    (["annotate", "--dataset", "D", "--out", "O", "--soft", "S"], "--soft-style", "probability", ["field", "mask"]),
    (["calibrate", "--dataset", "D", "--out", "O", "--masks", "3"], "--points", "points.csv", ["csv:FILE"]),
    (["evaluate", "--dataset", "D", "--pred", "P"], "--pd-match", "closest", ["nearest", "first"]),
    (["test", "--dataset", "D", "--checkpoint", "C"], "--pd-match", "closest", ["nearest", "first"]),
    (["convert-checkpoint", "IN", "OUT"], "--model", "acm", ["dnanet"]),
]


@pytest.mark.parametrize("args, flag, bad, valid", BAD_CHOICES, ids=lambda v: v if isinstance(v, str) else None)
def test_a_value_outside_the_choices_is_an_argparse_error(args, flag, bad, valid, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written anywhere
    assert main(args + [flag, bad]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"error: argument {flag}: invalid" in last and repr(bad) in last
    for name in valid:
        assert name in last
    assert not list(tmp_path.iterdir())


def test_choices_come_from_the_training_settings():
    from d2d_ext.bilevel import HYPERGRADIENTS, META_LOSSES, MODES, SCHEDULES, SELECTIONS, TrainConfig
    from d2d_ext.cli import build_parser
    from d2d_ext.models import MODEL_NAMES

    base = ["train", "--dataset", "D", "--out", "O"]
    defaults = vars(build_parser().parse_args(base))
    for dest, choices in (("model", MODEL_NAMES), ("mode", MODES), ("schedule", SCHEDULES),
                          ("meta_loss", META_LOSSES), ("hypergradient", HYPERGRADIENTS), ("select", SELECTIONS)):
        assert defaults[dest] == getattr(TrainConfig(), dest), dest
        flag = "--" + dest.replace("_", "-")
        for value in choices:  # every value the trainer takes is offered
            assert getattr(build_parser().parse_args(base + [flag, value]), dest) == value
    # model names are read as build_model reads them, whatever the case
    args = build_parser().parse_args(["train", "--dataset", "D", "--out", "O", "--model", "DNANet"])
    assert args.model == "dnanet"
    with pytest.raises(ValueError, match="model must be one of"):
        TrainConfig(model="unett").validate()
    with pytest.raises(ValueError, match="points must be one of"):
        TrainConfig(points="centriod").validate()
    TrainConfig(model="DNANet", points="csv:pts.csv").validate()


# ------------------------------------------------------------------------------ train options from TrainConfig

TRAIN = ["train", "--dataset", "D", "--out", "O"]

# the train options that users' scripts pass: each keeps its name and meaning
EXISTING_TRAIN_FLAGS = {
    "--dataset", "--out", "--resume", "--threads", "--quiet", "--split", "--val-split", "--model", "--points",
    "--epochs", "--mode", "--warmup-epochs", "--theta-every", "--meta-every", "--beta", "--theta-lr",
    "--crop-size", "--batch-size", "--val-batch-size", "--lr", "--schedule", "--seed", "--no-balance",
    "--no-online-labels", "--joint", "--meta-loss", "--hypergradient", "--weight-ema", "--select",
}


def _train_actions() -> dict:
    """``{dest: argparse action}`` of the train command's options."""
    import argparse

    from d2d_ext.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["train"]._actions}


def _config_of(argv, monkeypatch, tmp_path):
    """The TrainConfig that ``d2d train`` builds from ``argv`` (the trainer is stopped before it
    reads anything)."""
    import d2d_ext.bilevel

    class Stop(Exception):
        pass

    seen = {}

    def stopping_trainer(dataset, run, config, **kwargs):
        seen["config"] = config
        raise Stop

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(d2d_ext.bilevel, "Trainer", stopping_trainer)
    with pytest.raises(Stop):
        main(argv)
    return seen["config"]


def test_every_training_setting_has_a_train_option():
    import dataclasses

    from d2d_ext.bilevel import TrainConfig

    actions = _train_actions()
    for spec in dataclasses.fields(TrainConfig):
        assert spec.name in actions, f"TrainConfig.{spec.name} has no train option"
        assert actions[spec.name].option_strings and actions[spec.name].help, spec.name
        assert actions[spec.name].default == spec.default, spec.name  # the default lives in the dataclass
    flags = {flag for action in actions.values() for flag in action.option_strings}
    assert EXISTING_TRAIN_FLAGS <= flags
    assert {"--weight-decay", "--meta-lr", "--inner-lr", "--val-fraction", "--surrogate-steps"} <= flags


def test_no_train_options_give_the_default_settings(monkeypatch, tmp_path):
    from d2d_ext.bilevel import TrainConfig

    assert _config_of(TRAIN, monkeypatch, tmp_path) == TrainConfig()


def test_train_options_arrive_in_the_settings(monkeypatch, tmp_path):
    from d2d_ext.bilevel import TrainConfig

    config = _config_of(TRAIN + [
        "--weight-decay", "0.01", "--meta-lr", "2e-3", "--inner-lr", "0.05", "--val-fraction", "0.3",
        "--surrogate-steps", "6", "--split", "trainval", "--val-split", "test", "--no-balance",
        "--no-online-labels", "--joint", "--model", "DNANet", "--weight-ema", "0.99", "--points", "gen-coarse",
    ], monkeypatch, tmp_path)
    assert config == TrainConfig(weight_decay=0.01, meta_lr=2e-3, inner_lr=0.05, val_fraction=0.3,
                                 surrogate_steps=6, train_split="trainval", val_split="test", balance=False,
                                 online_labels=False, joint=True, model="dnanet", weight_ema=0.99,
                                 points="gen-coarse")


@pytest.mark.parametrize("flag, bad, says", [
    ("--weight-decay", "heavy", "is not a number"),
    ("--meta-lr", "nan", "is not a finite number"),
    ("--inner-lr", "inf", "is not a finite number"),
    ("--val-fraction", "1.5", "val_fraction must be in [0, 1], got 1.5"),
    ("--surrogate-steps", "2.5", "'2.5' is not a whole number"),
    ("--epochs", "many", "'many' is not a whole number"),
    ("--epochs", "-1", "epochs must be >= 0, got -1"),
    ("--lr", "-0.1", "lr must be >= 0, got -0.1"),
])
def test_a_bad_train_value_is_an_argparse_error_naming_its_option(flag, bad, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written anywhere
    assert main(TRAIN + [flag, bad]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("d2d train: error: ") and f"argument {flag}: " in last and says in last
    assert not list(tmp_path.iterdir())


def test_a_misspelt_point_source_claims_no_folder(dataset, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["annotate", "--dataset", str(dataset), "--points", "centriod", "--out", str(out), "--quiet"]) == 2
    assert not out.exists()
    capsys.readouterr()
    assert main(["annotate", "--dataset", str(dataset), "--points", "centroid", "--out", str(out), "--quiet",
                 "--split", "test"]) == 0


# ------------------------------------------------------------------------------ evaluate --threshold --pd-match


@pytest.fixture
def two_targets(tmp_path):
    """One 12x12 image, targets at (5,5) and (5,9) (row, column); the prediction PNG holds 200 at
    (5,7) and 100 at (6,5)."""
    from PIL import Image

    root = tmp_path / "TWO"
    for sub in ("images", "masks", "pred"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.full((12, 12), 50, np.uint8)).save(root / "images" / "a.png")
    gt = np.zeros((12, 12), np.uint8)
    gt[5, 5] = gt[5, 9] = 255
    Image.fromarray(gt).save(root / "masks" / "a.png")
    pred = np.zeros((12, 12), np.uint8)
    pred[5, 7], pred[6, 5] = 200, 100
    Image.fromarray(pred).save(root / "pred" / "a.png")
    return root


@pytest.mark.parametrize("threshold, pd_match, pd, fa", [
    # 0.5: only 200 / 255 = 0.78 counts: (5,7) is 2 px from both targets; the first takes it -> Pd 50
    (0.5, "nearest", 50.0, 0.0),
    (0.5, "first", 50.0, 0.0),
    # 0.3: 100 / 255 = 0.39 counts too. nearest: (5,5) takes (6,5) at 1, (5,9) takes (5,7) -> Pd 100.
    # first: (5,5) takes (5,7), the first label within 3 px; (5,9) has only (6,5), 4.12 away -> Pd 50,
    # and (6,5) is 1 false-alarm pixel of 144: 6944.4444 per million
    (0.3, "nearest", 100.0, 0.0),
    (0.3, "first", 50.0, 6944.4444),
    # 100 / 255 = 0.392 is above 0.39 and not above 0.4: the threshold is in full-scale units
    (0.39, "nearest", 100.0, 0.0),
    (0.4, "nearest", 50.0, 0.0),
])
def test_evaluate_threshold_and_pd_match(two_targets, capsys, threshold, pd_match, pd, fa):
    root = two_targets
    assert main(["evaluate", "--dataset", str(root), "--pred", str(root / "pred"), "--quiet", "--json",
                 "--threshold", str(threshold), "--pd-match", pd_match]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # --json: only the JSON line
    result = json.loads(out[0])
    assert result["pd"] == pd and result["fa"] == fa and result["targets"] == 2


def test_evaluate_threshold_out_of_range_is_an_argparse_error(two_targets, capsys):
    for bad, says in (("1.5", "must be a fraction of the full scale in [0, 1], got 1.5"), ("-0.1", "got -0.1"),
                      ("nan", "'nan' is not a finite number"), ("half", "'half' is not a number")):
        assert main(["evaluate", "--dataset", str(two_targets), "--pred", str(two_targets / "pred"),
                     "--threshold", bad]) == 2
        err = capsys.readouterr().err
        assert "error: argument --threshold" in err and says in err


# ------------------------------------------------------------------------------ convert-checkpoint, test


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("small") / "SMALL", n_images=2, seed=3, height=64, width=64)


def _their_checkpoint(path, image_net_input):
    """A LESPS-style .pth.tar of a random BasicIRSTD DNANet whose final bias puts the 0.5 cut in
    the widest gap between logits near their 70th percentile on ``image_net_input``: the decision
    of no pixel hangs on rounding, and about 30 % of the pixels are target."""
    from basicirstd_dnanet import their_net

    net = their_net(seed=2)
    with torch.no_grad():
        logits = torch.logit(net.model(image_net_input)[-1]).flatten().sort().values
        k = int(0.7 * logits.numel())
        window = logits[k - 50:k + 50]
        gap = int(torch.argmax(window[1:] - window[:-1]))
        net.model.final4.bias -= (window[gap] + window[gap + 1]) / 2
    net = net.float()
    torch.save({"epoch": 400, "state_dict": net.state_dict(), "total_loss": [0.1]}, path)
    return net


def test_converted_checkpoint_is_scored_by_test_as_their_code_scores_it(small_dataset, tmp_path, capsys):
    ds = IRDataset(small_dataset)
    (test_id,) = ds.ids("test")
    image = ds.load_image(test_id)
    mean, std = 100.0, 30.0
    x = torch.from_numpy((255.0 * image.astype(np.float64) - mean) / std)[None, None]
    net = _their_checkpoint(tmp_path / "DNANet_LESPS_centroid.pth.tar", x)
    assert main(["convert-checkpoint", str(tmp_path / "DNANet_LESPS_centroid.pth.tar"), str(tmp_path / "d2d.pt"),
                 "--img-norm", str(mean), str(std)]) == 0
    report = _last_json(capsys.readouterr().out)
    assert report["model"] == "dnanet" and report["model_kwargs"]["resampling"] == "original"
    assert report["input_norm"] == {"mean": mean, "std": std}

    assert main(["test", "--checkpoint", str(tmp_path / "d2d.pt"), "--dataset", str(small_dataset), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    with torch.no_grad():
        theirs = net.model(x.float())[-1][0, 0].numpy()
    assert 0.2 < (theirs > 0.5).mean() < 0.4
    metrics = ISTDMetrics()
    metrics.update(theirs, ds.load_mask(test_id))
    expected = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.compute().items()}
    assert result == expected
    # without --json: the readable line first, the JSON line last
    assert main(["test", "--checkpoint", str(tmp_path / "d2d.pt"), "--dataset", str(small_dataset)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("IoU ") and json.loads(lines[1]) == expected
    # weights only: a run cannot resume from it
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes((tmp_path / "d2d.pt").read_bytes())
    assert main(["train", "--dataset", str(small_dataset), "--val-split", "test", "--out", str(run), "--model",
                 "dnanet", "--resume", "--epochs", "1", "--quiet"]) == 2
    assert "weights only" in capsys.readouterr().err


def test_convert_checkpoint_errors_are_one_line(tmp_path, capsys):
    assert main(["convert-checkpoint", str(tmp_path / "missing.pth"), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: checkpoint not found: {tmp_path / 'missing.pth'}"]
    torch.save({"state_dict": {"model.backbone.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    assert main(["convert-checkpoint", str(tmp_path / "other.pth"), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other.pth" in err[0] and "no backbone nodes" in err[0]
    assert not (tmp_path / "out.pt").exists()


# ------------------------------------------------------------------------------ stuck sensor pixels


def _pooled_iou(reference, folder, ids) -> float:
    """Pooled IoU of the masks ``folder/<id>.png`` against ``reference/<id>.png``."""
    inter = union = 0
    for i in ids:
        a, b = read_gray(reference / f"{i}.png") > 0, read_gray(folder / f"{i}.png") > 0
        inter, union = inter + (a & b).sum(), union + (a | b).sum()
    return inter / union



def _burn(root, ids, pixels) -> None:
    """Sets ``pixels`` ((H, W) bool) to 255 in the 8-bit image files ``ids`` of the dataset at
    ``root``: a sensor's stuck pixels, or a display's overlay, in every frame."""
    from d2d_ext.files import write_png_atomic

    for i in ids:
        img = np.round(read_gray(root / "images" / f"{i}.png") * 255).astype(np.uint8)
        img[pixels] = 255
        write_png_atomic(root / "images" / f"{i}.png", img)


def test_bad_pixel_map_repairs_stuck_pixels_beside_the_points(tmp_path, capsys):
    """A sensor whose stuck pixels lie right beside the targets' points: without the map the points
    snap to them and the masks shrink; with ``--bad-pixels`` the masks are nearly those of the
    clean images. The map is recorded with the masks, and a folder made with it is not mixed
    with masks made without."""
    from d2d_ext.files import write_png_atomic

    clean = write_dataset(tmp_path / "clean" / "SYN", n_images=6, seed=4, height=128, width=128)
    stuck = write_dataset(tmp_path / "stuck" / "SYN", n_images=6, seed=4, height=128, width=128)
    ds = IRDataset(clean)
    ids = ds.ids("all")
    bad = np.zeros((128, 128), bool)
    for i in ids:
        for x, y in ds.points(i, "centroid"):
            bad[int(np.floor(y + 0.5)), min(int(np.floor(x + 0.5)) + 1, 127)] = True
    _burn(stuck, ids, bad)  # the same sensor for every image: every stuck pixel in every image
    write_png_atomic(tmp_path / "bad.png", bad.astype(np.uint8) * 255)

    annotate_dataset(clean, "all", "centroid", tmp_path / "A", progress=False)
    annotate_dataset(stuck, "all", "centroid", tmp_path / "B", progress=False)
    assert main(["annotate", "--dataset", str(stuck), "--out", str(tmp_path / "C"), "--bad-pixels",
                 str(tmp_path / "bad.png"), "--quiet"]) == 0
    without, with_map = (_pooled_iou(tmp_path / "A", tmp_path / f, ids) for f in "BC")
    assert without < 0.7 and with_map > 0.9
    manifest = json.loads((tmp_path / "C" / ".d2d-annotate.json").read_text())
    assert manifest["bad_pixels"]["pixels"] == int(bad.sum())
    capsys.readouterr()
    (tmp_path / "C" / f"{ids[0]}.png").unlink()
    assert main(["annotate", "--dataset", str(stuck), "--out", str(tmp_path / "C"), "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["annotate", "--dataset", str(clean), "--out", str(tmp_path / "D"), "--bad-pixels",
                 str(tmp_path / "nowhere.png"), "--quiet"]) == 2
    assert "nowhere.png" in capsys.readouterr().err


@pytest.mark.parametrize("read_ahead", [False, True])
def test_find_bad_pixels_makes_the_map_that_repairs_them(tmp_path, capsys, monkeypatch, read_ahead):
    """``find-bad-pixels`` on a sensor's frames whose stuck pixels lie beside some of the points
    finds exactly them; ``annotate --bad-pixels`` with its map then gives nearly the clean
    images' masks. A split of several sizes needs ``--size``; too few frames are refused. The
    same with the frames read in a thread of their own (as frames of 1920x1080 are)."""
    import d2d_ext.jobs
    from d2d_ext.files import write_png_atomic

    if read_ahead:
        monkeypatch.setattr(d2d_ext.jobs, "READ_AHEAD_PIXELS", 1)

    clean = write_dataset(tmp_path / "clean" / "SYN", n_images=12, seed=6, height=96, width=96)
    stuck = write_dataset(tmp_path / "stuck" / "SYN", n_images=12, seed=6, height=96, width=96)
    ds = IRDataset(clean)
    ids = ds.ids("all")
    bad = np.zeros((96, 96), bool)
    for i in ids[:4]:  # beside the points of a third of the frames, stuck in all of them
        for x, y in ds.points(i, "centroid"):
            bad[int(np.floor(y + 0.5)), min(int(np.floor(x + 0.5)) + 1, 95)] = True
    _burn(stuck, ids, bad)
    assert main(["find-bad-pixels", "--dataset", str(stuck), "--out", str(tmp_path / "found.png")]) == 0
    result = _last_json(capsys.readouterr().out)
    assert result["frames"] == 12 and result["pixels"] == int(bad.sum()) and result["size"] == [96, 96]
    assert np.array_equal(read_gray(tmp_path / "found.png") > 0, bad)
    assert {(p["x"], p["y"]) for p in result["stuck"]} == {(int(x), int(y)) for y, x in zip(*np.nonzero(bad))}

    annotate_dataset(clean, "all", "centroid", tmp_path / "A", progress=False)
    annotate_dataset(stuck, "all", "centroid", tmp_path / "B", progress=False)
    annotate_dataset(stuck, "all", "centroid", tmp_path / "C", progress=False, bad_pixels=tmp_path / "found.png")
    without, with_map = (_pooled_iou(tmp_path / "A", tmp_path / f, ids) for f in "BC")
    assert without < with_map and with_map > 0.9

    # one frame of another size: the split needs --size; with it, the 12 frames are used
    write_png_atomic(stuck / "images" / "odd.png", np.zeros((40, 50), np.uint8))
    (stuck / "img_idx" / "mixed.txt").write_text("\n".join([*ids, "odd"]) + "\n")
    args = ["find-bad-pixels", "--dataset", str(stuck), "--split", "mixed.txt", "--points", "none"]
    assert main([*args, "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert "96x96 (12)" in err and "50x40 (1)" in err and "--size" in err and not (tmp_path / "m.png").exists()
    assert main([*args, "--size", "96x96", "--out", str(tmp_path / "m.png")]) == 0
    assert _last_json(capsys.readouterr().out)["frames"] == 12
    assert main([*args, "--size", "50x40", "--out", str(tmp_path / "m.png")]) == 2
    assert "1 frame of size 50x40 (WxH), fewer than the 10" in capsys.readouterr().err
    assert main(["find-bad-pixels", "--dataset", str(stuck), "--points", "bogus", "--out", str(tmp_path / "m.png")]) == 2
    assert "invalid point source 'bogus'" in capsys.readouterr().err


def test_find_bad_pixels_finds_an_overlay_burned_in_and_the_map_repairs_it(tmp_path, capsys):
    """Frames grabbed with a display's crosshair burned in at the top of the range, through the
    middle where the targets lie: ``find-bad-pixels`` finds the crosshair (reported as an overlay,
    with its box, and no stuck pixel), and ``annotate --bad-pixels`` with its map gives masks
    nearer the clean frames' than without it."""
    clean = write_dataset(tmp_path / "clean" / "SYN", n_images=12, seed=6, height=96, width=96)
    marked = write_dataset(tmp_path / "marked" / "SYN", n_images=12, seed=6, height=96, width=96)
    ids = IRDataset(clean).ids("all")
    cross = np.zeros((96, 96), bool)
    cross[47, 10:86] = cross[10:86, 47] = True
    _burn(marked, ids, cross)
    assert main(["find-bad-pixels", "--dataset", str(marked), "--out", str(tmp_path / "found.png")]) == 0
    result = _last_json(capsys.readouterr().out)
    assert result["overlay"] == {"pixels": int(cross.sum()), "x": [10, 85], "y": [10, 85]}
    assert result["stuck"] == [] and result["pixels"] == int(cross.sum())
    assert np.array_equal(read_gray(tmp_path / "found.png") > 0, cross)
    assert main(["find-bad-pixels", "--dataset", str(clean), "--out", str(tmp_path / "none.png")]) == 0
    assert _last_json(capsys.readouterr().out)["overlay"] is None

    annotate_dataset(clean, "all", "centroid", tmp_path / "A", progress=False)
    annotate_dataset(marked, "all", "centroid", tmp_path / "B", progress=False)
    annotate_dataset(marked, "all", "centroid", tmp_path / "C", progress=False, bad_pixels=tmp_path / "found.png")
    without, with_map = (_pooled_iou(tmp_path / "A", tmp_path / f, ids) for f in "BC")
    assert without < with_map and with_map > 0.9


def test_explain_prints_each_targets_search_and_refuses_an_unknown_image(tmp_path, capsys):
    """``d2d explain``: per target of each image asked for, its point, peak, strict component and
    mask, and the window search's decisions (as text, and in the JSON line); the masks are those
    ``annotate`` writes with the same settings; an unknown id is named, exit code 2."""
    root = write_dataset(tmp_path / "SYN", n_images=2, seed=3, height=96, width=96)
    ids = IRDataset(root).ids("all")
    assert main(["explain", "--dataset", str(root), "--image", ids[0], "--image", ids[1],
                 "--set", "peak_fraction=0.4"]) == 0
    out = capsys.readouterr().out
    result = _last_json(out)
    assert [im["id"] for im in result["images"]] == ids
    annotate_dataset(root, "all", "centroid", tmp_path / "A", progress=False,
                     annotator=Annotator(AnnotatorConfig(peak_fraction=0.4)))
    for im in result["images"]:
        points = IRDataset(root).points(im["id"], "centroid")
        assert len(im["targets"]) == len(points)
        written = read_gray(tmp_path / "A" / f"{im['id']}.png") > 0
        labels, _ = ndimage.label(written, np.ones((3, 3)))
        for t in im["targets"]:
            x, y = t["peak"]
            assert t["mask"] == int((labels == labels[y, x]).sum()) > 0
            assert t["steps"][0]["fraction"] == 0.4 and t["steps"][-1]["pixels"] == t["mask"]
            assert [st["pixels"] for st in t["steps"] if st["stage"] == "result"] == [t["strict"]]
            assert f"{im['id']} target" in out and t["steps"][-1]["outcome"] in out
    assert main(["explain", "--dataset", str(root), "--image", ids[0], "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1 and _last_json(out)["images"][0]["id"] == ids[0]
    assert main(["explain", "--dataset", str(root), "--image", "nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_find_bad_pixels_writes_a_map_per_sensor_into_a_folder(tmp_path, capsys):
    """A dataset of two sensors (two image sizes), each with stuck pixels of its own, and a third
    size with too few frames: ``--out FOLDER`` writes one map per size with enough frames, and
    ``--bad-pixels FOLDER`` repairs each image from the map of its size, leaving the others as
    they are. A folder of maps with a misnamed map is refused, naming it."""
    from d2d_ext.files import write_png_atomic

    root = tmp_path / "MIX"
    write_dataset(root, n_images=12, seed=7, height=64, width=80, name="A")
    write_dataset(root, n_images=12, seed=8, height=72, width=72, name="B")
    write_png_atomic(root / "images" / "C_0000.png", np.full((40, 50), 30, np.uint8))
    write_png_atomic(root / "masks" / "C_0000.png", np.zeros((40, 50), np.uint8))
    ds = IRDataset(root)
    stuck = {(64, 80): [(10, 20), (50, 70)], (72, 72): [(5, 5), (30, 60), (71, 40)]}
    for i in ds.ids("all"):
        img = np.round(read_gray(root / "images" / f"{i}.png") * 255).astype(np.uint8)
        for y, x in stuck.get(img.shape, []):
            img[y, x] = 255
        write_png_atomic(root / "images" / f"{i}.png", img)
    assert main(["find-bad-pixels", "--dataset", str(root), "--points", "gen-centroid", "--out", str(tmp_path / "maps")]) == 0
    result = _last_json(capsys.readouterr().out)
    assert [m["size"] for m in result["maps"]] == [[72, 72], [80, 64]]
    assert result["skipped"] == [{"size": [50, 40], "frames": 1}]
    for (h, w), pixels in stuck.items():
        found = read_gray(tmp_path / "maps" / f"{w}x{h}.png") > 0
        assert {(int(y), int(x)) for y, x in zip(*np.nonzero(found))} == set(pixels)
    repaired = IRDataset(root, bad_pixels=tmp_path / "maps")
    for i in ["A_0003", "B_0005", "C_0000"]:
        a, b = ds.load_image(i), repaired.load_image(i)
        fixed = np.zeros(a.shape, bool)
        for y, x in stuck.get(a.shape, []):
            fixed[y, x] = True
            assert b[y, x] < a[y, x]
        assert np.array_equal(a[~fixed], b[~fixed])
    record = repaired.bad_pixels_record
    assert record["maps"] == 2 and record["pixels"] == 5
    (tmp_path / "maps" / "72x73.png").write_bytes((tmp_path / "maps" / "72x72.png").read_bytes())
    assert main(["annotate", "--dataset", str(root), "--out", str(tmp_path / "out"), "--bad-pixels",
                 str(tmp_path / "maps"), "--quiet"]) == 2
    assert "72x73.png" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_find_bad_pixels_floor_for_raw_data_of_a_narrow_range(tmp_path, capsys):
    """16-bit frames whose scene spans a few percent of the range (raw data) and a pixel stuck
    0.02 above it: under the default floor (0.05 of the range) it is not called stuck; with
    ``--floor 0.005`` it is, and nothing else. A floor out of [0, 1) is refused."""
    from d2d_ext.files import write_png_atomic

    root = tmp_path / "RAW"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    for k in range(12):
        scene = 0.11 + 0.01 * np.sin(xx / 7.0 + k) * np.cos(yy / 9.0) + rng.normal(0, 0.0004, (48, 48))
        scene[20, 30] += 0.02
        write_png_atomic(root / "images" / f"f{k:02d}.png", np.round(scene * 65535).astype(np.uint16))
    args = ["find-bad-pixels", "--dataset", str(root), "--points", "none", "--out"]
    assert main([*args, str(tmp_path / "a.png")]) == 0
    assert _last_json(capsys.readouterr().out)["pixels"] == 0
    assert main([*args, str(tmp_path / "b.png"), "--floor", "0.005"]) == 0
    assert [(p["x"], p["y"]) for p in _last_json(capsys.readouterr().out)["stuck"]] == [(30, 20)]
    assert main([*args, str(tmp_path / "c.png"), "--floor", "1.5"]) == 2
    assert "--floor" in capsys.readouterr().err and not (tmp_path / "c.png").exists()
