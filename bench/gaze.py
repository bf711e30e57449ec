"""Gaze benchmark: pipeline cost and latency, chat speed beside it, the window's UI thread,
calibration recovery error on simulated users, fixation detection on synthetic reading.

    .venv/bin/python bench/gaze.py [--video PATH] [--json]

Without --video it writes skimage's astronaut photograph moved with known translations,
rotations and perspective warps as a 640×480 30 fps MJPG video (and a 60 fps copy), and
replays it as a camera (paced at the file's frame rate, looped). Phases:

1. Tracking alone for --seconds: fps, CPU seconds / wall seconds of the whole process
   (face mesh, the face counter once a second, features, mapping, fixations — and the
   video decoding that stands in for the camera driver), frame-to-gaze latency (from the
   moment a frame is read to the moment its GazePoint is handed over), frames, faces.
   The same at 60 fps.
2. Chat beside tracking: the embedded model through app.engine.ChatEngine, 2 threads and
   1 thread, each with and without tracking, in ABBA order; tokens/s medians. "Chat alone"
   is the app's normal setting (2 threads); both ratios are reported, and
   ``chat_ratio_while_tracking`` is the app's own: 2 threads with tracking over 2 without
   (the engine keeps its 2 threads while tracking; the 1-thread figure says what giving
   one up would buy).
   For reference, the same 2-thread reply beside a plain load of the tracker's own CPU
   (a separate process spinning ``cpu_ms_per_frame`` ms every 1/30 s, one thread):
   ``chat_ratio_beside_equal_cpu_load`` says what that much CPU alone costs a reply that
   has no spare core.
3. The real chat window offscreen with gaze attached (replayed camera, debug overlay on)
   while a reply streams: the largest gap between ticks of a 5 ms QTimer; the same
   without gaze for reference.
4. Calibration on simulated users (gaze.simulate: the astronaut's mesh with eyeballs,
   kappa, lids, a pinhole camera and face-mesh-level landmark noise ×1/×2/×4) through the
   real CalibrationRecorder, per model: validation accuracy on 4 fresh points, precision,
   and the error with the head moved ±60/±40/±100 mm and turned ±10/±8/±5° (per frame and
   per 200-ms fixation); plus the direct regression (no head geometry) for comparison.
5. Fixation detection on synthetic 30 Hz reading scanpaths: precision/recall, and the
   velocity-threshold (I-VT) baseline.
6. Lines read on simulated users (calibrated, then sitting elsewhere, reading a reply;
   landmark noise ×1 and ×2, and ×1 with every estimate 50 px low): the share of
   fixations whose line under the centre, and whose decoded line, is the line read; the
   same after three readings with reading as a calibration target (``lines_read``).

The calibration used in phases 1–3 is recorded from the replay itself (targets assigned
by frame) with its threshold raised: it exercises the pipeline; its accuracy means nothing.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import GapMeter, scratch_dir  # noqa: E402

import numpy as np  # noqa: E402

PROMPT = "Explain in detail how a bicycle works, part by part."
SYSTEM = "You are a helpful assistant."


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def make_videos(args, tmp: Path) -> dict:
    from gaze import synthetic
    if args.video:
        return {"30": args.video, "60": None}
    motions = synthetic.schedule(40)
    base = synthetic.base_frame()
    frames = [synthetic.render(m, base) for m in motions]
    return {"30": synthetic.write_video(tmp / "astronaut30.avi", [], fps=30.0, frames=frames),
            "60": synthetic.write_video(tmp / "astronaut60.avi", [], fps=60.0, frames=frames)}


def decode_ms_per_frame(path: str) -> float:
    """CPU of decoding the video alone (a camera driver does similar work for MJPG)."""
    import cv2
    cap = cv2.VideoCapture(path)
    c0, n = cpu_s(), 0
    while True:
        ok, _ = cap.read()
        if not ok:
            break
        n += 1
    cap.release()
    return 1000 * (cpu_s() - c0) / max(1, n)


def pipeline_calibration(path: str, screen):
    """Recorded from the replay itself (see the module docstring)."""
    from gaze.calibration import CalibrationRecorder
    from gaze.tracker import GazeTracker
    rec = CalibrationRecorder(screen, "5", settle_s=0.0)
    count = [0]

    def listen(landmarks, w, h, blink, t):
        i = count[0]
        count[0] += 1
        if i >= 36:
            rec.show_target(None)
            return
        target = i // 4
        phase, index = ("calibration", target) if target < 5 else ("validation", target - 5)
        if i % 4 == 0:
            rec.show_target(index, phase, at=i / 30)
        rec.add_frame(landmarks, w, h, blink, at=i / 30)
    tracker = GazeTracker(path, None, realtime=False)
    tracker.add_frame_listener(listen)
    tracker.start()
    tracker.wait_finished(600)
    tracker.stop()
    cal = rec.fit(kinds=("ridge",), threshold_deg=180.0, min_frames_per_target=3)
    rec.validate(cal, min_frames_per_target=3)
    return cal


def track(path: str, cal, seconds: float) -> dict:
    from gaze.tracker import GazeTracker
    points = [0]
    tracker = GazeTracker(path, cal, lambda p: points.__setitem__(0, points[0] + 1),
                          realtime=True, loop=True)
    tracker.start()
    time.sleep(1.5)                                   # model load and first frames
    tracker.latencies_ns.clear()
    f0, faces0, c0, w0 = tracker.frames, tracker.faces_found, cpu_s(), time.perf_counter()
    time.sleep(seconds)
    f1, faces1, c1, w1 = tracker.frames, tracker.faces_found, cpu_s(), time.perf_counter()
    lat = np.array(tracker.latencies_ns, float) / 1e6
    tracker.stop()
    wall = w1 - w0
    return {"fps": (f1 - f0) / wall, "cpu_fraction": (c1 - c0) / wall,
            "cpu_ms_per_frame": 1000 * (c1 - c0) / max(1, f1 - f0),
            "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "latency_p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
            "frames": f1 - f0, "faces_found": faces1 - faces0, "points": points[0]}


def reply_request(max_tokens: int):
    """The same reply for every chat measurement: (settings, messages)."""
    from app.engine import GenerationSettings
    settings = GenerationSettings(system_prompt=SYSTEM, temperature=0.7, top_p=0.95,
                                  max_tokens=max_tokens, seed=1234)
    return settings, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]


def chat(path: str, cal, pairs: int, max_tokens: int) -> dict:
    from app.engine import ChatEngine
    from gaze.tracker import GazeTracker
    settings, messages = reply_request(max_tokens)
    engines = {2: ChatEngine(n_threads=2), 1: ChatEngine(n_threads=1)}
    for e in engines.values():
        e.generate(messages, settings)                  # warm
    speeds = {(n, t): [] for n in engines for t in (False, True)}
    latencies = {n: [] for n in engines}
    gaze_fps = {n: [] for n in engines}       # frames the tracker processed while a reply ran
    tracker = None
    for i in range(pairs):
        for n, engine in engines.items():
            order = (False, True) if (i + n) % 2 == 0 else (True, False)
            for tracking in order:
                if tracking and tracker is None:
                    tracker = GazeTracker(path, cal, realtime=True, loop=True)
                    tracker.start()
                    time.sleep(1.5)
                if not tracking and tracker is not None:
                    tracker.stop()
                    tracker = None
                if tracker is not None:
                    tracker.latencies_ns.clear()
                    frames0, started = tracker.frames, time.perf_counter()
                reply = engine.generate(messages, settings)
                speeds[(n, tracking)].append(reply.tokens_per_s)
                if tracker is not None:
                    latencies[n] += list(tracker.latencies_ns)
                    gaze_fps[n].append((tracker.frames - frames0) / (time.perf_counter() - started))
    if tracker is not None:
        tracker.stop()
    for e in engines.values():
        e.close()
    med = {k: statistics.median(v) for k, v in speeds.items()}
    alone = med[(2, False)]
    out = {"chat_tokens_per_s_alone_2t": alone, "chat_tokens_per_s_alone_1t": med[(1, False)],
           "chat_tokens_per_s_tracking_2t": med[(2, True)],
           "chat_tokens_per_s_tracking_1t": med[(1, True)],
           "chat_ratio_while_tracking_2t": med[(2, True)] / alone,
           "chat_ratio_while_tracking_1t": med[(1, True)] / alone,
           "chat_runs_per_condition": pairs}
    for n in engines:
        out[f"gaze_fps_beside_chat_{n}t"] = statistics.median(gaze_fps[n]) if gaze_fps[n] else None
    out["chat_ratio_while_tracking"] = med[(2, True)] / alone
    for n in (1, 2):
        lat = np.array(latencies[n], float) / 1e6
        out[f"latency_p95_ms_beside_chat_{n}t"] = float(np.percentile(lat, 95)) if len(lat) else None
    return out


SPIN = """
import sys, time
burst, period = float(sys.argv[1]) / 1000, 1 / 30
print("ready", flush=True)
due = time.perf_counter()
while True:
    end = time.perf_counter() + burst
    while time.perf_counter() < end:
        pass
    due += period
    time.sleep(max(0.0, due - time.perf_counter()))
