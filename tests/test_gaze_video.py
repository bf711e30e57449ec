"""The gaze pipeline on real face imagery: skimage's astronaut photograph moved with known
translations, rotations and perspective warps, written with cv2.VideoWriter and read back
through the tracker's own capture path (a video file is accepted as a camera).

Without OpenCV, MediaPipe or scikit-image these skip; with CI=true they fail instead."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from gaze import features as F
from gaze.geometry import ScreenGeometry

ROOT = Path(__file__).resolve().parents[1]
SCREEN = ScreenGeometry.from_dpi(1920, 1080, 92.0)


def _have_vision() -> bool:
    try:
        import cv2  # noqa: F401
        import mediapipe  # noqa: F401
        import skimage  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def vision():
    require(_have_vision(), "OpenCV, MediaPipe and scikit-image (the gaze extra) are needed")


@pytest.fixture(scope="module")
def motion_video(vision, tmp_path_factory):
    from gaze import synthetic
    path, motions = synthetic.astronaut_video(tmp_path_factory.mktemp("gaze") / "motion.avi",
                                              frames_per_segment=20)
    return path, motions


def replay(path, calibration=None, listener=None, before_start=None, **kw):
    """Play a video file through GazeTracker (every frame, as fast as it goes)."""
    from gaze.tracker import GazeTracker
    points = []
    tracker = GazeTracker(str(path), calibration, points.append, realtime=False, **kw)
    if listener is not None:
        tracker.add_frame_listener(listener)
    if before_start is not None:
        before_start(tracker)
    tracker.start()
    assert tracker.wait_finished(240)
    assert tracker.stop()
    return tracker, points


def still_calibration(path, threshold_deg=180.0, screen=SCREEN):
    """A calibration recorded through the tracker's frame listener and the real
    CalibrationRecorder on a video of a still face (the astronaut does not move her
    eyes, so it is useless for accuracy; the threshold is raised so it is 'enabled' and
    the pipeline after it can be tested)."""
    from gaze.calibration import CalibrationRecorder
    rec = CalibrationRecorder(screen, "5", settle_s=0.0)
    count = [0]

    def listen(landmarks, w, h, blink, t):
        if landmarks is None or blink:      # (the video's faceless parts hold no target:
            return                          # every point needs its clear views)
        i = count[0]
        count[0] += 1
        target = i // 3                     # 3 frames a point: 27 of a 30-frame video
        phase = "calibration" if target < 5 else "validation"
        index = target if target < 5 else target - 5
        if i % 3 == 0 and index < (5 if phase == "calibration" else 4):
            rec.show_target(index, phase, at=i / 30)
        rec.add_frame(landmarks, w, h, blink, at=i / 30)
    replay(path, listener=listen)
    cal = rec.fit(kinds=("ridge",), threshold_deg=threshold_deg, min_frames_per_target=3)
    rec.validate(cal, min_frames_per_target=3)
    assert cal.enabled
    return cal


def test_landmarks_found_and_head_pose_follows_the_known_motion(motion_video):
    path, motions = motion_video
    rows = []

    def listen(landmarks, w, h, blink, t):
        rows.append(None if landmarks is None else landmarks.copy())
    tracker, _ = replay(path, listener=listen)
    assert len(rows) == len(motions) == tracker.frames
    found = [r is not None for r in rows]
    assert sum(found) >= 0.95 * len(rows), f"face found in {sum(found)}/{len(rows)} frames"
    reference = F.HeadReference.from_landmarks(rows[0])
    est = np.array([[np.nan] * 6 if r is None else
                    (lambda f: [f.head_x * 640, f.head_y * 480, np.degrees(f.yaw),
                                np.degrees(f.pitch), np.degrees(f.roll), f.scale])(
                        F.extract(r, reference, 640, 480)) for r in rows])
    cmd = np.array([[m.tx, m.ty, m.yaw, m.pitch, m.roll, m.zoom] for m in motions])
    seg = 20
    segments = {"tx": 0, "ty": 1, "yaw": 2, "pitch": 3, "roll": 4, "zoom": 5}
    for k, (name, col) in enumerate(segments.items()):
        sl = slice(seg // 2 + k * seg, seg // 2 + (k + 1) * seg)
        a, b = cmd[sl, col], est[sl, col]
        ok = np.isfinite(b)
        r = np.corrcoef(a[ok], b[ok])[0, 1]
        slope = np.polyfit(a[ok], b[ok], 1)[0]
        assert r > 0.9 and slope > 0, (name, r, slope)
        if name in ("tx", "ty", "roll", "zoom"):      # in the image plane: recovered 1:1
            assert 0.85 < slope < 1.15, (name, slope)
    # Moving the head sideways is not mistaken for turning it.
    yaw_in_tx = est[seg // 2: seg // 2 + seg, 2]
    yaw_in_yaw = est[seg // 2 + 2 * seg: seg // 2 + 3 * seg, 2]
    assert np.nanstd(yaw_in_tx) < 0.5 * np.nanstd(yaw_in_yaw)
    # The combined segment: every motion at once, each still followed.
    last = slice(seg // 2 + 6 * seg, None)
    for name, col in (("tx", 0), ("ty", 1), ("yaw", 2), ("roll", 4)):
        a, b = cmd[last, col], est[last, col]
        ok = np.isfinite(b)
        assert np.corrcoef(a[ok], b[ok])[0, 1] > 0.8, name


def test_blink_frames_are_dropped(vision, tmp_path):
    """Frames with the eyes painted over (inpainted from the surrounding skin) give no
    gaze point, nor does the frame after each blink; every other frame does."""
    from gaze import synthetic
    from gaze.landmarks import FaceMesh
    base = synthetic.base_frame()
    with FaceMesh() as mesh:
        landmarks = mesh.process(base).landmarks
    closed = synthetic.close_eyes(base, landmarks)
    pattern = [0] * 15 + [1] * 4 + [0] * 10 + [1] * 3 + [0] * 8
    path = synthetic.write_video(tmp_path / "blink.avi", [], frames=[
        closed if c else base for c in pattern])
    cal = still_calibration(synthetic.write_video(tmp_path / "still.avi", [],
                                                  frames=[base] * 40))
    frames = []

    def listen(lm, w, h, blink, t):
        frames.append((int(round(t * 1e9)), blink))
    tracker, points = replay(path, cal, listen)
    assert len(frames) == len(pattern)
    blink_flags = [b for _, b in frames]
    expected = [bool(c) for c in pattern]
    for i in range(1, len(pattern)):          # the frame after a blink is dropped too
        if pattern[i - 1] and not pattern[i]:
            expected[i] = True
    assert blink_flags == expected
    raw = [p for p in points if p.kind == "raw"]
    kept = {t for t, b in frames if not b}
    assert len(raw) == len(kept) == pattern.count(0) - 2
    assert {p.mono_ns for p in raw} <= {t for t, _ in frames}
    dropped = {t for t, b in frames if b}
    assert not any(abs(p.mono_ns - t) < 1000 for p in raw for t in dropped)
    assert tracker.blinks_dropped == 9


def test_several_faces_pause_gaze_and_it_resumes(vision, tmp_path):
    from gaze import synthetic
    base = synthetic.base_frame()
    two = synthetic.two_faces_frame()
    path = synthetic.write_video(tmp_path / "two.avi", [], frames=[base] * 12 + [two] * 12
                                 + [base] * 12)
    cal = still_calibration(synthetic.write_video(tmp_path / "still.avi", [],
                                                  frames=[base] * 40))
    states, faces = [], []
    holder = {}

    def listen(lm, w, h, blink, t):
        states.append(holder["tracker"].health().state)
        faces.append(lm is not None)
    from gaze.tracker import GazeTracker
    points = []
    tracker = GazeTracker(str(path), cal, points.append, realtime=False, faces_check_s=1e-6)
    holder["tracker"] = tracker
    tracker.add_frame_listener(listen)
    tracker.start()
    assert tracker.wait_finished(240)
    # Played to its end, a replay says so (it said "no camera", as for a missing camera).
    assert (tracker.health().state, tracker.health().message) == ("ended", "The video has ended.")
    tracker.stop()
    assert states[:12] == ["ok"] * 12
    assert states[12:24] == ["several_faces"] * 12
    assert states[24:] == ["ok"] * 12
    # A calibration listening meanwhile is given no face to record: it may be someone else's.
    assert faces == [True] * 12 + [False] * 12 + [True] * 12
    assert len([p for p in points if p.kind == "raw"]) == 24
    msg = "More than one face is in view"
    tracker2 = GazeTracker(str(path), cal, realtime=False, faces_check_s=1e-6)
    seen = []
    tracker2.add_frame_listener(lambda *a: seen.append(tracker2.health().message))
    tracker2.start()
    tracker2.wait_finished(240)
    tracker2.stop()
    assert any(m.startswith(msg) for m in seen)


def test_points_and_fixations_from_a_replayed_camera(vision, tmp_path):
    """A still face: every frame becomes a raw point in screen pixels, and one fixation
    (kind 'fixation', reported at its end with its duration) covers the video."""
    from gaze import synthetic
    base = synthetic.base_frame()
    path = synthetic.write_video(tmp_path / "still.avi", [], frames=[base] * 30)
    cal = still_calibration(path)

    def no_gap_closes_it(tracker):
        # A replay's frames are stamped as they are read, one once the last is done: on a
        # busy machine one frame may take the 150 ms that closes a fixation as a gap.
        tracker.fixation_detector.max_gap_ns = 2 ** 62
    tracker, points = replay(path, cal, before_start=no_gap_closes_it)
    raw = [p for p in points if p.kind == "raw"]
    fix = [p for p in points if p.kind == "fixation"]
    assert len(raw) == 30 and len(fix) == 1
    # It carries its samples' clocks and confidence (not 1970 and 1.0), ending one sample
    # interval after the last, on both clocks.
    f = fix[0]
    assert f.wall_ns - raw[-1].wall_ns == f.mono_ns - raw[-1].mono_ns
    assert f.confidence == pytest.approx(np.mean([p.confidence for p in raw]))
    assert f.y == pytest.approx(np.mean([p.y for p in raw]))
    assert all(0 <= p.confidence <= 1 and p.wall_ns > 0 for p in raw)
    assert [p.mono_ns for p in raw] == sorted(p.mono_ns for p in raw)
    f = fix[0]
    assert f.mono_ns > raw[-1].mono_ns and f.duration_ms > 0
    assert abs(f.x - np.mean([p.x for p in raw])) < 1e-6
    assert -480 < f.x < 2400 and -270 < f.y < 1350
    stats = tracker.stats()
    assert stats["frames"] == stats["faces_found"] == 30
    assert stats["latency_p95_ms"] is not None


def test_a_fixation_is_reported_when_the_face_goes_not_when_it_comes_back(vision, tmp_path):
    """The face leaves the picture (the user looks down at the keyboard): the fixation
    before was reported only when the face came back, after that frame's point, and the
    app mapped it onto whatever the screen showed by then."""
    from gaze import synthetic
    from gaze.tracker import GazeTracker
    base = synthetic.base_frame()
    away = np.zeros_like(base)
    path = synthetic.write_video(tmp_path / "away.avi", [],
                                 frames=[base] * 20 + [away] * 20 + [base] * 20)
    cal = still_calibration(synthetic.write_video(tmp_path / "still.avi", [], frames=[base] * 30))
    points = []
    tracker = GazeTracker(path, cal, points.append, realtime=True)   # frames 33 ms apart
    tracker.start()
    assert tracker.wait_finished(240)
    assert tracker.stop()
    raw = [i for i, p in enumerate(points) if p.kind == "raw"]
    fixations = [i for i, p in enumerate(points) if p.kind == "fixation"]
    gap = next(n for n, (a, b) in enumerate(zip(raw, raw[1:]))
               if points[b].mono_ns - points[a].mono_ns > 300_000_000)
    back = raw[gap + 1]                   # the first point after the face came back
    assert fixations and fixations[0] < back, [(p.kind, p.mono_ns) for p in points]


def test_no_camera_says_so_and_nothing_crashes(vision):
    import cv2
    cap = cv2.VideoCapture(99)
    assert not cap.isOpened()
    cap.release()
    from gaze.tracker import GazeTracker
    tracker = GazeTracker(99, None, retry_s=0.2)
    tracker.start()
    deadline = time.monotonic() + 30
    while tracker.health().state != "no_camera" and time.monotonic() < deadline:
        time.sleep(0.05)
    health = tracker.health()
    assert health.state == "no_camera" and not tracker.camera_open
    assert "No camera was found" in health.message and "Glance works without it" in health.message
    assert tracker.stop()
    assert not tracker.running
    # A camera named by its stable path (/dev/v4l/by-id/…, kept across replugging) is a
    # camera, waited for and retried, not a video file that ends at its first failed read.
    stable = GazeTracker("/dev/v4l/by-id/usb-Glance_Test_Camera-video-index0", None, retry_s=0.2)
    assert not stable.config.is_file
    stable.start()
    deadline = time.monotonic() + 30
    while stable.health().state != "no_camera" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "No camera was found" in stable.health().message
    assert stable.stop()


def test_tracking_resumes_by_itself_when_the_camera_appears(vision, tmp_path):
    from gaze import synthetic
    from gaze.tracker import GazeTracker
    path = tmp_path / "later.avi"
    tracker = GazeTracker(str(path), None, realtime=False, retry_s=0.1)
    tracker.start()
    deadline = time.monotonic() + 30
    while tracker.health().state != "no_camera" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tracker.health().state == "no_camera" and tracker.frames == 0
    tmp = synthetic.write_video(tmp_path / "writing.avi", [],
                                frames=[synthetic.base_frame()] * 10)
    os.replace(tmp, path)                     # the camera "is plugged in"
    assert tracker.wait_finished(240)
    tracker.stop()
    assert tracker.frames == 10 and tracker.faces_found == 10


def test_stop_returns_while_a_camera_is_streaming(vision, tmp_path):
    from gaze import synthetic
    from gaze.tracker import GazeTracker
    path = synthetic.write_video(tmp_path / "loop.avi", [], frames=[synthetic.base_frame()] * 10)
    tracker = GazeTracker(str(path), None, realtime=True, loop=True)
    tracker.start()
    deadline = time.monotonic() + 60
    while tracker.frames < 15 and time.monotonic() < deadline:   # looped at least once
        time.sleep(0.05)
    assert tracker.frames >= 15
    assert tracker.camera_open                 # the window's red dot is on
    assert tracker.stop(timeout=60.0)          # returned because the thread ended, not timed out
    assert not tracker.running and not tracker.camera_open


def test_a_failing_pipeline_closes_the_camera_and_says_so(vision, tmp_path, monkeypatch):
    """An error outside the per-frame guard (the face mesh itself) ended the processing
    thread silently: the camera stayed open, its light on, and the window said "Gaze is
    on" over a pipeline that computed nothing."""
    from gaze import landmarks, synthetic
    from gaze.tracker import GazeTracker
    real_process = landmarks.FaceMesh.process
    calls = []

    def failing_process(self, frame):       # fault injection: the mesh breaks on frame 5
        calls.append(1)
        if len(calls) >= 5:
            raise RuntimeError("graph error")
        return real_process(self, frame)
    monkeypatch.setattr(landmarks.FaceMesh, "process", failing_process)
    path = synthetic.write_video(tmp_path / "loop.avi", [], frames=[synthetic.base_frame()] * 10)
    tracker = GazeTracker(str(path), None, realtime=True, loop=True)
    tracker.start()
    try:
        deadline = time.monotonic() + 60
        while tracker.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not tracker.running
        assert not tracker._grabber.running            # the camera was released
        assert tracker.camera_state == "no_camera"
        assert not tracker.camera_open                 # so the window's camera dot goes off
        health = tracker.health()
        assert health.state != "ok" and "Gaze stopped after an error" in health.message
        assert "graph error" in health.message
    finally:
        tracker.stop(timeout=60.0)


