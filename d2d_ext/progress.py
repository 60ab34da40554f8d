"""A plain progress bar on stderr (no dependency)."""

import sys
import time


class Progress:
    """A plain progress bar on stderr (redrawn in place on a terminal, a few lines otherwise)."""

    def __init__(self, total: int, label: str, stream=None):
        self.total, self.label, self.done = max(int(total), 0), label, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.perf_counter()
        self._last_pct = -1

    def update(self, n: int = 1) -> None:
        self.done += n
        pct = 100 * self.done // max(self.total, 1)
        if self.tty:
            width = 30
            fill = width * self.done // max(self.total, 1)
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] "
                              f"{self.done}/{self.total} ({rate:.1f}/s)")
            self.stream.flush()
        elif pct // 25 != self._last_pct // 25 or self.done == self.total:
            self.stream.write(f"{self.label}: {self.done}/{self.total}\n")
            self.stream.flush()
        self._last_pct = pct

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
