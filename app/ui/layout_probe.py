"""What text is under a screen point? The mapping pointer and gaze samples go through.

Every rendered reply registers its QTextBrowser here. ``hit(x, y)`` takes global screen
coordinates (logical pixels) and answers which reply, which character offset (into the
reply's rendered plain text, i.e. ``document().toPlainText()``), which word and which
visual line is there, or that the point is over a reply but not over its text.
``line_boxes`` snapshots a reply's lines (offsets + screen rectangles) so later code can
map stored samples to words without Qt.
"""
from dataclasses import dataclass

from PySide6.QtCore import QPoint, QPointF
from PySide6.QtGui import QTextCursor, QTextLine
from PySide6.QtWidgets import QTextBrowser


@dataclass(frozen=True)
class TextHit:
    message_id: str
    offset: int | None   # None: over the reply's box but not over a character
    word: str | None
    line: int | None     # visual line within the reply, from 0


class LayoutProbe:
    def __init__(self):
        self._views: dict[str, QTextBrowser] = {}

    def register(self, message_id: str, browser: QTextBrowser) -> None:
        self._views[message_id] = browser

    def unregister(self, message_id: str) -> None:
        self._views.pop(message_id, None)

    def clear(self) -> None:
        self._views.clear()

    def browser(self, message_id: str) -> QTextBrowser | None:
        return self._views.get(message_id)

    # --- point -> text ---------------------------------------------------------------
    def hit(self, global_x: int, global_y: int) -> TextHit | None:
        for message_id, browser in self._views.items():
            if not browser.isVisible():
                continue
            viewport = browser.viewport()
            local = viewport.mapFromGlobal(QPoint(int(global_x), int(global_y)))
            if not viewport.rect().contains(local):
                continue
            # Viewport -> document coordinates (replies are not scrolled, but be exact).
            doc_point = QPointF(local.x() + browser.horizontalScrollBar().value(),
                                local.y() + browser.verticalScrollBar().value())
            offset, line = self._char_at(browser, doc_point)
            word = self._word_at(browser, offset) if offset is not None else None
            return TextHit(message_id, offset, word, line)
        return None

    @staticmethod
    def _char_at(browser: QTextBrowser, point: QPointF) -> tuple[int | None, int | None]:
        document = browser.document()
        layout = document.documentLayout()
        block = document.begin()
        lines_before = 0
        while block.isValid():
            rect = layout.blockBoundingRect(block)
            text_layout = block.layout()
            if rect.top() <= point.y() < rect.bottom():
                for index in range(text_layout.lineCount()):
                    line = text_layout.lineAt(index)
                    top = rect.top() + line.y()
                    if top <= point.y() < top + line.height():
                        x = point.x() - rect.left()
                        if not (line.x() <= x < line.x() + line.naturalTextWidth()):
                            return None, lines_before + index
                        in_block = line.xToCursor(x, QTextLine.CursorPosition.CursorOnCharacter)
                        return block.position() + in_block, lines_before + index
                return None, None
            lines_before += text_layout.lineCount()
            block = block.next()
        return None, None

    @staticmethod
    def _word_at(browser: QTextBrowser, offset: int) -> str | None:
        cursor = QTextCursor(browser.document())
        cursor.setPosition(offset)
        cursor.movePosition(QTextCursor.MoveOperation.Right, QTextCursor.MoveMode.KeepAnchor)
        if not cursor.selectedText().strip():
            return None  # a space or line end, not a word
        cursor.setPosition(offset)
        cursor.select(QTextCursor.SelectionType.WordUnderCursor)
        return cursor.selectedText() or None

    # --- snapshot ----------------------------------------------------------------------
    def line_boxes(self, message_id: str) -> list[dict]:
        """Each visual line: offsets [start, end) and its rectangle in screen pixels."""
        browser = self._views[message_id]
        document = browser.document()
        layout = document.documentLayout()
        origin = browser.viewport().mapToGlobal(QPoint(0, 0))
        boxes = []
        block = document.begin()
        while block.isValid():
            rect = layout.blockBoundingRect(block)
            text_layout = block.layout()
            for index in range(text_layout.lineCount()):
                line = text_layout.lineAt(index)
                boxes.append({
                    "line": len(boxes),
                    "start": block.position() + line.textStart(),
                    "end": block.position() + line.textStart() + line.textLength(),
                    "x": origin.x() + rect.left() + line.x(),
                    "y": origin.y() + rect.top() + line.y(),
                    "w": line.naturalTextWidth(), "h": line.height()})
            block = block.next()
        return boxes
