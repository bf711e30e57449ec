"""First-run consent and the privacy panel. The store enforces; these only ask and show."""
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QApplication, QCheckBox, QDialog, QFileDialog, QFrame, QGroupBox, QHBoxLayout, QLabel,
    QMessageBox, QPushButton, QScrollArea, QSpinBox, QTableWidget, QTableWidgetItem,
    QVBoxLayout, QWidget,
)

from feedback_store import SIGNALS
from feedback_store.privacy import export_all

from feedback_store.times import local_minute
from .dialogs import confirm
from .workers import CallThread

CONSENT_INTRO = (
    "<h2>Before you start: what Glance may record</h2>"
    "<p>Glance can learn which answers help you from <b>how you read them</b>. That only "
    "happens if you say yes below. Everything is <b>off</b> until you turn it on, and you can "
    "change your mind at any time under <i>Privacy</i> in the toolbar.</p>"
    "<p><b>Nothing leaves this computer.</b> Glance makes no network connections (the only "
    "exception is a model download you start yourself). Everything is kept in an encrypted "
    "database in your data folder, readable only by your user account.</p>")

def _names(paths, most: int = 8) -> str:
    names = [path.name for path in paths]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _signal_box(signal: str, checked: bool) -> QCheckBox:
    box = QCheckBox(SIGNALS[signal].title.replace("&", "&&"))
    box.setChecked(checked)
    box.setObjectName(f"consent_{signal}")
    return box


def _signal_explanation(signal: str) -> QLabel:
    label = QLabel(SIGNALS[signal].consent_text)
    label.setWordWrap(True)
    label.setIndent(24)
    return label


class ConsentDialog(QDialog):
    """Cannot be dismissed without a choice: no close button, Esc does nothing."""

    def __init__(self, store, parent=None):
        super().__init__(parent)
        self.store = store
        self.setWindowTitle("Glance — your choices")
        self.setWindowFlags(Qt.WindowType.Dialog | Qt.WindowType.CustomizeWindowHint
                            | Qt.WindowType.WindowTitleHint)
        self.setModal(True)
        layout = QVBoxLayout(self)
        intro = QLabel(CONSENT_INTRO)
        intro.setWordWrap(True)
        intro.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(intro)
        current = store.consent.decisions()
        self.boxes = {}
        for signal in SIGNALS:
            decision = current.get(signal)
            box = _signal_box(signal, bool(decision and decision["on"]))
            self.boxes[signal] = box
            layout.addWidget(box)
            layout.addWidget(_signal_explanation(signal))
        note = QLabel("Conversation text is stored (encrypted) so your chats are there next "
                      "time. A new chat can be incognito (never stored); any chat can be "
                      "deleted, and everything exported.")
        note.setWordWrap(True)
        layout.addWidget(note)
        row = QHBoxLayout()
        self.decline_button = QPushButton("Keep everything off")
        self.save_button = QPushButton("Save my choices")
        self.save_button.setDefault(True)
        row.addStretch()
        row.addWidget(self.decline_button)
        row.addWidget(self.save_button)
        layout.addLayout(row)
        self.decline_button.clicked.connect(self.decline_all)
        self.save_button.clicked.connect(self.save)
        self.setMinimumWidth(620)

    def save(self) -> None:
        for signal, box in self.boxes.items():
            self.store.consent.set(signal, box.isChecked())
        self.accept()

    def decline_all(self) -> None:
        for box in self.boxes.values():
            box.setChecked(False)
        self.save()

    def reject(self) -> None:  # Esc / window close: a choice is required
        pass


