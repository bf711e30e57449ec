"""Gaze in the window (offscreen Qt): the Gaze… button without a camera, the calibration
screen run to its result (advice when it fails, gaze on when it passes), the debug
overlay, and points reaching the app's listeners."""
import threading
import time

import numpy as np
import pytest
from conftest import ARTIFACTS, require
from PySide6.QtCore import QRect, Qt
from PySide6.QtWidgets import QApplication, QToolBar

from gaze.points import GazePoint


def _have_vision() -> bool:
    try:
        import cv2  # noqa: F401
        import mediapipe  # noqa: F401
        import skimage  # noqa: F401
        return True
    except ImportError:
        return False


def _gaze_button(window):
    return [a for tb in window.findChildren(QToolBar) for a in tb.actions()
            if a.text() == "Gaze…"]


def test_gaze_button_without_a_camera_says_so_and_the_app_keeps_running(qtbot, window,
                                                                          tmp_path):
    require(_have_vision(), "OpenCV and MediaPipe (the gaze extra) are needed")
    from app.ui.gaze_calibration import attach_gaze
    controller = attach_gaze(window, source=99, data_dir=tmp_path)   # replaces the window's own
    assert len(_gaze_button(window)) == 1 and window.gaze is controller
    assert window.gaze_recorder.point in controller._listeners       # points still stored
    # Without the gaze consent the camera stays off and the user is told where to turn it on.
    window.session.store.consent.set("gaze", False)
    controller.action.trigger()
    assert controller.tracker is None
    assert "Privacy" in window.statusBar().currentMessage()
    window.session.store.consent.set("gaze", True)
    controller.action.trigger()
    qtbot.waitUntil(lambda: controller.label.text() == "Gaze: no camera", timeout=30_000)
    assert "No camera was found" in window.statusBar().currentMessage()
    assert controller.screen_widget is None                 # no calibration without a camera
    assert not window.camera_dot.isVisibleTo(window)        # the red dot: camera not open
    window.input.setPlainText("still works")
    assert window.input.toPlainText() == "still works" and window.isVisible()
    controller.stop()
    assert controller.label.text() == "Gaze: off"


class SimulatedCamera:
    """Stands in for the webcam and the person: a thread that, 30 times a second, renders
    face-mesh landmarks of a simulated user (gaze.simulate) looking at the target the
    calibration screen shows, and hands them to the frame listeners like GazeTracker."""

    def __init__(self, screen_fn, noise=1.0, seed=0):
        from gaze import simulate as S
        self.S = S
        self.face = S.face_in_mm(S.astronaut_face())
        self.rng = np.random.default_rng(seed)
        self.user = S.SimUser.random(self.rng, self.face)
        self.screen_fn = screen_fn
        self.noise = noise
        self.listeners = []
        self.frames = 0
        self.face_in_view = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def health(self):
        from gaze.points import Health
        return Health("not_calibrated", "Simulated camera.")

    def add_frame_listener(self, fn):
        self.listeners.append(fn)

    def remove_frame_listener(self, fn):
        self.listeners.remove(fn)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(5)

    def _run(self):
        from gaze.synthetic import rotation_matrix
        looking = None
        while not self._stop.wait(1 / 30):
            widget = self.screen_fn()
            target = widget.current_target() if widget is not None else None
            if target is not None:
                looking = target[2]
            if looking is None or widget is None:
                continue
            scene = self.S.Scene(widget.geometry_)
            r = rotation_matrix(*np.radians(self.rng.normal(0, 0.3, 3)))
            t = np.array([0.0, 90.0, widget.geometry_.distance_mm]) + self.rng.normal(0, 1, 3)
            lm = scene.landmarks(self.user, r, t, looking, self.rng, self.noise, 0.2)
            self.frames += 1
            for fn in list(self.listeners):
                fn(lm, scene.width, scene.height, False, time.monotonic())


def simulated_calibration(qtbot, layout: str, **timing):
    """A full-screen calibration watched by a simulated user, begun: (its widget, the
    simulated camera, the list its ``finished`` results go to). Stop the camera after."""
    require(_have_vision(), "MediaPipe and scikit-image are needed for the simulated face")
    from app.ui.gaze_calibration import CalibrationScreen
    holder = {}
    camera = SimulatedCamera(lambda: holder.get("w"))
    widget = CalibrationScreen(camera, QApplication.primaryScreen(), layout, **timing)
    holder["w"] = widget
    qtbot.addWidget(widget)
    widget.showFullScreen()
    camera.start()
    results = []
    widget.finished.connect(results.append)
    widget.begin(layout)
    return widget, camera, results


def test_calibration_screen_passes_with_a_simulated_user(qtbot):
    widget, camera, results = simulated_calibration(
        qtbot, "9", dwell_s=1.2, move_s=0.15, settle_s=0.3, kinds=("ridge", "kernel"))
    # (0.9 s of each dwell is recorded: at 30 frames a second, and still the 5 clear views
    # a target needs when a busy machine lets the face mesh read 6 a second)
    try:
        qtbot.waitUntil(lambda: widget.state == "result", timeout=120_000)
        assert widget.error is None, widget.error
        report = widget.report
        assert report.passed and report.accuracy_deg < 2.5, report
        text = widget.text.text()
        assert f"Accuracy {report.accuracy_deg:.1f}°" in text and " px)" in text
        assert "kernel ridge" in text and "leave-one-target-out" in text
        assert widget.done_button.isVisibleTo(widget)
        ARTIFACTS.mkdir(exist_ok=True)
        widget.grab().save(str(ARTIFACTS / "gaze_calibration_passed.png"))
        widget.done_button.click()
        assert len(results) == 1 and results[0] is widget.result and results[0].enabled
    finally:
        camera.stop()


