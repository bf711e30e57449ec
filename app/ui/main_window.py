"""The main window: conversation list, chat view, input box, model picker, status bar."""
import os
from pathlib import Path

from PySide6.QtCore import QByteArray, QEvent, Qt, QTimer, Signal
from PySide6.QtGui import (QAction, QColor, QIcon, QKeySequence, QPainter, QPixmap, QShortcut,
                           QTextCursor)
from PySide6.QtWidgets import (
    QApplication, QComboBox, QFileDialog, QHBoxLayout, QInputDialog, QLabel,
    QLineEdit, QMainWindow, QMenu, QMessageBox, QPlainTextEdit,
    QPushButton, QSplitter, QSystemTrayIcon, QToolBar, QVBoxLayout, QWidget,
)

from feedback_store import FeedbackStore, Message, StoreError, glance_home

from ..chat import ChatService, ConversationTree
from ..engine import ChatEngine, EmptyPrompt, EngineError
from ..memory import freeze_long_lived
from ..models import LoadFailed, ModelError, NotEnoughMemory, default_model_path, inspect_model
from .chat_view import ChatView
from .conversation_list import ConversationList, ConversationSearch
from .dialogs import DownloadDialog, SettingsDialog
from .dialogs import confirm as ask
from .layout_probe import LayoutProbe
from ..session import AppSession, ReplyOnScreen
from ..capture.recorder import GazeRecorder
from .capture import CaptureController
from .gaze_calibration import attach_gaze
from .workers import CallThread, GenerationThread, retire

ADD_MODEL = "__add__"
DOWNLOAD_MODEL = "__download__"


def _dot_icon(colour: str | None) -> QIcon:
    """The tray icon: a grey disc, or a red one while the camera is on."""
    pixmap = QPixmap(32, 32)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setBrush(QColor(colour or "#5a6b7d"))
    painter.setPen(Qt.PenStyle.NoPen)
    painter.drawEllipse(4, 4, 24, 24)
    painter.end()
    return QIcon(pixmap)


class InputBox(QPlainTextEdit):
    """Enter sends, Shift+Enter starts a new line."""
    submitted = Signal()

    def keyPressEvent(self, event):
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not (
                event.modifiers() & Qt.KeyboardModifier.ShiftModifier):
            self.submitted.emit()
            return
        super().keyPressEvent(event)


