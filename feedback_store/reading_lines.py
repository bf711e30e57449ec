"""Which line of a reply the eyes were reading: line assignment of gaze fixations.

Webcam gaze is off by a few lines. After calibration it is 1–4° from where the eyes
look, mostly as a bias that stays for minutes, plus ≈ 1° of noise a sample; a line of
text is ≈ 0.5° tall. So the line under a gaze point is usually a neighbour of the line
being read, and features built on it (regressions, coverage, first pass) count
movements that never happened. Reading has structure that the raw mapping ignores: the
eyes move along a line, sweep back to the start of the next one, and now and then jump
back. Following ANCHORS.md ("reading needs line assignment": Carr et al. 2022's
comparison; an online line likelihood with reading priors), the most likely lines for a
reply's fixations are decoded under that structure with Viterbi, jointly with the
vertical offset of the gaze for this reading (a grid, with a prior around 0).

The model, for consecutive fixations k−1 → k on lines i → j:
- *emission*: the fixation's height is line j's centre + offset + noise (σ 0.6, 1 or
  1.6 lines, chosen with the offset by likelihood), and its x lies on line j's text (a
  Gaussian fall-off outside it, so a fixation far right of a short line or on an empty
  one is unlikely to be there);
- *transition*: after a *return sweep* (a leftward jump of over a third of the text's
  width) the next line is likely; otherwise the same line. Any other line stays possible
  (a regression, a skip), at a small probability shared among them; the first fixation
  of a reading is near the top.
Progressive fixations (rightwards, at about the same height) are one step ("merge",
Špakov et al. 2019); long readings are decoded in windows that go on from each other.
:class:`ReadingOffsetMeter` measures the offset online, for the tracker's calibration.

Pure numpy, no Qt, no DuckDB. Coordinates are the reply's text area's own pixels.
Cost: a numpy step per run of fixations, on lines × (offsets × σ) arrays: ≈ 2–3 ms for a
minute of reading.
"""
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# σ of a fixation's height around its line's centre, in lines: the likeliest of these
# for each window (a user whose gaze is noisier gets a wider one).
NOISE_LINES = (0.6, 1.0, 1.6)
OFFSET_SD_PX = 100.0     # prior σ of the gaze's vertical offset (≈ 2.5° at 40 px/°)
OFFSET_RANGE_SD = 2.5    # the grid spans ± this many σ of the prior
OFFSET_STEP_LINES = 0.5
RETURN_SWEEP_WIDTH = 1 / 3   # a leftward jump longer than this share of the text width
# P(same line), P(next line), P(any other line, shared among them), by saccade kind:
AFTER_SWEEP = (0.15, 0.70, 0.15)
AFTER_OTHER = (0.88, 0.06, 0.06)
RUN_HEIGHT_LINES = 1.5   # a rightward step this much higher or lower ends a run
START_LINES = 3.0        # the first fixation's line: a prior falling by e every 3 lines
OFF_SCREEN_COST = 30.0   # log-likelihood: a line not on screen, all but ruled out
WINDOW_FIXATIONS = 300   # decoded together (≈ 1.5 minutes of reading), each with its offset


@dataclass(frozen=True)
class LineAssignment:
    line: np.ndarray         # int32 [fixations]: the line each was on
    offset_px: np.ndarray    # float64 [fixations]: the gaze's vertical offset found for it
    log_likelihood: float    # of the decoded paths and offsets (priors included)
    # How much likelier the offset found is than the likeliest one a line or more away
    # (the smallest over the windows; log-likelihood): small when the text's lines look
    # alike and reading could be a line or more off as well.
    margin: float = np.inf


