"""The command line: annotate (atomic, resumable), evaluate, demo."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from d2d_ext.cli import annotate_dataset, main
from d2d_ext.data import IRDataset, read_gray
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
    assert "other settings" in capsys.readouterr().err


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