class MainWindow(QMainWindow):
    reply_finished = Signal(object)   # emitted after a reply is committed and shown
    store_job_finished = Signal(object)  # None, or the error text
    adapters_changed = Signal()          # the nightly job published or retired a version
    model_loaded = Signal(object)        # after a switch of model: None, or the error text

    def __init__(self, store: FeedbackStore, engine: ChatEngine):
        super().__init__()
        self.engine = engine
        self.service = ChatService(store, engine)
        self.session = AppSession(store)
        self._frozen_once = False          # long-lived objects frozen once shown (app/memory.py)
        self._privacy_panel = None         # while the Privacy panel is open
        self.probe = LayoutProbe()
        self.tree: ConversationTree | None = None
        self.generation: GenerationThread | None = None
        self.store_job: CallThread | None = None   # delete / export running off the UI thread
        self.model_job: CallThread | None = None   # a model being loaded off the UI thread
        self.editing_message_id: str | None = None
        self._draft_before_edit: str | None = None     # what was in the box when Edit was clicked
        self._edit_origin: tuple[str, str] | None = None   # (conversation, text) of the edited message
        # Edits changed and left unsent (another chat opened, another message edited):
        # message id → (conversation id, text). Back in that chat, the newest comes back.
        self._unsent_edits: dict[str, tuple[str, str]] = {}
        self._sent_text: str | None = None   # the message being committed (the box keeps the rest)
        self._leaf_before_regenerate: str | None = None   # shown again if the new reply fails
        self.comparing: tuple[str, str] | None = None   # (left, right) awaiting a pick
        self._compare_original: str | None = None
        self._stopped_by_user = False    # Esc or Stop, not the window closed mid-reply
        self._adapter_error_said: str | None = None
        self.setWindowTitle("Glance")
        self.resize(1100, 720)
        self._build()
        self._restore_layout()
        self.capture = CaptureController(self)
        self.capture.sync()
        # Gaze: the "Gaze…" button and the tracker (camera off until allowed and asked);
        # its points go through the same layout snapshot as the pointer.
        self.gaze_recorder = GazeRecorder(store, self.session.id)
        self.capture.add_recorder(self.gaze_recorder)
        self.gaze = attach_gaze(self)
        self.gaze.add_point_listener(self.gaze_recorder.point)
        # (Looked up at each call: attaching gaze again replaces the controller.)
        self.gaze_recorder.on_reading_offset = lambda measured: self.gaze.reading_offset(measured)
        self._start_personalisation()
        self._refresh_models()
        latest = self.service.conversations()
        self._show_conversations(latest)
        if latest:     # the chat open when the window was closed, else the newest
            left_open = self.session.window_layout().get("conversation")
            self.open_conversation(left_open if left_open in {c.id for c in latest}
                                   else latest[0].id)
        else:
            self.new_chat()
        self.input.setFocus()

    # --- layout ------------------------------------------------------------------------
    def _build(self) -> None:
        toolbar = QToolBar("Main")
        toolbar.setMovable(False)
        self.addToolBar(toolbar)
        new_action = QAction("New chat", self)
        new_action.triggered.connect(lambda: self.new_chat())
        toolbar.addAction(new_action)
        self.incognito_action = QAction("New incognito chat", self)
        self.incognito_action.setShortcut(QKeySequence("Ctrl+Shift+N"))
        self.incognito_action.setToolTip("A chat whose messages and signals are never written "
                                         "(Ctrl+Shift+N)")
        self.incognito_action.triggered.connect(lambda: self.new_chat(incognito=True))
        toolbar.addAction(self.incognito_action)
        toolbar.addSeparator()
        toolbar.addWidget(QLabel(" Model: "))
        self.model_picker = QComboBox()
        self.model_picker.setMinimumWidth(280)
        self.model_picker.activated.connect(self._on_model_chosen)
        self.model_picker.installEventFilter(self)
        self.model_picker.setToolTip("The model that answers (Ctrl+M, then ↓ to choose)")
        toolbar.addWidget(self.model_picker)
        self.adapter_action = QAction("Personal", self, checkable=True)
        self.adapter_action.setShortcut(QKeySequence("Ctrl+Shift+A"))
        self.adapter_action.toggled.connect(self.set_personal_adapter)
        toolbar.addAction(self.adapter_action)
        # Toolbar buttons take no keyboard focus: each has a shortcut instead (a keyboard
        # user could reach neither Settings nor Privacy, where consent and deletion are).
        settings_action = QAction("Settings…", self)
        settings_action.setShortcut(QKeySequence("Ctrl+,"))
        settings_action.setToolTip("Generation settings and the system prompt (Ctrl+,)")
        settings_action.triggered.connect(self.open_settings)
        toolbar.addAction(settings_action)
        self.privacy_action = QAction("Privacy…", self)
        self.privacy_action.setShortcut(QKeySequence("Ctrl+Shift+D"))
        self.privacy_action.setToolTip("What is recorded, consent, export and deletion "
                                       "(Ctrl+Shift+D)")
        self.privacy_action.triggered.connect(self.open_privacy)
        toolbar.addAction(self.privacy_action)

        sidebar = QWidget()
        side = QVBoxLayout(sidebar)
        side.setContentsMargins(4, 4, 4, 4)
        self.search = QLineEdit(placeholderText="Search conversations")
        # Searched once typing pauses: each search scans every message's text.
        self._search_timer = QTimer(self, singleShot=True, interval=250)
        self._search_timer.timeout.connect(self._refresh_conversations)
        self.search.textChanged.connect(lambda _: self._search_timer.start())
        self.conversation_search = ConversationSearch(self.service.conversations, self)
        self.conversation_search.found.connect(self._show_search_result)
        self.conversation_search.failed.connect(lambda text: self.statusBar().showMessage(text, 8000))
        side.addWidget(self.search)
        self.conversation_list = ConversationList()
        # Long titles end in "…" (full title and time in the tooltip) rather than giving
        # the list a sideways scroll bar.
        self.conversation_list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.conversation_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.conversation_list.itemActivated.connect(
            lambda item: self.open_conversation(item.data(Qt.ItemDataRole.UserRole)))
        self.conversation_list.itemClicked.connect(
            lambda item: self.open_conversation(item.data(Qt.ItemDataRole.UserRole)))
        self.conversation_list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.conversation_list.customContextMenuRequested.connect(self._conversation_menu)
        for keys, act in ((QKeySequence.StandardKey.Delete, self.delete_conversation),
                          (QKeySequence("F2"), self.rename_conversation)):
            shortcut = QShortcut(keys, self.conversation_list, context=Qt.ShortcutContext.WidgetShortcut)
            shortcut.activated.connect(lambda act=act: self._on_current_conversation(act))
        side.addWidget(self.conversation_list)

        main = QWidget()
        column = QVBoxLayout(main)
        column.setContentsMargins(4, 4, 4, 4)
        self.banner = QLabel("")
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("background: #fff4cc; color: #4d3b00; padding: 4px;")
        self.banner.hide()
        column.addWidget(self.banner)
        self.chat_view = ChatView(self.probe)
        actions = self.chat_view.actions
        for signal, slot in ((actions.copy_requested, self.copy_message),
                             (actions.edit_requested, self.begin_edit),
                             (actions.regenerate_requested, self.regenerate),
                             (actions.compare_requested, self.compare),
                             (actions.thumb_requested, self.thumb),
                             (actions.sibling_requested, self.switch_branch),
                             (actions.retry_requested, self.retry),
                             (actions.picked, self.pick)):
            signal.connect(slot)
        self.chat_view.rows_built.connect(self._rows_built)
        column.addWidget(self.chat_view, 1)
        row = QHBoxLayout()
        self.input = InputBox()
        self.input.setPlaceholderText("Message Glance (Enter to send, Shift+Enter for a new line)")
        self.input.setTabChangesFocus(True)   # Tab goes on to Send (it typed a tab character)
        self.input.setFixedHeight(80)
        self.input.submitted.connect(self.send)
        row.addWidget(self.input, 1)
        self.send_button = QPushButton("Send")
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.stop_button.setEnabled(False)
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        row.addLayout(buttons)
        column.addLayout(row)

        self.splitter = splitter = QSplitter()
        splitter.addWidget(sidebar)
        splitter.addWidget(main)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([260, 840])
        self.setCentralWidget(splitter)

        self.model_label = QLabel()
        self.speed_label = QLabel()
        self.collection_label = QLabel()
        self.adapter_label = QLabel()
        # Red dot whenever the camera is in use: in the window and in the tray.
        self.camera_dot = QLabel("● camera on")
        self.camera_dot.setStyleSheet("color: #d00000; font-weight: bold;")
        self.camera_dot.setToolTip("The webcam is being used to compute gaze points; "
                                   "no image is stored.")
        self.camera_dot.hide()
        self.statusBar().addWidget(self.model_label)
        self.statusBar().addWidget(self.speed_label)
        self.statusBar().addWidget(self.adapter_label)
        self.statusBar().addPermanentWidget(self.camera_dot)
        self.statusBar().addPermanentWidget(self.collection_label)
        self.tray = None
        # The menu exists without a tray too; its pause item always says what a click does
        # (_update_collection_indicator): pause is remembered across starts.
        tray_menu = QMenu(self)
        self.tray_pause = tray_menu.addAction("Pause all", self.toggle_pause)
        tray_menu.addAction("Show Glance", self.showNormal)
        if QSystemTrayIcon.isSystemTrayAvailable():
            self.tray = QSystemTrayIcon(_dot_icon(None), self)
            self.tray.setToolTip("Glance")
            self.tray.setContextMenu(tray_menu)
            self.tray.show()
        # Retention is enforced at start (FeedbackStore.open) and then daily.
        self.retention_timer = QTimer(self)
        self.retention_timer.setInterval(24 * 3600 * 1000)
        self.retention_timer.timeout.connect(self.session.apply_retention)
        self.retention_timer.start()

        QShortcut(QKeySequence("Ctrl+N"), self, activated=lambda: self.new_chat())
        QShortcut(QKeySequence("Ctrl+M"), self, activated=lambda: self.model_picker.setFocus())
        QShortcut(QKeySequence.StandardKey.Find, self, activated=self._focus_search)
        QShortcut(QKeySequence.StandardKey.Quit, self, activated=self.request_quit)
        self.pause_shortcut = QShortcut(QKeySequence("Ctrl+Shift+P"), self,
                                        activated=self.toggle_pause)
        self.pause_shortcut.setContext(Qt.ShortcutContext.ApplicationShortcut)
        self._update_collection_indicator()
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, activated=self.stop)
        for keys, value in (("Alt+1", 1), ("Alt+0", 0), ("Alt+2", -1)):
            QShortcut(QKeySequence(keys), self, activated=lambda v=value: self.pick(v))

    # --- where the window was left ----------------------------------------------------------
    def _restore_layout(self) -> None:
        """The size, place (and maximised or not) and sidebar width it had when closed."""
        saved = self.session.window_layout()
        if saved.get("geometry"):
            self.restoreGeometry(QByteArray.fromBase64(saved["geometry"].encode()))
        if saved.get("splitter"):
            self.splitter.restoreState(QByteArray.fromBase64(saved["splitter"].encode()))

    def _remember_layout(self) -> None:
        tree = self.tree
        self.session.remember_window_layout({
            "geometry": bytes(self.saveGeometry().toBase64()).decode(),
            "splitter": bytes(self.splitter.saveState().toBase64()).decode(),
            "conversation": tree.id if tree is not None and tree.stored
            and not tree.conversation.incognito else None})

    # --- conversations -------------------------------------------------------------------
    def _refresh_conversations(self) -> None:
        if self.is_store_busy():      # the list is disabled meanwhile and refreshed after
            return
        term = self.search.text().strip()
        if term:        # every message's text is scanned: off the UI thread
            self.conversation_search.request(term)
        else:           # one small table, read in milliseconds
            self.conversation_search.cancel()
            self._show_conversations(self.service.conversations())

    def _focus_search(self) -> None:
        self.search.setFocus()
        self.search.selectAll()          # typing replaces the last term

    def _show_search_result(self, conversations) -> None:
        self._show_conversations(conversations)
        if not conversations:       # an empty list alone looks like a list not filled yet
            self.statusBar().showMessage(
                f"No conversation mentions “{self.search.text().strip()}”.", 6000)

    def _show_conversations(self, conversations) -> None:
        self.conversation_list.show_conversations(
            conversations, self.tree.id if self.tree is not None else None)

    def _writing_a_reply(self) -> bool:
        """While a reply streams, another chat cannot be opened or deleted: say so, rather
        than ignore the click."""
        if not self.is_generating():
            return False
        self.statusBar().showMessage("A reply is being written: stop it (Esc) or let it "
                                     "finish first.", 5000)
        return True

    def new_chat(self, incognito: bool = False) -> None:
        if self._writing_a_reply() or not self._store_free():
            return
        left = self.tree
        self.tree = self.service.new_conversation(incognito=incognito)
        self._leave_conversation_state(left)
        self._show_tree()
        self.input.setFocus()            # (not left in the list: typing there picks a chat)

    def open_conversation(self, conversation_id: str) -> None:
        if self.tree is not None and self.tree.id == conversation_id:
            return
        if self._writing_a_reply():
            self.conversation_list.select(self.tree.id)      # it shows the chat still open
            return
        left = self.tree
        try:
            self.tree = self.service.open(conversation_id)
        except StoreError as error:     # e.g. deleted, still listed until a search lands
            self.conversation_list.select(self.tree.id if self.tree is not None else None)
            self._error(str(error))
            return
        self._leave_conversation_state(left)
        self._show_tree()
        self.input.setFocus()            # (not left in the list: typing there picks a chat)

    def _leave_conversation_state(self, left: ConversationTree | None) -> None:
        """Another conversation is shown: an unfinished edit or Compare of the one left
        ends (the draft typed before Edit comes back; a Compare left without a pick would
        otherwise block Compare everywhere and point Alt+1/2 at replies no longer shown).
        An incognito chat left is gone for good, and its unsent edit with it."""
        if left is None or not left.conversation.incognito:
            self._keep_unsent_edit()
        self._end_edit()
        self.comparing = None
        waiting = [m for m, (c, _) in self._unsent_edits.items()
                   if c == self.tree.id and m in self.tree.messages]
        if waiting:
            self.begin_edit(waiting[-1])
            self.statusBar().showMessage("Your unsent edit of this chat is back.", 6000)

    def _changed_edit(self) -> str | None:
        """The edit in the box, if it changes its message (else None)."""
        if self.editing_message_id is None:
            return None
        text = self.input.toPlainText()
        return text if text.strip() and text != self._edit_origin[1] else None

    def _keep_unsent_edit(self) -> None:
        text = self._changed_edit()
        if text is not None:
            self._unsent_edits[self.editing_message_id] = (self._edit_origin[0], text)

    def _show_banner(self) -> None:
        """The line above the chat: editing mode, an incognito chat, or nothing."""
        if self.editing_message_id is not None:
            self.banner.setText("Editing a message: sending creates a new branch; the original "
                                "stays (switch with ‹ ›). Esc cancels.")
        elif self.tree is not None and self.tree.conversation.incognito:
            self.banner.setText("Incognito chat: nothing from it is written to disk; it is gone "
                                "when you close it or open another chat.")
        else:
            self.banner.hide()
            return
        self.banner.show()

    def _end_edit(self) -> None:
        """Leave editing mode, putting back what was in the box when Edit was clicked."""
        if self.editing_message_id is None:
            return
        self.editing_message_id = None
        self._fill_input(self._draft_before_edit or "")
        self._draft_before_edit = None
        self._show_banner()

    def _conversation_menu(self, point) -> None:
        item = self.conversation_list.itemAt(point)
        if item is None:
            return
        conversation_id = item.data(Qt.ItemDataRole.UserRole)
        menu = QMenu(self)
        menu.addAction("Rename… (F2)", lambda: self.rename_conversation(conversation_id))
        menu.addAction("Delete… (Del)", lambda: self.delete_conversation(conversation_id))
        menu.exec(self.conversation_list.mapToGlobal(point))
        # The right click made the item under it Qt's current one: dismissed, or answered
        # No, the list showed another chat selected than the one open.
        self.conversation_list.select(self.tree.id if self.tree is not None else None)

    def _on_current_conversation(self, act) -> None:
        """Del and F2 in the conversation list: delete or rename the chat the keyboard is on."""
        item = self.conversation_list.currentItem()
        if item is not None:
            act(item.data(Qt.ItemDataRole.UserRole))

    def _store_free(self) -> bool:
        """While a delete or export runs, writes (and, while a delete rewrites the file,
        reads) would wait for it, and the window with them: say so instead."""
        if self.is_store_busy():
            self.statusBar().showMessage("One moment: Glance is still finishing a delete or "
                                         "export. Try again when it is done.", 5000)
            return False
        return True

    def rename_conversation(self, conversation_id: str, title: str | None = None) -> None:
        if not self._store_free():
            return
        tree = self.tree if self.tree and self.tree.id == conversation_id else self.service.open(conversation_id)
        if title is None:
            title, ok = QInputDialog.getText(self, "Rename", "Title", text=tree.conversation.title)
            if not ok:
                return
        if not title.strip():
            # It became "New chat", and the next message then named it after itself.
            self.statusBar().showMessage(f"A chat needs a title: it stays “{tree.conversation.title}”.", 6000)
            return
        self.service.rename(tree, title)
        if tree is self.tree:
            self.setWindowTitle(f"Glance — {tree.conversation.title}")
        self._refresh_conversations()

    def delete_conversation(self, conversation_id: str, confirm: bool = True) -> None:
        """Delete, then rewrite the file under a new key: seconds for a big conversation,
        so it runs off the UI thread while the window stays usable."""
        if self._writing_a_reply() or not self._store_free() or self._loading_a_model():
            return
        if confirm and not ask(self, "Delete conversation",
                               "Delete this conversation and everything recorded while reading "
                               "it? This cannot be undone."):
            return
        if self.tree is not None and self.tree.id == conversation_id:
            self.new_chat()
        self._unsent_edits = {m: kept for m, kept in self._unsent_edits.items()
                              if kept[0] != conversation_id}
        self._run_store_job("Deleting the conversation and rewriting the database…",
                            self.session.delete_conversation, conversation_id,
                            done_text="Conversation deleted; no trace of it remains.")

    def _loading_a_model(self) -> bool:
        """A load ends by noting the model in the store: behind a delete's rewrite, the
        window would wait for the whole rewrite."""
        if self.is_loading_model():
            self.statusBar().showMessage("One moment: a model is still loading. Try again "
                                         "when it is done.", 5000)
        return self.is_loading_model()

    def export_data(self, directory: str) -> None:
        self._run_store_job("Exporting your data…", self.session.export, directory,
                            done_text="Exported to {}.")

    def is_store_busy(self) -> bool:
        # Until its end is handled here (like a reply): a second job started in between
        # had the first one's end wait for it on the UI thread.
        return self.store_job is not None

    def _run_store_job(self, busy_text: str, fn, *args, done_text: str) -> None:
        job = CallThread(fn, *args, parent=self)
        if "progress" in fn.__code__.co_varnames:
            job.kwargs["progress"] = job.progress.emit
            job.progress.connect(lambda done, total: self.statusBar().showMessage(
                f"{busy_text} {done}/{total}"))
        job.done.connect(lambda result: self._store_job_finished(done_text.format(result)))
        job.failed.connect(lambda text: self._store_job_finished(None, text))
        self.store_job = job
        self.statusBar().showMessage(busy_text)
        self.conversation_list.setEnabled(False)
        # The picker reads the model list, and a load ends by writing to it: during a
        # delete's rewrite either would freeze the window until the rewrite is done.
        self.model_picker.setEnabled(False)
        job.start()

    def _store_job_finished(self, text: str | None, error: str | None = None) -> None:
        self.store_job = retire(self.store_job)
        self.conversation_list.setEnabled(True)
        self.model_picker.setEnabled(not self.is_generating() and not self.is_loading_model())
        self._refresh_conversations()
        if error:
            self._error(error)
        else:
            self.statusBar().showMessage(text, 6000)
        self.store_job_finished.emit(error)

    # --- showing -------------------------------------------------------------------------
    def _show_tree(self, replying: bool = False) -> None:
        """``replying``: a reply is about to be written, so the last message is not
        offered a Retry (a greyed one showed, and its row was built twice)."""
        tree = self.tree
        keep = {m.id for m in tree.active_path()}
        if self.comparing:
            # Both sides of a pair stay on screen: the original left the active path when
            # the second reply came, and its showing was ended (its score then missed all
            # that was read in the pair) while it still showed as the left column.
            keep |= set(self.comparing)
        self.capture.narrow(keep, tree.id)
        self._mark_hidden(keep=keep)
        thumbs = self.service.thumbs(tree)
        compare = None
        if self.comparing and all(m in tree.messages for m in self.comparing):
            compare = tuple(tree.messages[m] for m in self.comparing)
        focused = QApplication.focusWidget()
        keyboard_in_rows = self._keyboard_in_chat()
        added = self.chat_view.show_messages(tree.active_path(), tree.siblings, thumbs, compare,
                                             retry_last=not (replying or self.is_generating()))
        if keyboard_in_rows and (focused is None or not self.chat_view.isAncestorOf(focused)):
            self.input.setFocus()     # the button or reply that had it is gone with its row
        if self.is_generating():   # shown mid-reply (the message just sent): they would do nothing
            for widget in self.chat_view.widgets:
                widget.set_actions_enabled(False)
        self._watch_rows(added)
        self._show_banner()
        self.setWindowTitle(f"Glance — {tree.conversation.title}")
        self._refresh_conversations()
        self._update_collection_indicator()
        # Replies are recorded as shown once the window is exposed and the layout has
        # settled (CaptureController.publish), never from a half-laid-out column.
        self.capture.layout_changed("layout")

    def _watch_rows(self, widgets) -> None:
        for widget in widgets:
            if widget.message.role == "assistant":
                self.capture.watch_browser(widget.message.id, widget.browser)

    def _rows_built(self, widgets) -> None:
        """Older rows, built as the user scrolled up: watched like the others, and as
        still as the others while a reply streams."""
        if self.is_generating():
            for widget in widgets:
                widget.set_actions_enabled(False)
        self._watch_rows(widgets)
        self.capture.layout_changed("layout")

    def record_shown_replies(self, snapshot) -> None:
        """Remember each visible reply's text and on-screen layout (samples refer to it)."""
        if self.tree is None or self.tree.conversation.incognito or not self.tree.stored:
            return
        for placed in snapshot.replies:
            geometry = placed.geometry
            if geometry.message_id not in self.tree.messages:
                continue   # still streaming: recorded when committed
            x0, y0, x1, y1 = placed.clip
            if x1 <= x0 or y1 <= y0:
                continue   # scrolled out of view: shown when it comes into view
            browser = self.probe.browser(geometry.message_id)
            self.session.reply_shown(ReplyOnScreen(
                message_id=geometry.message_id, conversation_id=self.tree.id,
                geometry=(int(placed.origin[0]), int(placed.origin[1]), browser.width(),
                          browser.height()),
                device_pixel_ratio=browser.devicePixelRatioF(), rendered_text=geometry.text,
                line_boxes=geometry.line_boxes(*placed.origin)))

    def _mark_hidden(self, keep: set[str] = frozenset()) -> None:
        self.session.replies_hidden(keep)

    # --- turns ---------------------------------------------------------------------------
    def is_generating(self) -> bool:
        # Until the reply's end is handled here, not until its thread ends: in between, a
        # send by Enter started a second reply, whose row the first one's end then dropped.
        return self.generation is not None

    def _may_start_a_reply(self) -> bool:
        """Not while a reply is written, the store is held, or a model loads (the reply
        would come from the model being replaced, and its end re-enabled the picker)."""
        if self.is_generating():
            self.statusBar().showMessage("A reply is being written: send this when it ends, "
                                         "or stop it (Esc).", 5000)
            return False
        if not self._store_free():
            return False
        if self.is_loading_model():
            self.statusBar().showMessage("One moment: the model is still loading.", 5000)
            return False
        return True

    def send(self) -> None:
        """Commit the message on the generation thread (the window never waits on the
        store), show it as sent only once committed, then stream the reply."""
        if not self._may_start_a_reply():     # (what was typed stays)
            return
        text = self.input.toPlainText()
        if not text.strip():
            self._error(EmptyPrompt().args[0], modal=False)   # (one Enter too many)
            return
        tree, editing = self.tree, self.editing_message_id
        self._sent_text = text
        if editing is not None:
            # Logged when the edit is sent: begun and left with Esc, its reply was marked
            # "edited" all the same.
            self.capture.action("edit", editing)

        def post_then_reply(**stream):
            if editing is not None:
                user = self.service.post_edit(tree, editing, text)
            else:
                user = self.service.post_user_message(tree, text)
            self.generation.posted.emit(user)
            return self.service.generate_reply(tree, user.id, **stream)
        self.capture.message_sent()
        self._start_generation(post_then_reply, placeholder_now=False)

    def _on_posted(self, _user: Message) -> None:
        # Committed: only now is the message shown as sent. What was typed meanwhile (a
        # slow commit, e.g. behind a delete's rewrite) stays in the box.
        typed, sent = self.input.toPlainText(), self._sent_text or ""
        extra = typed[len(sent):].lstrip() if typed.startswith(sent) else typed
        self._sent_text = None
        if self.editing_message_id is not None:
            # An edit sent: the draft from before it comes back, and what was typed since
            # after it (the draft alone overwrote it).
            draft = self._draft_before_edit or ""
            self._draft_before_edit = draft + ("\n" if draft and extra else "") + extra
            self._end_edit()
        else:
            self._fill_input(extra)
        self.comparing = None            # a new turn: the pair left without a pick is over
        self._show_tree()
        self.chat_view.begin_stream(Message(conversation_id=self.tree.id, role="assistant",
                                            content=""))

    def regenerate(self, assistant_message_id: str) -> None:
        if not self._may_start_a_reply():
            return
        self.capture.action("regenerate", assistant_message_id)
        parent = self.tree.messages[assistant_message_id].parent_id
        # Show the branch up to the user message while the new sibling streams (and the
        # reply it replaces again if the new one fails).
        self._leaf_before_regenerate = self.tree.conversation.active_leaf_id
        self.comparing = None
        self.tree.conversation.active_leaf_id = parent
        self._show_tree(replying=True)
        self._start_generation(lambda **stream: self.service.regenerate(
            self.tree, assistant_message_id, **stream))

    def retry(self, user_message_id: str) -> None:
        """A message whose reply failed (the model, the context): ask for a reply to it
        again. Sending it again would have put a second copy under the first."""
        if not self._may_start_a_reply():
            return
        self._start_generation(lambda **stream: self.service.generate_reply(
            self.tree, user_message_id, **stream))

    def compare(self, assistant_message_id: str) -> None:
        """A second reply to the same prompt, then both side by side until a pick."""
        if self.comparing:
            self.statusBar().showMessage("Pick the better of the two replies first (Alt+1 "
                                         "left, Alt+0 tie, Alt+2 right).", 5000)
            return
        if not self._may_start_a_reply():
            return
        self.capture.action("compare", assistant_message_id)
        self._compare_original = assistant_message_id
        self._start_generation(lambda **stream: self.service.regenerate(
            self.tree, assistant_message_id, **stream))

    def pick(self, value: int) -> None:
        """Explicit pairwise feedback: +1 left, -1 right, 0 tie. The kept reply (left on
        a tie) continues the conversation."""
        if not self.comparing or self.is_generating() or not self._store_free():
            return                      # the pair stays on screen to pick once it is free
        left, right = self.comparing
        self.service.record_pick(self.tree, left, right, value)
        self.capture.action("pick", right if value < 0 else left, value=value)
        self.comparing = None
        self.service.switch_to(self.tree, right if value < 0 else left)
        self._show_tree()
        self.statusBar().showMessage({1: "Kept the left reply.", -1: "Kept the right reply.",
                                      0: "A tie: kept the left reply."}[value], 4000)

    def begin_edit(self, user_message_id: str) -> None:
        if self.is_generating():
            return
        if self.editing_message_id is None:      # keep the draft being typed, not an edit
            self._draft_before_edit = self.input.toPlainText()
        else:
            self._keep_unsent_edit()             # the other message's edit stays for later
        original = self.tree.messages[user_message_id].content
        self.editing_message_id = user_message_id
        self._edit_origin = (self.tree.id, original)
        _, text = self._unsent_edits.pop(user_message_id, (None, original))
        self._fill_input(text)
        self.input.setFocus()
        self._show_banner()

    def _fill_input(self, text: str) -> None:
        """Typing goes on at the end of what the box is given (not before it)."""
        self.capture.filling = True          # (not the user's typing: no keystroke timing)
        try:
            self.input.setPlainText(text)
        finally:
            self.capture.filling = False
        self.input.moveCursor(QTextCursor.MoveOperation.End)

    def _start_generation(self, job, placeholder_now: bool = True) -> None:
        if placeholder_now:
            self.chat_view.begin_stream(Message(conversation_id=self.tree.id, role="assistant",
                                                content=""))
        self.generation = GenerationThread(job, self)
        self.generation.posted.connect(self._on_posted)
        self.generation.token.connect(self.chat_view.append_token)
        self.generation.done.connect(self._on_reply)
        self.generation.failed.connect(self._on_generation_failed)
        self._set_busy(True)
        self.generation.start()

    def stop(self) -> None:
        """Esc: stop the reply being written, or else leave editing mode."""
        if self.is_generating():
            self._stopped_by_user = True     # logged on the reply once it is committed
            self.generation.stop()
        elif self.editing_message_id is not None:
            self._end_edit()

    def _on_reply(self, message: Message) -> None:
        self.generation = retire(self.generation)
        replaced, self._leaf_before_regenerate = self._leaf_before_regenerate, None
        if replaced is not None and message is not None and message.finish_reason == "cancelled" \
                and not message.content.strip():
            # Regenerate stopped before a word: the reply the user had stays on screen (an
            # empty "stopped" row took its place, the old one behind ‹ ›).
            self.service.switch_to(self.tree, replaced)
            self.statusBar().showMessage("Regenerate stopped: the previous reply stays.", 6000)
        if self._stopped_by_user and message is not None:
            # A stop belongs to the reply it cut short (the reward model reads "stopped"
            # from it); a reply cancelled because the window closed was not stopped.
            self.capture.action("stop", message.id)
        self._stopped_by_user = False
        self.chat_view.end_stream()
        self._set_busy(False)
        if self._compare_original is not None and message is not None:
            if message.finish_reason == "cancelled":     # a pick against a cut-off reply
                self.service.switch_to(self.tree, self._compare_original)
                self.statusBar().showMessage("Compare stopped: the first reply stays (the "
                                             "stopped one is under ‹ ›).", 6000)
            else:
                self.comparing = (self._compare_original, message.id)
        self._compare_original = None
        self._show_tree()
        self.capture.reply_finished()
        if message.tokens_per_s:
            self.speed_label.setText(f"{message.tokens_per_s:.0f} tok/s · first token "
                                     f"{message.ttft_s:.2f} s")
        if message.dropped_turns:
            self.statusBar().showMessage(
                f"{message.dropped_turns} oldest turns were left out to fit the context.", 8000)
        self._update_adapter_indicator()
        if self.engine.adapter_error and self.engine.adapter_error != self._adapter_error_said:
            self.statusBar().showMessage(self.engine.adapter_error, 10000)   # once, not per reply
        self._adapter_error_said = self.engine.adapter_error
        self.reply_finished.emit(message)

    def _on_generation_failed(self, text: str) -> None:
        self._compare_original = None
        self._stopped_by_user = False
        if self._leaf_before_regenerate is not None and self.tree is not None:
            # The regenerated reply never came: show the one it was to replace again.
            self.tree.conversation.active_leaf_id = self._leaf_before_regenerate
        self._leaf_before_regenerate = None
        self.generation = retire(self.generation)
        self.chat_view.end_stream()
        self._set_busy(False)
        self._show_tree()
        self._error(text)
        self.reply_finished.emit(None)

    def _set_busy(self, busy: bool) -> None:
        keyboard_on_disabled = (self.stop_button.hasFocus() if not busy else
                                self._keyboard_in_chat() or self.send_button.hasFocus()
                                or self.model_picker.hasFocus())
        self.send_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)
        self.model_picker.setEnabled(not busy)
        for widget in self.chat_view.widgets:
            widget.set_actions_enabled(not busy)
        if keyboard_on_disabled:   # type the next message (or Esc) while this one streams,
            self.input.setFocus()  # and after Stop was clicked

    def _keyboard_in_chat(self) -> bool:
        """Whether the keyboard is on a reply or one of its buttons (or nowhere). Those
        are disabled while a reply streams and rebuilt when the conversation changes; Qt
        then hands the keyboard to the next widget in the chain, the conversation search,
        and the next thing typed would filter the list instead."""
        focused = QApplication.focusWidget()
        return focused is None or self.chat_view.isAncestorOf(focused)

    def copy_message(self, message_id: str) -> None:
        content = self.tree.messages[message_id].content
        QApplication.clipboard().setText(content)
        self.capture.action("copy", message_id, 0, len(content))
        self.statusBar().showMessage("Copied.", 2000)
        self.input.setFocus()            # the follow-up is typed next, not a second copy

    def thumb(self, message_id: str, value: int) -> None:
        widgets = [w for w in self.chat_view.widgets if w.message.id == message_id]
        if not self._store_free():
            # Undo the click from what the button showed: reading the store now would
            # wait for the delete's rewrite, freezing the window.
            value = widgets[0].thumb_value if widgets else 0
        else:
            self.service.thumb(self.tree, message_id, value)
            self.capture.action("thumb", message_id, value=value)
        for widget in widgets:
            widget.set_thumb(value)

    def switch_branch(self, message_id: str) -> None:
        if self.is_generating() or not self._store_free():
            return
        if self.editing_message_id is not None:
            # The message being edited could leave the screen while the banner stayed,
            # and sending then branched where the user could not see.
            self.statusBar().showMessage("Send or cancel the edit (Esc) before switching "
                                         "branches.", 6000)
            return
        self.capture.action("sibling", message_id)
        self.comparing = None
        self.service.switch_to(self.tree, message_id)
        self._show_tree()

    # --- models and settings ------------------------------------------------------------
    def _refresh_models(self) -> None:
        self.model_picker.clear()
        try:
            default = str(default_model_path())
        except ModelError:          # (a broken install; started with --model, the rest works)
            default = None
        paths = ([default] if default else []) + [m["path"] for m in self.session.known_models()
                                                  if m["path"] != default]
        for path in paths:
            gone = not os.path.exists(path)      # (moved, deleted, a disk unplugged)
            label = Path(path).name + ("  (default)" if path == default else "") + \
                ("  (file missing)" if gone else "")
            self.model_picker.addItem(label, path)
            self.model_picker.setItemData(self.model_picker.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
        self.model_picker.addItem("Add a model file…", ADD_MODEL)
        self.model_picker.addItem("Download from Hugging Face…", DOWNLOAD_MODEL)
        current = self.engine.model_info["path"] if self.engine.model_info else default
        index = self.model_picker.findData(current)
        self.model_picker.setCurrentIndex(max(index, 0))
        info = self.engine.model_info or {}
        # The file's name, as the picker shows it: the name a GGUF gives itself is often a
        # training run's ("Smollm2 135M 8k Lc100K Mix1 Ep2"), so it goes in the tooltip.
        self.model_label.setText(f"Model: {Path(info.get('path') or 'none').name} · "
                                 f"context up to {self.engine.context_limit:,} tokens")
        self.model_label.setToolTip(f"It calls itself “{info['name']}”." if info.get("name") else "")

    def _on_model_chosen(self, index: int) -> None:
        choice = self.model_picker.itemData(index)
        if choice == ADD_MODEL:
            path, _ = QFileDialog.getOpenFileName(self, "Choose a GGUF model", str(Path.home()),
                                                  "GGUF models (*.gguf);;All files (*)")
            if path:
                self.switch_model(path)
            else:
                self._refresh_models()
        elif choice == DOWNLOAD_MODEL:
            dialog = DownloadDialog(glance_home() / "models", self)
            if dialog.exec() and dialog.path:
                self.switch_model(str(dialog.path))
            else:
                self._refresh_models()
        else:
            self.switch_model(choice)
        self.input.setFocus()   # (letters typed into the picker chose another model)

    def eventFilter(self, watched, event) -> bool:
        # The wheel over the picker chose the next model and loaded it (seconds), when
        # all the user did was scroll past the toolbar.
        if watched is self.model_picker and event.type() == QEvent.Type.Wheel:
            return True
        # The arrows and letters on a closed picker chose the next model and loaded it
        # (seconds) while a keyboard user was only looking: they open the list instead,
        # where Enter chooses.
        if watched is self.model_picker and event.type() == QEvent.Type.KeyPress \
                and not self.model_picker.view().isVisible() \
                and (event.key() in (Qt.Key.Key_Up, Qt.Key.Key_Down, Qt.Key.Key_PageUp,
                                     Qt.Key.Key_PageDown, Qt.Key.Key_Home, Qt.Key.Key_End)
                     or (event.text().strip() and not event.modifiers()
                         & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier))):
            self.model_picker.showPopup()
            return True
        return super().eventFilter(watched, event)

    def is_loading_model(self) -> bool:
        # Until its outcome is handled here, not until its thread ends: in between, the
        # picker and Send were still disabled while a send by Enter was let through.
        return self.model_job is not None

    def switch_model(self, path: str) -> bool:
        """Check ``path`` now and load it off the UI thread (seconds for a big model; the
        previous one answers until then); on any error say why and keep the previous
        model. False when refused at once; ``model_loaded`` says how the load ended."""
        if self.is_generating() or self.is_loading_model() or not self._store_free():
            return False
        try:
            info = inspect_model(path)
        except ModelError as error:
            self._error(str(error))
            if not os.path.exists(path) and path in {m["path"] for m in self.session.known_models()}:
                # Listed, its file gone: it was chosen again and again, failing each time,
                # and only `glance models remove` (refused while the window is open) took it off.
                if ask(self, "Glance", f"{Path(path).name} is no longer at {path}. Remove it "
                       "from the list of models?"):
                    self.session.forget_model(path)
            elif not isinstance(error, NotEnoughMemory):   # (a good file, memory short now)
                self._offer_to_delete_download(path)
            self._refresh_models()
            return False
        if info["path"] == (self.engine.model_info or {}).get("path"):
            self._refresh_models()           # chosen again: it is loaded already
            return True
        job = CallThread(self.engine.load, info["path"], parent=self)
        job.done.connect(lambda _: self._model_loaded(info, None))
        job.failed.connect(lambda text: self._model_loaded(
            info, text, file_bad=not isinstance(job.error, (LoadFailed, NotEnoughMemory))))
        self.model_job = job
        self.model_picker.setEnabled(False)
        self.send_button.setEnabled(False)
        self.statusBar().showMessage(f"Loading {info['name']}…")
        job.start()
        return True

    def _offer_to_delete_download(self, path: str) -> None:
        """A downloaded model Glance cannot use would stay in its models folder, out of the
        picker and unseen (gigabytes), and a new download of it is refused: offer to delete
        it. Models chosen from elsewhere are the user's files and are never offered."""
        file = Path(path)
        if file.parent.resolve() != (glance_home() / "models").resolve() or not file.is_file():
            return
        if ask(self, "Glance", f"Delete the downloaded file {file.name} "
               f"({file.stat().st_size / 2**20:.0f} MiB)? Glance could not load it."):
            file.unlink()
            self.statusBar().showMessage(f"Deleted {file.name}.", 6000)

    def _model_loaded(self, info: dict, error: str | None, file_bad: bool = False) -> None:
        """``file_bad``: the load failed for the file itself (its chat template), not
        for llama.cpp on a file that passed every check, memory short as likely
        (``LoadFailed``): only then is deleting a download offered."""
        self.model_job = retire(self.model_job)
        if error is None:
            try:
                self.session.remember_model(info)
            except StoreError as failure:
                error = str(failure)
        if error:
            self._error(error)
            if file_bad:
                self._offer_to_delete_download(info["path"])
        else:
            self.statusBar().showMessage(f"Chatting with {info['name']} from now on.", 5000)
        self.model_picker.setEnabled(not self.is_generating())
        self.send_button.setEnabled(not self.is_generating())
        self._refresh_models()
        self._update_adapter_indicator()     # an adapter fits only the model it was trained on
        self.model_loaded.emit(error)

    # --- the personal adapter (align --nightly) -------------------------------------------
    def _start_personalisation(self) -> None:
        """Serve the nightly job while the window is open, and chat through the newest
        published adapter from the next reply on (no restart)."""
        self.engine.use_adapters(self.session.adapters_dir)
        self.engine.set_adapter_enabled(self.session.use_personal_adapter())
        self.adapters_changed.connect(self._update_adapter_indicator)
        problem = self.session.start_training_link(
            model_path=lambda: (self.engine.model_info or {}).get("path"),
            idle_seconds=self.capture.seconds_since_input,
            on_adapters_changed=self.adapters_changed.emit)   # from the link's thread
        if problem:
            self.statusBar().showMessage(problem, 10000)
        self._update_adapter_indicator()

    def set_personal_adapter(self, enabled: bool) -> None:
        """The toolbar toggle: the next replies come from the personal adapter or the base."""
        if enabled == self.engine.adapter_enabled:
            return
        self.engine.set_adapter_enabled(enabled)
        self.session.set_use_personal_adapter(enabled)
        self._update_adapter_indicator()

    def _update_adapter_indicator(self) -> None:
        state = self.session.adapter_state((self.engine.model_info or {}).get("path"),
                                           self.engine.adapter_enabled, self.engine.adapter_error)
        self.adapter_label.setText(state.text)
        self.adapter_label.setToolTip(state.tooltip)
        self.adapter_action.blockSignals(True)
        self.adapter_action.setChecked(state.enabled and state.available)
        self.adapter_action.blockSignals(False)
        self.adapter_action.setEnabled(state.available)
        self.adapter_action.setToolTip(state.tooltip)

    def open_settings(self) -> None:
        if not self._store_free():
            return
        dialog = SettingsDialog(self.tree.settings(), self)
        if dialog.exec():
            try:
                settings = dialog.settings()
                self.service.set_settings(self.tree, settings)
                if not self.tree.conversation.incognito:    # nothing of it is written
                    self.session.remember_default_settings(settings.to_dict())
            except EngineError as error:
                self._error(str(error))

    def open_privacy(self) -> None:
        if not self._store_free():     # it reads the counts, which wait for the rewrite
            return
        from .privacy import PrivacyPanel
        try:
            panel = PrivacyPanel(self.session.store, self, capture_note=self.capture.describe(),
                                 on_change=self.apply_collection)
        except Exception as error:  # noqa: BLE001 - the panel reads the store; say why it cannot
            # (A checkpoint that failed on a full disk leaves DuckDB's database unusable until
            # it is opened again: the panel read nothing and showed nothing.)
            QMessageBox.warning(
                self, "Privacy",
                f"Glance cannot read its database now ({error}). If the disk is full, free some "
                "space and start Glance again. To delete everything without opening it, close "
                "Glance and run `glance data delete --all --yes`.")
            return
        self._privacy_panel = panel
        try:
            panel.exec()
        finally:
            self._privacy_panel = None
        if not panel.deleted_everything:
            self._refresh_conversations()
            self.apply_collection()

    def apply_collection(self) -> None:
        """A consent or the pause changed: the pointer hook, the camera, the indicator and
        the tray follow at once (the panel's changes waited for it to close, or for a
        restart, while the tray said the opposite)."""
        if self.session.store.closed:
            return
        self.capture.sync()
        self.gaze.sync()
        self._update_collection_indicator()
        if self._privacy_panel is not None:
            self._privacy_panel.show_paused(self.session.store.consent.paused)

    def toggle_pause(self) -> None:
        paused = self.session.toggle_pause()
        self.apply_collection()
        self.statusBar().showMessage("All collection paused." if paused else "Collection resumed.",
                                     4000)

    def _update_collection_indicator(self) -> None:
        """Say plainly what is being recorded right now (policy in app.session)."""
        state = self.session.recording_state(
            incognito=bool(self.tree and self.tree.conversation.incognito))
        self.camera_dot.setVisible(state.camera_on)
        self.tray_pause.setText("Resume collection" if self.session.store.consent.paused
                                else "Pause all")
        if self.tray is not None:
            self.tray.setIcon(_dot_icon("#d00000" if state.camera_on else None))
            self.tray.setToolTip("Glance — camera on" if state.camera_on else "Glance")
        self.collection_label.setText(state.text)

    def set_collector(self, signal: str, collector) -> None:
        """Capture components (pointer, camera) register here while they run."""
        self.session.set_collector(signal, collector)
        self._update_collection_indicator()

    def camera_closing(self, camera, closing: bool) -> None:
        """A stopped camera closing on its own thread (the red dot stays until it has)."""
        if closing:
            self.session.cameras_closing.add(camera)
        else:
            self.session.cameras_closing.discard(camera)
        self._update_collection_indicator()

    # --- misc ----------------------------------------------------------------------------
    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._frozen_once:
            self._frozen_once = True
            QTimer.singleShot(0, freeze_long_lived)   # once the window is up (app/memory.py)

    def _error(self, text: str, modal: bool = True) -> None:
        self.last_error = text
        self.statusBar().showMessage(text, 15000)
        if not modal:
            return
        if QApplication.platformName() != "offscreen" or getattr(self, "modal_errors", False):
            QMessageBox.warning(self, "Glance", text)

    def request_quit(self) -> None:
        """Ctrl+Q: close, unless that would throw away something typed and not sent."""
        if self._may_discard_unsent():
            self.close()

    def _may_discard_unsent(self) -> bool:
        editing = self.editing_message_id is not None
        edited = bool(self._unsent_edits) or self._changed_edit() is not None
        drafted = (self._draft_before_edit or "") if editing else self.input.toPlainText()
        if not edited and not drafted.strip():
            return True
        what = "an edit you have not sent" if edited else "a message you have not sent"
        return ask(self, "Quit Glance", f"You have {what}. Quit and lose it?")

    def closeEvent(self, event) -> None:
        # Closed by the user (the window's close button); Ctrl+Q has asked already, and a
        # close from code (the app quitting after "Delete everything") does not ask.
        if event.spontaneous() and not self._may_discard_unsent():
            event.ignore()
            return
        self._search_timer.stop()            # it would read a store closed below
        self._remember_layout()
        # What is left is Glance tidying up (a delete's rewrite, a model load finishing, the
        # camera let go, the last replies scored: up to seconds); a window frozen meanwhile
        # looks hung.
        self.hide()
        if self.is_store_busy():
            # A delete's rewrite must finish: closing the store under it would leave the
            # deleted conversation readable in the file's free blocks.
            self.store_job.wait()
        if self.is_loading_model():
            self.model_job.wait()            # llama.cpp cannot stop a load half-way
        if self.is_generating():
            self.generation.stop()
            self.generation.wait()
        self.capture.shutdown()
        self.gaze.stop_and_wait()            # the camera is released before the app goes
        self.gaze_recorder.stop()
        self._mark_hidden()
        self.conversation_search.close()     # (a search under way ends first)
        self.session.close()
        super().closeEvent(event)
