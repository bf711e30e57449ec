"""The shared tokenizer, the reading-trace types and the reading features, on synthetic
traces whose answers are known by construction (no data files, no Qt, no database)."""
import math

import numpy as np
import pytest

from align import features as F
from feedback_store import words
from feedback_store.trace import GAZE, MOUSE, PairTrace, ReadingTrace, ReplyActivity

# Six visual lines of exactly ten characters each ("line0 aaa ", ...).
TEXT = "".join(f"line{i} {chr(97 + i) * 3} " for i in range(6))
STARTS = np.arange(0, 60, 10, dtype=np.int32)


def trace_over_lines(lines, per_line=3, step_ms=100.0, source=MOUSE, text=TEXT, starts=STARTS):
    """Samples every ``step_ms`` ms, ``per_line`` of them on the first character of each
    listed line in turn."""
    offsets = np.repeat([int(starts[line]) for line in lines], per_line)
    t = np.arange(len(offsets)) * step_ms
    return ReadingTrace.build(t_ms=t, offset=offsets, text=text, line_starts=starts,
                              x=np.full(len(t), 10.0), y=np.full(len(t), 5.0),
                              source=np.full(len(t), source), origin="live")


# --- tokenizer ------------------------------------------------------------------------
def test_words_keep_apostrophes_and_hyphens_inside_words():
    text = "Jude Law’s over-the-top role, isn't it? 3.5 **bold**"
    starts, ends = words.word_spans(text)
    assert [text[a:b] for a, b in zip(starts, ends)] == [
        "Jude", "Law’s", "over-the-top", "role", "isn't", "it", "3", "5", "bold"]


def test_offset_to_word_is_vectorised_and_whitespace_is_minus_one():
    text = "ab cd, ef"
    starts, ends = words.word_spans(text)
    offsets = np.array([0, 1, 2, 3, 5, 6, 7, 8, -1, 99])
    assert words.word_index(offsets, starts, ends).tolist() == [0, 0, -1, 1, -1, -1, 2, 2, -1, -1]
    assert words.word_index(offsets, starts, ends, snap="preceding")[[2, 4, 5]].tolist() == [0, 1, 1]


def test_wrap_breaks_after_spaces_and_at_newlines():
    text = "aaa bbb ccc ddd\nee ff"
    assert words.wrap_line_starts(text, 8).tolist() == [0, 8, 16]
    assert words.line_index([0, 7, 8, 15, 16, 20, -1], [0, 8, 16]).tolist() == [0, 0, 1, 1, 2, 2, -1]
    assert words.wrap_line_starts("abcdefghij", 4).tolist() == [0, 4, 8]  # a long word is cut


# --- trace types -------------------------------------------------------------------------
def test_trace_build_sorts_fills_words_lines_and_marks_missing():
    trace = ReadingTrace.build(t_ms=[200.0, 100.0, 300.0], offset=[11, 0, 500], text=TEXT,
                               line_starts=STARTS, origin="imported", user_id="w1")
    assert trace.t_ms.tolist() == [100.0, 200.0, 300.0]
    assert trace.offset.tolist() == [0, 11, -1]         # past the text → not over text
    assert trace.line.tolist() == [0, 1, -1]
    assert trace.word.tolist() == [0, 2, -1]            # "line0", "line1"
    assert {"x", "y", "visible", "source", "confidence"} <= trace.missing
    assert trace.visible.all() and np.isnan(trace.x).all()


def test_trace_without_layout_wraps_and_says_line_is_estimated():
    trace = ReadingTrace.build(t_ms=[0.0], offset=[12], text="aaa bbb ccc ddd", chars_per_line=8,
                               origin="imported")
    assert trace.line.tolist() == [1] and "line" in trace.estimated


def test_trace_refuses_wrong_types():
    good = trace_over_lines([0, 1])
    with pytest.raises(ValueError):
        ReadingTrace(**{**good.arrays(), "t_ms": good.t_ms.astype(np.float32)}, text=TEXT,
                     line_starts=STARTS, origin="live")
    with pytest.raises(ValueError):
        ReadingTrace(**good.arrays(), text=TEXT, line_starts=STARTS, origin="somewhere")


