"""Where the keyboard goes and what the window says, in the flows a daily user repeats
(real window, model and store, offscreen). Each of these was found by reading the code
as a user: typing went to the wrong widget, or an action did nothing without a word."""
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from conftest import quick_settings
from feedback_store import Conversation, Message
from test_ui import REPLY_TIMEOUT_MS, long_reply_streaming, send_by_keyboard, widget_for


def test_a_chat_clicked_in_the_list_takes_the_typing(qtbot, window, store):
    """The keyboard stayed in the list: typed letters picked another chat by title."""
    chat = store.conversations.create(Conversation(title="Old chat"))
    store.conversations.add_message(Message(chat.id, "user", "Hello there."))
    window._refresh_conversations()
    listed = window.conversation_list
    item = listed.item(0)
    qtbot.mouseClick(listed.viewport(), Qt.MouseButton.LeftButton,
                     pos=listed.visualItemRect(item).center())
    assert window.tree.id == chat.id
    assert window.input.hasFocus()
    qtbot.keyClicks(window.input, "Next question")
    assert window.input.toPlainText() == "Next question" and window.tree.id == chat.id


def test_an_edit_is_typed_on_at_its_end(qtbot, window, store):
    """The cursor was put before the message: typing went in front of it."""
    user = send_by_keyboard(qtbot, window, "Name a fruit").parent_id
    qtbot.mouseClick(widget_for(window, user).edit_button, Qt.MouseButton.LeftButton)
    qtbot.keyClicks(window.input, " that is red")
    assert window.input.toPlainText() == "Name a fruit that is red"


def test_after_stop_or_copy_typing_goes_to_the_box(qtbot, window, store):
    """Stop clicked, then disabled at the reply's end, sent the keyboard to the next widget;
    Copy kept it (Space copied again)."""
    long_reply_streaming(qtbot, window, store)
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as finished:
        qtbot.mouseClick(window.stop_button, Qt.MouseButton.LeftButton)
    reply = finished.args[0]
    assert window.input.hasFocus()
    qtbot.mouseClick(widget_for(window, reply.id).copy_button, Qt.MouseButton.LeftButton)
    assert QApplication.clipboard().text() == reply.content
    assert window.input.hasFocus()


def test_enter_while_a_reply_is_written_says_why_nothing_was_sent(qtbot, window, store):
    long_reply_streaming(qtbot, window, store)
    window.input.setPlainText("And then?")
    window.input.setFocus()
    qtbot.keyClick(window.input, Qt.Key.Key_Return)
    assert "send this when it ends" in window.statusBar().currentMessage()
    assert window.input.toPlainText() == "And then?"           # kept
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):
        window.stop()


def test_the_wheel_over_the_model_picker_loads_nothing(qtbot, window):
    """Scrolling past the toolbar chose the next entry (another model, loaded for seconds,
    or "Add a model file…", which opened a file dialog)."""
    from PySide6.QtCore import QTimer
    picker = window.model_picker
    before = picker.currentIndex()
    chosen, dialogs = [], []
    picker.activated.connect(chosen.append)

    def close_a_dialog():             # (a dialog opened by the wheel would wait forever)
        modal = QApplication.activeModalWidget()
        if modal is not None:
            dialogs.append(type(modal).__name__)
            modal.reject()
    closer = QTimer(interval=100, timeout=close_a_dialog)
    closer.start()
    for delta in (-120, 120, -120):
        wheel = QWheelEvent(QPointF(10, 10), QPointF(picker.mapToGlobal(QPoint(10, 10))),
                            QPoint(0, 0), QPoint(0, delta), Qt.MouseButton.NoButton,
                            Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
        QApplication.sendEvent(picker, wheel)
    closer.stop()
    assert chosen == [] and dialogs == [] and not window.is_loading_model()
    assert picker.currentIndex() == before


def test_regenerate_never_offers_retry_on_the_prompt(qtbot, window, store):
    """The prompt's row was built with a greyed Retry, then built again at the end."""
    reply = send_by_keyboard(qtbot, window, "Name a colour.")
    prompt = widget_for(window, reply.parent_id)
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):
        window.regenerate(reply.id)
        assert widget_for(window, reply.parent_id) is prompt and prompt.retry_button is None
    assert widget_for(window, reply.parent_id) is prompt


