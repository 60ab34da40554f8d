"""Summarise the equal-budget training comparison over seeds (markdown, from train_modes.sh's output).

    python benchmarks/training/train_summary.py RUNS/test_results.txt [MORE/test_results.txt ...]

Each line of a ``test_results.txt`` reads ``MODE [seed S] SECONDSs {"iou": ...}`` (a line without
``seed`` is seed 0); a later line for the same mode and seed replaces an earlier one. Prints every
run, then per mode the mean and sample standard deviation of the test IoU over its seeds, and the
two goals on the seeds both modes have: bi-level's mean as a share of full supervision's, and
bi-level against each baseline. Each goal is also a paired difference per seed (``bilevel - 0.9 * full``,
``bilevel - fixed``), given with a 95% confidence interval from Student's t over the seeds: the
goal holds with that confidence only where the whole interval lies above 0.
"""

import argparse
import json
import math
import re
import statistics
import sys

LINE = re.compile(r"^(\w+)(?: seed (\d+))? (\d+)s (\{.*\})\s*$")
ORDER = ("bilevel", "full", "fixed", "naive")  # table order; other modes follow by name
# Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom 1..30
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)


def read_results(paths):
    """``{(mode, seed): (cpu_seconds, metrics)}`` from ``test_results.txt`` files, in order."""
    runs = {}
    for path in paths:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                m = LINE.match(line)
                if m is None:
                    raise SystemExit(f"{path}:{n}: not a train_modes.sh result line: {line.strip()!r}")
                mode, seed, seconds, metrics = m.groups()
                runs[(mode, int(seed or 0))] = (int(seconds), json.loads(metrics))
    return runs


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean_ci95(values):
    """``(mean, half-width)`` of the 95% confidence interval of the mean (Student's t; the
    half-width is ``nan`` for a single value, 1.96 standard errors beyond 31 values)."""
    mu, sd = mean_std(values)
    n = len(values)
    if n < 2:
        return mu, float("nan")
    t = T975[n - 2] if n - 1 <= len(T975) else 1.960
    return mu, t * sd / n ** 0.5


def paired_line(label, seeds, diffs) -> str:
    """One summary line for the paired differences ``diffs`` over ``seeds``."""
    mu, hw = mean_ci95(diffs)
    ci = "one seed: no interval" if math.isnan(hw) else f"95% CI {mu - hw:+.2f} to {mu + hw:+.2f}"
    return (f"- {label} on seeds {', '.join(map(str, seeds))}: " + ", ".join(f"{d:+.2f}" for d in diffs)
            + f" (mean {mu:+.2f}, {ci}; above 0 on {sum(d > 0 for d in diffs)} of {len(diffs)})")


def summarise(runs) -> str:
    modes = sorted({mode for mode, _ in runs}, key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))
    out = ["| mode | seed | test IoU | nIoU | Pd | Fa (1e-6) | CPU seconds |", "|---|---|---|---|---|---|---|"]
    for mode in modes:
        for seed in sorted(s for m, s in runs if m == mode):
            sec, r = runs[(mode, seed)]
            out.append(f"| {mode} | {seed} | {r['iou']:.2f} | {r['niou']:.2f} | {r['pd']:.2f} | {r['fa']:.1f} | {sec} |")
    out += ["", "| mode | seeds | test IoU mean | std | nIoU mean | CPU seconds mean |", "|---|---|---|---|---|---|"]
    iou = {mode: {s: runs[(m, s)][1]["iou"] for m, s in runs if m == mode} for mode in modes}
    for mode in modes:
        seeds = sorted(iou[mode])
        mu, sd = mean_std([iou[mode][s] for s in seeds])
        niou = statistics.mean(runs[(mode, s)][1]["niou"] for s in seeds)
        sec = statistics.mean(runs[(mode, s)][0] for s in seeds)
        out.append(f"| {mode} | {', '.join(map(str, seeds))} | {mu:.2f} | {sd:.2f} | {niou:.2f} | {sec:.0f} |")
    if "bilevel" in iou:
        out.append("")
        bi = iou["bilevel"]
        common = sorted(set(bi) & set(iou.get("full", {})))
        if common:  # on the seeds both have, so that a hard split counts on both sides
            ratio = statistics.mean(bi[s] for s in common) / statistics.mean(iou["full"][s] for s in common)
            out.append(f"- bi-level mean / full mean on seeds {', '.join(map(str, common))}: {100 * ratio:.1f}% "
                       "(goal: at least 90%)")
            out.append(paired_line("bi-level - 0.9 x full", common, [bi[s] - 0.9 * iou["full"][s] for s in common]))
        for base in ("fixed", "naive"):
            common = sorted(set(bi) & set(iou.get(base, {})))
            if common:
                out.append(paired_line(f"bi-level - {base}", common, [bi[s] - iou[base][s] for s in common]))
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="test_results.txt files written by train_modes.sh")
    args = ap.parse_args(argv)
    print(summarise(read_results(args.results)))


if __name__ == "__main__":
    sys.exit(main())
