"""Start the desktop app: store, consent, model, window."""
import os
import sys

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from feedback_store import FeedbackStore, MissingKey, StoreError, WrongKey

from ..engine import ChatEngine
from ..models import ModelError, choose_model


def run_app(model_path: str | None = None) -> int:
    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("Glance")
    try:
        store = _open_store(app)
    except (WrongKey, MissingKey) as error:
        if _offer_reset(str(error)):
            store = FeedbackStore.open()
        else:
            return 2
    except StoreError as error:
        QMessageBox.critical(None, "Glance cannot open its database", str(error))
        return 2
    try:
        if store.consent.needed():
            from .privacy import ConsentDialog
            ConsentDialog(store).exec()
        engine = _load_engine(store, model_path)
        from .main_window import MainWindow
        window = MainWindow(store, engine)
        window.show()
        _announce_ready(app, window)
        code = app.exec()
        engine.close()
        return code
    finally:
        store.close()


def _open_store(app: QApplication) -> FeedbackStore:
    """Open the store; if the nightly job holds it for its few seconds of reading or
    recording, say so in a small window and open as soon as it lets go."""
    from PySide6.QtWidgets import QLabel
    from ..training_link import open_store_waiting
    note = []

    def waiting(text: str) -> None:
        label = QLabel(text)
        label.setWindowTitle("Glance")
        label.setWordWrap(True)
        label.setMargin(16)
        label.resize(420, 100)
        label.show()
        note.append(label)
        app.processEvents()
    try:
        return open_store_waiting(on_wait=waiting)
    finally:
        for label in note:
            label.close()


def _announce_ready(app: QApplication, window) -> None:
    """Hidden hook for bench/startup.py, which times launch-to-usable from outside.

    GLANCE_PRINT_READY=1: print 'glance-ready' on stdout once the event loop runs with
    the window shown and its input box focused (a user could type); with also
    GLANCE_QUIT_WHEN_READY=1, quit right after. Without these variables: nothing.
    """
    if os.environ.get("GLANCE_PRINT_READY") != "1":
        return

    def check():
        if window.isVisible() and window.input.hasFocus():
            print("glance-ready", flush=True)
            if os.environ.get("GLANCE_QUIT_WHEN_READY") == "1":
                app.quit()
        else:  # activation can land a few events after the first loop turn
            QTimer.singleShot(5, check)
    QTimer.singleShot(0, check)


def _offer_reset(message: str) -> bool:
    """The key does not open the database: quit (to restore the key) or start empty."""
    box = QMessageBox(QMessageBox.Icon.Critical, "Glance cannot unlock its database",
                      message + "\n\nIf you have a backup of the key, quit and restore it. "
                      "Resetting deletes the database and starts empty.")
    quit_button = box.addButton("Quit (restore the key)", QMessageBox.ButtonRole.RejectRole)
    reset_button = box.addButton("Reset: delete all data", QMessageBox.ButtonRole.DestructiveRole)
    box.setDefaultButton(quit_button)
    box.exec()
    if box.clickedButton() is not reset_button:
        return False
    from feedback_store import glance_home
    from feedback_store.privacy import delete_everything
    delete_everything(glance_home())
    return True


def _load_engine(store: FeedbackStore, model_path: str | None) -> ChatEngine:
    """The requested model, else the last used one, else the embedded default."""
    try:
        engine = ChatEngine(choose_model(store, model_path))
    except ModelError as error:
        QMessageBox.warning(None, "Glance", f"{error}\n\nStarting with the default model instead.")
        engine = ChatEngine()
        store.models.remember(engine.model_info)   # (else the same warning at every start)
        return engine
    if model_path:
        store.models.remember(engine.model_info)  # only once it has loaded
    return engine
