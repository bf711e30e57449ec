"""Reading and text features: pure functions over reading-trace arrays and reply text.

Shared by imported research data (IFLLM) and live traces: nothing here knows where a
trace came from, only which of its fields are missing. Every function returns plain
floats (NaN when the input cannot say), so a model sees "unknown" rather than a made-up 0.

Units and definitions (chosen once, used everywhere):
- **Sample duration.** Each sample stands for the time until the next sample of the same
  source, capped at ``cap_ms`` (a capture gap is not reading time); the last sample gets
  the median duration.
- **Dwell** = summed duration of samples over the reply's text (``offset >= 0``);
  **hover** = over the reply's box (x known); **focused** = dwell while the reply was
  visible (NaN when visibility was not measured).
- **Line visit** = a maximal run of consecutive on-text samples on one visual line.
  Visits shorter than ``min_visit_ms`` are dropped (and their neighbours merged), which
  removes jitter across a line boundary; the default 0 keeps every visit.
- **Regression** = a backward transition between consecutive line visits (to a smaller
  line index). The unit is the *transition*: reading lines 1–5 then going back to line 2
  is one regression, however many lines are re-read after it.
- **First pass** = the visits before the first regression: its time, the distinct lines
  it covered, and its reading speed (characters spanned per second).
- **Skipped lines** = lines above the furthest line reached that were never visited.
- **Revisits** = visits beyond the first to a line (total visits − distinct lines).
- **Position**: line index scaled to 0 (first line) … 1 (last line).
"""
import math
import re

import numpy as np

from feedback_store.trace import GAZE, PairTrace, ReadingTrace
from feedback_store.words import word_spans

NAN = float("nan")
CAP_MS = 500.0


# --- samples and visits ------------------------------------------------------------------
def sample_durations(t_ms: np.ndarray, cap_ms: float = CAP_MS) -> np.ndarray:
    """Duration each sample stands for (ms): gap to the next one, capped."""
    n = len(t_ms)
    if n == 0:
        return np.zeros(0)
    if n == 1:
        return np.array([min(cap_ms, 100.0)])
    gaps = np.minimum(np.diff(t_ms), cap_ms)
    return np.append(gaps, np.median(gaps))


def line_visits(t_ms, line, min_visit_ms: float = 0.0, cap_ms: float = CAP_MS):
    """Visits of one source's on-text samples: (lines, durations_ms, start_ms) arrays."""
    t_ms = np.asarray(t_ms, dtype=np.float64)
    line = np.asarray(line)
    duration = sample_durations(t_ms, cap_ms)
    on = line >= 0
    lines, durations, starts = _runs(line[on], duration[on], t_ms[on])
    if min_visit_ms > 0 and len(lines):
        keep = durations >= min_visit_ms
        lines, durations, starts = _runs(lines[keep], durations[keep], starts[keep])
    return lines, durations, starts


def _runs(values, durations, starts):
    """Collapse consecutive equal values; durations add up, a run starts at its first."""
    if len(values) == 0:
        return (np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0))
    change = np.flatnonzero(np.diff(values) != 0) + 1
    first = np.concatenate([[0], change])
    return (np.asarray(values)[first], np.add.reduceat(durations, first), np.asarray(starts)[first])


def regressions(visit_lines) -> int:
    """Backward transitions between consecutive line visits."""
    visit_lines = np.asarray(visit_lines)
    return int(np.sum(np.diff(visit_lines) < 0)) if len(visit_lines) > 1 else 0


def first_pass_end(visit_lines) -> int:
    """Number of visits in the first pass (those before the first regression)."""
    visit_lines = np.asarray(visit_lines)
    back = np.flatnonzero(np.diff(visit_lines) < 0)
    return int(back[0] + 1) if len(back) else len(visit_lines)


