"""The one tokenizer of Glance: words of a reply's text and the text's visual lines.

Live capture (the layout probe), imported research data (IFLLM) and the reward model's
features all call these functions, so "word 12" or "line 3" of a reply means the same
thing wherever it was computed. No Qt, no DuckDB: numpy and `re` only.

Definitions (chosen once, used everywhere):
- A **word** is a maximal run of word characters (``\\w``: letters, digits, underscore, in
  any script), where an apostrophe (``'`` or ``’``) or a hyphen *between* two such runs
  keeps them one word: ``don't``, ``Law’s`` and ``over-the-top`` are one word each,
  ``3.5`` is two (a dot splits). Punctuation, markdown markers (``*``, ``#``, backticks)
  and whitespace are not words.
- **Offset → word**: a character offset inside a word maps to that word's index; an
  offset on whitespace or punctuation maps to **-1** ("not on a word"), and so does -1
  (not over text) or an offset past the end. We do not snap to the preceding word by
  default because a point between two words is as near to the next word as to the
  previous one; callers that prefer snapping pass ``snap="preceding"``.
- A **visual line** starts at each offset in ``line_starts`` (sorted, first is 0);
  offset → line is the last line start ≤ offset. Live traces take line starts from the
  rendered layout; imported traces without a layout use :func:`wrap_line_starts`.
"""
import functools
import re

import numpy as np

WORD_PATTERN = re.compile(r"\w+(?:['’\-]\w+)*")


@functools.lru_cache(maxsize=512)
def word_spans(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and end (exclusive) character offsets of every word, int32.
    Cached per text (a reply is tokenised once however many traces and features ask);
    the arrays are read-only."""
    starts, ends = [], []
    for match in WORD_PATTERN.finditer(text or ""):
        starts.append(match.start())
        ends.append(match.end())
    starts, ends = np.asarray(starts, dtype=np.int32), np.asarray(ends, dtype=np.int32)
    starts.flags.writeable = False
    ends.flags.writeable = False
    return starts, ends


def words(text: str) -> list[str]:
    return WORD_PATTERN.findall(text or "")


def word_index(offsets, starts: np.ndarray, ends: np.ndarray, snap: str = "none") -> np.ndarray:
    """Word index of each character offset (vectorised; -1 = not on a word).

    ``snap="preceding"`` maps an offset between words to the word before it (still -1
    before the first word and for offsets that are -1). Offsets past the end of the text
    are the caller's to clear (``ReadingTrace`` sets them to -1)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    out = np.full(offsets.shape, -1, dtype=np.int32)
    if len(starts) == 0 or offsets.size == 0:
        return out
    candidate = np.searchsorted(starts, offsets, side="right") - 1  # last word starting <= offset
    valid = (offsets >= 0) & (candidate >= 0)
    inside = valid.copy()
    inside[valid] = offsets[valid] < ends[candidate[valid]]
    if snap == "preceding":
        out[valid] = candidate[valid]
    elif snap == "none":
        out[inside] = candidate[inside]
    else:
        raise ValueError(f"snap must be 'none' or 'preceding', not {snap!r}")
    return out


def line_index(offsets, line_starts: np.ndarray) -> np.ndarray:
    """Visual line of each character offset (-1 for offsets that are -1 / negative)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    out = np.full(offsets.shape, -1, dtype=np.int32)
    if len(line_starts) == 0 or offsets.size == 0:
        return out
    valid = offsets >= 0
    out[valid] = (np.searchsorted(line_starts, offsets[valid], side="right") - 1).astype(np.int32)
    out[out < -1] = -1
    return out


def wrap_line_starts(text: str, chars_per_line: int) -> np.ndarray:
    """Line starts of ``text`` wrapped greedily like a browser with ``white-space:
    pre-wrap``: every newline starts a line; a paragraph longer than ``chars_per_line``
    breaks after the last space that fits (a single longer word is cut where it must).
    The start of a wrapped line is the first character after the breaking space."""
    if chars_per_line < 1:
        raise ValueError("chars_per_line must be at least 1")
    text = text or ""
    starts = [0]
    position = 0
    for paragraph in text.split("\n"):
        if position > 0:
            starts.append(position)
        line_start = position
        end = position + len(paragraph)
        while end - line_start > chars_per_line:
            limit = line_start + chars_per_line
            space = text.rfind(" ", line_start, limit + 1)
            cut = space + 1 if space > line_start else limit
            starts.append(cut)
            line_start = cut
        position = end + 1  # past the newline
    return np.asarray(starts, dtype=np.int32)