def test_a_calibration_closed_while_it_fits_stays_closed(qtbot):
    """Cancelled (or consent withdrawn) while the fit still runs: the fit's result, when it
    comes, must not start the validation targets on a screen that is closed."""
    widget, camera, results = simulated_calibration(
        qtbot, "5", dwell_s=0.6, move_s=0.1, settle_s=0.2, kinds=("ridge",))
    try:
        fit = widget.recorder.fit
        fitting, fitted = threading.Event(), threading.Event()

        def slow_fit(*args, **kwargs):      # the fit itself, begun a moment later
            fitting.set()
            time.sleep(2.0)
            try:
                return fit(*args, **kwargs)
            finally:
                fitted.set()
        widget.recorder.fit = slow_fit
        qtbot.waitUntil(fitting.is_set, timeout=60_000)
        widget.cancel()
        # Closed at once: Esc waited for the fit (up to 10 s), the window frozen meanwhile.
        assert results == [None] and not fitted.is_set()
        qtbot.waitUntil(fitted.is_set, timeout=60_000)
        qtbot.wait(500)                     # room for a queued result to arrive
        assert results == [None]
        assert widget.state == "fitting" and not widget._timer.isActive()
        assert not widget.isVisible()
    finally:
        camera.stop()


def test_a_calibration_without_a_camera_cannot_be_started(qtbot):
    """Gaze → Calibrate with the camera missing ran all the dots, for nothing, and then
    said there were too few views of the face."""
    require(_have_vision(), "OpenCV and MediaPipe are needed for the tracker")
    from app.ui.gaze_calibration import CalibrationScreen
    from gaze.tracker import GazeTracker
    tracker = GazeTracker("/dev/video97", None)        # no such camera
    tracker.start()
    try:
        widget = CalibrationScreen(tracker, QApplication.primaryScreen(), "9")
        qtbot.addWidget(widget)
        widget.showFullScreen()
        qtbot.waitUntil(lambda: tracker.health().state == "no_camera", timeout=30_000)
        qtbot.waitUntil(lambda: not widget.start_button.isEnabled(), timeout=30_000)
        assert widget.face_status.text().startswith("✗") and not widget.quick_button.isEnabled()
        widget.begin("9")
        assert widget.state == "intro" and widget.recorder is None
        widget.cancel()
    finally:
        tracker.stop()


def test_calibration_that_fails_explains_and_offers_a_retry(qtbot, tmp_path):
    """A real replay: the astronaut photograph never moves her eyes, so whatever the
    targets, the estimate cannot follow: validation fails, advice is shown, gaze stays off."""
    require(_have_vision(), "OpenCV, MediaPipe and scikit-image are needed")
    from app.ui.gaze_calibration import CalibrationScreen
    from gaze import synthetic
    from gaze.tracker import GazeTracker
    path = synthetic.write_video(tmp_path / "still.avi", [],
                                 frames=[synthetic.base_frame()] * 30)
    tracker = GazeTracker(path, None, realtime=True, loop=True)
    tracker.start()
    try:
        widget = CalibrationScreen(tracker, QApplication.primaryScreen(), "5", dwell_s=1.2,
                                   move_s=0.1, settle_s=0.25, kinds=("ridge",))
        qtbot.addWidget(widget)
        widget.showFullScreen()
        qtbot.waitUntil(lambda: "face is in view" in widget.face_status.text(), timeout=60_000)
        results = []
        widget.finished.connect(results.append)
        widget.begin("5")
        qtbot.waitUntil(lambda: widget.state == "result", timeout=120_000)
        assert widget.error is None, widget.error
        assert not widget.report.passed
        text = widget.text.text()
        assert "Accuracy" in text and "gaze stays off" in text and "What may help" in text
        assert widget.retry_button.isVisibleTo(widget)
        assert not widget.done_button.isVisibleTo(widget)
        ARTIFACTS.mkdir(exist_ok=True)
        widget.grab().save(str(ARTIFACTS / "gaze_calibration_failed.png"))
        widget.cancel()
        assert results == [None]
    finally:
        assert tracker.stop()