# --- one reply, one source -----------------------------------------------------------------
def reading_features(trace: ReadingTrace, source: int, min_visit_ms: float = 0.0,
                     cap_ms: float = CAP_MS, before_ms: float = NAN) -> dict[str, float]:
    """Reading-order features of one source (MOUSE or GAZE) over one reply."""
    tr = trace.select(_usable(trace, source, before_ms))
    duration = sample_durations(tr.t_ms, cap_ms)
    on_text = tr.offset >= 0
    on_box = ~np.isnan(tr.x) | on_text
    n_lines = max(trace.n_lines, 1)
    out = {
        "samples": float(len(tr)),
        "dwell_ms": float(duration[on_text].sum()),
        "hover_ms": float(duration[on_box].sum()),
        "focused_ms": NAN if "visible" in trace.missing else float(duration[on_text & tr.visible].sum()),
    }
    lines, visit_ms, _ = line_visits(tr.t_ms, tr.line, min_visit_ms, cap_ms)
    if len(lines) == 0:
        out.update({k: NAN for k in (
            "coverage_lines", "coverage_words", "first_pass_ms", "first_pass_coverage",
            "first_pass_cps", "regressions", "regression_rate", "regression_lines",
            "furthest", "mean_position", "time_to_furthest", "revisits", "skipped_lines",
            "visits", "line_ms_mean")})
        out.update(pointer_features(tr))
        return out
    distinct = np.unique(lines)
    words_seen = np.unique(tr.word[tr.word >= 0])
    n_words = max(len(word_spans(trace.text)[0]), 1)
    k = first_pass_end(lines)
    pass_lines = np.unique(lines[:k])
    pass_ms = float(visit_ms[:k].sum())
    starts = trace.line_starts
    span = _chars_spanned(pass_lines, starts, len(trace.text))
    back = np.diff(lines)
    scale = max(n_lines - 1, 1)
    positions = tr.line[on_text] / scale
    furthest = int(lines.max())
    reach = np.flatnonzero(lines == furthest)[0]
    out.update({
        "coverage_lines": len(distinct) / n_lines,
        "coverage_words": len(words_seen) / n_words,
        "first_pass_ms": pass_ms,
        "first_pass_coverage": len(pass_lines) / n_lines,
        "first_pass_cps": span / (pass_ms / 1000.0) if pass_ms > 0 else NAN,
        "regressions": float(regressions(lines)),
        "regression_rate": float(np.mean(back < 0)) if len(back) else 0.0,
        "regression_lines": float(-back[back < 0].mean()) if np.any(back < 0) else 0.0,
        "furthest": furthest / scale,
        # (pointer samples all at one instant weigh nothing: no time, no mean)
        "mean_position": float(np.average(positions, weights=duration[on_text]))
        if duration[on_text].sum() > 0 else NAN,
        "time_to_furthest": float(visit_ms[:reach].sum() / max(visit_ms.sum(), 1e-9)),
        "revisits": float(len(lines) - len(distinct)),
        "skipped_lines": float(furthest + 1 - len(distinct[distinct <= furthest])),
        "visits": float(len(lines)),
        "line_ms_mean": float(visit_ms.sum() / len(distinct)),
    })
    out.update(pointer_features(tr))
    return out


def _usable(trace: ReadingTrace, source: int, before_ms: float = NAN) -> np.ndarray:
    """Samples of one source before a time; gaze samples the tracker itself flagged as
    invalid (confidence 0, e.g. WebGazer's failed validation) are left out."""
    mask = trace.source == source
    if before_ms == before_ms:  # not NaN
        mask &= trace.t_ms < before_ms
    if source == GAZE:
        mask &= ~(trace.confidence == 0)
    return mask


def _chars_spanned(lines, line_starts, text_length: int) -> int:
    ends = np.append(line_starts[1:], text_length)
    lines = lines[(lines >= 0) & (lines < len(line_starts))]
    return int(np.sum(ends[lines] - line_starts[lines]))


