"""The recorders: device-rate events in, mapped samples out, batched into the store.

PointerRecorder: at most 120 moves a second, every click and scroll kept.
GazeRecorder: every gaze point and fixation the tracker reports (≈ 30 a second).

Any thread may call :meth:`PointerRecorder.event` (pynput's listener thread, the Qt event
filter on the UI thread, a gaze thread): the call maps the point against the current
:class:`LayoutSnapshot` (replaced whole by the UI thread when the layout changes) and
appends to a buffer. A flusher thread hands the buffer to the store every
``flush_interval_s``; the store's writer never blocks the caller, and consent, pause and
incognito are enforced by the store at the door.

Coalescing: a move closer than 1/120 s to the last stored move is held back, and replaced
by newer moves, until either the interval has passed (then the newest is stored) or a
click or scroll arrives (then it is stored first, so a click's position is exact).
"""
import threading
import time
from typing import Callable

from feedback_store import GazeSample, PointerSample
from feedback_store.layout import LayoutSnapshot
from feedback_store.reading_lines import ReadingOffset, ReadingOffsetMeter

MAX_MOVE_RATE_HZ = 120


class BatchingRecorder:
    """A buffer of mapped samples and the thread that hands it to the store."""

    def __init__(self, store, session_id: str | None, flush_interval_s: float = 0.1):
        self.store = store
        self.session_id = session_id
        self.snapshot = LayoutSnapshot()
        self.flush_interval_s = flush_interval_s
        self._lock = threading.Lock()
        self._buffer: list = []
        self.received = 0        # events in
        self.off_window = 0      # points over another application (or none shown): not kept
        # A window of Glance's own is over the main one (a modal dialog, the calibration
        # screen): the eyes are on it, not on a reply. Set by the UI thread; gaze checks it
        # (the pointer has the window system's enter and leave).
        self.covered = False
        self.submitted = 0       # samples handed to the store
        self.refused = 0         # samples the store refused (no consent, paused, ...)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_snapshot(self, snapshot: LayoutSnapshot) -> None:
        self.snapshot = snapshot  # one reference swap: readers see the old or the new

    def take(self) -> list:
        with self._lock:
            batch, self._buffer = self._buffer, []
        return batch

    def flush(self) -> int:
        batch = self.take()
        if not batch:
            return 0
        if self.store.samples.submit(batch):
            self.submitted += len(batch)
        else:
            self.refused += len(batch)
        return len(batch)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"glance-{type(self).__name__}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            self.flush()
        self._final_take()
        self.flush()

    def _final_take(self) -> None:
        """Subclasses release anything held back before the last flush."""

    def stop(self) -> None:
        """Stop the flusher after storing everything received so far."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None


class GazeRecorder(BatchingRecorder):
    """``point(GazePoint)`` from the tracker's thread: mapped like the pointer, stored
    at the camera's rate (no coalescing: fixations and raw points are both kept)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.switched_mono_ns = 0   # when the screen last moved to another conversation
        self.straddling = 0         # gaze begun before that, dropped
        # Reading as a weak vertical calibration target: the lines the fixations on a
        # reply were on say how far below the text the gaze lands. ``on_reading_offset``
        # (the tracker's) gets each measurement (a ReadingOffset); nothing of it is stored.
        self.on_reading_offset: Callable[[ReadingOffset], None] | None = None
        self.reading = ReadingOffsetMeter()

    def set_snapshot(self, snapshot: LayoutSnapshot) -> None:
        previous = self.snapshot.conversation_id
        if previous is not None and snapshot.conversation_id != previous:
            self.switched_mono_ns = time.monotonic_ns()     # before the snapshot: see point()
        super().set_snapshot(snapshot)

    def point(self, point) -> None:
        # Gaze reaches the recorder late: a frame's point after its processing, a fixation
        # at its end. One begun before the screen moved to another conversation belongs to
        # the old one (perhaps an incognito chat), not to the one the snapshot now shows.
        snapshot = self.snapshot            # first: set_snapshot writes the time first
        began = point.mono_ns - int((point.duration_ms or 0.0) * 1e6)
        if began < self.switched_mono_ns:
            with self._lock:
                self.straddling += 1
            return
        if self.covered or not snapshot.on_window(point.x, point.y):   # looking elsewhere
            with self._lock:
                self.off_window += 1
            return
        placed, offset, word, line = snapshot.map_one(point.x, point.y)
        sample = GazeSample(
            self.session_id, placed.shown_reply_id if placed else None,
            placed.conversation_id if placed else snapshot.conversation_id,
            point.mono_ns, point.wall_ns,
            point.kind, float(point.x), float(point.y), offset if offset >= 0 else None,
            "webcam", word if word >= 0 else None, line if line >= 0 else None,
            float(point.confidence), point.duration_ms,
            float(point.x - placed.origin[0]) if placed else None,
            float(point.y - placed.origin[1]) if placed else None)
        with self._lock:
            self.received += 1
            self._buffer.append(sample)
        if self._thread is None:
            self.start()
        if point.kind == "fixation" and placed and self.on_reading_offset is not None:
            geometry = placed.geometry
            measured = self.reading.add(
                (geometry.message_id, id(geometry)), sample.reply_x, sample.reply_y, point.mono_ns,
                geometry.line_top, geometry.line_height, geometry.line_x,
                geometry.line_x + geometry.line_width)
            if measured is not None:
                self.on_reading_offset(measured)


