"""A simulated user in front of a screen and webcam, producing face-mesh landmarks with
known gaze: for measuring calibration (recovery error in degrees, with landmark noise and
head movement) where no person is at hand. Pure numpy.

Geometry (millimetres, camera axes: x right, y down, z away from the camera; the screen
lies in the plane z = 0, the camera at ``ScreenGeometry.camera_px``, the user's right is
the camera's −x):

* The face is a 478-point mesh (MediaPipe's topology) in a head frame whose origin is
  between the eyes, scaled to a 63 mm inter-ocular distance; by default the astronaut's
  own mesh (:func:`astronaut_face`), so the same landmarks the pipeline uses are present.
* Each eye is a 12 mm ball behind its resting iris; the iris centre and a 5.9 mm ring of
  four points sit on the optical axis, which differs from the visual axis (the line to
  the target) by the angle kappa (≈ 5° nasal, 1.5° up, varied per simulated user). The
  upper lid follows vertical eye rotation by 55 %, the lower by 25 %.
* A pinhole camera (focal ``focal_px``) projects x, y; z is the depth along the ray to
  the head divided the same way (MediaPipe's relative depth on the scale of x).
* Gaussian noise is added to every landmark: ``iris_px`` for the ten iris points,
  ``other_px`` for the rest. Measured on the astronaut photograph with sensor noise
  (see docs/gaze.md): iris ≈ 0.06 px, other points ≈ 0.25 px SD — a lower bound for
  a live webcam, so results are reported at 1×, 2× and 4× that.
"""
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from . import features as F
from .geometry import ScreenGeometry
from .synthetic import rotation_matrix

IOD_MM = 63.0
EYE_RADIUS_MM = 12.0
IRIS_RADIUS_MM = 5.9
UPPER_LIDS = ((159, 158, 160, 157, 161), (386, 385, 387, 384, 388))
LOWER_LIDS = ((145, 144, 153, 154, 163), (374, 373, 380, 381, 390))


@lru_cache(maxsize=1)
def astronaut_face() -> np.ndarray:
    """The astronaut's face mesh (478×3, pixels of the 512×512 photograph), from
    MediaPipe in static-image mode."""
    import mediapipe as mp
    from skimage import data
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True,
                                         max_num_faces=1) as mesh:
        result = mesh.process(data.astronaut())
    lm = np.array([(p.x, p.y, p.z) for p in result.multi_face_landmarks[0].landmark])
    return lm * 512.0


def face_in_mm(landmarks_px: np.ndarray) -> np.ndarray:
    """Head frame: origin between the resting irises, 63 mm between them."""
    right = landmarks_px[list(F.RIGHT_IRIS)].mean(0)
    left = landmarks_px[list(F.LEFT_IRIS)].mean(0)
    scale = IOD_MM / np.linalg.norm((right - left)[:2])
    return (landmarks_px - 0.5 * (right + left)) * scale


@dataclass
class SimUser:
    face: np.ndarray                      # (478, 3) head frame, mm
    kappa: np.ndarray                     # (2 eyes, 2) horizontal, vertical (radians)
    eye_radius: float = EYE_RADIUS_MM
    centres: np.ndarray = field(init=False)
    rest_iris: np.ndarray = field(init=False)

    def __post_init__(self):
        self.rest_iris = np.array([self.face[list(F.RIGHT_IRIS)].mean(0),
                                   self.face[list(F.LEFT_IRIS)].mean(0)])
        self.centres = self.rest_iris + [0.0, 0.0, self.eye_radius]

    @classmethod
    def random(cls, rng: np.random.Generator, face: np.ndarray) -> "SimUser":
        stretch = rng.uniform(0.92, 1.08, size=3)          # head shape varies a little
        nasal = np.radians(rng.normal(5.0, 1.5))
        up = np.radians(rng.normal(1.5, 1.0))
        # Subject's right eye (image left, camera −x side): nasal is towards +x.
        kappa = np.array([[nasal, -up], [-nasal, -up]])
        return cls(face=face * stretch, kappa=kappa)