def pointer_features(tr: ReadingTrace) -> dict[str, float]:
    """Movement over the box: path length (px), share of samples that did not move, and
    offset changes under a still point (the text moved: scrolling)."""
    x, y, offset = tr.x, tr.y, tr.offset
    both = ~np.isnan(x[1:]) & ~np.isnan(x[:-1])
    step = np.hypot(np.diff(x), np.diff(y))[both] if len(x) > 1 else np.zeros(0)
    still = step < 1.0
    offsets_changed = (np.diff(offset)[both] != 0) & (offset[1:][both] >= 0) & (offset[:-1][both] >= 0)
    return {
        "path_px": float(step.sum()),
        "still_share": float(still.mean()) if len(step) else NAN,
        "scroll_moves": float(np.sum(still & offsets_changed)),
    }


# --- what the live app logs besides pointer and gaze (ReplyActivity) -------------------------
INTERACTIONS = ("scroll_depth", "lines_on_screen_share", "selected_chars", "selected_share",
                "copied", "time_to_next_message_ms", "regenerated", "edited", "stopped", "thumb")
# The ones a reward model may take as inputs. Thumbs are the pointwise label itself;
# a regeneration and an edit are how the nightly pairs *infer* a preference (the
# replaced reply is assumed worse), so a model fed them would score that assumption back
# into the pairs. Scroll depth, selection, copy and stop are only behaviour. Scroll depth
# enters as the share of lines that were on screen: the chat follows a new reply to its
# end, so the furthest line reached is the last one for nearly every reply (seen in the
# app), while the share says whether the user went back up to its start.
MODEL_INTERACTIONS = ("lines_on_screen_share", "selected_share", "copied", "stopped")


def _ranges_on_screen(view_t_ms, first_line, last_line, window_visible, until_ms):
    """The visible line ranges [first, last] before ``until_ms`` while the window was
    visible (a range holds from its event to the next), or None when no viewport state is
    known before then."""
    before = np.asarray(view_t_ms) < until_ms
    if not before.any():
        return None
    seen = before & np.asarray(window_visible, bool) & (np.asarray(first_line) >= 0)
    return np.asarray(first_line)[seen], np.asarray(last_line)[seen]


def scroll_depth(view_t_ms, first_line, last_line, window_visible, n_lines: int,
                 until_ms: float = math.inf) -> float:
    """How far down the reply the screen ever reached before ``until_ms``: (the lowest
    line on screen + 1) / its lines, 0..1; 0 if none of it was on screen, NaN when no
    viewport state is known."""
    ranges = _ranges_on_screen(view_t_ms, first_line, last_line, window_visible, until_ms)
    if ranges is None:
        return NAN
    if not len(ranges[1]):
        return 0.0
    return float(min(1.0, (int(ranges[1].max()) + 1) / max(int(n_lines), 1)))


def lines_on_screen_share(view_t_ms, first_line, last_line, window_visible, n_lines: int,
                          until_ms: float = math.inf) -> float:
    """The share of the reply's lines that were on screen at some moment before
    ``until_ms``, 0..1; NaN when no viewport state is known."""
    ranges = _ranges_on_screen(view_t_ms, first_line, last_line, window_visible, until_ms)
    if ranges is None:
        return NAN
    on_screen = np.zeros(max(int(n_lines), 1), dtype=bool)
    for first, last in zip(*ranges):
        on_screen[max(int(first), 0):int(last) + 1] = True
    return float(on_screen.mean())


def chars_covered(starts, ends, n_chars: int) -> int:
    """Characters inside the union of the ranges [start, end), clipped to the text (a
    range with an unknown end, -1, is skipped): a selection dragged over a paragraph is
    logged at every step, and counts once."""
    covered = np.zeros(max(int(n_chars), 0), dtype=bool)
    for start, end in zip(starts, ends):
        if start < 0 or end < 0:          # not logged: nothing known to count
            continue
        lo, hi = sorted((int(start), int(end)))
        if hi > 0 and lo < len(covered):
            covered[max(lo, 0):min(hi, len(covered))] = True
    return int(covered.sum())


