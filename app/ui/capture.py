"""Interaction capture in the window: keeps the layout snapshot current, runs the pointer
recorder with a global hook (or Qt events where there is none), and records what is on
screen and what the user does around each reply.

GUI-free parts live in app/capture (recorder, hooks) and app/session (bookkeeping); this
module only listens to Qt and forwards. Nothing runs without the pointer consent: the
controller starts and stops with it (and with pause), and the store refuses anything
that slips through.
"""
import time
from dataclasses import replace

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication

from feedback_store import ReplyAction, ViewportEvent
from feedback_store.layout import LayoutSnapshot

from ..capture.hooks import GlobalPauseHotkey, GlobalPointerHook, global_hooks_available
from ..capture.recorder import PointerRecorder
from .layout_probe import corners, global_rect, text_offsets
from ..session import ReplyOnScreen

SETTLE_MS = 40          # layout changes are published once they stop for this long
IDLE_AFTER_S = 60.0     # no input for this long: the reader is away (or the screen locked)
_QT_BUTTONS = {Qt.MouseButton.LeftButton: "left", Qt.MouseButton.RightButton: "right",
               Qt.MouseButton.MiddleButton: "middle"}


def selected_offsets(browser) -> tuple[int, int]:
    """A reply's selection as offsets into its plain text (as samples' offsets are)."""
    cursor, text = browser.textCursor(), browser.document().toPlainText()
    return text_offsets(text, cursor.selectionStart(), cursor.selectionEnd())


