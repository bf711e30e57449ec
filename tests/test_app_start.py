"""Starting the app the way `glance` does: consent first, then the window; and the
download dialog driven against a loopback hub."""
import hashlib

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from app.ui.main import run_app
from app.ui.main_window import MainWindow
from app.ui.privacy import ConsentDialog
from feedback_store import FeedbackStore
from test_download import hub  # noqa: F401 - the loopback hub, a fixture


def test_first_start_asks_consent_then_opens_the_window(qtbot, home):
    seen = []

    def answer_consent():
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, ConsentDialog):
            QTimer.singleShot(50, answer_consent)
            return
        seen.append("consent")
        dialog.boxes["pointer"].setChecked(True)
        dialog.save_button.click()
        QTimer.singleShot(50, close_window)

    def close_window():
        windows = [w for w in QApplication.topLevelWidgets()
                   if isinstance(w, MainWindow) and w.isVisible()]
        if not windows:
            QTimer.singleShot(50, close_window)
            return
        seen.append(windows[0].model_picker.currentText())
        windows[0].close()
    QTimer.singleShot(0, answer_consent)
    assert run_app() == 0
    assert seen == ["consent", "SmolLM2-135M-Instruct.Q4_1.gguf  (default)"]
    with FeedbackStore.open(home) as store:
        assert store.consent.is_on("pointer") and not store.consent.is_on("gaze")
        assert not store.consent.needed()
        assert store.counts()["app_sessions"] == 1


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_download_dialog_fetches_and_verifies(qtbot, tmp_path, hub):
    from app.ui.dialogs import DownloadDialog
    dialog = DownloadDialog(tmp_path)
    qtbot.addWidget(dialog)
    dialog.repo.setText("owner/repo")
    dialog.file.setText("model.gguf")
    dialog.sha256.setText("f" * 64)
    dialog.start_button.click()
    qtbot.waitUntil(lambda: dialog.start_button.isEnabled(), timeout=60_000)
    assert "Checksum mismatch" in dialog.status.text()
    dialog.sha256.setText(hashlib.sha256(hub.payload).hexdigest())
    with qtbot.waitSignal(dialog.accepted, timeout=60_000):
        dialog.start_button.click()
    assert dialog.path.read_bytes() == hub.payload
    assert dialog.progress.value() == dialog.progress.maximum()


def test_a_model_downloaded_before_is_offered_instead_of_refused(qtbot, tmp_path):
    """A second download of a file already in the models folder is refused; the dialog
    said only that, and not how to use the file that is there."""
    from app.ui.dialogs import DownloadDialog
    there = tmp_path / "model.gguf"
    there.write_bytes(b"x" * 2048)
    dialog = DownloadDialog(tmp_path)
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.repo.setText("owner/repo")
    dialog.file.setText("model.gguf")
    assert not dialog.use_button.isVisible()
    dialog.start_button.click()
    assert "already downloaded" in dialog.status.text() and str(tmp_path) in dialog.status.text()
    assert dialog.thread is None                          # nothing was fetched
    dialog.file.setText("other.gguf")                 # it offered model.gguf, not this
    assert not dialog.use_button.isVisible()
    dialog.file.setText("model.gguf")
    dialog.start_button.click()
    with qtbot.waitSignal(dialog.accepted, timeout=30_000):
        dialog.use_button.click()
    assert dialog.path == there


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_escape_stops_a_download_it_does_not_go_on_unseen(qtbot, tmp_path, hub):
    from PySide6.QtCore import Qt
    from app.ui.dialogs import DownloadDialog
    hub.stall_after = 300 << 10                 # a link that stalls after 300 KiB
    dialog = DownloadDialog(tmp_path)
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.repo.setText("owner/repo")
    dialog.file.setText("model.gguf")
    dialog.start_button.click()
    qtbot.waitUntil(lambda: "MiB" in dialog.status.text(), timeout=60_000)
    qtbot.keyClick(dialog, Qt.Key.Key_Escape)
    # Not waited for on the UI thread (the window froze until the next MiB had come):
    # the download, waiting for the link, stops at its next read, and the dialog closes
    # then. A few bytes come: a read that waited for a whole MiB would wait on.
    assert dialog.thread.isRunning() and dialog.status.text() == "Cancelling…"
    hub.resume.set()
    qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=30_000)
    assert not dialog.thread.isRunning()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf.part",      # resumable
                                                          "model.gguf.part.json"]
    assert (tmp_path / "model.gguf.part").stat().st_size == (300 << 10) + 4096