def interaction_features(activity=None, until_ms: float = math.inf) -> dict[str, float]:
    """Per reply, from its :class:`~feedback_store.trace.ReplyActivity` up to ``until_ms``
    (the end of the reading): scroll depth (the furthest line on screen) and the share
    of lines ever on screen (0..1), characters selected and their share,
    copied / regenerated / edited (its prompt) / stopped (0/1), the last thumb (+1/-1, 0
    none) and the time to the next message (ms, NaN if none). All NaN without an
    activity (the study logged none of it)."""
    if activity is None:
        return dict.fromkeys(INTERACTIONS, NAN)
    # What was selected: a Ctrl+C copies a selection already logged; the Copy button copies
    # the whole reply without selecting any of it (and logs markdown offsets), so a copy
    # counts as "copied", never as selected text.
    selected = activity.actions("select", until_ms)
    chars = chars_covered(activity.action_start[selected], activity.action_end[selected],
                          activity.n_chars)
    thumbs = activity.actions("thumb", until_ms)
    view = (activity.view_t_ms, activity.first_line, activity.last_line, activity.window_visible,
            activity.n_lines)
    return {
        "scroll_depth": scroll_depth(*view, until_ms),
        "lines_on_screen_share": lines_on_screen_share(*view, until_ms),
        "selected_chars": float(chars),
        "selected_share": chars / activity.n_chars if activity.n_chars else 0.0,
        "copied": float(len(activity.actions("copy", until_ms)) > 0),
        "time_to_next_message_ms": float(activity.next_message_ms),
        "regenerated": float(len(activity.actions("regenerate", until_ms)) > 0),
        "edited": float(len(activity.actions("edit", until_ms)) > 0),
        "stopped": float(activity.stopped),
        "thumb": float(activity.action_value[thumbs[-1]]) if len(thumbs) else 0.0,
    }


# --- a side-by-side pair -------------------------------------------------------------------
def decision_features(pair: PairTrace, source: int, last_s: tuple = (5.0, 15.0),
                      min_visit_ms: float = 150.0, compare_ms: float = 2000.0,
                      cap_ms: float = CAP_MS) -> dict[str, float]:
    """How attention moved between the two sides before the pick (antisymmetric: swapping
    a and b negates every value except ``switches``, which is symmetric). Only samples over a box count, so time spent on the
    rating form or elsewhere does not decide "last".

    last_side: +1 if a was the last side attended, -1 if b, 0 if neither;
    first_side: the same for the first; switches: changes of side between visits of at
    least ``min_visit_ms``; share_last_Ns: a's share of the on-box time in the N seconds
    before the last on-box sample, minus 0.5; share_second_half: the same over the second
    half of the on-box time; share_compare: the same once both sides have had
    ``compare_ms`` of attention (the comparing phase); return_side: the side of the last
    visit of at least ``compare_ms`` (where the user settled)."""
    parts = []
    for sign, trace in ((1, pair.a), (-1, pair.b)):
        tr = trace.select(_usable(trace, source, pair.pick_t_ms))
        duration = sample_durations(tr.t_ms, cap_ms)
        over = (tr.offset >= 0) | ~np.isnan(tr.x)
        parts.append((tr.t_ms[over], duration[over], np.full(over.sum(), sign)))
    kw = dict(last_s=last_s, min_visit_ms=min_visit_ms, compare_ms=compare_ms)
    out = _decision(parts, **kw)
    if len(np.intersect1d(parts[0][0], parts[1][0])):
        # Samples of both sides at one instant: whichever is put first in time order
        # decides "last" and the visits, and a went first, so swapping a and b did not
        # negate the values. Both orders, averaged: the result no longer depends on it.
        other = _decision(parts[::-1], **kw)
        out = {name: (value + other[name]) / 2 for name, value in out.items()}
    return out


