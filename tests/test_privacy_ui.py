"""The consent dialog and privacy panel, as real Qt dialogs driven by pytest-qt."""
import time

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from app.ui.privacy import ConsentDialog, PrivacyPanel
from feedback_store import CONSENT_TEXT_VERSION, SIGNALS, FeedbackStore, Message, PointerSample


def test_consent_dialog_needs_a_choice_and_defaults_off(qtbot, store):
    dialog = ConsentDialog(store)
    qtbot.addWidget(dialog)
    dialog.show()
    assert all(not box.isChecked() for box in dialog.boxes.values())
    qtbot.keyClick(dialog, Qt.Key.Key_Escape)
    dialog.close()
    assert dialog.isVisible()  # neither Esc nor closing passes it
    assert store.consent.needed()
    assert not dialog.windowFlags() & Qt.WindowType.WindowCloseButtonHint
    dialog.boxes["pointer"].setChecked(True)
    qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    assert not dialog.isVisible()
    consents = store.consent.decisions()
    assert consents["pointer"]["on"] is True
    assert consents["gaze"]["on"] is False and consents["personalise"]["on"] is False
    assert all(consents[s]["text_version"] == CONSENT_TEXT_VERSION for s in SIGNALS)
    assert not store.consent.needed()


def test_keep_everything_off_is_a_choice_too(qtbot, store):
    dialog = ConsentDialog(store)
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.boxes["gaze"].setChecked(True)
    qtbot.mouseClick(dialog.decline_button, Qt.MouseButton.LeftButton)
    assert not store.consent.needed()
    assert not any(store.consent.is_on(s) for s in SIGNALS)


def test_privacy_panel_changes_consent_pause_and_retention(qtbot, store, tmp_path):
    panel = PrivacyPanel(store)
    qtbot.addWidget(panel)
    panel.show()
    panel.boxes["gaze"].setChecked(True)
    assert store.consent.is_on("gaze")
    panel.boxes["gaze"].setChecked(False)
    assert not store.consent.is_on("gaze")
    panel.pause_box.setChecked(True)
    assert store.consent.paused
    assert panel.findChildren(object, "keyFileWarning"), "the key-file warning must be shown"


def test_retention_is_applied_once_chosen_and_a_shorter_one_only_when_agreed(
        qtbot, store, monkeypatch):
    """Typing "30" over 90 passed through 3 days, and each value was applied at once: every
    reading signal older than 3 days was deleted, for good."""
    from PySide6.QtWidgets import QMessageBox
    day = 86_400 * 10**9
    store.consent.set("pointer", True)
    store.samples.submit([PointerSample("s", "r", "c", 1, time.time_ns() - age * day, "move", 1.0, 1.0)
                          for age in (60, 10)])
    store.flush()
    asked = []
    answer = {"button": QMessageBox.StandardButton.No}
    monkeypatch.setattr(QMessageBox, "question",
                        lambda *a, **k: asked.append(a[2]) or answer["button"])
    panel = PrivacyPanel(store)
    qtbot.addWidget(panel)
    panel.show()
    field = panel.retention.lineEdit()
    field.selectAll()
    qtbot.keyClicks(field, "3")
    assert store.settings.retention_days == 90 and not asked     # nothing while typing
    qtbot.keyClicks(field, "0")
    qtbot.keyClick(field, Qt.Key.Key_Return)
    assert len(asked) == 1 and "older than 30 days will be deleted" in asked[0]
    assert store.settings.retention_days == 90 and panel.retention.value() == 90   # declined
    store.flush()
    assert store.counts()["pointer_samples"] == 2                                  # nothing deleted
    answer["button"] = QMessageBox.StandardButton.Yes
    field.selectAll()
    qtbot.keyClicks(field, "30")
    panel.accept()                                # closed before Enter: still applied
    assert len(asked) == 2 and store.settings.retention_days == 30
    store.flush()
    assert store.counts()["pointer_samples"] == 1              # agreed: the 60-day-old one went
    longer = PrivacyPanel(store)
    qtbot.addWidget(longer)
    longer.show()
    longer.retention.lineEdit().selectAll()
    qtbot.keyClicks(longer.retention.lineEdit(), "120")
    qtbot.keyClick(longer.retention.lineEdit(), Qt.Key.Key_Return)
    assert len(asked) == 2 and store.settings.retention_days == 120   # longer: nothing to ask