def test_overlay_draws_the_point_fixations_and_a_heatmap(qtbot):
    from app.ui.gaze_overlay import GazeOverlay
    overlay = GazeOverlay(QRect(0, 0, 800, 600), px_per_degree=38.0)
    qtbot.addWidget(overlay)
    for i in range(3):
        overlay.add_point(GazePoint(i, i, 200.0, 150.0, "fixation", 1.0, 300.0))
    overlay.add_point(GazePoint(5, 5, 600.0, 150.0, "fixation", 1.0, 120.0))
    for i in range(10):
        overlay.add_point(GazePoint(i, i, 400.0 + i, 400.0, "raw", 1.0))
    overlay.set_cursor(410.0, 405.0)
    image = overlay.grab().toImage()
    assert image.pixelColor(200, 150).alpha() > 0          # heat at the long fixations
    assert image.pixelColor(760, 560).alpha() == 0         # nothing where nobody looked
    hot, warm = overlay.heat[150 // 12, 200 // 12], overlay.heat[150 // 12, 600 // 12]
    assert hot > 3 * warm > 0                              # weighted by duration
    red = image.pixelColor(410, 405)
    assert red.red() > 150 and red.green() < 120           # the live cursor
    ARTIFACTS.mkdir(exist_ok=True)
    image.save(str(ARTIFACTS / "gaze_overlay.png"))
    overlay.clear()
    assert overlay.heat.max() == 0


def test_the_overlay_on_a_second_screen_draws_rings_where_the_fixations_fell(qtbot):
    """At (0, 0) a point's screen position and its place on the overlay are the same: one
    not moved into the overlay's own pixels drew nothing on a second monitor. The rings
    are drawn too (the heat alone filled the pixel the test above looks at)."""
    from app.ui.gaze_overlay import GazeOverlay
    overlay = GazeOverlay(QRect(1920, 0, 800, 600), px_per_degree=38.0)   # a right-hand monitor
    qtbot.addWidget(overlay)
    overlay.add_point(GazePoint(1, 1, 1920 + 200.0, 150.0, "fixation", 1.0, 300.0))
    assert overlay.heat[150 // 12, 200 // 12] == overlay.heat.max() > 0
    with_ring = overlay.grab().toImage()
    overlay.fixations.clear()                            # the same heat, no ring
    without = overlay.grab().toImage()
    ring = [(200 + 21 + dx, 150) for dx in (-1, 0, 1)]    # radius 6 + 300 ms / 20
    assert any(with_ring.pixelColor(x, y) != without.pixelColor(x, y) for x, y in ring)


def test_points_reach_the_app_and_the_overlay_from_a_replayed_camera(qtbot, window, tmp_path):
    require(_have_vision(), "OpenCV, MediaPipe and scikit-image are needed")
    from app.ui import gaze_calibration as gc
    from gaze import calibration as C
    from gaze import synthetic
    from test_gaze_video import still_calibration
    base = synthetic.base_frame()
    path = synthetic.write_video(tmp_path / "still.avi", [], frames=[base] * 40)
    window.session.store.consent.set("gaze", True)
    controller = gc.attach_gaze(window, source=path, data_dir=tmp_path)
    calibration = still_calibration(path, screen=window_screen(window))
    C.save(calibration, controller.calibration_file())
    controller.calibration = C.load(controller.calibration_file())
    received = []
    controller.add_point_listener(received.append)
    controller.overlay_action.setChecked(True)
    assert controller.start()
    qtbot.waitUntil(lambda: any(p.kind == "fixation" for p in received), timeout=60_000)
    raw = [p for p in received if p.kind == "raw"]
    assert raw and all(isinstance(p, GazePoint) for p in raw)
    # The overlay gets points through a queued signal on the UI thread: wait for both
    # kinds (asserting fixations right after the first raw point raced the queue).
    qtbot.waitUntil(lambda: len(controller.overlay.raw) > 0 and len(controller.overlay.fixations) >= 1,
                    timeout=30_000)
    controller.overlay_action.setChecked(False)
    controller.stop()
    assert controller.tracker is None


def test_reading_offsets_move_the_running_trackers_points(qtbot, window, tmp_path):
    """The window hands the recorder's reading measurements to its gaze controller (the
    one attached last), and the running tracker's next points move: a still face on a replayed camera gives the
    same estimate frame after frame, until reading says it lands 40 px below the lines
    read (half of it is taken at once)."""
    require(_have_vision(), "OpenCV, MediaPipe and scikit-image are needed")
    from app.ui import gaze_calibration as gc
    from gaze import calibration as C
    from gaze import synthetic
    from feedback_store.reading_lines import ReadingOffset
    from test_gaze_video import still_calibration
    path = synthetic.write_video(tmp_path / "still.avi", [], frames=[synthetic.base_frame()] * 40)
    window.session.store.consent.set("gaze", True)
    controller = gc.attach_gaze(window, source=path, data_dir=tmp_path,
                                tracker_kw={"realtime": True, "loop": True})
    calibration = still_calibration(path, screen=window_screen(window))
    C.save(calibration, controller.calibration_file())
    controller.calibration = C.load(controller.calibration_file())
    received = []
    controller.add_point_listener(received.append)
    assert controller.start()
    try:
        qtbot.waitUntil(lambda: len([p for p in received if p.kind == "raw"]) >= 10, timeout=60_000)
        before = np.median([p.y for p in received if p.kind == "raw"])
        # Through the window's recorder, as its meter hands a measurement over (the
        # controller it reaches is the one attached last).
        window.gaze_recorder.on_reading_offset(ReadingOffset(40.0, time.monotonic_ns()))
        assert controller.tracker.recalibrator.reading_dy == 20.0
        seen = len(received)
        qtbot.waitUntil(lambda: len([p for p in received[seen:] if p.kind == "raw"]) >= 10,
                        timeout=60_000)
        after = np.median([p.y for p in received[seen + 1:] if p.kind == "raw"])
        assert after == pytest.approx(before - 20.0, abs=2.0)
    finally:
        controller.stop()


def test_turning_gaze_off_does_not_wait_for_the_camera_to_close(qtbot, window, tmp_path):
    """Closing a camera can take seconds in its driver. "Turn gaze off", the pause shortcut
    and a withdrawn consent waited for it on the UI thread: the window froze meanwhile.
    It now closes on its own thread; no point is used from the moment gaze is off, and
    the red dot stays on until the camera has really closed."""
    require(_have_vision(), "OpenCV and MediaPipe (the gaze extra) are needed")
    from app.ui.gaze_calibration import attach_gaze
    from gaze import calibration as C
    from gaze import synthetic
    from test_gaze_video import still_calibration
    path = synthetic.write_video(tmp_path / "face.avi", [], frames=[synthetic.base_frame()] * 30)
    window.session.store.consent.set("gaze", True)
    controller = attach_gaze(window, source=str(path), data_dir=tmp_path,
                             tracker_kw={"realtime": True, "loop": True})
    C.save(still_calibration(path, screen=window_screen(window)), controller.calibration_file())
    controller.calibration = C.load(controller.calibration_file())
    received = []
    controller.add_point_listener(received.append)
    assert controller.start()
    qtbot.waitUntil(lambda: window.camera_dot.isVisible() and bool(received), timeout=60_000)
    tracker = controller.tracker
    let_go = threading.Event()
    driver_stop = tracker.stop

    def slow_driver(timeout=3.0):       # a driver that takes its time to release the camera
        let_go.wait(60)
        return driver_stop(timeout)
    tracker.stop = slow_driver
    frames = tracker.frames
    controller.stop()
    assert controller.tracker is None and controller.label.text() == "Gaze: off"
    assert window.camera_dot.isVisible() and tracker.running      # still open: the dot says so
    assert window.collection_label.text() == "Not recording"      # but nothing is recorded
    qtbot.waitUntil(lambda: tracker.frames > frames + 2, timeout=30_000)   # it still reads
    used, frames = len(received), tracker.frames     # (a point under way at the stop is in)
    qtbot.waitUntil(lambda: tracker.frames > frames + 5, timeout=30_000)
    assert len(received) == used                                   # but nothing is used
    let_go.set()
    qtbot.waitUntil(lambda: not window.camera_dot.isVisible(), timeout=30_000)
    assert not tracker.running
    # On again at once: the new camera opens once the old one has let go.
    assert controller.start()
    qtbot.waitUntil(window.camera_dot.isVisible, timeout=30_000)
    controller.stop_and_wait()
    assert not window.camera_dot.isVisible()


def test_a_close_the_user_takes_back_leaves_gaze_on(qtbot, window, tmp_path, monkeypatch):
    """The window's close button asks first when a message is typed and not sent. Gaze
    was turned off by the close event before that question: answering No left the window
    open and the camera off."""
    require(_have_vision(), "OpenCV and MediaPipe (the gaze extra) are needed")
    from PySide6.QtGui import QCloseEvent
    from PySide6.QtWidgets import QMessageBox
    from app.ui.gaze_calibration import attach_gaze
    from gaze import synthetic
    path = synthetic.write_video(tmp_path / "face.avi", [], frames=[synthetic.base_frame()] * 30)
    window.session.store.consent.set("gaze", True)
    controller = attach_gaze(window, source=str(path), data_dir=tmp_path,
                             tracker_kw={"realtime": True, "loop": True})
    assert controller.start()
    qtbot.waitUntil(window.camera_dot.isVisible, timeout=30_000)
    tracker = controller.tracker
    window.input.setPlainText("A message I am still writing")
    answer = [QMessageBox.StandardButton.No]
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: answer[0])
    closing = QCloseEvent()
    monkeypatch.setattr(closing, "spontaneous", lambda: True)     # the window's close button
    QApplication.sendEvent(window, closing)
    assert not closing.isAccepted() and window.isVisible()
    assert controller.tracker is tracker and tracker.running and window.camera_dot.isVisible()
    answer[0] = QMessageBox.StandardButton.Yes
    visible_while_the_camera_closed = []
    driver_stop = tracker.stop

    def stop(timeout=3.0):
        visible_while_the_camera_closed.append(window.isVisible())
        return driver_stop(timeout)
    tracker.stop = stop
    window.close()
    assert controller.tracker is None and not tracker.running     # closed with the window
    # The window went at once: it did not stay on screen, frozen, while the camera closed.
    assert visible_while_the_camera_closed[:1] == [False]


def test_the_camera_chosen_in_the_menu_is_used_with_its_own_calibration(qtbot, window, tmp_path,
                                                                        monkeypatch):
    """Gaze… → Camera: another camera is used at once and at the next start, with the
    calibration made for it; one without a calibration waits for one (the eyes seen from
    elsewhere would map to the wrong place). GLANCE_CAMERA rules over the choice."""
    require(_have_vision(), "OpenCV and MediaPipe (the gaze extra) are needed")
    from app.ui.gaze_calibration import attach_gaze
    from gaze import calibration as C
    from gaze import camera as cameras
    from gaze import synthetic
    from test_gaze_video import still_calibration
    monkeypatch.delenv("GLANCE_CAMERA", raising=False)
    first = str(synthetic.write_video(tmp_path / "first.avi", [],
                                      frames=[synthetic.base_frame()] * 30))
    second = str(synthetic.write_video(tmp_path / "second.avi", [],
                                       frames=[synthetic.base_frame()] * 30))
    kw = {"data_dir": tmp_path, "tracker_kw": {"realtime": True, "loop": True}}
    window.session.store.consent.set("gaze", True)
    controller = attach_gaze(window, source=first, **kw)
    C.save(still_calibration(first, screen=window_screen(window)), controller.calibration_file())
    controller.calibration = C.load(controller.calibration_file())
    assert controller.start()
    qtbot.waitUntil(window.camera_dot.isVisible, timeout=30_000)

    controller.use_camera(second)                 # no calibration for it yet
    assert controller.tracker is None and controller.calibration is None
    assert controller.label.text() == "Gaze: not calibrated"
    assert "Calibrate" in window.statusBar().currentMessage()
    assert window.session.store.settings.get(cameras.SETTING) == second
    qtbot.waitUntil(lambda: not window.camera_dot.isVisible(), timeout=30_000)

    controller.use_camera(first)                  # back to the calibrated one: on again
    assert controller.source == first and controller.calibration is not None
    assert controller.tracker is not None and controller.tracker.running
    qtbot.waitUntil(window.camera_dot.isVisible, timeout=30_000)

    again = attach_gaze(window, **kw)             # the next start uses the chosen camera
    assert again.source == first and again.calibration is not None
    again.fill_camera_menu()                      # the cameras this machine has, or says none
    entries = [a.text() for a in again.camera_menu.actions()]
    found = cameras.list_cameras()
    assert entries == ([f"{c.name} ({c.device})" for c in found] or ["No camera found"])
    again.stop_and_wait()

    monkeypatch.setenv("GLANCE_CAMERA", second)
    ruled = attach_gaze(window, **kw)
    assert ruled.source == second
    ruled.fill_camera_menu()
    assert [(a.text(), a.isEnabled()) for a in ruled.camera_menu.actions()] == [
        (f"{second} (set by GLANCE_CAMERA)", False)]
    ruled.stop_and_wait()


# Tests that open gaze screens from the window (window.screen()) come last: once such a
# window is destroyed, PySide may hand a later test a dead QScreen wrapper for the same
# screen (seen as "Internal C++ object (QScreen) already deleted" in the simulated camera).
def uncalibrated_gaze(window, tmp_path):
    """Gaze allowed, a replayed camera (a still face, looping), no calibration yet."""
    require(_have_vision(), "OpenCV and MediaPipe (the gaze extra) are needed")
    from app.ui.gaze_calibration import attach_gaze
    from gaze import synthetic
    path = synthetic.write_video(tmp_path / "face.avi", [], frames=[synthetic.base_frame()] * 30)
    window.session.store.consent.set("gaze", True)
    return attach_gaze(window, source=str(path), data_dir=tmp_path,
                       tracker_kw={"realtime": True, "loop": True})


def test_stopping_gaze_ends_an_open_calibration(qtbot, window, tmp_path):
    """Pausing or withdrawing the consent during a calibration closed the camera but left
    the full-screen calibration running over it, to end in "too few clear views"; the next
    Calibrate handed back that same dead screen."""
    controller = uncalibrated_gaze(window, tmp_path)
    screen = controller.calibrate("5")
    assert screen is not None and screen.isVisible()
    controller.stop()
    assert controller.screen_widget is None and not screen.isVisible()
    again = controller.calibrate("5")
    assert again is not None and again is not screen and again.isVisible()
    controller.stop()


def test_a_new_screen_layout_stops_using_the_old_calibration(qtbot, window, tmp_path, monkeypatch):
    """Calibrations are per screen layout, but the layout was read once at start: with a
    monitor plugged in on the left, points kept landing where the screens used to be (and
    were stored). The offscreen platform cannot plug a screen in, so the layout Qt reports
    is replaced; the controller's reaction is the real one."""
    require(_have_vision(), "OpenCV, MediaPipe and scikit-image are needed")
    from app.ui import gaze_calibration as gc
    from gaze import calibration as C
    from gaze import synthetic
    from feedback_store.reading_lines import ReadingOffset
    from test_gaze_video import still_calibration
    path = synthetic.write_video(tmp_path / "still.avi", [], frames=[synthetic.base_frame()] * 40)
    window.session.store.consent.set("gaze", True)
    controller = gc.attach_gaze(window, source=path, data_dir=tmp_path,
                                tracker_kw={"realtime": True, "loop": True})
    C.save(still_calibration(path, screen=window_screen(window)), controller.calibration_file())
    controller.calibration = C.load(controller.calibration_file())
    assert controller.start() and controller.tracker.calibration is controller.calibration
    laptop = gc.screen_layout()
    docked = [{"x": 0, "y": 0, "w": 2560, "h": 1440, "dpr": 1.0},
              *[dict(s, x=s["x"] + 2560) for s in laptop]]
    monkeypatch.setattr(gc, "screen_layout", lambda: docked)
    tracker = controller.tracker
    controller._poll()
    assert controller.calibration is None and tracker.calibration is None
    # Nothing to map the eyes with: the camera goes off (it stayed on, red dot and all).
    assert controller.tracker is None and controller.label.text() == "Gaze: off"
    assert "The screens changed" in window.statusBar().currentMessage()
    monkeypatch.setattr(gc, "screen_layout", lambda: laptop)      # undocked again
    controller._poll()
    assert controller.calibration is not None and controller.calibration.enabled
    assert controller.tracker is not None                          # back on by itself
    assert controller.tracker.calibration is controller.calibration
    # A calibration that ends after the screens changed under it is not kept: it was
    # fitted on the old geometry and would be saved under the new layout's file.
    screen = controller.calibrate("5")
    assert screen is not None
    monkeypatch.setattr(gc, "screen_layout", lambda: docked)
    controller._calibrated(object())          # whatever it fitted: it is not looked at
    assert controller.calibration is None     # none was made for the docked layout
    assert not C.calibration_path(tmp_path, gc.getpass.getuser(), str(path), docked).exists()
    assert window.statusBar().currentMessage().startswith("The screens changed")
    screen.cancel()
    controller.stop()


def test_degrees_are_the_same_on_a_hidpi_screen():
    """Gaze, widgets and the pointer are in logical pixels. Qt's physicalDotsPerInch is
    already in logical dots; dividing it by the pixel ratio again made a 2.5° error read
    as 5° on a HiDPI screen (calibration then never passed the 4° threshold)."""
    import json
    import os
    import subprocess
    import sys
    from conftest import ROOT
    code = ("import json\n"
            "from PySide6.QtWidgets import QApplication\n"
            "from app.ui.gaze_calibration import screen_geometry\n"
            "app = QApplication([])\n"
            "screen = app.primaryScreen()\n"
            "g = screen_geometry(screen)\n"
            "print(json.dumps({'dpr': screen.devicePixelRatio(), 'width_px': g.width_px,\n"
            "                  'width_mm': screen.physicalSize().width(),\n"
            "                  'px_per_mm': g.px_per_mm}))\n")
    found = {}
    for scale in ("1", "2"):
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QT_SCALE_FACTOR=scale)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr
        found[scale] = json.loads(out.stdout.strip().splitlines()[-1])
    one, two = found["1"], found["2"]
    assert two["dpr"] == 2 and two["width_px"] * 2 == one["width_px"]
    assert two["width_mm"] == one["width_mm"]            # the same physical screen
    # A logical px at ratio 2 is two device px: half as many of them to the millimetre.
    assert abs(one["px_per_mm"] - one["width_px"] / one["width_mm"]) < 1e-9
    assert abs(2 * two["px_per_mm"] - one["px_per_mm"]) < 1e-9


