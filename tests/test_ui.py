"""The real window (offscreen Qt) on the real model and store, driven like a user would."""
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QAbstractButton, QApplication

from app.ui.main_window import MainWindow
from conftest import quick_settings

REPLY_TIMEOUT_MS = 120_000


def send_by_keyboard(qtbot, window, text):
    window.input.setFocus()
    qtbot.keyClicks(window.input, text)
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as blocker:
        qtbot.keyClick(window.input, Qt.Key.Key_Return)
    return blocker.args[0]


def widget_for(window, message_id):
    return next(w for w in window.chat_view.widgets if w.message.id == message_id)


def test_streamed_turn_from_input_box_to_database(qtbot, window, store):
    tokens = []
    original = window.chat_view.append_token

    def spy(piece):
        tokens.append(piece)
        original(piece)
    window.chat_view.append_token = spy
    reply = send_by_keyboard(qtbot, window, "What is the sun?")
    assert reply is not None and reply.content
    assert len(tokens) == reply.tokens > 1 and "".join(tokens) == reply.content
    stored = store.conversations.messages(window.tree.id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[0].content == "What is the sun?"
    assert window.input.toPlainText() == ""
    shown = [w.message.id for w in window.chat_view.widgets]
    assert shown == [stored[0].id, stored[1].id]
    assert "tok/s" in window.speed_label.text()
    assert window.conversation_list.count() == 1


def test_shift_enter_is_a_newline_and_empty_enter_sends_nothing(qtbot, window, store):
    window.input.setFocus()
    qtbot.keyClick(window.input, Qt.Key.Key_Return)
    assert "empty" in window.last_error
    qtbot.keyClicks(window.input, "line one")
    qtbot.keyClick(window.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(window.input, "line two")
    assert window.input.toPlainText() == "line one\nline two"
    assert store.counts()["messages"] == 0


def test_escape_stops_mid_stream(qtbot, window, store):
    store.consent.set("pointer", True)       # so the stop is logged for the reward model
    window.capture.sync()
    window.tree.conversation.settings = quick_settings(max_tokens=400).to_dict()
    window.input.setPlainText("Write a very long story about a ship.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as blocker:
        window.send()   # commits on the generation thread; the window does not wait
        qtbot.waitUntil(lambda: bool(window.chat_view.widgets), timeout=REPLY_TIMEOUT_MS)
        # Shown as sent only once committed: the row is there when the message shows.
        assert window.chat_view.widgets[0].message.role == "user"
        assert [m.content for m in store.conversations.messages(window.tree.id)] == ["Write a very long story about a ship."]
        qtbot.waitUntil(lambda: len(window.chat_view._stream_text) > 10, timeout=REPLY_TIMEOUT_MS)
        qtbot.keyClick(window, Qt.Key.Key_Escape)
    reply = blocker.args[0]
    assert reply.finish_reason == "cancelled"
    assert reply.tokens < 400
    assert store.conversations.messages(window.tree.id)[-1].finish_reason == "cancelled"
    assert "stopped" in widget_for(window, reply.id).meta.text()
    # The stop is logged on the reply it cut short: "stopped", an input of the reward model.
    qtbot.waitUntil(lambda: window.session.shown_id(reply.id) is not None, timeout=30_000)
    store.flush()
    assert store._rows("SELECT message_id FROM reply_actions WHERE kind = 'stop'") == \
        [{"message_id": reply.id}]
    assert store.traces.activity(window.session.shown_id(reply.id)).stopped


def long_reply_streaming(qtbot, window, store):
    """A long reply being written, with the pointer consent on (actions are logged)."""
    store.consent.set("pointer", True)
    window.capture.sync()
    window.tree.conversation.settings = quick_settings(max_tokens=400).to_dict()
    window.input.setPlainText("Write a very long story about a ship.")
    window.send()
    qtbot.waitUntil(lambda: len(window.chat_view._stream_text) > 10, timeout=REPLY_TIMEOUT_MS)


def test_the_streamed_view_becomes_the_reply_row_with_the_whole_reply(qtbot, window):
    """The end of a reply built its row anew: a long reply was laid out twice (65 ms at
    40 000 characters). The pieces that came after the last render are shown too."""
    from app.ui.chat_view import MessageWidget
    window.tree.conversation.settings = quick_settings(max_tokens=120).to_dict()
    window.input.setPlainText("Describe a river in a few sentences.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as finished:
        window.send()
        qtbot.waitUntil(lambda: window.chat_view.streaming is not None, timeout=REPLY_TIMEOUT_MS)
        streamed = window.chat_view.streaming.browser
        window.chat_view._render_timer.stop()   # as if the end came before the next render
    reply = finished.args[0]
    row = widget_for(window, reply.id)
    assert row.browser is streamed
    qtbot.waitUntil(row.browser.isVisible, timeout=30_000)      # (rows show once added)
    fresh = MessageWidget(reply, [reply])
    assert row.browser.toPlainText() == fresh.browser.toPlainText()
    assert row.message.id == reply.id and row.regenerate_button.isEnabled()
    fresh.deleteLater()


def test_no_button_of_the_conversation_looks_usable_while_a_reply_is_written(qtbot, window,
                                                                             store):
    """The rows are rebuilt when the message is committed, after the buttons were disabled:
    Edit and ‹ › looked usable while the reply streamed and did nothing when clicked."""
    def usable():
        return [b.text() for w in window.chat_view.widgets
                for b in w.findChildren(QAbstractButton) if b.isEnabled() and b.text() != "Copy"]

    def stop():
        with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):
            window.stop()            # (its thread may end a moment before the window hears)
    long_reply_streaming(qtbot, window, store)
    assert usable() == []
    stop()
    assert "Edit" in usable()
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):
        window.regenerate(window.tree.active_path()[-1].id)     # two replies: ‹ › to switch
    assert "‹" in usable()
    long_reply_streaming(qtbot, window, store)
    assert usable() == []
    stop()


def test_a_reply_whose_end_the_window_has_not_heard_yet_is_still_being_written(qtbot, window,
                                                                             store):
    """Its thread ends a moment before the window handles its end. A send in between
    started a second reply, whose row the first one's end then dropped."""
    window.input.setPlainText("Say yes.")
    window.send()
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):
        window.generation.wait()                 # ended; the window has not heard yet
        assert window.is_generating()
        window.input.setPlainText("And no?")
        window.send()                            # refused: the text stays
        assert window.input.toPlainText() == "And no?"
    assert [m.content for m in window.tree.active_path() if m.role == "user"] == ["Say yes."]


def test_a_store_job_whose_end_the_window_has_not_heard_yet_still_holds_the_store(
        qtbot, window, store, tmp_path):
    """A second delete or export started in between had the first one's end wait for it
    on the UI thread."""
    send_by_keyboard(qtbot, window, "Say yes.")
    with qtbot.waitSignal(window.store_job_finished, timeout=60_000) as finished:
        window.export_data(str(tmp_path))
        window.store_job.wait()                  # done; the window has not heard yet
        assert window.is_store_busy()
        shown = window.tree.id
        window.new_chat()                        # refused, and said so
        assert window.tree.id == shown
    assert finished.args == [None] and not window.is_store_busy()


def test_a_store_job_that_raises_what_is_not_an_exception_still_frees_the_window(qtbot,
                                                                                 window):
    """The window is busy until a job says done or failed; a job ended by SystemExit said
    neither, and the window stayed busy until restarted."""
    def ends_abruptly():
        raise SystemExit(3)
    with qtbot.waitSignal(window.store_job_finished, timeout=30_000) as finished:
        window._run_store_job("Working…", ends_abruptly, done_text="done")
    assert finished.args == ["3"] and not window.is_store_busy()


def test_closing_the_window_mid_reply_is_not_a_stop(qtbot, window, store):
    """Closing the window cancels the reply being written; the user did not stop it, so
    the reward model must not read it as stopped."""
    long_reply_streaming(qtbot, window, store)
    window.close()
    store.flush()
    [reply] = [m for m in store.conversations.messages(window.tree.id) if m.role == "assistant"]
    assert reply.finish_reason == "cancelled"
    assert store._rows("SELECT message_id FROM reply_actions WHERE kind = 'stop'") == []


def test_regenerate_keeps_sibling_and_edit_branches(qtbot, window, store):
    first = send_by_keyboard(qtbot, window, "Name a fruit.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as blocker:
        qtbot.mouseClick(widget_for(window, first.id).regenerate_button, Qt.MouseButton.LeftButton)
    second = blocker.args[0]
    assert second.parent_id == first.parent_id and second.id != first.id
    assert widget_for(window, second.id).sibling_label.text() == "2/2"
    assert {first.id, second.id} <= {m.id for m in store.conversations.messages(window.tree.id)}

    user = window.tree.messages[first.parent_id]
    qtbot.mouseClick(widget_for(window, user.id).edit_button, Qt.MouseButton.LeftButton)
    assert window.input.toPlainText() == "Name a fruit."
    window.input.selectAll()
    qtbot.keyClicks(window.input, "Name a vegetable.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):
        qtbot.keyClick(window.input, Qt.Key.Key_Return)
    path = window.tree.active_path()
    assert path[0].content == "Name a vegetable." and path[0].parent_id is None
    # Esc leaves editing mode without sending anything.
    qtbot.mouseClick(widget_for(window, path[0].id).edit_button, Qt.MouseButton.LeftButton)
    window.stop()
    assert window.editing_message_id is None and window.input.toPlainText() == ""
    assert widget_for(window, path[0].id).sibling_label.text() == "2/2"
    assert len(store.conversations.messages(window.tree.id)) == 5  # 2 users, 3 replies: nothing deleted


def test_a_turn_keeps_the_rows_already_on_screen_and_their_buttons_answer_once(qtbot, window,
                                                                              store):
    """A turn appends its rows. Rebuilding and re-measuring every row twice a turn held the
    window for 0.2 s in a chat of a hundred messages (bench/chat_throughput.py)."""
    store.consent.set("pointer", True)          # so a copy is logged, and can be counted
    window.capture.sync()
    first = send_by_keyboard(qtbot, window, "Name a fruit.")
    with qtbot.waitSignal(window.capture.snapshot_published, timeout=30_000):
        pass                                     # measured once the layout has settled
    rows = list(window.chat_view.widgets)
    kept_key, kept = window.probe._measured[first.id]
    second = send_by_keyboard(qtbot, window, "Name a colour.")
    with qtbot.waitSignal(window.capture.snapshot_published, timeout=30_000):
        pass
    assert [id(w) for w in window.chat_view.widgets[:2]] == [id(w) for w in rows]
    key, geometry = window.probe._measured[first.id]
    assert geometry is kept or key[1] != kept_key[1]   # measured again only if its width changed
    assert key[0] == kept_key[0]                        # its document was not set again
    assert [w.message.id for w in window.chat_view.widgets][2:] == [second.parent_id, second.id]
    # A kept row's buttons are connected once: one click, one copy logged.
    qtbot.mouseClick(rows[1].copy_button, Qt.MouseButton.LeftButton)
    store.flush()
    assert store._rows("SELECT message_id FROM reply_actions WHERE kind = 'copy'") == \
        [{"message_id": first.id}]
    # What changed is rebuilt: the regenerated reply's row says 2/2, the rows above stay.
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as blocker:
        window.regenerate(second.id)
    third = blocker.args[0]
    assert [id(w) for w in window.chat_view.widgets[:2]] == [id(w) for w in rows]
    assert widget_for(window, third.id).sibling_label.text() == "2/2"
    window.switch_branch(second.id)
    assert widget_for(window, second.id).sibling_label.text() == "1/2"
    assert [w.message.id for w in window.chat_view.widgets][-1] == second.id


def test_a_long_conversation_opens_on_its_last_rows_and_builds_older_ones_on_the_way_up(
        qtbot, window, store):
    """Each row is a rich-text view: opening a chat of 300 messages built every one and
    held the window for ≈ 0.2 s (bench/chat_throughput.py --history 300)."""
    from app.ui.chat_view import ROWS_AT_OPEN, ROWS_PER_PAGE
    from feedback_store import Conversation, Message
    store.consent.set("pointer", True)          # so a selection is logged, and can be seen
    window.capture.sync()
    conversation = store.conversations.create(Conversation(title="long"))
    ids, parent = [], None
    for turn in range(40):
        question = store.conversations.add_message(Message(
            conversation.id, "user", f"Question {turn}?", parent_id=parent))
        parent = store.conversations.add_message(Message(
            conversation.id, "assistant", f"Answer {turn}, in a few words.",
            parent_id=question.id)).id
        ids += [question.id, parent]
    window.open_conversation(conversation.id)
    view, bar = window.chat_view, window.chat_view.verticalScrollBar()
    shown = lambda: [w.message.id for w in view.widgets]
    assert shown() == ids[-ROWS_AT_OPEN:]
    assert view.earlier.isVisible() and f"({80 - ROWS_AT_OPEN} in all)" in view.earlier.text()
    with qtbot.waitSignal(window.capture.snapshot_published, timeout=30_000):
        pass                                     # laid out, at the bottom
    assert bar.maximum() > 0 and bar.value() == bar.maximum()
    # A reply is being written below (as when a question was just sent)...
    view.begin_stream(Message(conversation_id=conversation.id, role="assistant", content=""))
    with qtbot.waitSignal(window.capture.snapshot_published, timeout=30_000):
        pass
    # ... and the user scrolls to the top: the next rows are built above, and the row
    # that was at the top stays where it was on screen.
    top_row = view.widgets[0]
    bar.setValue(bar.minimum())
    was_at = top_row.mapTo(view.viewport(), QPoint(0, 0)).y()
    qtbot.waitUntil(lambda: len(view.widgets) == ROWS_AT_OPEN + ROWS_PER_PAGE + 1,
                    timeout=30_000)
    assert shown()[:-1] == ids[-(ROWS_AT_OPEN + ROWS_PER_PAGE):]
    with qtbot.waitSignal(window.capture.snapshot_published, timeout=30_000):
        pass
    assert top_row.mapTo(view.viewport(), QPoint(0, 0)).y() == was_at
    assert bar.value() > bar.minimum()
    # It stays there while a reply below grows (the distance to the bottom was kept, and
    # the view slid down with every render).
    for _ in range(3):
        height = view.container.height()
        view.append_token("A line of the reply being written below. " * 20 + "\n\n")
        view._render_stream()
        qtbot.waitUntil(lambda: view.container.height() > height, timeout=30_000)
        assert top_row.mapTo(view.viewport(), QPoint(0, 0)).y() == was_at
    view.end_stream()
    # Rows built on the way up are the window's like the others: mapped, and watched.
    older = view.widgets[1]
    assert older.message.role == "assistant" and older.message.id in window.probe.message_ids()
    older.browser.selectAll()
    store.flush()
    assert {"message_id": older.message.id} in store._rows(
        "SELECT message_id FROM reply_actions WHERE kind = 'select'")
    # The rest by the button; then a turn keeps every row built.
    qtbot.mouseClick(view.earlier, Qt.MouseButton.LeftButton)
    assert shown() == ids and not view.earlier.isVisible()
    rows = list(view.widgets)
    reply = send_by_keyboard(qtbot, window, "One more?")
    assert [id(w) for w in view.widgets[:80]] == [id(w) for w in rows]
    assert shown()[-1] == reply.id
    # Opened again, it opens on its last rows again.
    window.new_chat()
    window.open_conversation(conversation.id)
    assert shown() == (ids + [reply.parent_id, reply.id])[-ROWS_AT_OPEN:]


def test_a_reply_not_begun_yet_does_not_say_it_was_stopped(qtbot, window, store):
    """While the prompt is read (seconds on a big model) the new row said "(stopped
    before any text)"."""
    from feedback_store import Message
    view = window.chat_view
    row = view.begin_stream(Message(conversation_id=window.tree.id, role="assistant",
                                    content=""))
    assert row.browser.toPlainText() == "…"
    view.append_token("The last piece")   # a reply whose last piece was not rendered...
    view.end_stream()
    row = view.begin_stream(Message(conversation_id=window.tree.id, role="assistant",
                                    content=""))
    view._render_stream()                 # ... blanked the next one at its first tick
    assert row.browser.toPlainText() == "…"
    view.end_stream()


def test_thumbs_are_stored(qtbot, window, store):
    reply = send_by_keyboard(qtbot, window, "Say yes.")
    qtbot.mouseClick(widget_for(window, reply.id).thumb_up, Qt.MouseButton.LeftButton)
    assert store.conversations.thumbs(window.tree.id) == {reply.id: 1}
    qtbot.mouseClick(widget_for(window, reply.id).thumb_down, Qt.MouseButton.LeftButton)
    assert store.conversations.thumbs(window.tree.id) == {reply.id: -1}
    assert widget_for(window, reply.id).thumb_up.isChecked() is False


def test_restart_restores_the_conversation(qtbot, store, engine):
    store.settings.set("generation", quick_settings().to_dict())
    first = MainWindow(store, engine)
    qtbot.addWidget(first)
    first.show()
    reply = send_by_keyboard(qtbot, first, "Remember me.")
    conversation_id = first.tree.id
    first.close()
    second = MainWindow(store, engine)
    qtbot.addWidget(second)
    second.show()
    assert second.tree.id == conversation_id
    assert [w.message.id for w in second.chat_view.widgets][-1] == reply.id
    assert second.conversation_list.item(0).text() == "Remember me."
    second.close()


def test_layout_probe_maps_screen_points_to_words(qtbot, window, store):
    reply = send_by_keyboard(qtbot, window, "Describe a forest in two sentences.")
    qtbot.wait(50)
    browser = window.probe.browser(reply.id)
    text = browser.document().toPlainText()
    boxes = window.probe.line_boxes(reply.id)
    assert boxes[0]["start"] == 0 and boxes[-1]["end"] <= len(text)
    # Walk along the first line: every hit names the character under the point.
    first = boxes[0]
    for fraction in (0.05, 0.3, 0.6, 0.9):
        x = int(first["x"] + first["w"] * fraction)
        y = int(first["y"] + first["h"] / 2)
        hit = window.probe.hit(x, y)
        assert hit.message_id == reply.id and hit.line == 0
        assert first["start"] <= hit.offset < first["end"]
        from feedback_store.words import WORD_PATTERN
        match = next((m for m in WORD_PATTERN.finditer(text) if m.start() <= hit.offset < m.end()), None)
        assert hit.word == (match.group() if match else None), (hit, match)
    # Right of the line's end: over the reply, not over text.
    beyond = window.probe.hit(int(first["x"] + first["w"] + 30), int(first["y"] + first["h"] / 2))
    assert beyond is not None and beyond.offset is None
    # Far outside any reply.
    corner = window.mapToGlobal(QPoint(2, 2))
    assert window.probe.hit(corner.x(), corner.y()) is None
    # What was on screen is stored, with the same text offsets refer to.
    store.flush()
    rows = store._rows("SELECT rendered_text, layout FROM shown_replies WHERE message_id = ?", (reply.id,))
    assert rows and rows[0]["rendered_text"] == text


def test_bad_model_keeps_the_previous_one(qtbot, window, tmp_path):
    before = window.engine.model_info["path"]
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a model at all")
    assert window.switch_model(str(bad)) is False
    assert "not a GGUF" in window.last_error
    assert window.engine.model_info["path"] == before
    assert window.model_picker.currentData() == before
    reply = send_by_keyboard(qtbot, window, "Still there?")
    assert reply.content


def test_a_downloaded_model_that_cannot_be_used_is_offered_for_deletion(qtbot, window, tmp_path,
                                                                         monkeypatch):
    """It stayed in the models folder, out of the picker and unseen, and a new download of
    it was refused. A model chosen from elsewhere is the user's file: never offered."""
    from PySide6.QtWidgets import QMessageBox
    from feedback_store import glance_home
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *args: (
        asked.append(args[2]), QMessageBox.StandardButton.Yes)[1])
    elsewhere = tmp_path / "broken.gguf"
    elsewhere.write_bytes(b"not a model at all")
    assert window.switch_model(str(elsewhere)) is False
    assert asked == [] and elsewhere.exists()
    downloaded = glance_home() / "models" / "broken.gguf"
    downloaded.parent.mkdir(parents=True, exist_ok=True)
    downloaded.write_bytes(b"not a model at all")
    assert window.switch_model(str(downloaded)) is False
    assert "not a GGUF" in window.last_error
    assert len(asked) == 1 and "broken.gguf" in asked[0] and not downloaded.exists()
    # A model that loads is never offered, even when remembering it in the store fails.
    from app.models import default_model_path
    from feedback_store import StoreError
    import shutil
    usable = glance_home() / "models" / "usable.gguf"
    shutil.copyfile(default_model_path(), usable)

    def store_busy(info):
        raise StoreError("The database is busy.")
    monkeypatch.setattr(window.session, "remember_model", store_busy)
    with qtbot.waitSignal(window.model_loaded, timeout=120_000) as blocker:
        assert window.switch_model(str(usable)) is True
    assert blocker.args == ["The database is busy."] and len(asked) == 1 and usable.exists()
    monkeypatch.undo()
    with qtbot.waitSignal(window.model_loaded, timeout=120_000):    # the engine is shared
        window.switch_model(str(default_model_path()))


def test_another_model_loads_off_the_ui_thread_and_answers_from_then_on(qtbot, window, tmp_path):
    """llama.cpp loaded the chosen model on the UI thread: the window froze for seconds
    with a big model. Choosing the loaded model again reloaded it."""
    import shutil
    from app.models import default_model_path
    reply = send_by_keyboard(qtbot, window, "Say yes.")
    loaded = window.engine.llm
    assert window.switch_model(str(default_model_path())) is True
    assert window.engine.llm is loaded and not window.is_loading_model()       # no reload
    copy = tmp_path / "SmolLM2-copy.gguf"
    shutil.copyfile(default_model_path(), copy)
    with qtbot.waitSignal(window.model_loaded, timeout=120_000) as blocker:
        assert window.switch_model(str(copy)) is True
        assert window.is_loading_model() and not window.model_picker.isEnabled()
        window.input.setPlainText("Hello?")
        window.send()                                      # refused meanwhile; text kept
        assert window.input.toPlainText() == "Hello?" and not window.is_generating()
        window.regenerate(reply.id)                        # and so is any other reply
        window.compare(reply.id)
        assert not window.is_generating()
        window.model_job.wait()      # loaded, and the window has not heard yet: still busy
        assert window.is_loading_model()
        window.send()
        assert window.input.toPlainText() == "Hello?" and not window.is_generating()
    assert blocker.args == [None]
    assert window.engine.model_info["path"] == str(copy)
    assert window.model_picker.isEnabled() and window.model_picker.currentData() == str(copy)
    assert window.model_label.text().startswith("Model: SmolLM2-copy.gguf · context up to ")
    window.input.clear()
    assert send_by_keyboard(qtbot, window, "Still there?").content
    with qtbot.waitSignal(window.model_loaded, timeout=120_000):    # the engine is shared
        window.switch_model(str(default_model_path()))


def test_prompt_longer_than_context_keeps_the_text(qtbot, window, store):
    long_text = "word " * 9000            # more than SmolLM2's whole 8 192-token context
    window.input.setPlainText(long_text)
    with qtbot.waitSignal(window.reply_finished, timeout=60_000):
        window.send()   # checked and refused on the generation thread
    assert "context" in window.last_error
    assert window.input.toPlainText() == long_text
    assert store.counts()["messages"] == 0


def test_new_chat_rename_search_delete(qtbot, window, store):
    send_by_keyboard(qtbot, window, "About apples")
    apples = window.tree.id
    qtbot.keyClick(window, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert window.tree.id != apples and window.chat_view.widgets == []
    send_by_keyboard(qtbot, window, "About pears")
    window.rename_conversation(apples, "Fruit talk")
    assert store.conversations.get(apples).title == "Fruit talk"
    window.search.setText("apples")
    qtbot.waitUntil(lambda: [window.conversation_list.item(i).text()
                             for i in range(window.conversation_list.count())] == ["Fruit talk"],
                    timeout=30_000)
    window.search.setText("")
    with qtbot.waitSignal(window.store_job_finished, timeout=60_000) as deleted:
        window.delete_conversation(apples, confirm=False)   # runs off the UI thread
    assert deleted.args == [None]
    assert store.conversations.get(apples) is None
    assert store.conversations.list("apples") == []


def test_a_long_reply_with_code_is_laid_out_once_not_once_per_code_line(qtbot):
    """Shading each code line re-laid out the whole reply: 1.2 s to show 38 000
    characters, 26 s at 190 000 (quadratic)."""
    from PySide6.QtGui import QTextFormat
    from app.ui.chat_view import CODE_BACKGROUND, ReplyBrowser
    browser = ReplyBrowser()
    qtbot.addWidget(browser)
    browser.resize(600, 400)
    browser.show()
    layouts = []
    browser.document().documentLayout().documentSizeChanged.connect(layouts.append)
    browser.set_markdown("Some code:\n\n```python\nfor i in range(10):\n    print(i)\n```\n\n" * 60)
    shaded = 0
    block = browser.document().begin()
    while block.isValid():
        if block.blockFormat().hasProperty(QTextFormat.Property.BlockCodeFence):
            assert block.blockFormat().background().color() == CODE_BACKGROUND
            shaded += 1
        block = block.next()
    assert shaded == 120
    assert len(layouts) <= 10, len(layouts)     # (242 when laid out per code line)


def test_a_reply_is_laid_out_again_only_when_its_width_changes(qtbot):
    """Each size change of the document set the same width again, which lays the whole
    document out again: a long reply's render cost twice what it needs (119 ms against
    65 ms at 40 000 characters)."""
    from app.ui.chat_view import ReplyBrowser
    browser = ReplyBrowser()
    qtbot.addWidget(browser)
    browser.resize(600, 400)
    browser.show()
    qtbot.waitExposed(browser)
    layouts = []
    browser.document().documentLayout().update.connect(lambda *rect: layouts.append(rect))
    browser.set_markdown("A paragraph of text that wraps. " * 400)
    QApplication.processEvents()
    assert len(layouts) <= 3, len(layouts)        # (6 when the width was set at each change)
    height = browser.height()
    browser.resize(300, browser.height())         # narrower: wrapped again, taller
    QApplication.processEvents()
    assert browser.document().textWidth() == browser.viewport().width()
    assert browser.height() > 1.5 * height


def test_a_long_streamed_reply_is_rendered_less_often_as_rendering_it_takes_longer(qtbot,
                                                                                   window):
    """Each render of a streamed reply lays out all of it. Every 40 ms, a long reply
    (80 ms a render at 38 000 characters) left the window no time between renders."""
    from feedback_store import Message
    from app.ui.chat_view import STREAM_RENDER_INTERVAL_MS
    view = window.chat_view
    row = view.begin_stream(Message(conversation_id=window.tree.id, role="assistant",
                                    content=""))
    # (nor is it measured for capture at each publish: nothing records it until committed)
    assert row.message.id not in window.probe.message_ids()
    timer = view._render_timer
    assert timer.interval() == STREAM_RENDER_INTERVAL_MS
    view.append_token("A short start.")
    view._render_stream()
    assert timer.interval() == STREAM_RENDER_INTERVAL_MS
    view.append_token("\n\nA paragraph about **bicycles** and gears, once more. " * 3000)
    view._render_stream()
    assert timer.interval() > STREAM_RENDER_INTERVAL_MS
    view.end_stream()
    view.begin_stream(Message(conversation_id=window.tree.id, role="assistant", content=""))
    assert timer.interval() == STREAM_RENDER_INTERVAL_MS        # each reply starts afresh
    view.end_stream()


def test_markdown_code_blocks_are_rendered_as_code(qtbot, window):
    from PySide6.QtGui import QTextFormat
    from app.ui.chat_view import CODE_BACKGROUND, ReplyBrowser
    browser = ReplyBrowser()
    qtbot.addWidget(browser)
    browser.set_markdown("Here:\n\n```python\ndef f():\n    return 1\n```\n\nDone **now**.")
    blocks = []
    block = browser.document().begin()
    while block.isValid():
        blocks.append(block)
        block = block.next()
    code = [b for b in blocks if b.blockFormat().hasProperty(QTextFormat.Property.BlockCodeFence)]
    assert [b.text() for b in code] == ["def f():", "    return 1"]
    assert all(b.blockFormat().background().color() == CODE_BACKGROUND for b in code)
    from PySide6.QtGui import QFontInfo

    def monospaced(block):
        return QFontInfo(block.begin().fragment().charFormat().font()).fixedPitch()
    assert all(monospaced(b) for b in code)
    assert not monospaced(blocks[0])
    assert browser.document().toPlainText().endswith("Done now.")


def test_a_reply_still_on_screen_is_recorded_once(qtbot, window, store):
    first = send_by_keyboard(qtbot, window, "Say one.")
    send_by_keyboard(qtbot, window, "Say two.")
    qtbot.wait(50)
    store.flush()
    rows = store._rows("SELECT hidden_mono_ns FROM shown_replies WHERE message_id = ?", (first.id,))
    assert len(rows) == 1 and rows[0]["hidden_mono_ns"] is None
    window.new_chat()  # it leaves the screen now
    store.flush()
    rows = store._rows("SELECT hidden_mono_ns FROM shown_replies WHERE message_id = ?", (first.id,))
    assert len(rows) == 1 and rows[0]["hidden_mono_ns"] is not None


def test_compare_side_by_side_pick_with_the_keyboard_and_read_both_traces(qtbot, window, store):
    """Compare writes a second reply beside the first; Alt+2 picks the right one, which
    continues the conversation; the pick is explicit pairwise feedback and the reading of
    both columns comes back as one PairTrace with the pick's time."""
    store.consent.set("pointer", True)
    window.capture.sync()
    original = send_by_keyboard(qtbot, window, "Name a colour.")
    qtbot.waitUntil(lambda: window.session.shown_id(original.id) is not None, timeout=30_000)
    first_showing = window.session.shown_id(original.id)
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as blocker:
        widget_for(window, original.id).compare_button.click()
    second = blocker.args[0]
    # The original stays on screen as the left column: the same showing goes on (it was
    # ended when the second reply came, and its score missed all that was read in the pair).
    assert window.session.shown_id(original.id) == first_showing
    assert window.comparing == (original.id, second.id)
    pair = window.chat_view.pair
    assert [side.message.id for side in pair.sides] == [original.id, second.id]
    # Once the two columns are laid out, the capture publishes their geometry.
    with qtbot.waitSignal(window.capture.snapshot_published, timeout=30_000):
        pass
    shown = {m: window.session.shown_id(m) for m in (original.id, second.id)}
    assert all(shown.values())
    in_the_pair = [(box["start"], round(box["x"]), round(box["w"]))
                   for box in window.probe.line_boxes(second.id)]
    for side in pair.sides:   # the pointer reads both columns, through the real layout
        box = window.probe.line_boxes(side.message.id)[0]
        for fraction in (0.2, 0.5, 0.8):
            window.capture.recorder.event("click", box["x"] + box["w"] * fraction,
                                          box["y"] + box["h"] / 2, "test", button="left")
    window.capture.recorder.flush()
    qtbot.keyClick(window, Qt.Key.Key_2, Qt.KeyboardModifier.AltModifier)
    assert window.comparing is None and window.chat_view.pair is None
    assert window.tree.active_path()[-1].id == second.id
    # The kept reply now spans the chat: its stored lines are re-wrapped with it (they
    # kept the column's width until the next move, and gaze lines are decoded from them).
    import json

    def boxes(stored):
        return [(box["start"], round(box["x"]), round(box["w"])) for box in stored]

    def stored():
        store.flush()
        [row] = store._rows("SELECT layout FROM shown_replies WHERE id = ?", (shown[second.id],))
        return boxes(json.loads(row["layout"]))
    qtbot.waitUntil(lambda: stored() == boxes(window.probe.line_boxes(second.id)), timeout=30_000)
    assert stored() != in_the_pair                       # (it moved from the right column)
    store.flush()
    picks = store.conversations.picks(window.tree.id)
    assert [(p["left_id"], p["right_id"], p["value"]) for p in picks] == [(original.id, second.id, -1)]
    trace = store.traces.for_pick(picks[0]["id"])
    assert (trace.a.shown_reply_id, trace.b.shown_reply_id) == (shown[original.id], shown[second.id])
    assert len(trace.a) == 3 and len(trace.b) == 3
    assert (trace.a.offset >= 0).all() and (trace.b.offset >= 0).all()
    assert (trace.a.line == 0).all() and (trace.b.line == 0).all()
    assert trace.pick_t_ms > max(trace.a.t_ms.max(), trace.b.t_ms.max())


def test_objects_alive_when_the_window_is_up_are_kept_out_of_full_collections(qtbot, window):
    """app/memory.py: a full collection over ~180 k objects stalled the UI thread 13-36 ms."""
    import gc

    def scanned(obj) -> bool:                  # frozen objects are in no generation
        return any(o is obj for o in gc.get_objects())
    qtbot.waitUntil(lambda: not scanned(window), timeout=30_000)
    assert scanned(type("Fresh", (), {})())    # what comes after the window is still collected


def test_a_reply_fits_the_view_of_a_900_pixel_window(qtbot, window):
    """The chat never scrolls sideways, so a row wider than the view is cut off at the
    right. The speed line under a reply ("24 tokens · 116 tok/s · first token …") once
    held every message at its full length: on a 900-pixel window the reply's lines ran
    ≈ 90 px past the window's edge, unseen, and pointer samples there mapped to nothing
    (found by the real-pointer test on Xvfb)."""
    window.resize(900, 560)
    reply = send_by_keyboard(qtbot, window, "Describe a meadow at dawn in detail.")
    widget = widget_for(window, reply.id)
    assert widget.meta.text()  # the speed line is there
    qtbot.wait(50)
    viewport = window.chat_view.viewport()
    for shown in (widget, widget.browser, widget.meta):
        right = shown.mapTo(viewport, QPoint(shown.width(), 0)).x()
        assert right <= viewport.width(), (shown, right, viewport.width())


def test_the_view_follows_a_reply_to_its_last_line_and_buttons(qtbot, window):
    """The view scrolled to the old bottom before the layout had grown by the text just
    set, so a finished reply's last line or its buttons stayed under the edge (seen on
    Xvfb: the Copy/Regenerate row of the newest reply hidden)."""
    window.resize(900, 420)
    for prompt in ("Name a colour.", "Name a tree.", "Describe a meadow at dawn."):
        reply = send_by_keyboard(qtbot, window, prompt)
    view = window.chat_view
    buttons = widget_for(window, reply.id).regenerate_button

    def bottom():
        return buttons.mapTo(view.viewport(), QPoint(0, buttons.height())).y()
    qtbot.waitUntil(lambda: 0 < bottom() <= view.viewport().height(), timeout=30_000)
    assert view.verticalScrollBar().maximum() > 0          # the chat overflows the view


def test_an_opened_chat_shows_its_last_reply_and_buttons(qtbot, window, store):
    """Opened from the list, a long chat's rows are built and then laid out: the view
    must follow the layout as it grows (scrolled once, to the bottom of the moment, the
    newest reply's buttons stayed under the edge). Streaming, the streamed view already
    filled the space, so the test above cannot see this."""
    from test_capture import _chat_to_scroll, settled
    window.resize(900, 420)
    _chat_to_scroll(window, store)
    view, bar = window.chat_view, window.chat_view.verticalScrollBar()
    buttons = widget_for(window, window.tree.active_path()[-1].id).regenerate_button
    settled(qtbot, window)
    qtbot.wait(200)
    bottom = buttons.mapTo(view.viewport(), QPoint(0, buttons.height())).y()
    assert bar.maximum() > 300 and bar.value() == bar.maximum()
    assert 0 < bottom <= view.viewport().height()


def test_a_user_who_scrolled_up_is_not_pulled_down_while_a_reply_streams(qtbot, window):
    """The stream is fed here with fixed text, as the generation thread feeds it, so how
    long the model's reply is does not matter."""
    from feedback_store import Message
    window.resize(900, 420)
    for prompt in ("Name a colour.", "Name a tree."):
        send_by_keyboard(qtbot, window, prompt)
    view, bar = window.chat_view, window.chat_view.verticalScrollBar()
    view.begin_stream(Message(conversation_id=window.tree.id, role="assistant", content=""))
    words = iter(("a lighthouse keeper walked the stairs " * 200).split(" "))

    def stream(count):
        for _ in range(count):
            view.append_token(next(words) + " ")
        qtbot.wait(2 * 40)                                   # two renders of the stream
    while bar.maximum() < 200:                               # well past the view's height
        stream(20)
    assert bar.value() == bar.maximum()                      # it followed the reply so far
    bar.setValue(0)                                          # the user scrolls up to reread
    for _ in range(5):
        stream(20)
    assert bar.value() == 0 and bar.maximum() > 200
    view.end_stream()


def test_the_input_keeps_the_keyboard_when_a_clicked_button_is_rebuilt(qtbot, window):
    """Regenerate, Compare, the thumbs and the pick buttons live in message rows that are
    rebuilt when the conversation changes; Qt then gave the keyboard to the next widget in
    the chain, the conversation search, so the next thing typed filtered the list."""
    from PySide6.QtWidgets import QApplication
    window.activateWindow()
    reply = send_by_keyboard(qtbot, window, "Name a colour.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):
        qtbot.mouseClick(widget_for(window, reply.id).compare_button, Qt.MouseButton.LeftButton)
    qtbot.wait(20)
    assert QApplication.focusWidget() is window.input, QApplication.focusWidget()
    left = window.chat_view.pair.sides[0].browser
    left.setFocus()                                      # the user clicked into the left reply
    assert QApplication.focusWidget() is left
    qtbot.keyClick(window, Qt.Key.Key_1, Qt.KeyboardModifier.AltModifier)   # pick the left one
    qtbot.wait(20)
    assert QApplication.focusWidget() is window.input, QApplication.focusWidget()


def test_edit_gives_back_the_draft_it_replaced(qtbot, window, store):
    """Clicking Edit put the old message in the box over a half-written draft; Esc then
    emptied the box, and switching chats left the old message there, to be sent as new."""
    first = send_by_keyboard(qtbot, window, "Name a fruit.")
    user = window.tree.messages[first.parent_id]
    qtbot.keyClicks(window.input, "a half-written thought")
    qtbot.mouseClick(widget_for(window, user.id).edit_button, Qt.MouseButton.LeftButton)
    assert window.input.toPlainText() == "Name a fruit." and window.banner.isVisible()
    window.stop()                                          # Esc: the edit is cancelled
    assert window.input.toPlainText() == "a half-written thought" and not window.banner.isVisible()
    qtbot.mouseClick(widget_for(window, user.id).edit_button, Qt.MouseButton.LeftButton)
    window.new_chat()                                      # another chat: the edit is over
    assert window.editing_message_id is None
    assert window.input.toPlainText() == "a half-written thought"


def test_copies_and_edits_are_recorded_as_they_happen(qtbot, window, store):
    """A copy from a reply's context menu was not recorded, and Ctrl+C was recorded twice
    where the pointer is captured through Qt's events; an Edit begun and left with Esc
    marked the reply "edited" all the same."""
    from PySide6.QtGui import QTextCursor
    store.consent.set("pointer", True)
    window.capture.sync()
    reply = send_by_keyboard(qtbot, window, "Name a fruit.")
    browser = window.probe.browser(reply.id)
    cursor = browser.textCursor()
    cursor.setPosition(0)
    cursor.setPosition(4, QTextCursor.MoveMode.KeepAnchor)
    browser.setTextCursor(cursor)

    def actions(kind):
        store.flush()
        return store._rows("SELECT * FROM reply_actions WHERE kind = ?", (kind,))
    browser.copy()                                  # (programmatic: not the user's copy)
    menu = browser.context_menu(QPoint(5, 5))       # the reply's context menu: Copy
    next(a for a in menu.actions() if a.objectName() == "edit-copy").trigger()
    assert len(actions("copy")) == 1
    qtbot.keyClick(browser, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    assert len(actions("copy")) == 2                # one more, not two
    user = window.tree.messages[reply.parent_id]
    qtbot.mouseClick(widget_for(window, user.id).edit_button, Qt.MouseButton.LeftButton)
    window.stop()                                   # Esc: the edit is left
    assert actions("edit") == []
    qtbot.mouseClick(widget_for(window, user.id).edit_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):
        window.send()
    assert [row["message_id"] for row in actions("edit")] == [user.id]


def test_a_compare_left_without_a_pick_does_not_block_the_next_chat(qtbot, window, store):
    first = send_by_keyboard(qtbot, window, "Name a colour.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):
        qtbot.mouseClick(widget_for(window, first.id).compare_button, Qt.MouseButton.LeftButton)
    assert window.comparing is not None
    window.new_chat()                                      # left without a pick
    assert window.comparing is None
    window.pick(1)                                         # Alt+1 now: nothing to pick
    assert store.counts()["feedback"] == 0
    second = send_by_keyboard(qtbot, window, "Name a shape.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):   # Compare works
        qtbot.mouseClick(widget_for(window, second.id).compare_button, Qt.MouseButton.LeftButton)
    assert window.comparing is not None and window.comparing[0] == second.id


def test_a_failed_regenerate_shows_the_reply_it_was_to_replace(qtbot, window, store, monkeypatch):
    first = send_by_keyboard(qtbot, window, "Name a tree.")

    def fails(*args, **kwargs):
        raise RuntimeError("the model could not answer")
    monkeypatch.setattr(window.service, "regenerate", fails)
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as blocker:
        qtbot.mouseClick(widget_for(window, first.id).regenerate_button, Qt.MouseButton.LeftButton)
    assert blocker.args[0] is None and "could not answer" in window.last_error
    assert window.tree.active_path()[-1].id == first.id
    assert any(w.message.id == first.id for w in window.chat_view.widgets)


def test_what_is_typed_while_a_message_is_being_saved_stays_in_the_box(qtbot, window, store):
    """The box was cleared when the commit was reported, taking with it whatever the user
    typed meanwhile (a slow commit behind a delete's rewrite takes seconds)."""
    window.input.setPlainText("Name a bird.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):
        window.send()
        window.input.setPlainText("Name a bird. And then a fish?")   # typed before the commit
    assert window.input.toPlainText() == "And then a fish?"
    assert [m.content for m in store.conversations.messages(window.tree.id)][0] == "Name a bird."


def test_while_a_delete_rewrites_the_file_thumbs_wait_and_closing_finishes_it(qtbot, window, store):
    import threading
    reply = send_by_keyboard(qtbot, window, "Say yes.")
    release, finished = threading.Event(), []

    def slow_job():                  # stands in for a delete's rewrite of a big file
        release.wait(10)
        finished.append(True)
    window._run_store_job("Deleting…", slow_job, done_text="done")
    widget = widget_for(window, reply.id)
    qtbot.mouseClick(widget.thumb_up, Qt.MouseButton.LeftButton)
    assert not widget.thumb_up.isChecked() and widget.thumb_value == 0     # undone, not stored
    assert store.counts()["feedback"] == 0
    threading.Timer(0.3, release.set).start()
    window.close()                                         # waits for the job, then closes
    assert finished == [True]


def test_while_a_delete_rewrites_the_file_the_window_says_so_instead_of_freezing(
        qtbot, window, store):
    """Reads wait while a delete rewrites the file (seconds for months of samples): New
    chat, typing in the search box, Send, Regenerate and Privacy… froze the window until
    it was done. They now say so and change nothing; what was typed stays."""
    import threading
    reply = send_by_keyboard(qtbot, window, "Say yes.")
    release = threading.Event()
    holding = threading.Event()

    def rewrite():                   # holds the file as a delete's rewrite does
        with store._reading.exclusive():
            holding.set()
            release.wait(60)
    window._run_store_job("Deleting…", rewrite, done_text="done")
    assert holding.wait(60)
    safety = threading.Timer(30.0, release.set)  # a frozen window is let go, and fails below
    safety.start()
    shown = window.tree.id
    window.new_chat()
    window.search.setText("yes")
    window.input.setPlainText("And a no?")
    window.send()
    window.regenerate(reply.id)
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    def close_a_panel_that_opened():
        if QApplication.activeModalWidget() is not None:
            QApplication.activeModalWidget().reject()
    QTimer.singleShot(200, close_a_panel_that_opened)
    window.open_privacy()
    assert not release.is_set(), "the window waited for the rewrite"
    assert window.tree.id == shown and window.input.toPlainText() == "And a no?"
    assert "still finishing a delete" in window.statusBar().currentMessage()
    release.set()
    safety.cancel()
    qtbot.waitUntil(lambda: not window.is_store_busy(), timeout=30_000)
    qtbot.waitUntil(lambda: window.conversation_list.isEnabled(), timeout=30_000)
    qtbot.waitUntil(lambda: window.conversation_list.count() == 1, timeout=30_000)   # the search, applied after


def test_an_edit_left_unsent_comes_back_with_its_chat(qtbot, window, store):
    """Opening another chat (or editing another message) threw a changed, unsent edit
    away without asking."""
    first = send_by_keyboard(qtbot, window, "Name a bird.")
    second = send_by_keyboard(qtbot, window, "Name a tree.")
    bird, tree = first.parent_id, second.parent_id
    chat = window.tree.id
    window.begin_edit(bird)
    window.input.setPlainText("Name a fish.")
    window.begin_edit(tree)                        # another message: the first edit waits
    assert window.input.toPlainText() == "Name a tree."
    window.input.setPlainText("Name a flower.")
    window.begin_edit(bird)
    assert window.input.toPlainText() == "Name a fish."
    window.input.setPlainText("Name a fish, please.")
    window.new_chat()                              # another chat: the draft from before Edit
    assert window.editing_message_id is None and window.input.toPlainText() == ""
    window.input.setPlainText("a new draft")
    window.open_conversation(chat)
    assert window.editing_message_id == bird and window.input.toPlainText() == "Name a fish, please."
    assert "unsent edit" in window.statusBar().currentMessage()
    window.stop()                                  # Esc: the user lets this edit go
    assert window.input.toPlainText() == "a new draft"
    window.begin_edit(tree)
    assert window.input.toPlainText() == "Name a flower."


def test_quitting_with_something_typed_and_unsent_asks_first(qtbot, window, monkeypatch):
    """Ctrl+Q or the window's close button threw a typed message or an edit away."""
    from PySide6.QtGui import QCloseEvent
    from PySide6.QtWidgets import QMessageBox
    asked = []
    monkeypatch.setattr(QMessageBox, "question",
                        lambda *a, **k: asked.append(a[2]) or QMessageBox.StandardButton.No)
    reply = send_by_keyboard(qtbot, window, "Name a bird.")
    window.input.setPlainText("And a long message I was writing")
    window.request_quit()
    assert asked == ["You have a message you have not sent. Quit and lose it?"]
    assert window.isVisible() and window.input.toPlainText().startswith("And a long")
    window.input.clear()
    window.begin_edit(reply.parent_id)
    window.input.setPlainText("Name a fish.")
    closing = QCloseEvent()
    monkeypatch.setattr(closing, "spontaneous", lambda: True)     # the window's close button
    window.closeEvent(closing)
    assert not closing.isAccepted() and asked[-1].startswith("You have an edit you have not sent")
    window.stop()                                   # Esc: the edit is let go
    window.request_quit()                           # nothing unsent: no question
    assert len(asked) == 2 and not window.isVisible()


def test_a_message_whose_reply_failed_can_be_retried(qtbot, window, store, monkeypatch):
    """A reply that failed left the message without one, and no way to ask again but to
    send it a second time, under the first."""
    original, calls = window.service.generate_reply, []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the model could not answer")
        return original(*args, **kwargs)
    monkeypatch.setattr(window.service, "generate_reply", fails_once)
    assert send_by_keyboard(qtbot, window, "Name a star.") is None
    [user] = [m for m in store.conversations.messages(window.tree.id)]
    widget = widget_for(window, user.id)
    assert widget.retry_button is not None and widget.retry_button.isEnabled()
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as blocker:
        qtbot.mouseClick(widget.retry_button, Qt.MouseButton.LeftButton)
    reply = blocker.args[0]
    assert reply is not None and reply.parent_id == user.id
    assert [m.role for m in store.conversations.messages(window.tree.id)] == ["user", "assistant"]
    assert widget_for(window, user.id).retry_button is None        # answered now


def test_opening_or_deleting_a_chat_while_a_reply_streams_says_why_it_waits(qtbot, window, store):
    """The click was ignored without a word (and the list showed the other chat selected)."""
    first = send_by_keyboard(qtbot, window, "Name a lake.")
    other = window.tree.id
    window.new_chat()
    long_reply_streaming(qtbot, window, store)
    streaming = window.tree.id
    window.open_conversation(other)
    assert window.tree.id == streaming
    assert "stop it (Esc) or let it finish" in window.statusBar().currentMessage()
    assert [i.isSelected() for i in window.conversation_list.findItems("", Qt.MatchFlag.MatchContains)
            if i.data(Qt.ItemDataRole.UserRole) == other] == [False]
    window.statusBar().clearMessage()
    window.delete_conversation(other, confirm=False)
    assert "stop it (Esc) or let it finish" in window.statusBar().currentMessage()
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):
        window.stop()
    assert first.conversation_id == other and store.conversations.get(other) is not None


def test_a_long_message_of_the_users_shows_its_start_until_asked(qtbot, window, store):
    """A pasted document was laid out whole at every opening of its chat (100 000
    characters: 135 ms) and pushed the reply out of sight."""
    from PySide6.QtWidgets import QApplication

    from feedback_store import Conversation, Message
    pasted = "".join(f"Paragraph {n}: the river runs over the stones.\n" for n in range(2200))
    chat = store.conversations.create(Conversation(title="Pasted"))
    user = store.conversations.add_message(Message(chat.id, "user", pasted))
    store.conversations.add_message(Message(chat.id, "assistant", "A long text.",
                                            parent_id=user.id))
    window.open_conversation(chat.id)
    row = widget_for(window, user.id)
    shown = row.browser.toPlainText()
    assert len(shown) < 3100 and pasted.startswith(shown.removesuffix(" …"))
    assert row.fold_button.text() == f"Show all ({len(pasted):,} characters)"
    qtbot.mouseClick(row.fold_button, Qt.MouseButton.LeftButton)
    assert row.browser.toPlainText() == pasted
    assert row.fold_button.text() == "Show less"
    window.new_chat()
    window.open_conversation(chat.id)             # its rows built again: still whole
    row = widget_for(window, user.id)
    assert row.browser.toPlainText() == pasted and row.fold_button.text() == "Show less"
    qtbot.mouseClick(row.fold_button, Qt.MouseButton.LeftButton)
    assert row.browser.toPlainText() == shown
    qtbot.mouseClick(row.copy_button, Qt.MouseButton.LeftButton)
    assert QApplication.clipboard().text() == pasted           # the whole message
    qtbot.mouseClick(row.edit_button, Qt.MouseButton.LeftButton)
    assert window.input.toPlainText() == pasted
    short = widget_for(window, [m for m in window.tree.messages.values()
                                if m.role == "assistant"][0].id)
    assert short.fold_button is None


def test_the_window_opens_as_it_was_left(qtbot, home, store, engine):
    """Its size and the sidebar's width were back to the defaults at every start, and it
    opened the newest chat rather than the one left open."""
    from PySide6.QtCore import QSize

    from feedback_store import Conversation, FeedbackStore, Message
    chats = [store.conversations.create(Conversation(title=title)) for title in ("older", "newer")]
    for chat in chats:
        store.conversations.add_message(Message(chat.id, "user", f"In the {chat.title} chat."))
    first = MainWindow(store, engine)
    qtbot.addWidget(first)
    first.show()
    qtbot.waitExposed(first)
    first.resize(700, 500)                           # (within the offscreen screen's 800 × 600)
    first.splitter.setSizes([180, 520])
    assert first.tree.id == chats[1].id                  # (the newest, at a first start)
    first.open_conversation(chats[0].id)
    QApplication.processEvents()
    sidebar = first.splitter.sizes()[0]
    first.close()
    store.close()
    reopened = FeedbackStore.open(home)              # kept in the store, not in memory
    try:
        second = MainWindow(reopened, engine)
        qtbot.addWidget(second)
        second.show()
        qtbot.waitExposed(second)
        assert second.size() == QSize(700, 500)
        assert second.splitter.sizes()[0] == sidebar
        assert second.tree.id == chats[0].id
        second.close()
    finally:
        reopened.close()
