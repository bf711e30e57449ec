"""How fast can capture go, and does it slow the window?

    .venv/bin/python bench/ingest.py [--seconds 5] [--json]

Three measurements on the real encrypted store:
1. ``store_*``: the store alone: PointerSample batches of 1,000 submitted as fast as the
   queue takes them (a full queue refuses and counts: nothing is dropped silently).
2. ``samples_per_s``: collector -> mapping -> store: raw pointer events fed to the
   PointerRecorder from a producer thread (clicks, which are never coalesced), each
   mapped against a real layout snapshot of a rendered reply, batched by the flusher
   thread and written by the store's writer. ``lost`` counts events that never reached
   a table row (refused or failed).
3. ``ui_*``: the chat window (offscreen) streams a reply while a 5 ms timer measures the
   UI thread, once without capture and once with the recorder fed at full rate from a
   thread; ``ui_added_ms`` is the difference of the largest gaps.
"""
import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import GapMeter, print_result  # noqa: E402


DEVICE_RATE_HZ = 1000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def store_alone(store, seconds: float) -> dict:
    from feedback_store import PointerSample
    now = time.monotonic_ns()
    batch = [PointerSample("s", "r", "c", now + i, now + i, "move", 1.0, 2.0, i, "bench", i, 0)
             for i in range(1000)]
    before = store.counts()["pointer_samples"]
    submitted = refused = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if store.samples.submit(batch):
            submitted += len(batch)
        else:
            refused += len(batch)
            time.sleep(0.001)
    store.flush()
    elapsed = time.perf_counter() - started
    stored = store.counts()["pointer_samples"] - before
    return {"store_samples_per_s": stored / elapsed, "store_lost": submitted - stored,
            "store_refused_queue_full": refused}


def pipeline(store, snapshot, seconds: float, rate: float) -> dict:
    from app.capture.recorder import PointerRecorder
    recorder = PointerRecorder(store, "bench")
    recorder.set_snapshot(snapshot)
    placed = snapshot.replies[0]
    x0, y0, x1, y1 = placed.clip
    before = store.counts()["pointer_samples"]
    recorder.start()
    started = time.perf_counter()
    produced = 0
    while time.perf_counter() - started < seconds:   # paced: `rate` events a second
        for i in range(500):
            recorder.event("click", x0 + (i * 7) % max(1, (x1 - x0)), y0 + (i % 40), "bench",
                           button="left")
        produced += 500
        delay = started + produced / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    recorder.stop()
    store.flush()
    elapsed = time.perf_counter() - started
    stored = store.counts()["pointer_samples"] - before
    mapped = store._rows("SELECT count(*) AS n FROM pointer_samples WHERE source = 'bench' "
                         "AND session_id = 'bench' AND text_offset IS NOT NULL")[0]["n"]
    return {"samples_per_s": stored / elapsed, "offered_per_s": rate,
            "lost": produced - stored, "samples": produced,
            "seconds": elapsed, "mapped_over_text": mapped}


def ui_gap(app, window, capture_feed: bool, seconds_cap: float = 30.0) -> float:
    from PySide6.QtCore import QEventLoop, QTimer
    meter = GapMeter()
    stop = threading.Event()
    fed = {"events": 0}
    feeder = None
    if capture_feed:
        recorder = window.capture.recorder
        placed = recorder.snapshot.replies[0]
        x0, y0, x1, y1 = placed.clip

        def feed():
            # The device's full rate: a 1,000 Hz (gaming) mouse, the fastest common one;
            # every event goes through mapping and the recorder as pynput's would.
            i = 0
            next_at = time.perf_counter()
            while not stop.is_set():
                recorder.event("move", x0 + (i * 7) % max(1, (x1 - x0)), y0 + i % 40, "bench")
                i += 1
                next_at += 1 / DEVICE_RATE_HZ
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            fed["events"] = i
        feeder = threading.Thread(target=feed, daemon=True)
    loop = QEventLoop()
    window.reply_finished.connect(loop.quit)
    QTimer.singleShot(int(seconds_cap * 1000), loop.quit)
    window.new_chat()      # every round the same work: one reply in a fresh chat
    window.input.setPlainText("Write four sentences about rivers.")
    meter.start()
    if feeder:
        feeder.start()
    window.send()
    loop.exec()
    stop.set()
    if feeder:
        feeder.join()
    gap = meter.stop_ms()
    window.reply_finished.disconnect(loop.quit)
    return gap, fed["events"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=60_000,
                        help="events a second offered to the recorder (target: 50,000 stored)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of one run without and one with capture (ABBA order)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from PySide6.QtWidgets import QApplication
    from app.engine import ChatEngine, GenerationSettings
    from app.ui.main_window import MainWindow
    from feedback_store import FeedbackStore

    app = QApplication.instance() or QApplication([])
    result = {}
    with tempfile.TemporaryDirectory(prefix="glance-ingest-") as home:
        store = FeedbackStore.open(Path(home) / "data")
        store.consent.set("pointer", True)
        store.settings.set("generation", GenerationSettings(seed=1, max_tokens=120).to_dict())
        engine = ChatEngine()
        window = MainWindow(store, engine)
        window.resize(1100, 720)
        window.show()
        # A rendered reply to map against (the real layout, through the real probe).
        ui_gap(app, window, capture_feed=False)   # a first reply to map against
        app.processEvents()   # widgets added to a shown window become visible here
        window.capture.publish()
        snapshot = window.capture.recorder.snapshot
        result.update(store_alone(store, args.seconds))
        result.update(pipeline(store, snapshot, args.seconds, args.rate))
        # Baseline: the same turn with capture off (no consent: the controller stops).
        # Alternating rounds; the medians of each round's largest gap are compared.
        baselines, captured = [], []

        def without_capture():
            store.consent.set("pointer", False)
            window.capture.sync()
            baselines.append(ui_gap(app, window, capture_feed=False)[0])

        def with_capture():
            store.consent.set("pointer", True)
            window.capture.sync()
            app.processEvents()
            window.capture.publish()
            gap, fed["events"] = ui_gap(app, window, capture_feed=True)
            captured.append(gap)
        fed = {"events": 0}
        for round_ in range(args.rounds):       # A B, B A, A B, ...: drift hits both alike
            for run in ((without_capture, with_capture) if round_ % 2 == 0
                        else (with_capture, without_capture)):
                run()
        baseline, with_capture = statistics.median(baselines), statistics.median(captured)
        result.update({"ui_baseline_ms": round(baseline, 2), "ui_max_ms": round(with_capture, 2),
                       "ui_added_ms": round(with_capture - baseline, 2),
                       "ui_baseline_rounds_ms": [round(g, 2) for g in baselines],
                       "ui_capture_rounds_ms": [round(g, 2) for g in captured],
                       "ui_capture_rate_hz": DEVICE_RATE_HZ, "ui_capture_events": fed["events"],
                       "peak_rss_mb": round(peak_rss_mb(), 1),
                       "stages": "collector event -> layout mapping -> recorder buffer -> "
                                 "flusher thread -> store queue -> writer -> encrypted DuckDB"})
        window.close()
        engine.close()
        store.close()
    for key in ("store_samples_per_s", "samples_per_s", "seconds"):
        result[key] = round(result[key], 1)
    print_result(result, args.json, width=26)
    return 0


if __name__ == "__main__":
    sys.exit(main())
