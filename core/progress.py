"""A minimal progress bar on stderr for long work (downloads, extraction, quantization)."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO


class Progress:
    """``with Progress("extracting", total_bytes) as bar: bar.update(n)``.

    Draws on a terminal only (at most 10 times a second); elsewhere prints one line at the
    start and one at the end, so logs stay readable.
    """

    def __init__(self, label: str, total: int, unit: str = "B", stream: TextIO | None = None):
        self.label = label
        self.total = max(total, 1)
        self.unit = unit
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = 0.0
        self._start = time.perf_counter()

    def _fmt(self, n: float) -> str:
        if self.unit != "B":
            return f"{n:.0f}"
        return f"{n / 1e6:.1f} MB"

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.tty and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            self.stream.write(
                f"\r{self.label} [{bar:<30}] {frac:6.1%} {self._fmt(self.done)}"
                f" / {self._fmt(self.total)}"
            )
            self.stream.flush()

    def __enter__(self) -> Progress:
        if not self.tty:
            self.stream.write(f"{self.label} ({self._fmt(self.total)})...\n")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        secs = time.perf_counter() - self._start
        end = "done" if exc_type is None else "failed"
        prefix = "\r" if self.tty else ""
        self.stream.write(f"{prefix}{self.label}: {end} in {secs:.1f} s{' ' * 40}\n")
        self.stream.flush()