def window_screen(window):
    """The geometry of the screen the window is on: a calibration made for another maps
    to nothing the window uses ("Gaze: other screen")."""
    from app.ui.gaze_calibration import screen_geometry
    return screen_geometry(window.screen())


def _replayed_gaze(window, tmp_path, screen=None):
    """A calibrated camera (a replayed video of a still face), gaze allowed: what
    attach_gaze would start by itself at launch. Calibrated for the window's screen,
    or ``screen``."""
    from app.ui.gaze_calibration import screen_layout
    from gaze import calibration as C
    from gaze import synthetic
    from test_gaze_video import still_calibration
    import getpass
    path = synthetic.write_video(tmp_path / "face.avi", [], frames=[synthetic.base_frame()] * 30)
    window.session.store.consent.set("gaze", True)
    C.save(still_calibration(path, screen=screen or window_screen(window)),
           C.calibration_path(tmp_path, getpass.getuser(), str(path), screen_layout()))
    return str(path)


def test_gaze_turned_off_stays_off_at_the_next_start(qtbot, window, tmp_path):
    """"Turn gaze off" was forgotten: at the next start the camera came on again."""
    require(_have_vision(), "OpenCV, MediaPipe and scikit-image are needed")
    from app.ui.gaze_calibration import attach_gaze
    source = _replayed_gaze(window, tmp_path)
    kw = {"source": source, "data_dir": tmp_path, "tracker_kw": {"realtime": True, "loop": True}}
    first = attach_gaze(window, **kw)
    qtbot.waitUntil(lambda: first.tracker is not None, timeout=30_000)   # on by itself
    first.off_action.trigger()
    first.stop_and_wait()
    second = attach_gaze(window, **kw)                 # the next start
    qtbot.wait(2500)                                   # (it starts 1.5 s after the window)
    assert second.tracker is None
    second.activate()                                  # Gaze…: on again, and wanted again
    qtbot.waitUntil(lambda: second.tracker is not None, timeout=30_000)
    second.stop_and_wait()
    third = attach_gaze(window, **kw)
    qtbot.waitUntil(lambda: third.tracker is not None, timeout=30_000)
    third.stop_and_wait()


