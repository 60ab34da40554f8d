"""benchmarks/theta_sensitivity.py and benchmarks/alpha_label_quality.py: the diagnoses of what
bi-level training's two outer levers (theta, the sample weights) can act on."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from d2d_ext.synthetic import write_dataset

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # the scripts import benchmarks/md_table.py, as when run from there


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


theta_sensitivity = load("theta_sensitivity")
alpha_label_quality = load("alpha_label_quality")


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
    # a run that ended with beta at 6 (1 + 0.3 * 0.5): tanh(raw) = 0.5 for beta, 0 elsewhere
    theta = {"D0": 3.2, "beta": 6.9, "rho": 0.84, "alpha": 0.6, "gamma": 4.0, "D0_max": 4.16}
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
