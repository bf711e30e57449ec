"""The conversation on screen: one MessageWidget per message on the active branch."""
import time

from PySide6.QtCore import QObject, QSize, Qt, QTimer, Signal
from PySide6.QtGui import (QColor, QFont, QKeySequence, QPainter, QPalette, QTextBlockFormat,
                           QTextCursor, QTextFormat, QTextOption)
from PySide6.QtWidgets import (
    QFrame, QHBoxLayout, QLabel, QMenu, QPushButton, QScrollArea, QSizePolicy, QTextBrowser,
    QToolButton, QVBoxLayout, QWidget,
)

from feedback_store import Message

STREAM_RENDER_INTERVAL_MS = 40  # re-render markdown at most 25x/s while streaming
# ... and, as a reply grows long enough for one render to take a while (80 ms at 38 000
# characters), no more often than leaves the window this many times the render free.
STREAM_RENDER_FREE_FACTOR = 3
# A long conversation opens on its last rows; older ones are built as the user scrolls up
# (each row is a rich-text view: building 300 of them held the window ≈ 0.2 s).
ROWS_AT_OPEN = 30
ROWS_PER_PAGE = 30
WAITING_FOR_FIRST_PIECE = "…"
# A longer message of the user's (a pasted document) shows its start and "Show all": laid
# out whole, 100 000 characters held the window 135 ms at every opening of its chat, and
# pushed the reply out of sight.
USER_TEXT_FOLD_CHARS = 3000
CODE_BACKGROUND = QColor("#f0f2f5")


class ElidedLabel(QLabel):
    """One line that gives way: it asks for its whole text's width but takes what its row
    leaves, cutting the end with "…" (the whole text is the tooltip). A plain QLabel's
    minimum width is its whole text, and the chat never scrolls sideways, so a long line
    under a reply pushed the reply itself past the window's edge."""

    def setText(self, text: str) -> None:
        super().setText(text)
        self.setToolTip(text)

    def minimumSizeHint(self) -> QSize:
        return QSize(0, super().minimumSizeHint().height())

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        shown = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight,
                                              self.width())
        painter.drawText(self.rect(), int(self.alignment()), shown)


class ReplyBrowser(QTextBrowser):
    """Read-only rich text that grows to fit its document (the chat scrolls, not it)."""

    # Its selection was copied, with Ctrl+C or the context menu's Copy (watching the
    # window's events for Ctrl+C missed the menu, and saw the key twice where the pointer
    # is captured through Qt's events; the copied data is also made for X11's selection
    # clipboard whenever text is selected, which is not a copy).
    copied = Signal()

    def keyPressEvent(self, event) -> None:
        if event.matches(QKeySequence.StandardKey.Copy) and self.textCursor().hasSelection():
            self.copied.emit()
        super().keyPressEvent(event)

    def context_menu(self, position) -> QMenu:
        """Qt's own menu for this text, its Copy heard."""
        menu = self.createStandardContextMenu(position)
        for action in menu.actions():
            if action.objectName() == "edit-copy":
                action.triggered.connect(self.copied.emit)
        return menu

    def contextMenuEvent(self, event) -> None:
        menu = self.context_menu(event.pos())
        menu.exec(event.globalPos())
        menu.deleteLater()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setOpenExternalLinks(False)
        self.setOpenLinks(False)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWordWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.document().setDocumentMargin(4)
        self.document().documentLayout().documentSizeChanged.connect(self._fit_height)

    def set_markdown(self, text: str) -> None:
        self.setMarkdown(text)
        self._shade_code_blocks()
        self._fit_height()

    def _shade_code_blocks(self) -> None:
        """Fenced code gets a tinted background, as in every chat app (Qt's markdown
        import marks the blocks but does not colour them)."""
        shaded = QTextBlockFormat()
        shaded.setBackground(CODE_BACKGROUND)
        cursor = QTextCursor(self.document())
        # One edit: each change on its own re-laid out the whole document, and a long
        # reply with code took seconds (1.2 s at 38 000 characters) to show.
        cursor.beginEditBlock()
        block = self.document().begin()
        while block.isValid():
            if block.blockFormat().hasProperty(QTextFormat.Property.BlockCodeFence):
                cursor.setPosition(block.position())
                cursor.mergeBlockFormat(shaded)
            block = block.next()
        cursor.endEditBlock()

    def _fit_height(self, *_):
        width = self.viewport().width()
        # Only when it changed: setting the same width lays the whole document out again,
        # and this runs at every size change of the document (a long reply's render cost
        # twice what it needs: 76 ms against 38 ms at 40 000 characters).
        if self.document().textWidth() != width:
            self.document().setTextWidth(width)
        height = int(self.document().size().height()) + 2
        if self.height() != height:
            self.setFixedHeight(height)

    def resizeEvent(self, event):
        super().resizeEvent(event)
        self._fit_height()

    def sizeHint(self):
        return QSize(400, self.height())


