"""How a long run shows its progress: a live bar on a terminal, log lines elsewhere.

A run reports per stream (`customers`, `invoices`, …): `stream(name, total)`
when it starts one, `advance(name, n)` as objects go by, `finish(name)` at its
end. On a terminal (stderr is a TTY) that is a rich progress display; under a
process manager or cron, where nobody watches a bar, one log line per stream
every `LOG_EVERY_S` seconds with the count and the rate, and one when it ends.
Both are safe to call from several threads.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

log = logging.getLogger("subledger.progress")

LOG_EVERY_S = 10.0
"""Seconds between two log lines of one stream when stderr is not a terminal."""


class ProgressReporter(Protocol):
    def stream(self, name: str, total: int | None = None) -> None:
        """A stream starts (again); `total` when known. Idempotent."""
        ...

    def advance(self, name: str, n: int = 1) -> None:
        """`n` more objects of the stream are done."""
        ...

    def finish(self, name: str) -> None:
        """The stream is done."""
        ...


class NoProgress:
    """Reports nothing (library use, tests)."""

    def stream(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, name: str, n: int = 1) -> None:
        pass

    def finish(self, name: str) -> None:
        pass


class RateColumn(ProgressColumn):
    """Objects per second (rich's own speed column counts bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f}/s" if speed else "", style="progress.data.speed")


class BarProgress:
    """A rich progress bar per stream, on stderr."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def _task(self, name: str, total: int | None = None) -> TaskID:
        with self._lock:
            if name not in self._tasks:
                self._tasks[name] = self.progress.add_task(name, total=total)
            return self._tasks[name]

    def stream(self, name: str, total: int | None = None) -> None:
        task = self._task(name, total)
        if total is not None:
            self.progress.update(task, total=total)

    def advance(self, name: str, n: int = 1) -> None:
        self.progress.advance(self._task(name), n)

    def finish(self, name: str) -> None:
        task = self._task(name)
        completed = self.progress.tasks[self._tasks[name]].completed
        self.progress.update(task, total=completed, completed=completed)


@dataclass
class _Counter:
    started: float
    total: int | None = None
    done: int = 0
    logged_at: float = 0.0
    finished: bool = field(default=False)


class LogProgress:
    """A log line per stream every `every` seconds, with counts and rate."""

    def __init__(
        self,
        logger: logging.Logger = log,
        *,
        every: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every = every
        self._clock = clock
        self._streams: dict[str, _Counter] = {}
        self._lock = threading.Lock()

    def _counter(self, name: str) -> _Counter:
        counter = self._streams.get(name)
        if counter is None:
            now = self._clock()
            counter = self._streams[name] = _Counter(started=now, logged_at=now)
        return counter

    def _line(self, name: str, counter: _Counter, now: float, *, done: bool = False) -> None:
        elapsed = max(now - counter.started, 1e-9)
        of = f"/{counter.total:,}" if counter.total is not None else ""
        state = "done" if done else "running"
        self.logger.info(
            "%s: %s%s %s, %.1f/s, %.0fs elapsed", name, f"{counter.done:,}", of, state, counter.done / elapsed, elapsed
        )
        counter.logged_at = now

    def stream(self, name: str, total: int | None = None) -> None:
        with self._lock:
            counter = self._counter(name)
            if total is not None:
                counter.total = total

    def advance(self, name: str, n: int = 1) -> None:
        with self._lock:
            counter = self._counter(name)
            counter.done += n
            now = self._clock()
            if now - counter.logged_at >= self.every:
                self._line(name, counter, now)

    def finish(self, name: str) -> None:
        with self._lock:
            counter = self._counter(name)
            if not counter.finished:
                counter.finished = True
                self._line(name, counter, self._clock(), done=True)


@contextmanager
def progress_reporter(*, terminal: bool | None = None) -> Iterator[ProgressReporter]:
    """A bar when stderr is a terminal (or `terminal=True`), log lines otherwise."""
    if terminal is None:
        terminal = sys.stderr.isatty()
    if not terminal:
        yield LogProgress()
        return
    columns = (
        SpinnerColumn(finished_text="✓"),
        TextColumn("[progress.description]{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        yield BarProgress(bar)
