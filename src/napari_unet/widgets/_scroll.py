"""Dock contents that scroll vertically instead of forcing napari's window to grow.

A dock widget's minimum height adds to napari's window: two tall docks above each other make the window taller
than a laptop screen, or, when it cannot grow, overlap their contents. Inside a vertical scroll area a dock can
be any height; its width stays that of its contents, so nothing is cut off at the side.
"""
from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

MIN_VISIBLE_HEIGHT = 150


class _VerticalScroll(QScrollArea):
    def __init__(self, content: QWidget) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(content)
        content.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the contents grew (a training pair was added): let the dock widen
        return super().eventFilter(watched, event)

    def _bar(self) -> int:
        return self.verticalScrollBar().sizeHint().width()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        hint = self.widget().sizeHint()
        return QSize(hint.width() + self._bar(), hint.height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        hint = self.widget().minimumSizeHint()
        return QSize(hint.width() + self._bar(), min(hint.height(), MIN_VISIBLE_HEIGHT))


def scrollable_layout(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a vertical scroll area and return the layout to fill inside it."""
    content = QWidget()
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(_VerticalScroll(content))
    return QVBoxLayout(content)
