"""Measures where each rendered reply's characters are, and publishes it as a GUI-free
:class:`feedback_store.layout.LayoutSnapshot` that pointer and gaze capture map against
on their own threads.

Every rendered reply registers its QTextBrowser here. A reply's text geometry is measured
once per rendering (document revision and width); scrolling or moving the window only
re-places it. ``hit(x, y)`` answers for one global point through the same snapshot
mapping the capture threads use, so the window and the recorder never disagree.
"""
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QPoint, QRect
from PySide6.QtGui import QTextLayout
from PySide6.QtWidgets import QApplication, QTextBrowser, QWidget

from feedback_store.layout import LayoutSnapshot, PlacedReply, ReplyGeometry


@dataclass(frozen=True)
class TextHit:
    message_id: str
    offset: int | None   # None: over the reply's box but not over a character
    word: str | None
    line: int | None     # visual line within the reply, from 0


_GLYPHS = (QTextLayout.GlyphRunRetrievalFlag.RetrieveStringIndexes
           | QTextLayout.GlyphRunRetrievalFlag.RetrieveGlyphPositions)


def _cursor_x(line, position: int) -> float:
    value = line.cursorToX(position)
    return float(value[0] if isinstance(value, tuple) else value)


def _line_char_x(line, block_start: int, start: int, end: int, left: float,
                 char_x: np.ndarray) -> None:
    """Each character's left edge on one visual line, into ``char_x[start:end]``.

    From the line's shaped glyphs (a glyph's position and the character it starts): one
    ``cursorToX`` call per character cost ≈ 3 µs, 130 ms for a 40 000-character reply
    on the UI thread, at every re-wrap. A character no glyph starts (the second of a
    ligature, the space where the line wraps) is asked of ``cursorToX``, as all were."""
    found = np.zeros(max(end - start, 0), dtype=bool)
    runs = line.glyphRuns(line.textStart(), line.textLength(), _GLYPHS)
    for run in runs:
        for index, point in zip(run.stringIndexes(), run.positions()):
            at = block_start + index - start
            if 0 <= at < len(found) and not found[at]:
                char_x[start + at] = left + point.x()
                found[at] = True
    # In right-to-left text the cursor before a character is at its right edge: its left
    # edge is the nearer of the cursors before and after it.
    right_to_left = any(run.isRightToLeft() for run in runs)
    for at in np.flatnonzero(~found):
        position = start + int(at) - block_start
        x = _cursor_x(line, position)
        char_x[start + at] = left + (min(x, _cursor_x(line, position + 1)) if right_to_left else x)


def code_point_at(text: str) -> np.ndarray | None:
    """Qt counts a document's positions in UTF-16 units and Python its strings in code
    points: an emoji is two of the first and one of the second, so past each one every
    offset was one character further on. For each unit position 0 … n (n included), the
    code point it falls in; None when the two counts agree (text without such characters)."""
    if text.isascii():        # (the common case, told at C speed: no encoding, no arrays)
        return None
    points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    widths = 1 + (points > 0xFFFF).astype(np.int64)
    if len(widths) == int(widths.sum()):
        return None
    return np.append(np.repeat(np.arange(len(text)), widths), len(text))


def text_offsets(text: str, *positions: int) -> tuple[int, ...]:
    """Qt document positions (a selection's ends) as offsets into its plain text."""
    at = code_point_at(text)
    return tuple(position if at is None else int(at[min(max(position, 0), len(at) - 1)])
                 for position in positions)


def measure(message_id: str, browser: QTextBrowser) -> ReplyGeometry:
    """The reply's lines and characters in its viewport's pixels, in the offsets of its
    plain text (code points: see :func:`code_point_at`)."""
    document = browser.document()
    layout = document.documentLayout()
    text = document.toPlainText()
    at = code_point_at(text)
    units = len(text) if at is None else len(at) - 1
    scroll_x = browser.horizontalScrollBar().value()
    scroll_y = browser.verticalScrollBar().value()
    starts, ends, xs, tops, heights, widths = [], [], [], [], [], []
    char_x = np.zeros(units, dtype=np.float64)
    block = document.begin()
    while block.isValid():
        rect = layout.blockBoundingRect(block)
        text_layout = block.layout()
        for index in range(text_layout.lineCount()):
            line = text_layout.lineAt(index)
            start = block.position() + line.textStart()
            end = start + line.textLength()
            starts.append(start)
            ends.append(end)
            # Where the text is, not the line's box: a centred or right-aligned line (a
            # table cell) or a right-to-left one starts further right than line.x().
            natural = line.naturalTextRect()
            xs.append(rect.left() + natural.x() - scroll_x)
            tops.append(rect.top() + line.y() - scroll_y)
            heights.append(line.height())
            widths.append(natural.width())
            _line_char_x(line, block.position(), start, min(end, units),
                         rect.left() - scroll_x, char_x)
        block = block.next()
    starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
    if at is not None:             # UTF-16 units -> code points
        first_unit = np.searchsorted(at, np.arange(len(text)), side="left")
        char_x = char_x[first_unit]
        starts, ends = at[np.minimum(starts, units)], at[np.minimum(ends, units)]
    return ReplyGeometry(
        message_id=message_id, text=text,
        line_start=starts.astype(np.int32), line_end=ends.astype(np.int32),
        line_x=np.asarray(xs, np.float64), line_top=np.asarray(tops, np.float64),
        line_height=np.asarray(heights, np.float64), line_width=np.asarray(widths, np.float64),
        char_x=char_x)


