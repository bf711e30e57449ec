"""What a reading of the window as its daily user found (real window, model and store,
offscreen): a delete's rewrite that froze the model picker and the closing window, text
typed while an edit was saved, a Copy button on a reply not yet written, Esc after
Regenerate, the conversation list's right click, ‹ › during an edit, an empty title,
and the keyboard's way to every action."""
import shutil
import threading

from PySide6.QtCore import QTimer, Qt
from PySide6.QtWidgets import QApplication, QInputDialog

from test_ui import REPLY_TIMEOUT_MS, send_by_keyboard


class _Closed(list):
    """The titles closed, holding on to its timers (they stop when it goes)."""


def close_when_open(find, timeout_ms=10_000):
    """Close the popup or dialog ``find()`` returns as soon as there is one (a repeating
    check, stopped after ``timeout_ms``): a single timer that fired before it opened left
    it open, and the test waiting on it forever. Returns the titles it closed."""
    closed, timer = _Closed(), QTimer()
    timer.setInterval(50)
    started = QTimer()
    started.setSingleShot(True)
    started.setInterval(timeout_ms)
    started.timeout.connect(timer.stop)

    def check():
        widget = find()
        if widget is not None:
            closed.append(widget.windowTitle())
            timer.stop()
            widget.close()
    timer.timeout.connect(check)
    timer.start()
    started.start()
    closed.timers = (timer, started)        # kept alive with the list
    return closed


def hold_the_file(window, store):
    """A store job that holds the file as a delete's rewrite does, until released."""
    release, holding = threading.Event(), threading.Event()

    def rewrite():
        with store._reading.exclusive():
            holding.set()
            release.wait(60)
    window._run_store_job("Deleting…", rewrite, done_text="done")
    assert holding.wait(60)
    return release


def test_while_a_delete_rewrites_the_file_the_model_picker_does_not_freeze_the_window(
        qtbot, window, store, tmp_path):
    """The picker stayed usable during a delete: choosing a model read the model list
    and waited for the whole rewrite; and a delete started while a model loaded made
    the load's end (which notes the model) wait for it, the window with it."""
    release = hold_the_file(window, store)
    safety = threading.Timer(30.0, release.set)      # a frozen window is let go, and fails
    safety.start()
    assert not window.model_picker.isEnabled()
    assert window.switch_model(window.engine.model_info["path"]) is False
    assert not release.is_set(), "the window waited for the rewrite"
    assert "still finishing a delete" in window.statusBar().currentMessage()
    release.set()
    safety.cancel()
    qtbot.waitUntil(lambda: not window.is_store_busy(), timeout=30_000)
    assert window.model_picker.isEnabled()

    chat = send_by_keyboard(qtbot, window, "Say yes.").conversation_id
    default = window.engine.model_info["path"]
    copy = tmp_path / "copy-of-the-default.gguf"
    shutil.copy(default, copy)
    try:
        with qtbot.waitSignal(window.model_loaded, timeout=REPLY_TIMEOUT_MS):
            assert window.switch_model(str(copy))
            window.delete_conversation(chat, confirm=False)
            assert not window.is_store_busy()              # refused: the load ends first
            assert "model is still loading" in window.statusBar().currentMessage()
        assert store.conversations.get(chat) is not None
    finally:                                 # the engine is shared with later tests
        qtbot.waitUntil(lambda: not window.is_loading_model(), timeout=REPLY_TIMEOUT_MS)
        with qtbot.waitSignal(window.model_loaded, timeout=REPLY_TIMEOUT_MS):
            window.switch_model(default)
    assert window.engine.model_info["path"] == default


def test_a_window_closed_during_a_delete_goes_at_once(qtbot, window, store):
    """Closing waited for the delete's rewrite with the window still on screen, frozen
    (its "Finishing the delete" line never painted): now it is hidden first."""
    release = hold_the_file(window, store)
    job, seen = window.store_job, []
    original = job.wait

    def wait(*args):
        seen.append(window.isVisible())
        release.set()
        return original(*args)
    job.wait = wait
    window.close()
    assert seen == [False]