# --- reading order -------------------------------------------------------------------------
def test_reading_lines_1_to_5_then_back_to_2_is_one_regression():
    trace = trace_over_lines([0, 1, 2, 3, 4, 1])
    f = F.reading_features(trace, MOUSE)
    assert f["regressions"] == 1
    assert f["coverage_lines"] == pytest.approx(5 / 6)
    assert f["first_pass_ms"] == pytest.approx(15 * 100.0)     # five lines × three samples
    assert f["first_pass_coverage"] == pytest.approx(5 / 6)
    assert f["furthest"] == pytest.approx(4 / 5)
    assert f["revisits"] == 1 and f["skipped_lines"] == 0
    assert f["dwell_ms"] == pytest.approx(18 * 100.0)
    # first pass spans five 10-character lines in 1.5 s
    assert f["first_pass_cps"] == pytest.approx(50 / 1.5)


def test_rereading_after_the_jump_back_is_still_one_regression():
    assert F.reading_features(trace_over_lines([0, 1, 2, 3, 4, 1, 2, 3]), MOUSE)["regressions"] == 1
    assert F.reading_features(trace_over_lines([0, 1, 2, 1, 2, 1]), MOUSE)["regressions"] == 2


def test_skipped_lines_and_mean_position():
    f = F.reading_features(trace_over_lines([0, 2, 5]), MOUSE)
    assert f["skipped_lines"] == 3            # lines 1, 3, 4 lie above the furthest (5)
    assert f["regressions"] == 0 and f["furthest"] == 1.0
    assert f["mean_position"] == pytest.approx((0 + 2 / 5 + 1) / 3)


def test_short_visits_are_dropped_with_min_visit():
    # one stray sample on line 0 in the middle of line 3 reading: jitter, not a regression
    lines = [1, 2, 3, 0, 3, 4]
    per = [3, 3, 3, 1, 3, 3]
    offsets = np.concatenate([[int(STARTS[l])] * n for l, n in zip(lines, per)])
    trace = ReadingTrace.build(t_ms=np.arange(len(offsets)) * 100.0, offset=offsets, text=TEXT,
                               line_starts=STARTS, origin="live")
    assert F.reading_features(trace, MOUSE)["regressions"] == 1
    dropped = F.reading_features(trace, MOUSE, min_visit_ms=150)
    # The two halves of line 3 around the stray sample are one visit again.
    assert (dropped["regressions"], dropped["visits"], dropped["revisits"]) == (0, 4, 0)


def test_durations_are_capped_and_off_text_time_is_not_dwell():
    offsets = [0, 0, -1, -1, 10]
    t = [0.0, 100.0, 200.0, 5000.0, 5100.0]     # a 4.8 s gap counts as CAP_MS
    trace = ReadingTrace.build(t_ms=t, offset=offsets, text=TEXT, line_starts=STARTS,
                               x=[1, 1, 2, 2, 3], y=[1, 1, 1, 1, 1], origin="live")
    f = F.reading_features(trace, MOUSE)
    assert f["dwell_ms"] == pytest.approx(100 + 100 + 100)   # last sample: median gap
    assert f["hover_ms"] == pytest.approx(100 + 100 + 100 + F.CAP_MS + 100)
    assert f["path_px"] == pytest.approx(2.0)
    assert math.isnan(f["focused_ms"])   # visibility not measured: focused time unknown
    trace2 = ReadingTrace.build(t_ms=t, offset=offsets, text=TEXT, line_starts=STARTS,
                                visible=[True, False, True, True, True], origin="live")
    assert F.reading_features(trace2, MOUSE)["focused_ms"] == pytest.approx(100.0 + 100.0)


def test_empty_trace_gives_nan_not_zero():
    f = F.reading_features(ReadingTrace.empty(TEXT, STARTS), GAZE)
    assert f["dwell_ms"] == 0 and math.isnan(f["coverage_lines"]) and math.isnan(f["regressions"])