def test_gaze_comes_back_when_collection_resumes(qtbot, window, tmp_path):
    """A pause stopped the camera; resuming said "Collection resumed." and left it off."""
    require(_have_vision(), "OpenCV, MediaPipe and scikit-image are needed")
    from app.ui.gaze_calibration import attach_gaze
    source = _replayed_gaze(window, tmp_path)
    gaze = attach_gaze(window, source=source, data_dir=tmp_path,
                       tracker_kw={"realtime": True, "loop": True})
    window.gaze = gaze
    qtbot.waitUntil(lambda: gaze.tracker is not None, timeout=30_000)
    window.toggle_pause()
    qtbot.waitUntil(lambda: gaze.tracker is None, timeout=30_000)      # paused: off
    window.toggle_pause()
    qtbot.waitUntil(lambda: gaze.tracker is not None, timeout=30_000)  # resumed: on again
    gaze.stop_and_wait()


def test_a_calibration_closed_by_the_window_manager_ends_as_cancelled(qtbot):
    """Alt+F4 closed the screen without ending it: the window kept waiting for its result
    and every Calibrate did nothing from then on."""
    widget, camera, results = simulated_calibration(
        qtbot, "5", dwell_s=0.6, move_s=0.1, settle_s=0.2, kinds=("ridge",))
    try:
        widget.close()
        assert results == [None] and not widget._timer.isActive()
        widget.cancel()                     # ended once only
        assert results == [None]
    finally:
        camera.stop()


