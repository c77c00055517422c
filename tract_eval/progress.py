"""Progress of a run: a live bar on a terminal; in a log file (stderr not a terminal), one plain line
every ``every_samples`` samples or ``every_seconds`` seconds, with the rate and the time left."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator, TextIO


class ProgressLines:
    """Counts finished samples and writes ``label: done/total (pct) rate/s, ETA`` lines now and then."""

    def __init__(self, label: str, total: int, stream: TextIO, every_samples: int = 50, every_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.stream = label, total, stream
        self.every_samples, self.every_seconds, self.clock = every_samples, every_seconds, clock
        self.done = 0
        self.started = self.last_time = clock()
        self.last_done = 0

    def advance(self, k: int = 1) -> None:
        self.done += k
        now = self.clock()
        if self.done >= self.total or self.done - self.last_done >= self.every_samples \
                or now - self.last_time >= self.every_seconds:
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = "–" if left is None else time.strftime("%H:%M:%S", time.gmtime(left))
        pct = 100 * self.done / self.total if self.total else 100.0
        print(f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) {rate:.2f} samples/s, "
              f"elapsed {time.strftime('%H:%M:%S', time.gmtime(elapsed))}, ETA {eta}", file=self.stream, flush=True)
        self.last_time, self.last_done = now, self.done


@contextlib.contextmanager
def progress_reporter(console, label: str, total: int, stream: TextIO | None = None) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(k)``. ``console`` is a rich Console on stderr (quiet: no progress at all)."""
    stream = stream or sys.stderr
    if console.quiet:
        yield lambda k=1: None
    elif not stream.isatty():
        yield ProgressLines(label, total, stream).advance
    else:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("judging", total=total)
            yield lambda k=1: bar.advance(task, k)
            bar.update(task, completed=total)