# --- pairs -------------------------------------------------------------------------------
def test_decision_phase_last_side_switches_and_recent_share():
    a = ReadingTrace.build(t_ms=np.arange(0, 3000, 100.0), offset=np.zeros(30, int), text=TEXT,
                           line_starts=STARTS, origin="live")
    b_t = np.arange(3000, 4000, 100.0)
    b = ReadingTrace.build(t_ms=b_t, offset=np.zeros(len(b_t), int), text=TEXT,
                           line_starts=STARTS, origin="live")
    f = F.decision_features(PairTrace(a, b, pick_t_ms=5000.0), MOUSE)
    assert f["last_side"] == -1 and f["first_side"] == 1 and f["switches"] == 1
    # last 5 s before the last sample (3.9 s): a had 3.0 s, b 1.0 s
    assert f["share_last_5s"] == pytest.approx(0.75 - 0.5, abs=1e-9)
    # The window ends at the last sample over a box, not at the pick: a pick made 8 s
    # after the reading ended (the rating form, a pause) changes nothing.
    assert F.decision_features(PairTrace(a, b, pick_t_ms=12_000.0), MOUSE) == f
    swapped = F.decision_features(PairTrace(b, a, pick_t_ms=5000.0), MOUSE)
    assert swapped["switches"] == f["switches"]       # the one symmetric value
    assert all(swapped[k] == pytest.approx(-v) for k, v in f.items() if k != "switches")


def test_decision_phase_is_antisymmetric_when_both_sides_have_samples_at_one_instant():
    """Samples of both sides at the same instant (two sources, or a clock's coarse ticks)
    were ordered a first, so a decided "last": swapping a and b did not negate the values."""
    t = np.arange(0, 4000, 100.0)
    a = ReadingTrace.build(t_ms=t, offset=np.zeros(len(t), int), text=TEXT, line_starts=STARTS,
                           origin="live")
    b = ReadingTrace.build(t_ms=t[20:], offset=np.zeros(20, int), text=TEXT, line_starts=STARTS,
                           origin="live")
    f = F.decision_features(PairTrace(a, b, pick_t_ms=5000.0), MOUSE)
    swapped = F.decision_features(PairTrace(b, a, pick_t_ms=5000.0), MOUSE)
    assert swapped["switches"] == f["switches"]
    assert all(swapped[k] == pytest.approx(-v) for k, v in f.items() if k != "switches")
    # Once b joins, the sides alternate a sample (100 ms) at a time, too short to be a visit
    # (150 ms): the last visit is a's opening one.
    assert (f["last_side"], f["first_side"], f["switches"]) == (1, 1, 0)
    assert f["share_last_5s"] == pytest.approx(40 / 60 - 0.5)


def test_samples_after_the_pick_are_ignored():
    """b is read only after the pick (a whole reading, long enough to be a visit)."""
    a, after = trace_over_lines([0, 1, 2]), trace_over_lines([0, 1, 2])
    b = ReadingTrace.build(t_ms=after.t_ms + 10_000, offset=after.offset, text=TEXT,
                           line_starts=STARTS, x=after.x, y=after.y, source=after.source, origin="live")
    f = F.decision_features(PairTrace(a, b, pick_t_ms=1000.0), MOUSE)
    assert (f["last_side"], f["switches"], f["share_last_5s"]) == (1, 0, 0.5)


def test_a_pairs_reading_counts_until_the_pick():
    """The kept reply stays on screen after a pick and is read on: that reading went into
    the pair's dwell, hover and coverage (only the decision phase stopped at the pick),
    so a live pair's columns said which side was chosen."""
    from align.examples import pair_row
    a, b = trace_over_lines([0, 1, 2]), trace_over_lines([0, 1, 2])
    later = trace_over_lines([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])
    read_on = ReadingTrace.build(
        t_ms=np.concatenate([a.t_ms, later.t_ms + 10_000]), offset=np.concatenate([a.offset, later.offset]),
        text=TEXT, line_starts=STARTS, x=np.full(len(a) + len(later), 10.0),
        y=np.full(len(a) + len(later), 5.0), source=np.full(len(a) + len(later), MOUSE), origin="live")
    equal, _, _ = pair_row(PairTrace(a, b, pick_t_ms=5000.0), "q")
    kept_on, _, _ = pair_row(PairTrace(read_on, b, pick_t_ms=5000.0), "q")
    assert kept_on == pytest.approx(equal, nan_ok=True)
    assert equal["i_d_m_dwell_ms"] == 0


def test_pointer_samples_at_one_instant_have_no_mean_position():
    """Their durations sum to 0: np.average raised ZeroDivisionError, and the pair's
    row with it."""
    same_time = ReadingTrace.build(t_ms=[5.0, 5.0], offset=[0, 10], text=TEXT, line_starts=STARTS,
                                   x=[10.0, 10.0], y=[5.0, 5.0], source=[MOUSE, MOUSE], origin="live")
    f = F.reading_features(same_time, MOUSE)
    assert math.isnan(f["mean_position"]) and f["visits"] == 2


