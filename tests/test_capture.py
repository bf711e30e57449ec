"""Capture without a screen: the layout mapping and the pointer recorder, on a real store."""
import unicodedata

import numpy as np

from app.capture.recorder import PointerRecorder
from feedback_store.layout import LayoutSnapshot, PlacedReply, ReplyGeometry
from feedback_store import Conversation

TEXT = "Hello brave world\nsecond line here"


def geometry() -> ReplyGeometry:
    """Two lines of 10-pixel-wide characters, 20 px high, text area at (100, 200)."""
    first, second = TEXT.index("\n"), len(TEXT)
    char_x = np.zeros(len(TEXT))
    char_x[:first + 1] = np.arange(first + 1) * 10.0
    char_x[first + 1:] = np.arange(second - first - 1) * 10.0
    return ReplyGeometry(
        message_id="m", text=TEXT, line_start=np.array([0, first + 1], np.int32),
        line_end=np.array([first, second], np.int32), line_x=np.array([0.0, 0.0]),
        line_top=np.array([0.0, 20.0]), line_height=np.array([20.0, 20.0]),
        line_width=np.array([first * 10.0, (second - first - 1) * 10.0]), char_x=char_x)


def snapshot(visible=True, clip=(100, 200, 400, 240)) -> LayoutSnapshot:
    return LayoutSnapshot((PlacedReply(geometry(), "shown-1", "conv-1", (100.0, 200.0), clip),),
                          window_visible=visible)


def test_points_map_to_offset_word_and_line():
    mapped = snapshot().map([105, 165, 125, 100 + 10 * 9 + 5, 500, 100 + 175, 115],
                            [210, 210, 230, 230, 210, 210, 241])
    # 'H' of Hello; x=165 is char 6, 'b' of brave; on line 2, char 2 ('c' of second) and
    # char 9 ('n' of line)
    assert mapped.offset[:4].tolist() == [0, 6, TEXT.index("\n") + 1 + 2,
                                          TEXT.index("\n") + 1 + 9]
    assert mapped.word[:4].tolist() == [0, 1, 3, 4]          # Hello, brave, second, line
    assert mapped.line[:4].tolist() == [0, 0, 1, 1]
    assert mapped.reply[4] == -1 and mapped.offset[4] == -1   # outside the reply
    assert mapped.reply[5] == 0 and mapped.offset[5] == -1    # right of the first line's text
    assert mapped.reply[6] == -1                               # below the clip


def test_scrolled_out_and_hidden_replies_map_to_nothing():
    clipped = snapshot(clip=(100, 220, 400, 240))               # first line scrolled away
    assert clipped.map([105], [210]).reply.tolist() == [-1]
    assert clipped.replies[0].visible_lines() == (1, 1)
    hidden = snapshot(visible=False)
    assert hidden.map([105], [210]).offset.tolist() == [-1]


def test_moves_coalesce_to_120_hz_and_clicks_and_scrolls_are_never_dropped(store):
    store.consent.set("pointer", True)
    recorder = PointerRecorder(store, "session")
    recorder.set_snapshot(snapshot())
    start = 1_000_000_000
    clicks = scrolls = 0
    for i in range(1000):                         # one second of a 1000 Hz mouse
        t = start + i * 1_000_000
        recorder.event("move", 105 + (i % 50), 210, "test", mono_ns=t, wall_ns=t)
        if i % 97 == 0:
            recorder.event("click", 165, 210, "test", mono_ns=t, wall_ns=t, button="left")
            clicks += 1
        if i % 131 == 0:
            recorder.event("scroll", 165, 210, "test", mono_ns=t, wall_ns=t, dy=-1)
            scrolls += 1
    recorder.flush()
    store.flush()
    rows = store._rows("SELECT kind, mono_ns, text_offset, word_index, shown_reply_id "
                       "FROM pointer_samples ORDER BY mono_ns, kind")
    moves = [r for r in rows if r["kind"] == "move"]
    assert sum(r["kind"] == "click" for r in rows) == clicks
    assert sum(r["kind"] == "scroll" for r in rows) == scrolls
    gaps = np.diff([r["mono_ns"] for r in moves])
    # Moves at most 120 a second, except one kept right before a click or scroll so the
    # click's position is exact: such a move can follow another sooner.
    assert len(moves) <= 120 + clicks + scrolls + 1
    assert len(moves) >= 100
    assert (gaps >= 1e9 / 120).sum() >= len(moves) - clicks - scrolls - 2
    click = next(r for r in rows if r["kind"] == "click")
    assert click["text_offset"] == 6 and click["word_index"] == 1
    assert click["shown_reply_id"] == "shown-1"
    assert recorder.received == 1000 + clicks + scrolls
    # the move at each click's and scroll's moment is stored (the position is exact)
    assert {r["mono_ns"] for r in rows if r["kind"] != "move"} <= {r["mono_ns"] for r in moves}


