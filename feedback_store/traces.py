"""``store.traces``: read live reading traces back from the store, as the same numpy
:class:`ReadingTrace` / :class:`PairTrace` that imported research data produce, so the
reward model's features never ask where a trace came from.

``activity`` reads what else the user did with a shown reply (the lines on screen, the
actions on it) as a :class:`ReplyActivity` on the same clock.

One shown reply's trace holds its pointer samples (source MOUSE) and gaze samples
(source GAZE) on the reply's clock (ms since it was shown). Word indices come from the
shared tokenizer (words.py); lines from the layout stored with the reply; ``visible``
from the viewport events (the sample's line within the visible range at that moment).
"""
import functools
import json

import numpy as np

from .reading_lines import assign_lines, fixation_centres, fixation_of, sample_offsets, stacked
from .trace import GAZE, MOUSE, PairTrace, ReadingTrace, ReplyActivity

LIVE_USER = "local"


@functools.lru_cache(maxsize=32)
def _boxes(layout: str | None) -> dict[str, np.ndarray]:
    """A showing's stored layout (its JSON, parsed once: the trace, its viewport events
    and its activity all need it) as arrays: each visual line's ``start`` and ``end``
    offsets and its screen rectangle ``x``, ``y``, ``w``, ``h``."""
    boxes = json.loads(layout or "[]")
    arrays = {"start": np.asarray([box["start"] for box in boxes], np.int64),
              "end": np.asarray([box["end"] for box in boxes], np.int64)}
    for name in ("x", "y", "w", "h"):
        arrays[name] = np.asarray([box[name] for box in boxes], np.float64)
    for shared in arrays.values():        # (cached: one caller's change would be all's)
        shared.setflags(write=False)
    return arrays