def test_pause_shortcut_in_the_window(qtbot, store, window):
    assert window.collection_label.text() == "Not recording"
    window.activateWindow()         # the shortcut works where the window has the keyboard
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=30_000)
    window.input.setFocus()
    qtbot.keyClick(window.input, Qt.Key.Key_P, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert store.consent.paused and window.collection_label.text() == "Recording paused"
    window.toggle_pause()
    assert not store.consent.paused


def test_the_tray_pause_item_says_what_a_click_does(qtbot, store, engine):
    """Pause is remembered across starts, and can be set in the Privacy panel: the tray
    item still said "Pause all" then, and clicking it resumed collection."""
    from app.ui.main_window import MainWindow
    store.consent.set_paused(True)                   # as the last run left it
    window = MainWindow(store, engine)
    qtbot.addWidget(window)
    assert window.tray_pause.text() == "Resume collection"
    window.tray_pause.trigger()
    assert not store.consent.paused and window.tray_pause.text() == "Pause all"
    window.close()


def test_settings_chosen_in_an_incognito_chat_are_not_written(qtbot, store, window):
    """They became the stored default for every new chat (the system prompt too), though
    an incognito chat writes nothing."""
    from PySide6.QtCore import QTimer
    from app.ui.dialogs import SettingsDialog

    def choose(prompt):
        def fill():
            dialog = QApplication.activeModalWidget()
            assert isinstance(dialog, SettingsDialog)
            dialog.system_prompt.setPlainText(prompt)
            dialog.accept()
        QTimer.singleShot(0, fill)
        window.open_settings()
    window.new_chat(incognito=True)
    choose("You are my secret diary.")
    assert window.tree.settings().system_prompt == "You are my secret diary."   # in this chat
    assert "secret diary" not in str(store.settings.get("generation"))
    window.new_chat()
    choose("Answer briefly.")                         # a stored chat sets the default
    assert store.settings.get("generation")["system_prompt"] == "Answer briefly."


def test_delete_everything_that_cannot_finish_says_so_and_the_window_stops(
        qtbot, store, monkeypatch):
    """The store is closed before the files go; when another Glance process took the file
    meanwhile (the nightly job waits for it), the refusal escaped the slot: no message, and
    the window went on with a closed database."""
    from PySide6.QtWidgets import QMessageBox
    import feedback_store.privacy as privacy
    from feedback_store import DatabaseLocked
    said = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    monkeypatch.setattr(QMessageBox, "warning", lambda *a, **k: said.append(a[2]))
    monkeypatch.setattr(QApplication, "quit", lambda *a: said.append("quit"))

    def taken(path):
        raise DatabaseLocked(path, "align --nightly (PID 4242)")
    monkeypatch.setattr(privacy, "_refuse_if_in_use", taken)
    panel = PrivacyPanel(store)
    qtbot.addWidget(panel)
    panel.show()
    panel.delete_everything()
    assert said[0].startswith("Not everything could be deleted: The Glance database")
    assert "PID 4242" in said[0] and "glance data delete --all --yes" in said[0]
    assert said[1:] == ["quit"] and panel.deleted_everything and not panel.isVisible()
    assert (store.data_dir / "glance.db").exists() and (store.data_dir / "glance.key").exists()


def test_the_settings_dialog_changes_only_what_was_changed(qtbot):
    """A seed from the command line above the box's 2^31 - 1 made the dialog fail to open
    (an overflow in the slot: nothing shown); a temperature with three decimals was
    silently rounded by pressing OK."""
    from app.engine import GenerationSettings
    from app.ui.dialogs import SettingsDialog
    given = GenerationSettings(temperature=0.735, seed=3_000_000_000)
    dialog = SettingsDialog(given)
    qtbot.addWidget(dialog)
    assert dialog.settings() == given                     # OK as shown: nothing changes
    dialog.seed.setValue(7)
    dialog.temperature.setValue(0.5)
    assert (dialog.settings().seed, dialog.settings().temperature) == (7, 0.5)
    dialog.seed.setValue(-1)                              # "random"
    assert dialog.settings().seed is None


def test_data_view_counts_samples_per_session(qtbot, store):
    session = store.samples.start_session("test")
    store.consent.set("pointer", True)
    store.samples.submit([PointerSample(session, "r", "c", i, i, "move", 1.0, 1.0, None, "qt")
                          for i in range(12)])
    store.flush()
    panel = PrivacyPanel(store)
    qtbot.addWidget(panel)
    assert panel.table.rowCount() == 1
    assert panel.table.item(0, 2).text() == "12"
    assert panel.table.item(0, 3).text() == "0"
    assert panel.table.item(0, 4).text() == "0"


def test_data_view_counts_the_replies_scored_from_reading(qtbot, store):
    """What the reward model derived from the user's reading is shown beside the samples."""
    from feedback_store import Conversation, Message
    session = store.samples.start_session("test")
    store.consent.set("personalise", True)
    conversation = store.conversations.create(Conversation(title="scored"))
    question = store.conversations.add_message(Message(conversation.id, "user", "Why?"))
    reply = store.conversations.add_message(Message(conversation.id, "assistant", "Because.",
                                                    parent_id=question.id))
    shown = store.samples.record_shown_reply(session_id=session, message_id=reply.id,
                                             conversation_id=conversation.id, geometry=(0, 0, 10, 10),
                                             device_pixel_ratio=1.0, rendered_text="Because.", layout=[])
    for version in ("v1", "v2"):      # scored twice: still one reply
        assert store.scores.record(shown, reply.id, conversation.id, None, version, "pointwise", 0.7, [])
    store.samples.start_session("test")           # a later session scored nothing
    store.flush()
    panel = PrivacyPanel(store)
    qtbot.addWidget(panel)
    assert panel.table.horizontalHeaderItem(4).text() == "Scored from reading"
    assert panel.table.rowCount() == 2            # newest session first
    assert [[panel.table.item(r, c).text() for c in (1, 4)] for r in (0, 1)] == [["0", "0"], ["1", "1"]]


def test_panel_export(qtbot, store, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QMessageBox
    shown = []
    monkeypatch.setattr(QMessageBox, "information", lambda *a: shown.append(a[2]))
    panel = PrivacyPanel(store)
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.export_finished, timeout=60_000):
        panel.export(str(tmp_path / "mine"))   # runs off the UI thread
    exported = list((tmp_path / "mine").iterdir())
    assert len(exported) == 1 and (exported[0] / "manifest.json").exists()
    assert str(exported[0]) in shown[0]


def test_delete_everything_waits_for_the_export_and_asks_with_no_as_the_answer(
        qtbot, store, tmp_path, monkeypatch):
    """Delete everything could be chosen while an export ran: the data went, the export
    failed, and the user, who wanted a copy first, had neither. Enter in its question (and
    in the shorter-retention one) answered Yes: the focus was on Yes."""
    from PySide6.QtWidgets import QMessageBox
    asked = []
    monkeypatch.setattr(QMessageBox, "information", lambda *a: None)
    monkeypatch.setattr(QMessageBox, "question",
                        lambda *a: asked.append(a) or QMessageBox.StandardButton.No)
    panel = PrivacyPanel(store)
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.export_finished, timeout=60_000):
        panel.export(str(tmp_path / "mine"))
        assert not panel.delete_button.isEnabled()
        panel.delete_everything()                    # (a click that got through)
        assert asked == [] and not store.closed
    assert panel.delete_button.isEnabled()
    panel.delete_everything()
    panel.retention.setValue(30)
    panel.apply_retention()
    assert [a[1] for a in asked] == ["Delete everything", "Keep reading signals for less time"]
    assert all(a[4] == QMessageBox.StandardButton.No for a in asked)     # the default
    assert not store.closed and store.settings.retention_days == 90