def test_without_consent_the_recorder_stores_nothing(store):
    recorder = PointerRecorder(store, "session")
    recorder.event("click", 105, 210, "test", button="left")
    recorder.flush()
    store.flush()
    assert store.counts()["pointer_samples"] == 0
    assert recorder.refused == 1 and store.consent.refused["no_consent:pointer"] == 1


def test_one_point_and_many_points_map_the_same():
    snap = snapshot(clip=(100, 200, 400, 240))
    rng = np.random.default_rng(1)
    # Random points, and every whole pixel around the clip: its edges and the lines' are
    # where two versions of one check part ways (< against <=).
    grid_x, grid_y = np.meshgrid(np.arange(80, 421), np.arange(190, 251))
    xs = np.concatenate([rng.uniform(80, 420, 2000), grid_x.ravel()]).astype(float)
    ys = np.concatenate([rng.uniform(190, 250, 2000), grid_y.ravel()]).astype(float)
    many = snap.map(xs, ys)
    for i in range(len(xs)):
        placed, offset, word, line = snap.map_one(xs[i], ys[i])
        assert (0 if placed else -1) == many.reply[i]
        assert (offset, word, line) == (many.offset[i], many.word[i], many.line[i]) or placed is None


def test_gaze_begun_before_a_chat_switch_is_not_stored_under_the_new_chat(store):
    """A fixation is reported at its end: one that began in an incognito chat and ended
    after the user opened another was labelled with the other chat and stored."""
    import time
    from dataclasses import replace
    from app.capture.recorder import GazeRecorder
    from gaze.points import GazePoint
    store.consent.set("gaze", True)
    incognito = store.conversations.create(Conversation(title="secret", incognito=True))
    normal = store.conversations.create(Conversation(title="normal"))
    recorder = GazeRecorder(store, "session")
    recorder.set_snapshot(LayoutSnapshot(conversation_id=incognito.id))
    began = time.monotonic_ns()
    recorder.set_snapshot(LayoutSnapshot(conversation_id=normal.id))     # the user switches
    ended = time.monotonic_ns() + 50_000_000
    straddling = GazePoint(ended, time.time_ns(), 500.0, 500.0, "fixation", 0.9,
                           (ended - began) / 1e6)
    after = replace(straddling, duration_ms=20.0)                        # began after the switch
    recorder.point(straddling)
    recorder.point(after)
    recorder.stop()
    store.flush()
    rows = store._rows("SELECT conversation_id, duration_ms FROM gaze_samples")
    assert rows == [{"conversation_id": normal.id, "duration_ms": 20.0}]
    assert recorder.straddling == 1


def test_gaze_points_and_fixations_are_mapped_and_stored_with_consent_only(store):
    from app.capture.recorder import GazeRecorder
    from gaze.points import GazePoint
    recorder = GazeRecorder(store, "session")
    recorder.set_snapshot(snapshot())
    points = [GazePoint(i * 33_000_000, i * 33_000_000, 165.0, 210.0, "raw", 0.9)
              for i in range(1, 4)]
    fixation = GazePoint(4 * 33_000_000, 4 * 33_000_000, 125.0, 230.0, "fixation", 0.8, 120.0)
    for point in points + [fixation]:
        recorder.point(point)
    recorder.stop()                  # the flusher started itself; stop stores the rest
    store.flush()
    assert store.counts()["gaze_samples"] == 0          # no gaze consent: refused
    assert store.consent.refused["no_consent:gaze"] == 4
    store.consent.set("gaze", True)
    for point in points + [fixation]:
        recorder.point(point)
    recorder.stop()
    store.flush()
    rows = store._rows("SELECT kind, text_offset, word_index, line, confidence, duration_ms, "
                       "shown_reply_id FROM gaze_samples ORDER BY mono_ns")
    assert [r["kind"] for r in rows] == ["raw", "raw", "raw", "fixation"]
    assert rows[0]["word_index"] == 1 and rows[0]["text_offset"] == 6     # 'b' of brave
    assert rows[-1]["line"] == 1 and rows[-1]["duration_ms"] == 120.0
    assert {r["shown_reply_id"] for r in rows} == {"shown-1"}


