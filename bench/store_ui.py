"""Does the window wait on the store? The largest UI timer gap while a conversation
holding SAMPLES pointer samples is exported, then deleted (delete + compaction under a
new key), both started from the real MainWindow (offscreen Qt, real encrypted store).
Then, in a history of CONVERSATIONS chats of 8 messages (≈ 2 KB each): the UI time the
conversation list takes after a turn moved a chat to the top (``list_turn_ui_ms``), and
the largest gap while a search for a word found nowhere scans every message
(``search_ui_max_gap_ms``; ``search_s`` until the result is shown).

    .venv/bin/python bench/store_ui.py [--samples 1000000] [--conversations 1500] [--json]

A 5 ms QTimer runs on the UI thread; a gap is the time between two of its ticks. The
baseline is the same timer with nothing running.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import GapMeter, print_result  # noqa: E402


def fill(store, conversation_id: str, samples: int, chunk: int = 50_000) -> None:
    import numpy as np
    from feedback_store import Conversation, Message, PointerSample
    store.conversations.create(Conversation(title="big", id=conversation_id))
    store.conversations.add_message(Message(conversation_id=conversation_id, role="user",
                                            content="a conversation read for a long time"))
    now_mono, now_wall = time.monotonic_ns(), time.time_ns()
    xs = np.random.default_rng(0).uniform(0, 1200, samples)
    for start in range(0, samples, chunk):
        batch = [PointerSample("s", "r", conversation_id, now_mono + i, now_wall + i, "move",
                               float(xs[i]), 300.0, i % 500, "pynput", i % 90, i % 12)
                 for i in range(start, min(start + chunk, samples))]
        while not store.samples.submit(batch):
            time.sleep(0.05)   # queue full: the writer is behind; wait, never drop
    store.flush()


def fill_history(store, conversations: int, messages_each: int = 8) -> None:
    """Chats of ``messages_each`` messages of ≈ 2 KB, written in one SQL statement each."""
    def insert(con):
        con.execute("INSERT INTO conversations (id, title, created_wall_ns, updated_wall_ns) "
                    "SELECT 'c' || i, 'chat ' || i, i, i FROM range(?) t(i)", [conversations])
        con.execute(
            "INSERT INTO messages (id, conversation_id, role, content, created_wall_ns) "
            "SELECT 'm' || i, 'c' || (i // ?), CASE WHEN i % 2 = 0 THEN 'user' ELSE "
            "'assistant' END, 'message ' || i || ' ' || repeat('how a river shapes the "
            "stone it runs over, ', 50), i FROM range(?) t(i)",
            [messages_each, conversations * messages_each])
    store.writer.call(insert)


def list_figures(window, store, conversations: int) -> dict:
    """The conversation list in a long history: after a turn, and while searching."""
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication
    turn_ms = []
    for n in range(5):
        store.conversations.rename(f"c{n}", f"renamed {n}")   # updated: moves to the top
        started = time.perf_counter()
        window._refresh_conversations()
        QApplication.processEvents()                           # and the list's layout
        turn_ms.append((time.perf_counter() - started) * 1000)
    meter, loop = GapMeter(), QEventLoop()
    window.conversation_search.found.connect(loop.quit)
    QTimer.singleShot(120_000, loop.quit)
    meter.start()
    started = time.perf_counter()
    window.search.setText("nowhere to be found")
    loop.exec()
    search_s = time.perf_counter() - started
    gap = meter.stop_ms()
    window.conversation_search.found.disconnect(loop.quit)
    assert window.conversation_list.count() == 0, "the search found something"
    return {"conversations": conversations, "list_turn_ui_ms": round(sorted(turn_ms)[2], 2),
            "search_ui_max_gap_ms": round(gap, 2), "search_s": round(search_s, 3)}


def run_job(app, window, start_job) -> tuple[float, float]:
    """Start a store job from the window; returns (UI max gap ms, wall seconds)."""
    from PySide6.QtCore import QEventLoop
    meter = GapMeter()
    loop = QEventLoop()
    errors = []
    window.store_job_finished.connect(lambda error: (errors.append(error), loop.quit()))
    meter.start()
    started = time.perf_counter()
    start_job()
    loop.exec()
    elapsed = time.perf_counter() - started
    gap = meter.stop_ms()
    window.store_job_finished.disconnect()
    if errors and errors[0]:
        raise SystemExit(f"store job failed: {errors[0]}")
    return gap, elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--conversations", type=int, default=1500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication
    from app.engine import ChatEngine
    from app.ui.main_window import MainWindow
    from feedback_store import FeedbackStore

    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory(prefix="glance-bench-") as home:
        store = FeedbackStore.open(Path(home) / "data")
        store.consent.set("pointer", True)
        fill(store, "big", args.samples)
        stored = store.counts()["pointer_samples"]      # what was written, not what was asked
        if stored != args.samples:
            raise SystemExit(f"only {stored} of {args.samples} samples were stored")
        engine = ChatEngine()
        window = MainWindow(store, engine)
        window.show()
        meter = GapMeter()
        meter.start()
        loop = QEventLoop()
        QTimer.singleShot(1000, loop.quit)
        loop.exec()
        baseline = meter.stop_ms()
        export_gap, export_s = run_job(app, window, lambda: window.export_data(
            str(Path(home) / "export")))
        delete_gap, delete_s = run_job(app, window, lambda: window.delete_conversation(
            "big", confirm=False))
        remaining = store.counts()["pointer_samples"]
        fill_history(store, args.conversations)
        window.search.setText("")
        window._refresh_conversations()      # the whole history listed, as after a start
        listing = list_figures(window, store, args.conversations)
        window.close()
        engine.close()
        store.close()
    result = {"samples": stored, "delete_ui_max_gap_ms": round(delete_gap, 2),
              "export_ui_max_gap_ms": round(export_gap, 2), "delete_s": round(delete_s, 3),
              "export_s": round(export_s, 3), "ui_baseline_max_gap_ms": round(baseline, 2),
              "samples_left_after_delete": remaining, **listing}
    print_result(result, args.json, width=28)
    return 0


if __name__ == "__main__":
    sys.exit(main())
