"""What machine a benchmark ran on (for the reports)."""

import os
import platform


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name, family/model numbers and widest vector unit, e.g. ``AMD EPYC
    (family 25, model 1, AVX2)``: virtual machines often hide the generation in the name, and
    the CPU kernels' speed depends on it (the platform's guess where there is no /proc/cpuinfo)."""
    info = _cpuinfo()
    name = info.get("model name")
    if not name:
        return platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}, {isa})"


def cpu_summary(threads: int) -> str:
    return f"{cpu_model()}, {os.cpu_count()} logical cores (torch threads {threads})"
