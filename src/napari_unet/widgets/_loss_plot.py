"""A small live plot of training and validation loss and Dice, drawn with QPainter.

matplotlib is not a dependency of the plugin and a vispy canvas is heavy for a few hundred points, so this
widget draws two stacked charts sharing the step axis: loss (training and validation) and validation Dice.
Points are appended from the main thread as training progress arrives; a repaint costs well under a
millisecond.
"""
from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

COLORS = {"loss": QColor(90, 170, 255), "val_loss": QColor(255, 150, 60), "val_dice": QColor(110, 210, 120)}
NAMES = {"loss": "training loss", "val_loss": "validation loss", "val_dice": "validation Dice"}
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 42, 10, 18, 16


class LossPlot(QWidget):
    """Training loss, validation loss and validation Dice against the training step."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.series: dict[str, list[tuple[float, float]]] = {key: [] for key in COLORS}
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("Loss on the training patches and on the held-out validation area, and the Dice "
                        "overlap on the validation area (1 = perfect).")

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return QSize(280, 200)

    def clear(self) -> None:
        for points in self.series.values():
            points.clear()
        self.update()

    def add(self, step: int, **values: float | None) -> None:
        """Append the finite values among ``loss``, ``val_loss``, ``val_dice`` at ``step``."""
        for key, value in values.items():
            if key in self.series and value is not None and math.isfinite(value):
                self.series[key].append((float(step), float(value)))
        self.update()

    def paintEvent(self, event: object) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        text_color = self.palette().color(self.foregroundRole())
        rect = QRectF(self.rect())
        half = rect.height() / 2
        steps = [x for points in self.series.values() for x, _ in points]
        x_max = max(steps, default=1.0) or 1.0
        loss_values = [y for key in ("loss", "val_loss") for _, y in self.series[key]]
        low, high = min(loss_values, default=0.0), max(loss_values, default=1.0)
        pad = 0.05 * (high - low) or 0.05 * abs(high) or 1.0  # the range of the data, so that a small fall shows
        self._chart(painter, QRectF(rect.left(), rect.top(), rect.width(), half), ("loss", "val_loss"),
                    max(0.0, low - pad), high + pad, x_max, text_color, show_steps=False)
        self._chart(painter, QRectF(rect.left(), rect.top() + half, rect.width(), half), ("val_dice",),
                    0.0, 1.0, x_max, text_color, show_steps=True)
        painter.end()

    def _chart(self, painter: QPainter, area: QRectF, keys: tuple[str, ...], y_min: float, y_max: float,
               x_max: float, text_color: QColor, show_steps: bool) -> None:
        plot = area.adjusted(_MARGIN_LEFT, _MARGIN_TOP, -_MARGIN_RIGHT, -_MARGIN_BOTTOM)
        if plot.width() <= 0 or plot.height() <= 0:
            return
        grid = QColor(text_color)
        grid.setAlpha(60)
        painter.setPen(QPen(grid, 1))
        painter.drawRect(plot)
        painter.setPen(text_color)
        font = painter.font()
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        empty = not any(self.series.values())  # nothing yet: the frames and the legend only
        label_box = QRectF(area.left(), 0, _MARGIN_LEFT - 4, 14)
        for value, y in ((y_max, plot.top()), (y_min, plot.bottom())) if not empty else ():
            label_box.moveCenter(QPointF(label_box.center().x(), y))
            painter.drawText(label_box, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, _fmt(value))
        if show_steps and not empty:
            painter.drawText(QRectF(plot.left(), plot.bottom() + 1, plot.width(), _MARGIN_BOTTOM),
                             Qt.AlignmentFlag.AlignRight, f"step {int(x_max)}")
        legend_x = plot.left()
        for key in keys:
            painter.setPen(COLORS[key])
            label = NAMES[key]
            last = self.series[key][-1][1] if self.series[key] else None
            if last is not None:
                label += f" {_fmt(last)}"
            painter.drawText(QRectF(legend_x, area.top() + 2, plot.width(), 14), Qt.AlignmentFlag.AlignLeft, label)
            legend_x += painter.fontMetrics().horizontalAdvance(label) + 14

            if not self.series[key]:
                continue
            span = (y_max - y_min) or 1.0
            points = [QPointF(plot.left() + plot.width() * x / x_max,
                              plot.bottom() - plot.height() * (min(max(y, y_min), y_max) - y_min) / span)
                      for x, y in self.series[key]]
            path = QPainterPath(points[0])
            for point in points[1:]:
                path.lineTo(point)
            painter.setPen(QPen(COLORS[key], 1.6))
            painter.drawPath(path)
            if len(points) < 40:  # sparse series (validation) also get dots, so single points show
                painter.setBrush(COLORS[key])
                for point in points:
                    painter.drawEllipse(point, 2.2, 2.2)
                painter.setBrush(Qt.BrushStyle.NoBrush)


def _fmt(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"
