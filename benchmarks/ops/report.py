"""Run the benchmarks side by side and print the speed-up table (markdown).

    python benchmarks/ops/report.py [--out FILE.md] [--json FILE.json] [-k EXPR]

Each benchmark group holds our op, its plain-torch reference and that reference under
torch.compile, measured in the same process one after the other; the table gives the medians and
the ratios reference / ours and compiled / ours, and the compiled function's first call apart. On a GPU the
rows of our ops also give the share of the device's binding bandwidth that the median implies
(shared memory for the diffusion forward, DRAM for soft-IoU; the model is in gpu_limits.py).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))  # benchmarks/common: machine
from gpu_limits import peak_bandwidths, share_of_peak  # noqa: E402  (benchmarks/ops/, this script's folder)

HERE = os.path.dirname(os.path.abspath(__file__))


def machine_summary():
    import torch

    from machine import cpu_model

    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"CPU: {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}; "
        f"GPU: {gpu}; torch {torch.__version__}"
    )


def gpu_peaks():
    """The GPU's peak bandwidths (:mod:`gpu_limits`), or None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    needed = ("clock_rate", "memory_clock_rate", "memory_bus_width", "multi_processor_count")
    if not all(hasattr(props, name) for name in needed):  # an older torch: no shares, still the table
        return None
    return peak_bandwidths(props)


def run_benchmarks(json_path, select):
    cmd = [
        sys.executable, "-m", "pytest", HERE, "--benchmark-only", "-q", "-p", "no:cacheprovider",
        f"--benchmark-json={json_path}", "--benchmark-columns=median,rounds",
    ]
    if select:
        cmd += ["-k", select]
    # Run from this folder (benchmarks/ops/) so that the installed d2d_ext is imported, not the source.
    return subprocess.call(cmd, cwd=HERE)


def impl_of(bench) -> str:
    """``"d2d"``, ``"torch-reference"`` or ``"torch-compile"``: the benchmark's ``impl`` parameter."""
    impl = bench.get("params", {}).get("impl")
    if impl is None:  # the id's first field: test_x[torch-compile-case-cpu]
        ident = bench["name"].split("[", 1)[1]
        impl = next((name for name in ("torch-reference", "torch-compile") if ident.startswith(name)), "d2d")
    return impl


def table(data, peaks=None):
    """The markdown table of pytest-benchmark's JSON ``data``; with ``peaks``
    (:func:`gpu_limits.peak_bandwidths`), GPU rows also give the share of the binding bandwidth.
    The torch.compile columns give its median and, apart, its first call (where it compiles)."""
    groups = {}
    for b in data["benchmarks"]:
        groups.setdefault(b["group"], {})[impl_of(b)] = b
    lines = [
        "| benchmark | d2d median | torch reference median | speed-up | torch.compile median (first call) | speed-up vs compile |",
        "|---|---|---|---|---|---|",
    ]
    for group in sorted(groups):
        row = groups[group]
        if "d2d" not in row or "torch-reference" not in row:
            continue
        ours = row["d2d"]["stats"]["median"]
        ref = row["torch-reference"]["stats"]["median"]
        extra = row["d2d"].get("extra_info", {})
        notes = []
        if "pixel_steps" in extra:
            notes.append(f"{extra['pixel_steps'] / ours / 1e9:.2f} G pixel-steps/s")
        if peaks and "traffic" in extra:
            notes.append(share_of_peak(extra["traffic"], ours, peaks))
        rate = f" ({'; '.join(notes)})" if notes else ""
        compiled = "not run | "
        if "torch-compile" in row:
            comp = row["torch-compile"]
            median = comp["stats"]["median"]
            first = comp.get("extra_info", {}).get("first_call_s")
            first = f" ({first:.1f} s)" if first is not None else ""
            compiled = f"{median * 1e3:.2f} ms{first} | {median / ours:.1f}x"
        lines.append(f"| {group} | {ours * 1e3:.2f} ms{rate} | {ref * 1e3:.2f} ms | {ref / ours:.1f}x | {compiled} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--json", help="keep pytest-benchmark's JSON here")
    parser.add_argument("-k", dest="select", help="pytest -k expression to run a subset")
    args = parser.parse_args(argv)
    # absolute: pytest runs in benchmarks/ops/ (run_benchmarks) and writes the file from there
    json_path = os.path.abspath(args.json) if args.json else os.path.join(tempfile.mkdtemp(prefix="d2d-bench-"), "bench.json")
    code = run_benchmarks(json_path, args.select)
    if code != 0:
        print(f"benchmarks failed (pytest exit code {code})", file=sys.stderr)
        return code
    with open(json_path) as f:
        data = json.load(f)
    text = machine_summary() + "\n\n" + table(data, gpu_peaks()) + "\n"
    print()
    print(text)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