def _decision(parts: list, last_s: tuple, min_visit_ms: float, compare_ms: float) -> dict:
    """:func:`decision_features` of on-box samples ``parts`` ((t, duration, side) per
    side); samples at the same instant keep the order of ``parts``."""
    t = np.concatenate([p[0] for p in parts])
    out = {"last_side": 0.0, "first_side": 0.0, "switches": 0.0, "share_second_half": 0.0,
           "share_compare": 0.0, "return_side": 0.0, "time_since_a_minus_b_s": 0.0}
    out.update({f"share_last_{int(s)}s": 0.0 for s in last_s})
    if len(t) == 0:
        return out
    order = np.argsort(t, kind="stable")
    t = t[order]
    duration = np.concatenate([p[1] for p in parts])[order]
    side = np.concatenate([p[2] for p in parts])[order]
    sides, visit_ms, _ = _runs(side, duration, t)
    keep = visit_ms >= min_visit_ms
    long_sides = _runs(sides[keep], visit_ms[keep], visit_ms[keep])[0] if keep.any() else sides
    out["last_side"] = float(long_sides[-1])
    out["first_side"] = float(long_sides[0])
    out["switches"] = float(max(len(long_sides) - 1, 0))
    end = t[-1]
    for seconds in last_s:
        recent = t > end - seconds * 1000.0
        out[f"share_last_{int(seconds)}s"] = _share(duration[recent], side[recent])
    cumulative = np.cumsum(duration)
    out["share_second_half"] = _share(duration[cumulative > cumulative[-1] / 2],
                                      side[cumulative > cumulative[-1] / 2])
    both_seen = (np.cumsum(duration * (side == 1)) >= compare_ms) & \
        (np.cumsum(duration * (side == -1)) >= compare_ms)
    out["share_compare"] = _share(duration[both_seen], side[both_seen])
    settled = visit_ms >= compare_ms
    out["return_side"] = float(sides[settled][-1]) if settled.any() else 0.0
    # A side never attended counts as last attended when the pair was shown (t = 0).
    last_a = t[side == 1].max() if np.any(side == 1) else 0.0
    last_b = t[side == -1].max() if np.any(side == -1) else 0.0
    out["time_since_a_minus_b_s"] = float((end - last_a) - (end - last_b)) / 1000.0
    return out


def _share(duration, side) -> float:
    total = duration.sum()
    return float(duration[side == 1].sum() / total - 0.5) if total > 0 else 0.0


def pair_difference(a: dict, b: dict, log_keys=()) -> dict[str, float]:
    """a − b for every shared key (log1p first for the keys in ``log_keys``), so the
    result is antisymmetric: swapping the replies negates it."""
    out = {}
    for key in a:
        va, vb = a[key], b.get(key, NAN)
        if key in log_keys:
            va, vb = _log1p(va), _log1p(vb)
        out[key] = va - vb
    return out


def share(a: float, b: float) -> float:
    """a's share of a + b, minus 0.5 (antisymmetric; 0 when both are 0 or unknown)."""
    if not (a + b > 0):
        return 0.0
    return a / (a + b) - 0.5


def _log1p(value: float) -> float:
    return math.log1p(max(value, 0.0)) if value == value else NAN