def test_points_over_other_applications_are_not_kept(qtbot, window, store):
    """The desktop-wide hook and the webcam kept every point, over any application and
    while the window was minimised: the consent covers the pointer and eyes over Glance."""
    import time

    from gaze.points import GazePoint
    store.consent.set("pointer", True)
    store.consent.set("gaze", True)
    window.capture.sync()
    window.capture.publish()
    recorder, gaze = window.capture.recorder, window.gaze_recorder
    x0, y0, x1, y1 = recorder.snapshot.window_rect
    inside, outside = (x0 + 50, y0 + 50), (x1 + 40, y0 + 50)
    for x, y in (inside, outside):
        recorder.event("move", x, y, "pynput")
        now = time.monotonic_ns()
        gaze.point(GazePoint(now, time.time_ns(), x, y))
    window.showMinimized()
    qtbot.waitUntil(lambda: not recorder.snapshot.window_visible, timeout=30_000)
    recorder.event("move", *inside, "pynput")
    gaze.point(GazePoint(time.monotonic_ns(), time.time_ns(), *inside))
    recorder.flush()
    gaze.flush()
    store.flush()
    kept = store._rows("SELECT x, y FROM pointer_samples")
    looked = store._rows("SELECT x, y FROM gaze_samples")
    assert [(r["x"], r["y"]) for r in kept] == [inside]
    assert [(r["x"], r["y"]) for r in looked] == [inside]
    assert recorder.off_window == 2 and gaze.off_window == 2


def test_no_point_is_kept_before_the_window_says_where_it_is(qtbot, store, engine):
    """Before the first layout snapshot, the recorders knew no window: every point of the
    desktop-wide hook was kept."""
    from app.ui.main_window import MainWindow
    store.consent.set("pointer", True)
    window = MainWindow(store, engine)          # not shown: nothing published yet
    qtbot.addWidget(window)
    recorder = window.capture.recorder
    recorder.event("move", 500, 300, "pynput")
    assert recorder.off_window == 1
    window.close()


def test_points_while_the_pointer_is_over_a_covering_window_are_not_kept(qtbot, window, store):
    """Another application's window over part of Glance's: points there are inside the
    window's area but not over it. The window system says so with leave and enter."""
    from PySide6.QtCore import QEvent, QPoint
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication
    store.consent.set("pointer", True)
    window.capture.sync()
    window.capture.publish()
    recorder = window.capture.recorder
    x0, y0, _, _ = recorder.snapshot.window_rect
    QApplication.sendEvent(window, QEvent(QEvent.Type.Leave))
    recorder.event("move", x0 + 50, y0 + 50, "pynput")
    QApplication.sendEvent(window, QEvent(QEvent.Type.Enter))
    recorder.event("move", x0 + 60, y0 + 50, "pynput")
    assert recorder.off_window == 1
    # Without a desktop-wide hook, Qt's own pointer events come back with the pointer.
    QApplication.sendEvent(window, QEvent(QEvent.Type.Leave))
    assert window.capture.qt_fallback
    QTest.mouseMove(window.chat_view.viewport(), QPoint(30, 30))
    recorder.stop()                          # stores a move held back by the 120 Hz limit
    store.flush()
    kept = store._rows("SELECT x, source FROM pointer_samples ORDER BY mono_ns")
    assert [(r["x"], r["source"]) for r in kept][:1] == [(x0 + 60, "pynput")]
    assert [r["source"] for r in kept][1:] == ["qt"]


def test_gaze_is_not_kept_while_the_window_is_minimised_without_the_pointer_consent(
        qtbot, window, store):
    """Minimise and restore reached the layout snapshot only when the pointer was being
    recorded: with the gaze consent alone, the minimised window still said it was
    visible, and gaze at other applications was stored as reading of its replies."""
    import time

    from gaze.points import GazePoint
    store.consent.set("gaze", True)                   # and not the pointer
    window.capture.publish()
    gaze = window.gaze_recorder
    assert not window.capture.running and gaze.snapshot.window_visible
    x0, y0, _, _ = gaze.snapshot.window_rect
    window.showMinimized()
    qtbot.waitUntil(lambda: not gaze.snapshot.window_visible, timeout=30_000)
    gaze.point(GazePoint(time.monotonic_ns(), time.time_ns(), x0 + 50, y0 + 50))
    gaze.flush()
    store.flush()
    assert store.counts()["gaze_samples"] == 0 and gaze.off_window == 1