def test_the_panel_the_tray_and_the_hotkey_agree_on_the_pause(qtbot, store, window):
    """The panel's pause took effect when it closed, and the tray (still "Pause all")
    then resumed collection while the panel's box stayed ticked; the panel's consents
    waited for it to close too."""
    store.consent.set("pointer", True)
    window.apply_collection()
    assert window.capture.running
    panel = PrivacyPanel(store, window, on_change=window.apply_collection)
    qtbot.addWidget(panel)
    window._privacy_panel = panel                    # as open_privacy does while it is open
    panel.pause_box.setChecked(True)
    assert not window.capture.running and window.tray_pause.text() == "Resume collection"
    assert window.collection_label.text() == "Recording paused"
    window.toggle_pause()                            # the tray's item, or the hotkey
    assert not store.consent.paused and not panel.pause_box.isChecked()
    assert window.capture.running
    panel.boxes["pointer"].setChecked(False)         # withdrawn: stops now
    assert not window.capture.running
    window._privacy_panel = None


def test_camera_red_dot_follows_the_running_camera(qtbot, store, window):
    assert not window.camera_dot.isVisible()
    store.consent.set("gaze", True)
    window.set_collector("gaze", object())  # a running camera registers itself
    assert window.camera_dot.isVisible()
    assert window.collection_label.text() == "Recording: camera"
    window.set_collector("gaze", None)
    assert not window.camera_dot.isVisible()
    assert window.collection_label.text() == "Not recording"


