"""Gaze in the window: the full-screen calibration (animated targets, then validation
with the figures and advice), and :func:`attach_gaze`, which gives the main window a
"Gaze…" toolbar button, a status-bar indicator and a :class:`GazeController` that owns
the tracker.

The camera is used only with the gaze consent on and collection not paused; it is
started when the user asks (or at launch when a valid calibration is already saved for
this user, camera and screen layout). No camera → a plain message, gaze off, the app
carries on. The camera is chosen under Gaze… → Camera (kept in the store's settings);
``GLANCE_CAMERA`` overrides it: a device index, /dev/videoN, or a video file (replay).
"""
import getpass
import os
import threading
import time

from PySide6.QtCore import QEvent, QObject, QPointF, QRect, Qt, QTimer, Signal
from PySide6.QtGui import (QAction, QActionGroup, QColor, QFont, QKeySequence, QMouseEvent,
                           QPainter, QPen)
from PySide6.QtWidgets import (
    QApplication, QHBoxLayout, QLabel, QMenu, QMessageBox, QPushButton, QSpinBox, QToolBar,
    QToolButton, QVBoxLayout, QWidget,
)

from ..memory import freeze_long_lived
from gaze import calibration as cal
from gaze import camera as cameras
from gaze.geometry import ScreenGeometry
from gaze.points import GazePoint, Health
from gaze.tracker import GazeTracker

from .workers import CallThread

TIPS = ("<ul><li>Sit about an arm's length from the screen, facing it.</li>"
        "<li>Light your face from the front; avoid a bright window behind you.</li>"
        "<li>Glasses: tilt the screen or lamp so no reflection covers your eyes.</li>"
        "<li>Follow each dot with your eyes and keep your head still while it shrinks.</li>"
        "</ul>")
MODEL_NAMES = {"ridge": "ridge", "kernel": "kernel ridge", "mlp": "small MLP"}
SHORT = {"ok": "on", "no_camera": "no camera", "face_lost": "face not seen",
         "several_faces": "several faces", "camera_busy": "camera busy",
         "not_calibrated": "not calibrated", "ended": "video ended", "other_screen": "other screen"}
OTHER_SCREEN = ("Glance is on another screen than the one gaze was calibrated on, so no gaze "
                "is recorded. Calibrate on this screen (Gaze… → Calibrate), or move the "
                "window back.")


# --- screens ---------------------------------------------------------------------------------
def screen_geometry(qscreen, distance_mm: float = 600.0) -> ScreenGeometry:
    """Logical pixels and logical pixels per millimetre of a QScreen. Gaze, widgets and
    the pointer are all in logical pixels, so the density is the logical width over the
    physical width (Qt's physicalDotsPerInch is already in logical dots: dividing it by
    the pixel ratio again made every degree on a HiDPI screen twice too large)."""
    g = qscreen.geometry()
    width_mm = qscreen.physicalSize().width()
    dpi = g.width() / width_mm * 25.4 if width_mm > 0 else 0.0
    if not 20 <= dpi <= 400:          # virtual screens report nonsense; assume 96 dpi
        dpi = 96.0
    return ScreenGeometry(g.width(), g.height(), dpi / 25.4, distance_mm, g.x(), g.y())


def screen_layout() -> list[dict]:
    """All screens (position, size, pixel ratio): calibrations are kept per layout."""
    return [{"x": s.geometry().x(), "y": s.geometry().y(), "w": s.geometry().width(),
             "h": s.geometry().height(), "dpr": s.devicePixelRatio()}
            for s in QApplication.screens()]


# --- the calibration screen ------------------------------------------------------------------------
def _camera_ready(health) -> bool:
    return health.state not in ("no_camera", "camera_busy", "ended")


