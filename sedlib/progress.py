"""Progress of long CLI work: items done / total, elapsed time and ETA.

On a terminal (stderr is a TTY) one line is redrawn in place at most every ``TTY_INTERVAL_S``; otherwise
(Snakemake logs, batch jobs) a log line is written at most every ``LOG_INTERVAL_S``, so short work stays quiet
and a 1-hour file still reports while it runs. Use as an iterator wrapper (``for x in Progress(xs, "resample")``)
or call :meth:`Progress.advance` as work completes and :meth:`Progress.close` at the end (or use ``with``).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
TTY_INTERVAL_S = 0.5  # s between redraws on a terminal
LOG_INTERVAL_S = 30.0  # s between log lines elsewhere


def duration_text(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Reports ``done / total unit`` of ``label`` with elapsed time and ETA (see the module docstring)."""

    def __init__(self, items: Iterable[T] | None = None, label: str = "", total: float | None = None,
                 unit: str = "files", tty: bool | None = None, interval_s: float | None = None):  # fmt: skip
        self.items = items
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        self.total = total
        self.label, self.unit, self.done = label, unit, 0
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.interval_s = interval_s if interval_s is not None else (TTY_INTERVAL_S if self.tty else LOG_INTERVAL_S)
        self.started = self.last = time.monotonic()
        self.reported = False

    def __iter__(self) -> Iterator[T]:
        with self:
            for item in self.items:
                yield item
                self.advance()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Final line, only for work that ran long enough to have reported."""
        if self.reported:
            self.report(final=True)

    def text(self) -> str:
        elapsed = time.monotonic() - self.started
        done = f"{self.done:.0f}/{self.total:.0f}" if self.total else f"{self.done:.0f}"
        text = f"{self.label}: {done} {self.unit}"
        if self.total:
            text += f" ({100 * self.done / self.total:.0f} %)"
        text += f", elapsed {duration_text(elapsed)}"
        if self.total and 0 < self.done < self.total:
            text += f", ETA {duration_text(elapsed * (self.total - self.done) / self.done)}"
        return text

    def advance(self, n: float = 1) -> None:
        """Count ``n`` more items done; report when the interval has passed."""
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            self.report()

    def report(self, final: bool = False) -> None:
        self.reported = True
        if self.tty:
            print(f"\r{self.text()}\033[K", end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            log.info(self.text())
