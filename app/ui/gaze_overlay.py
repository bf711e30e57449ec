"""Debug overlay for gaze: a transparent, click-through window over one screen showing the
live (smoothed) point, the last raw samples, the last fixations and a heatmap of where
the fixations fell (weighted by duration). For checking a calibration by eye; it draws
only numbers the tracker computed, never a camera image.
"""
import collections

import numpy as np
from PySide6.QtCore import QPointF, QRect, Qt, QTimer, Slot
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QWidget

from gaze.points import GazePoint


def heat_colours(values: np.ndarray) -> np.ndarray:
    """0…1 → RGBA uint8: transparent, then blue → green → yellow → red, more opaque."""
    v = np.clip(values, 0, 1)
    stops = np.array([[0, 0, 255], [0, 200, 0], [255, 230, 0], [230, 0, 0]], float)
    pos = v * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    frac = (pos - i)[..., None]
    rgb = stops[i] * (1 - frac) + stops[i + 1] * frac
    alpha = 210 * np.sqrt(v)                     # fades to transparent, no hard edge
    return np.dstack([rgb, alpha]).astype(np.uint8)


class GazeOverlay(QWidget):
    def __init__(self, area: QRect, px_per_degree: float = 38.0, cell_px: int = 12,
                 parent=None):
        super().__init__(parent)
        self.setWindowFlags(Qt.WindowType.Tool | Qt.WindowType.FramelessWindowHint
                            | Qt.WindowType.WindowStaysOnTopHint
                            | Qt.WindowType.WindowTransparentForInput)
        self.setAttribute(Qt.WidgetAttribute.WA_TranslucentBackground)
        self.setAttribute(Qt.WidgetAttribute.WA_ShowWithoutActivating)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.setGeometry(area)
        self.area = QRect(area)
        self.cell = cell_px
        self.heat = np.zeros((max(1, area.height() // cell_px + 1),
                              max(1, area.width() // cell_px + 1)), np.float32)
        sigma = max(1.0, px_per_degree / cell_px)          # 1° spread
        r = int(np.ceil(3 * sigma))
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        g = np.exp(-(xx * xx + yy * yy) / (2 * sigma * sigma)) - np.exp(-r * r / (2 * sigma * sigma))
        self._kernel = np.clip(g, 0, None).astype(np.float32)     # falls to 0 at its edge
        self._r = r
        self.raw = collections.deque(maxlen=30)
        self.fixations = collections.deque(maxlen=12)
        self.cursor: tuple[float, float] | None = None
        self._heat_pixmap = None                          # scaled heatmap, redone on change
        self._dirty = False
        self._timer = QTimer(self)
        self._timer.setInterval(33)                      # repaint at most ~30 times a second
        self._timer.timeout.connect(self._repaint_if_dirty)
        self._timer.start()

    # --- input (UI thread) -------------------------------------------------------------
    @Slot(object)
    def add_point(self, point: GazePoint) -> None:
        x, y = point.x - self.area.x(), point.y - self.area.y()
        if point.kind == "fixation":
            self.fixations.append((x, y, point.duration_ms or 0.0))
            self._splat(x, y, (point.duration_ms or 100.0) / 1000.0)
        else:
            self.raw.append((x, y))
        self._dirty = True

    @Slot(float, float)
    def set_cursor(self, x: float, y: float) -> None:
        self.cursor = (x - self.area.x(), y - self.area.y())
        self._dirty = True

    def clear(self) -> None:
        self.heat[:] = 0
        self._heat_pixmap = None
        self.raw.clear()
        self.fixations.clear()
        self.cursor = None
        self._dirty = True

    def _splat(self, x: float, y: float, weight: float) -> None:
        cx, cy = int(x // self.cell), int(y // self.cell)
        r = self._r
        h, w = self.heat.shape
        y0, y1 = max(0, cy - r), min(h, cy + r + 1)
        x0, x1 = max(0, cx - r), min(w, cx + r + 1)
        if y0 >= y1 or x0 >= x1:
            return
        k = self._kernel[y0 - (cy - r):y1 - (cy - r), x0 - (cx - r):x1 - (cx - r)]
        self.heat[y0:y1, x0:x1] += weight * k
        self._heat_pixmap = None

    def heatmap_image(self) -> QImage:
        top = float(self.heat.max())
        rgba = heat_colours(self.heat / top if top > 0 else self.heat)
        rgba = np.ascontiguousarray(rgba)
        h, w = rgba.shape[:2]
        return QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()

    # --- drawing ---------------------------------------------------------------------------
    def _repaint_if_dirty(self) -> None:
        if self._dirty and self.isVisible():
            self._dirty = False
            self.update()

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        if self.heat.max() > 0:
            if self._heat_pixmap is None:
                self._heat_pixmap = QPixmap.fromImage(self.heatmap_image().scaled(
                    self.heat.shape[1] * self.cell, self.heat.shape[0] * self.cell,
                    Qt.AspectRatioMode.IgnoreAspectRatio,
                    Qt.TransformationMode.SmoothTransformation))
            p.drawPixmap(0, 0, self._heat_pixmap)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(255, 255, 255, 150))
        for x, y in self.raw:
            p.drawEllipse(QPointF(x, y), 2.5, 2.5)
        p.setFont(QFont(p.font().family(), 8))
        for i, (x, y, ms) in enumerate(self.fixations):
            p.setPen(QPen(QColor(255, 140, 0, 220), 2))
            p.setBrush(Qt.BrushStyle.NoBrush)
            radius = 6 + min(30.0, ms / 20)
            p.drawEllipse(QPointF(x, y), radius, radius)
            p.drawText(QPointF(x + radius + 2, y), f"{ms:.0f} ms")
        if self.cursor is not None:
            x, y = self.cursor
            p.setPen(QPen(QColor(0, 0, 0, 200), 3))
            p.setBrush(QColor(255, 40, 40, 170))
            p.drawEllipse(QPointF(x, y), 11, 11)
        p.end()