def fold(text: str) -> str:
    """The start of a long text, cut after a word, and "…"."""
    start = text[:USER_TEXT_FOLD_CHARS]
    cut = max(start.rfind(" "), start.rfind("\n"))
    return (start[:cut] if cut > USER_TEXT_FOLD_CHARS // 2 else start).rstrip() + " …"


class RowActions(QObject):
    """What the buttons of a conversation's rows ask for. The rows of a view share one,
    so the window connects once however often rows are built; a row built alone (the
    reply being streamed) gets its own, connected to nothing."""
    copy_requested = Signal(str)
    edit_requested = Signal(str)
    regenerate_requested = Signal(str)
    compare_requested = Signal(str)
    thumb_requested = Signal(str, int)
    sibling_requested = Signal(str)
    retry_requested = Signal(str)
    picked = Signal(int)   # in a compare pair: +1 left, 0 tie, -1 right


def row_key(message: Message, siblings: list[Message], unanswered: bool) -> tuple:
    """Everything a message's row shows but its thumb (which is set in place): a row
    whose key is unchanged is kept on screen as it is."""
    return (message.id, message.role, message.content, tuple(s.id for s in siblings),
            unanswered, MessageWidget._meta_text(message))


class MessageWidget(QFrame):
    def __init__(self, message: Message, siblings: list[Message], thumb: int = 0, parent=None,
                 unanswered: bool = False, actions: RowActions | None = None,
                 browser: "ReplyBrowser | None" = None, expanded: set[str] | None = None):
        super().__init__(parent)
        self.message = message
        self.actions = actions if actions is not None else RowActions(self)
        act = self.actions
        self.setObjectName("assistantMessage" if message.role == "assistant" else "userMessage")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)

        header = QHBoxLayout()
        role = QLabel("Glance" if message.role == "assistant" else "You")
        bold = QFont(role.font())
        bold.setBold(True)
        role.setFont(bold)
        header.addWidget(role)
        header.addStretch()
        self._sibling_buttons = []           # (button, whether it has somewhere to go)
        if len(siblings) > 1:
            index = [s.id for s in siblings].index(message.id)
            previous = QToolButton(text="‹")
            previous.setEnabled(index > 0)
            previous.clicked.connect(lambda: act.sibling_requested.emit(siblings[index - 1].id))
            following = QToolButton(text="›")
            following.setEnabled(index < len(siblings) - 1)
            following.clicked.connect(lambda: act.sibling_requested.emit(siblings[index + 1].id))
            self._sibling_buttons = [(previous, index > 0), (following, index < len(siblings) - 1)]
            self.sibling_label = QLabel(f"{index + 1}/{len(siblings)}")
            for widget in (previous, self.sibling_label, following):
                header.addWidget(widget)
        layout.addLayout(header)

        # A long message of the user's: "Show all" / "Show less". ``expanded`` (the view's
        # ids shown whole) keeps it open when its row is built again.
        self.fold_button = None
        if message.role == "user" and len(message.content) > USER_TEXT_FOLD_CHARS:
            self.fold_button = QToolButton()
            self.fold_button.setCheckable(True)
            self.fold_button.setChecked(expanded is not None and message.id in expanded)

            def unfold(whole: bool) -> None:
                if expanded is not None:
                    (expanded.add if whole else expanded.discard)(self.message.id)
                self.set_text(self.message.content)
            self.fold_button.toggled.connect(unfold)
        if browser is None:
            self.browser = ReplyBrowser(self)
            layout.addWidget(self.browser)
            self.set_text(message.content, final=True)
        else:                 # the streamed reply's own view, its text already laid out
            self.browser = browser
            layout.addWidget(browser)
            browser.show()

        actions = QHBoxLayout()
        self.copy_button = QPushButton("Copy")
        self.copy_button.clicked.connect(lambda: act.copy_requested.emit(self.message.id))
        actions.addWidget(self.copy_button)
        self.thumb_up = self.thumb_down = self.regenerate_button = self.edit_button = None
        self.compare_button = self.retry_button = None
        if message.role == "assistant":
            self.regenerate_button = QPushButton("Regenerate")
            self.regenerate_button.clicked.connect(
                lambda: act.regenerate_requested.emit(self.message.id))
            actions.addWidget(self.regenerate_button)
            self.compare_button = QPushButton("Compare")
            self.compare_button.setToolTip("Write a second reply beside this one and pick the "
                                           "better (or call it a tie)")
            self.compare_button.clicked.connect(
                lambda: act.compare_requested.emit(self.message.id))
            actions.addWidget(self.compare_button)
            self.thumb_up = QToolButton(text="▲ Good")
            self.thumb_down = QToolButton(text="▼ Bad")
            for button, value in ((self.thumb_up, 1), (self.thumb_down, -1)):
                button.setCheckable(True)
                button.setToolTip("Good reply" if value > 0 else "Bad reply")
                button.clicked.connect(lambda checked, v=value: act.thumb_requested.emit(
                    self.message.id, v if checked else 0))
                actions.addWidget(button)
            self.set_thumb(thumb)
        else:
            self.edit_button = QPushButton("Edit")
            self.edit_button.clicked.connect(lambda: act.edit_requested.emit(self.message.id))
            actions.addWidget(self.edit_button)
            if self.fold_button is not None:
                actions.addWidget(self.fold_button)
            if unanswered:       # its reply failed: ask again, without a second copy of it
                self.retry_button = QPushButton("Retry")
                self.retry_button.setToolTip("Ask for a reply to this message again")
                self.retry_button.clicked.connect(lambda: act.retry_requested.emit(self.message.id))
                actions.addWidget(self.retry_button)
        actions.addStretch()
        self.meta = ElidedLabel()
        self.meta.setText(self._meta_text(message))
        muted = self.meta.palette()
        muted.setColor(QPalette.ColorRole.WindowText, muted.color(QPalette.ColorRole.Mid))
        self.meta.setPalette(muted)
        self.meta.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        actions.addWidget(self.meta)
        layout.addLayout(actions)

    def set_text(self, text: str, final: bool = False) -> None:
        if self.message.role == "assistant":
            shown = text if text or not final else "*(stopped before any text)*"
            self.browser.set_markdown(shown)
        else:
            folded = self.fold_button is not None and not self.fold_button.isChecked()
            if self.fold_button is not None:
                self.fold_button.setText("Show less" if not folded else
                                         f"Show all ({len(text):,} characters)")
            self.browser.setPlainText(fold(text) if folded else text)
            self.browser._fit_height()

    def set_thumb(self, value: int) -> None:
        self.thumb_value = value          # what is stored (a click is undone to it)
        if self.thumb_up is not None:
            self.thumb_up.setChecked(value > 0)
            self.thumb_down.setChecked(value < 0)

    def set_actions_enabled(self, enabled: bool) -> None:
        for button in (self.regenerate_button, self.compare_button, self.edit_button,
                       self.thumb_up, self.thumb_down, self.retry_button):
            if button is not None:
                button.setEnabled(enabled)
        for button, can_go in self._sibling_buttons:
            button.setEnabled(enabled and can_go)

    @staticmethod
    def _meta_text(message: Message) -> str:
        if message.role != "assistant" or message.tokens is None:
            return ""
        parts = [f"{message.tokens} tokens"]
        if message.tokens_per_s:
            parts.append(f"{message.tokens_per_s:.0f} tok/s")
        if message.ttft_s is not None:
            parts.append(f"first token {message.ttft_s:.2f} s")
        if message.finish_reason == "cancelled":
            parts.append("stopped")
        elif message.finish_reason == "length":
            parts.append("hit max tokens")
        if message.dropped_turns:
            parts.append(f"{message.dropped_turns} oldest turns left out to fit the context")
        return " · ".join(parts)


