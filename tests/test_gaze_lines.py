"""Line assignment of gaze (feedback_store/reading_lines.py): webcam gaze lands a few
lines away from the line read, and reading order says which line it was."""
import time

import numpy as np

from align.features import reading_features, regressions
from feedback_store.reading_lines import assign_lines, fixation_centres, fixation_of, sample_offsets
from feedback_store.trace import GAZE, ReadingTrace

LINE_PX, CHAR_PX, CHARS, N_LINES = 20.0, 10.0, 60, 10
SHORT_LINE, SHORT_CHARS = 6, 20          # a paragraph's last line: 20 characters


def line_chars(line: int) -> int:
    return SHORT_CHARS if line == SHORT_LINE else CHARS


def layout():
    """(top, height, left, right) of ten stacked lines, 20 px high, 600 px of text."""
    right = np.array([line_chars(i) * CHAR_PX for i in range(N_LINES)])
    return np.arange(N_LINES) * LINE_PX, np.full(N_LINES, LINE_PX), np.zeros(N_LINES), right


def reading(order, rng, offset_px, noise_px):
    """Fixation centres of someone reading the lines in ``order`` left to right, about
    every 9 characters, the gaze ``offset_px`` below the text with ``noise_px`` of noise."""
    xs, ys, truth = [], [], []
    for line in order:
        width = line_chars(line) * CHAR_PX
        n = max(2, int(width // 90))
        for i in range(n):
            xs.append((i + 0.5) * width / n + rng.normal(0, 10))
            ys.append((line + 0.5) * LINE_PX + offset_px + rng.normal(0, noise_px))
            truth.append(line)
    return np.array(xs), np.array(ys), np.array(truth)


def under_point(y):
    """The line under each point, as capture maps it (clamped to the text)."""
    return np.clip(np.floor(np.asarray(y) / LINE_PX), 0, N_LINES - 1).astype(int)


def visits(lines):
    lines = np.asarray(lines)
    return lines[np.r_[True, lines[1:] != lines[:-1]]]


def look(recorder, detector, point) -> None:
    """One frame's gaze point to the recorder, and to the tracker's fixation detector,
    whose fixations go to the recorder too (as GazeTracker emits both)."""
    from gaze.fixations import fixation_point
    recorder.point(point)
    done = detector.add(point.mono_ns, point.x, point.y, point.wall_ns)
    if done is not None:
        recorder.point(fixation_point(done))


def read_back(store, recorder, detector, shown_id):
    """The open fixation closed, everything stored, the reply's gaze trace read back."""
    from gaze.fixations import fixation_point
    done = detector.flush()
    if done is not None:
        recorder.point(fixation_point(done))
    recorder.stop()
    store.flush()
    trace, _ = store.traces.read(shown_id)
    return trace, trace.of_source(GAZE)


def test_fixations_a_few_lines_off_are_assigned_the_lines_read():
    """The gaze 0–3 lines off (as a 1–2° calibration bias is) and half a line, then 0.8
    of a line, of noise per fixation: the line under the point is rarely the one read,
    the decoded line nearly always, and the offset is found. (Measured when written:
    0.987 and 0.926; with the same chance of each move instead of the reading priors,
    0.96 and 0.75; without the x fit to each line's text, 0.92 and 0.84.)"""
    top, height, left, right = layout()
    order = [0, 1, 2, 3, 4, 5, 6, 7, 3, 4, 7, 8, 9]
    for noise, at_least in ((0.5, 0.975), (0.8, 0.9)):
        rng = np.random.default_rng(11)
        assigned, captured, offset_error = [], [], []
        for _ in range(60):
            offset = rng.normal(0, 60.0)
            x, y, truth = reading(order, rng, offset, noise * LINE_PX)
            found = assign_lines(x, y, top, height, left, right)
            assigned.append(np.mean(found.line == truth))
            captured.append(np.mean(under_point(y) == truth))
            offset_error.append(abs(found.offset_px[0] - offset))
        assert np.mean(captured) < 0.4                  # (what the raw mapping gives)
        assert np.mean(assigned) >= at_least, (noise, np.mean(assigned))
        if noise == 0.5:
            assert np.mean(np.asarray(offset_error) <= LINE_PX / 2) >= 0.85


def test_reading_back_to_an_earlier_line_is_one_regression_after_assignment():
    top, height, left, right = layout()
    rng = np.random.default_rng(5)
    order = [0, 1, 2, 3, 4, 5, 2, 3]               # lines 1–6, then back to line 3
    counted, raw = [], []
    for _ in range(10):
        x, y, truth = reading(order, rng, 45.0, 0.4 * LINE_PX)
        assert regressions(visits(truth)) == 1
        counted.append(regressions(visits(assign_lines(x, y, top, height, left, right).line)))
        raw.append(regressions(visits(under_point(y))))
    assert np.mean(np.asarray(counted) == 1) >= 0.9
    assert np.mean(raw) > 2


def test_a_long_read_is_decoded_in_windows_that_go_on_from_each_other():
    """Sixty even lines (no short line to anchor them) of a hundred read top to bottom:
    more fixations than one window holds. Each window starts from the line the one before
    ended on, the first from the top of the reply; otherwise a window's lines are known
    only relative to each other, and one or two lines' shift fits as well. (The reading
    stops mid-reply: the last line of the text does not anchor the later window.)"""
    from feedback_store.reading_lines import WINDOW_FIXATIONS
    n_lines, read = 100, 60
    top, height = np.arange(n_lines) * LINE_PX, np.full(n_lines, LINE_PX)
    left, right = np.zeros(n_lines), np.full(n_lines, CHARS * CHAR_PX)
    rng = np.random.default_rng(8)
    xs, ys, truth = [], [], []
    for line in range(read):
        for i in range(7):
            xs.append((i + 0.5) * CHARS * CHAR_PX / 7 + rng.normal(0, 10))
            ys.append((line + 0.5) * LINE_PX + 30.0 + rng.normal(0, 0.4 * LINE_PX))
            truth.append(line)
    assert len(truth) > WINDOW_FIXATIONS
    found = assign_lines(np.array(xs), np.array(ys), top, height, left, right)
    assert np.mean(found.line == np.array(truth)) >= 0.95
    assert np.all(np.abs(found.offset_px - 30.0) <= LINE_PX / 2)


def test_samples_take_their_fixations_line_and_the_character_at_their_x():
    # Three lines: "abcdefghij" (0–10), an empty one (11–11), "klmno" (12–17).
    start, end = np.array([0, 11, 12]), np.array([10, 11, 17])
    left, right = np.zeros(3), np.array([100.0, 0.0, 50.0])
    t = np.array([0.0, 5.0, 10.0, 12.0, 20.0, 25.0, 30.0])
    x = np.array([5.0, 95.0, 40.0, 40.0, 40.0, 999.0, 40.0])
    # fixations [0, 10), [10, 15) and [25, 30), given out of order
    which = fixation_of(t, np.array([25.0, 0.0, 10.0]), np.array([30.0, 10.0, 15.0]))
    assert which.tolist() == [1, 1, 2, 2, -1, 0, -1]       # a fixation's end is not inside
    cx, cy, count = fixation_centres(x, x + 1, which, 3)
    assert count.tolist() == [1, 2, 2] and cx.tolist() == [999.0, 50.0, 40.0]
    assert cy.tolist() == [1000.0, 51.0, 41.0]
    # on lines 1 (empty), 0 and 2: 'a', 'j'; x 40 on "klmno" is 'n' (40 of its 50 px);
    # between fixations and on the empty line, no character
    offsets = sample_offsets(x, which, np.array([1, 0, 2]), start, end, left, right)
    assert offsets.tolist() == [0, 9, 16, 16, -1, -1, -1]


def test_gaze_read_back_from_the_store_is_on_the_lines_read(store):
    """The whole path: noisy 30 Hz gaze 2 lines below the text, the tracker's fixation
    detector, the recorder mapping both onto a reply that scrolls mid-read, the store,
    and the trace reader: its gaze lines are the lines read, and going back once is one
    regression (as captured, the same samples make many)."""
    from app.capture.recorder import GazeRecorder
    from app.session import AppSession, ReplyOnScreen
    from feedback_store.layout import LayoutSnapshot, PlacedReply, ReplyGeometry
    from gaze.fixations import FixationDetector
    from gaze.points import GazePoint
    store.consent.set("gaze", True)
    text = "\n".join("x" * line_chars(i) for i in range(N_LINES))
    starts = np.cumsum([0] + [line_chars(i) + 1 for i in range(N_LINES - 1)]).astype(np.int32)
    ends = (starts + [line_chars(i) for i in range(N_LINES)]).astype(np.int32)
    char_x = np.concatenate([np.arange(line_chars(i) + (i < N_LINES - 1)) * CHAR_PX
                             for i in range(N_LINES)])
    top, height, left, right = layout()
    geometry = ReplyGeometry("m", text, starts, ends, left, top, height, right - left, char_x)
    origin = (100.0, 300.0)
    area = (100.0, 300.0, 700.0, 300.0 + N_LINES * LINE_PX)
    view = (100.0, 100.0, 700.0, 700.0)
    session = AppSession(store)
    recorder = GazeRecorder(store, session.id)
    try:
        shown_id = session.reply_shown(ReplyOnScreen(
            "m", "c", (100, 300, 600, int(N_LINES * LINE_PX)), 1.0, text,
            geometry.line_boxes(*origin)))
        snapshot = LayoutSnapshot((PlacedReply(geometry, shown_id, "c", origin, area, area),),
                                  conversation_id="c", view=view)
        recorder.set_snapshot(snapshot)
        rng = np.random.default_rng(3)
        order = [0, 1, 2, 3, 4, 5, 2, 3]
        detector = FixationDetector(px_per_degree=40.0)
        t = time.monotonic_ns()
        scroll_px, truth = 0.0, []
        for visit, line in enumerate(order):
            if visit == 4:                 # the user scrolls the reply up by 3 lines
                scroll_px = 3 * LINE_PX
                recorder.set_snapshot(snapshot.scrolled(scroll_px))
            width = line_chars(line) * CHAR_PX
            for i in range(max(2, int(width // 90))):
                local = ((i + 0.5) * width / max(2, int(width // 90)), (line + 0.5) * LINE_PX)
                for _ in range(8):         # ≈ 250 ms at 30 Hz
                    t += 33_000_000
                    point = GazePoint(t, time.time_ns(), origin[0] + local[0] + rng.normal(0, 6),
                                      origin[1] - scroll_px + local[1] + 2 * LINE_PX
                                      + rng.normal(0, 6))
                    truth.append((t, line))
                    look(recorder, detector, point)
        trace, gaze = read_back(store, recorder, detector, shown_id)
        expected = dict(truth)
        times = np.round(gaze.t_ms * 1e6).astype(np.int64) + store.traces.shown_reply(shown_id)["shown_mono_ns"]
        read_line = np.array([expected[int(ti)] for ti in times])
        on = gaze.line >= 0
        assert on.mean() > 0.8 and np.mean(gaze.line[on] == read_line[on]) >= 0.95
        assert reading_features(trace, GAZE)["regressions"] == 1
        captured = store._rows("SELECT text_offset FROM gaze_samples WHERE kind = 'raw' ORDER BY mono_ns")
        as_captured = ReadingTrace.build(
            t_ms=gaze.t_ms, offset=[-1 if r["text_offset"] is None else r["text_offset"] for r in captured],
            text=text, line_starts=starts, source=np.full(len(captured), GAZE))
        assert reading_features(as_captured, GAZE)["regressions"] > 1
    finally:
        recorder.stop()
        session.close()


def test_reading_teaches_the_tracker_where_the_lines_are():
    """The loop the app runs, with the tracker's arithmetic: gaze 2.5 lines below the
    text; the real fixation detector and recorder over replies of five paragraphs; the
    recorder's reading meter hands each measured offset to the real recalibrator,
    whose correction moves the next points. The shift converges to the offset without
    overshooting it, and the points then land on the lines read; with no offset it stays
    within half a line; with paragraphs of five lines each, where an offset five lines
    off fits about as well, it never goes the wrong way. (Measured when written: taking
    every measurement, however unsure, the first went 1.5 lines the wrong way; keeping
    fixations seen through an older correction overshot to 3.75 lines.)"""
    from app.capture.recorder import GazeRecorder
    from feedback_store.layout import LayoutSnapshot, PlacedReply, ReplyGeometry
    from gaze.calibration import ClickRecalibrator
    from gaze.fixations import FixationDetector
    from gaze.geometry import ScreenGeometry
    from gaze.points import GazePoint
    n_lines = 20
    origin = (100.0, 300.0)
    area = (100.0, 300.0, 700.0, 300.0 + n_lines * LINE_PX)
    screen = ScreenGeometry.from_dpi(1920, 1080, 92.0, distance_mm=600.0)

    def read(offset_px, seed, ends):
        """(the shift after each measurement, the share of the last quarter's points on
        the line read)"""
        chars = [ends.get(i, CHARS) for i in range(n_lines)]    # ends: paragraphs' last lines
        text = "\n".join("x" * c for c in chars)
        starts = np.cumsum([0] + [c + 1 for c in chars[:-1]]).astype(np.int32)
        char_x = np.concatenate([np.arange(c + (i < n_lines - 1)) * CHAR_PX
                                 for i, c in enumerate(chars)])
        width = np.array(chars, float) * CHAR_PX
        geometry = ReplyGeometry("m", text, starts, (starts + chars).astype(np.int32),
                                 np.zeros(n_lines), np.arange(n_lines) * LINE_PX,
                                 np.full(n_lines, LINE_PX), width, char_x)
        recorder = GazeRecorder(store=None, session_id=None)
        recorder.flush = lambda: 0        # (nothing to store: the loop is the test)
        recal = ClickRecalibrator(screen)
        shifts = [0.0]
        recorder.on_reading_offset = lambda measured: shifts.append(recal.add_reading_offset(
            measured.offset_px, since=measured.since_ns / 1e9))
        recorder.set_snapshot(LayoutSnapshot((PlacedReply(geometry, "shown", "c", origin, area, area),),
                                             conversation_id="c"))
        detector = FixationDetector(screen.px_per_degree)
        rng = np.random.default_rng(seed)
        t, on_line = time.monotonic_ns(), []
        for line in list(range(n_lines)) * 3:          # (as three replies, one after another)
            n = max(2, int(width[line] // 90))
            for i in range(n):
                true = (origin[0] + (i + 0.5) * width[line] / n, origin[1] + (line + 0.5) * LINE_PX)
                for _ in range(8):
                    t += 33_000_000
                    raw = (true[0] + rng.normal(0, 6), true[1] + offset_px + rng.normal(0, 6))
                    x, y = recal.apply(raw)               # as GazeTracker._process does
                    on_line.append((line, int((y - origin[1]) // LINE_PX)))
                    look(recorder, detector, GazePoint(t, time.time_ns(), x, y))
        recorder.stop()
        last = np.array(on_line[-len(on_line) // 4:])
        return np.array(shifts), np.mean(last[:, 0] == last[:, 1])

    paragraphs = {3: 25, 7: 40, 12: 15, 14: 30, 19: 10}
    shifts, on_the_line = read(2.5 * LINE_PX, 1, paragraphs)
    assert abs(shifts[-1] - 2.5 * LINE_PX) < LINE_PX / 2 and on_the_line > 0.8
    assert -LINE_PX / 2 < shifts.min() and shifts.max() < 3 * LINE_PX
    shifts, on_the_line = read(0.0, 2, paragraphs)
    assert np.all(np.abs(shifts) < LINE_PX / 2) and on_the_line > 0.8
    shifts, _ = read(2.5 * LINE_PX, 1, {i: 20 for i in range(4, n_lines, 5)})
    assert -LINE_PX / 2 < shifts.min() and shifts.max() < 3 * LINE_PX


def test_a_window_after_a_jump_keeps_the_offset_it_had():
    """A long reply of even lines: fifty lines read, then a jump beyond the last
    window's reach to lines 85–134. The second window cannot go on from the first's last
    line, and nothing in its lines tells one offset from another a line away; the
    offset found before (it drifts slowly) does, and no "reading starts at the top"
    prior applies in the middle of a reading."""
    n_lines = 140
    top, height = np.arange(n_lines) * LINE_PX, np.full(n_lines, LINE_PX)
    left, right = np.zeros(n_lines), np.full(n_lines, CHARS * CHAR_PX)
    rng = np.random.default_rng(4)
    xs, ys, truth = [], [], []
    for line in list(range(50)) + list(range(85, 135)):
        for i in range(6):
            xs.append((i + 0.5) * CHARS * CHAR_PX / 6 + rng.normal(0, 10))
            ys.append((line + 0.5) * LINE_PX + 30.0 + rng.normal(0, 0.3 * LINE_PX))
            truth.append(line)
    found = assign_lines(np.array(xs), np.array(ys), top, height, left, right)
    second = slice(300, None)
    assert np.mean(found.line[:300] == np.array(truth[:300])) >= 0.95
    assert np.mean(found.line[second] == np.array(truth[second])) >= 0.95


def test_the_meter_says_nothing_of_fixations_no_line_can_reach():
    from feedback_store.reading_lines import ReadingOffsetMeter
    top, height, left, right = layout()
    meter = ReadingOffsetMeter(window=30, every=5)
    rng = np.random.default_rng(6)
    x, y, _ = reading(list(range(N_LINES)), rng, 25.0, 0.3 * LINE_PX)
    said = [meter.add("reply", xi, yi, k, top, height, left, right) for k, (xi, yi) in enumerate(zip(x, y))]
    assert said[:29] == [None] * 29
    measured = [m for m in said if m is not None]
    assert [abs(m.offset_px - 25.0) <= LINE_PX / 2 for m in measured] == [True]
    assert measured[0].since_ns == said.index(measured[0]) - 29     # the oldest of the 30 used
    meter = ReadingOffsetMeter(window=30, every=5)
    far = [meter.add("reply", xi, yi + 5000.0, k, top, height, left, right) for k, (xi, yi) in enumerate(zip(x, y))]
    assert far == [None] * len(far)          # (it said 0 px: the lines' default offset)


def test_gaze_from_before_a_rewrap_keeps_the_offsets_it_was_captured_with(store):
    """The window is narrowed mid-read: the reply's 120 characters go from two lines of
    60 to four of 30, and the stored layout is the new one. Positions on the reply from
    before were on the old lines: decoded against the new ones, the second old line's
    gaze (characters 60–119) became characters 30–59. Those samples keep the offsets they
    were captured with; the samples after are decoded as usual."""
    from app.capture.recorder import GazeRecorder
    from app.session import AppSession, ReplyOnScreen
    from feedback_store.layout import LayoutSnapshot, PlacedReply, ReplyGeometry
    from gaze.fixations import FixationDetector
    from gaze.points import GazePoint
    store.consent.set("gaze", True)
    text = "x" * 120
    origin = (100.0, 300.0)

    def wrapped(per_line):
        n = len(text) // per_line
        starts = np.arange(n, dtype=np.int32) * per_line
        return ReplyGeometry("m", text, starts, starts + per_line, np.zeros(n), np.arange(n) * LINE_PX,
                             np.full(n, LINE_PX), np.full(n, per_line * CHAR_PX),
                             np.tile(np.arange(per_line) * CHAR_PX, n).astype(float))

    def placed(geometry, shown_id):
        area = (origin[0], origin[1], origin[0] + 600.0, origin[1] + geometry.n_lines * LINE_PX)
        return LayoutSnapshot((PlacedReply(geometry, shown_id, "c", origin, area, area),), conversation_id="c")

    wide, narrow = wrapped(60), wrapped(30)
    session = AppSession(store)
    recorder = GazeRecorder(store, session.id)
    detector = FixationDetector(px_per_degree=40.0)
    rng = np.random.default_rng(9)
    t = [time.monotonic_ns()]

    def read(geometry):
        for line in range(geometry.n_lines):
            width = geometry.line_width[line]
            for i in range(3):
                for _ in range(8):
                    t[0] += 33_000_000
                    point = GazePoint(t[0], time.time_ns(),
                                      origin[0] + (i + 0.5) * width / 3 + rng.normal(0, 3),
                                      origin[1] + (line + 0.5) * LINE_PX + rng.normal(0, 3))
                    look(recorder, detector, point)
    try:
        shown_id = session.reply_shown(ReplyOnScreen("m", "c", (100, 300, 600, 40), 1.0, text,
                                                     wide.line_boxes(*origin)))
        recorder.set_snapshot(placed(wide, shown_id))
        read(wide)
        rewrap = t[0]
        session.reply_moved(ReplyOnScreen("m", "c", (100, 300, 300, 80), 1.0, text,
                                          narrow.line_boxes(*origin)))
        recorder.set_snapshot(placed(narrow, shown_id))
        read(narrow)
        trace, gaze = read_back(store, recorder, detector, shown_id)
        rows = store._rows("SELECT mono_ns, text_offset FROM gaze_samples WHERE kind = 'raw' ORDER BY mono_ns")
        captured = np.array([-1 if r["text_offset"] is None else r["text_offset"] for r in rows])
        before = np.array([r["mono_ns"] <= rewrap for r in rows])
        assert before.sum() > 30 and (captured[before] >= 60).sum() > 10
        assert np.array_equal(gaze.offset[before], captured[before])
        # after it, decoded on the four new lines: every line read, in order
        lines_after = gaze.line[~before]
        assert set(lines_after[lines_after >= 0]) == {0, 1, 2, 3}
    finally:
        recorder.stop()
        session.close()


def test_lines_off_the_screen_are_not_read(store):
    """A long reply of even lines scrolled to its lines 11–20, read there with the gaze
    2.5 lines low: nothing in the text tells that offset from one a line or two away,
    and the reading does not start at the reply's top; the viewport events do (a line
    not on screen was not read). Without them every line came out wrong."""
    from app.capture.recorder import GazeRecorder
    from app.session import AppSession, ReplyOnScreen
    from feedback_store import ViewportEvent
    from feedback_store.layout import LayoutSnapshot, PlacedReply, ReplyGeometry
    from gaze.fixations import FixationDetector
    from gaze.points import GazePoint
    store.consent.set("gaze", True)
    store.consent.set("pointer", True)
    n_lines, per_line = 30, CHARS
    text = "x" * (n_lines * per_line)
    starts = np.arange(n_lines, dtype=np.int32) * per_line
    geometry = ReplyGeometry("m", text, starts, starts + per_line, np.zeros(n_lines),
                             np.arange(n_lines) * LINE_PX, np.full(n_lines, LINE_PX),
                             np.full(n_lines, per_line * CHAR_PX),
                             np.tile(np.arange(per_line) * CHAR_PX, n_lines).astype(float))
    origin = (100.0, 100.0 - 10 * LINE_PX)          # scrolled: line 10 at the view's top
    area = (100.0, origin[1], 700.0, origin[1] + n_lines * LINE_PX)
    clip = (100.0, 100.0, 700.0, 100.0 + 10 * LINE_PX)
    session = AppSession(store)
    recorder = GazeRecorder(store, session.id)
    detector = FixationDetector(px_per_degree=40.0)
    rng = np.random.default_rng(12)
    try:
        shown_id = session.reply_shown(ReplyOnScreen("m", "c", (100, int(origin[1]), 600, 600), 1.0,
                                                     text, geometry.line_boxes(*origin)))
        recorder.set_snapshot(LayoutSnapshot((PlacedReply(geometry, shown_id, "c", origin, clip, area),),
                                             conversation_id="c"))
        t = time.monotonic_ns()
        session.record([ViewportEvent(session.id, shown_id, "c", t, time.time_ns(), "scroll", 10, 19,
                                      origin[0], origin[1], True, int(starts[10]), int(starts[19] + per_line))])
        truth = {}
        for line in range(10, 20):
            for i in range(6):
                for _ in range(8):
                    t += 33_000_000
                    y = origin[1] + (line + 0.5) * LINE_PX + 2.5 * LINE_PX + rng.normal(0, 4)
                    point = GazePoint(t, time.time_ns(), origin[0] + (i + 0.5) * 100 + rng.normal(0, 4), y)
                    truth[t] = line
                    look(recorder, detector, point)
        _, gaze = read_back(store, recorder, detector, shown_id)
        zero = store.traces.shown_reply(shown_id)["shown_mono_ns"]
        read_line = np.array([truth[int(round(ti * 1e6)) + zero] for ti in gaze.t_ms])
        on = gaze.line >= 0
        assert on.mean() > 0.6 and np.mean(gaze.line[on] == read_line[on]) >= 0.9
    finally:
        recorder.stop()
        session.close()