def settled(qtbot, window):
    """Once the window's layout has settled and the capture has measured it (40 ms
    after the last change; waited for, not slept: a busy machine takes longer)."""
    qtbot.wait(1)                            # (events queued by the change are handled)
    qtbot.waitUntil(lambda: not window.capture.settle.isActive(), timeout=10_000)


def _chat_to_scroll(window, store):
    """A stored conversation long enough to scroll, open in the window."""
    from feedback_store import Message
    chat = store.conversations.create(Conversation(title="Long"))
    parent = None
    for turn in range(6):
        question = store.conversations.add_message(Message(chat.id, "user", f"Question {turn}?", parent_id=parent))
        answer = store.conversations.add_message(Message(
            chat.id, "assistant", " ".join(f"Answer {turn} sentence {i} about lighthouses and "
                                           "the sea." for i in range(12)), parent_id=question.id))
        parent = answer.id
    window.open_conversation(chat.id)
    return chat


def _mapping_agrees_with_the_window(window) -> int:
    """Points over the chat: the capture's snapshot maps each to the same reply and
    character as the window's own fresh measurement. Returns how many were over text."""
    from app.ui.layout_probe import global_rect
    view = global_rect(window.chat_view.viewport())
    over_text = 0
    for fx in (0.2, 0.4, 0.6):
        for fy in (0.1, 0.3, 0.5, 0.7, 0.9):
            x, y = int(view.left() + fx * view.width()), int(view.top() + fy * view.height())
            placed, offset, _, _ = window.capture.recorder.snapshot.map_one(x, y)
            hit = window.probe.hit(x, y)
            ours = (placed.geometry.message_id, offset if offset >= 0 else None) if placed else None
            theirs = (hit.message_id, hit.offset) if hit else None
            assert ours == theirs, ((x, y), ours, theirs)
            over_text += theirs is not None and theirs[1] is not None
    return over_text


def test_while_the_chat_scrolls_points_map_to_where_the_words_are_now(qtbot, window, store):
    """Each scroll step restarted a 40 ms wait before the layout was measured again:
    for a whole smooth scroll, points were mapped to where the words had been."""
    _chat_to_scroll(window, store)
    bar = window.chat_view.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 300, timeout=30_000)
    bar.setValue(bar.maximum())
    window.capture.publish()
    for step in (120, 37, 200):                  # no settling in between
        bar.setValue(bar.value() - step)
        assert _mapping_agrees_with_the_window(window) > 0


def test_replies_moved_inside_the_window_are_measured_again(qtbot, window, store):
    """The edit banner, "Show all" above a reply or the sidebar's splitter move the
    replies without the window moving or resizing: nothing measured them again."""
    chat = _chat_to_scroll(window, store)
    bar = window.chat_view.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 300, timeout=30_000)
    bar.setValue(0)
    window.capture.publish()
    first_question = window.tree.active_path()[0].id
    window.begin_edit(first_question)                     # the banner pushes the chat down
    qtbot.waitUntil(window.banner.isVisible, timeout=5_000)
    settled(qtbot, window)
    assert _mapping_agrees_with_the_window(window) > 0
    window.stop()
    sizes = window.splitter.sizes()
    window.splitter.setSizes([sizes[0] + 120, sizes[1] - 120])   # the sidebar dragged wider
    settled(qtbot, window)
    assert _mapping_agrees_with_the_window(window) > 0
    assert chat.id == window.tree.id


def test_the_words_of_a_table_map_to_their_own_cell(qtbot, window, store):
    """A markdown table's cells are laid out side by side: the search on line tops took
    the right cell's line for points over the left cell (no word), and the line of a
    wrapped left cell for the line above it."""
    from feedback_store import Message
    chat = store.conversations.create(Conversation(title="Table"))
    question = store.conversations.add_message(Message(chat.id, "user", "Compare them."))
    table = ("| Lighthouse | Notes |\n|---|---|\n"
             "| Fastnet | " + "A tall granite tower on a rock far out in the sea, " * 4 + "|\n"
             "| Eddystone | Rebuilt four times |\n")
    reply = store.conversations.add_message(Message(chat.id, "assistant", table,
                                                    parent_id=question.id))
    window.resize(700, 600)
    window.open_conversation(chat.id)
    qtbot.waitUntil(lambda: reply.id in window.probe.message_ids(), timeout=10_000)
    settled(qtbot, window)
    window.capture.publish()
    geometry = window.probe.geometry(reply.id)
    assert not geometry._stacked                 # side-by-side lines: the case at hand
    placed = next(p for p in window.capture.recorder.snapshot.replies
                  if p.geometry.message_id == reply.id)
    checked = 0
    for i in range(geometry.n_lines):
        if geometry.line_end[i] <= geometry.line_start[i] or geometry.line_width[i] < 4:
            continue
        x = float(geometry.line_x[i] + geometry.line_width[i] / 2)
        y = float(geometry.line_top[i] + geometry.line_height[i] / 2)
        offset, word, line = geometry.locate(x, y)
        assert line == i and geometry.line_start[i] <= offset < geometry.line_end[i], (i, line, offset)
        gx, gy = placed.origin[0] + x, placed.origin[1] + y
        if placed.clip[0] <= gx < placed.clip[2] and placed.clip[1] <= gy < placed.clip[3]:
            many = window.capture.recorder.snapshot.map([gx], [gy])
            assert (many.offset[0], many.word[0], many.line[0]) == (offset, word, line)
        checked += 1
    assert checked >= 6


