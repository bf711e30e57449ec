"""Drive the real `glance` program (``app.cli.main([])``, the desktop app) through a whole
session on a real X server, from inside its own process: first-run consent, a chat turn
typed into the input box, the privacy panel, export, deleting the conversation (which
compacts the file under a new key), and *Delete everything*, which quits the app.

Every step is appended as one JSON object per line to the file named by
GLANCE_SESSION_LOG; the export goes to GLANCE_SESSION_EXPORT. tests/test_no_network.py
runs this under ``strace -f -e trace=network``.

    DISPLAY=:90 QT_QPA_PLATFORM=xcb GLANCE_HOME=... python tests/desktop_session.py
"""
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import Qt, QTimer  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox, QPushButton  # noqa: E402

LOG = Path(os.environ["GLANCE_SESSION_LOG"])
EXPORT = os.environ["GLANCE_SESSION_EXPORT"]


def log(step: str, **data) -> None:
    with LOG.open("a") as handle:
        handle.write(json.dumps({"step": step, **data}) + "\n")


def modal(kind):
    widget = QApplication.activeModalWidget()
    return widget if isinstance(widget, kind) else None


def no_modal():
    return QApplication.activeModalWidget() is None


def main_window():
    from app.ui.main_window import MainWindow
    return next((w for w in QApplication.topLevelWidgets()
                 if isinstance(w, MainWindow) and w.isVisible()), None)


def answer(box: QMessageBox, button) -> str:
    text = box.text()
    box.button(button).click()
    return text


def session():
    """Each ``yield`` hands the runner a condition; the runner resumes the session with
    the condition's (truthy) value once it holds."""
    from app.ui.privacy import ConsentDialog, PrivacyPanel

    consent = yield lambda: modal(ConsentDialog)
    consent.boxes["pointer"].setChecked(True)
    QTest.mouseClick(consent.save_button, Qt.MouseButton.LeftButton)
    log("consent")

    window = yield main_window
    replies = []
    window.reply_finished.connect(replies.append)
    window.input.setFocus()
    QTest.keyClicks(window.input, "What colour is the sky?")
    QTest.keyClick(window.input, Qt.Key.Key_Return)
    yield lambda: replies
    reply = replies[0]
    log("chat", reply=reply.content if reply is not None else None,
        error=getattr(window, "last_error", None), conversation=window.tree.id,
        stored=len(window.service.open(window.tree.id).messages))

    QTimer.singleShot(0, window.privacy_action.trigger)
    panel = yield lambda: modal(PrivacyPanel)
    log("privacy panel", sessions=panel.table.rowCount())
    QTimer.singleShot(0, lambda: panel.export(EXPORT))
    box = yield lambda: modal(QMessageBox)
    log("export", message=answer(box, QMessageBox.StandardButton.Ok))
    yield lambda: modal(PrivacyPanel)
    panel.accept()
    yield no_modal

    conversation = window.tree.id
    finished = []
    window.store_job_finished.connect(finished.append)  # delete + compaction run off the UI thread
    QTimer.singleShot(0, lambda: window.delete_conversation(conversation))
    box = yield lambda: modal(QMessageBox)
    question = answer(box, QMessageBox.StandardButton.Yes)
    yield lambda: finished and no_modal()
    log("delete conversation", question=question, error=finished[0],
        left=[c.id for c in window.service.conversations()])

    QTimer.singleShot(0, window.privacy_action.trigger)
    panel = yield lambda: modal(PrivacyPanel)
    QTimer.singleShot(0, panel.findChild(QPushButton, "deleteEverything").click)
    box = yield lambda: modal(QMessageBox)
    log("delete everything", question=answer(box, QMessageBox.StandardButton.Yes))
    # The panel deletes the database, the key and the folder's contents, then quits.


class Runner:
    def __init__(self, steps):
        self.steps = steps
        self.waiting_for = next(steps)
        self.busy = False
        self.timer = QTimer()
        self.timer.setInterval(50)
        self.timer.timeout.connect(self.tick)
        self.timer.start()

    def tick(self) -> None:
        if self.busy:  # a step opened a nested event loop: do not re-enter
            return
        value = self.waiting_for()
        if not value:
            return
        self.busy = True
        try:
            self.waiting_for = self.steps.send(value)
        except StopIteration:
            self.timer.stop()
        except Exception:
            log("driver error", traceback=traceback.format_exc())
            self.timer.stop()
            QApplication.exit(3)
        finally:
            self.busy = False


def main() -> int:
    QApplication(sys.argv)  # run_app uses this instance
    runner = Runner(session())  # noqa: F841 (kept alive for the session)
    from app.cli import main as glance
    code = glance([])
    log("exit", code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