def test_pair_difference_and_share_are_antisymmetric():
    a, b = {"dwell_ms": 1000.0, "x": 2.0}, {"dwell_ms": 100.0, "x": 5.0}
    d = F.pair_difference(a, b, log_keys={"dwell_ms"})
    assert d["x"] == -3.0 and d["dwell_ms"] == pytest.approx(math.log1p(1000) - math.log1p(100))
    assert F.share(3, 1) == pytest.approx(0.25) and F.share(1, 3) == pytest.approx(-0.25)
    assert F.share(0, 0) == 0.0


def activity(views=(), actions=(), n_lines=40, n_chars=200, **kwargs):
    return ReplyActivity.build(n_lines=n_lines, n_chars=n_chars, views=views, actions=actions,
                               **kwargs)


def test_interactions_are_nan_when_not_logged():
    f = F.interaction_features(None)
    assert set(f) == set(F.INTERACTIONS) and all(math.isnan(v) for v in f.values())


def test_scroll_depth_and_lines_on_screen_before_the_reading_ended():
    # 40 lines: 0–9 on screen, scrolled to 20–29, then to 30–39 after the reading ended
    views = [(0.0, 0, 9, True), (1000.0, 20, 29, True), (5000.0, 30, 39, True)]
    assert F.interaction_features(activity(views), until_ms=4000.0)["scroll_depth"] == 0.75
    assert F.interaction_features(activity(views))["scroll_depth"] == 1.0
    # ... and the share of its lines ever on screen: 0–9 and 20–29 of 40
    assert F.interaction_features(activity(views), until_ms=4000.0)["lines_on_screen_share"] == 0.5
    # shown at its end (the chat follows a new reply down), then scrolled back to the top
    follow = [(0.0, 30, 39, True), (2000.0, 0, 9, True)]
    assert F.interaction_features(activity(follow), until_ms=1000.0)["scroll_depth"] == 1.0
    assert F.interaction_features(activity(follow), until_ms=1000.0)["lines_on_screen_share"] == 0.25
    assert F.interaction_features(activity(follow))["lines_on_screen_share"] == 0.5
    # a range while the window was minimised was not seen; nothing on screen → 0
    hidden = [(0.0, 0, 9, True), (1000.0, 20, 29, False)]
    assert F.interaction_features(activity(hidden))["scroll_depth"] == 0.25
    assert F.interaction_features(activity([(0.0, None, None, True)]))["scroll_depth"] == 0.0
    # no viewport state known before the end: unknown, not zero
    assert math.isnan(F.interaction_features(activity(views), until_ms=0.0)["scroll_depth"])
    assert math.isnan(F.interaction_features(activity())["scroll_depth"])
    assert math.isnan(F.interaction_features(activity())["lines_on_screen_share"])


def test_selection_counts_each_character_once_and_copy_stop_thumb_regenerate_edit_are_read():
    actions = [(100.0, "select", 0, 10, None), (150.0, "select", 5, 20, None),   # a drag
               (200.0, "copy", 15, 30, None), (300.0, "thumb", None, None, 1.0),
               (400.0, "thumb", None, None, -1.0), (500.0, "regenerate", None, None, None),
               (9000.0, "edit", None, None, None), (9500.0, "copy", 100, 200, None)]
    f = F.interaction_features(activity(actions=actions, stopped=True, next_message_ms=700.0),
                               until_ms=8000.0)
    # selected: the union of the drag's steps; a copy is "copied", not selected text (the
    # Copy button copies the whole reply without selecting it)
    assert f["selected_chars"] == 20.0 and f["selected_share"] == 20 / 200
    assert (f["copied"], f["thumb"], f["regenerated"], f["edited"], f["stopped"]) == (1, -1, 1, 0, 1)
    assert f["time_to_next_message_ms"] == 700.0
    later = F.interaction_features(activity(actions=actions))     # the edit counts now
    assert later["edited"] == 1.0 and later["selected_chars"] == 20.0
    # a range whose end was not logged counts nothing
    unknown = F.interaction_features(activity(actions=[(1.0, "select", 50, None, None)]))
    assert unknown["selected_chars"] == 0.0
    nothing = F.interaction_features(activity())
    assert (nothing["copied"], nothing["thumb"], nothing["selected_share"], nothing["stopped"]) == (0, 0, 0, 0)