class CalibrationScreen(QWidget):
    """Full screen: intro → targets (each glides to its place, then shrinks while the
    frames are recorded) → fitting → 4 validation targets → result with accuracy and
    precision in pixels and degrees, the model comparison, and advice when it is not
    good enough. Emits ``finished(Calibration or None)``."""
    finished = Signal(object)

    def __init__(self, tracker, qscreen, kind: str = "9", distance_mm: float = 600.0,
                 dwell_s: float = cal.DWELL_S, move_s: float = 0.35,
                 settle_s: float = cal.SETTLE_S, threshold_deg: float = cal.DEFAULT_THRESHOLD_DEG,
                 kinds=("ridge", "kernel", "mlp")):
        super().__init__(None)
        self.tracker = tracker
        self.qscreen = qscreen
        self.kind, self.distance_mm = kind, distance_mm
        self.dwell_s, self.move_s, self.settle_s = dwell_s, move_s, settle_s
        self.threshold_deg, self.kinds = threshold_deg, kinds
        self.setWindowTitle("Glance — gaze calibration")
        self.setWindowFlags(Qt.WindowType.Window | Qt.WindowType.FramelessWindowHint
                            | Qt.WindowType.WindowStaysOnTopHint)
        self.setGeometry(qscreen.geometry())
        self.setStyleSheet("background: #202124; color: #e8eaed;")
        self.state = "intro"
        self.result: cal.Calibration | None = None
        self.report: cal.ValidationReport | None = None
        self.error: str | None = None
        self.recorder: cal.CalibrationRecorder | None = None
        self._targets: list[tuple[float, float]] = []
        self._phase = "calibration"
        self._index = -1
        self._t0 = 0.0
        self._from = self._to = (0.0, 0.0)
        self._fit_thread = None
        self._ended = False             # finished has been emitted (once)
        self._build()
        self._timer = QTimer(self)
        self._timer.setInterval(16)
        self._timer.timeout.connect(self._tick)
        self._status_timer = QTimer(self)
        self._status_timer.setInterval(250)
        self._status_timer.timeout.connect(self._show_face_status)
        self._status_timer.start()
        tracker.add_frame_listener(self._on_frame)

    # --- widgets --------------------------------------------------------------------------
    def _build(self) -> None:
        self.panel = QWidget(self)
        box = QVBoxLayout(self.panel)
        self.title = QLabel("<h1>Gaze calibration</h1>")
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextFormat(Qt.TextFormat.RichText)
        self.face_status = QLabel()
        row = QHBoxLayout()
        row.addWidget(QLabel("Your eyes are about"))
        self.distance = QSpinBox()
        self.distance.setRange(30, 120)
        self.distance.setValue(int(round(self.distance_mm / 10)))
        self.distance.setSuffix(" cm")
        row.addWidget(self.distance)
        row.addWidget(QLabel("from the screen."))
        row.addStretch(1)
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start (9 points)")
        self.start_button.clicked.connect(lambda: self.begin("9"))
        self.quick_button = QPushButton("Quick (5 points)")
        self.quick_button.clicked.connect(lambda: self.begin("5"))
        self.done_button = QPushButton("Use gaze")
        self.done_button.clicked.connect(self._accept)
        self.retry_button = QPushButton("Try again")
        self.retry_button.clicked.connect(lambda: self.begin(self.kind))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        for b in (self.start_button, self.quick_button, self.done_button, self.retry_button,
                  self.cancel_button):
            b.setStyleSheet("background: #3c4043; padding: 8px 16px;")
            buttons.addWidget(b)
        for w in (self.title, self.text, self.face_status):
            box.addWidget(w)
        box.addLayout(row)
        box.addLayout(buttons)
        self.panel.setFixedWidth(min(760, self.width() - 40))
        self._show_intro()

    def _place_panel(self) -> None:
        self.panel.adjustSize()
        self.panel.move((self.width() - self.panel.width()) // 2,
                        (self.height() - self.panel.height()) // 2)

    def _show_intro(self) -> None:
        self.state = "intro"
        self.text.setText("<p>Look at each dot until it disappears: first 9 (or 5) places "
                          "to learn how your eyes look, then 4 more to check how accurate "
                          "it is. About 15 seconds.</p>" + TIPS)
        self._buttons(start=True)
        self.panel.show()
        self._place_panel()

    def _buttons(self, start=False, done=False, retry=False) -> None:
        self.start_button.setVisible(start)
        self.quick_button.setVisible(start or retry)
        self.done_button.setVisible(done)
        self.retry_button.setVisible(retry)
        self.distance.setEnabled(start or retry)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.panel.setFixedWidth(min(760, max(200, self.width() - 40)))
        self._place_panel()

    def keyPressEvent(self, event) -> None:
        if event.key() == Qt.Key.Key_Escape:
            self.cancel()
        elif event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space) \
                and self.state in ("intro", "result"):
            if self.done_button.isVisible():
                self._accept()
            else:
                self.begin(self.kind)
        else:
            super().keyPressEvent(event)

    def _show_face_status(self) -> None:
        h = self.tracker.health()
        if h.state in ("ok", "not_calibrated") and self.tracker.frames:
            text = "✓ Your face is in view." if self.tracker.face_in_view \
                else "✗ " + h.message
        else:
            text = ("✗ " if h.state != "ok" else "") + h.message
        self.face_status.setText(text)
        # Without a camera the dots would be followed for nothing, then "too few views".
        for button in (self.start_button, self.quick_button, self.retry_button):
            button.setEnabled(_camera_ready(h))

    # --- the run ---------------------------------------------------------------------------------
    @property
    def geometry_(self) -> ScreenGeometry:
        return screen_geometry(self.qscreen, self.distance.value() * 10.0)

    def begin(self, kind: str) -> None:
        if not _camera_ready(self.tracker.health()):   # (Enter on the intro, or the menu's entry)
            self._show_face_status()
            return
        self.kind = kind
        self.recorder = cal.CalibrationRecorder(self.geometry_, kind, settle_s=self.settle_s)
        self.result = self.report = self.error = None
        self.panel.hide()
        self.state = "targets"
        self._phase = "calibration"
        self._targets = self.recorder.calibration_targets
        self._index = -1
        centre = self.geometry_.relative(0.5, 0.5)
        self._to = centre
        self.setCursor(Qt.CursorShape.BlankCursor)
        self._next_target()
        self._timer.start()

    def current_target(self) -> tuple[str, int, tuple[float, float]] | None:
        """(phase, index, global point) while a target is being recorded, else None."""
        phase, index, targets = self._phase, self._index, self._targets
        if self.state != "targets" or not 0 <= index < len(targets):
            return None
        if time.monotonic() - self._t0 < self.move_s:
            return None
        return phase, index, targets[index]

    def _next_target(self) -> None:
        self._index += 1
        if self._index >= len(self._targets):
            self.recorder.show_target(None)
            if self._phase == "calibration":
                self._fit()
            else:
                self._validate()
            return
        self._from, self._to = self._to, self._targets[self._index]
        self._t0 = time.monotonic()
        self.recorder.show_target(None)
        self._arrived = False

    def _tick(self) -> None:
        if self.state != "targets":
            self._timer.stop()
            return
        t = time.monotonic() - self._t0
        if not self._arrived and t >= self.move_s:
            self._arrived = True
            self.recorder.show_target(self._index, self._phase, at=self._t0 + self.move_s)
        if t >= self.move_s + self.dwell_s:
            self._next_target()
        self.update()

    def _on_frame(self, landmarks, width, height, blink, t_s) -> None:
        rec = self.recorder
        if rec is not None:
            rec.add_frame(landmarks, width, height, blink, at=t_s)

    def _fit(self) -> None:
        self.state = "fitting"
        self.unsetCursor()
        self.text.setText("<p>Computing…</p>")
        self._buttons()
        self.panel.show()
        self._place_panel()
        self._fit_thread = CallThread(self.recorder.fit, kinds=self.kinds,
                                      threshold_deg=self.threshold_deg)
        self._fit_thread.done.connect(self._fitted)
        self._fit_thread.failed.connect(self._failed)
        self._fit_thread.start()

    def _fitted(self, calibration) -> None:
        self.result = calibration
        self.panel.hide()
        self.state = "targets"
        self._phase = "validation"
        self._targets = self.recorder.validation_targets
        self._index = -1
        self.setCursor(Qt.CursorShape.BlankCursor)
        self._next_target()
        self._timer.start()

    def _failed(self, message: str) -> None:
        self.error = message
        self._show_result()

    def _validate(self) -> None:
        try:
            self.report = self.recorder.validate(self.result)
        except cal.CalibrationError as error:
            self.error = str(error)
        self._show_result()

    def _show_result(self) -> None:
        self.state = "result"
        self.unsetCursor()
        self.update()
        if self.error:
            self.text.setText(f"<p><b>Calibration did not work.</b> {self.error}</p>" + TIPS)
            self._buttons(retry=True)
        else:
            r = self.report
            comp = self.result.comparison
            models = ", ".join(f"{MODEL_NAMES[k]} {comp[k]['cv_error_deg']:.2f}°"
                               for k in ("ridge", "kernel", "mlp") if k in comp)
            lines = [f"<p style='font-size:18pt'><b>Accuracy {r.accuracy_deg:.1f}°</b> "
                     f"({r.accuracy_px:.0f} px) · precision {r.precision_deg:.2f}° "
                     f"({r.precision_px:.0f} px)</p>",
                     f"<p>{r.summary()}</p>",
                     f"<p style='color:#9aa0a6'>Models on the same calibration "
                     f"(leave-one-target-out error): {models}; using "
                     f"{MODEL_NAMES[comp['chosen']]}.</p>"]
            if r.advice:
                lines.append("<p>What may help:</p><ul>" + "".join(
                    f"<li>{a}</li>" for a in r.advice) + "</ul>")
            self.text.setText("".join(lines))
            self._buttons(done=r.passed, retry=True)
        self.panel.show()
        self._place_panel()

    def _accept(self) -> None:
        self._close(self.result if self.result is not None and self.result.enabled else None)

    def cancel(self) -> None:
        self._close(None)

    def closeEvent(self, event) -> None:
        # Closed by the window manager (Alt+F4): ended as a cancel, or the window kept it
        # as the calibration under way and every Calibrate did nothing from then on.
        self.cancel()
        super().closeEvent(event)

    def _close(self, result) -> None:
        if self._ended:                # (its own close() comes back here through closeEvent)
            return
        self._ended = True
        self._timer.stop()
        self._status_timer.stop()
        self.tracker.remove_frame_listener(self._on_frame)
        if self._fit_thread is not None:
            # Closed while fitting: the fit's queued result must not restart the targets.
            for signal in (self._fit_thread.done, self._fit_thread.failed):
                try:
                    signal.disconnect()
                except (RuntimeError, TypeError):
                    pass
            if self._fit_thread.isRunning():
                # Not waited for (the window froze for as long as the fit ran, seconds on a
                # busy machine): the application keeps it until it ends, as a thread
                # deleted while it runs would abort the program.
                self._fit_thread.setParent(QApplication.instance())
                self._fit_thread.finished.connect(self._fit_thread.deleteLater)
            self._fit_thread = None
        self.close()
        self.finished.emit(result)

    # --- drawing -------------------------------------------------------------------------------
    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#202124"))
        if self.state != "targets" or self._index < 0:
            p.end()
            return
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        t = time.monotonic() - self._t0
        origin = self.geometry().topLeft()
        if t < self.move_s:
            a = t / self.move_s
            a = a * a * (3 - 2 * a)                      # ease in and out
            x = self._from[0] + a * (self._to[0] - self._from[0])
            y = self._from[1] + a * (self._to[1] - self._from[1])
            radius = 22.0
        else:
            x, y = self._to
            radius = 22.0 - 16.0 * min(1.0, (t - self.move_s) / self.dwell_s)
        centre = QPointF(x - origin.x(), y - origin.y())
        p.setPen(QPen(QColor("#8ab4f8"), 2))
        p.setBrush(QColor(138, 180, 248, 90))
        p.drawEllipse(centre, radius, radius)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor("#ffffff"))
        p.drawEllipse(centre, 3.0, 3.0)
        p.setPen(QColor("#9aa0a6"))
        p.setFont(QFont(p.font().family(), 10))
        total = len(self._targets)
        label = "Calibrating" if self._phase == "calibration" else "Checking"
        p.drawText(QRect(0, self.height() - 40, self.width(), 30),
                   Qt.AlignmentFlag.AlignCenter, f"{label}: {self._index + 1} of {total}")
        p.end()