class CaptureController(QObject):
    pause_requested = Signal()        # the global hotkey, delivered on the UI thread
    snapshot_published = Signal(object)

    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self.session = window.session
        self.recorder = PointerRecorder(window.session.store, window.session.id)
        # Until the first snapshot says where the window is, no point is on it (the
        # recorders' default, "not known", keeps every point).
        self.recorder.set_snapshot(LayoutSnapshot(window_rect=(0.0, 0.0, 0.0, 0.0)))
        self.recorders = [self.recorder]   # every recorder that maps against the layout
        self.global_ok, self.global_why = global_hooks_available()
        self.hook: GlobalPointerHook | None = None
        self.hotkey: GlobalPauseHotkey | None = None
        self.qt_fallback = False
        self.running = False
        # (message id, shown reply id) -> last visible lines: a reply shown again (its
        # chat left and reopened) is a new showing, whose first view must be written.
        self._visible: dict[tuple, tuple | None] = {}
        self._stored_geometry: dict = {}   # showing id -> the geometry its stored lines are of
        self._reason = "layout"
        self._last_input = time.monotonic()
        self._idle = False
        self._reply_finished_mono: float | None = None
        self._reply_finished_in: str | None = None    # the conversation it finished in
        self._first_key_mono: float | None = None
        self.filling = False          # the window puts text in the box: nobody typed it
        self._last_qt_event = None
        self.settle = QTimer(self, singleShot=True, interval=SETTLE_MS)
        self.settle.timeout.connect(self.publish)
        self.idle_timer = QTimer(self, interval=5000)
        self.idle_timer.timeout.connect(self._check_idle)
        self.pause_requested.connect(window.toggle_pause)
        window.installEventFilter(self)
        self._scroll_value = window.chat_view.verticalScrollBar().value()
        window.chat_view.verticalScrollBar().valueChanged.connect(self._scrolled)
        # Replies move inside the window without it moving or resizing: "Show all" on a
        # long message above them, the sidebar's splitter dragged, the edit banner shown.
        self._view, self._column = window.chat_view.viewport(), window.chat_view.widget()
        for inside in (self._view, self._column):
            inside.installEventFilter(self)
        window.chat_view.viewport().setMouseTracking(True)
        QGuiApplication.instance().applicationStateChanged.connect(self._app_state)
        window.input.textChanged.connect(self._typed)

    def add_recorder(self, recorder) -> None:
        """Another source (gaze) that maps its points against the same snapshot."""
        self.recorders.append(recorder)
        recorder.set_snapshot(self.recorder.snapshot)

    # --- start / stop with consent --------------------------------------------------------
    def sync(self) -> None:
        """Run exactly when the pointer signal may be recorded."""
        consent = self.session.store.consent
        wanted = consent.is_on("pointer") and not consent.paused
        if wanted and not self.running:
            self.start()
        elif not wanted and self.running:
            self.stop()
        if self.global_ok and self.hotkey is None and self.running:
            self._start_hotkey()
        elif self.hotkey is not None and not consent.is_on("pointer"):
            # A desktop-wide keyboard hook (it sees every key, keeps none) goes with the
            # consent; while paused it stays, to resume with. It stayed until quitting.
            self.hotkey.stop()
            self.hotkey = None
            self.window.pause_shortcut.setEnabled(True)

    def start(self) -> None:
        self.recorder.over_window = self.window.underMouse()
        self.recorder.start()
        if self.global_ok:
            try:
                self.hook = GlobalPointerHook(self.recorder.event)
                self.hook.start()
            except Exception as error:  # noqa: BLE001 - fall back, and say why
                self.hook = None
                self.global_ok, self.global_why = False, f"Global pointer hook failed: {error}"
        if self.hook is None:
            self.qt_fallback = True
            QApplication.instance().installEventFilter(self)
        self.running = True
        self.idle_timer.start()
        self.window.set_collector("pointer", self)
        self.layout_changed("layout")

    def _start_hotkey(self) -> None:
        try:
            self.hotkey = GlobalPauseHotkey(self.pause_requested.emit)
            self.hotkey.start()
            self.window.pause_shortcut.setEnabled(False)   # one press, one toggle
        except Exception:  # noqa: BLE001 - the in-window shortcut still works
            self.hotkey = None

    def stop(self) -> None:
        if self.hook is not None:
            self.hook.stop()
            self.hook = None
        if self.qt_fallback:
            QApplication.instance().removeEventFilter(self)
            self.qt_fallback = False
        self.idle_timer.stop()
        self.recorder.stop()
        self.running = False
        self.window.set_collector("pointer", None)

    def shutdown(self) -> None:
        self.stop()
        if self.hotkey is not None:
            self.hotkey.stop()
            self.hotkey = None

    def describe(self) -> str:
        """For the privacy panel: how the pointer is captured here."""
        if self.global_ok:
            return ("Pointer: read system-wide (X11 hook); only points over Glance's window are "
                    "kept, none over other applications or while it is minimised.")
        return "Pointer: " + self.global_why

    # --- layout ------------------------------------------------------------------------
    def layout_changed(self, reason: str = "layout") -> None:
        if self._reason == "layout" or reason != "layout":
            self._reason = reason
        self.settle.start()

    def _scrolled(self, value: int) -> None:
        """The replies move with the scroll bar at once (a shifted snapshot, arithmetic
        only); the measured one follows once the scrolling settles. Until then, for a
        whole smooth scroll, points were mapped to where the words had been."""
        dy, self._scroll_value = value - self._scroll_value, value
        for recorder in self.recorders:
            recorder.set_snapshot(recorder.snapshot.scrolled(dy))
        self._show_appearing()
        self.layout_changed("scroll")

    def _on_screen(self) -> bool:
        """The window is drawn where the user can see it (exposed, not minimised)."""
        window, handle = self.window, self.window.windowHandle()
        return bool(handle and handle.isExposed()) and window.isVisible() and not window.isMinimized()

    def _show_appearing(self) -> None:
        """A reply scrolled into view is shown from now, not from the next measured
        snapshot: meanwhile the points over it belonged to no showing."""
        appearing = [placed for placed in self.recorder.snapshot.replies
                     if placed.shown_reply_id is None
                     and placed.clip[2] > placed.clip[0] and placed.clip[3] > placed.clip[1]]
        if not appearing or not self._on_screen():
            return
        self.window.record_shown_replies(replace(self.recorder.snapshot, replies=tuple(appearing)))
        shown_id = self.session.shown_id
        for recorder in self.recorders:
            snapshot = recorder.snapshot
            recorder.set_snapshot(replace(snapshot, replies=tuple(
                replace(placed, shown_reply_id=shown_id(placed.geometry.message_id))
                if placed.shown_reply_id is None else placed for placed in snapshot.replies)))

    def narrow(self, keep: set[str], conversation_id: str | None) -> None:
        """At once, before the layout settles: points stop mapping to replies that are
        leaving the screen (they are marked hidden and scored now), and points over no
        reply belong to ``conversation_id`` (the one now shown). Otherwise, until the
        next snapshot, the next chat's words were stored as the old replies' words."""
        for recorder in self.recorders:
            old = recorder.snapshot
            recorder.set_snapshot(replace(
                old, replies=tuple(r for r in old.replies if r.geometry.message_id in keep),
                conversation_id=conversation_id))

    def publish(self) -> None:
        """Measure (once settled and exposed), hand the snapshot to the recorder, record
        newly shown replies and their moves, and write viewport events for changes."""
        window = self.window
        reason, self._reason = self._reason, "layout"
        tree = window.tree
        if tree is None:
            return
        conversation_id = tree.id
        snapshot = window.probe.snapshot(clip_to=window.chat_view.viewport())
        if self._on_screen():
            window.record_shown_replies(snapshot)
        ids = {m: (self.session.shown_id(m), conversation_id) for m in window.probe.message_ids()}
        area = global_rect(window)
        snapshot = replace(window.probe.snapshot(ids, clip_to=window.chat_view.viewport()),
                           conversation_id=conversation_id,
                           window_visible=window.isVisible() and not window.isMinimized(),
                           window_rect=corners(area))
        for recorder in self.recorders:
            recorder.set_snapshot(snapshot)
        self.snapshot_published.emit(snapshot)
        if not self.running:
            return
        now_mono, now_wall = time.monotonic_ns(), time.time_ns()
        events, visible = [], {}
        for placed in snapshot.replies:
            message_id = placed.geometry.message_id
            geometry = placed.geometry
            lines = placed.visible_lines() if snapshot.window_visible else None
            # The text on screen, not only its line numbers: a re-wrap keeps the numbers
            # of the visible lines and changes what they hold.
            text = (int(geometry.line_start[lines[0]]), int(geometry.line_end[lines[1]])) \
                if lines else (None, None)
            seen = (message_id, placed.shown_reply_id)
            visible[seen] = (lines, text)
            if placed.shown_reply_id and reason == "layout" \
                    and self._stored_geometry.get(placed.shown_reply_id) is not geometry:
                # Laid out anew where nothing moved or scrolled (the pick widening the
                # kept reply, the splitter, Show all): its stored lines kept the old wrap
                # until the next move, and the gaze line decoding reads them.
                self._store_geometry(placed, conversation_id)
            if reason in ("scroll", "layout") and self._visible.get(seen) == (lines, text) \
                    or placed.shown_reply_id is None:
                continue           # (not shown yet, or a chat that is not recorded)
            events.append(ViewportEvent(
                self.session.id, placed.shown_reply_id, conversation_id, now_mono, now_wall,
                reason, lines[0] if lines else None, lines[1] if lines else None,
                placed.origin[0], placed.origin[1], snapshot.window_visible, *text))
            if placed.shown_reply_id and reason in ("move", "resize", "scroll"):
                self._store_geometry(placed, conversation_id)
        self._visible = visible            # (the replies on screen now)
        shown = {placed.shown_reply_id for placed in snapshot.replies}
        self._stored_geometry = {k: v for k, v in self._stored_geometry.items() if k in shown}
        if events:
            self.session.record(events)

    def _store_geometry(self, placed, conversation_id) -> None:
        """The showing's stored place and lines, as on screen now."""
        geometry = placed.geometry
        self._stored_geometry[placed.shown_reply_id] = geometry
        self.session.reply_moved(ReplyOnScreen(
            geometry.message_id, conversation_id,
            (int(placed.origin[0]), int(placed.origin[1]), int(placed.clip[2] - placed.clip[0]),
             int(geometry.line_top[-1] + geometry.line_height[-1]) if geometry.n_lines else 0),
            1.0, geometry.text, geometry.line_boxes(*placed.origin)))

    def _window_state(self, kind: str) -> None:
        # Published whether or not the pointer is recorded: gaze maps against the same
        # snapshot, and with only the gaze consent a minimised window still said it was
        # visible, so gaze at other applications was stored as reading of its replies.
        self._reason = kind
        self.publish()

    def _app_state(self, state) -> None:
        self._window_state("focus" if state == Qt.ApplicationState.ApplicationActive else "blur")

    def seconds_since_input(self) -> float:
        """How long the user has left keyboard and pointer alone (the nightly job may wait)."""
        return time.monotonic() - max(self._last_input, self.recorder.last_event_mono_ns / 1e9)

    def _check_idle(self) -> None:
        idle = self.seconds_since_input() > IDLE_AFTER_S
        if idle != self._idle:
            self._idle = idle
            self._window_state("idle" if idle else "active")

    # --- actions around a reply ---------------------------------------------------------
    def action(self, kind: str, message_id: str | None, start: int | None = None,
               end: int | None = None, value: float | None = None,
               duration_ms: float | None = None) -> None:
        tree = self.window.tree
        if not self.running or tree is None:
            return
        self.session.record([ReplyAction(
            self.session.id, self.session.shown_id(message_id) if message_id else None, tree.id,
            message_id, time.monotonic_ns(), time.time_ns(), kind, start, end, value,
            duration_ms)])

    def reply_finished(self) -> None:
        self._reply_finished_mono = time.monotonic()
        self._reply_finished_in = self.window.tree.id if self.window.tree else None
        self._first_key_mono = None

    def _typed(self) -> None:
        """Timing of the next message only: when typing began, never what was typed. Text
        the window puts in the box (an edit, a draft brought back) is not typing, and a
        reply finished in another chat is not the one the next message answers."""
        if self.filling:
            return
        self._last_input = time.monotonic()   # typing is being there (not "idle", not away)
        if self._first_key_mono is None and self.window.input.toPlainText():
            self._first_key_mono = time.monotonic()
            here = self.window.tree.id if self.window.tree else None
            if self._reply_finished_mono is not None and self._reply_finished_in == here:
                last = self._last_reply_id()
                self.action("first_keystroke", last,
                            value=(self._first_key_mono - self._reply_finished_mono) * 1000)

    def message_sent(self) -> None:
        if self._first_key_mono is not None:
            self.action("typing", self._last_reply_id(),
                        duration_ms=(time.monotonic() - self._first_key_mono) * 1000)
        self._first_key_mono = None
        self._reply_finished_mono = None

    def _last_reply_id(self) -> str | None:
        tree = self.window.tree
        path = tree.active_path() if tree else []
        replies = [m.id for m in path if m.role == "assistant"]
        return replies[-1] if replies else None

    def watch_browser(self, message_id: str, browser) -> None:
        """Selections and copies inside a reply: offsets only, never the text."""
        browser.viewport().setMouseTracking(True)
        browser.installEventFilter(self)
        browser.selectionChanged.connect(lambda: self._selection(message_id, browser))
        browser.copied.connect(lambda: self._copied(message_id, browser))

    def _copied(self, message_id: str, browser) -> None:
        if browser.textCursor().hasSelection():
            self.action("copy", message_id, *selected_offsets(browser))

    def _selection(self, message_id: str, browser) -> None:
        cursor = browser.textCursor()
        if cursor.hasSelection():
            self.action("select", message_id, *selected_offsets(browser))

    # --- Qt events ---------------------------------------------------------------------
    def eventFilter(self, watched, event) -> bool:
        # Installed on the whole application in the Qt fallback: thousands of events pass
        # on every re-render, so the ones ignored are told apart with identity and
        # isinstance checks (cheap), before any event.type() (an enum conversion, ≈ 2 µs).
        if watched is self._view or watched is self._column:
            if event.type() in (QEvent.Type.Resize, QEvent.Type.Move):
                self.layout_changed("layout")
            return False
        if watched is self.window:
            kind = event.type()
            if kind in (QEvent.Type.Move, QEvent.Type.Resize):
                self.layout_changed("move" if kind == QEvent.Type.Move else "resize")
            elif kind == QEvent.Type.WindowStateChange:
                self._window_state("minimized" if self.window.isMinimized() else "restored")
            elif kind in (QEvent.Type.Hide, QEvent.Type.Show):
                self._window_state("hidden" if kind == QEvent.Type.Hide else "restored")
            elif kind in (QEvent.Type.WindowBlocked, QEvent.Type.WindowUnblocked):
                # One of Glance's dialogs is over the window: the eyes are on it.
                for recorder in self.recorders:
                    recorder.covered = kind == QEvent.Type.WindowBlocked
            elif kind in (QEvent.Type.Enter, QEvent.Type.Leave):
                # Leave also comes when the pointer moves onto a window that covers part
                # of Glance's (another application's, or a dialog): not over a reply then.
                self.recorder.over_window = kind == QEvent.Type.Enter
            return False
        if not isinstance(event, (QMouseEvent, QWheelEvent)):
            return False
        kind = event.type()
        if kind in (QEvent.Type.MouseMove, QEvent.Type.MouseButtonPress, QEvent.Type.Wheel):
            self._last_input = time.monotonic()
            if self.qt_fallback and hasattr(event, "globalPosition"):
                point = event.globalPosition()
                # An event a child ignores is delivered again to its parent: count it once.
                key = (kind, event.timestamp(), point.x(), point.y())
                if key == self._last_qt_event:
                    return False
                self._last_qt_event = key
                if kind == QEvent.Type.MouseMove:
                    self.recorder.event("move", point.x(), point.y(), "qt")
                elif kind == QEvent.Type.MouseButtonPress:
                    self.recorder.event("click", point.x(), point.y(), "qt",
                                        button=_QT_BUTTONS.get(event.button(), "other"))
                else:
                    delta = event.angleDelta()
                    self.recorder.event("scroll", point.x(), point.y(), "qt",
                                        dx=delta.x() / 120, dy=delta.y() / 120)
        return False
