"""Where each reply's characters are on screen, as plain arrays: the one mapping from a
screen point to (shown reply, character offset, word, visual line) that pointer and
gaze samples both go through. No Qt: the window measures the layout (app/ui/layout_probe)
and hands over a snapshot; capture threads map points against it without touching Qt.

A reply's text geometry (:class:`ReplyGeometry`) is measured once per rendering, relative
to the reply's own text area; scrolling and moving the window only change its
``origin`` and ``clip`` (:class:`PlacedReply`), so a scroll costs one small object.
"""
from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from . import words


@dataclass(frozen=True, eq=False)
class ReplyGeometry:
    """One rendering of a reply, in its text area's own pixels (0, 0 = top-left)."""
    message_id: str
    text: str
    line_start: np.ndarray   # int32 [n_lines] first char offset of each visual line
    line_end: np.ndarray     # int32 [n_lines] one past the last char of each line
    line_x: np.ndarray       # float64 [n_lines] left edge of the line's text
    line_top: np.ndarray     # float64 [n_lines]
    line_height: np.ndarray  # float64 [n_lines]
    line_width: np.ndarray   # float64 [n_lines] natural text width
    char_x: np.ndarray       # float64 [len(text)] left edge of each char (same frame);
                             # along a line left to right, except in right-to-left text
    word_start: np.ndarray = field(init=False)
    word_end: np.ndarray = field(init=False)

    def __post_init__(self):
        starts, ends = words.word_spans(self.text)
        object.__setattr__(self, "word_start", starts)
        object.__setattr__(self, "word_end", ends)
        # Plain lists for the one-point path: bisect on a list is ~50x cheaper than a
        # numpy call for a single value, and pointer capture maps points one by one.
        object.__setattr__(self, "_lists", (
            self.line_top.tolist(), (self.line_top + self.line_height).tolist(),
            self.line_x.tolist(), (self.line_x + self.line_width).tolist(),
            self.line_start.tolist(), self.line_end.tolist(), self.char_x.tolist(),
            starts.tolist(), ends.tolist()))
        # Lines one below the other, in order: a search on their tops finds the line at a
        # height. A table's cells are laid out cell by cell, side by side (a left cell's
        # second line comes before the right cell's first, above it): there the line at a
        # point is the one whose box holds it, found among all lines.
        stacked = bool(np.all(self.line_top[1:] >= self.line_top[:-1] + self.line_height[:-1] - 0.5)) \
            if self.n_lines > 1 else True
        object.__setattr__(self, "_stacked", stacked)
        # A line with right-to-left text has its characters' left edges out of order
        # (a bisection over them found the run's first character for all of its others):
        # its characters sorted by their left edge, to search instead.
        visual = {}
        for line, (start, end) in enumerate(zip(self.line_start.tolist(), self.line_end.tolist())):
            edges = self.char_x[start:end]
            if len(edges) > 1 and np.any(edges[1:] < edges[:-1]):
                order = np.argsort(edges, kind="stable")
                visual[line] = (edges[order].tolist(), (start + order).tolist())
        object.__setattr__(self, "_visual", visual)

    def offset_in_line(self, line: int, x: float) -> int:
        """The character of ``line`` (which has some) whose box holds ``x`` (the line's
        first, left of all of them)."""
        start, end, char_x = self._lists[4], self._lists[5], self._lists[6]
        visual = self._visual.get(line)
        if visual is None:
            return max(bisect_right(char_x, x, start[line], end[line]) - 1, start[line])
        edges, chars = visual
        return chars[max(bisect_right(edges, x) - 1, 0)]

    def _line_at(self, x: float, y: float) -> int:
        """The visual line at a point: -1 none; with side-by-side lines (tables), the one
        whose box holds ``x`` too, else the first at that height."""
        tops, bottoms, lefts, rights = self._lists[:4]
        if self._stacked:
            line = bisect_right(tops, y) - 1
            return line if line >= 0 and y < bottoms[line] else -1
        level = [i for i in range(len(tops)) if tops[i] <= y < bottoms[i]]
        inside = [i for i in level if lefts[i] <= x < rights[i]]
        return (inside or level or [-1])[0]

    def locate(self, x: float, y: float) -> tuple[int, int, int]:
        """(offset, word, line) of one point in this text area's pixels; -1 = none."""
        tops, bottoms, lefts, rights, starts, ends, char_x, word_starts, word_ends = self._lists
        line = self._line_at(x, y)
        if line < 0:
            return -1, -1, -1
        start, end = starts[line], ends[line]
        if end <= start or not lefts[line] <= x < rights[line]:
            return -1, -1, line
        offset = self.offset_in_line(line, x)
        word = bisect_right(word_starts, offset) - 1
        if word < 0 or offset >= word_ends[word]:
            word = -1
        return offset, word, line

    @property
    def n_lines(self) -> int:
        return len(self.line_start)

    def line_boxes(self, origin_x: float = 0.0, origin_y: float = 0.0) -> list[dict]:
        """Each visual line as a dict (offsets [start, end) and its screen rectangle)."""
        return [{"line": i, "start": int(self.line_start[i]), "end": int(self.line_end[i]),
                 "x": float(origin_x + self.line_x[i]), "y": float(origin_y + self.line_top[i]),
                 "w": float(self.line_width[i]), "h": float(self.line_height[i])}
                for i in range(self.n_lines)]

    def visible_lines(self, clip_top: float, clip_bottom: float) -> tuple[int, int] | None:
        """First and last visual line that overlap [clip_top, clip_bottom) (local px)."""
        bottoms = self.line_top + self.line_height
        seen = np.flatnonzero((bottoms > clip_top) & (self.line_top < clip_bottom))
        return (int(seen[0]), int(seen[-1])) if len(seen) else None


