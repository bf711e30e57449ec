"""High-rate samples as named tuples: cheap to build on a capture thread, and their
field order is the column order of their table (one declaration, no positions).

Times: ``mono_ns`` (time.monotonic_ns) for ordering and durations, ``wall_ns`` for people.
"""
import json
import math
import time
from typing import NamedTuple

from .signals import SAMPLE_TABLE_SIGNAL


class PointerSample(NamedTuple):
    session_id: str | None
    shown_reply_id: str | None
    conversation_id: str | None
    mono_ns: int
    wall_ns: int
    kind: str                    # move | click | scroll | select | copy | key_timing
    x: float | None = None       # screen coordinates, logical pixels
    y: float | None = None
    text_offset: int | None = None  # char offset in the reply's rendered text; None = not over text
    source: str = "qt"           # pynput | qt
    word_index: int | None = None
    line: int | None = None
    button: str | None = None    # clicks: left | right | middle
    dx: float | None = None      # scroll steps
    dy: float | None = None
    window_visible: bool | None = None  # False while the window is minimised or hidden


class GazeSample(NamedTuple):
    session_id: str | None
    shown_reply_id: str | None
    conversation_id: str | None
    mono_ns: int
    wall_ns: int
    kind: str                    # raw | fixation
    x: float | None = None
    y: float | None = None
    text_offset: int | None = None
    source: str = "webcam"
    word_index: int | None = None
    line: int | None = None
    confidence: float | None = None
    duration_ms: float | None = None   # fixations: how long the eyes stayed
    # The point on the reply's text area (its own pixels, 0, 0 = top-left) when it fell
    # on a reply: it stays true when the reply scrolls (schema 8; reading_lines.py).
    reply_x: float | None = None
    reply_y: float | None = None


class ViewportEvent(NamedTuple):
    """Which visual lines of a reply are on screen, from this moment on."""
    session_id: str | None
    shown_reply_id: str | None
    conversation_id: str | None
    mono_ns: int
    wall_ns: int
    kind: str        # layout | scroll | resize | move | minimized | restored | focus | blur | idle | active
    first_line: int | None = None   # None: no line of it visible
    last_line: int | None = None
    origin_x: float | None = None
    origin_y: float | None = None
    window_visible: bool | None = None
    # The visible text [first_offset, last_offset): the lines above are the layout's of
    # this moment, and a re-wrap renumbers them (see traces.TraceReader._views).
    first_offset: int | None = None
    last_offset: int | None = None


class ReplyAction(NamedTuple):
    """Something the user did around a reply; offsets only, never text or keys."""
    session_id: str | None
    shown_reply_id: str | None
    conversation_id: str | None
    message_id: str | None
    mono_ns: int
    wall_ns: int
    kind: str        # select | copy | stop | regenerate | edit | thumb | sibling | compare
                     # | pick | first_keystroke | typing
    start_offset: int | None = None
    end_offset: int | None = None
    value: float | None = None
    duration_ms: float | None = None


SAMPLE_TYPES = {"pointer_samples": PointerSample, "gaze_samples": GazeSample,
                "viewport_events": ViewportEvent, "reply_actions": ReplyAction}
TABLE_OF = {cls: table for table, cls in SAMPLE_TYPES.items()}

_SQL_TYPES = {str: "VARCHAR", bool: "BOOLEAN", int: "BIGINT", float: "DOUBLE"}


def _sql_type(annotation) -> str:
    for python_type, sql in _SQL_TYPES.items():
        if annotation is python_type or python_type in getattr(annotation, "__args__", ()):
            return sql
    raise TypeError(f"no SQL type for {annotation!r}")


# table -> ((column, SQL type), ...) in tuple order, derived from the annotations.
SAMPLE_COLUMNS = {
    table: tuple((name, _sql_type(cls.__annotations__[name])) for name in cls._fields)
    for table, cls in SAMPLE_TYPES.items()
}


class MalformedSample(ValueError):
    pass


def check(sample) -> None:
    """Refuse a sample that could not be stored, before it reaches the writer, so one
    bad row never costs the rows queued beside it."""
    if type(sample) not in TABLE_OF:
        raise MalformedSample(f"not a sample: {type(sample).__name__}")
    for (name, sql), value in zip(SAMPLE_COLUMNS[TABLE_OF[type(sample)]], sample):
        if value is None:
            continue
        if sql == "BOOLEAN" and not isinstance(value, bool):
            raise MalformedSample(f"{name} must be true or false, got {value!r}")
        if sql == "VARCHAR" and not isinstance(value, str):
            raise MalformedSample(f"{name} must be text, got {value!r}")
        if sql == "BIGINT" and (isinstance(value, bool) or not isinstance(value, int)
                                or not -2**63 < value < 2**63):
            raise MalformedSample(f"{name} must be a 64-bit integer, got {value!r}")
        if sql == "DOUBLE" and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                or math.isinf(value)):
            raise MalformedSample(f"{name} must be a finite number, got {value!r}")
    if sample.mono_ns is None or sample.wall_ns is None or sample.kind is None:
        raise MalformedSample("mono_ns, wall_ns and kind are required")