def test_importing_gaze_loads_neither_opencv_nor_mediapipe():
    code = ("import sys, importlib, pkgutil, gaze\n"
            "for m in pkgutil.walk_packages(gaze.__path__, 'gaze.'):\n"
            "    importlib.import_module(m.name)\n"
            "import app.ui.gaze_calibration, app.ui.gaze_overlay\n"
            "bad = [m for m in ('cv2', 'mediapipe', 'sklearn', 'skimage') if m in sys.modules]\n"
            "assert not bad, bad\n"
            "print('light')\n")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "light", out.stderr


def test_landmarks_read_from_bytes_equal_the_attribute_way(vision):
    """The fast path (numpy over the serialised landmark list) gives exactly MediaPipe's
    numbers, and a list laid out differently falls back to reading attributes."""
    import cv2
    import mediapipe as mp
    from mediapipe.framework.formats import landmark_pb2

    from gaze import synthetic
    from gaze.landmarks import landmarks_array
    rgb = cv2.cvtColor(synthetic.base_frame(), cv2.COLOR_BGR2RGB)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as m:
        found = m.process(rgb).multi_face_landmarks[0]
    slow = np.array([(p.x, p.y, p.z) for p in found.landmark])
    assert slow.shape == (478, 3) and np.array_equal(landmarks_array(found), slow)
    odd = landmark_pb2.NormalizedLandmarkList()
    a = odd.landmark.add()
    a.x, a.y, a.z, a.visibility = 0.5, 0.25, 0.0, 0.9
    b = odd.landmark.add()
    b.x, b.y, b.z = 0.125, 0.75, -0.5
    assert np.array_equal(landmarks_array(odd), [[0.5, 0.25, 0.0], [0.125, 0.75, -0.5]])


