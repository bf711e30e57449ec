"""Reading traces: what one person did over one shown reply, as numpy arrays.

A :class:`ReadingTrace` is the common currency between capture (live pointer and gaze
samples read back from the store), imported research data (IFLLM) and the reward
model's features (``align/features.py``): the features never ask where a trace came
from, only which fields are ``missing`` or ``estimated``. A :class:`PairTrace` holds the
two replies of a side-by-side comparison on one clock, with the time of the pick.

No Qt and no DuckDB here; word and line indices come from :mod:`feedback_store.words`,
the one tokenizer live and imported data share.

Conventions
- ``t_ms``: milliseconds since the reply was shown (float64, sorted ascending). For a
  pair, both traces use the same zero (when the pair appeared).
- ``x``, ``y``: float64, NaN when the sample has no position over this reply. The frame
  is the producer's (screen pixels live, box-relative pixels for IFLLM); features use
  positions only for distances, never across frames.
- ``offset``: int32 character offset into ``text``; -1 = not over a character.
- ``word``, ``line``: int32 derived from ``offset`` (-1 with it); see ``words.py``.
- ``source``: uint8, :data:`MOUSE` (0, any pointer) or :data:`GAZE` (1).
- ``visible``: bool, whether the sample's point of the reply was on screen; True when
  unknown (then ``"visible"`` is in ``missing``).
- ``confidence``: float32 per sample, NaN when unknown (gaze quality; 1.0 for pointer).
- ``missing``: names of fields the producer did not measure (their arrays hold the
  "unknown" value); ``estimated``: fields derived approximately (e.g. ``line`` from a
  fixed-width wrap instead of the real layout).
"""
from dataclasses import dataclass, field

import numpy as np

from . import words

MOUSE = 0
GAZE = 1
ORIGINS = ("live", "imported")

_ARRAYS = {  # name -> dtype, in the order they are stored
    "t_ms": np.float64, "x": np.float64, "y": np.float64, "offset": np.int32,
    "word": np.int32, "line": np.int32, "source": np.uint8, "visible": np.bool_,
    "confidence": np.float32,
}


@dataclass(frozen=True, eq=False)
class ReadingTrace:
    t_ms: np.ndarray
    x: np.ndarray
    y: np.ndarray
    offset: np.ndarray
    word: np.ndarray
    line: np.ndarray
    source: np.ndarray
    visible: np.ndarray
    confidence: np.ndarray
    text: str
    line_starts: np.ndarray
    origin: str
    missing: frozenset = field(default_factory=frozenset)
    estimated: frozenset = field(default_factory=frozenset)
    user_id: str | None = None
    shown_reply_id: str | None = None
    shown_for_ms: float = float("nan")  # how long the reply was on screen, NaN = unknown

    def __post_init__(self):
        n = len(self.t_ms)
        for name, dtype in _ARRAYS.items():
            array = getattr(self, name)
            if array.dtype != dtype or array.shape != (n,):
                raise ValueError(f"ReadingTrace.{name} must be {np.dtype(dtype).name}[{n}], "
                                 f"got {array.dtype}{list(array.shape)}")
        if self.origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, not {self.origin!r}")
        if n > 1 and np.any(np.diff(self.t_ms) < 0):
            raise ValueError("ReadingTrace.t_ms must be sorted")

    # --- construction --------------------------------------------------------------
    @classmethod
    def build(cls, *, t_ms, offset, text: str, line_starts=None, x=None, y=None, source=None,
              visible=None, confidence=None, origin: str = "live", user_id=None,
              shown_reply_id=None, shown_for_ms: float = float("nan"),
              chars_per_line: int | None = None, missing=(), estimated=(),
              snap: str = "none") -> "ReadingTrace":
        """A trace from raw columns: sorts by time, clears offsets outside the text,
        fills ``word`` with the shared tokenizer and ``line`` from ``line_starts`` (or,
        without them, from a greedy wrap at ``chars_per_line`` — then ``line`` is
        marked estimated). Omitted optional columns become "unknown" and are listed in
        ``missing``."""
        t_ms = np.asarray(t_ms, dtype=np.float64)
        n = len(t_ms)
        missing, estimated = set(missing), set(estimated)

        def column(values, dtype, unknown, name):
            if values is None:
                missing.add(name)
                return np.full(n, unknown, dtype=dtype)
            return np.asarray(values, dtype=dtype).reshape(n)

        offset = np.asarray(offset, dtype=np.int64).reshape(n)
        offset = np.where((offset >= 0) & (offset < len(text or "")), offset, -1).astype(np.int32)
        x = column(x, np.float64, np.nan, "x")
        y = column(y, np.float64, np.nan, "y")
        source = column(source, np.uint8, MOUSE, "source")
        visible = column(visible, np.bool_, True, "visible")
        confidence = column(confidence, np.float32, np.nan, "confidence")
        if line_starts is None:
            if chars_per_line is None:
                raise ValueError("give line_starts (the layout) or chars_per_line (a wrap)")
            line_starts = words.wrap_line_starts(text, chars_per_line)
            estimated.add("line")
        line_starts = np.asarray(line_starts, dtype=np.int32)
        order = np.argsort(t_ms, kind="stable")
        starts, ends = words.word_spans(text)
        offset = offset[order]
        return cls(
            t_ms=t_ms[order], x=x[order], y=y[order], offset=offset,
            word=words.word_index(offset, starts, ends, snap=snap),
            line=words.line_index(offset, line_starts),
            source=source[order], visible=visible[order], confidence=confidence[order],
            text=text or "", line_starts=line_starts, origin=origin,
            missing=frozenset(missing), estimated=frozenset(estimated), user_id=user_id,
            shown_reply_id=shown_reply_id, shown_for_ms=float(shown_for_ms))

    @classmethod
    def empty(cls, text: str, line_starts, **kwargs) -> "ReadingTrace":
        return cls.build(t_ms=np.zeros(0), offset=np.zeros(0, np.int32), text=text,
                         line_starts=line_starts, **kwargs)

    # --- views ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.t_ms)

    @property
    def n_lines(self) -> int:
        return len(self.line_starts)

    @property
    def n_words(self) -> int:
        return len(words.word_spans(self.text)[0])

    def select(self, mask) -> "ReadingTrace":
        """The same trace restricted to the samples where ``mask`` is True."""
        mask = np.asarray(mask, dtype=bool)
        # A subset of a valid trace is valid: skip the checks (features select often).
        subset = object.__new__(ReadingTrace)
        for name in _ARRAYS:
            object.__setattr__(subset, name, getattr(self, name)[mask])
        for name in ("text", "line_starts", "origin", "missing", "estimated", "user_id",
                     "shown_reply_id", "shown_for_ms"):
            object.__setattr__(subset, name, getattr(self, name))
        return subset

    def of_source(self, source: int) -> "ReadingTrace":
        return self.select(self.source == source)

    def before(self, t_ms: float) -> "ReadingTrace":
        """Samples strictly before ``t_ms`` (everything when ``t_ms`` is NaN)."""
        if np.isnan(t_ms):
            return self
        return self.select(self.t_ms < t_ms)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in _ARRAYS}


