"""The gaze collector the app uses: camera → face mesh → features → screen points.

    tracker = GazeTracker(0, calibration, on_point)      # or a video file path
    tracker.start()
    tracker.health()          # Health(state, message, ...)
    tracker.stop()            # never hangs (joins with a timeout)

``on_point(GazePoint)`` is called on the tracker's processing thread for every accepted
frame (kind 'raw', unsmoothed) and for every fixation when it ends (kind 'fixation').
Points are in global logical screen pixels. The smoothed cursor (One-Euro) is only for
drawing: ``on_cursor(x, y)`` / :meth:`cursor`.

Per frame, in order: face mesh (one face, tracking mode); every
``faces_check_s`` a face detector counts faces (two or more: points are withheld, we
cannot know whose eyes we see); features and head pose; blink (adaptive EAR) → the frame
is dropped; poor mesh fit or a point far off the screen → dropped; then the point, the
fixation detector (unsmoothed samples), the cursor filter.

No Qt here; cv2 and MediaPipe are imported on the processing thread when it starts.
"""
import collections
import threading
import time
from typing import Callable

import numpy as np

from . import features as feat
from .calibration import Calibration, ClickRecalibrator
from .camera import CameraConfig, FrameGrabber
from .filters import BlinkDetector, PointFilter
from .fixations import FixationDetector, fixation_point
from .points import GazePoint, Health

FACE_LOST_FRAMES = 8          # ≈ 0.27 s at 30 fps without a face → "face lost"
MAX_FIT_RESIDUAL = 0.08       # Procrustes RMS / IOD above this: the mesh is unreliable
OFFSCREEN_MARGIN = 0.25       # points beyond 25 % of the screen outside it are dropped

MESSAGES = {
    "ok": "Gaze is on.",
    "face_lost": "Glance cannot see your face. Sit in front of the camera with your face "
                 "lit from the front; gaze resumes by itself.",
    "several_faces": "More than one face is in view, so gaze is paused (Glance cannot tell "
                     "whose eyes it sees). It resumes when only you are in front of the "
                     "camera.",
    "not_calibrated": "Gaze needs a calibration: choose Gaze… and follow the dots (about "
                      "15 seconds).",
    "not_accurate": "The last calibration was not accurate enough ({acc:.1f}° where "
                    "{thr:g}° is needed), so gaze is off. Choose Gaze… to calibrate again.",
    "starting": "Starting the camera…",
    "ended": "The video has ended.",
    "no_mediapipe": "MediaPipe is not installed (pip install 'glance[gaze]'), so gaze is "
                    "off. Glance works without it.",
    "drift": "Gaze seems to have drifted from where you click or read. Choose Gaze… → "
             "Calibrate to recalibrate.",
    "closer": "You are much closer to the screen than during calibration; sit back or "
              "recalibrate.",
    "farther": "You are much farther from the screen than during calibration; move closer "
               "or recalibrate.",
}


