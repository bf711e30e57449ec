"""Settings and model-download dialogs, and the question every destructive step asks."""
from pathlib import Path

from PySide6.QtWidgets import (
    QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
    QMessageBox, QPlainTextEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout,
)

from ..download import download_model, download_target
from ..engine import GenerationSettings
from .workers import CallThread


def confirm(parent, title: str, text: str) -> bool:
    """Yes or No to something that cannot be undone; Enter answers No (the focus was on
    Yes, and Enter deleted everything)."""
    return QMessageBox.question(
        parent, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No) == QMessageBox.StandardButton.Yes


class SettingsDialog(QDialog):
    """Generation settings for this conversation (and the default for new ones)."""

    def __init__(self, settings: GenerationSettings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Chat settings")
        form = QFormLayout(self)
        self.system_prompt = QPlainTextEdit(settings.system_prompt)
        self.system_prompt.setFixedHeight(80)
        self.temperature = QDoubleSpinBox(minimum=0.0, maximum=2.0, singleStep=0.1,
                                          value=settings.temperature)
        self.top_p = QDoubleSpinBox(minimum=0.01, maximum=1.0, singleStep=0.05, value=settings.top_p)
        self.max_tokens = QSpinBox(minimum=1, maximum=32768, value=settings.max_tokens)
        self.seed = QSpinBox(minimum=-1, maximum=2**31 - 1,   # Qt's limit (shown clamped)
                             value=-1 if settings.seed is None else min(settings.seed, 2**31 - 1))
        self.seed.setSpecialValueText("random")
        form.addRow("System prompt", self.system_prompt)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top p", self.top_p)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Seed", self.seed)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        # A field left as shown keeps the exact value it was given: the boxes round
        # (temperature to 2 decimals) and stop where Qt's do (a seed from the command line
        # can be up to 2^32 - 1, the box's maximum is 2^31 - 1), and OK must not change them.
        self._given = settings
        self._shown = {name: getattr(self, name).value()
                       for name in ("temperature", "top_p", "max_tokens", "seed")}

    def _value(self, name: str):
        value = getattr(self, name).value()
        return getattr(self._given, name) if value == self._shown[name] else value

    def settings(self) -> GenerationSettings:
        seed = self._value("seed")
        return GenerationSettings(
            system_prompt=self.system_prompt.toPlainText(),
            temperature=self._value("temperature"), top_p=self._value("top_p"),
            max_tokens=self._value("max_tokens"),
            seed=None if seed is None or seed < 0 else seed)


class DownloadDialog(QDialog):
    """Download a GGUF from the Hugging Face hub, with progress, cancel and resume."""

    def __init__(self, directory, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Download a model")
        self.directory = directory
        self.path = None
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.repo = QLineEdit(placeholderText="owner/repository, e.g. HuggingFaceTB/SmolLM2-360M-Instruct-GGUF")
        self.file = QLineEdit(placeholderText="file name ending in .gguf")
        self.sha256 = QLineEdit(placeholderText="optional: expected sha256")
        form.addRow("Repository", self.repo)
        form.addRow("File", self.file)
        form.addRow("SHA-256", self.sha256)
        layout.addLayout(form)
        layout.addWidget(QLabel("This is the only time Glance uses the network: it fetches "
                                "this one file and nothing else."))
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        row = QHBoxLayout()
        self.start_button = QPushButton("Download")
        self.use_button = QPushButton("Use it")      # the file is there already
        self.use_button.hide()
        self.cancel_button = QPushButton("Cancel")
        row.addStretch()
        row.addWidget(self.use_button)
        row.addWidget(self.start_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.start_button.clicked.connect(self.start)
        self.use_button.clicked.connect(self._use_existing)
        self.file.textChanged.connect(self.use_button.hide)   # it offered that file
        self.cancel_button.clicked.connect(self.cancel)
        self.thread = None

    def _existing(self) -> Path | None:
        name = self.file.text().strip()
        target = download_target(self.directory, name) if name else None
        return target if target is not None and target.is_file() else None

    def start(self) -> None:
        existing = self._existing()
        if existing is not None and not self.sha256.text().strip():
            # Downloaded before (perhaps from another repository with the same file name):
            # a second download is refused, so say where it is and offer it. (With a
            # SHA-256, the download checks the file there and uses it if it matches.)
            self.status.setText(f"{existing.name} is already downloaded "
                                f"({existing.stat().st_size / 2**20:.1f} MiB in {existing.parent}). "
                                "Use it, or delete it there to download it again.")
            self.use_button.show()
            return
        self.use_button.hide()
        self.start_button.setEnabled(False)
        self.status.setText("Downloading…" if existing is None else
                            f"Checking {existing.name}, downloaded before, against the "
                            "SHA-256…")
        thread = CallThread(download_model, self.repo.text().strip(), self.file.text().strip(),
                            self.directory, sha256=self.sha256.text().strip() or None, parent=self)
        thread.kwargs["cancel"] = thread.cancel
        thread.kwargs["progress"] = thread.progress.emit
        thread.progress.connect(self._on_progress)
        thread.done.connect(self._on_done)
        thread.failed.connect(self._on_failed)
        self.thread = thread
        thread.start()

    def _on_progress(self, done, total) -> None:
        if total:
            self.progress.setMaximum(1000)
            self.progress.setValue(int(1000 * done / total))
            self.status.setText(f"{done / 2**20:.1f} of {total / 2**20:.1f} MiB")

    def _use_existing(self) -> None:
        self.path = self._existing()
        if self.path is not None:
            self.accept()

    def _on_done(self, path) -> None:
        self.path = path
        self.accept()

    def _on_failed(self, message: str) -> None:
        self.status.setText(message)
        self.start_button.setEnabled(True)
        self.start_button.setText("Resume")

    def _stop_download(self, then) -> bool:
        """Stop a running download (it can be resumed), and ``then()`` once it has
        stopped; False if none runs. Not waited for here: the window froze until the
        download's next read returned."""
        if self.thread is None or not self.thread.isRunning():
            return False
        self.status.setText("Cancelling…")
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(False)
        self.thread.finished.connect(then)
        self.thread.cancel.set()
        return True

    def cancel(self) -> None:
        """Stop a running download, else close."""
        if not self._stop_download(lambda: self.cancel_button.setEnabled(True)):
            self.reject()

    def reject(self) -> None:
        # Esc and the window's close button too: the download went on unseen, and a second
        # one of the same file appended to the same partial file. Closed once it stopped.
        if not self._stop_download(lambda: QDialog.reject(self)):
            super().reject()