# --- per-user normalisation without look-ahead -----------------------------------------
def running_normalise(values: np.ndarray, users, order, prior: float = 3.0,
                      centre: bool = True, scale: bool = False) -> np.ndarray:
    """Normalise each row by the statistics of the *same user's earlier rows only*.

    ``values`` (n, k); ``users`` (n,) ids; ``order`` (n,) sort key (e.g. when the reply
    was shown; ties keep input order). Row i of user u is centred on the mean of u's rows
    strictly earlier in ``order``, shrunk towards 0 with ``prior`` pseudo-rows, so a
    user's first turns are barely changed and later ones are read relative to their own
    habits. With ``scale`` it is also divided by their spread, shrunk towards 1 (use it on
    values already on a unit scale). NaNs are ignored in the statistics and stay NaN."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        return running_normalise(values[:, None], users, order, prior, centre, scale)[:, 0]
    out = np.full_like(values, np.nan)
    users = np.asarray(users)
    order = np.asarray(order)
    for user in np.unique(users):
        rows = np.flatnonzero(users == user)
        rows = rows[np.argsort(order[rows], kind="stable")]
        block = values[rows]
        known = ~np.isnan(block)
        filled = np.where(known, block, 0.0)
        # statistics of the rows before each row (exclusive cumulative sums)
        n = np.vstack([np.zeros((1, block.shape[1])), np.cumsum(known, axis=0)[:-1]])
        s1 = np.vstack([np.zeros((1, block.shape[1])), np.cumsum(filled, axis=0)[:-1]])
        s2 = np.vstack([np.zeros((1, block.shape[1])), np.cumsum(filled ** 2, axis=0)[:-1]])
        weight = np.maximum(n + prior, 1e-12)  # no history and no prior: mean 0, spread 1
        mean = s1 / weight
        variance = np.where(n + prior > 0, (s2 - n * (s1 / np.maximum(n, 1)) ** 2 + prior) / weight, 1.0)
        result = block - mean if centre else block.copy()
        if scale:
            result = result / np.sqrt(np.maximum(variance, 1e-12))
        out[rows] = result
    return out


def running_percentile(values: np.ndarray, users, order, prior: float = 2.0) -> np.ndarray:
    """Percentile (0..1, 0.5 = typical) of each value among the same user's *earlier*
    values, shrunk towards 0.5 with ``prior`` pseudo-observations. Scale-free, so it
    needs no population statistics; NaN stays NaN."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    users = np.asarray(users)
    order = np.asarray(order)
    for user in np.unique(users):
        rows = np.flatnonzero(users == user)
        rows = rows[np.argsort(order[rows], kind="stable")]
        history: list[float] = []
        for row in rows:
            v = values[row]
            if np.isnan(v):
                continue
            if history:
                h = np.asarray(history)
                below = np.sum(h < v) + 0.5 * np.sum(h == v)
            else:
                below = 0.0
            weight = len(history) + prior
            out[row] = (below + 0.5 * prior) / weight if weight > 0 else 0.5
            history.append(v)
    return out


# --- text ------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+", re.M)
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+\S|\*\*[^*\n]{1,80}\*\*:?\s*$|[^\n.!?]{1,60}:\s*$)", re.M)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")
_CODE_BLOCK = re.compile(r"```")
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_DIGIT = re.compile(r"\d")
_URL = re.compile(r"https?://|www\.")
_HEDGES = re.compile(r"\b(?:may|might|could|perhaps|possibly|generally|typically|often|"
                     r"however|although|depends?)\b", re.I)
_SELF_REFERENCE = re.compile(r"\b(?:as an ai|i'm sorry|i am sorry|i cannot|i can't|"
                             r"language model|i don't have)\b", re.I)
_SUMMARY = re.compile(r"\b(?:in summary|in conclusion|overall|to summarize|in short)\b", re.I)
_STOPWORDS = frozenset("""a an the and or but if of to in on at by for with about as is are was
were be been being do does did what which who whom how why when where this that these those
it its i you he she they we me my your his her their our can could would should will shall
may might must there here from into than then so not no yes tell me please explain give""".split())

TEXT_KEYS = (
    "chars_log", "words_log", "lines_log", "paragraphs", "sentences", "sentence_words",
    "word_chars", "list_items", "list_share", "headings", "bold", "code_blocks",
    "inline_code", "digits_share", "numbers", "urls", "questions", "exclamations",
    "parentheses", "colons", "type_token", "hedges", "self_reference", "summary",
    "query_overlap", "newline_share",
)