def test_a_reply_shown_again_gets_its_first_view_written(qtbot, window, store):
    """What was on screen was remembered per message: a chat left and reopened is a new
    showing of its replies, but the same lines on screen wrote no viewport event for it,
    so the reward features found nothing on screen for the new showing."""
    from feedback_store import Message
    store.consent.set("pointer", True)
    window.capture.sync()
    chats = []
    for name in ("A", "B"):
        chat = store.conversations.create(Conversation(title=name))
        question = store.conversations.add_message(Message(chat.id, "user", f"Question {name}?"))
        store.conversations.add_message(Message(chat.id, "assistant", f"Answer {name}.",
                                                parent_id=question.id))
        chats.append(chat)
    a, b = chats
    for chat in (a, b, a):
        window.open_conversation(chat.id)
        settled(qtbot, window)
        window.capture.publish()
    store.flush()
    shown = store._rows("SELECT s.id FROM shown_replies s JOIN messages m ON m.id = s.message_id "
                        "WHERE m.conversation_id = ? AND m.role = 'assistant'", [a.id])
    assert len(shown) == 2                   # two showings of A's reply
    for row in shown:
        assert store._rows("SELECT 1 FROM viewport_events WHERE shown_reply_id = ?", [row["id"]]), row


def test_only_what_the_user_types_times_the_next_message(qtbot, window, store):
    """Text the window puts in the box (Edit, a draft brought back) was logged as the
    first keystroke after the reply, with a latency measured from it."""
    from test_ui import send_by_keyboard
    store.consent.set("pointer", True)
    window.capture.sync()
    reply = send_by_keyboard(qtbot, window, "Say yes.")

    def keystrokes():
        store.flush()
        return store._rows("SELECT value FROM reply_actions WHERE kind = 'first_keystroke'")
    window.begin_edit(reply.parent_id)            # the box is filled with the message
    window.stop()                                 # Esc: the draft comes back (empty)
    assert keystrokes() == []
    window.input.setFocus()
    qtbot.keyClicks(window.input, "And no?")
    typed = keystrokes()
    assert len(typed) == 1 and typed[0]["value"] > 0
    # Typing in another chat does not answer this reply: no latency measured from it.
    window.input.clear()
    window.new_chat()
    send_by_keyboard(qtbot, window, "Say no.")
    window.open_conversation(reply.conversation_id)
    window.input.setFocus()
    qtbot.keyClicks(window.input, "Back here")
    assert len(keystrokes()) == 1


def test_a_reply_whose_font_changes_is_measured_again(qtbot, window, store):
    """The measured lines were cached by the document's revision, the width and the
    scroll: a font change re-wraps the reply without touching any of them."""
    from app.ui.layout_probe import measure
    from feedback_store import Message
    chat = store.conversations.create(Conversation(title="Font"))
    question = store.conversations.add_message(Message(chat.id, "user", "Tell me."))
    reply = store.conversations.add_message(Message(
        chat.id, "assistant", "A lighthouse keeper kept the light burning every night. " * 6,
        parent_id=question.id))
    window.open_conversation(chat.id)
    qtbot.waitUntil(lambda: reply.id in window.probe.message_ids(), timeout=10_000)
    browser = window.probe.browser(reply.id)
    settled(qtbot, window)
    before = window.probe.geometry(reply.id).n_lines
    assert before == measure(reply.id, browser).n_lines
    font = browser.font()
    font.setPointSizeF(font.pointSizeF() * 2)
    browser.setFont(font)
    after = measure(reply.id, browser).n_lines
    assert after != before
    assert window.probe.geometry(reply.id).n_lines == after