def test_what_is_typed_while_an_edit_is_being_saved_stays_after_the_draft(qtbot, window, store):
    """The draft from before Edit came back over what was typed while the edit was saved."""
    first = send_by_keyboard(qtbot, window, "Name a bird.")
    window.input.setPlainText("my draft")
    window.begin_edit(first.parent_id)
    window.input.setPlainText("Name a fish.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS):
        window.send()
        window.input.setPlainText("Name a fish. And a tree?")    # typed before the commit
    assert window.editing_message_id is None
    assert window.input.toPlainText() == "my draft\nAnd a tree?"


def test_the_reply_being_written_has_no_copy_button_to_press(qtbot, window, store):
    """Its Copy button looked usable and did nothing (the reply is not committed yet)."""
    window.input.setPlainText("Describe a river in a few sentences.")
    seen = []                   # at each piece, as it is shown (the whole reply may come
                                # between two checks of a busy machine's event loop)
    original = window.chat_view.append_token

    def spy(piece):
        original(piece)
        seen.append(window.chat_view.streaming.copy_button.isEnabled())
    window.chat_view.append_token = spy
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as finished:
        window.send()
    assert seen and not any(seen)
    reply = finished.args[0]
    row = next(w for w in window.chat_view.widgets if w.message.id == reply.id)
    assert row.copy_button.isEnabled()


def test_esc_right_after_regenerate_keeps_the_reply_on_screen(qtbot, window, store):
    """An empty "stopped before any text" row took the place of the reply the user had,
    which went behind ‹ ›."""
    reply = send_by_keyboard(qtbot, window, "Say yes.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as finished:
        window.regenerate(reply.id)
        window.stop()
    stopped = finished.args[0]
    assert stopped.finish_reason == "cancelled" and stopped.content == ""
    assert window.tree.active_path()[-1].id == reply.id
    assert "previous reply stays" in window.statusBar().currentMessage()
    assert store.conversations.get(window.tree.id).active_leaf_id == reply.id   # (kept)


def test_a_right_click_leaves_the_open_chat_selected(qtbot, window, store):
    """The right click made the chat under it the selected one; dismissing the menu left
    the list showing another chat than the one open."""
    first = send_by_keyboard(qtbot, window, "Say yes.").conversation_id
    window.new_chat()
    second = send_by_keyboard(qtbot, window, "Say no.").conversation_id
    listed = window.conversation_list
    other = next(listed.item(i) for i in range(listed.count())
                 if listed.item(i).data(Qt.ItemDataRole.UserRole) == first)
    point = listed.visualItemRect(other).center()
    qtbot.mouseClick(listed.viewport(), Qt.MouseButton.RightButton, pos=point)
    assert listed.currentItem().data(Qt.ItemDataRole.UserRole) == first   # (Qt's doing)
    closed = close_when_open(QApplication.activePopupWidget)
    window._conversation_menu(point)
    assert closed == [""]                         # the menu did open, and was dismissed
    assert window.tree.id == second
    assert listed.currentItem().data(Qt.ItemDataRole.UserRole) == second


def test_branches_are_not_switched_under_an_edit_and_a_title_is_never_empty(qtbot, window, store):
    """‹ › during an edit could take the message being edited off the screen while the
    banner stayed; an empty title became "New chat", then the next message's words."""
    reply = send_by_keyboard(qtbot, window, "Say yes.")
    with qtbot.waitSignal(window.reply_finished, timeout=REPLY_TIMEOUT_MS) as finished:
        window.regenerate(reply.id)
    sibling = finished.args[0]
    window.begin_edit(reply.parent_id)
    window.switch_branch(reply.id)
    assert window.tree.active_path()[-1].id == sibling.id
    assert window.editing_message_id == reply.parent_id
    assert "before switching branches" in window.statusBar().currentMessage()
    window.stop()
    title = window.tree.conversation.title
    window.rename_conversation(window.tree.id, "   ")
    assert window.tree.conversation.title == title
    assert store.conversations.get(window.tree.id).title == title
    assert "needs a title" in window.statusBar().currentMessage()


def test_every_action_has_a_key(qtbot, window, store, monkeypatch):
    """Settings…, Privacy…, Gaze…, a new incognito chat and the model picker needed the
    mouse (toolbar buttons take no focus); Del and F2 did nothing in the list; Tab typed
    a tab into the message; ↓ on the model picker loaded the next model at once."""
    ctrl, shift = Qt.KeyboardModifier.ControlModifier, Qt.KeyboardModifier.ShiftModifier

    def back_to_the_window():
        window.activateWindow()                   # (offscreen leaves a popup active)
        qtbot.waitUntil(window.isActiveWindow, timeout=5_000)
    back_to_the_window()
    window.input.setFocus()
    qtbot.waitUntil(window.input.hasFocus, timeout=5_000)
    qtbot.keyClick(window.input, Qt.Key.Key_Tab)
    assert not window.input.hasFocus() and "\t" not in window.input.toPlainText()

    qtbot.keyClick(window, Qt.Key.Key_M, ctrl)                    # the model picker
    qtbot.waitUntil(window.model_picker.hasFocus, timeout=5_000)
    qtbot.keyClick(window.model_picker, Qt.Key.Key_Down)
    assert not window.is_loading_model() and window.model_picker.view().isVisible()
    window.model_picker.hidePopup()
    back_to_the_window()

    qtbot.keyClick(window, Qt.Key.Key_N, ctrl | shift)            # a new incognito chat
    assert window.tree.conversation.incognito
    window.new_chat()
    chat = send_by_keyboard(qtbot, window, "Say yes.").conversation_id
    listed = window.conversation_list
    listed.setFocus()
    listed.setCurrentRow(0)
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("Renamed by F2", True))
    qtbot.keyClick(listed, Qt.Key.Key_F2)
    assert store.conversations.get(chat).title == "Renamed by F2"
    monkeypatch.setattr("app.ui.main_window.ask", lambda *a, **k: True)
    qtbot.keyClick(listed, Qt.Key.Key_Delete)
    qtbot.waitUntil(lambda: not window.is_store_busy(), timeout=60_000)
    assert store.conversations.get(chat) is None

    for key, modifiers, title in ((Qt.Key.Key_Comma, ctrl, "Chat settings"),
                                  (Qt.Key.Key_D, ctrl | shift, "Privacy")):   # Privacy…
        back_to_the_window()
        closed = close_when_open(QApplication.activeModalWidget)
        qtbot.keyClick(window, key, modifiers)
        qtbot.waitUntil(lambda: bool(closed), timeout=10_000)
        assert title is None or closed == [title], closed
    back_to_the_window()
    qtbot.keyClick(window, Qt.Key.Key_G, ctrl | shift)            # Gaze… (no consent yet)
    assert "Privacy" in window.statusBar().currentMessage()
    # Personal is off until an adapter exists; its key is on its own action.
    assert window.adapter_action.shortcut().toString() == "Ctrl+Shift+A"
