"""What the benchmarks share: the UI-thread gap meter and the way results are printed.

A stall the user feels is a gap between ticks of a 5 ms timer on the UI thread: every
benchmark that says ``ui_*_ms`` measures the largest such gap with :class:`GapMeter`.
"""
import json
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
        if self.last is not None:
            self.max_gap = max(self.max_gap, now - self.last)
        self.last = now

    def start(self):
        self.last, self.max_gap = None, 0.0
        self.timer.start()

    def stop_ms(self) -> float:
        """Stop; the largest gap in ms (NaN if the timer never ticked twice)."""
        self.timer.stop()
        return self.max_gap * 1000 if self.last is not None else float("nan")


def print_result(result: dict, as_json: bool, width: int = 26) -> None:
    """One JSON object on the last line (shared/BENCH.md), or one aligned line a key."""
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:{width}} {value}")