def test_what_was_on_screen_before_a_re_wrap_is_read_in_the_reply_s_last_layout(qtbot, window, store):
    """A trace numbers its lines by the reply's stored (latest) layout, but each viewport
    event numbered them by the layout of its moment: after the window was made narrower,
    the whole reply on screen before it (lines 0-3 of the wide layout) became lines 0-3
    of the narrow one, and a point read on the reply's last words then was stored as a
    point on a line that was not on screen."""
    import time

    from feedback_store import Message, PointerSample
    store.consent.set("pointer", True)
    window.capture.sync()
    chat = store.conversations.create(Conversation(title="Wrap"))
    question = store.conversations.add_message(Message(chat.id, "user", "Tell me."))
    text = "A lighthouse keeper kept the light burning every night of the year. " * 5
    reply = store.conversations.add_message(Message(chat.id, "assistant", text, parent_id=question.id))
    window.resize(1200, 760)
    window.open_conversation(chat.id)
    qtbot.waitUntil(lambda: reply.id in window.probe.message_ids(), timeout=10_000)
    settled(qtbot, window)
    window.capture.publish()
    wide = window.probe.geometry(reply.id).n_lines
    shown_id = window.session.shown_id(reply.id)
    last_word = len(text.rstrip()) - 3
    store.samples.submit([PointerSample(window.session.id, shown_id, chat.id, time.monotonic_ns(),
                                        time.time_ns(), "move", x=1.0, y=1.0, text_offset=last_word)])
    store.flush()
    window.resize(560, 760)                         # the reply re-wraps onto more lines
    qtbot.waitUntil(lambda: window.probe.geometry(reply.id).n_lines > wide, timeout=10_000)
    settled(qtbot, window)
    window.capture.publish()
    store.flush()
    narrow = window.probe.geometry(reply.id).n_lines
    trace, activity = store.traces.read(shown_id)
    assert trace.n_lines == narrow and len(trace.visible) == 1
    assert trace.visible[0]                          # the whole reply was on screen
    assert activity.first_line[0] == 0 and activity.last_line[0] == narrow - 1


def test_a_reply_scrolled_out_of_view_is_shown_when_it_comes_into_view(qtbot, window, store):
    """Opening a long chat recorded every reply as shown at once, the ones far above too:
    their showing began when the chat opened, not when the user scrolled up to them, and
    every layout change wrote a viewport event for each of them ("nothing on screen")."""
    import time

    store.consent.set("pointer", True)
    window.capture.sync()
    chat = _chat_to_scroll(window, store)
    bar = window.chat_view.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 300, timeout=30_000)
    bar.setValue(bar.maximum())
    settled(qtbot, window)
    window.capture.publish()
    store.flush()
    assert bar.value() == bar.maximum()           # (the first reply far above, out of view)
    first_reply = window.tree.active_path()[1].id
    last_reply = window.tree.active_path()[-1].id

    def shown(message_id):
        return store._rows("SELECT shown_mono_ns FROM shown_replies WHERE message_id = ?", [message_id])
    assert shown(last_reply) and not shown(first_reply)
    scrolled_at = time.monotonic_ns()
    bar.setValue(0)
    # At once, before the scroll settles and the chat is measured again: points over the
    # reply now on screen belong to its showing.
    placed = next(p for p in window.capture.recorder.snapshot.replies
                  if p.geometry.message_id == first_reply)
    assert placed.shown_reply_id is not None and placed.clip[3] > placed.clip[1]
    settled(qtbot, window)
    window.capture.publish()
    store.flush()
    [row] = store._rows("SELECT id, shown_mono_ns FROM shown_replies WHERE message_id = ?", [first_reply])
    assert row["shown_mono_ns"] >= scrolled_at and row["id"] == placed.shown_reply_id
    assert not store._rows("SELECT 1 FROM viewport_events WHERE shown_reply_id IS NULL "
                           "AND conversation_id = ?", [chat.id])