@dataclass(frozen=True, eq=False)
class PairTrace:
    """Two replies shown side by side (``a`` left / first, ``b`` right / second) on one
    clock: both traces' ``t_ms`` count from when the pair appeared. ``pick_t_ms`` is when
    the user chose (NaN when unknown or not chosen)."""
    a: ReadingTrace
    b: ReadingTrace
    pick_t_ms: float = float("nan")

    def sides(self) -> tuple[ReadingTrace, ReadingTrace]:
        return self.a, self.b


@dataclass(frozen=True, eq=False)
class ReplyActivity:
    """What the user did with one shown reply besides pointing and looking, on the same
    clock as its :class:`ReadingTrace` (ms since the reply, or its pair, was shown): which
    of its lines were on screen over time (a change per row, holding until the next), the
    actions on it (selection, copy, thumb, regenerate, the edit of its prompt…; offsets
    only, never the text) and whether its writing was stopped. The features
    (``align.features.interaction_features``) read it up to the end of the reading."""
    view_t_ms: np.ndarray            # float64, when the visible range changed
    first_line: np.ndarray           # int32, first visible line; -1: none of the reply visible
    last_line: np.ndarray            # int32
    window_visible: np.ndarray       # bool, False while the window was minimised or hidden
    action_t_ms: np.ndarray          # float64
    action_kind: tuple               # str per action
    action_start: np.ndarray         # int64 character offsets, -1 unknown
    action_end: np.ndarray
    action_value: np.ndarray         # float64 (a thumb's +1/-1/0), NaN unknown
    n_lines: int
    n_chars: int
    stopped: bool = False            # the user stopped the reply while it was written
    next_message_ms: float = float("nan")   # first message sent from the reply; NaN none

    @classmethod
    def build(cls, *, n_lines: int, n_chars: int, views=(), actions=(), stopped: bool = False,
              next_message_ms: float = float("nan")) -> "ReplyActivity":
        """From rows: ``views`` of (t_ms, first_line or None, last_line or None,
        window_visible) and ``actions`` of (t_ms, kind, start or None, end or None,
        value or None), each sorted here by time."""
        views = sorted(views, key=lambda v: v[0])
        actions = sorted(actions, key=lambda a: a[0])

        def known(value, unknown):
            return unknown if value is None else value
        return cls(
            view_t_ms=np.asarray([v[0] for v in views], np.float64),
            first_line=np.asarray([known(v[1], -1) for v in views], np.int32),
            last_line=np.asarray([known(v[2], -1) for v in views], np.int32),
            window_visible=np.asarray([known(v[3], True) for v in views], np.bool_),
            action_t_ms=np.asarray([a[0] for a in actions], np.float64),
            action_kind=tuple(a[1] for a in actions),
            action_start=np.asarray([known(a[2], -1) for a in actions], np.int64),
            action_end=np.asarray([known(a[3], -1) for a in actions], np.int64),
            action_value=np.asarray([known(a[4], np.nan) for a in actions], np.float64),
            n_lines=int(n_lines), n_chars=int(n_chars), stopped=bool(stopped),
            next_message_ms=float(next_message_ms))

    def actions(self, kind: str, until_ms: float = float("inf")) -> np.ndarray:
        """Indices of the actions of ``kind`` strictly before ``until_ms``."""
        return np.asarray([i for i, k in enumerate(self.action_kind)
                           if k == kind and self.action_t_ms[i] < until_ms], dtype=np.int64)
