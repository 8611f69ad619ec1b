"""The page's progress bar as the engine worker feeds it: which long operation runs, how far, and
whether Cancel applies to it. No `js` here (the AbortController comes in from the worker), so it
is tested on CPython (tests/test_progress_bar.py)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

from ..errors import Cancelled, UsageError

DOWNLOADING = "Downloading"  # (the stage of a model load in which its files arrive)


class Progress:
    """Session.on_progress for the page: `send` gets {"kind": "progress", "what", "fraction",
    "detail", "cancellable"} records, at most one per percent of a bar (and always its start and
    end). During an operation (`cancellable`) each of its stages reports its share of one bar,
    so that bar only moves forward; once the page cancelled it, the operation's next report
    raises errors.Cancelled, which ends it. Other calls running beside it report as they are."""

    def __init__(self, send: Callable[[dict], None]):
        self.send = send
        self.stages: dict[str, tuple[float, float, str]] = {}  # stage -> (start, end, the bar's label)
        self.abort = None  # the operation's AbortController (its downloads watch the signal)
        self.reports: tuple[str, ...] = ()  # the starts of its reports' names
        self._last: tuple[str | None, float] = (None, -1.0)

    @contextmanager
    def cancellable(self, abort, *reports: str, stages: dict[str, tuple[float, float, str]] | None = None):
        """One long operation the page may cancel: `reports` name its progress reports (by their
        start), `stages` map its stages onto one bar."""
        if self.abort is not None:
            raise UsageError("another long operation is running; wait for it or cancel it")
        self.abort, self.reports, self.stages = abort, reports + tuple(stages or ()), dict(stages or {})
        try:
            yield
        finally:
            self.abort, self.reports, self.stages = None, (), {}

    def signal(self):
        """The AbortSignal a fetch made now should follow (None outside an operation)."""
        return None if self.abort is None else self.abort.signal

    def cancel(self) -> bool:
        if self.abort is None:
            return False
        self.abort.abort()
        return True

    def download(self, name: str, done: int, total: int) -> None:
        """A model file's bytes as they arrive (browser.fetch's on_bytes)."""
        self(DOWNLOADING, done / max(1, total), f"{name}: {done / 2**20:,.1f} of {total / 2**20:,.1f} MiB")

    def __call__(self, what: str, fraction: float, detail: str | None = None) -> None:
        mine = self.abort is not None and what.startswith(self.reports)
        if mine and self.abort.signal.aborted:
            raise Cancelled(f"{self.stages[what][2] if what in self.stages else what}: cancelled")
        fraction = min(1.0, max(0.0, fraction))
        if what in self.stages:
            start, end, what = self.stages[what]
            fraction = start + (end - start) * fraction
        elif what == DOWNLOADING:
            return  # (a file read outside a model load: a cached dataset, an adapter)
        last_what, last_fraction = self._last
        if what != last_what or fraction - last_fraction >= 0.01 or fraction in (0.0, 1.0):
            self._last = (what, fraction)
            self.send({"kind": "progress", "what": what, "fraction": fraction, "detail": detail, "cancellable": mine})
