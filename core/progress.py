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

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "B",
        stream: TextIO | None = None,
        enabled: bool = True,
    ):
        self.enabled = enabled  # False: silent (another rank draws it, or the user said so)
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

    def update(self, n: int, note: str = "") -> None:
        """``n`` more units done; ``note`` (e.g. ``loss 2.31``) is shown after the count, with
        the time left at the current rate. Off a terminal, a line every 10 s."""
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        due = now - self._last > (0.1 if self.tty else 10.0) or self.done >= self.total
        if not due or (not self.tty and not note):
            return
        self._last = now
        frac = min(self.done / self.total, 1.0)
        rate = self.done / max(now - self._start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        extra = f" {note} ETA {_clock(eta)}" if note else ""
        if self.tty:
            bar = "#" * int(frac * 30)
            self.stream.write(
                f"\r{self.label} [{bar:<30}] {frac:6.1%} {self._fmt(self.done)}"
                f" / {self._fmt(self.total)}{extra}\033[K"
            )
        else:
            self.stream.write(
                f"{self.label} {self._fmt(self.done)} / {self._fmt(self.total)}{extra}\n"
            )
        self.stream.flush()

    def __enter__(self) -> Progress:
        if self.enabled and not self.tty:
            self.stream.write(f"{self.label} ({self._fmt(self.total)})...\n")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.enabled:
            return
        secs = time.perf_counter() - self._start
        end = "done" if exc_type is None else "failed"
        prefix = "\r" if self.tty else ""
        self.stream.write(f"{prefix}{self.label}: {end} in {secs:.1f} s{' ' * 40}\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    """``1:02:03`` / ``02:03`` for a duration."""
    s = int(seconds + 0.5)
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
