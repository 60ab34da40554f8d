"""benchmarks/training/train_summary.py: the seed summary of the equal-budget training comparison."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "training" / "train_summary.py"
spec = importlib.util.spec_from_file_location("train_summary", SCRIPT)
train_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_summary)


def line(mode, seed, seconds, iou):
    metrics = {"iou": iou, "niou": iou + 1, "pd": 90.0, "fa": 10.0, "images": 2, "targets": 2}
    return f"{mode}{'' if seed is None else f' seed {seed}'} {seconds}s {json.dumps(metrics)}\n"


def test_summary_means_ratio_and_paired_differences(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(line("bilevel", None, 100, 50.0) + line("full", None, 120, 60.0) + line("fixed", None, 110, 40.0))
    # seed 1; a later line for the same run replaces the earlier one
    b.write_text(line("bilevel", 1, 100, 1.0) + line("bilevel", 1, 100, 40.0) + line("full", 1, 120, 50.0)
                 + line("fixed", 1, 110, 45.0))
    runs = train_summary.read_results([a, b])
    assert runs[("bilevel", 0)][1]["iou"] == 50.0 and runs[("bilevel", 1)][1]["iou"] == 40.0
    text = train_summary.summarise(runs)
    assert "| bilevel | 0, 1 | 45.00 | 7.07 |" in text
    assert "bi-level mean / full mean on seeds 0, 1: 81.8%" in text  # 45 / 55
    # 50 - 54 and 40 - 45; each interval is the mean -/+ t(1 df) * sd / sqrt(2), t(1 df) = 12.706
    assert "bi-level - 0.9 x full on seeds 0, 1: -4.00, -5.00 (mean -4.50, 95% CI -10.85 to +1.85; above 0 on 0 of 2)" in text
    assert "bi-level - fixed on seeds 0, 1: +10.00, -5.00 (mean +2.50, 95% CI -92.79 to +97.79; above 0 on 1 of 2)" in text


def test_confidence_interval_of_the_mean():
    mu, hw = train_summary.mean_ci95([1.0, 2.0, 3.0])  # sd 1, t(2 df) = 4.303
    assert mu == 2.0 and hw == pytest.approx(4.303 / 3 ** 0.5)
    mu, hw = train_summary.mean_ci95([float(v) for v in range(40)])  # beyond the table: 1.96
    assert hw == pytest.approx(1.96 * train_summary.statistics.stdev(range(40)) / 40 ** 0.5)
    assert train_summary.mean_ci95([5.0])[1] != train_summary.mean_ci95([5.0])[1]  # nan: one value


def test_goals_use_only_the_seeds_both_modes_have(tmp_path):
    p = tmp_path / "r.txt"
    p.write_text(line("bilevel", 0, 100, 50.0) + line("full", 1, 120, 60.0) + line("fixed", 2, 110, 40.0)
                 + line("bilevel", 3, 100, 40.0) + line("full", 3, 120, 50.0))
    text = train_summary.summarise(train_summary.read_results([p]))
    assert "bi-level mean / full mean on seeds 3: 80.0%" in text  # not 45 / 55 over unpaired seeds
    assert "bi-level - fixed" not in text


def test_a_foreign_line_is_refused_with_its_place(tmp_path):
    p = tmp_path / "r.txt"
    p.write_text(line("full", 0, 5, 1.0) + "Traceback (most recent call last):\n")
    with pytest.raises(SystemExit, match="r.txt:2: not a train_modes.sh result line"):
        train_summary.read_results([p])