def _lines(layout: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Each visual line's first offset and end offset in a showing's stored layout."""
    boxes = _boxes(layout)
    return boxes["start"], boxes["end"]


def _line_starts(shown: dict) -> np.ndarray:
    """First character offset of each visual line of a showing's stored layout."""
    starts, _ = _lines(shown["layout"])
    return starts.astype(np.int32) if len(starts) else np.zeros(1, np.int32)


def _view_at(views: list, t_ns: np.ndarray) -> tuple[np.ndarray, ...]:
    """The viewport event in force at each time: whether there was one yet, and its
    first and last line on screen (-1: none) and whether the window was shown."""
    times = np.asarray([view["mono_ns"] for view in views], np.int64)
    first = np.asarray([-1 if view["first_line"] is None else view["first_line"] for view in views])
    last = np.asarray([-1 if view["last_line"] is None else view["last_line"] for view in views])
    shown = np.asarray([bool(view["shown"]) for view in views])
    at = np.searchsorted(times, t_ns, side="right") - 1
    index = np.clip(at, 0, None)
    return at >= 0, first[index], last[index], shown[index]


class TraceReader:
    def __init__(self, store):
        self.store = store

    def shown_reply(self, shown_reply_id: str) -> dict | None:
        rows = self.store._rows("SELECT * FROM shown_replies WHERE id = ?", (shown_reply_id,))
        return rows[0] if rows else None

    def read(self, shown_reply_id: str, shown: dict | None = None
             ) -> tuple[ReadingTrace, ReplyActivity]:
        """A showing's trace and activity together, its viewport events read once (the
        scorer reads both for every reply: each query costs about a millisecond)."""
        shown = shown or self.shown_reply(shown_reply_id)
        if shown is None:
            raise KeyError(f"no shown reply {shown_reply_id!r}")
        views = self._views(shown)
        return (self.for_shown_reply(shown_reply_id, shown=shown, views=views),
                self.activity(shown_reply_id, shown=shown, views=views))

    def for_shown_reply(self, shown_reply_id: str, zero_mono_ns: int | None = None,
                        shown: dict | None = None, views: list | None = None) -> ReadingTrace:
        """``shown``: its ``shown_replies`` row, ``views``: its viewport events
        (:meth:`_views`), when the caller has read them already."""
        shown = shown or self.shown_reply(shown_reply_id)
        if shown is None:
            raise KeyError(f"no shown reply {shown_reply_id!r}")
        zero = shown["shown_mono_ns"] if zero_mono_ns is None else zero_mono_ns
        line_starts = _line_starts(shown)
        pointer = self._samples("pointer_samples", "1.0", shown_reply_id)
        # The eyes' raw samples are the trace; the fixations, each stored as a summary row
        # at its end, only say which samples rested together (read as one more sample, a
        # fixation landed among the next line's samples: a visit, a regression and dwell
        # that were never there).
        eyes = self._samples("gaze_samples", "coalesce(confidence, 'NaN'::DOUBLE)", shown_reply_id,
                             "AND kind IN ('raw', 'fixation')", gaze=True)
        fixation = eyes.pop("fixation")
        gaze = {name: values[~fixation] for name, values in eyes.items()}
        views = self._views(shown) if views is None else views
        gaze["text_offset"] = self._gaze_offsets(shown, gaze, {
            "start_ns": eyes["mono_ns"][fixation] - eyes["duration_ms"][fixation] * 1e6,
            "end_ns": eyes["mono_ns"][fixation].astype(np.float64)}, views)
        mono = np.concatenate([pointer["mono_ns"], gaze["mono_ns"]])
        source = np.concatenate([np.full(len(pointer["mono_ns"]), MOUSE, np.uint8),
                                 np.full(len(gaze["mono_ns"]), GAZE, np.uint8)])
        offset = np.concatenate([pointer["text_offset"], gaze["text_offset"]])
        missing = set()
        visible = self._visible(views,
                                mono, offset, line_starts)
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

    def _samples(self, table: str, confidence_sql: str, shown_reply_id: str,
                 only: str = "", gaze: bool = False) -> dict:
        """``gaze``: also each sample's position on the reply, whether it is a fixation's
        summary row, the fixation's duration (NaN for raw samples) and the line it was
        captured on (in the layout of that moment)."""
        eyes = (", coalesce(reply_x, 'NaN'::DOUBLE) AS reply_x, "
                "coalesce(reply_y, 'NaN'::DOUBLE) AS reply_y, kind = 'fixation' AS fixation, "
                "coalesce(duration_ms, 'NaN'::DOUBLE) AS duration_ms, "
                "coalesce(line, -1) AS line" if gaze else "")
        with self.store.reading():
            result = self.store._cursor().execute(
                f"SELECT mono_ns, coalesce(x, 'NaN'::DOUBLE) AS x, coalesce(y, 'NaN'::DOUBLE) AS y, "
                f"coalesce(text_offset, -1) AS text_offset, {confidence_sql} AS confidence"
                f"{eyes} FROM {table} WHERE shown_reply_id = ? {only} ORDER BY mono_ns",
                [shown_reply_id]).fetchnumpy()
        columns = {"mono_ns": np.int64, "x": np.float64, "y": np.float64, "text_offset": np.int64,
                   "confidence": np.float32, "reply_x": np.float64, "reply_y": np.float64,
                   "fixation": np.bool_, "duration_ms": np.float64, "line": np.int64}
        return {name: np.asarray(values, columns[name]) for name, values in result.items()}

    def _gaze_offsets(self, shown: dict, gaze: dict, fixations: dict, views: list) -> np.ndarray:
        """The raw gaze samples' character offsets, their lines found by reading order
        (``reading_lines``): gaze is off by a few lines, and the character under each
        point, as mapped when it was captured, is mostly on a neighbour of the line read.
        The tracker's fixations (time windows ``start_ns``, ``end_ns``) are placed by
        their samples on this reply, each in the reply's pixels of its own moment, and
        assigned lines together with the gaze's offset for this reading; their samples
        take their line. Kept as captured where that cannot be done: rows from before
        schema 8 (no position on the reply) or before the reply was last re-wrapped,
        fewer than two fixations, or lines side by side (a table). With the viewport
        events (``views``), a fixation's line is one that was on screen when it ended."""
        captured = gaze["text_offset"]
        placed = ~np.isnan(gaze["reply_x"])
        boxes = _boxes(shown["layout"])
        if not placed.any() or len(boxes["start"]) == 0 or not stacked(boxes["y"], boxes["h"]):
            return captured
        # A re-wrap (a window resize) renumbers the lines and replaces the stored layout:
        # positions on the reply from before it were on other lines. A sample captured on
        # one line whose character is on another line of the stored layout tells so; it
        # and the samples before it keep their captured offsets (a character offset
        # means the same in any layout).
        line_now = np.searchsorted(boxes["start"], captured, side="right") - 1
        rewrapped = np.flatnonzero((captured >= 0) & (gaze["line"] >= 0) & (line_now != gaze["line"]))
        if len(rewrapped):
            placed[:rewrapped[-1] + 1] = False
        t = gaze["mono_ns"].astype(np.float64)
        which = fixation_of(t, fixations["start_ns"], fixations["end_ns"])
        which[~placed] = -1
        n_fixations = len(fixations["end_ns"])
        cx, cy, count = fixation_centres(gaze["reply_x"], gaze["reply_y"], which, n_fixations)
        seen = np.flatnonzero(count > 0)
        if len(seen) < 2:
            return captured
        # The stored boxes are on screen where the reply was last placed (its screen_x,
        # screen_y); the samples are on the reply's text area, wherever it was then.
        left = boxes["x"] - (shown["screen_x"] or 0)
        top = boxes["y"] - (shown["screen_y"] or 0)
        on_screen = self._lines_on_screen(views, fixations["end_ns"][seen])
        found = assign_lines(cx[seen], cy[seen], top, boxes["h"], left, left + boxes["w"],
                             on_screen=on_screen)
        fixation_line = np.full(n_fixations, -1, np.int64)
        fixation_line[seen] = found.line
        assigned = sample_offsets(gaze["reply_x"], which, fixation_line, boxes["start"],
                                  boxes["end"], left, left + boxes["w"])
        return np.where(placed, assigned, captured)

    @staticmethod
    def _lines_on_screen(views: list, t_ns) -> np.ndarray | None:
        """The first and last line on screen at each time ([n, 2]; -1, -1 where not
        known), from the viewport events; None without any."""
        if not views:
            return None
        known, first, last, _ = _view_at(views, np.asarray(t_ns).astype(np.int64))
        return np.where((known & (first >= 0))[:, None], np.c_[first, last], -1)

    def _views(self, shown: dict) -> list[dict]:
        """The showing's viewport events, oldest first, their lines numbered as in the
        reply's stored (latest) layout, as its samples' lines are. An event's own lines
        are the layout's of its moment: after a window resize re-wrapped the reply, lines
        read before it were compared with lines numbered after it. The visible text's
        offsets mean the same in any layout (rows from before schema 7 have none)."""
        views = self.store._rows(
            "SELECT mono_ns, first_line, last_line, coalesce(window_visible, true) AS shown, "
            "first_offset, last_offset FROM viewport_events WHERE shown_reply_id = ? "
            "ORDER BY mono_ns", (shown["id"],))
        line_starts, line_ends = _lines(shown["layout"])
        if not len(line_starts):
            return views
        for view in views:
            if view["first_offset"] is not None and view["last_offset"] is not None:
                # The line holding the first visible character; the first line reaching
                # the end of the visible text (an empty last line ends where it starts).
                first = np.searchsorted(line_starts, view["first_offset"], side="right") - 1
                last = np.searchsorted(line_ends, view["last_offset"], side="left")
                view["first_line"] = int(max(first, 0))
                view["last_line"] = int(min(max(last, view["first_line"]), len(line_starts) - 1))
        return views

    @staticmethod
    def _visible(events, mono, offset, line_starts) -> np.ndarray | None:
        if not events:
            return None
        known, first, last, shown = _view_at(events, mono)
        line = np.searchsorted(line_starts, offset, side="right") - 1
        # A point on a line must be on a visible line; a point off the text needs only
        # some of the reply on screen.
        within = np.where(offset >= 0, (line >= first) & (line <= last), True)
        return np.where(known, shown & (first >= 0) & within, True)

    def activity(self, shown_reply_id: str, zero_mono_ns: int | None = None,
                 shown: dict | None = None, views: list | None = None) -> ReplyActivity:
        """The viewport changes of this showing and the actions on its reply from the moment
        it was shown (on any later showing too: a copy made after reopening the chat
        counts), with times in ms since ``zero_mono_ns`` (default: the showing), as
        :meth:`for_shown_reply` gives its samples. Actions carry wall-clock times (the
        monotonic clock restarts with the computer), moved onto the showing's clock."""
        shown = shown or self.shown_reply(shown_reply_id)
        if shown is None:
            raise KeyError(f"no shown reply {shown_reply_id!r}")
        zero = shown["shown_mono_ns"] if zero_mono_ns is None else zero_mono_ns
        shift_ms = (shown["shown_mono_ns"] - zero) / 1e6
        views = self._views(shown) if views is None else views
        reply = self.store._rows("SELECT parent_id, finish_reason FROM messages WHERE id = ?",
                                 (shown["message_id"],))
        parent = reply[0]["parent_id"] if reply else None
        # Cancelled by the user's Esc or Stop (logged on the reply), not by the window
        # closing mid-reply. (Asked only of cancelled replies: a few of them.)
        stopped = bool(reply) and reply[0]["finish_reason"] == "cancelled" and bool(self.store._rows(
            "SELECT 1 FROM reply_actions WHERE kind = 'stop' AND message_id = ? LIMIT 1",
            (shown["message_id"],)))
        # An edit is logged on the prompt the user rewrote, i.e. this reply's parent.
        actions = self.store._rows(
            "SELECT session_id, mono_ns, wall_ns, kind, start_offset, end_offset, value "
            "FROM reply_actions WHERE wall_ns >= ? "
            "AND (message_id = ? OR (kind = 'edit' AND message_id = ?))",
            (shown["shown_wall_ns"], shown["message_id"], parent))

        def action_ms(action):
            # The showing's own clock while the same app session runs (the wall clock
            # jumps with adjustments; the monotonic one pauses in suspend, as the
            # showing's times do); the wall clock for a later session's actions.
            if action["session_id"] == shown["session_id"]:
                return (action["mono_ns"] - zero) / 1e6
            return (action["wall_ns"] - shown["shown_wall_ns"]) / 1e6 + shift_ms
        return ReplyActivity.build(
            n_lines=max(len(_lines(shown["layout"])[0]), 1),
            n_chars=len(shown["rendered_text"] or ""),
            views=[((v["mono_ns"] - zero) / 1e6, v["first_line"], v["last_line"], v["shown"])
                   for v in views],
            actions=[(action_ms(a), a["kind"], a["start_offset"], a["end_offset"], a["value"])
                     for a in actions],
            stopped=stopped,
            next_message_ms=self.next_message_ms(shown) + shift_ms)

    def next_message_ms(self, shown: dict) -> float:
        """Time from a reply's showing to the first message sent from it (NaN if none).
        The study's window of an answer ends at the next query; here a reply stays on
        screen under the turns that follow, so the time it left the screen is not "the
        time to the next message", and what was read after the next message belongs to
        the replies that came after it."""
        rows = self.store._rows(
            "SELECT min(created_wall_ns) AS sent FROM messages WHERE parent_id = ? "
            "AND role = 'user' AND created_wall_ns > ?", (shown["message_id"], shown["shown_wall_ns"]))
        sent = rows[0]["sent"] if rows else None
        return float("nan") if sent is None else (sent - shown["shown_wall_ns"]) / 1e6

    def pick_sides(self, pick_id: str) -> tuple[str, str, int, int]:
        """(left shown id, right shown id, the pair's zero: when the later of the two
        appeared, the pick's monotonic time) of a side-by-side pick."""
        rows = self.store._rows(
            "SELECT message_id, other_message_id, picked_mono_ns, wall_ns FROM feedback "
            "WHERE id = ? AND kind = 'pick'", (pick_id,))
        if not rows:
            raise KeyError(f"no pick {pick_id!r}")
        pick = rows[0]
        shown = {}
        for message_id in (pick["message_id"], pick["other_message_id"]):
            # The showing before the pick by the wall clock: the monotonic clock starts
            # again at each boot, and a showing of the left reply on an earlier day could
            # look like the newest (the pair then got that day's zero).
            found = self.store._rows(
                "SELECT id, shown_mono_ns, shown_wall_ns FROM shown_replies WHERE message_id = ? "
                "AND shown_wall_ns <= ? ORDER BY shown_wall_ns DESC, id DESC LIMIT 1",
                (message_id, pick["wall_ns"]))
            if not found:
                raise KeyError(f"reply {message_id} of pick {pick_id} was never shown")
            shown[message_id] = found[0]
        later = max(shown.values(), key=lambda s: s["shown_wall_ns"])
        zero = later["shown_mono_ns"]
        picked = pick["picked_mono_ns"]
        since_wall = pick["wall_ns"] - later["shown_wall_ns"]
        if picked is None or abs((picked - zero) - since_wall) > 10**9:
            picked = zero + since_wall    # picked in another session (a pick changed later)
        return shown[pick["message_id"]]["id"], shown[pick["other_message_id"]]["id"], zero, picked

    def for_pick(self, pick_id: str, sides: tuple | None = None) -> PairTrace:
        """Both replies of a side-by-side pick on one clock (zero: when the later of the
        two appeared), with the time of the pick (``sides``: :meth:`pick_sides`, if read)."""
        left, right, zero, picked = sides or self.pick_sides(pick_id)
        return PairTrace(self.for_shown_reply(left, zero_mono_ns=zero),
                         self.for_shown_reply(right, zero_mono_ns=zero),
                         pick_t_ms=(picked - zero) / 1e6)

    def activity_for_pick(self, pick_id: str, sides: tuple | None = None
                          ) -> tuple[ReplyActivity, ReplyActivity]:
        """Both sides' activity on the clock of :meth:`for_pick`."""
        left, right, zero, _ = sides or self.pick_sides(pick_id)
        return self.activity(left, zero_mono_ns=zero), self.activity(right, zero_mono_ns=zero)
