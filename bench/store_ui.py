"""Does the window wait on the store? The largest UI timer gap while a conversation
holding SAMPLES pointer samples is exported, then deleted (delete + compaction under a
new key), both started from the real MainWindow (offscreen Qt, real encrypted store).

    .venv/bin/python bench/store_ui.py [--samples 1000000] [--json]

A 5 ms QTimer runs on the UI thread; a gap is the time between two of its ticks. The
baseline is the same timer with nothing running.
"""
import argparse
import json
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
        window.close()
        engine.close()
        store.close()
    result = {"samples": args.samples, "delete_ui_max_gap_ms": round(delete_gap, 2),
              "export_ui_max_gap_ms": round(export_gap, 2), "delete_s": round(delete_s, 3),
              "export_s": round(export_s, 3), "ui_baseline_max_gap_ms": round(baseline, 2),
              "samples_left_after_delete": remaining}
    print_result(result, args.json, width=28)
    return 0


if __name__ == "__main__":
    sys.exit(main())