class GazeTracker:
    def __init__(self, source: int | str = 0, calibration: Calibration | None = None,
                 on_point: Callable[[GazePoint], None] | None = None, *,
                 width: int = 640, height: int = 480, fps: float = 30.0,
                 realtime: bool = True, loop: bool = False,
                 on_cursor: Callable[[float, float], None] | None = None,
                 faces_check_s: float = 2.0, fixation_radius_deg: float = 1.25,
                 min_fixation_ms: float = 100.0, retry_s: float = 2.0):
        self.config = CameraConfig(source, width, height, fps, realtime, loop, retry_s)
        self.on_point = on_point
        self.on_cursor = on_cursor
        self.faces_check_s = faces_check_s
        self.fixation_radius_deg = fixation_radius_deg
        self.min_fixation_ms = min_fixation_ms
        self._lock = threading.Lock()
        self._listeners: list[Callable] = []
        self._stop = threading.Event()
        self._grabber: FrameGrabber | None = None
        self._thread: threading.Thread | None = None
        self._pipeline_error: str | None = None
        # results (read from other threads)
        self.frames = 0
        self.faces_found = 0
        self.blinks_dropped = 0
        self.rejected = 0
        self.points = 0
        self.fixations = 0
        self.callback_errors = 0
        self.latencies_ns: collections.deque = collections.deque(maxlen=5000)
        self.last_features: feat.FrameFeatures | None = None
        self._no_face_run = 0
        self._several = False
        self._cursor: tuple[float, float] | None = None
        self._recent = collections.deque(maxlen=90)      # (mono_ns, raw xy) for clicks
        self.reference: feat.HeadReference | None = None
        self.recalibrator: ClickRecalibrator | None = None
        self.fixation_detector: FixationDetector | None = None
        self.calibration: Calibration | None = None
        self.set_calibration(calibration)

    # --- configuration ------------------------------------------------------------------
    def set_calibration(self, calibration: Calibration | None) -> None:
        """Install (or remove) a calibration; takes effect from the next frame."""
        with self._lock:
            self.calibration = calibration
            if calibration is not None:
                self.reference = calibration.reference
                screen = calibration.mapper.screen
                self.recalibrator = ClickRecalibrator(screen)
                self.fixation_detector = FixationDetector(
                    screen.px_per_degree, self.fixation_radius(calibration),
                    self.min_fixation_ms)
            else:
                self.recalibrator = None
                self.fixation_detector = None
            self._filter = PointFilter()

    def fixation_radius(self, calibration: Calibration) -> float:
        """The fixation radius grows with the noise this user's validation measured:
        ≈ 2.3 SDs per axis (SD ≈ RMS sample-to-sample / 2), within [configured, 2°]."""
        v = calibration.validation
        if v is None or not np.isfinite(v.precision_deg):
            return self.fixation_radius_deg
        return float(min(2.0, max(self.fixation_radius_deg, 2.3 * v.precision_deg / 2)))

    def add_frame_listener(self, fn: Callable) -> None:
        """``fn(landmarks | None, width, height, blink, mono_s)`` on the processing thread
        for every frame (landmarks only, never the image). Calibration uses this."""
        with self._lock:
            self._listeners.append(fn)

    def remove_frame_listener(self, fn: Callable) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._grabber = FrameGrabber(self.config)
        self._grabber.start()
        self._thread = threading.Thread(target=self._run, name="gaze-tracker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> bool:
        """Stop both threads, waiting at most ``timeout`` seconds in all. Returns True if
        they ended (a camera read stuck in the driver is left to a daemon thread)."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        ok = True
        if self._grabber is not None:
            ok = self._grabber.stop(max(0.1, deadline - time.monotonic()))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(max(0.1, deadline - time.monotonic()))
            ok = ok and not self._thread.is_alive()
        return ok

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_finished(self, timeout: float) -> bool:
        """For replays: wait until a file source has been played to its end."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- what the app reads -----------------------------------------------------------------
    def health(self) -> Health:
        grabber = self._grabber
        fps = grabber.fps if grabber else 0.0
        if self._pipeline_error:
            return Health("no_camera", self._pipeline_error, fps=fps)
        if grabber is None:
            return Health("no_camera", "Gaze is stopped.")
        cam = grabber.state
        if cam.state in ("no_camera", "camera_busy"):
            return Health(cam.state, cam.message, fps=fps)
        if cam.state == "ended" and not self.running:     # replays: all frames processed
            return Health("ended", MESSAGES["ended"], fps=fps)
        if cam.state == "opening" or self.frames == 0:
            return Health("ok" if self._enabled() else "not_calibrated", MESSAGES["starting"],
                          fps=fps)
        if self._several:
            return Health("several_faces", MESSAGES["several_faces"], fps=fps)
        if self._no_face_run >= FACE_LOST_FRAMES:
            return Health("face_lost", MESSAGES["face_lost"], fps=fps)
        cal = self.calibration
        if cal is None:
            return Health("not_calibrated", MESSAGES["not_calibrated"], fps=fps)
        if not cal.enabled:
            if cal.validation is None:
                return Health("not_calibrated", MESSAGES["not_calibrated"], fps=fps)
            return Health("not_calibrated", MESSAGES["not_accurate"].format(
                acc=cal.validation.accuracy_deg, thr=cal.threshold_deg), fps=fps)
        drift = bool(self.recalibrator and self.recalibrator.drift)
        hint = MESSAGES["drift"] if drift else ""
        f = self.last_features
        if not hint and f is not None:
            if f.scale > 1.25:
                hint = MESSAGES["closer"]
            elif f.scale < 0.8:
                hint = MESSAGES["farther"]
        return Health("ok", MESSAGES["ok"], drift=drift, hint=hint, fps=fps)

    @property
    def camera_state(self) -> str:
        """'opening' | 'ok' | 'no_camera' | 'camera_busy' | 'ended' (the grabber's view;
        'no_camera' once the pipeline failed and closed it)."""
        grabber = self._grabber
        if grabber is None or self._pipeline_error:
            return "no_camera"
        return grabber.state.state

    @property
    def camera_open(self) -> bool:
        """The camera device is open: from its opening until it has been released."""
        grabber = self._grabber
        return grabber is not None and grabber.device_open

    @property
    def face_in_view(self) -> bool:
        return self.frames > 0 and self._no_face_run == 0

    def cursor(self) -> tuple[float, float] | None:
        """The smoothed point for drawing (None until there is one)."""
        return self._cursor

    def click(self, x: float, y: float, mono_ns: int | None = None) -> bool:
        """A click at (x, y): the estimates from 50–400 ms before it become a background
        calibration point. Returns True if one was added."""
        t = time.monotonic_ns() if mono_ns is None else mono_ns
        with self._lock:                # the tracker thread refits and expires the same list
            recal = self.recalibrator
            raw = [p for (tn, p) in self._recent if t - 400_000_000 <= tn <= t - 50_000_000]
            if recal is None or len(raw) < 2:
                return False
            recal.add(np.median(np.array(raw), axis=0), (x, y))
        return True

    def reading_offset(self, offset_px: float, since_ns: int | None = None) -> None:
        """Reading says the estimate lands ``offset_px`` below the lines read, measured on
        fixations since ``since_ns`` (monotonic; from the capture thread:
        ``feedback_store.reading_lines.ReadingOffsetMeter``)."""
        with self._lock:
            if self.recalibrator is not None:
                self.recalibrator.add_reading_offset(
                    offset_px, since=None if since_ns is None else since_ns / 1e9)

    def stats(self) -> dict:
        lat = np.array(self.latencies_ns, float) / 1e6
        g = self._grabber
        return {"frames": self.frames, "faces_found": self.faces_found,
                "blinks_dropped": self.blinks_dropped, "rejected": self.rejected,
                "points": self.points, "fixations": self.fixations,
                "frames_dropped": g.frames_dropped if g else 0,
                "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                "latency_p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
                "fps": g.fps if g else 0.0, "callback_errors": self.callback_errors}

    # --- the processing thread -----------------------------------------------------------------
    def _enabled(self) -> bool:
        cal = self.calibration
        return cal is not None and cal.enabled

    def _emit(self, point: GazePoint) -> None:
        if self.on_point is None:
            return
        try:
            self.on_point(point)
        except Exception:            # a faulty consumer must not stop the camera
            self.callback_errors += 1

    def _run(self) -> None:
        try:
            from .landmarks import FaceMesh
            mesh = FaceMesh(max_faces=1)
        except ImportError:
            self._pipeline_error = MESSAGES["no_mediapipe"]
            self._grabber.stop(0.5)
            return
        detector = None
        last_check = -1e9
        blink = BlinkDetector()
        failures = 0
        try:
            while not self._stop.is_set():
                item = self._grabber.take(0.2)
                if item is None:
                    if not self._grabber.running:
                        break
                    self._expire_fixation(time.monotonic_ns())     # no frame: no sample
                    continue
                frame, mono_ns, wall_ns = item
                t_s = mono_ns / 1e9
                if self.faces_check_s and t_s - last_check >= self.faces_check_s:
                    last_check = t_s
                    if detector is None:
                        detector = _FaceCounter()
                    self._several = detector.count(frame) >= 2
                result = mesh.process(frame)
                del frame, item                     # the image goes no further
                self.frames += 1
                try:
                    if not self._process(result, mono_ns, wall_ns, t_s, blink):
                        self._expire_fixation(mono_ns)
                    failures = 0
                except Exception as error:      # numerical trouble on one odd frame
                    failures += 1
                    if failures >= 30:
                        self._pipeline_error = f"Gaze stopped after repeated errors: {error}"
                        break
        except Exception as error:  # noqa: BLE001 - the mesh or the face counter failed
            self._pipeline_error = f"Gaze stopped after an error: {type(error).__name__}: {error}"
        finally:
            # Without this thread nothing reads the camera: close it (its light goes off)
            # and let health() say why, instead of "Gaze is on" over a dead pipeline.
            self._grabber.stop(0.5)
            mesh.close()
            if detector is not None:
                detector.close()
            det = self.fixation_detector
            if det is not None:
                f = det.flush()
                if f is not None:
                    self.fixations += 1
                    self._emit(fixation_point(f))

    def _tell(self, listeners, landmarks, result, blinking, t_s) -> None:
        for fn in listeners:
            try:
                fn(landmarks, result.width, result.height, blinking, t_s)
            except Exception:
                self.callback_errors += 1

    def _expire_fixation(self, now_ns: int) -> None:
        det = self.fixation_detector
        fix = det.expire(now_ns) if det is not None else None
        if fix is not None:
            self.fixations += 1
            self._emit(fixation_point(fix))

    def _process(self, result, mono_ns: int, wall_ns: int, t_s: float,
                 blink: BlinkDetector) -> bool:
        """One frame's gaze: True if it gave a point (and a sample to the fixations)."""
        with self._lock:
            listeners = list(self._listeners)
        if result.landmarks is None:
            self._no_face_run += 1
            self._tell(listeners, None, result, False, t_s)
            return False
        self._no_face_run = 0
        self.faces_found += 1
        if self.reference is None:
            self.reference = feat.HeadReference.from_landmarks(result.landmarks)
        f = feat.extract(result.landmarks, self.reference, result.width, result.height)
        self.last_features = f
        blinking = blink.update(f.ear, t_s)
        # With several faces in view the mesh may be following the other person: a
        # calibration must not record those frames as the user's (it sees "no face").
        self._tell(listeners, None if self._several else result.landmarks, result, blinking, t_s)
        if blinking:
            self.blinks_dropped += 1
            return False
        cal = self.calibration
        if cal is None or not cal.enabled or self._several:
            return False
        if f.fit_residual > MAX_FIT_RESIDUAL:
            self.rejected += 1
            return False
        raw = cal.mapper.uncorrected(f.vector[None])[0]
        recal = self.recalibrator
        x, y = recal.apply(raw) if recal is not None else raw
        screen = cal.mapper.screen
        mx, my = OFFSCREEN_MARGIN * screen.width_px, OFFSCREEN_MARGIN * screen.height_px
        if not (screen.left_px - mx <= x <= screen.left_px + screen.width_px + mx
                and screen.top_px - my <= y <= screen.top_px + screen.height_px + my):
            self.rejected += 1
            return False
        confidence = float(np.clip(1 - f.fit_residual / MAX_FIT_RESIDUAL, 0, 1)
                           * np.clip(1 - abs(f.scale - 1) / 0.5, 0, 1))
        with self._lock:
            self._recent.append((mono_ns, raw))
        self.points += 1
        self.latencies_ns.append(time.monotonic_ns() - mono_ns)
        self._emit(GazePoint(mono_ns, wall_ns, float(x), float(y), "raw", confidence))
        det = self.fixation_detector
        if det is not None:
            fix = det.add(mono_ns, x, y, wall_ns, confidence)
            if fix is not None:
                self.fixations += 1
                self._emit(fixation_point(fix))
        cx, cy = self._filter(float(x), float(y), t_s)
        self._cursor = (cx, cy)
        if self.on_cursor is not None:
            try:
                self.on_cursor(cx, cy)
            except Exception:
                self.callback_errors += 1
        if recal is not None:
            with self._lock:            # click() adds on the UI thread
                recal.refresh()
        return True


class _FaceCounter:
    """MediaPipe's short-range face detector, run about once a second to notice a second
    face (cheaper than asking the mesh to track two faces on every frame)."""

    def __init__(self):
        import cv2
        import mediapipe as mp
        self._cv2 = cv2
        self._det = mp.solutions.face_detection.FaceDetection(model_selection=0,
                                                              min_detection_confidence=0.6)

    def count(self, frame_bgr) -> int:
        rgb = self._cv2.cvtColor(frame_bgr, self._cv2.COLOR_BGR2RGB)
        rgb.flags.writeable = False
        return len(self._det.process(rgb).detections or [])

    def close(self) -> None:
        self._det.close()