def test_each_character_s_edge_is_where_qt_puts_its_cursor(qtbot):
    """The layout is measured from the shaped glyphs of each line (one cursorToX call
    per character cost 130 ms at 40 000 characters); Qt's own cursor position before
    each character is the oracle, over markdown with lists, code, a table, a quote and
    ligatures (the second character of a ligature has no glyph of its own)."""
    from PySide6.QtGui import QTextCursor
    from app.ui.chat_view import ReplyBrowser
    from app.ui.layout_probe import measure
    text = ("# Office affine\n\nSome **bold**, *italic* and `code` text, long enough to wrap "
            "at this width: efficient fluffy offices.\n\n1. first item, long enough to wrap "
            "around the line here\n   - nested: affine baffle\n\n```python\ndef f(x):\n"
            "    return x * 2\n```\n\n| left | right |\n|---|---|\n| a cell | another cell |\n\n"
            "> a quote that wraps around the line at this width, surely\n\n"
            "Hebrew: שלום עולם, and back to English.\n")
    browser = ReplyBrowser()
    qtbot.addWidget(browser)
    browser.resize(300, 400)
    browser.set_markdown(text)
    browser.show()
    qtbot.waitExposed(browser)
    geometry = measure("m", browser)
    document = browser.document()
    right_to_left = [any(unicodedata.bidirectional(c) in ("R", "AL")
                         for c in geometry.text[start:end])
                     for start, end in zip(geometry.line_start, geometry.line_end)]
    checked = 0
    for line_index in range(geometry.n_lines):
        for position in range(geometry.line_start[line_index], geometry.line_end[line_index]):
            cursor = QTextCursor(document)
            cursor.setPosition(int(position))
            rect = browser.cursorRect(cursor)            # viewport pixels, as the geometry's
            top = geometry.line_top[line_index]
            if not top <= rect.center().y() < top + geometry.line_height[line_index]:
                continue      # (the wrap point's cursor is drawn at the next line's start)
            if right_to_left[line_index]:
                continue      # (the cursor is at a right-to-left letter's right edge: below)
            assert abs(geometry.char_x[position] - rect.left()) <= 1.0, (position, text[position])
            checked += 1
    assert checked > 0.8 * len(geometry.text.replace("\n", ""))


def points_mapped(qtbot, markdown: str, width: int = 420):
    """For each character of a rendered reply that has a box of its own (the cursors
    before and after it are apart, on its line), the character the geometry finds at the
    middle of that box: [(character, offset, offset found)]."""
    from app.ui.chat_view import ReplyBrowser
    from app.ui.layout_probe import measure
    browser = ReplyBrowser()
    qtbot.addWidget(browser)
    browser.resize(width, 300)
    browser.set_markdown(markdown)
    browser.show()
    qtbot.waitExposed(browser)
    geometry = measure("m", browser)
    document = browser.document()
    found = []
    block = document.begin()
    while block.isValid():
        rect = document.documentLayout().blockBoundingRect(block)
        layout = block.layout()
        for index in range(layout.lineCount()):
            line = layout.lineAt(index)
            for position in range(line.textStart(), line.textStart() + line.textLength()):
                before, after = line.cursorToX(position)[0], line.cursorToX(position + 1)[0]
                if block.text()[position].isspace() or abs(after - before) > 20:
                    continue  # (where a right-to-left run meets the rest, a cursor is at its far end)
                offset, _, _ = geometry.locate(rect.left() + (before + after) / 2,
                                               rect.top() + line.y() + line.height() / 2)
                found.append((block.text()[position], block.position() + position, offset))
        block = block.next()
    return found


def test_right_to_left_and_centred_text_maps_to_its_own_characters(qtbot):
    """Lines were placed at their box's left edge and their characters found by bisecting
    left edges in reading order: a Hebrew or Arabic paragraph, a centred or right-aligned
    table cell mapped to no character at all, and in a line mixing English and Hebrew
    every Hebrew letter mapped to the first of its run."""
    for markdown in ("שלום עולם, זה משפט בעברית.", "مرحبا بالعالم هذه جملة",
                     "Hebrew: שלום עולם, and back to English.",
                     "| a | b |\n|:---:|---:|\n| x | right aligned |\n| centered cell text | y |"):
        found = points_mapped(qtbot, markdown)
        assert len(found) >= 9
        wrong = [(character, offset, got) for character, offset, got in found if got != offset]
        assert wrong == [], (markdown, wrong)