@dataclass
class Scene:
    screen: ScreenGeometry
    width: int = 640
    height: int = 480
    focal_px: float = 600.0
    iris_px: float = 0.06
    other_px: float = 0.25

    def screen_to_camera(self, xy_px) -> np.ndarray:
        """Screen pixels → camera millimetres (z = 0)."""
        xy = np.atleast_2d(np.asarray(xy_px, float))
        cx, cy = self.screen.camera_px
        ppmm = self.screen.px_per_mm
        return np.c_[-(xy[:, 0] - cx) / ppmm, (xy[:, 1] - cy) / ppmm, np.zeros(len(xy))]

    def eye_midpoint(self, user: SimUser, r: np.ndarray, t: np.ndarray) -> np.ndarray:
        return r @ user.centres.mean(0) + t

    def landmarks(self, user: SimUser, r: np.ndarray, t: np.ndarray, target_px,
                  rng: np.random.Generator | None = None, noise: float = 1.0,
                  gaze_jitter_deg: float = 0.0) -> np.ndarray:
        """Face-mesh landmarks (pixels, MediaPipe's convention) of ``user`` with head
        rotation ``r`` and position ``t`` (mm) looking at ``target_px`` on the screen."""
        pts = user.face.copy()
        target = self.screen_to_camera(target_px)[0]
        for eye, iris_idx in enumerate((F.RIGHT_IRIS, F.LEFT_IRIS)):
            centre_world = r @ user.centres[eye] + t
            visual = target - centre_world
            visual /= np.linalg.norm(visual)
            v = r.T @ visual
            # visual → optical axis: turn by kappa (and fixational jitter), head frame
            yaw_v = np.arctan2(v[0], -v[2]) - user.kappa[eye, 0]
            pitch_v = np.arctan2(v[1], np.hypot(v[0], v[2])) - user.kappa[eye, 1]
            if rng is not None and gaze_jitter_deg > 0:
                yaw_v += np.radians(rng.normal(0, gaze_jitter_deg))
                pitch_v += np.radians(rng.normal(0, gaze_jitter_deg))
            o = np.array([np.sin(yaw_v) * np.cos(pitch_v), np.sin(pitch_v),
                          -np.cos(yaw_v) * np.cos(pitch_v)])
            iris = user.centres[eye] + user.eye_radius * o
            e1 = np.cross(o, [0.0, 1.0, 0.0])
            e1 /= np.linalg.norm(e1)
            e2 = np.cross(o, e1)
            ring = [iris + IRIS_RADIUS_MM * (np.cos(a) * e1 + np.sin(a) * e2)
                    for a in (0.0, np.pi / 2, np.pi, 3 * np.pi / 2)]
            pts[list(iris_idx)] = np.vstack([iris] + ring)
            dy = iris[1] - user.rest_iris[eye, 1]
            pts[list(UPPER_LIDS[eye]), 1] += 0.55 * dy
            pts[list(LOWER_LIDS[eye]), 1] += 0.25 * dy
        cam = pts @ r.T + t
        u = self.focal_px * cam[:, 0] / cam[:, 2] + self.width / 2
        v = self.focal_px * cam[:, 1] / cam[:, 2] + self.height / 2
        ray = t / np.linalg.norm(t)
        z = (cam - t) @ ray * self.focal_px / np.linalg.norm(t)
        out = np.c_[u, v, z]
        if rng is not None and noise > 0:
            sd = np.full(len(out), self.other_px * noise)
            sd[468:478] = self.iris_px * noise
            out += rng.normal(size=out.shape) * sd[:, None]
        return out

    def error_deg(self, user, r, t, predicted_px, target_px) -> float:
        """Angle at the eyes between the target and the estimate."""
        eye = self.eye_midpoint(user, r, t)
        a = self.screen_to_camera(target_px)[0] - eye
        b = self.screen_to_camera(predicted_px)[0] - eye
        c = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
        return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