def corners(rect: QRect) -> tuple[float, float, float, float]:
    """A rectangle as the snapshot keeps it: (x0, y0, x1, y1), floats."""
    return (float(rect.left()), float(rect.top()), float(rect.left() + rect.width()),
            float(rect.top() + rect.height()))


def global_rect(widget: QWidget) -> QRect:
    return QRect(widget.mapToGlobal(QPoint(0, 0)), widget.size())


class LayoutProbe:
    def __init__(self):
        self._views: dict[str, QTextBrowser] = {}
        self._measured: dict[str, tuple[tuple, ReplyGeometry]] = {}

    def register(self, message_id: str, browser: QTextBrowser) -> None:
        self._views[message_id] = browser

    def unregister(self, message_id: str) -> None:
        self._views.pop(message_id, None)
        self._measured.pop(message_id, None)

    def clear(self) -> None:
        self._views.clear()
        self._measured.clear()

    def browser(self, message_id: str) -> QTextBrowser | None:
        return self._views.get(message_id)

    def message_ids(self) -> list[str]:
        return list(self._views)

    def geometry(self, message_id: str) -> ReplyGeometry:
        browser = self._views[message_id]
        # The font and the pixel ratio re-wrap a reply without touching its document: left
        # out, a reply given a larger font kept its old lines (10 measured, 20 on screen).
        key = (browser.document().revision(), browser.viewport().width(),
               browser.verticalScrollBar().value(), browser.font().key(),
               browser.devicePixelRatioF())
        cached = self._measured.get(message_id)
        if cached is None or cached[0] != key:
            cached = (key, measure(message_id, browser))
            self._measured[message_id] = cached
        return cached[1]

    # --- snapshot ----------------------------------------------------------------------
    def snapshot(self, ids: dict[str, tuple[str | None, str | None]] | None = None,
                 clip_to: QWidget | None = None) -> LayoutSnapshot:
        """Every visible registered reply, placed on screen. ``ids`` maps a message id to
        its (shown reply id, conversation id); ``clip_to`` is the scrolling viewport that
        hides the parts of replies scrolled out of view."""
        placed = []
        window_visible = True
        for message_id, browser in self._views.items():
            if not browser.isVisible():
                continue
            window = browser.window()
            window_visible = window.isVisible() and not window.isMinimized()
            viewport = browser.viewport()
            whole = area = global_rect(viewport)
            if clip_to is not None:
                area = area.intersected(global_rect(clip_to))
            origin = viewport.mapToGlobal(QPoint(0, 0))
            shown_id, conversation_id = (ids or {}).get(message_id, (None, None))
            placed.append(PlacedReply(
                geometry=self.geometry(message_id), shown_reply_id=shown_id,
                conversation_id=conversation_id, origin=(float(origin.x()), float(origin.y())),
                clip=corners(area) if not area.isEmpty() else (0, 0, 0, 0),
                area=corners(whole)))
        return LayoutSnapshot(tuple(placed), window_visible=window_visible,
                              view=corners(global_rect(clip_to)) if clip_to is not None else None,
                              screens=tuple((float(s.geometry().x()), float(s.geometry().y()),
                                             float(s.geometry().width()), float(s.geometry().height()),
                                             float(s.devicePixelRatio()))
                                            for s in QApplication.screens()))

    # --- one point, for the window ---------------------------------------------------------
    def hit(self, global_x: int, global_y: int) -> TextHit | None:
        snapshot = self.snapshot()
        placed, offset, word, line = snapshot.map_one(global_x, global_y)
        if placed is None:
            return None
        geometry = placed.geometry
        text = None
        if word >= 0:
            text = geometry.text[geometry.word_start[word]:geometry.word_end[word]]
        return TextHit(geometry.message_id, offset if offset >= 0 else None, text,
                       line if line >= 0 else None)

    def line_boxes(self, message_id: str) -> list[dict]:
        """Each visual line: offsets [start, end) and its rectangle in screen pixels."""
        origin = self._views[message_id].viewport().mapToGlobal(QPoint(0, 0))
        return self.geometry(message_id).line_boxes(origin.x(), origin.y())