"""


def chat_beside_load(cpu_ms_per_frame: float, pairs: int, max_tokens: int) -> dict:
    """2-thread reply speed beside a process that burns what the tracker burns."""
    import subprocess
    from app.engine import ChatEngine
    settings, messages = reply_request(max_tokens)
    engine = ChatEngine(n_threads=2)
    engine.generate(messages, settings)                 # warm
    speeds = {False: [], True: []}
    for i in range(pairs):
        for loaded in ((False, True) if i % 2 == 0 else (True, False)):
            spinner = None
            if loaded:
                spinner = subprocess.Popen([sys.executable, "-c", SPIN, str(cpu_ms_per_frame)],
                                           stdout=subprocess.PIPE, text=True)
                spinner.stdout.readline()
            try:
                speeds[loaded].append(engine.generate(messages, settings).tokens_per_s)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
    engine.close()
    return {"chat_ratio_beside_equal_cpu_load":
            statistics.median(speeds[True]) / statistics.median(speeds[False]),
            "equal_cpu_load_ms_per_frame": cpu_ms_per_frame}


def ui_gaps(path: str, cal, max_tokens: int, threads: int) -> dict:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["GLANCE_HOME"] = scratch_dir("glance-bench-gaze-")
    os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from app.engine import ChatEngine, GenerationSettings
    from app.ui.gaze_calibration import attach_gaze
    from app.ui.main_window import MainWindow
    from feedback_store import FeedbackStore
    from gaze import calibration as C
    app = QApplication.instance() or QApplication([])
    store = FeedbackStore.open()
    store.consent.set("gaze", True)
    store.settings.set("generation", GenerationSettings(seed=1, max_tokens=max_tokens).to_dict())
    engine = ChatEngine(n_threads=threads)
    window = MainWindow(store, engine)
    window.show()
    controller = attach_gaze(window, source=path, data_dir=os.environ["GLANCE_HOME"],
                             tracker_kw={"realtime": True, "loop": True})
    C.save(cal, controller.calibration_file())
    controller.calibration = cal

    # A local event loop per phase (app.quit() would emit aboutToQuit, which turns gaze off).
    loop = QEventLoop()

    def measure(stream: bool, seconds: float = 4.0) -> float:
        meter = GapMeter()
        meter.start()
        if stream:
            window.reply_finished.connect(lambda _: loop.quit())
            window.input.setPlainText(PROMPT)
            window.send()
        else:
            QTimer.singleShot(int(seconds * 1000), loop.quit)
        loop.exec()
        gap = meter.stop_ms()
        if stream:
            window.reply_finished.disconnect()
        return gap

    measure(stream=True)             # warm-up: the first reply of a fresh window is slower
    without = measure(stream=True)
    controller.start()
    controller.overlay_action.setChecked(True)
    QTimer.singleShot(1500, loop.quit)
    loop.exec()                                        # tracker warm, overlay shown
    tracking_only = measure(stream=False)
    with_chat = measure(stream=True)
    points = controller.tracker.points if controller.tracker else 0
    controller.overlay_action.setChecked(False)
    controller.stop()
    window.close()
    store.close()
    engine.close()
    return {"ui_max_gap_ms": max(tracking_only, with_chat),
            "ui_max_gap_ms_tracking_idle": tracking_only,
            "ui_max_gap_ms_tracking_and_reply": with_chat,
            "ui_max_gap_ms_reply_without_gaze": without, "ui_points_drawn": points}


def calibration_recovery(users: int, noises=(1.0, 2.0, 4.0)) -> dict:
    from gaze import simulate as S
    face = S.face_in_mm(S.astronaut_face())
    scene = S.Scene(S.default_screen())
    from gaze.calibration import sklearn_available
    kinds = ["ridge", "kernel"] + (["mlp"] if sklearn_available() else [])
    out = {}
    for noise in noises:
        rows = {k: [] for k in kinds + ["ridge_direct"]}
        for seed in range(users):
            rng = np.random.default_rng(100 + seed)
            user = S.SimUser.random(rng, face)
            rec = S.record_session(scene, user, rng, "9", noise)
            for kind in kinds + ["ridge_direct"]:
                started = time.perf_counter()
                if kind == "ridge_direct":
                    cal = rec.fit(kinds=("ridge",), mode="direct")
                else:
                    cal = rec.fit(kinds=(kind,))
                fit_s = time.perf_counter() - started
                rep = rec.validate(cal)
                frame = S.moved_head_trials(scene, user, cal, np.random.default_rng(7 + seed),
                                            n=40, noise=noise)
                fix = S.moved_head_trials(scene, user, cal, np.random.default_rng(7 + seed),
                                          n=40, noise=noise, frames=6)
                still = S.moved_head_trials(scene, user, cal, np.random.default_rng(9 + seed),
                                            n=40, noise=noise, frames=6, shift_mm=(0, 0, 0),
                                            turn_deg=(0, 0, 0))
                rows[kind].append([rep.accuracy_deg, rep.precision_deg,
                                   cal.comparison[cal.comparison["chosen"]]["cv_error_deg"],
                                   float(still.mean()), float(frame.mean()), float(fix.mean()),
                                   fit_s])
        out[f"noise_{noise:g}x"] = {
            k: dict(zip(("validation_accuracy_deg", "validation_precision_deg",
                         "cv_error_deg", "still_fixation_error_deg",
                         "moved_head_frame_error_deg", "moved_head_fixation_error_deg",
                         "fit_s"), np.round(np.mean(v, axis=0), 3).tolist()))
            for k, v in rows.items()}
    out["users"] = users
    out["landmark_noise_1x_px"] = {"iris": S.Scene.iris_px, "other": S.Scene.other_px}
    return out


def ivt(t_ns, x, y, ppd, threshold=30.0, min_ms=100.0):
    from gaze.fixations import Fixation
    ok = np.isfinite(x)
    t, x, y = t_ns[ok], x[ok], y[ok]
    speed = np.r_[0, np.hypot(np.diff(x), np.diff(y)) / ppd / (np.diff(t) / 1e9)]
    out, start = [], 0
    for i in range(1, len(t) + 1):
        if i == len(t) or speed[i] > threshold:
            if t[i - 1] - t[start] + 33e6 >= min_ms * 1e6:
                out.append(Fixation(int(t[start]), int(t[i - 1] + 33e6), float(x[start:i].mean()),
                                    float(y[start:i].mean()), i - start))
            start = i
    return out


def fixation_quality() -> dict:
    from gaze import fixations as fx
    from gaze.synthetic import reading_scanpath
    ppd = 38.0
    out = {}
    for noise in (0.3, 0.5, 0.75):
        radius = min(2.0, max(1.25, 2.3 * noise))     # as GazeTracker.fixation_radius
        idt, vt = [], []
        for seed in range(6):
            path = reading_scanpath(np.random.default_rng(seed), ppd, noise_deg=noise)
            idt.append(fx.match(fx.detect(path.t_ns, path.x, path.y, ppd, radius_deg=radius),
                                path.fixations, ppd))
            vt.append(fx.match(ivt(path.t_ns, path.x, path.y, ppd), path.fixations, ppd))
        out[f"noise_{noise}deg"] = {
            "radius_deg": radius,
            "idt_precision": float(np.mean([p for p, _ in idt])),
            "idt_recall": float(np.mean([r for _, r in idt])),
            "ivt_precision": float(np.mean([p for p, _ in vt])),
            "ivt_recall": float(np.mean([r for _, r in vt]))}
    return out


def lines_read(users: int, noise: float = 1.0, drift_px: float = 0.0) -> dict:
    """Phase 6: which line was read, on simulated users. Each is calibrated (9 points,
    ridge), then sits elsewhere (head up to ±30/±20/±50 mm and ±5/±4/±3° from the
    calibration pose, swaying) and reads a reply of 20 lines (20 px high, five paragraphs)
    in order, going back four lines once: 7 frames per fixation, about every 9
    characters, through the mesh, the features and the calibration, then the tracker's
    fixation detector. Per fixation: the line under its centre (what capture maps) and the
    line decoded from reading order (feedback_store.reading_lines), against the line read.
    Then the same user reads the reply three more times with reading as a calibration
    target (the recorder's ReadingOffsetMeter and the tracker's ClickRecalibrator): the
    line under the fixations' centres in the last of those readings. ``drift_px`` moves
    every estimate down by that much: a drift the geometry does not know of (the
    simulated head movements leave little vertical bias to learn)."""
    from feedback_store.reading_lines import ReadingOffsetMeter, assign_lines
    from gaze import features as F
    from gaze import simulate as S
    from gaze.calibration import ClickRecalibrator
    from gaze.fixations import FixationDetector
    face = S.face_in_mm(S.astronaut_face())
    scene = S.Scene(S.default_screen())
    ppd = scene.screen.px_per_degree
    line_px, n_lines, origin = 20.0, 20, (640.0, 300.0)
    ends = {3: 25, 7: 40, 12: 15, 14: 30, 19: 10}
    width = np.array([ends.get(i, 62) for i in range(n_lines)]) * 10.0
    top, height, left = np.arange(n_lines) * line_px, np.full(n_lines, line_px), np.zeros(n_lines)
    order = list(range(12)) + [8, 9] + list(range(12, n_lines))
    targets = []
    for line in order:
        n = max(2, int(width[line] // 90))
        targets += [((origin[0] + (i + 0.5) * width[line] / n,
                      origin[1] + (line + 0.5) * line_px), line) for i in range(n)]

    def read(user, cal, poses, rng, recal=None, meter=None):
        """One reading: (fixation centres on the reply [n, 2], the line read by each)."""
        detector = FixationDetector(ppd)
        t_ns, frames, fixations = 0, [], []

        def fixation(done):
            fixations.append(done)
            if meter is not None:
                measured = meter.add("reply", done.x - origin[0], done.y - origin[1], done.end_ns,
                                     top, height, left, width)
                if measured is not None:
                    recal.add_reading_offset(measured.offset_px, now=t_ns / 1e9,
                                             since=measured.since_ns / 1e9)
        for target, line in targets:
            for _ in range(7):
                r, t = next(poses)
                landmarks = scene.landmarks(user, r, t, target, rng, noise, gaze_jitter_deg=0.2)
                f = F.extract(landmarks, cal.reference, scene.width, scene.height).vector
                point = cal.mapper.predict(f[None])[0] + (0.0, drift_px)
                x, y = recal.apply(point) if recal is not None else point
                t_ns += 33_333_333
                frames.append((t_ns, line))
                done = detector.add(t_ns, x, y)
                if done is not None:
                    fixation(done)
        done = detector.flush()
        if done is not None:
            fixation(done)
        times, lines = np.array(frames).T
        truth = np.array([np.bincount(lines[(times >= fx.start_ns) & (times < fx.end_ns)]).argmax()
                          for fx in fixations])
        return np.array([(fx.x - origin[0], fx.y - origin[1]) for fx in fixations]), truth

    under, decoded, off_lines, under_taught, off_taught, shifts = [], [], [], [], [], []
    for seed in range(users):
        rng = np.random.default_rng(300 + seed)
        user = S.SimUser.random(rng, face)
        cal, _ = S.run_calibration(scene, user, rng, noise=noise, kinds=("ridge",))
        head = S.HeadPath(np.array([0.0, 90.0, 600.0]) + rng.uniform(-1, 1, 3) * (30, 20, 50),
                          rng.uniform(-1, 1, 3) * (5, 4, 3))
        poses = head.walk(4 * 7 * len(targets), rng)
        centres, truth = read(user, cal, poses, rng)
        found = assign_lines(centres[:, 0], centres[:, 1], top, height, left, width)
        under.append(np.mean(np.floor(centres[:, 1] / line_px) == truth))
        decoded.append(np.mean(found.line == truth))
        off_lines.append(float(np.median(np.abs(centres[:, 1] - (truth + 0.5) * line_px))) / line_px)
        recal, meter = ClickRecalibrator(scene.screen), ReadingOffsetMeter()
        for _ in range(3):
            centres, truth = read(user, cal, poses, rng, recal, meter)
        under_taught.append(np.mean(np.floor(centres[:, 1] / line_px) == truth))
        off_taught.append(float(np.median(np.abs(centres[:, 1] - (truth + 0.5) * line_px))) / line_px)
        shifts.append(round(recal.reading_dy / line_px, 2))
    mean = lambda values: round(float(np.mean(values)), 3)          # noqa: E731
    return {"reading_users": users, "line_px": line_px,
            "line_under_point_share": mean(under), "line_decoded_share": mean(decoded),
            "line_decoded_share_per_user": [round(float(v), 3) for v in decoded],
            "fixation_vertical_error_lines_median": round(float(np.median(off_lines)), 2),
            "line_under_point_share_after_reading_3": mean(under_taught),
            "fixation_vertical_error_lines_median_after_reading_3": round(float(np.median(off_taught)), 2),
            "reading_shift_lines_per_user": shifts}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--video", help="a video file to replay as the camera")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--pairs", type=int, default=4, help="ABBA chat pairs per thread count")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--users", type=int, default=3, help="simulated users per noise level")
    parser.add_argument("--skip", default="", help="comma list: chat,load,ui,calibration,fixations,lines")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    from gaze.geometry import ScreenGeometry
    report = {"load_avg_1m_at_start": os.getloadavg()[0], "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="glance-gaze-") as tmp:
        videos = make_videos(args, Path(tmp))
        screen = ScreenGeometry.from_dpi(1920, 1080, 92.0)
        cal = pipeline_calibration(videos["30"], screen)
        report["video"] = args.video or "astronaut 640x480 synthesised (known motion)"
        report.update(track(videos["30"], cal, args.seconds))
        report["decode_ms_per_frame"] = decode_ms_per_frame(videos["30"])
        if videos["60"]:
            at60 = track(videos["60"], cal, args.seconds / 2)
            report.update({f"{k}_60fps": v for k, v in at60.items()
                           if k in ("fps", "cpu_fraction", "latency_p95_ms", "cpu_ms_per_frame")})
        if "chat" not in skip:
            report.update(chat(videos["30"], cal, args.pairs, args.max_tokens))
        if "load" not in skip:
            report.update(chat_beside_load(report["cpu_ms_per_frame"], args.pairs,
                                           args.max_tokens))
        if "ui" not in skip:
            report.update(ui_gaps(videos["30"], cal, args.max_tokens, 2))
    if "calibration" not in skip:
        report["calibration_recovery"] = calibration_recovery(args.users)
    if "fixations" not in skip:
        report["fixation_detection"] = fixation_quality()
    if "lines" not in skip:
        users = max(args.users, 6)
        report["lines_read"] = {"noise_1x": lines_read(users, 1.0),
                                "noise_2x": lines_read(users, 2.0),
                                "noise_1x_drift_50px": lines_read(users, 1.0, drift_px=50.0)}
    report["load_avg_1m_at_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