def test_the_debug_overlay_goes_with_gaze(qtbot, window):
    """Left on screen after "Turn gaze off" (or a pause), its frozen dot looked like
    tracking still running."""
    gaze = window.gaze
    gaze.overlay_action.setChecked(True)
    assert gaze.overlay is not None and gaze.overlay.isVisible()
    gaze.turn_off()
    assert gaze.overlay is None and not gaze.overlay_action.isChecked()


def test_a_first_calibration_cancelled_turns_the_camera_off(qtbot, window, tmp_path):
    """Without a calibration the open camera can give no gaze point, yet the red dot and
    "recording" stayed on."""
    controller = uncalibrated_gaze(window, tmp_path)
    screen = controller.calibrate("5")
    assert screen is not None and controller.tracker is not None
    screen.cancel()
    assert controller.tracker is None and controller.label.text() == "Gaze: off"
    controller.stop_and_wait()
    assert not window.camera_dot.isVisible()


def test_a_gaze_health_message_takes_the_status_bar_once(qtbot, window):
    """Looking down at the keyboard made "face not seen" take the status bar for 15 s each
    time, over what the window had to say; the gaze label says it every time."""
    from gaze.points import Health

    class TrackerStandIn:          # the health a camera reports (the tracker is not tested)
        camera_open = running = True
        now = Health("ok", "Tracking.")

        def health(self):
            return self.now
    window.session.store.consent.set("gaze", True)
    gaze, tracker = window.gaze, TrackerStandIn()
    gaze.tracker = tracker
    said = []
    for state in ("face_lost", "ok", "face_lost", "ok", "face_lost"):
        window.statusBar().clearMessage()
        tracker.now = Health(state, "Your face is not seen." if state != "ok" else "Tracking.")
        gaze._poll_health()
        said.append(window.statusBar().currentMessage())
        assert gaze.label.toolTip().startswith(tracker.now.message)   # said every time
    assert said == ["Your face is not seen.", "", "", "", ""]
    gaze.tracker = None
    window.set_collector("gaze", None)