def test_words_after_an_emoji_map_to_themselves(qtbot, window, store):
    """Qt counts positions in UTF-16 units, Python in code points: past each emoji every
    offset of a reply was one character further on, so the pointer over a word was
    stored as over the next (and a selection's offsets named other text)."""
    from PySide6.QtCore import QPoint
    from PySide6.QtGui import QTextCursor
    from feedback_store import Message
    from app.ui.capture import selected_offsets
    chat = store.conversations.create(Conversation(title="Emoji"))
    question = store.conversations.add_message(Message(chat.id, "user", "Cheer me up."))
    text = "🌊🌊🌊 Lighthouses 🚢 guide 🚢🚢 ships home 😀 tonight."
    reply = store.conversations.add_message(Message(chat.id, "assistant", text, parent_id=question.id))
    window.open_conversation(chat.id)
    qtbot.waitUntil(lambda: reply.id in window.probe.message_ids(), timeout=10_000)
    settled(qtbot, window)
    window.capture.publish()
    browser = window.probe.browser(reply.id)
    plain = browser.document().toPlainText()
    for word in ("Lighthouses", "guide", "ships", "home", "tonight"):
        at = plain.index(word)
        qt_position = len(plain[:at].encode("utf-16-le")) // 2
        cursor = QTextCursor(browser.document())
        cursor.setPosition(qt_position)
        rect = browser.cursorRect(cursor)
        point = browser.viewport().mapToGlobal(QPoint(rect.left() + 3, rect.center().y()))
        hit = window.probe.hit(point.x(), point.y())
        assert hit is not None and hit.word == word, (word, hit)
        cursor.setPosition(qt_position + len(word), QTextCursor.MoveMode.KeepAnchor)
        browser.setTextCursor(cursor)
        start, end = selected_offsets(browser)
        assert plain[start:end] == word


def test_an_empty_last_line_on_screen_is_counted_as_on_screen(store):
    """The visible text ends where the last visible line ends; a blank line (in a code
    block, between paragraphs) ends where it starts, and was read back as the line above."""
    import time

    from app.session import AppSession, ReplyOnScreen
    from feedback_store import ViewportEvent
    store.consent.set("pointer", True)
    session = AppSession(store)
    text = "ab\n\ncd"
    boxes = [{"line": 0, "start": 0, "end": 2, "x": 0, "y": 0, "w": 20, "h": 10},
             {"line": 1, "start": 3, "end": 3, "x": 0, "y": 10, "w": 0, "h": 10},
             {"line": 2, "start": 4, "end": 6, "x": 0, "y": 20, "w": 20, "h": 10}]
    shown_id = session.reply_shown(ReplyOnScreen("m", "c", (0, 0, 100, 30), 1.0, text, boxes))
    try:
        # (lines 0-0 as its own layout numbered them; the offsets say what was on screen)
        session.record([ViewportEvent(session.id, shown_id, "c", time.monotonic_ns(), time.time_ns(),
                                      "scroll", 0, 0, 0.0, 0.0, True, 0, 3)])
        store.flush()
        _, activity = store.traces.read(shown_id)
        assert (activity.first_line[0], activity.last_line[0]) == (0, 1)
    finally:
        session.close()


def test_a_reading_trace_holds_the_eyes_raw_samples_not_the_fixation_summaries(store):
    """Fixations are stored beside the raw gaze samples, one row at each fixation's end;
    read as samples they landed among the next line's and made visits and regressions."""
    import time

    from align.features import reading_features
    from app.session import AppSession, ReplyOnScreen
    from feedback_store import GazeSample
    from feedback_store.trace import GAZE
    store.consent.set("gaze", True)
    session = AppSession(store)
    text = "first line of text\nsecond line of text"
    boxes = [{"line": 0, "start": 0, "end": 18, "x": 0, "y": 0, "w": 180, "h": 20},
             {"line": 1, "start": 19, "end": 38, "x": 0, "y": 20, "w": 190, "h": 20}]
    try:
        shown_id = session.reply_shown(ReplyOnScreen("m", "c", (0, 0, 200, 40), 1.0, text, boxes))
        start = time.monotonic_ns()

        def gaze(i, kind, offset, duration=None):
            return GazeSample(session.id, shown_id, "c", start + i * 33_000_000, time.time_ns(), kind,
                              float(offset * 10), 10.0, offset, "webcam", confidence=0.9,
                              duration_ms=duration)
        raw = [gaze(i, "raw", i) for i in range(12)] + [gaze(i, "raw", 7 + i) for i in range(12, 24)]
        assert store.samples.submit(raw)
        store.flush()
        before, _ = store.traces.read(shown_id)
        # The first line's fixation, reported at its end: among the second line's samples.
        assert store.samples.submit([gaze(14, "fixation", 5, duration=400.0)])
        store.flush()
        after, _ = store.traces.read(shown_id)
        assert np.array_equal(after.offset, before.offset) and len(after.offset) == 24
        assert reading_features(after, GAZE) == reading_features(before, GAZE)
    finally:
        session.close()