def test_a_compare_stopped_asks_for_no_pick_and_keeps_the_first_reply(qtbot, window, store):
    """A pick was asked between a reply and a cut-off one, and recorded as a preference."""
    window.tree.conversation.settings = quick_settings(max_tokens=400).to_dict()
    first = send_by_keyboard(qtbot, window, "Write a long story about a ship.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as finished:
        window.compare(first.id)
        qtbot.waitUntil(lambda: len(window.chat_view._stream_text) > 10,
                        timeout=REPLY_TIMEOUT_MS)
        window.stop()
    assert finished.args[0].finish_reason == "cancelled"
    assert window.comparing is None and window.chat_view.pair is None
    assert window.tree.active_path()[-1].id == first.id
    assert "Compare stopped" in window.statusBar().currentMessage()
    assert store.conversations.messages(window.tree.id)[-1].finish_reason == "cancelled"


def test_renaming_the_open_chat_renames_the_window(qtbot, window, store):
    send_by_keyboard(qtbot, window, "Hello.")
    window.rename_conversation(window.tree.id, "Greetings")
    assert window.windowTitle() == "Glance — Greetings"


def test_an_edit_left_in_an_incognito_chat_goes_with_it(qtbot, window, store):
    """It was kept for a chat that can never be opened again, and every quit asked about it."""
    window.new_chat(incognito=True)
    reply = send_by_keyboard(qtbot, window, "A secret.")
    window.begin_edit(reply.parent_id)
    window.input.setPlainText("A changed secret.")
    window.new_chat()
    assert window._unsent_edits == {} and window.editing_message_id is None
    assert window._may_discard_unsent()            # nothing to ask about


def test_a_thumb_in_an_incognito_chat_stays_until_the_chat_goes(qtbot, window, store):
    """It was cleared at the next turn: the rows' thumbs come from the store, which keeps
    nothing of an incognito chat."""
    window.new_chat(incognito=True)
    reply = send_by_keyboard(qtbot, window, "A secret.")
    qtbot.mouseClick(widget_for(window, reply.id).thumb_up, Qt.MouseButton.LeftButton)
    send_by_keyboard(qtbot, window, "Another secret.")
    assert widget_for(window, reply.id).thumb_up.isChecked()
    store.flush()
    assert store.counts()["feedback"] == 0


def test_compare_while_a_pair_waits_says_to_pick_first(qtbot, window, store):
    first = send_by_keyboard(qtbot, window, "Name a bird.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):
        window.compare(first.id)
    assert window.comparing is not None
    window.compare(window.comparing[1])
    assert "Pick the better of the two replies first" in window.statusBar().currentMessage()


def test_typing_counts_as_being_there(qtbot, window):
    """A minute of typing without touching the mouse was recorded as idle, and told the
    nightly job the user was away."""
    capture = window.capture
    capture._last_input -= 600                       # last pointer input ten minutes ago
    capture.recorder.last_event_mono_ns -= 600 * 10**9
    assert capture.seconds_since_input() > 500
    qtbot.keyClicks(window.input, "a long message")
    assert capture.seconds_since_input() < 60


def test_a_personal_adapter_that_does_not_load_is_said_once_and_not_retried(
        qtbot, home, store, engine, monkeypatch):
    """The toolbar said "Personal v0001" while replies came from the base model; the error
    came back after every reply, each of which tried the file again and threw the prompt
    cache away."""
    import json

    import llama_cpp

    from align.adapters import base_identity
    from app.ui.main_window import MainWindow
    version = home / "adapters" / "v0001"
    version.mkdir(parents=True)
    (version / "adapter.gguf").write_bytes(b"not a GGUF file")
    (version / "manifest.json").write_text(json.dumps(
        {"base": base_identity(engine.model_info["path"])}))
    (home / "adapters" / "active.json").write_text(json.dumps({"version": "v0001", "counter": 1}))
    tries = []
    real_init = llama_cpp.llama_adapter_lora_init
    monkeypatch.setattr(llama_cpp, "llama_adapter_lora_init",
                        lambda *args: tries.append(args) or real_init(*args))
    store.settings.set("generation", quick_settings().to_dict())
    window = MainWindow(store, engine)
    qtbot.addWidget(window)
    window.show()
    try:
        send_by_keyboard(qtbot, window, "Hello.")
        assert "did not load" in window.adapter_label.text()
        assert "could not load the personal adapter v0001" in window.statusBar().currentMessage()
        window.statusBar().clearMessage()
        send_by_keyboard(qtbot, window, "Hello again.")
        assert window.statusBar().currentMessage() == ""            # said once
        assert len(tries) == 1 and engine.adapter_version is None  # tried once
    finally:
        window.close()
        engine.use_adapters(None)
        engine._sync_adapter()
