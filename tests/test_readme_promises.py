"""What the README promises that no other test covered: the settings dialog, switching
between siblings with ‹ ›, incognito in the window, the dropped-turns note, and a model
that passes inspection but that llama.cpp refuses. The real window (offscreen Qt) on the
real model and the real encrypted store; dialogs are answered the way a user would."""
import json

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QDialogButtonBox, QToolButton

from app.engine import ChatEngine, GenerationSettings
from app.models import default_model_path
from app.ui.dialogs import SettingsDialog
from app.ui.main_window import MainWindow
from feedback_store import FeedbackStore
from conftest import quick_settings, run_glance, write_gguf

from test_ui import REPLY_TIMEOUT_MS, send_by_keyboard, widget_for


def arrow(widget, text):
    (button,) = [b for b in widget.findChildren(QToolButton) if b.text() == text]
    return button


def new_window(qtbot, store, engine):
    window = MainWindow(store, engine)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    return window


# --- settings -------------------------------------------------------------------------------
SETTINGS = {"system_prompt": "You are a pirate. Answer like one.", "temperature": 0.3,
            "top_p": 0.8, "max_tokens": 6, "seed": 42}


def fill_settings_dialog(values: dict, seen: list):
    """Answer the modal settings dialog like a user: read what it shows, type, OK."""
    dialog = QApplication.activeModalWidget()
    if not isinstance(dialog, SettingsDialog):
        QTimer.singleShot(20, lambda: fill_settings_dialog(values, seen))
        return
    seen.append(dialog.settings().to_dict())
    dialog.system_prompt.setPlainText(values["system_prompt"])
    dialog.temperature.setValue(values["temperature"])
    dialog.top_p.setValue(values["top_p"])
    dialog.max_tokens.setValue(values["max_tokens"])
    dialog.seed.setValue(values["seed"])
    dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok).click()


def test_settings_dialog_applies_to_the_next_reply_and_persists(qtbot, window, store, engine, home):
    seen = []
    QTimer.singleShot(0, lambda: fill_settings_dialog(SETTINGS, seen))
    window.open_settings()   # modal: returns once the dialog was answered
    assert seen == [quick_settings().to_dict()]   # it showed the settings in force

    reply = send_by_keyboard(qtbot, window, "Where is the treasure?")
    assert reply.settings == SETTINGS
    assert reply.tokens <= 6 and reply.finish_reason == "length"
    # The same prompt with these settings, straight through the engine, gives the same
    # reply, and without the system prompt another one: the system prompt was applied.
    direct = engine.generate(
        [{"role": "system", "content": SETTINGS["system_prompt"]},
         {"role": "user", "content": "Where is the treasure?"}], GenerationSettings(**SETTINGS))
    assert reply.content == direct.text
    plain = engine.generate([{"role": "user", "content": "Where is the treasure?"}],
                            GenerationSettings(**SETTINGS))
    assert plain.text != direct.text

    # Persisted: the conversation keeps them, and new chats start with them, after a
    # restart of the store too. The dialog shows them again.
    conversation_id = window.tree.id
    window.close()
    store.close()
    with FeedbackStore.open(home) as reopened:
        assert reopened.settings.get("generation") == SETTINGS
        assert reopened.conversations.get(conversation_id).settings == SETTINGS
        (_user, stored_reply) = reopened.conversations.messages(conversation_id)
        assert stored_reply.settings == SETTINGS
        restarted = new_window(qtbot, reopened, engine)
        restarted.new_chat()
        assert restarted.tree.settings().to_dict() == SETTINGS
        seen = []
        QTimer.singleShot(0, lambda: fill_settings_dialog(SETTINGS, seen))
        restarted.open_settings()
        assert seen == [SETTINGS]
        restarted.close()