class ComparePair(QFrame):
    """Two replies to one prompt side by side, and the pick: left, tie or right."""
    def __init__(self, left: Message, right: Message, actions: RowActions, parent=None):
        super().__init__(parent)
        self.setObjectName("comparePair")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        title = QLabel("Which reply is better? Read both, then pick "
                       "(Alt+1 left, Alt+0 tie, Alt+2 right).")
        title.setWordWrap(True)
        layout.addWidget(title)
        columns = QHBoxLayout()
        self.sides = [MessageWidget(left, [left], actions=actions),
                      MessageWidget(right, [right], actions=actions)]
        for side in self.sides:
            # Only Copy in a column: the other actions (and the speed line) would make
            # each column wider than half the view.
            for widget in (side.regenerate_button, side.compare_button, side.thumb_up,
                           side.thumb_down, side.meta):
                widget.hide()
            columns.addWidget(side, 1, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(columns)
        buttons = QHBoxLayout()
        self.left_button = QPushButton("◀ Left is better")
        self.tie_button = QPushButton("About the same")
        self.right_button = QPushButton("Right is better ▶")
        for button, value in ((self.left_button, 1), (self.tie_button, 0), (self.right_button, -1)):
            button.clicked.connect(lambda _=False, v=value: actions.picked.emit(v))
            buttons.addWidget(button)
        layout.addLayout(buttons)


class ChatView(QScrollArea):
    """A scrolling column of MessageWidgets plus, while streaming, a live reply. What the
    rows' buttons ask for comes out of ``actions``."""

    rows_built = Signal(list)     # older rows built on the way up (the MessageWidgets)

    def __init__(self, probe, parent=None):
        super().__init__(parent)
        self.probe = probe
        self.actions = RowActions(self)
        self.setWidgetResizable(True)
        # Replies wrap to the view's width; nothing is ever scrolled sideways.
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.container = QWidget()
        self.column = QVBoxLayout(self.container)
        self.column.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.column.setSpacing(8)
        self.setWidget(self.container)
        self.widgets: list[MessageWidget] = []
        # The branch's rows (message, siblings, unanswered), their keys and thumbs; rows
        # from ``_first`` on are built (``widgets``), the ones before wait for a scroll up.
        self._rows: list[tuple] = []
        self._keys: list[tuple] = []
        self._thumbs: dict[str, int] = {}
        self._expanded: set[str] = set()   # long messages of the user's shown whole
        self._first = 0
        self.earlier = QPushButton()
        self.earlier.setFlat(True)
        self.earlier.clicked.connect(self.show_earlier)
        self.earlier.hide()
        self.column.addWidget(self.earlier)
        self.placeholder = QLabel("Ask anything. Everything stays on this computer.")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.column.addWidget(self.placeholder)
        self.streaming: MessageWidget | None = None
        self.pair: ComparePair | None = None
        self._stream_text = ""
        # The text the streaming row shows (None: the "…" before the first piece); pieces
        # received since are rendered at the next tick.
        self._rendered = None
        # A finished stream's view (its full text, the view) for the committed reply's row:
        # laying out a long reply again took as long as a render (65 ms at 40 000 chars).
        self._streamed: tuple[str, ReplyBrowser] | None = None
        self._render_timer = QTimer(self)
        self._render_timer.setInterval(STREAM_RENDER_INTERVAL_MS)
        self._render_timer.timeout.connect(self._render_stream)
        # Follow the bottom while the user is there. The new maximum is only known once
        # the layout has grown by what was just added, so the scroll happens when the
        # range changes, not when the text is set.
        self._follow_bottom = True
        # After rows are built above, the rows in view stay put: the row that was at the
        # top keeps its place in view while the layout grows, until the user scrolls. (Not
        # the distance to the bottom: a reply streaming there would slide the view away.)
        self._anchor: tuple[QWidget, int] | None = None
        self._keeping = False
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(self._note_position)
        bar.rangeChanged.connect(self._keep_following)

    def _note_position(self, value: int) -> None:
        bar = self.verticalScrollBar()
        self._follow_bottom = value >= bar.maximum() - 4
        if self._keeping:
            return
        self._anchor = None
        if value == bar.minimum() and bar.maximum() > 0 and self._first > 0:
            QTimer.singleShot(0, self._show_earlier_if_at_top)

    def _keep_following(self, _minimum: int, maximum: int) -> None:
        if self._anchor is not None:
            row, offset = self._anchor
            self._keeping = True
            self.verticalScrollBar().setValue(row.y() - offset)
            self._keeping = False
        elif self._follow_bottom:
            self.verticalScrollBar().setValue(maximum)

    def show_messages(self, path: list[Message], siblings_of, thumbs: dict[str, int],
                      compare: tuple[Message, Message] | None = None,
                      retry_last: bool = False) -> list[MessageWidget]:
        """The active branch; with ``compare``, its last reply is shown as two columns
        (left, right) to pick from; with ``retry_last``, a last message of the user's
        (its reply failed) offers Retry. Returns the rows it had to build.

        Rows already on screen that show the same thing are kept: a turn appends its two
        rows instead of rebuilding (and re-measuring) the whole conversation, which in a
        chat of a hundred messages held the window for a fifth of a second per turn."""
        self._drop_stream()
        self._drop_pair()
        self._anchor = None
        shown = [m for m in path if m.role in ("user", "assistant")]
        rows = []
        for message in shown:
            if compare and message.id in (compare[0].id, compare[1].id):
                continue
            unanswered = retry_last and message is shown[-1] and message.role == "user"
            rows.append((message, siblings_of(message.id), unanswered))
        keys = [row_key(*row) for row in rows]
        same = 0
        for old, new in zip(self._keys, keys):
            if old != new:
                break
            same += 1
        if same < self._first or len(rows) - same > ROWS_AT_OPEN:   # another conversation
            self._remove_rows(self.widgets)
            self._first = max(0, len(rows) - ROWS_AT_OPEN)
            same = self._first
        self._remove_rows(self.widgets[same - self._first:])
        self._rows, self._keys, self._thumbs = rows, keys, thumbs
        for widget, (message, _, _) in zip(self.widgets, rows[self._first:]):
            widget.message = message          # the same message, perhaps a fresh copy of it
            widget.set_thumb(thumbs.get(message.id, 0))
        added = [self._build(row) for row in rows[same:]]
        self._discard_streamed()                  # not taken: the reply failed or differs
        for widget in added:
            self._add(widget)
        if compare:
            self.pair = ComparePair(*compare, actions=self.actions)
            self.column.addWidget(self.pair)
            for widget in self.pair.sides:
                self.widgets.append(widget)
                self._measure(widget)
                added.append(widget)
        self.placeholder.setVisible(not self.widgets)
        self._show_earlier_button()
        QTimer.singleShot(0, self.scroll_to_bottom)
        return added

    def _build(self, row: tuple) -> "MessageWidget":
        message, siblings, unanswered = row
        browser = None
        if self._streamed is not None and message.role == "assistant" and message.content \
                and message.content == self._streamed[0]:
            _, browser = self._streamed
            self._streamed = None
            if self._rendered != message.content:    # its last pieces were not rendered yet
                browser.set_markdown(message.content)
        return MessageWidget(message, siblings, self._thumbs.get(message.id, 0),
                             unanswered=unanswered, actions=self.actions, browser=browser,
                             expanded=self._expanded)

    def _remove_rows(self, widgets: list["MessageWidget"]) -> None:
        for widget in list(widgets):
            self.widgets.remove(widget)
            self._remove(widget)

    # --- older rows, built on the way up ---------------------------------------------------
    def _show_earlier_button(self) -> None:
        if self._first:
            self.earlier.setText(f"↑ Show {min(self._first, ROWS_PER_PAGE)} earlier messages "
                                 f"({self._first} in all)")
        self.earlier.setVisible(self._first > 0)

    def _show_earlier_if_at_top(self) -> None:
        bar = self.verticalScrollBar()
        if bar.value() == bar.minimum() and not self._follow_bottom:
            self.show_earlier()

    def show_earlier(self) -> list["MessageWidget"]:
        """Build the next rows above those on screen, keeping what is in view where it is;
        the rows built are announced (``rows_built``) so the window watches them too."""
        if self._first == 0:
            return []
        start = max(0, self._first - ROWS_PER_PAGE)
        top = self.widgets[0]
        self._anchor = (top, top.y() - self.verticalScrollBar().value())
        at = self.column.indexOf(self.placeholder) + 1
        built = []
        for offset, row in enumerate(self._rows[start:self._first]):
            widget = self._build(row)
            self.column.insertWidget(at + offset, widget)
            self._measure(widget)
            built.append(widget)
        self.widgets[:0] = built
        self._first = start
        self._show_earlier_button()
        self.rows_built.emit(built)
        return built

    def _add(self, widget: MessageWidget) -> None:
        self.column.addWidget(widget)
        self.widgets.append(widget)
        self._measure(widget)

    def _measure(self, widget: MessageWidget) -> None:
        """Replies are measured for capture (where their words are on screen)."""
        if widget.message.role == "assistant":
            self.probe.register(widget.message.id, widget.browser)

    def _remove(self, widget: MessageWidget) -> None:
        self.probe.unregister(widget.message.id)
        widget.setParent(None)
        widget.deleteLater()

    def _drop_pair(self) -> None:
        if self.pair is None:
            return
        for widget in self.pair.sides:
            self.widgets.remove(widget)
            self.probe.unregister(widget.message.id)
        self.pair.setParent(None)
        self.pair.deleteLater()
        self.pair = None

    def clear(self) -> None:
        self._drop_stream()
        self._discard_streamed()
        self._drop_pair()
        self._remove_rows(self.widgets)
        self._rows, self._keys, self._first = [], [], 0
        self._show_earlier_button()
        self.placeholder.show()

    # --- streaming -----------------------------------------------------------------------
    def begin_stream(self, placeholder: Message) -> MessageWidget:
        # Not given to the layout probe: nothing records a reply still being written (it
        # is shown, and recorded, once committed), and measuring it at each capture
        # publish cost 45-73 ms a time on a long reply.
        self.streaming = MessageWidget(placeholder, [placeholder])
        self.column.addWidget(self.streaming)
        self.widgets.append(self.streaming)
        self.placeholder.hide()
        QTimer.singleShot(0, self.scroll_to_bottom)
        self.streaming.set_actions_enabled(False)
        self.streaming.copy_button.setEnabled(False)   # nothing is committed to copy yet
        # Until the first piece (the prompt is being read: seconds on a big model). An
        # empty row said "stopped before any text" meanwhile.
        self.streaming.set_text(WAITING_FOR_FIRST_PIECE)
        self._stream_text, self._rendered = "", None
        self._render_timer.start(STREAM_RENDER_INTERVAL_MS)
        return self.streaming

    def append_token(self, piece: str) -> None:
        self._stream_text += piece

    def _render_stream(self) -> None:
        if self.streaming is None or not self._stream_text or self._rendered == self._stream_text:
            return
        started = time.perf_counter()
        self.streaming.set_text(self._stream_text)   # the view follows if at the bottom
        self._rendered = self._stream_text
        took_ms = (time.perf_counter() - started) * 1000
        self._render_timer.setInterval(max(STREAM_RENDER_INTERVAL_MS,
                                           int(took_ms * STREAM_RENDER_FREE_FACTOR)))

    def end_stream(self) -> None:
        """The reply has ended; its view waits for the committed reply's row (the next
        ``show_messages``), which takes it over if the text is the same."""
        self._render_timer.stop()
        self._discard_streamed()
        if self.streaming is not None:
            browser = self.streaming.browser
            browser.setParent(self.container)       # out of the row dropped below (hidden)
            self._streamed = (self._stream_text, browser)
        self._drop_stream()

    def _discard_streamed(self) -> None:
        if self._streamed is not None:
            self._streamed[1].deleteLater()
            self._streamed = None

    def _drop_stream(self) -> None:
        if self.streaming is not None:
            self._remove_rows([self.streaming])
            self.streaming = None

    def scroll_to_bottom(self) -> None:
        """To the bottom now, and stay there as the content grows."""
        self._follow_bottom = True
        self._anchor = None
        self.verticalScrollBar().setValue(self.verticalScrollBar().maximum())