def test_cameras_are_listed_by_their_stable_names_without_metadata_nodes(tmp_path):
    """Gaze… → Camera lists what the machine has, as udev lays it out: a UVC webcam's
    second node (sysfs index 1, metadata) cannot capture and is left out; a camera with
    a /dev/v4l/by-id name is chosen by that name, which survives replugging."""
    from gaze.camera import list_cameras, same_camera
    dev, sysfs = tmp_path / "dev", tmp_path / "sys"
    (dev / "v4l" / "by-id").mkdir(parents=True)
    for number, name, index in ((0, "Integrated Camera", "0"), (1, "Integrated Camera", "1"),
                                (2, "USB Webcam C920", "0"), (10, None, None)):
        (dev / f"video{number}").write_text("")        # stands in for the device node
        if name is not None:
            (sysfs / f"video{number}").mkdir(parents=True)
            (sysfs / f"video{number}" / "name").write_text(name + "\n")
            (sysfs / f"video{number}" / "index").write_text(index + "\n")
    stable = dev / "v4l" / "by-id" / "usb-Logitech_C920-video-index0"
    stable.symlink_to("../../video2")
    found = list_cameras(str(dev), str(sysfs))
    assert [(c.source, c.name, c.device) for c in found] == [
        (str(dev / "video0"), "Integrated Camera", str(dev / "video0")),
        (str(stable), "USB Webcam C920", str(dev / "video2")),
        (str(dev / "video10"), "video10", str(dev / "video10")),   # no sysfs entry: its node name
    ]
    assert same_camera(str(stable), str(dev / "video2"))
    assert not same_camera(str(stable), str(dev / "video0"))
    assert same_camera(0, "/dev/video0") and same_camera("0", 0)
    assert list_cameras(str(tmp_path / "none"), str(sysfs)) == []