def test_the_dots_of_a_recalibration_are_not_stored_as_reading(qtbot, window, tmp_path):
    """While recalibrating, the old calibration keeps mapping: the eyes following each
    dot were stored as a fixation of a second on the reply words behind the screen.
    Calibrating also turns gaze on, as Gaze… does: after "Turn gaze off" and Calibrate,
    gaze did not come back after a pause, nor at the next start."""
    require(_have_vision(), "OpenCV, MediaPipe and scikit-image are needed")
    from app.ui.gaze_calibration import attach_gaze
    source = _replayed_gaze(window, tmp_path)
    gaze = attach_gaze(window, source=source, data_dir=tmp_path,
                       tracker_kw={"realtime": True, "loop": True})
    received = []
    gaze.add_point_listener(received.append)
    gaze._set_wanted(False)                      # "Turn gaze off" earlier
    screen = gaze.calibrate("5")
    assert screen is not None and gaze._wanted()
    points = gaze.tracker.points
    qtbot.waitUntil(lambda: gaze.tracker.points >= points + 10, timeout=60_000)   # mapped
    assert received == []
    screen.cancel()                              # the old calibration stays, and maps again
    qtbot.waitUntil(lambda: len(received) > 0, timeout=30_000)
    gaze.stop_and_wait()


def test_gaze_is_not_stored_while_a_dialog_of_glances_covers_the_window(qtbot, window):
    """A modal dialog (Privacy…, Settings…) over a reply: the eyes are on the dialog."""
    import time
    from PySide6.QtWidgets import QMessageBox
    from gaze.points import GazePoint
    store = window.session.store
    store.consent.set("gaze", True)
    window.capture.publish()
    recorder = window.gaze_recorder
    x0, y0, _, _ = recorder.snapshot.window_rect
    box = QMessageBox(QMessageBox.Icon.Information, "Glance", "A dialog", parent=window)
    box.open()                                   # window-modal, without a nested loop
    qtbot.waitUntil(lambda: recorder.covered, timeout=10_000)
    recorder.point(GazePoint(time.monotonic_ns(), time.time_ns(), x0 + 50, y0 + 50))
    box.close()
    qtbot.waitUntil(lambda: not recorder.covered, timeout=10_000)
    recorder.point(GazePoint(time.monotonic_ns(), time.time_ns(), x0 + 60, y0 + 50))
    recorder.flush()
    store.flush()
    assert [r["x"] for r in store._rows("SELECT x FROM gaze_samples")] == [x0 + 60]