def text_features(text: str, query: str = "") -> dict[str, float]:
    """Length and structure of a reply (and how much of the query's content words it
    repeats). Counts are per reply; shares are per character or per line."""
    text = text or ""
    tokens = re.findall(r"\w+(?:['’\-]\w+)*", text.lower())
    n_words = len(tokens)
    lines = [line for line in text.split("\n") if line.strip()]
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    sentences = max(len(_SENTENCE_END.findall(text)), 1 if text.strip() else 0)
    list_items = len(_LIST_ITEM.findall(text))
    query_words = {w for w in re.findall(r"\w+", (query or "").lower()) if w not in _STOPWORDS}
    chars = max(len(text), 1)
    return {
        "chars_log": math.log1p(len(text)),
        "words_log": math.log1p(n_words),
        "lines_log": math.log1p(len(lines)),
        "paragraphs": float(len(paragraphs)),
        "sentences": float(sentences),
        "sentence_words": n_words / sentences if sentences else 0.0,
        "word_chars": (sum(len(w) for w in tokens) / n_words) if n_words else 0.0,
        "list_items": float(list_items),
        "list_share": list_items / max(len(lines), 1),
        "headings": float(len(_HEADING.findall(text))),
        "bold": float(len(_BOLD.findall(text))),
        "code_blocks": float(len(_CODE_BLOCK.findall(text)) // 2),
        "inline_code": float(len(_INLINE_CODE.findall(text))),
        "digits_share": len(_DIGIT.findall(text)) / chars,
        "numbers": float(len(_NUMBER.findall(text))),
        "urls": float(len(_URL.findall(text))),
        "questions": float(text.count("?")),
        "exclamations": float(text.count("!")),
        "parentheses": float(text.count("(")),
        "colons": float(text.count(":")),
        "type_token": len(set(tokens)) / n_words if n_words else 0.0,
        "hedges": float(len(_HEDGES.findall(text))),
        "self_reference": float(len(_SELF_REFERENCE.findall(text))),
        "summary": float(len(_SUMMARY.findall(text))),
        "query_overlap": (len(query_words & set(tokens)) / len(query_words)) if query_words else NAN,
        "newline_share": text.count("\n") / chars,
    }


# --- what the text predicts about reading ------------------------------------------------
class ExpectedReading:
    """Expected log dwell of a reply from its text (ridge regression, pure numpy).

    Fitted on training replies only (inside a fold); ``residual`` is the user's
    observed-minus-expected reading, the implicit signal that length alone cannot give."""

    def __init__(self, ridge: float = 1.0):
        self.ridge = ridge
        self.mean_ = self.scale_ = self.coef_ = None
        self.intercept_ = 0.0

    def fit(self, text_matrix: np.ndarray, observed: np.ndarray) -> "ExpectedReading":
        X, y = np.asarray(text_matrix, float), np.asarray(observed, float)
        keep = ~np.isnan(y) & ~np.isnan(X).any(axis=1)
        X, y = X[keep], y[keep]
        if not len(y):
            # Nothing observed (e.g. no gaze at all): no expectation, so every residual is
            # missing and counts as average, rather than the raw observation.
            self.mean_, self.scale_ = np.zeros(X.shape[1]), np.ones(X.shape[1])
            self.coef_, self.intercept_ = np.zeros(X.shape[1]), float("nan")
            return self
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0) + 1e-9
        Z = (X - self.mean_) / self.scale_
        self.intercept_ = float(y.mean())
        A = Z.T @ Z + self.ridge * np.eye(Z.shape[1])
        self.coef_ = np.linalg.solve(A, Z.T @ (y - self.intercept_))
        return self

    def predict(self, text_matrix: np.ndarray) -> np.ndarray:
        Z = (np.asarray(text_matrix, float) - self.mean_) / self.scale_
        return self.intercept_ + np.nan_to_num(Z) @ self.coef_

    def residual(self, text_matrix: np.ndarray, observed: np.ndarray) -> np.ndarray:
        return np.asarray(observed, float) - self.predict(text_matrix)

    def to_dict(self) -> dict:
        return {"ridge": self.ridge, "mean": self.mean_.tolist(), "scale": self.scale_.tolist(),
                "coef": self.coef_.tolist(), "intercept": self.intercept_}

    @classmethod
    def from_dict(cls, data: dict) -> "ExpectedReading":
        model = cls(ridge=data["ridge"])
        model.mean_, model.scale_ = np.array(data["mean"]), np.array(data["scale"])
        model.coef_, model.intercept_ = np.array(data["coef"]), float(data["intercept"])
        return model