@dataclass(frozen=True, eq=False)
class PlacedReply:
    """A reply geometry placed on screen: its text area's top-left in screen pixels and
    the part of that area that is visible (screen rectangle x0, y0, x1, y1)."""
    geometry: ReplyGeometry
    shown_reply_id: str | None
    conversation_id: str | None
    origin: tuple[float, float]
    clip: tuple[float, float, float, float]
    # The whole text area on screen (x0, y0, x1, y1), clipped or not: where a scroll
    # moves it, the visible part is this shifted and cut by the scrolling view.
    area: tuple[float, float, float, float] | None = None

    def visible_lines(self) -> tuple[int, int] | None:
        return self.geometry.visible_lines(self.clip[1] - self.origin[1],
                                           self.clip[3] - self.origin[1])


@dataclass(frozen=True)
class Mapped:
    """Arrays, one entry per point: index into the snapshot's replies (-1 = over no
    reply), character offset, word index and visual line (-1 = not over text)."""
    reply: np.ndarray
    offset: np.ndarray
    word: np.ndarray
    line: np.ndarray


@dataclass(frozen=True, eq=False)
class LayoutSnapshot:
    replies: tuple[PlacedReply, ...] = ()
    window_visible: bool = True
    # The conversation on screen: a sample over no reply belongs to it (it goes with the
    # conversation, and the store refuses it when the conversation is incognito).
    conversation_id: str | None = None
    # The window's area on screen (x0, y0, x1, y1), where it is known: a point elsewhere,
    # or any point while the window is minimised or hidden, is another application's
    # business, and is not kept (consent covers the pointer and eyes over Glance).
    window_rect: tuple[float, float, float, float] | None = None
    # The scrolling view the replies are seen through (x0, y0, x1, y1), where known.
    view: tuple[float, float, float, float] | None = None
    # Each screen as (x, y, width, height) in Qt's logical pixels and its device pixel
    # ratio: the global pointer hook reports device pixels (see to_logical).
    screens: tuple[tuple[float, float, float, float, float], ...] = ()

    def to_logical(self, x: float, y: float) -> tuple[float, float]:
        """A point in the window system's device pixels (X11's, pynput's) in Qt's logical
        pixels, which every geometry here is in. Qt keeps each screen's top-left where it
        is and scales the rest of it by the screen's ratio; with a ratio of 2 (a HiDPI
        screen, or QT_SCALE_FACTOR=2) every sample was mapped to the word at twice its
        distance from the screen's corner."""
        for sx, sy, width, height, ratio in self.screens:
            if ratio != 1.0 and sx <= x < sx + width * ratio and sy <= y < sy + height * ratio:
                return sx + (x - sx) / ratio, sy + (y - sy) / ratio
        return x, y

    def scrolled(self, dy: float) -> "LayoutSnapshot":
        """The replies moved up by ``dy`` pixels in the scrolling view, at once: the next
        measured snapshot comes once the scrolling settles, and meanwhile (a whole smooth
        scroll) the points were mapped to where the words had been."""
        if not dy or self.view is None:
            return self
        vx0, vy0, vx1, vy1 = self.view
        moved = []
        for placed in self.replies:
            if placed.area is None:
                return self              # (a snapshot without areas: wait for the next)
            x0, y0, x1, y1 = placed.area
            area = (x0, y0 - dy, x1, y1 - dy)
            clip = (max(x0, vx0), max(area[1], vy0), min(x1, vx1), min(area[3], vy1))
            if clip[0] >= clip[2] or clip[1] >= clip[3]:
                clip = (0.0, 0.0, 0.0, 0.0)
            moved.append(PlacedReply(placed.geometry, placed.shown_reply_id, placed.conversation_id,
                                     (placed.origin[0], placed.origin[1] - dy), clip, area))
        return LayoutSnapshot(tuple(moved), self.window_visible, self.conversation_id,
                              self.window_rect, self.view, self.screens)

    def on_window(self, x: float, y: float) -> bool:
        if self.window_rect is None:
            return True
        x0, y0, x1, y1 = self.window_rect
        return self.window_visible and x0 <= x < x1 and y0 <= y < y1

    def map(self, xs, ys) -> Mapped:
        xs = np.atleast_1d(np.asarray(xs, dtype=np.float64))
        ys = np.atleast_1d(np.asarray(ys, dtype=np.float64))
        n = len(xs)
        reply = np.full(n, -1, np.int32)
        offset = np.full(n, -1, np.int32)
        line = np.full(n, -1, np.int32)
        word = np.full(n, -1, np.int32)
        if not self.window_visible:
            return Mapped(reply, offset, word, line)
        for index, placed in enumerate(self.replies):
            x0, y0, x1, y1 = placed.clip
            inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1) & (reply == -1)
            if not inside.any():
                continue
            reply[inside] = index
            geometry = placed.geometry
            if geometry.n_lines == 0:
                continue
            if not geometry._stacked:          # (a table: point by point, as map_one)
                for position in np.flatnonzero(inside):
                    offset[position], word[position], line[position] = geometry.locate(
                        xs[position] - placed.origin[0], ys[position] - placed.origin[1])
                continue
            local_x = xs[inside] - placed.origin[0]
            local_y = ys[inside] - placed.origin[1]
            found = np.searchsorted(geometry.line_top, local_y, side="right") - 1
            ok = found >= 0
            ok[ok] &= local_y[ok] < geometry.line_top[found[ok]] + geometry.line_height[found[ok]]
            line_of = np.where(ok, found, -1)
            hit_offset = np.full(len(local_x), -1, np.int32)
            for position in np.flatnonzero(ok):
                i = line_of[position]
                start, end = geometry.line_start[i], geometry.line_end[i]
                x = local_x[position]
                if end <= start or not (geometry.line_x[i] <= x < geometry.line_x[i] + geometry.line_width[i]):
                    continue
                hit_offset[position] = geometry.offset_in_line(int(i), float(x))
            offset[inside] = hit_offset
            line[inside] = line_of
            word[inside] = words.word_index(hit_offset, geometry.word_start, geometry.word_end)
        return Mapped(reply, offset, word, line)

    def map_one(self, x: float, y: float) -> tuple[PlacedReply | None, int, int, int]:
        """The same answer as ``map`` for one point, without numpy (the capture path)."""
        if not self.window_visible:
            return None, -1, -1, -1
        for placed in self.replies:
            x0, y0, x1, y1 = placed.clip
            if x0 <= x < x1 and y0 <= y < y1:
                return (placed, *placed.geometry.locate(x - placed.origin[0],
                                                        y - placed.origin[1]))
        return None, -1, -1, -1
