"""Gaze with two monitors, in a process of its own (the offscreen platform's screens are
set when the application starts: QT_QPA_PLATFORM=offscreen:configfile=FILE, written by
test_gaze_ui.py). Prints what it saw as one JSON line.

usage: python tests/two_screens_session.py VIDEO DATA_DIR   (GLANCE_HOME must be set)

The window starts on the left screen; gaze is calibrated there, the window goes to the
right screen (no calibration there yet), is calibrated there, goes back; then the next
start on the right screen. A calibration "made" here is one recorded from the video
(test_gaze_video.still_calibration) for that screen's geometry, handed to the real
calibration screen's ``finished`` signal as the screen hands its result.
"""
import json
import sys
import time
from pathlib import Path

from PySide6.QtWidgets import QApplication

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(video: str, data_dir: Path) -> int:
    app = QApplication(sys.argv[:1])
    from app.engine import ChatEngine
    from app.ui.gaze_calibration import attach_gaze
    from app.ui.main_window import MainWindow
    from feedback_store import FeedbackStore
    from gaze import calibration as cal
    from gaze.geometry import ScreenGeometry
    from test_gaze_video import still_calibration

    def wait_for(condition, timeout=60.0):
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.02)
        return condition()

    left, right = (g := [s.geometry() for s in app.screens()])[0], g[1]
    made = {name: still_calibration(video, screen=ScreenGeometry.from_dpi(
                r.width(), r.height(), 92.0, left_px=r.x(), top_px=r.y()))
            for name, r in (("left", left), ("right", right))}
    store = FeedbackStore.open()
    store.consent.set("gaze", True)
    engine = ChatEngine()
    window = MainWindow(store, engine)
    window.resize(600, 400)
    window.move(left.x() + 100, left.y() + 100)
    window.show()
    kw = {"source": video, "data_dir": data_dir, "tracker_kw": {"realtime": True, "loop": True}}
    gaze = attach_gaze(window, **kw)
    seen = {"screens": len(app.screens())}

    def calibrate_here(name):
        screen = gaze.calibrate("5")
        screen.finished.emit(made[name])          # as the screen hands its result
        screen.close()

    def tracker_screen():
        tracker = gaze.tracker
        return None if tracker is None or tracker.calibration is None \
            else list(cal.screen_of(tracker.calibration))

    def label_says(text):
        return wait_for(lambda: gaze.label.text() == text)

    calibrate_here("left")
    seen["left_calibrated"] = label_says("Gaze: on")
    corrections = gaze.tracker.recalibrator          # what clicks taught it on this screen
    window.move(right.x() + 100, right.y() + 100)   # no calibration on this screen yet
    seen["right_uncalibrated"] = label_says("Gaze: other screen")
    seen["corrections_kept"] = gaze.tracker.recalibrator is corrections   # same calibration
    calibrate_here("right")
    seen["right_calibrated"] = label_says("Gaze: on")
    seen["right_tracker_screen"] = tracker_screen()
    seen["files"] = sorted(p.name for p in (data_dir / "gaze").glob("calibration-*.json"))
    window.move(left.x() + 100, left.y() + 100)     # back: the first calibration again
    seen["back_left"] = label_says("Gaze: on") and wait_for(
        lambda: tracker_screen() == [left.x(), left.y(), left.width(), left.height()])
    seen["left_tracker_screen"] = tracker_screen()
    gaze.stop_and_wait()
    window.move(right.x() + 100, right.y() + 100)
    wait_for(lambda: window.screen().geometry() == right, 5.0)
    again = attach_gaze(window, **kw)               # the next start, on the right screen
    seen["next_start_screen"] = list(cal.screen_of(again.calibration)) if again.calibration else None
    again.stop_and_wait()
    window.close()
    engine.close()
    store.close()
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