class SampleManager:
    """``store.samples``: app sessions, replies as shown on screen, and the sample
    stream. Consent, pause, incognito and deletion are enforced here, at the door."""

    def __init__(self, store):
        self.store = store

    def start_session(self, app_version: str, screen: dict | None = None) -> str:
        from .conversations import new_id
        session_id = new_id()
        self.store._post("INSERT INTO app_sessions VALUES (?, ?, ?, ?, ?)",
                          (session_id, time.time_ns(), time.monotonic_ns(), app_version,
                           json.dumps(screen or {})))
        return session_id

    def record_shown_reply(self, *, session_id: str | None, message_id: str,
                           conversation_id: str, geometry: tuple[int, int, int, int],
                           device_pixel_ratio: float, rendered_text: str,
                           layout: list[dict], wait: bool = True) -> str | None:
        """Remember what a reply looked like on screen; samples refer to the returned id.
        ``wait=False`` queues the row (the window never waits on the store); samples
        submitted after it are written after it."""
        from .conversations import new_id
        conversations = self.store.conversations
        if conversations.is_incognito(conversation_id) or conversation_id in conversations._deleted:
            return None
        if self.store.consent.paused:
            # "Pause all collection": what was on screen, and for how long, is collection
            # too. The window records it once collection resumes.
            return None
        shown_id = new_id()
        x, y, width, height = geometry
        row = (shown_id, session_id, message_id, conversation_id, time.time_ns(),
               time.monotonic_ns(), x, y, width, height, device_pixel_ratio, rendered_text,
               json.dumps(layout))
        sql = "INSERT INTO shown_replies VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?)"
        if wait:
            self.store._write(sql, row)
        else:
            self.store._post(sql, row)
        return shown_id

    def update_shown_geometry(self, shown_reply_id: str, geometry: tuple[int, int, int, int],
                              layout: list[dict]) -> None:
        """The reply moved (scroll, resize, window move): keep its latest place. Each
        move is also a viewport event, so positions over time are never lost."""
        x, y, width, height = geometry
        self.store._post("UPDATE shown_replies SET screen_x = ?, screen_y = ?, width = ?, "
                         "height = ?, layout = ? WHERE id = ?",
                         (x, y, width, height, json.dumps(layout), shown_reply_id))

    def mark_reply_hidden(self, shown_reply_id: str) -> None:
        self.store._post("UPDATE shown_replies SET hidden_mono_ns = ? WHERE id = ?",
                         (time.monotonic_ns(), shown_reply_id))

    def submit(self, samples: list) -> bool:
        """Queue samples of one type without waiting. Refused (and counted by reason)
        without consent, while paused, from an incognito or deleted conversation, or
        when the queue is full. A malformed sample raises MalformedSample."""
        if not samples:
            return False
        kind = type(samples[0])
        table = TABLE_OF.get(kind)
        if table is None or any(type(sample) is not kind for sample in samples):
            raise MalformedSample("submit takes a list of samples of one kind "
                                  "(PointerSample, GazeSample, ViewportEvent or ReplyAction)")
        # Field values are checked by the writer only if the batch fails to insert (see
        # Writer._flush_samples): checking every field here would cost more than storing.
        samples = self.admit(SAMPLE_TABLE_SIGNAL[table], samples)
        if not samples:
            return False
        if self.store.writer.submit_samples(table, SAMPLE_COLUMNS[table], samples):
            return True
        self.store.consent.count_refused("queue_full" if self.store.writer.accepting else "closed",
                                         len(samples))
        return False

    def admit(self, signal: str, rows: list) -> list:
        """The store's door for everything derived from reading: the rows (each with a
        ``conversation_id``) that may be written now. None without the signal's consent or
        while paused; none of an incognito or deleted conversation. Refusals are counted
        by reason."""
        consent = self.store.consent
        if consent.paused:
            consent.count_refused("paused", len(rows))
            return []
        if not consent.is_on(signal):
            consent.count_refused(f"no_consent:{signal}", len(rows))
            return []
        for reason, ids in (("incognito", self.store.conversations._incognito),
                            ("deleted", self.store.conversations._deleted)):
            if ids:
                kept = [r for r in rows if r.conversation_id not in ids]
                if len(kept) != len(rows):
                    consent.count_refused(reason, len(rows) - len(kept))
                rows = kept
        return rows

    def not_deleted(self, table: str, columns: tuple, rows: list) -> list:
        """The writer's last look at queued samples, on its own thread, right before they
        are inserted: a sample the door let in just before its conversation was deleted
        can reach the queue after the deletion, and would then outlive it. (Samples
        captured while a consent was on are kept when it is withdrawn while they wait:
        they were given with it.)"""
        deleted = self.store.conversations._deleted
        if not deleted or table not in SAMPLE_TABLE_SIGNAL:
            return rows
        at = [name for name, _ in columns].index("conversation_id")
        kept = [r for r in rows if r[at] not in deleted]
        if len(kept) != len(rows):
            self.store.consent.count_refused("deleted", len(rows) - len(kept))
        return kept

    def session_summary(self) -> list[dict]:
        """Per app session: replies shown, samples per signal and replies the reward model
        scored from them (the privacy data view)."""
        return self.store._rows(
            "SELECT s.id, s.started_wall_ns,"
            " (SELECT count(*) FROM shown_replies r WHERE r.session_id = s.id) AS replies,"
            " (SELECT count(*) FROM pointer_samples p WHERE p.session_id = s.id) AS pointer,"
            " (SELECT count(*) FROM gaze_samples g WHERE g.session_id = s.id) AS gaze,"
            " (SELECT count(DISTINCT c.shown_reply_id) FROM reply_scores c"
            "  JOIN shown_replies r ON r.id = c.shown_reply_id WHERE r.session_id = s.id) AS scored"
            " FROM app_sessions s ORDER BY s.started_wall_ns DESC")