def test_the_model_columns_of_activity_leave_out_the_labels():
    # thumbs are the pointwise label, regenerations and edits how the nightly pairs infer one
    assert not {"thumb", "regenerated", "edited"} & set(F.MODEL_INTERACTIONS)
    assert set(F.MODEL_INTERACTIONS) <= set(F.INTERACTIONS)


# --- per-user normalisation without look-ahead ---------------------------------------------
def test_running_normalisation_uses_only_earlier_rows_of_the_same_user():
    values = np.array([10.0, 10.0, 0.0, 10.0, 1000.0])
    users = np.array(["u", "u", "v", "u", "u"])
    order = np.array([1, 2, 1, 3, 4])
    out = F.running_normalise(values, users, order, prior=0.0)
    # first row of each user: nothing earlier → centred on 0 (the prior mean)
    assert out[0] == 10.0 and out[2] == 0.0
    assert out[1] == 0.0 and out[3] == 0.0
    # a later huge value does not change earlier rows (no look-ahead)
    changed = F.running_normalise(np.where(values == 1000, 5.0, values), users, order, prior=0.0)
    assert changed[:4].tolist() == out[:4].tolist()


def test_running_normalisation_with_the_default_prior_never_looks_ahead_or_across_users():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(40, 3))
    values[5, 1] = np.nan
    users = rng.choice(["u", "v", "w"], size=40)
    order = rng.permutation(40).astype(float)
    out = F.running_normalise(values, users, order)
    assert np.isnan(out[5, 1]) and not np.isnan(out[5, 0])           # NaN stays NaN, alone
    for i in range(40):
        later_or_other = (users != users[i]) | (order > order[i])
        changed = values.copy()
        changed[later_or_other] = rng.normal(loc=50.0, size=(later_or_other.sum(), 3))
        assert np.allclose(F.running_normalise(changed, users, order)[i], out[i], equal_nan=True)
    # the prior's 3 pseudo-rows at 0: a user's second row is centred on a quarter of the first
    u = np.flatnonzero(users == "u")[np.argsort(order[users == "u"])]
    assert out[u[1], 0] == pytest.approx(values[u[1], 0] - values[u[0], 0] / 4)


def test_running_percentile_is_half_without_history_and_scale_free():
    users, order = np.array(["u"] * 4), np.arange(4)
    p = F.running_percentile(np.array([5.0, 1.0, 9.0, 5.0]), users, order, prior=0.0)
    assert p[0] == 0.5
    assert p[1] == 0.0 and p[2] == 1.0 and p[3] == pytest.approx(0.5)
    assert np.allclose(F.running_percentile(np.array([5.0, 1.0, 9.0, 5.0]) * 1000, users, order, 0.0), p,
                       equal_nan=True)


# --- text ---------------------------------------------------------------------------------
def test_text_features_count_structure():
    text = "# Title\n\nIntro sentence. Another one!\n- item 1\n- item 2\n\n```\ncode\n```\nSee 42."
    f = F.text_features(text, query="what is the title")
    assert f["list_items"] == 2 and f["code_blocks"] == 1 and f["headings"] == 1
    assert f["numbers"] == 3 and f["query_overlap"] == 1.0
    assert f["chars_log"] == pytest.approx(math.log1p(len(text)))


def test_expected_reading_residual_removes_what_length_predicts():
    rng = np.random.default_rng(0)
    length = rng.uniform(3, 8, 200)
    observed = 1.0 + 0.9 * length + rng.normal(0, 0.01, 200)
    model = F.ExpectedReading(ridge=1e-6).fit(length[:, None], observed)
    assert np.abs(model.residual(length[:, None], observed)).max() < 0.05


def test_expected_reading_with_nothing_observed_expects_nothing():
    """A user without gaze has no gaze dwell at all: no expectation can be fitted, so the
    residual is missing (counted as average), not the raw observation."""
    import warnings
    length = np.linspace(3, 8, 20)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # and no "mean of empty slice" on the way
        model = F.ExpectedReading().fit(length, np.full(20, np.nan))
        again = F.ExpectedReading.from_dict(model.to_dict())
    assert np.isnan(again.residual(length, np.full(20, 5.0))).all()