def assign_lines(x, y, line_top, line_height, line_left, line_right, *,
                 from_start: bool = True, on_screen=None) -> LineAssignment:
    """The most likely line of each fixation (``x``, ``y``: their centres, in reading
    order) on a layout of stacked lines (``line_top`` ascending; ``line_left`` /
    ``line_right``: each line's text extent, equal for an empty line).

    Decoded in windows of at most :data:`WINDOW_FIXATIONS`, each with its own offset (a long read
    drifts; and the work and memory, fixations × lines × offsets, stay bounded), over the
    lines its fixations can reach within the offsets' range. ``from_start``: the
    fixations are a reading from its start (near the top of the reply), not from its
    middle. ``on_screen``: per fixation, the first and last line that were on screen
    ([n, 2], -1 where not known): a line off the screen was not being read."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    top = np.asarray(line_top, np.float64)
    height = np.asarray(line_height, np.float64)
    line = np.full(len(x), -1, np.int32)
    offset_px = np.zeros(len(x))
    if not len(x) or not len(top):
        return LineAssignment(line, offset_px, 0.0)
    centre = top + height / 2
    left, right = np.asarray(line_left, np.float64), np.asarray(line_right, np.float64)
    on_screen = np.full((len(x), 2), -1) if on_screen is None else np.asarray(on_screen)
    width = max(float(right.max() - left.min()), float(np.median(height)))
    sweep = np.r_[False, np.diff(x) < -RETURN_SWEEP_WIDTH * width]   # into each fixation
    reach = OFFSET_RANGE_SD * OFFSET_SD_PX + 3 * max(NOISE_LINES) * float(np.median(height))
    total, previous, margin, last_offset = 0.0, None, np.inf, None
    windows = -(-len(x) // WINDOW_FIXATIONS)
    for index, part in enumerate(np.array_split(np.arange(len(x)), windows)):
        band = np.flatnonzero((centre >= y[part].min() - reach) & (centre <= y[part].max() + reach))
        if not len(band):
            previous = None
            continue           # (no line within reach: left unassigned)
        # A later window goes on from the line the one before ended on (its lines are
        # known only relative to each other otherwise); only the first starts near the
        # top, and only a reading from its start.
        came_from = None if previous is None or previous not in band else int(np.searchsorted(band, previous))
        top_prior = 1 / START_LINES if from_start and index == 0 else 0.0
        # The offset drifts slowly: a later window's is near the one before (within a
        # line or so), which also tells it apart from one a line off where the lines
        # look alike and the reading jumped beyond the last window's line.
        prior = (0.0, OFFSET_SD_PX) if last_offset is None else (last_offset, float(np.median(height)))
        # Lines off the screen at a fixation's moment are all but ruled out for it.
        first, last = on_screen[part, :1], on_screen[part, 1:]
        off_screen = (first >= 0) & ((band[None, :] < first) | (band[None, :] > last))
        found, offset, score, sure = _decode(
            x[part], y[part], sweep[part], top[band], height[band], left[band], right[band],
            prior, top_prior * (band[0] + np.arange(len(band))), came_from, off_screen)
        line[part], offset_px[part] = band[found], offset
        previous, total, margin = int(line[part][-1]), total + score, min(margin, sure)
        last_offset = offset
    return LineAssignment(line, offset_px, total, margin)


def _decode(x, y, sweep, top, height, left, right, offset_prior, start_cost,
            came_from: int | None = None, off_screen=None):
    """Viterbi over one window of fixations (``sweep``: whether a return sweep led to
    each) and of lines: (line per fixation, the offset, log-likelihood, its margin over
    offsets a line or more away); ``came_from``:
    the line (of the window) the reading was on just before, None at the start of the
    reading, where ``start_cost`` (per line, in log-likelihood) says which lines a
    reading starts on; ``off_screen``: [F, L], the lines each fixation cannot be on;
    ``offset_prior``: (mean, σ) of the offset's Gaussian prior. The
    offsets searched are the same for every window (± OFFSET_RANGE_SD prior σ around 0).
    The noise σ is chosen with the offset, by likelihood, among
    :data:`NOISE_LINES` (each offset and σ is a column B of the arrays below)."""
    n_fix, n_lines = len(x), len(top)
    line_px = float(np.median(height)) or 1.0
    centre = top + height / 2
    prior_mean, prior_sd = offset_prior
    grid = np.arange(-OFFSET_RANGE_SD * OFFSET_SD_PX, OFFSET_RANGE_SD * OFFSET_SD_PX + 1e-9,
                     OFFSET_STEP_LINES * line_px)
    offsets = np.tile(grid, len(NOISE_LINES))
    sigma = np.repeat(np.asarray(NOISE_LINES) * line_px, len(grid))
    # Runs of progressive fixations (each right of the one before, at about its height)
    # are on one line: decoded as one step, their evidence summed (as Špakov et al. 2019's
    # "merge" does; a fifth of the steps, the loop below being the cost).
    progressive = (np.diff(x) > 0) & (np.abs(np.diff(y)) < RUN_HEIGHT_LINES * line_px)
    run_start = np.flatnonzero(np.r_[True, ~progressive])
    # Emission log-likelihoods of each run [R, L, B]: its heights against each line's
    # centre moved by each offset, Gaussians of each σ, from the run's sums of y and y²
    # (Σ(y − m)² = Σy² − 2mΣy + nm²); its x on the line's text (0 on it, falling off
    # outside it, in lines). (Lines before columns: the loop below reduces over lines,
    # faster on the first axis. In place: temporaries cost more than the arithmetic.)
    count = np.diff(np.r_[run_start, n_fix]).astype(np.float64)[:, None, None]
    sum_y = np.add.reduceat(y, run_start)[:, None, None]
    sum_y2 = np.add.reduceat(y * y, run_start)[:, None, None]
    mean = (centre[:, None] + offsets[None, :])[None]                  # [1, L, B]
    emission = mean * count
    emission -= 2 * sum_y
    emission *= mean
    emission += sum_y2
    emission *= -0.5 / sigma ** 2
    emission -= count * np.log(sigma / line_px)     # (the density's scale: σ is chosen by it)
    outside = np.maximum(np.maximum(left[None, :] - x[:, None], x[:, None] - right[None, :]), 0)
    fit = -0.5 * (outside / (2 * line_px)) ** 2
    if off_screen is not None:
        fit[off_screen] -= OFF_SCREEN_COST
    emission += np.add.reduceat(fit, run_start, axis=0)[:, :, None]
    n_runs = len(run_start)
    # Transition log-probabilities into run k (stay, next line, each other line).
    kinds = np.log(np.where(sweep[run_start, None], AFTER_SWEEP, AFTER_OTHER))
    kinds[:, 2] -= np.log(max(n_lines - 2, 1))
    kinds = kinds.tolist()
    # Viterbi, forward: the best path's score ending on each line, per offset. A line's
    # best predecessor is itself, the line above, or the best line of all (where that is
    # the line or the one above, the first two terms cover it). Only scores are kept; the
    # path is recovered backwards for the chosen offset alone.
    scores = np.empty((n_runs, n_lines, len(offsets)))
    if came_from is None:
        # Reading starts near the top: each line further down is e^(-1/START_LINES) less
        # likely to be the first read. (With text of even lines, only the edges of the
        # text otherwise tell an offset from one a line or two larger.)
        scores[0] = emission[0] - np.asarray(start_cost)[:, None]
    else:
        stay, step, other = kinds[0]
        start = np.full(n_lines, other)
        start[came_from] = stay
        start[came_from + 1:came_from + 2] = step
        scores[0] = emission[0] + start[:, None]
    best_any = np.empty(len(offsets))
    for k in range(1, n_runs):
        stay, step, other = kinds[k]
        previous, score = scores[k - 1], scores[k]
        np.add(previous, stay, out=score)
        np.maximum(score[1:], previous[:-1] + step, out=score[1:])
        np.max(previous, axis=0, out=best_any)
        best_any += other
        np.maximum(score, best_any, out=score)
        score += emission[k]
    total = scores[-1].max(axis=0) - 0.5 * ((offsets - prior_mean) / prior_sd) ** 2
    best = int(total.argmax())
    chosen = scores[:, :, best].tolist()          # (plain lists: one value at a time below)
    path = np.zeros(n_runs, np.int32)
    line = path[-1] = int(np.argmax(chosen[-1]))
    for k in range(n_runs - 1, 0, -1):
        stay, step, other = kinds[k]
        previous = chosen[k - 1]
        anywhere = max(range(n_lines), key=previous.__getitem__)
        candidates = [(previous[line] + stay, line), (previous[anywhere] + other, anywhere)]
        if line > 0:
            candidates.append((previous[line - 1] + step, line - 1))
        line = path[k - 1] = max(candidates)[1]
    far = np.abs(offsets - offsets[best]) >= line_px
    margin = float(total[best] - total[far].max()) if far.any() else np.inf
    return (np.repeat(path, np.diff(np.r_[run_start, n_fix])), float(offsets[best]),
            float(total[best]), margin)


def stacked(line_top, line_height) -> bool:
    """Lines one below the other (a table's cells, side by side, are not: no reading
    order across them to decode)."""
    top = np.asarray(line_top, np.float64)
    return bool(np.all(top[1:] >= top[:-1] + np.asarray(line_height, np.float64)[:-1] - 0.5))


def fixation_of(t, fix_start, fix_end) -> np.ndarray:
    """The index of the fixation [start, end) holding each sample time, -1 for none (in
    flight). A fixation ends one sample interval after its last sample, where the next
    one's first sample may be; fixations do not overlap."""
    t = np.asarray(t, np.float64)
    order = np.argsort(fix_start, kind="stable")
    starts = np.asarray(fix_start, np.float64)[order]
    ends = np.asarray(fix_end, np.float64)[order]
    if not len(starts):
        return np.full(len(t), -1, np.int64)
    within = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, None)
    inside = (t >= starts[within]) & (t < ends[within])
    return np.where(inside, order[within], -1)