# --- siblings -------------------------------------------------------------------------------
def test_sibling_arrows_switch_replies_and_branches(qtbot, window, store, engine):
    first = send_by_keyboard(qtbot, window, "Name a fruit.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as blocker:
        qtbot.mouseClick(widget_for(window, first.id).regenerate_button, Qt.MouseButton.LeftButton)
    second = blocker.args[0]
    shown = widget_for(window, second.id)
    assert shown.sibling_label.text() == "2/2"
    assert not arrow(shown, "›").isEnabled() and arrow(shown, "‹").isEnabled()

    qtbot.mouseClick(arrow(shown, "‹"), Qt.MouseButton.LeftButton)
    assert [w.message.id for w in window.chat_view.widgets] == [first.parent_id, first.id]
    shown = widget_for(window, first.id)
    assert shown.sibling_label.text() == "1/2"
    assert not arrow(shown, "‹").isEnabled() and arrow(shown, "›").isEnabled()
    store.flush()
    assert store.conversations.get(window.tree.id).active_leaf_id == first.id

    # The choice survives a restart: the older reply is shown, not the newest.
    restarted = new_window(qtbot, store, engine)
    assert [w.message.id for w in restarted.chat_view.widgets] == [first.parent_id, first.id]
    restarted.close()

    qtbot.mouseClick(arrow(shown, "›"), Qt.MouseButton.LeftButton)
    assert [w.message.id for w in window.chat_view.widgets] == [first.parent_id, second.id]

    # Arrows on an edited user message switch whole branches (the newest reply under it).
    user = window.tree.messages[first.parent_id]
    qtbot.mouseClick(widget_for(window, user.id).edit_button, Qt.MouseButton.LeftButton)
    window.input.selectAll()
    qtbot.keyClicks(window.input, "Name a vegetable.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as blocker:
        qtbot.keyClick(window.input, Qt.Key.Key_Return)
    edited_reply = blocker.args[0]
    edited = window.tree.messages[edited_reply.parent_id]
    qtbot.mouseClick(arrow(widget_for(window, edited.id), "‹"), Qt.MouseButton.LeftButton)
    assert [w.message.id for w in window.chat_view.widgets] == [user.id, second.id]
    assert widget_for(window, user.id).sibling_label.text() == "1/2"
    qtbot.mouseClick(arrow(widget_for(window, user.id), "›"), Qt.MouseButton.LeftButton)
    assert [w.message.id for w in window.chat_view.widgets] == [edited.id, edited_reply.id]


# --- incognito ------------------------------------------------------------------------------
def test_incognito_chat_in_the_window_writes_nothing(qtbot, window, store, home):
    store.consent.set("pointer", True)
    store.flush()
    counts = store.counts()
    window.incognito_action.trigger()
    assert window.banner.isVisible() and "Incognito" in window.banner.text()
    reply = send_by_keyboard(qtbot, window, "A secret question")
    assert reply.content
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):
        qtbot.mouseClick(widget_for(window, reply.id).regenerate_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(widget_for(window, window.tree.active_path()[-1].id).thumb_up,
                     Qt.MouseButton.LeftButton)
    qtbot.wait(50)  # let any queued record of the shown reply reach the writer
    store.flush()
    assert store.counts() == counts
    assert window.conversation_list.count() == 0
    assert store.conversations.list() == []
    # Nothing on disk either: reopening the database finds no trace of it.
    window.close()
    store.close()
    with FeedbackStore.open(home) as reopened:
        # (one setting more: where the window was left, written as it closed)
        assert reopened.counts() == {**counts, "app_settings": counts["app_settings"] + 1}
        layout = reopened.settings.get("window_layout")
        assert set(layout) == {"geometry", "splitter", "conversation"}
        assert layout["conversation"] is None                  # not the incognito chat
        assert reopened.conversations.list("secret") == []


# --- dropped turns --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_context_engine():
    engine = ChatEngine(default_model_path(), n_ctx=256, max_ctx=None)   # never grows
    yield engine
    engine.close()


def test_dropped_turns_note_in_the_window(qtbot, store, tiny_context_engine):
    store.settings.set("generation", quick_settings(max_tokens=24).to_dict())
    window = new_window(qtbot, store, tiny_context_engine)
    question = ("Tell me something about the history of sailing ships, the trade winds, "
                "and the ports they called at, number {}.")
    replies = []
    for turn in range(1, 8):
        replies.append(send_by_keyboard(qtbot, window, question.format(turn)))
        assert replies[-1] is not None, window.last_error
        if replies[-1].dropped_turns:
            break
    assert replies[0].dropped_turns == 0
    reply = replies[-1]
    assert reply.dropped_turns > 0, "the history never outgrew a 256-token context"
    assert window.statusBar().currentMessage() == (
        f"{reply.dropped_turns} oldest turns were left out to fit the context.")
    assert f"{reply.dropped_turns} oldest turns left out to fit the context" in \
        widget_for(window, reply.id).meta.text()
    store.flush()
    assert store.conversations.messages(window.tree.id)[-1].dropped_turns == reply.dropped_turns
    window.close()


def test_dropped_turns_note_on_the_command_line(home):
    """`glance chat` on a conversation longer than the model's whole context (8 192 tokens
    for SmolLM2) says so. One old turn of two ~4,500-token messages: both must go, and
    what is left is short (so the test does not spend minutes evaluating a long prompt)."""
    from feedback_store import Conversation, Message
    paragraph = " ".join(f"Fact {i}: the lighthouse keeper logged the weather." for i in range(370))
    with FeedbackStore.open(home) as store:
        conversation = Conversation(title="long", settings=quick_settings(max_tokens=8).to_dict())
        store.conversations.create(conversation)
        parent = None
        for role in ("user", "assistant"):
            message = Message(conversation_id=conversation.id, role=role, content=paragraph,
                              parent_id=parent)
            store.conversations.add_message(message)
            parent = message.id
    result = run_glance("chat", "--conversation", conversation.id, "--prompt", "Summarise.",
                        "--json", home=home, timeout=300)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["dropped_turns"] == 2
    assert f"(note: {reply['dropped_turns']} oldest turns were left out to fit the context)" \
        in result.stderr


# --- a model llama.cpp refuses ------------------------------------------------------------------
BROKEN = [("glance_unknown_arch", True), ("llama", False)]


@pytest.mark.parametrize("architecture, with_tensor", BROKEN, ids=["unknown-architecture", "no-weights"])
def test_model_that_llama_cpp_refuses_keeps_the_old_one_in_the_window(
        qtbot, window, store, tmp_path, architecture, with_tensor):
    from app.models import inspect_model
    bad = write_gguf(tmp_path / "broken.gguf", architecture, with_tensor)
    assert inspect_model(bad)["architecture"] == architecture   # inspection passes
    before = window.engine.model_info["path"]
    with qtbot.waitSignal(window.model_loaded, timeout=120_000) as blocker:
        assert window.switch_model(str(bad)) is True      # checked, then loaded off the UI thread
    assert blocker.args[0] == window.last_error
    assert "could not load broken.gguf" in window.last_error
    assert "previous model is still in use" in window.last_error
    assert window.engine.model_info["path"] == before
    assert window.model_picker.currentData() == before
    assert str(bad) not in [m["path"] for m in store.models.list()]
    reply = send_by_keyboard(qtbot, window, "Are you still there?")
    assert reply is not None and reply.content and reply.model == default_model_path().name


def test_model_that_llama_cpp_refuses_on_the_command_line(home, tmp_path):
    bad = write_gguf(tmp_path / "broken.gguf", "glance_unknown_arch", True)
    result = run_glance("chat", "--model", str(bad), "--prompt", "hi", "--max-tokens", "4",
                        home=home)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "could not load broken.gguf" in result.stderr
    # The failed model was not remembered: the next chat uses the default again.
    result = run_glance("chat", "--prompt", "hi", "--max-tokens", "4", "--json", home=home)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == default_model_path().name
    listing = run_glance("models", "list", home=home)
    assert str(bad) not in listing.stdout


def test_a_model_given_on_the_command_line_is_remembered_once_loaded(home, tmp_path):
    import shutil
    good = tmp_path / "my-model.gguf"
    shutil.copyfile(default_model_path(), good)
    result = run_glance("chat", "--model", str(good), "--prompt", "hi", "--max-tokens", "4",
                        "--json", home=home)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "my-model.gguf"
    assert f"* {good}  [llama" in run_glance("models", "list", home=home).stdout
    # ... and, being the last one used, it is the next chat's model (the list's "*").
    result = run_glance("chat", "--prompt", "hi", "--max-tokens", "4", "--json", home=home)
    assert json.loads(result.stdout)["model"] == "my-model.gguf"
