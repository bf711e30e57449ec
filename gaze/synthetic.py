"""Real face imagery with known head motion, for tests and the benchmark.

``skimage.data.astronaut()`` (a photograph shipped inside scikit-image, no download) is
framed like a webcam image (face ≈ 150 px wide in 640×480) and moved frame by frame with
known translations, zoom, in-plane rotation (roll) and perspective warps that mimic yaw
and pitch: the photograph is treated as a plane through the face centre, rotated in 3-D
and projected by a pinhole camera. The rotation matrix uses the same convention as
:func:`gaze.features.euler_from_matrix` (camera axes: x right, y down, z away from the
camera; R = Ry(yaw) · Rx(pitch) · Rz(roll)), so estimated and commanded angles can be
compared by sign.

cv2 and scikit-image are imported inside the functions (``import gaze`` stays light).
"""
from dataclasses import dataclass

import numpy as np

# Where the astronaut's face is in the 512×512 photograph (from the face mesh, rounded).
FACE_CENTRE = (225.0, 124.0)
FACE_SCALE = 1.6           # photograph pixels → frame pixels (face ≈ 150 px wide)


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Ry(yaw) · Rx(pitch) · Rz(roll), angles in radians (camera axes)."""
    ca, sa = np.cos(yaw), np.sin(yaw)
    cb, sb = np.cos(pitch), np.sin(pitch)
    cc, sc = np.cos(roll), np.sin(roll)
    ry = np.array([[ca, 0, sa], [0, 1, 0], [-sa, 0, ca]])
    rx = np.array([[1, 0, 0], [0, cb, -sb], [0, sb, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return ry @ rx @ rz


@dataclass(frozen=True)
class Motion:
    """One frame's commanded head motion (pixels, degrees, relative zoom)."""
    tx: float = 0.0
    ty: float = 0.0
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    zoom: float = 1.0