def test_an_incognito_chat_stores_no_pointer_sample_even_over_no_reply(qtbot, store, window):
    """The pointer is recorded system-wide; a sample over no reply carried no conversation
    and passed the store's door, so an incognito chat stored every move and click outside
    its replies while it said "nothing from it is written to disk". Such a sample now
    belongs to the conversation on screen, and an incognito one is refused."""
    store.consent.set("pointer", True)
    window.capture.sync()
    recorder = window.capture.recorder
    window.new_chat(incognito=True)
    assert recorder.snapshot.conversation_id == window.tree.id      # at once, not once settled
    qtbot.waitUntil(lambda: recorder.snapshot.on_window(3, 3), timeout=30_000)   # (placed)
    recorder.event("click", 3, 3, "test", button="left")            # the toolbar: no reply
    recorder.flush()
    store.flush()
    assert store.counts()["pointer_samples"] == 0 and store.consent.refused["incognito"] == 1
    window.new_chat()
    recorder.event("click", 3, 3, "test", button="left")
    recorder.flush()
    store.flush()
    assert store._rows("SELECT conversation_id, shown_reply_id FROM pointer_samples") == \
        [{"conversation_id": window.tree.id, "shown_reply_id": None}]


def test_switching_chats_stops_mapping_points_to_the_replies_that_left(qtbot, store, window):
    """The replies of the chat left are marked hidden and scored at once; until the next
    layout settled, points over the next chat were still stored as their words."""
    from test_ui import send_by_keyboard
    store.consent.set("pointer", True)
    window.capture.sync()
    reply = send_by_keyboard(qtbot, window, "Say hi.")
    recorder = window.capture.recorder
    qtbot.waitUntil(lambda: any(r.geometry.message_id == reply.id for r in recorder.snapshot.replies),
                    timeout=30_000)
    window.new_chat()
    assert recorder.snapshot.replies == () and recorder.snapshot.conversation_id == window.tree.id


def test_the_window_closes_cleanly_after_everything_was_deleted(qtbot, window, store,
                                                               monkeypatch):
    """Its close marked the replies on screen as hidden in the closed store: the error
    cut the close short, before the session's threads were stopped."""
    from PySide6.QtWidgets import QMessageBox
    from test_ui import send_by_keyboard
    store.consent.set("pointer", True)
    window.capture.sync()
    send_by_keyboard(qtbot, window, "Hello.")
    qtbot.waitUntil(lambda: bool(window.session.shown_ids()), timeout=30_000)
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    monkeypatch.setattr(QMessageBox, "information", lambda *a, **k: None)
    monkeypatch.setattr(QApplication, "quit", lambda *a: None)
    panel = PrivacyPanel(store, window)
    panel.delete_everything()
    assert panel.deleted_everything and store.closed
    window.close()                                   # (pytest-qt fails on an error in it)
    assert not window.session.scorer._thread.is_alive()