def test_gaze_on_another_screen_than_the_calibrated_one_says_so(qtbot, window, tmp_path):
    """The tracker keeps only points on the screen it was calibrated on: with the window
    moved to another monitor, gaze said "on" and recorded nothing."""
    require(_have_vision(), "OpenCV, MediaPipe and scikit-image are needed")
    from app.ui.gaze_calibration import attach_gaze
    from test_gaze_video import SCREEN
    source = _replayed_gaze(window, tmp_path, screen=SCREEN)   # calibrated for 1920×1080
    g = window.screen().geometry()
    assert (g.x(), g.y(), g.width(), g.height()) != (0, 0, 1920, 1080)   # (offscreen's)
    gaze = attach_gaze(window, source=source, data_dir=tmp_path,
                       tracker_kw={"realtime": True, "loop": True})
    qtbot.waitUntil(lambda: gaze.tracker is not None and gaze.tracker.frames > 5,
                    timeout=60_000)
    qtbot.waitUntil(lambda: gaze.label.text() == "Gaze: other screen", timeout=30_000)
    assert "another screen" in window.statusBar().currentMessage()
    # ... and records nothing: the calibrated screen's mapping reached past its edge, to
    # the window, and those points were stored; a click here was paired with an estimate
    # there, shifting every later point.
    points = []
    gaze.add_point_listener(points.append)
    frames = gaze.tracker.frames
    qtbot.waitUntil(lambda: gaze.tracker.frames > frames + 30, timeout=60_000)
    qtbot.mouseClick(window.input, Qt.MouseButton.LeftButton)
    assert points == [] and gaze.tracker.recalibrator.points == []
    gaze.stop_and_wait()


def test_the_camera_follows_the_privacy_panel_at_once(qtbot, window, tmp_path):
    """Resuming in the Privacy panel, or giving the gaze consent back there, left the
    camera off until the next start (only the hotkey and the tray brought it back)."""
    require(_have_vision(), "OpenCV, MediaPipe and scikit-image are needed")
    from app.ui.gaze_calibration import attach_gaze
    from app.ui.privacy import PrivacyPanel
    source = _replayed_gaze(window, tmp_path)
    gaze = window.gaze = attach_gaze(window, source=source, data_dir=tmp_path,
                                     tracker_kw={"realtime": True, "loop": True})
    qtbot.waitUntil(lambda: gaze.tracker is not None, timeout=30_000)
    panel = PrivacyPanel(window.session.store, window, on_change=window.apply_collection)
    qtbot.addWidget(panel)
    panel.pause_box.setChecked(True)
    assert gaze.tracker is None                      # off at once, not at the next poll
    panel.pause_box.setChecked(False)
    assert gaze.tracker is not None                  # and back
    panel.boxes["gaze"].setChecked(False)
    assert gaze.tracker is None
    panel.boxes["gaze"].setChecked(True)
    assert gaze.tracker is not None
    gaze.stop_and_wait()



def test_each_screen_keeps_its_own_calibration(tmp_path):
    """With two monitors, calibrating on the second threw the first one's calibration
    away (one per screen layout): moving the window back meant calibrating again. Now
    each screen keeps its own, and gaze follows the window from one to the other."""
    require(_have_vision(), "OpenCV, MediaPipe and scikit-image are needed")
    import json
    import os
    import subprocess
    import sys
    from conftest import ROOT
    from gaze import synthetic
    video = synthetic.write_video(tmp_path / "face.avi", [], frames=[synthetic.base_frame()] * 30)
    config = tmp_path / "screens.json"
    config.write_text(json.dumps({"screens": [
        {"name": "left", "x": 0, "y": 0, "width": 1920, "height": 1080},
        {"name": "right", "x": 1920, "y": 0, "width": 1280, "height": 1024}]}))
    env = dict(os.environ, GLANCE_HOME=str(tmp_path / "home"),
               QT_QPA_PLATFORM=f"offscreen:configfile={config}")
    env.pop("GLANCE_CAMERA", None)
    run = subprocess.run([sys.executable, "tests/two_screens_session.py", str(video),
                          str(tmp_path / "data")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["screens"] == 2
    assert seen["left_calibrated"] and seen["right_uncalibrated"] and seen["right_calibrated"]
    assert seen["corrections_kept"]        # the same calibration is not installed afresh
    assert seen["right_tracker_screen"] == [1920, 0, 1280, 1024]
    assert len(seen["files"]) == 2                       # one per screen, both kept
    assert seen["back_left"] and seen["left_tracker_screen"] == [0, 0, 1920, 1080]
    assert seen["next_start_screen"] == [1920, 0, 1280, 1024]