def schedule(frames_per_segment: int = 30) -> list[Motion]:
    """A motion sequence in segments, each a smooth sweep of one kind of motion:
    still, horizontal shift, vertical shift, yaw, pitch, roll, zoom, then all at once."""
    n = frames_per_segment
    phase = np.sin(np.linspace(0, 2 * np.pi, n, endpoint=False))
    out: list[Motion] = [Motion() for _ in range(n // 2)]
    out += [Motion(tx=60 * p) for p in phase]
    out += [Motion(ty=40 * p) for p in phase]
    out += [Motion(yaw=25 * p) for p in phase]
    out += [Motion(pitch=20 * p) for p in phase]
    out += [Motion(roll=15 * p) for p in phase]
    out += [Motion(zoom=1 + 0.2 * p) for p in phase]
    cos = np.cos(np.linspace(0, 2 * np.pi, n, endpoint=False))
    out += [Motion(tx=30 * p, ty=-20 * c, yaw=15 * c, pitch=-10 * p, roll=5 * p)
            for p, c in zip(phase, cos)]
    return out


def homography(motion: Motion, centre: tuple[float, float], focal: float = 700.0,
               depth: float = 700.0) -> np.ndarray:
    """Frame-to-frame homography for a face plane through ``centre`` rotated by the
    motion's angles, then zoomed and shifted (pixels in the output frame)."""
    cx, cy = centre
    r = rotation_matrix(*np.radians([motion.yaw, motion.pitch, motion.roll]))
    square = np.array([[-100, -100], [100, -100], [100, 100], [-100, 100]], float)
    plane = np.c_[square, np.zeros(4)] @ r.T + [0, 0, depth]
    projected = focal * plane[:, :2] / plane[:, 2:3] * motion.zoom
    source = square + [cx, cy]
    target = projected + [cx + motion.tx, cy + motion.ty]
    import cv2
    return cv2.getPerspectiveTransform(source.astype(np.float32), target.astype(np.float32))


def base_frame(size=(640, 480)) -> np.ndarray:
    """The photograph framed like a webcam image (BGR, uint8), face centred a little high."""
    import cv2
    from skimage import data
    w, h = size
    rgb = data.astronaut()
    s = FACE_SCALE * w / 640.0
    a = np.array([[s, 0, w / 2 - s * FACE_CENTRE[0]], [0, s, 0.45 * h - s * FACE_CENTRE[1]]])
    return cv2.warpAffine(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), a, (w, h),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def face_centre(size=(640, 480)) -> tuple[float, float]:
    w, h = size
    return (w / 2, 0.45 * h)


def render(motion: Motion, base: np.ndarray) -> np.ndarray:
    import cv2
    h, w = base.shape[:2]
    m = homography(motion, face_centre((w, h)))
    return cv2.warpPerspective(base, m, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)


def close_eyes(frame: np.ndarray, landmarks_px: np.ndarray) -> np.ndarray:
    """The same frame with both eyes painted over by the surrounding skin (a blink):
    each eye's outline (from a face-mesh result on this frame) is inpainted."""
    import cv2
    from .features import EYE_OUTLINES
    mask = np.zeros(frame.shape[:2], np.uint8)
    for outline in EYE_OUTLINES:
        pts = landmarks_px[list(outline), :2]
        centre = pts.mean(0)
        grown = centre + (pts - centre) * [1.25, 1.9]    # cover lashes and lid edges
        cv2.fillPoly(mask, [np.round(grown).astype(np.int32)], 255)
    return cv2.inpaint(frame, mask, 5, cv2.INPAINT_TELEA)


def write_video(path, motions: list[Motion], size=(640, 480), fps: float = 30.0,
                frames: list[np.ndarray] | None = None) -> str:
    """Write the motion sequence (or given frames) as an MJPG .avi that
    cv2.VideoCapture reads back. Returns the path as a string."""
    import cv2
    path = str(path)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    try:
        if frames is None:
            base = base_frame(size)
            frames = (render(m, base) for m in motions)
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return path


def astronaut_video(path, frames_per_segment: int = 30, size=(640, 480),
                    fps: float = 30.0) -> tuple[str, list[Motion]]:
    motions = schedule(frames_per_segment)
    return write_video(path, motions, size, fps), motions


# --- scanpaths (pure numpy) -----------------------------------------------------------------
@dataclass(frozen=True)
class Scanpath:
    t_ns: np.ndarray          # sample times
    x: np.ndarray             # pixels, NaN = no sample (blink)
    y: np.ndarray
    fixations: list           # true fixations: (start_ns, end_ns, x, y)


def reading_scanpath(rng: np.random.Generator, px_per_degree: float, n_fixations: int = 120,
                     noise_deg: float = 0.4, rate_hz: float = 30.0, jitter_ms: float = 3.0,
                     saccade_deg: tuple[float, float] = (3.0, 0.8), line_width_deg: float = 24.0,
                     line_spacing_deg: float = 1.5, regression_p: float = 0.12,
                     dropout_p: float = 0.02, outlier_p: float = 0.01,
                     blink_p: float = 0.05) -> Scanpath:
    """Samples of someone reading left to right: fixations (log-normal durations, median
    ≈ 220 ms, ≥ 110 ms), forward saccades (amplitude mean±sd ``saccade_deg``), regressions,
    return sweeps; a camera at ``rate_hz`` with timing jitter, per-axis Gaussian noise,
    dropped samples, outliers (3–6° away) and blinks (≈ 200 ms without samples) that fall
    between fixations, as most blinks do."""
    ppd = px_per_degree
    x0, y0 = 100.0, 100.0
    x, y = x0, y0
    events = []                  # (kind, start_s, end_s, x0, y0, x1, y1)
    t = 0.0
    for i in range(n_fixations):
        dur = max(0.11, rng.lognormal(np.log(0.22), 0.35))
        events.append(("fix", t, t + dur, x, y, x, y))
        t += dur
        if i == n_fixations - 1:
            break
        if rng.random() < regression_p and x - x0 > 3 * ppd:
            nx, ny = x - rng.uniform(2.0, 4.0) * ppd, y
        else:
            nx, ny = x + max(2.0, rng.normal(*saccade_deg)) * ppd, y
            if nx - x0 > line_width_deg * ppd:
                nx, ny = x0 + rng.uniform(0, 1) * ppd, y + line_spacing_deg * ppd
        sdur = 0.03 + 0.002 * np.hypot(nx - x, ny - y) / ppd
        if rng.random() < blink_p:
            sdur += rng.uniform(0.15, 0.25)
            events.append(("blink", t, t + sdur, x, y, nx, ny))
        else:
            events.append(("sac", t, t + sdur, x, y, nx, ny))
        t += sdur
        x, y = nx, ny
    n = int(t * rate_hz)
    ts = np.arange(n) / rate_hz + rng.uniform(-jitter_ms, jitter_ms, n) / 1000.0
    ts = np.clip(ts, 0, None)
    xs = np.full(n, np.nan)
    ys = np.full(n, np.nan)
    starts = np.array([e[1] for e in events])
    for k, tk in enumerate(ts):
        j = max(0, np.searchsorted(starts, tk, side="right") - 1)
        kind, s, e, ax, ay, bx, by = events[j]
        if kind == "blink":
            continue
        a = 0.0 if kind == "fix" else min(1.0, (tk - s) / (e - s))
        xs[k] = ax + a * (bx - ax)
        ys[k] = ay + a * (by - ay)
    xs += rng.normal(0, noise_deg * ppd, n)
    ys += rng.normal(0, noise_deg * ppd, n)
    out = rng.random(n) < outlier_p
    ang = rng.uniform(0, 2 * np.pi, n)
    amp = rng.uniform(3, 6, n) * ppd
    xs[out] += amp[out] * np.cos(ang[out])
    ys[out] += amp[out] * np.sin(ang[out])
    drop = rng.random(n) < dropout_p
    xs[drop] = np.nan
    ys[drop] = np.nan
    truth = [(int(s * 1e9), int(e * 1e9), ax, ay) for kind, s, e, ax, ay, _, _ in events
             if kind == "fix"]
    return Scanpath((ts * 1e9).astype(np.int64), xs, ys, truth)


def two_faces_frame(size=(640, 480)) -> np.ndarray:
    """The framed photograph with a second, smaller copy of the face pasted on the
    right: a frame with "several faces"."""
    import cv2
    base = base_frame(size)
    small = cv2.resize(base, None, fx=0.7, fy=0.7)
    cx, cy = (int(c * 0.7) for c in face_centre(size))
    crop = small[cy - 90:cy + 90, cx - 80:cx + 80]
    out = base.copy()
    out[150:330, 470:630] = crop
    return out
