"""The real Glance window on a real X server, recording while a test moves the real
pointer with xdotool (tests/test_capture_xvfb.py). Runs in its own process because the
test process's Qt is offscreen.

Handshake through files in GLANCE_CAPTURE_DIR: this process writes ``ready.json`` once a
reply is on screen and laid out (with its word boxes in screen pixels), then executes
each command file ``cmd-N.json`` the test writes, answering ``done-N.json``.

    DISPLAY=:90 QT_QPA_PLATFORM=xcb GLANCE_HOME=... GLANCE_CAPTURE_DIR=... \
        python tests/capture_session.py [--pointer on|off] [--prompt TEXT] [--max-tokens N]
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtGui import QGuiApplication  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

DIR = Path(os.environ["GLANCE_CAPTURE_DIR"])


def write(name: str, data) -> None:
    temporary = DIR / (name + ".tmp")
    temporary.write_text(json.dumps(data))
    temporary.rename(DIR / name)


def word_boxes(window, message_id: str) -> list[dict]:
    """Each word of the reply with the screen rectangle of its characters."""
    geometry = window.probe.geometry(message_id)
    origin = window.probe.browser(message_id).viewport().mapToGlobal(
        window.probe.browser(message_id).viewport().rect().topLeft())
    boxes = []
    for index, (start, end) in enumerate(zip(geometry.word_start, geometry.word_end)):
        line = int(((geometry.line_start <= start) & (start < geometry.line_end)).nonzero()[0][0])
        last = min(int(end), int(geometry.line_end[line])) - 1
        x0 = origin.x() + geometry.char_x[start]
        x1 = origin.x() + (geometry.char_x[last + 1] if last + 1 < geometry.line_end[line]
                           else geometry.line_x[line] + geometry.line_width[line])
        boxes.append({"word": index, "text": geometry.text[start:end], "start": int(start),
                      "end": int(end), "line": line, "x0": float(x0), "x1": float(x1),
                      "y0": float(origin.y() + geometry.line_top[line]),
                      "y1": float(origin.y() + geometry.line_top[line] + geometry.line_height[line])})
    return boxes


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pointer", default="on")
    parser.add_argument("--prompt", default="Describe a quiet forest at dawn.")
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--height", type=int, default=560)
    args = parser.parse_args()

    from app.engine import ChatEngine, GenerationSettings
    from app.ui.layout_probe import global_rect
    from app.ui.main_window import MainWindow
    from feedback_store import FeedbackStore

    app = QApplication([])
    store = FeedbackStore.open()
    for signal in ("pointer", "gaze", "personalise"):
        store.consent.set(signal, signal == "pointer" and args.pointer == "on")
    store.settings.set("generation", GenerationSettings(seed=3, max_tokens=args.max_tokens,
                                                        temperature=0.2).to_dict())
    engine = ChatEngine()
    window = MainWindow(store, engine)
    window.resize(900, args.height)
    window.move(40, 40)
    window.show()
    state = {"next": 0}

    def reply_done(message):
        QTimer.singleShot(400, lambda: announce(message))

    def announce(message):
        window.capture.publish()
        area = global_rect(window)
        write("ready.json", {
            "message_id": message.id, "conversation_id": window.tree.id,
            "shown_reply_id": window.session.shown_id(message.id),
            "text": window.probe.browser(message.id).document().toPlainText(),
            "words": word_boxes(window, message.id),
            "line_boxes": window.probe.line_boxes(message.id),
            "indicator": window.collection_label.text(),
            "global_hooks": window.capture.global_ok,
            "window": [area.left(), area.top(), area.right() + 1, area.bottom() + 1],
            "chat_view": list(window.chat_view.viewport().mapToGlobal(
                window.chat_view.viewport().rect().center()).toTuple())})
        poll.start()

    def run(command: dict):
        kind = command["do"]
        if kind == "flush":
            window.capture.recorder.flush()
            store.flush()
            return {"pointer_samples": store.counts()["pointer_samples"]}
        if kind == "received":       # pointer events the recorder has been handed
            return {"received": window.capture.recorder.received,
                    "over_window": window.capture.recorder.over_window}
        if kind == "screenshot":
            window.capture.publish()
            store.flush()
            QGuiApplication.primaryScreen().grabWindow(0).save(command["path"])
            row = store._rows("SELECT layout FROM shown_replies WHERE message_id = ?",
                              (command["message_id"],))
            return {"stored_layout": json.loads(row[0]["layout"])}
        if kind == "pointer_consent":       # as the Privacy panel changes it
            store.consent.set("pointer", command["on"])
            window.apply_collection()
            return {"hotkey": window.capture.hotkey is not None}
        if kind == "pause":
            window.toggle_pause()
            return {"hotkey": window.capture.hotkey is not None}
        if kind == "minimize":
            window.showMinimized()
            return {}
        if kind == "restore":
            window.showNormal()
            return {}
        if kind == "quit":
            window.close()
            QTimer.singleShot(0, app.quit)
            return {}
        raise ValueError(kind)

    def check_commands():
        path = DIR / f"cmd-{state['next']}.json"
        if not path.exists():
            return
        command = json.loads(path.read_text())
        write(f"done-{state['next']}.json", run(command))
        state["next"] += 1

    poll = QTimer(interval=50)
    poll.timeout.connect(check_commands)
    window.reply_finished.connect(reply_done)
    window.input.setPlainText(args.prompt)
    QTimer.singleShot(300, window.send)
    code = app.exec()
    engine.close()
    store.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
