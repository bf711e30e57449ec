"""Screenshots of the real windows on a real X server (run by test_screenshots.py).

usage: DISPLAY=:N python tests/screens.py OUT_DIR   (GLANCE_HOME must be set)
"""
import sys
from pathlib import Path

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication


def main(out: Path) -> int:
    app = QApplication(sys.argv)
    from app.engine import ChatEngine, GenerationSettings
    from app.ui.main_window import MainWindow
    from app.ui.privacy import ConsentDialog, PrivacyPanel
    from feedback_store import FeedbackStore
    out.mkdir(parents=True, exist_ok=True)
    store = FeedbackStore.open()
    engine = ChatEngine()
    store.settings.set("generation", GenerationSettings(seed=3, max_tokens=120).to_dict())

    def grab(widget, name):
        widget.raise_()
        widget.activateWindow()
        for _ in range(20):
            app.processEvents()
        loop = QEventLoop()
        QTimer.singleShot(300, loop.quit)
        loop.exec()
        # The X server's own pixels, not Qt's render of the widget.
        shot = app.primaryScreen().grabWindow(0, widget.x(), widget.y(),
                                              widget.frameGeometry().width(),
                                              widget.frameGeometry().height())
        shot.save(str(out / name))

    consent = ConsentDialog(store)
    consent.boxes["pointer"].setChecked(True)
    consent.move(40, 40)
    consent.show()
    grab(consent, "consent_dialog.png")
    consent.save()

    window = MainWindow(store, engine)
    window.move(0, 0)
    window.resize(1200, 760)
    window.show()
    window.input.setPlainText("Show me a Python function that adds two numbers, in a code block.")
    waiting = QEventLoop()
    window.reply_finished.connect(lambda _: waiting.quit())
    window.send()
    waiting.exec()  # sleeps until the reply is committed (no busy loop stealing a core)
    window.input.setPlainText("Thanks! And in one sentence, why do tests matter?")
    grab(window, "main_window.png")

    panel = PrivacyPanel(store, window, capture_note=window.capture.describe())
    panel.move(60, 20)
    panel.show()
    grab(panel, "privacy_panel.png")
    panel.close()

    # Compare: a second reply beside the first, waiting for a pick.
    reply = [w for w in window.chat_view.widgets if w.message.role == "assistant"][-1]
    waiting = QEventLoop()
    window.reply_finished.connect(lambda _: waiting.quit())
    reply.compare_button.click()
    waiting.exec()
    window.input.clear()
    grab(window, "compare.png")
    window.close()
    engine.close()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
