"""Progress of long loops that run outside a Trainer (outcome discovery, feature extraction).

Lightning's progress bar covers ``fit``; the router phase spends most of its time before its
fit, in outcome discovery. ``Progress`` reports such a loop as ``rank_zero_info`` lines (the
channel Lightning itself uses for its console messages, so they show in a terminal and in a
SLURM log alike) at a bounded rate: at most one line every ``interval`` seconds, plus the last.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from lightning.pytorch.utilities import rank_zero_info

__all__ = ["Progress"]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """``label: done/total (pct), elapsed, ~remaining`` lines, at most one per ``interval`` s."""

    def __init__(
        self,
        label: str,
        total: int,
        interval: float = 10.0,
        emit: Callable[[str], None] = rank_zero_info,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total, self.interval, self.emit, self.clock = label, total, interval, emit, clock
        self.done = 0
        self.started = self.last = clock()
        self.lines = 0

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = self.clock()
        finished = self.done >= self.total
        if not finished and now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = f", ~{_duration((self.total - self.done) / rate)} left" if rate > 0 and not finished else ""
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        self.emit(
            f"{self.label}: {self.done}/{self.total}{share}, {_duration(elapsed)}{left}{f' [{note}]' if note else ''}"
        )
        self.lines += 1
