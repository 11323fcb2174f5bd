"""Showing the progress of a long run: in the dock widget and in napari's activity panel.

Two costs shape this module. ``QProgressBar.setValue`` repaints synchronously, and in napari's window (an
OpenGL canvas beside the docks) one such repaint takes tens of milliseconds on a small machine, so the docks
use :class:`ProgressLine`, which only schedules a repaint. napari's activity panel bars are QProgressBars, so
:class:`RunProgress` updates them at most a few times a second.

napari's ``cancelable_progress`` only calls its cancel callback while it is being iterated; these runs report
progress by hand from worker events, so :class:`RunProgress` calls it as soon as the user presses cancel.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from napari.utils import cancelable_progress
from qtpy.QtCore import QRectF, QSize, Qt
from qtpy.QtGui import QPainter
from qtpy.QtWidgets import QSizePolicy, QWidget

ACTIVITY_INTERVAL_S = 0.5  # napari's activity bar is refreshed at most this often


class ProgressLine(QWidget):
    """A progress bar with a line of text that never repaints synchronously."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.done = 0.0
        self.total = 0.0
        self.text = ""
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return QSize(200, self.fontMetrics().height() + 8)

    def set_progress(self, done: float, total: float, text: str = "") -> None:
        """Show ``done`` of ``total`` (total 0: no fraction, only the text)."""
        self.done, self.total, self.text = float(done), float(total), text
        self.update()

    def paintEvent(self, event: object) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        palette = self.palette()
        rect = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(palette.color(palette.ColorRole.Mid))
        painter.setBrush(palette.color(palette.ColorRole.Base))
        painter.drawRoundedRect(rect, 3, 3)
        if self.total > 0:
            fraction = min(max(self.done / self.total, 0.0), 1.0)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(palette.color(palette.ColorRole.Highlight))
            painter.drawRoundedRect(QRectF(rect.left(), rect.top(), rect.width() * fraction, rect.height()), 3, 3)
        painter.setPen(palette.color(palette.ColorRole.Text))
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, self.text)
        painter.end()


class RunProgress(cancelable_progress):
    """A manually updated napari activity-panel progress bar whose cancel button stops the run."""

    def __init__(self, description: str, cancel_callback: Callable[[], None] | None = None) -> None:
        super().__init__(desc=description, total=0, cancel_callback=cancel_callback)
        self._first: tuple[float, float] | None = None  # (time, done) of the first report, for the rate
        self._shown = 0.0  # when the activity bar was last updated
        self.done = 0.0
        self.expected = 0.0

    def update_to(self, done: float, total: float) -> None:
        """Record ``done`` of ``total``; the activity bar follows at most every ACTIVITY_INTERVAL_S."""
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, done)
        self.done, self.expected = done, total
        if now - self._shown < ACTIVITY_INTERVAL_S and done < total:
            return
        self._shown = now
        if total and self.total != int(total):
            self.total = int(total)
        self.update(int(done) - self.n)

    def time_left(self) -> float | None:
        """Seconds left at the rate since the first report; None until the rate is known."""
        if self._first is None or not self.expected:
            return None
        first_time, first_done = self._first
        rate = (self.done - first_done) / max(time.perf_counter() - first_time, 1e-9)
        return (self.expected - self.done) / rate if rate > 0 else None

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


def format_seconds(seconds: float) -> str:
    """'4.5 s', '45 s', '3 min 20 s' or '1 h 5 min'."""
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"
