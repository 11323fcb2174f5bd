"""Progress of a long run in napari's activity panel, with an estimate of the time left.

napari's ``cancelable_progress`` only calls its cancel callback while it is being iterated; the runs here
report progress by hand from worker events, so :class:`RunProgress` calls the callback as soon as the user
presses cancel in the activity panel.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from napari.utils import cancelable_progress


class RunProgress(cancelable_progress):
    """A manually updated napari progress bar whose cancel button stops the run."""

    def __init__(self, description: str, cancel_callback: Callable[[], None] | None = None) -> None:
        super().__init__(desc=description, total=0, cancel_callback=cancel_callback)
        self._started = time.perf_counter()
        self._first: tuple[float, float] | None = None  # (time, done) of the first report, for the rate

    def update_to(self, done: float, total: float) -> None:
        """Show ``done`` of ``total`` (the total may change as the run learns its size)."""
        if total and self.total != int(total):
            self.total = int(total)
        if self._first is None:
            self._first = (time.perf_counter(), done)
        self.update(int(done) - self.n)

    def time_left(self) -> float | None:
        """Seconds left at the rate since the first report; None until the rate is known."""
        if self._first is None or not self.total:
            return None
        first_time, first_done = self._first
        rate = (self.n - first_done) / max(time.perf_counter() - first_time, 1e-9)
        return (self.total - self.n) / rate if rate > 0 else None

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


def format_seconds(seconds: float) -> str:
    """'45 s', '3 min 20 s' or '1 h 5 min'."""
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"