def _same_calibration(a, b) -> bool:
    """One calibration, read twice from its file."""
    if a is None or b is None:
        return a is b
    return (a.created_wall_s, cal.screen_of(a)) == (b.created_wall_s, cal.screen_of(b))


# --- the controller the window holds --------------------------------------------------------------
class GazeController(QObject):
    """Owns the tracker for the window: consent, pause, calibration, status bar, clicks.

    Other parts of the app receive gaze with :meth:`add_point_listener` (called on the
    tracker's thread with every GazePoint: map it and store it there) or the ``point``
    signal (queued to the UI thread: for drawing)."""
    point = Signal(object)
    cursor = Signal(float, float)
    health_changed = Signal(object)
    camera_closed = Signal(object)      # a stopped tracker whose camera has closed

    CLOSE_TIMEOUT_S = 3.0               # the longest a restart or quitting waits for it

    def __init__(self, window, source=None, data_dir=None, tracker_kw: dict | None = None):
        super().__init__(window)
        self.tracker_kw = dict(tracker_kw or {})
        from feedback_store.paths import glance_home
        self.window = window
        # GLANCE_CAMERA (or a source given here: a video, a test) rules over the camera
        # chosen in the menu, which then only says so.
        self.camera_set_by_env = source is None and bool(os.environ.get("GLANCE_CAMERA"))
        if source is None:
            source = cameras.chosen_camera(self._store().settings.get(cameras.SETTING))
        if isinstance(source, str) and source.isdigit():
            source = int(source)
        self.source = source
        self.data_dir = data_dir or glance_home()
        self.tracker: GazeTracker | None = None
        self.overlay = None
        self.screen_widget: CalibrationScreen | None = None
        self._listeners = []
        self._closing: dict[GazeTracker, threading.Thread] = {}   # cameras being closed
        self._waited_out: set[threading.Thread] = set()          # ... stuck in their driver
        self._detached = False
        self.camera_closed.connect(self._on_camera_closed)
        self._last_health: Health | None = None
        self._said: set[tuple] = set()     # health messages said in the status bar once
        self._last_click = None
        # The window is on another screen than the calibrated one (set on this thread at
        # each poll, read on the tracker's): its points are not used meanwhile.
        self._elsewhere = False
        self._layout = screen_layout()
        self._screen = self._window_screen()   # the screen the window is on
        self._calibrating_layout = None       # the layout a running calibration began on
        self.calibration = self._load_calibration()

        self.label = QLabel("Gaze: off")
        self.label.setObjectName("gaze_status")
        window.statusBar().addPermanentWidget(self.label)
        self.menu = QMenu(window)
        self.menu.addAction("Calibrate (9 points)…", lambda: self.calibrate("9"))
        self.menu.addAction("Quick calibration (5 points)…", lambda: self.calibrate("5"))
        self.camera_menu = self.menu.addMenu("Camera")
        self.camera_menu.aboutToShow.connect(self.fill_camera_menu)
        self.overlay_action = self.menu.addAction("Show debug overlay")
        self.overlay_action.setCheckable(True)
        self.overlay_action.toggled.connect(self.show_overlay)
        self.menu.addSeparator()
        self.off_action = self.menu.addAction("Turn gaze off", self.turn_off)
        self.action = QAction("Gaze…", window)
        self.action.setShortcut(QKeySequence("Ctrl+Shift+G"))
        self.action.setToolTip("Webcam gaze: calibrate, choose the camera, show the overlay, "
                               "turn it off (Ctrl+Shift+G)")
        self.action.setMenu(self.menu)
        self.action.triggered.connect(self.activate)
        toolbars = window.findChildren(QToolBar)
        if toolbars:
            toolbars[0].addAction(self.action)
            button = toolbars[0].widgetForAction(self.action)
            if isinstance(button, QToolButton):
                button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        self._timer = QTimer(self)
        self._timer.setInterval(500)
        self._timer.timeout.connect(self._poll)
        self._timer.start()
        # The window's closeEvent turns the camera off (once it is sure to close: it may
        # ask first whether to lose an unsent message), or else quitting does.
        QApplication.instance().aboutToQuit.connect(self.stop_and_wait)
        if self._should_track():
            QTimer.singleShot(1500, self.start)     # after the window is up

    # --- files and consent ---------------------------------------------------------------------
    def _window_screen(self) -> tuple[int, int, int, int] | None:
        """The screen the window's centre is on (x, y, width, height), found among the
        application's screens: asked at every poll, ``window.screen()``'s wrapper later
        came back dead in another window ("QScreen already deleted", seen in tests)."""
        centre = self.window.frameGeometry().center()
        screens = [s.geometry() for s in QApplication.screens()]
        for g in screens:
            if g.contains(centre):
                return (g.x(), g.y(), g.width(), g.height())
        return (screens[0].x(), screens[0].y(), screens[0].width(), screens[0].height()) \
            if screens else None

    def calibration_file(self, screen: tuple[int, int, int, int] | None = None):
        """Where the calibration for ``screen`` (the window's by default) is kept, for this
        user, camera and screen layout."""
        return self._calibration_path(screen or self._window_screen())

    def _calibration_path(self, screen):
        """``screen`` None: where calibrations were kept before they were per screen."""
        return cal.calibration_path(self.data_dir, getpass.getuser(), str(self.source),
                                    screen_layout(), screen)

    def _load_calibration(self):
        """The calibration made on the window's screen; else one made on another screen of
        this layout (gaze then says "other screen": back there, it tracks again); else
        one saved before calibrations were kept per screen."""
        here = self._window_screen()
        others = [(s["x"], s["y"], s["w"], s["h"]) for s in screen_layout()]
        for screen in [here] + [s for s in others if s != here]:
            found = cal.load(self.calibration_file(screen))
            if found is not None:
                return found
        return cal.load(self._calibration_path(None))

    def _store(self):
        return self.window.session.store

    # --- the camera ----------------------------------------------------------------------------
    def fill_camera_menu(self) -> None:
        """Gaze… → Camera: the cameras found as the menu opens (one plugged in since the
        start is there), the one in use checked."""
        menu = self.camera_menu
        menu.clear()
        if self.camera_set_by_env:
            menu.addAction(f"{self.source} (set by GLANCE_CAMERA)").setEnabled(False)
            return
        found = cameras.list_cameras()
        if not found:
            menu.addAction("No camera found").setEnabled(False)
            return
        group = QActionGroup(menu)
        for camera in found:
            action = menu.addAction(f"{camera.name} ({camera.device})")
            action.setCheckable(True)
            action.setChecked(cameras.same_camera(camera.source, self.source))
            action.setData(camera.source)
            group.addAction(action)
            action.triggered.connect(lambda _=False, source=camera.source: self.use_camera(source))

    def use_camera(self, source: str) -> None:
        """Use another camera, now and at the next start, with the calibration made for it:
        calibrations are kept per camera (another camera sees the eyes from elsewhere), so
        a camera without one waits for a calibration, as a new screen layout does."""
        if cameras.same_camera(source, self.source):
            return
        self._store().settings.set(cameras.SETTING, source)
        was_on = self.tracker is not None
        if was_on:
            self.stop()          # the old camera closes on its own thread
        self.source = int(source) if source.isdigit() else source
        self.calibration = self._load_calibration()
        self._last_health = None
        if self._should_track():
            self.start()
        elif was_on or (self._allowed() and self._wanted()):
            self.label.setText("Gaze: " + SHORT["not_calibrated"])
            self.window.statusBar().showMessage(
                f"Gaze now uses {source}, which has no calibration yet: Gaze… → Calibrate.",
                15000)

    def _wanted(self) -> bool:
        """Whether the user last turned gaze on (Gaze…, Calibrate) rather than off ("Turn
        gaze off"): turned off, the camera came on again at the next start."""
        return bool(self._store().settings.get("gaze_wanted", True))

    def _set_wanted(self, wanted: bool) -> None:
        if self._wanted() != wanted:
            self._store().settings.set("gaze_wanted", wanted)

    def turn_off(self) -> None:
        """The user's "Turn gaze off": off now, and at the next start too."""
        self._set_wanted(False)
        self.stop()

    def sync(self) -> None:
        """Consent or pause changed (the panel, the tray, the hotkey): the camera goes off
        now, or comes back if gaze was on (the panel's changes waited for a restart)."""
        if not self._allowed():
            if self.tracker is not None:
                self.stop()
        elif self.tracker is None and self._should_track():
            self.start()

    def _has_calibration(self) -> bool:
        """A calibration that maps the eyes on these screens."""
        return self.calibration is not None and self.calibration.enabled

    def _should_track(self) -> bool:
        """Allowed, wanted, and calibrated: the camera may be on without being asked."""
        return self._allowed() and self._wanted() and self._has_calibration()

    def _allowed(self) -> bool:
        consent = self._store().consent
        return consent.is_on("gaze") and not consent.paused

    # --- running ---------------------------------------------------------------------------------
    def reading_offset(self, measured) -> None:      # tracker thread (the recorder's)
        """Reading says where the estimate lands against the lines read (a
        ``feedback_store.reading_lines.ReadingOffset``): a weak vertical calibration
        target for the running tracker."""
        tracker = self.tracker
        if tracker is not None and self.screen_widget is None:
            tracker.reading_offset(measured.offset_px, measured.since_ns)

    def add_point_listener(self, fn) -> None:
        """``fn(GazePoint)`` on the tracker's thread for every point and fixation."""
        self._listeners.append(fn)

    def _on_point(self, point: GazePoint) -> None:      # tracker thread
        if self.tracker is None:       # stopped: its camera is closing, its points are not used
            return
        if self.screen_widget is not None:
            # Recalibrating (the old calibration maps meanwhile): the eyes follow the dots,
            # over the replies behind the screen; stored, that was a second of "reading"
            # per dot.
            return
        if self._elsewhere:
            # "Gaze: other screen" says nothing is recorded: the calibrated screen's
            # mapping, a quarter of a screen past its edge, still reached the window there.
            return
        for fn in list(self._listeners):
            fn(point)
        self.point.emit(point)

    def _on_cursor(self, x: float, y: float) -> None:   # tracker thread
        if self.tracker is not None:
            self.cursor.emit(x, y)

    def start(self) -> bool:
        if not self._allowed():
            return False
        if self.tracker is None or not self.tracker.running:
            if self.tracker is not None:        # ended by an error: its camera must close first
                self._close_in_background(self.tracker)
                self.tracker = None
                self.window.set_collector("gaze", None)
            # Turned off and on again: the camera opens once the old tracker has let go of
            # it (else it is found busy). The one wait on this thread, and only then.
            self.wait_closed()
            self.tracker = GazeTracker(self.source, self.calibration, self._on_point,
                                       on_cursor=self._on_cursor, **self.tracker_kw)
            self.tracker.start()
            # Clicks anywhere in the app calibrate in the background: an application-wide
            # filter, installed only while tracking (it sees every event of every widget).
            QApplication.instance().installEventFilter(self)
            # MediaPipe's objects, loaded by the tracker's thread, live as long as gaze is
            # used: out of the collector's sight once they are there (app/memory.py).
            QTimer.singleShot(5000, freeze_long_lived)
        self._poll()
        return True

    def stop(self) -> None:
        """Camera off. Closing it can take seconds in its driver, so it closes on a thread
        of its own: the window goes on at once, no point of it is used from now on, and
        the red dot stays on until the camera has really closed."""
        if self.screen_widget is not None:   # paused or consent withdrawn mid-calibration:
            self.screen_widget.cancel()      # it would go on over a camera that is closed
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            QApplication.instance().removeEventFilter(self)
            self._close_in_background(tracker)
        self.window.set_collector("gaze", None)      # not recording; the dot waits (above)
        self.overlay_action.setChecked(False)        # a frozen dot looked like tracking on
        self.label.setText("Gaze: off")
        self.label.setToolTip("")

    def _close_in_background(self, tracker: GazeTracker) -> None:
        closing = threading.Thread(target=self._close, args=(tracker,), name="gaze-close",
                                   daemon=True)
        self._closing[tracker] = closing
        self.window.camera_closing(tracker, True)
        closing.start()

    def _close(self, tracker: GazeTracker) -> None:         # closing thread
        # A read stuck in the driver holds the camera: the dot stays on until it lets go.
        while not tracker.stop(self.CLOSE_TIMEOUT_S):
            pass
        try:
            self.camera_closed.emit(tracker)
        except RuntimeError:          # the app has quit
            pass

    def _on_camera_closed(self, tracker: GazeTracker) -> None:
        if self._closing.pop(tracker, None) is None:
            return                    # (told twice: by wait_closed, then by the signal)
        self.window.camera_closing(tracker, False)
        if self._detached and not self._closing:
            self.deleteLater()        # it waited for its last camera (detach)

    def wait_closed(self, timeout: float | None = None) -> None:
        """Wait for cameras still closing (a restart, the app quitting). A camera stuck
        in its driver is waited for once: quitting does not wait for it again."""
        deadline = time.monotonic() + (self.CLOSE_TIMEOUT_S if timeout is None else timeout)
        for tracker, thread in list(self._closing.items()):
            if thread in self._waited_out:
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self._waited_out.add(thread)
            else:
                self._on_camera_closed(tracker)

    def stop_and_wait(self) -> None:
        self.stop()
        self.wait_closed()

    def detach(self) -> None:
        """Take back everything ``__init__`` added to the window (attach_gaze replaces a
        controller this way when asked for another camera or folder)."""
        self.stop_and_wait()
        self._timer.stop()
        app = QApplication.instance()
        app.removeEventFilter(self)
        try:
            app.aboutToQuit.disconnect(self.stop_and_wait)
        except (RuntimeError, TypeError):
            pass
        for toolbar in self.window.findChildren(QToolBar):
            toolbar.removeAction(self.action)
        self.action.setShortcut(QKeySequence())        # the next controller's takes it
        self.window.statusBar().removeWidget(self.label)
        self.label.deleteLater()
        self._detached = True
        if not self._closing:         # else once its last camera has closed, which the
            self.deleteLater()        # window's red dot waits for

    def health(self) -> Health | None:
        return self.tracker.health() if self.tracker is not None else None

    def activate(self) -> None:
        """The toolbar button: ask for consent if needed, start, calibrate if needed."""
        consent = self._store().consent
        if not consent.is_on("gaze"):
            box = QMessageBox(QMessageBox.Icon.Information, "Glance — gaze",
                              "Webcam gaze is off. Turn it on under Privacy… (only computed "
                              "gaze points are kept, never images), then choose Gaze… again.",
                              QMessageBox.StandardButton.Close, self.window)
            privacy = box.addButton("Open Privacy…", QMessageBox.ButtonRole.AcceptRole)
            if QApplication.platformName() == "offscreen":
                self.window.statusBar().showMessage(box.text(), 15000)
                return
            box.exec()
            if box.clickedButton() is privacy:
                self.window.open_privacy()
            return
        if consent.paused:
            self.window.statusBar().showMessage(
                "Collection is paused (Ctrl+Shift+P to resume); gaze stays off.", 8000)
            return
        self._set_wanted(True)
        self.start()
        self._continue_activate(time.monotonic() + 5.0)

    def _continue_activate(self, deadline: float) -> None:
        """Once the camera has answered (opened, missing or busy): calibrate if needed."""
        if self.tracker is None:
            return
        h = self.tracker.health()
        if self.tracker.camera_state == "opening" and time.monotonic() < deadline:
            QTimer.singleShot(100, lambda: self._continue_activate(deadline))
            return
        if h.state in ("no_camera", "camera_busy", "ended"):
            self.window.statusBar().showMessage(h.message, 15000)
            self._poll()
            return
        if not self._has_calibration():
            self.calibrate("9")
        else:
            self.menu.popup(self.window.mapToGlobal(self.window.rect().center()))

    def calibrate(self, kind: str = "9", **screen_kw) -> CalibrationScreen | None:
        if not self.start():
            self.activate()
            return None
        self._set_wanted(True)         # (calibrating is turning gaze on, as Gaze… is)
        if self.screen_widget is not None:
            return self.screen_widget
        qscreen = self.window.screen() or QApplication.primaryScreen()
        distance = 600.0
        if self.calibration is not None:
            distance = self.calibration.mapper.screen.distance_mm
        self._calibrating_layout = screen_layout()
        self.screen_widget = CalibrationScreen(self.tracker, qscreen, kind, distance, **screen_kw)
        self.screen_widget.finished.connect(self._calibrated)
        self.screen_widget.showFullScreen()
        self.screen_widget.activateWindow()
        return self.screen_widget

    def _calibrated(self, result) -> None:
        self.screen_widget = None
        if result is not None and screen_layout() != self._calibrating_layout:
            # Fitted on the screens as they were: saved under the new layout it would map
            # the eyes to the wrong place.
            self.window.statusBar().showMessage(
                "The screens changed during the calibration: it was not kept. Calibrate "
                "again.", 15000)
            result = None
        if result is None:
            if not self._has_calibration():
                # Nothing to map the eyes with: a camera left open only showed the red dot
                # and "recording" while no gaze point could come of it.
                self.stop()
            self._poll()
            return
        self.calibration = result
        cal.save(result, self.calibration_file(cal.screen_of(result)))   # (the one it was made on)
        if self.tracker is not None:
            self.tracker.set_calibration(result)
        self.window.statusBar().showMessage(result.validation.summary(), 10000)
        self._poll()

    def show_overlay(self, on: bool) -> None:
        from .gaze_overlay import GazeOverlay
        if on and self.overlay is None:
            qscreen = self.window.screen() or QApplication.primaryScreen()
            ppd = screen_geometry(qscreen).px_per_degree
            self.overlay = GazeOverlay(QRect(qscreen.geometry()), ppd)
            self.point.connect(self.overlay.add_point)
            self.cursor.connect(self.overlay.set_cursor)
            self.overlay.show()
        elif not on and self.overlay is not None:
            self.point.disconnect(self.overlay.add_point)
            self.cursor.disconnect(self.overlay.set_cursor)
            self.overlay.close()
            self.overlay = None

    # --- status, pause, clicks -------------------------------------------------------------------
    def _poll(self) -> None:
        layout, screen = screen_layout(), self._window_screen()
        changed = layout != self._layout
        if changed or screen != self._screen:
            self._layout, self._screen = layout, screen
            found = self._load_calibration()
            if changed or not _same_calibration(found, self.calibration):
                # (the same one kept: its click corrections and smoothing go on)
                self._use_calibration(found)
        self._poll_health()
        if changed and not self._has_calibration():
            self.window.statusBar().showMessage(     # after the health message, not under it
                "The screens changed: gaze waits for a calibration for this layout (Gaze… → "
                "Calibrate).", 15000)

    def _poll_health(self) -> None:
        if self.tracker is not None and not self._allowed():
            self.stop()                 # consent withdrawn or paused: the camera goes off
            return
        if self.tracker is None:
            return
        h = self.tracker.health()
        self._elsewhere = self._on_another_screen()
        if h.state == "ok" and self._elsewhere:
            # Points are kept only on the calibrated screen (the tracker drops the rest):
            # on another one, gaze said "on" and recorded nothing.
            h = Health("other_screen", OTHER_SCREEN, fps=h.fps)
        # The red camera dot means the camera is really open, not merely wanted, and until
        # it has been released (a failing camera says "no camera" a moment before).
        camera_open = self.tracker.camera_open
        if camera_open != (self.window.session.collectors.get("gaze") is self.tracker):
            self.window.set_collector("gaze", self.tracker if camera_open else None)
        text = "Gaze: " + SHORT.get(h.state, h.state)
        if h.drift:
            text += " (drifted)"
        self.label.setText(text)
        self.label.setToolTip(h.message + (" " + h.hint if h.hint else ""))
        last = self._last_health
        if last is None or (last.state, last.drift, last.hint) != (h.state, h.drift, h.hint):
            self._last_health = h
            # Said in the status bar the first time only (the label and its tooltip say it
            # every time): looking down at the keyboard made "face not seen" take the
            # status bar for 15 s, over what the window had to say.
            if (h.state != "ok" or h.hint) and (h.state, h.hint) not in self._said:
                self._said.add((h.state, h.hint))
                self.window.statusBar().showMessage(h.hint or h.message, 15000)
            self.health_changed.emit(h)

    def _on_another_screen(self) -> bool:
        """Whether the window is on another screen than the one gaze was calibrated on."""
        here = self._window_screen()
        return self.calibration is not None and here is not None \
            and here != cal.screen_of(self.calibration)

    def _use_calibration(self, found) -> None:
        """The screens changed (one plugged in, removed, moved or rescaled: the calibration
        maps the eyes to where the screens were, so points would land elsewhere and still
        be stored) or the window went to another screen: use the calibration made for
        where it is now, or none until the user calibrates again."""
        self.calibration = found
        if self.tracker is not None:
            self.tracker.set_calibration(self.calibration)
            if not self._has_calibration():
                # Nothing to map the eyes with here: the camera would stay on, red dot and
                # "recording", while no point can come of it (as at start, where it is
                # never opened without a calibration). Calibrating opens it again.
                self.stop()
        elif self._should_track():
            self.start()               # back on the screens it was calibrated for

    def eventFilter(self, obj, event) -> bool:
        """Clicks anywhere in the app become background calibration points (a press is
        seen once per object it passes through: count it once, by its timestamp)."""
        if (self.tracker is not None and isinstance(event, QMouseEvent)
              and event.type() == QEvent.Type.MouseButtonPress):
            key = (event.timestamp(), event.globalPosition().x(), event.globalPosition().y())
            if key != self._last_click:
                self._last_click = key
                # Only where the calibration maps to, and not while a new one is made: a
                # click on another screen paired with an estimate on this one shifted
                # every later point by the screens' distance ("drifted" for a minute).
                if self.screen_widget is None and not self._elsewhere \
                        and self._on_calibrated_screen(key[1], key[2]):
                    self.tracker.click(key[1], key[2])
        return False

    def _on_calibrated_screen(self, x: float, y: float) -> bool:
        if self.calibration is None:
            return False
        left, top, width, height = cal.screen_of(self.calibration)
        return left <= x < left + width and top <= y < top + height


def attach_gaze(window, source=None, data_dir=None, tracker_kw=None) -> GazeController:
    """Give ``window`` (the MainWindow) its "Gaze…" toolbar button and status indicator.
    Cheap: nothing is imported from OpenCV or MediaPipe and the camera stays off until
    gaze is allowed and asked for (or already calibrated). Attaching again replaces the
    previous controller."""
    previous = getattr(window, "gaze", None)
    listeners = []
    if isinstance(previous, GazeController):
        # Attaching again (another camera, a video, another folder) replaces the window's
        # controller; whoever listened to its points keeps listening.
        listeners = list(previous._listeners)
        previous.detach()
    controller = GazeController(window, source, data_dir, tracker_kw)
    controller._listeners.extend(listeners)
    window.gaze = controller
    return controller
