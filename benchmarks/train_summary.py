"""Summarise issue 4's equal-budget comparison over seeds (markdown, from train_modes.sh's output).

    python benchmarks/train_summary.py RUNS/test_results.txt [MORE/test_results.txt ...]

Each line of a ``test_results.txt`` reads ``MODE [seed S] SECONDSs {"iou": ...}`` (a line without
``seed`` is seed 0); a later line for the same mode and seed replaces an earlier one. Prints every
run, then per mode the mean and sample standard deviation of the test IoU over its seeds, and the
two goals: bi-level's mean as a share of full supervision's, and bi-level against each baseline
on the seeds both have.
"""

import argparse
import json
import re
import statistics
import sys

LINE = re.compile(r"^(\w+)(?: seed (\d+))? (\d+)s (\{.*\})\s*$")
ORDER = ("bilevel", "full", "fixed", "naive")  # table order; other modes follow by name


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
        if "full" in iou:
            ratio = statistics.mean(bi.values()) / statistics.mean(iou["full"].values())
            out.append(f"- bi-level mean / full mean: {100 * ratio:.1f}% (goal: at least 90%)")
        for base in ("fixed", "naive"):
            common = sorted(set(bi) & set(iou.get(base, {})))
            if common:
                diffs = [bi[s] - iou[base][s] for s in common]
                wins = sum(d > 0 for d in diffs)
                out.append(f"- bi-level - {base} on seeds {', '.join(map(str, common))}: "
                           + ", ".join(f"{d:+.2f}" for d in diffs)
                           + f" (mean {statistics.mean(diffs):+.2f}; bi-level ahead on {wins} of {len(common)})")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="test_results.txt files written by train_modes.sh")
    args = ap.parse_args(argv)
    print(summarise(read_results(args.results)))


if __name__ == "__main__":
    sys.exit(main())