def fixation_centres(x, y, which, n_fixations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each fixation's mean position over its samples (``which``: from :func:`fixation_of`,
    -1 ignored) and how many it has. Means of the samples, each in the reply's pixels of
    its own moment, rather than the tracker's centre on screen: a reply that scrolled
    while the eyes rested would move that centre onto another line."""
    keep = np.asarray(which) >= 0
    count = np.bincount(which[keep], minlength=n_fixations).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.bincount(which[keep], np.asarray(x)[keep], minlength=n_fixations) / count
        cy = np.bincount(which[keep], np.asarray(y)[keep], minlength=n_fixations) / count
    return cx, cy, count


def sample_offsets(x, which, fixation_line, line_start, line_end, line_left,
                   line_right) -> np.ndarray:
    """Character offsets for gaze samples from the lines their fixations were assigned
    (``which``: from :func:`fixation_of`): a sample within a fixation is on its line, at
    the character its ``x`` reaches across the line's text (spread evenly: the stored
    layout keeps line boxes, not glyphs); a sample in no fixation was in flight, and one
    on an empty line is on no character (-1)."""
    x = np.asarray(x, np.float64)
    which = np.asarray(which)
    offset = np.full(len(x), -1, np.int64)
    line = np.where(which >= 0, np.asarray(fixation_line)[np.clip(which, 0, None)], -1) \
        if len(fixation_line) else np.full(len(x), -1)
    ok = line >= 0
    first, past = np.asarray(line_start)[line[ok]], np.asarray(line_end)[line[ok]]
    left, right = np.asarray(line_left)[line[ok]], np.asarray(line_right)[line[ok]]
    share = np.clip((x[ok] - left) / np.maximum(right - left, 1e-9), 0.0, 1.0)
    at = np.minimum(first + np.floor(share * (past - first)).astype(np.int64), past - 1)
    offset[ok] = np.where(past > first, at, -1)
    return offset


class ReadingOffset(NamedTuple):
    offset_px: float   # how far below the lines read the fixations were (negative: above)
    since_ns: int      # when the first of them ended (monotonic): what it was measured on


class ReadingOffsetMeter:
    """How far below the text the gaze lands, measured while a reply is read: the
    capture thread hands over each fixation on a reply (its place on the reply and the
    reply's lines). Once ``window`` fixations on the same rendering of a reply are in,
    and then every ``every`` more, the last ``window`` are decoded (from the middle of a
    reading: no start prior); the offset found is returned when it is e^``min_margin``
    times likelier than any offset a line or more away (lines of even length, read in
    order, fit an offset a line or a paragraph off about as well: then nothing is said,
    as the online decoder of ANCHORS waits when unsure), and the next measurement
    starts afresh. The tracker takes it as a weak vertical calibration
    target (``gaze.calibration.ClickRecalibrator.add_reading_offset``). Nothing is
    stored: numbers in memory, for the calibration only."""

    def __init__(self, window: int = 40, every: int = 10, min_margin: float = 3.0):
        self.window, self.every, self.min_margin = window, every, min_margin
        self._key = None
        self._x: list[float] = []
        self._y: list[float] = []
        self._t: list[int] = []
        self._new = 0

    def add(self, key, x: float, y: float, t_ns: int, line_top, line_height, line_left,
            line_right) -> ReadingOffset | None:
        """One fixation at (``x``, ``y``) on the reply's text area, ended at ``t_ns``;
        ``key`` names the rendering (another reply, or a re-wrap, starts again). A
        :class:`ReadingOffset` when a measurement is due, else None."""
        if key != self._key:
            self._key, self._x, self._y, self._t, self._new = key, [], [], [], 0
        self._x = (self._x + [float(x)])[-self.window:]
        self._y = (self._y + [float(y)])[-self.window:]
        self._t = (self._t + [int(t_ns)])[-self.window:]
        self._new += 1
        if len(self._x) < self.window or self._new < self.every or len(line_top) < 2 \
                or not stacked(line_top, line_height):
            return None
        self._new = 0
        found = assign_lines(self._x, self._y, line_top, line_height, line_left, line_right,
                             from_start=False)
        if not found.margin >= self.min_margin or np.any(found.line < 0):
            # The lines here look alike (a line off would fit as well), or some fixations
            # were out of the lines' reach: nothing to say.
            return None
        measured = ReadingOffset(float(np.median(found.offset_px)), self._t[0])
        # The next measurement starts afresh: the fixations so far were seen through the
        # correction of before this one (kept, they would ask for it again).
        self._x, self._y, self._t = [], [], []
        return measured