@dataclass
class HeadPath:
    """Slow head sway around a base pose (random walk, per frame)."""
    base_t: np.ndarray
    base_angles: np.ndarray = field(default_factory=lambda: np.zeros(3))   # degrees
    step_mm: float = 0.3
    step_deg: float = 0.05

    def walk(self, n: int, rng: np.random.Generator):
        dt = np.cumsum(rng.normal(0, self.step_mm, (n, 3)), 0)
        da = np.cumsum(rng.normal(0, self.step_deg, (n, 3)), 0)
        for i in range(n):
            ang = np.radians(self.base_angles + da[i])
            yield rotation_matrix(*ang), self.base_t + dt[i]


def default_screen() -> ScreenGeometry:
    """A 24-inch 1920×1080 monitor (≈ 92 dpi) at 600 mm."""
    return ScreenGeometry.from_dpi(1920, 1080, 92.0, distance_mm=600.0)


def record_session(scene: Scene, user: SimUser, rng: np.random.Generator, kind: str = "9",
                   noise: float = 1.0, fps: float = 30.0, base_t=(0.0, 90.0, 600.0),
                   seen=lambda phase, target, frame: "face"):
    """Show the calibration and validation targets to the simulated user and record the
    landmarks through the real :class:`CalibrationRecorder` (which then does the settling
    time, blink-free frames, outlier rejection and model choice). ``seen(phase, target,
    frame)``: "face", "blink" (the face, marked as a blink) or "none" (no face found)."""
    from .calibration import DWELL_S, CalibrationRecorder
    rec = CalibrationRecorder(scene.screen, kind)
    path = HeadPath(np.asarray(base_t, float))
    per = int(DWELL_S * fps)
    poses = path.walk(per * (len(rec.calibration_targets) + len(rec.validation_targets)), rng)
    clock = 0.0
    for phase, tgts in (("calibration", rec.calibration_targets),
                        ("validation", rec.validation_targets)):
        for i, target in enumerate(tgts):
            rec.show_target(i, phase, at=clock)
            for k in range(per):
                r, t = next(poses)
                lm = scene.landmarks(user, r, t, target, rng, noise, gaze_jitter_deg=0.2)
                state = seen(phase, i, k)
                rec.add_frame(None if state == "none" else lm, scene.width, scene.height,
                              blink=state == "blink", at=clock + k / fps)
            clock += DWELL_S
    return rec


def run_calibration(scene: Scene, user: SimUser, rng: np.random.Generator, kind: str = "9",
                    noise: float = 1.0, kinds=("ridge", "kernel", "mlp"), design=None,
                    mode: str = "geometric"):
    """Record, fit and validate: returns (calibration, validation report)."""
    rec = record_session(scene, user, rng, kind, noise)
    calibration = rec.fit(kinds=kinds, mode=mode, design=design)
    return calibration, rec.validate(calibration)


def moved_head_trials(scene: Scene, user: SimUser, calibration, rng: np.random.Generator,
                      n: int = 60, noise: float = 1.0, base_t=(0.0, 90.0, 600.0),
                      shift_mm=(60.0, 40.0, 100.0), turn_deg=(10.0, 8.0, 5.0),
                      frames: int = 1) -> np.ndarray:
    """Errors (degrees) at random screen points with the head moved and turned away from
    its calibration pose by up to ``shift_mm`` / ``turn_deg`` (uniform, per axis). With
    ``frames`` > 1, each trial is that many frames (a fixation of frames/30 s) and the
    error is that of their mean estimate."""
    errors = []
    base_t = np.asarray(base_t, float)
    for _ in range(n):
        t = base_t + rng.uniform(-1, 1, 3) * shift_mm
        ang = np.radians(rng.uniform(-1, 1, 3) * turn_deg)
        r = rotation_matrix(*ang)
        target = scene.screen.relative(*rng.uniform(0.05, 0.95, 2))
        est = []
        for _ in range(frames):
            lm = scene.landmarks(user, r, t, target, rng, noise, gaze_jitter_deg=0.2)
            f = F.extract(lm, calibration.reference, scene.width, scene.height).vector
            est.append(calibration.mapper.predict(f[None])[0])
        errors.append(scene.error_deg(user, r, t, np.mean(est, axis=0), target))
    return np.array(errors)