class PrivacyPanel(QDialog):
    export_finished = Signal(object)   # the export folder, or None when it failed

    def __init__(self, store, parent=None, capture_note: str | None = None, on_change=None):
        super().__init__(parent)
        self.store = store
        # Called after a consent or the pause changes here: the window applies it at once.
        self.on_change = on_change or (lambda: None)
        self.export_job: CallThread | None = None
        self._close_after_export: int | None = None   # closed while exporting: closes after
        self.setWindowTitle("Privacy")
        # Its content scrolls: on a 768-pixel-high screen, and with the totals, the
        # consent texts were squeezed into each other.
        outer = QVBoxLayout(self)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        content = QWidget()
        layout = QVBoxLayout(content)
        scroll.setWidget(content)
        outer.addWidget(scroll)

        consents = QGroupBox("What Glance may record")
        box_layout = QVBoxLayout(consents)
        self.boxes = {}
        for signal in SIGNALS:
            box = _signal_box(signal, store.consent.is_on(signal))
            box.toggled.connect(lambda on, s=signal: self._set_consent(s, on))
            self.boxes[signal] = box
            box_layout.addWidget(box)
            box_layout.addWidget(_signal_explanation(signal))
        if capture_note:
            note = QLabel(capture_note)
            note.setObjectName("captureNote")
            note.setWordWrap(True)
            box_layout.addWidget(note)
        self.pause_box = QCheckBox("Pause all collection (Ctrl+Shift+P, anywhere while "
                                   "Glance records the pointer; also in the tray menu)")
        self.pause_box.setChecked(store.consent.paused)
        self.pause_box.toggled.connect(self._set_paused)
        box_layout.addWidget(self.pause_box)
        layout.addWidget(consents)

        storage = QGroupBox("Where it is kept")
        storage_layout = QVBoxLayout(storage)
        status = store.status()
        lines = [f"Folder: {status['data_dir']} (only your account can read it)",
                 "Encrypted with AES-GCM (DuckDB); the key is "
                 + ("in your system keyring." if status["key_storage"] == "keyring" else
                    "in a key file readable only by you, because this system has no keyring.")]
        for text in lines:
            label = QLabel(text)
            label.setWordWrap(True)
            storage_layout.addWidget(label)
        if status["key_storage"] == "file":
            warning = QLabel("⚠ No system keyring was found: the key sits next to the database "
                             "in glance.key (mode 0600). Anyone who can read your files can "
                             "read the database. Install a keyring (e.g. GNOME Keyring) for "
                             "better protection. Deleting a conversation re-encrypts the "
                             "database under a new key and destroys the old one "
                             "(crypto-erase); with a key file that is only as strong as the "
                             "deletion of the old file on your disk (SSDs and backups may "
                             "keep copies).")
            warning.setObjectName("keyFileWarning")
            warning.setWordWrap(True)
            warning.setStyleSheet("color: #8a4b00;")
            storage_layout.addWidget(warning)
        network = QLabel("No network: Glance opens no connections, except to download a "
                         "model when you ask it to (Model → Download). The webcam library is "
                         "pinned to MediaPipe 0.10.21 on purpose: newer releases send usage "
                         "metrics to Google.")
        network.setWordWrap(True)
        storage_layout.addWidget(network)
        retention = QHBoxLayout()
        retention.addWidget(QLabel("Keep reading signals for"))
        self.retention = QSpinBox(minimum=1, maximum=3650, value=store.settings.retention_days)
        self.retention.setSuffix(" days")
        # Applied once chosen (Enter, leaving the field, closing the panel), not at every
        # keystroke or arrow step: typing "30" passed through 3 days, and a shorter period
        # deletes for good.
        self.retention.setKeyboardTracking(False)
        self.retention.editingFinished.connect(self.apply_retention)
        self._asking = False
        retention.addWidget(self.retention)
        retention.addStretch()
        storage_layout.addLayout(retention)
        layout.addWidget(storage)

        data = QGroupBox("Your data")
        data_layout = QVBoxLayout(data)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["Session started", "Replies shown",
                                              "Pointer samples", "Gaze samples",
                                              "Scored from reading"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().hide()
        self.table.setMaximumHeight(150)
        data_layout.addWidget(self.table)
        self._fill_sessions()
        # Everything stored, not only this session's: the README promises counts and bytes.
        self.totals = QLabel()
        self.totals.setObjectName("storedTotals")
        self.totals.setWordWrap(True)
        data_layout.addWidget(self.totals)
        self._fill_totals()
        buttons = QHBoxLayout()
        export = self.export_button = QPushButton("Export all my data…")
        export.clicked.connect(lambda: self.export())
        self.export_status = QLabel("")
        delete_all = self.delete_button = QPushButton("Delete everything…")
        delete_all.setObjectName("deleteEverything")
        delete_all.clicked.connect(self.delete_everything)
        buttons.addWidget(export)
        buttons.addWidget(self.export_status)
        buttons.addStretch()
        buttons.addWidget(delete_all)
        data_layout.addLayout(buttons)
        data_layout.addWidget(QLabel("To delete one conversation, right-click it in the list."))
        layout.addWidget(data)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        outer.addWidget(close, alignment=Qt.AlignmentFlag.AlignRight)
        self.setMinimumSize(560, 420)
        room = (parent.screen() if parent is not None else QApplication.primaryScreen())
        available = room.availableGeometry() if room is not None else None
        width = max(scroll.widget().sizeHint().width() + 40, 780)
        height = scroll.widget().sizeHint().height() + close.sizeHint().height() + 40
        if available is not None:
            width, height = min(width, available.width() - 40), min(height, available.height() - 60)
        self.resize(width, height)
        # Enter (in the retention field, say) must not press a button: the first one was
        # the dialog's default, so Enter opened the export.
        for button in self.findChildren(QPushButton):
            button.setAutoDefault(False)
            button.setDefault(False)
        self.deleted_everything = False

    def _set_consent(self, signal: str, on: bool) -> None:
        self.store.consent.set(signal, on)
        self.on_change()

    def _set_paused(self, paused: bool) -> None:
        self.store.consent.set_paused(paused)
        self.on_change()

    def show_paused(self, paused: bool) -> None:
        """Paused or resumed elsewhere (the tray, the hotkey) while the panel is open."""
        self.pause_box.blockSignals(True)
        self.pause_box.setChecked(paused)
        self.pause_box.blockSignals(False)

    def apply_retention(self) -> None:
        """Keep the period in the field; a shorter one only once the user agrees to what
        it deletes."""
        self.retention.interpretText()          # what is typed, Enter pressed or not
        days, current = self.retention.value(), self.store.settings.retention_days
        if days == current or self._asking:     # (the question takes the focus: asked once)
            return
        if days < current:
            self._asking = True
            try:
                agreed = confirm(
                    self, "Keep reading signals for less time",
                    f"Reading signals older than {days} days will be deleted now, for good "
                    f"(they are kept {current} days now). Keep {days} days?")
            finally:
                self._asking = False
            if not agreed:
                self.retention.setValue(current)
                return
        self.store.settings.set_retention_days(days)
        self.store.apply_retention(wait=False)  # runs on the writer; the panel never waits
        QTimer.singleShot(1000, self, self._fill_totals)   # (once the deletion is done)

    def done(self, result: int) -> None:
        if self.export_job is not None and self.export_job.isRunning():
            # Closed under it, the export's thread went with the panel (a crash), or the
            # window quit mid-export without a word: the panel closes once it is done.
            self._close_after_export = result
            self.export_status.setText("Still exporting: the panel closes when it is done.")
            return
        self.apply_retention()          # closed with a new period typed but not confirmed
        super().done(result)

    def _closing_after_export(self) -> None:
        if self._close_after_export is not None:
            result, self._close_after_export = self._close_after_export, None
            self.done(result)

    def _fill_sessions(self) -> None:
        rows = self.store.samples.session_summary()
        self.table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            started = local_minute(row["started_wall_ns"])
            for column, value in enumerate((started, row["replies"], row["pointer"], row["gaze"],
                                            row["scored"])):
                self.table.setItem(index, column, QTableWidgetItem(str(value)))

    def _fill_totals(self) -> None:
        if self.store.closed:
            return
        counts = self.store.counts()
        size = sum(self.store.file_sizes().values())
        shown = [("conversations", "conversations"), ("messages", "messages"),
                 ("shown_replies", "replies shown"), ("pointer_samples", "pointer samples"),
                 ("gaze_samples", "gaze samples"), ("viewport_events", "on-screen changes"),
                 ("reply_actions", "actions (selections, copies, typing times)"),
                 ("feedback", "picks and thumbs"), ("reply_scores", "scores"),
                 ("training_pairs", "training pairs"), ("research_turns", "imported study turns")]
        self.totals.setText("Stored in all: " + ", ".join(
            f"{counts.get(table, 0):,} {words}" for table, words in shown)
            + f". {size / 2**20:.1f} MB in the database files.")

    def export(self, directory: str | None = None) -> None:
        """Runs off the UI thread (a big database takes seconds), with progress."""
        directory = directory or QFileDialog.getExistingDirectory(self, "Export to folder")
        if not directory or (self.export_job is not None and self.export_job.isRunning()):
            return
        job = CallThread(export_all, self.store, directory, parent=self)
        job.kwargs["progress"] = job.progress.emit
        job.progress.connect(lambda done, total: self.export_status.setText(
            f"Exporting… {done} of {total} tables"))
        job.done.connect(self._export_done)
        job.failed.connect(self._export_failed)
        self.export_job = job
        self.export_button.setEnabled(False)
        self.delete_button.setEnabled(False)    # the copy being made would go with the data
        self.export_status.setText("Exporting…")
        job.start()

    def _export_done(self, folder) -> None:
        self.export_job.wait()
        self.export_button.setEnabled(True)
        self.delete_button.setEnabled(True)
        self.export_status.setText("")
        self.export_finished.emit(str(folder))
        QMessageBox.information(self, "Exported", f"Your data is in {folder}.")
        self._closing_after_export()

    def _export_failed(self, text: str) -> None:
        self.export_job.wait()
        self.export_button.setEnabled(True)
        self.delete_button.setEnabled(True)
        self.export_status.setText("")
        self.export_finished.emit(None)
        QMessageBox.warning(self, "Export failed", text)
        self._closing_after_export()

    def delete_everything(self) -> None:
        if self.export_job is not None and self.export_job.isRunning():
            return          # (the button is off meanwhile: deleting lost the export too)
        if not confirm(self, "Delete everything",
                       "Delete every conversation, every recorded signal, trained adapters and "
                       "the encryption key? Glance will close. This cannot be undone."):
            return
        from feedback_store.privacy import delete_everything
        try:
            kept = delete_everything(self.store.data_dir, self.store)
        except Exception as error:  # noqa: BLE001 - whatever it was, the user must hear of it
            # The store is closed by then: the window cannot go on with it, so it closes
            # too, saying what to do (another Glance process took the file meanwhile, say).
            QMessageBox.warning(
                self, "Delete everything",
                f"Not everything could be deleted: {error} Glance closes now. To finish, "
                "close whatever else uses the data folder and choose Delete everything "
                "again, or run `glance data delete --all --yes`.")
            kept = None
        self.deleted_everything = True      # (or the store closed trying): the window stops
        if kept:
            QMessageBox.information(
                self, "Deleted everything",
                f"Everything Glance kept in {self.store.data_dir} is deleted. Left there, "
                f"because Glance did not make them: {_names(kept)}.")
        self.accept()
        QApplication.instance().quit()
