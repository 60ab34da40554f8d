"""What machine a benchmark ran on (for the reports)."""

import os
import platform


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_summary(threads: int) -> str:
    return f"{cpu_model()}, {os.cpu_count()} logical cores (torch threads {threads})"
