"""``store.traces``: read live reading traces back from the store, as the same numpy
:class:`ReadingTrace` / :class:`PairTrace` that imported research data produce, so the
reward model's features never ask where a trace came from.

One shown reply's trace holds its pointer samples (source MOUSE) and gaze samples
(source GAZE) on the reply's clock (ms since it was shown). Word indices come from the
shared tokenizer (words.py); lines from the layout stored with the reply; ``visible``
from the viewport events (the sample's line within the visible range at that moment).
"""
import json

import numpy as np

from .trace import GAZE, MOUSE, PairTrace, ReadingTrace

LIVE_USER = "local"


class TraceReader:
    def __init__(self, store):
        self.store = store

    def shown_reply(self, shown_reply_id: str) -> dict | None:
        rows = self.store._rows("SELECT * FROM shown_replies WHERE id = ?", (shown_reply_id,))
        return rows[0] if rows else None

    def for_shown_reply(self, shown_reply_id: str, zero_mono_ns: int | None = None) -> ReadingTrace:
        shown = self.shown_reply(shown_reply_id)
        if shown is None:
            raise KeyError(f"no shown reply {shown_reply_id!r}")
        zero = shown["shown_mono_ns"] if zero_mono_ns is None else zero_mono_ns
        layout = json.loads(shown["layout"] or "[]")
        line_starts = np.asarray([box["start"] for box in layout] or [0], np.int32)
        pointer = self._samples("pointer_samples", "1.0", shown_reply_id)
        gaze = self._samples("gaze_samples", "coalesce(confidence, 'NaN'::DOUBLE)", shown_reply_id)
        mono = np.concatenate([pointer["mono_ns"], gaze["mono_ns"]])
        source = np.concatenate([np.full(len(pointer["mono_ns"]), MOUSE, np.uint8),
                                 np.full(len(gaze["mono_ns"]), GAZE, np.uint8)])
        offset = np.concatenate([pointer["text_offset"], gaze["text_offset"]])
        missing = set()
        visible = self._visible(shown_reply_id, mono, offset, line_starts)
        if visible is None:
            missing.add("visible")
        if not len(gaze["mono_ns"]):
            missing.add("gaze")
        hidden = shown["hidden_mono_ns"]
        return ReadingTrace.build(
            t_ms=(mono - zero) / 1e6, offset=offset, text=shown["rendered_text"] or "",
            line_starts=line_starts,
            x=np.concatenate([pointer["x"], gaze["x"]]), y=np.concatenate([pointer["y"], gaze["y"]]),
            source=source, visible=visible,
            confidence=np.concatenate([pointer["confidence"], gaze["confidence"]]),
            origin="live", user_id=LIVE_USER, shown_reply_id=shown_reply_id,
            shown_for_ms=(hidden - shown["shown_mono_ns"]) / 1e6 if hidden else float("nan"),
            missing=missing)

    def _samples(self, table: str, confidence_sql: str, shown_reply_id: str) -> dict:
        with self.store.reading():
            result = self.store._cursor().execute(
                f"SELECT mono_ns, coalesce(x, 'NaN'::DOUBLE) AS x, coalesce(y, 'NaN'::DOUBLE) AS y, "
                f"coalesce(text_offset, -1) AS text_offset, {confidence_sql} AS confidence "
                f"FROM {table} WHERE shown_reply_id = ? ORDER BY mono_ns",
                [shown_reply_id]).fetchnumpy()
        return {"mono_ns": np.asarray(result["mono_ns"], np.int64),
                "x": np.asarray(result["x"], np.float64), "y": np.asarray(result["y"], np.float64),
                "text_offset": np.asarray(result["text_offset"], np.int64),
                "confidence": np.asarray(result["confidence"], np.float32)}

    def _visible(self, shown_reply_id, mono, offset, line_starts) -> np.ndarray | None:
        events = self.store._rows(
            "SELECT mono_ns, first_line, last_line, coalesce(window_visible, true) AS shown "
            "FROM viewport_events WHERE shown_reply_id = ? ORDER BY mono_ns", (shown_reply_id,))
        if not events:
            return None
        times = np.asarray([e["mono_ns"] for e in events], np.int64)
        first = np.asarray([-1 if e["first_line"] is None else e["first_line"] for e in events])
        last = np.asarray([-1 if e["last_line"] is None else e["last_line"] for e in events])
        shown = np.asarray([bool(e["shown"]) for e in events])
        at = np.searchsorted(times, mono, side="right") - 1
        before_any = at < 0
        at = np.clip(at, 0, len(events) - 1)
        line = np.searchsorted(line_starts, offset, side="right") - 1
        on_screen = shown[at] & (first[at] >= 0)
        # A point on a line must be on a visible line; a point off the text needs only
        # some of the reply on screen.
        within = np.where(offset >= 0, (line >= first[at]) & (line <= last[at]), True)
        return np.where(before_any, True, on_screen & within)

    def for_pick(self, pick_id: str) -> PairTrace:
        """Both replies of a side-by-side pick on one clock (zero: when the later of the
        two appeared), with the time of the pick."""
        rows = self.store._rows(
            "SELECT message_id, other_message_id, picked_mono_ns FROM feedback "
            "WHERE id = ? AND kind = 'pick'", (pick_id,))
        if not rows:
            raise KeyError(f"no pick {pick_id!r}")
        pick = rows[0]
        shown = {}
        for message_id in (pick["message_id"], pick["other_message_id"]):
            found = self.store._rows(
                "SELECT id, shown_mono_ns FROM shown_replies WHERE message_id = ? "
                "AND shown_mono_ns <= ? ORDER BY shown_mono_ns DESC LIMIT 1",
                (message_id, pick["picked_mono_ns"]))
            if not found:
                raise KeyError(f"reply {message_id} of pick {pick_id} was never shown")
            shown[message_id] = found[0]
        zero = max(s["shown_mono_ns"] for s in shown.values())
        left = self.for_shown_reply(shown[pick["message_id"]]["id"], zero_mono_ns=zero)
        right = self.for_shown_reply(shown[pick["other_message_id"]]["id"], zero_mono_ns=zero)
        return PairTrace(left, right, pick_t_ms=(pick["picked_mono_ns"] - zero) / 1e6)