def test_the_panel_closed_while_it_exports_closes_once_the_export_is_done(
        qtbot, store, tmp_path, monkeypatch):
    """Closed under a running export, the export's thread went with the panel (Qt aborts
    the process for a thread destroyed while it runs)."""
    import threading
    from PySide6.QtWidgets import QMessageBox
    monkeypatch.setattr(QMessageBox, "information", lambda *a: None)
    panel = PrivacyPanel(store)
    qtbot.addWidget(panel)
    panel.show()
    held, release = threading.Event(), threading.Event()

    def hold():                                  # the export waits for the store
        with store.reading().exclusive():
            held.set()
            release.wait(30)
    threading.Thread(target=hold, daemon=True).start()
    assert held.wait(30)
    with qtbot.waitSignal(panel.export_finished, timeout=60_000):
        panel.export(str(tmp_path / "mine"))
        panel.reject()                           # Esc / the close button
        assert panel.isVisible() and "Still exporting" in panel.export_status.text()
        release.set()
    qtbot.waitUntil(lambda: not panel.isVisible(), timeout=30_000)
    assert (tmp_path / "mine").exists()


def test_the_panel_says_what_is_stored_in_all(qtbot, store):
    """The README promises counts and bytes; the panel showed this session's pointer and
    gaze samples only, nothing of conversations, screen events, actions or picks."""
    from feedback_store import Conversation, Message
    store.conversations.create(Conversation(title="kept", id="kept"))
    store.conversations.add_message(Message(conversation_id="kept", role="user", content="hi"))
    store.flush()
    panel = PrivacyPanel(store)
    qtbot.addWidget(panel)
    text = panel.totals.text()
    assert "1 conversations, 1 messages" in text and "MB in the database files" in text
    assert "actions (selections, copies, typing times)" in text


def test_on_a_small_screen_the_panel_scrolls_instead_of_squeezing_its_text(qtbot, store):
    """On a 768-pixel-high screen the consent explanations were squeezed into each other
    (each label lower than its text); the panel's content now scrolls."""
    from PySide6.QtWidgets import QLabel
    panel = PrivacyPanel(store, capture_note="Pointer: a note of two lines at this width, "
                         "as the window gives it to the panel, long enough to wrap once.")
    qtbot.addWidget(panel)
    panel.resize(700, 520)
    panel.show()
    qtbot.waitExposed(panel)
    wrapped = [label for label in panel.findChildren(QLabel)
               if label.wordWrap() and label.isVisible() and label.text()]
    assert len(wrapped) >= 6
    for label in wrapped:
        assert label.height() >= label.heightForWidth(label.width()) - 1, label.text()[:40]


def test_privacy_on_a_database_a_full_disk_made_unusable_says_what_to_do(window, monkeypatch):
    """A checkpoint that fails for want of room makes DuckDB mark the open database
    unusable: Privacy… then read nothing and showed nothing (the error only printed).
    The full disk here is a file-size limit, for the checkpoint alone."""
    import os
    import resource
    import signal
    from PySide6.QtWidgets import QMessageBox
    store = window.session.store
    for j in range(200):
        store.conversations.add_message(Message(conversation_id="c", role="user", content="x" * 2000))
    largest = max(entry.stat().st_size for entry in os.scandir(store.data_dir) if entry.is_file())
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest, hard))
    try:
        with pytest.raises(Exception, match="Checkpoint failed"):
            store.writer.call(lambda con: con.execute("CHECKPOINT"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    said = []
    monkeypatch.setattr(QMessageBox, "warning", lambda *a, **k: said.append(a[2]))
    window.open_privacy()
    assert len(said) == 1 and "free some space and start Glance again" in said[0]
    assert "glance data delete --all --yes" in said[0]
    window.close()
    with pytest.raises(Exception, match="invalidated"):   # (as it would at the app's exit;
        store.close()                                     # the next start replays the log)
    with FeedbackStore.open(store.data_dir) as reopened:
        assert reopened.counts()["messages"] == 200