class PointerRecorder(BatchingRecorder):
    def __init__(self, store, session_id: str | None, flush_interval_s: float = 0.1,
                 max_move_rate_hz: float = MAX_MOVE_RATE_HZ):
        super().__init__(store, session_id, flush_interval_s)
        self.min_move_gap_ns = int(1e9 / max_move_rate_hz)
        self._pending_move: PointerSample | None = None
        self._last_move_ns = -(1 << 62)
        self.coalesced = 0       # moves replaced by a newer one within 1/120 s
        self.last_event_mono_ns = time.monotonic_ns()   # for idle detection
        # Whether the pointer is over Glance's window rather than over another application
        # covering part of it: the window's area alone cannot tell. Set by the UI thread
        # from the window system's enter and leave events (the hook may hear the first
        # move onto a covering window a moment before the leave arrives: that one is kept).
        self.over_window = True

    # --- producers -------------------------------------------------------------------

    def event(self, kind: str, x: float, y: float, source: str, mono_ns: int | None = None,
              wall_ns: int | None = None, button: str | None = None,
              dx: float | None = None, dy: float | None = None) -> None:
        mono_ns = time.monotonic_ns() if mono_ns is None else mono_ns
        wall_ns = time.time_ns() if wall_ns is None else wall_ns
        if source == "pynput":                 # the window system's device pixels
            x, y = self.snapshot.to_logical(x, y)
        if not (self.over_window and self.snapshot.on_window(x, y)):   # over another app
            with self._lock:
                self.received += 1
                self.off_window += 1
                self.last_event_mono_ns = mono_ns   # (the user is not away, though)
            return
        sample = self._map(kind, x, y, source, mono_ns, wall_ns, button, dx, dy)
        with self._lock:
            self.received += 1
            self.last_event_mono_ns = mono_ns
            if kind == "move":
                if mono_ns - self._last_move_ns >= self.min_move_gap_ns:
                    self._pending_move = None
                    self._last_move_ns = mono_ns
                    self._buffer.append(sample)
                else:
                    if self._pending_move is not None:
                        self.coalesced += 1
                    self._pending_move = sample
                return
            self._release_pending()
            self._buffer.append(sample)

    def _release_pending(self) -> None:
        if self._pending_move is not None:
            self._buffer.append(self._pending_move)
            self._last_move_ns = self._pending_move.mono_ns
            self._pending_move = None

    def _map(self, kind, x, y, source, mono_ns, wall_ns, button, dx, dy) -> PointerSample:
        snapshot = self.snapshot
        placed, offset, word, line = snapshot.map_one(x, y)
        return PointerSample(
            self.session_id, placed.shown_reply_id if placed else None,
            placed.conversation_id if placed else snapshot.conversation_id, mono_ns, wall_ns, kind,
            float(x), float(y), offset if offset >= 0 else None, source,
            word if word >= 0 else None, line if line >= 0 else None, button,
            None if dx is None else float(dx), None if dy is None else float(dy),
            snapshot.window_visible)

    # --- draining --------------------------------------------------------------------
    def take(self) -> list[PointerSample]:
        """Everything ready to store (a held-back move too, once its interval is over)."""
        with self._lock:
            if self._pending_move is not None and \
                    time.monotonic_ns() - self._last_move_ns >= self.min_move_gap_ns:
                self._release_pending()
            batch, self._buffer = self._buffer, []
        return batch

    def _final_take(self) -> None:
        with self._lock:
            self._release_pending()
