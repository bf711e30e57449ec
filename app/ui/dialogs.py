"""Settings and model-download dialogs."""
from PySide6.QtWidgets import (
    QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
    QPlainTextEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout,
)

from ..download import download_model
from ..engine import GenerationSettings
from .workers import CallThread


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
        self.seed = QSpinBox(minimum=-1, maximum=2**31 - 1,
                             value=-1 if settings.seed is None else settings.seed)
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

    def settings(self) -> GenerationSettings:
        return GenerationSettings(
            system_prompt=self.system_prompt.toPlainText(),
            temperature=self.temperature.value(), top_p=self.top_p.value(),
            max_tokens=self.max_tokens.value(),
            seed=None if self.seed.value() < 0 else self.seed.value())


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
        self.cancel_button = QPushButton("Cancel")
        row.addStretch()
        row.addWidget(self.start_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.thread = None

    def start(self) -> None:
        self.start_button.setEnabled(False)
        self.status.setText("Downloading…")
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

    def _on_done(self, path) -> None:
        self.path = path
        self.accept()

    def _on_failed(self, message: str) -> None:
        self.status.setText(message)
        self.start_button.setEnabled(True)
        self.start_button.setText("Resume")

    def cancel(self) -> None:
        """Stop a running download (it can be resumed), else close."""
        if self.thread is not None and self.thread.isRunning():
            self.thread.cancel.set()
            self.thread.wait()
        else:
            self.reject()

    def reject(self) -> None:
        # Esc and the window's close button too: the download went on unseen, and a second
        # one of the same file appended to the same partial file.
        if self.thread is not None and self.thread.isRunning():
            self.status.setText("Cancelling…")
            self.thread.cancel.set()
            self.thread.wait()
        super().reject()
