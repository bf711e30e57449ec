"""Start the desktop app: store, consent, model, window."""
import sys

from PySide6.QtWidgets import QApplication, QMessageBox

from feedback_store import FeedbackStore, StoreError

from ..engine import ChatEngine
from ..models import ModelError


def run_app(model_path: str | None = None) -> int:
    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("Glance")
    try:
        store = FeedbackStore.open()
    except StoreError as error:
        QMessageBox.critical(None, "Glance cannot open its database", str(error))
        return 2
    try:
        if store.consent_needed():
            from .privacy import ConsentDialog
            ConsentDialog(store).exec()
        engine = _load_engine(store, model_path)
        from .main_window import MainWindow
        window = MainWindow(store, engine)
        window.show()
        code = app.exec()
        engine.close()
        return code
    finally:
        store.close()


def _load_engine(store: FeedbackStore, model_path: str | None) -> ChatEngine:
    """The requested model, else the last used one, else the embedded default."""
    from ..cli import _resolve_model
    try:
        return ChatEngine(_resolve_model(store, model_path))
    except ModelError as error:
        QMessageBox.warning(None, "Glance", f"{error}\n\nStarting with the default model instead.")
        return ChatEngine()
