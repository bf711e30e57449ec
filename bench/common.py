"""What the benchmarks share: the UI-thread gap meter and the way results are printed.

A stall the user feels is a gap between ticks of a 5 ms timer on the UI thread: every
benchmark that says ``ui_*_ms`` measures the largest such gap with :class:`GapMeter`.
"""
import atexit
import json
import shutil
import tempfile
import time


class GapMeter:
    def __init__(self, interval_ms: int = 5):
        from PySide6.QtCore import QTimer
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.max_gap = 0.0

    def _tick(self):
        now = time.perf_counter()
        self.max_gap = max(self.max_gap, now - self.last)
        self.last = now

    def start(self):
        """From now: work done right after this call, before the event loop runs (a
        conversation opened, a message sent), is a gap like any other."""
        self.last, self.max_gap = time.perf_counter(), 0.0
        self.timer.start()

    def stop_ms(self) -> float:
        """Stop; the largest gap in ms, the one up to now included: the slot that ends a
        job (and quits the loop) runs its last work before the overdue tick could."""
        self.timer.stop()
        return max(self.max_gap, time.perf_counter() - self.last) * 1000


def print_result(result: dict, as_json: bool, width: int = 26) -> None:
    """One JSON object on the last line (shared/BENCH.md), or one aligned line a key."""
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:{width}} {value}")


def scratch_dir(prefix: str) -> str:
    """A temporary folder removed when the benchmark exits (a data folder it made holds
    a database, a key and, for the nightly run, a trained adapter: none of it is kept)."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path
