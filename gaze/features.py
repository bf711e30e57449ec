"""From one face-mesh result to the numbers gaze is computed from. Pure numpy.

Landmarks come in as a (478, 3) array in pixels: x·W, y·H, z·W (MediaPipe's z is a
relative depth on the same scale as x; larger = farther from the camera). Axes are the
camera's: x right, y down, z away from the camera.

* **Head pose** by Procrustes (rotation + scale + translation, least squares) of
  :data:`POSE_POINTS` — landmarks on the skull that do not move with the eyes, brows or
  mouth — against a reference shape captured at calibration (or the first face seen).
  Yaw/pitch/roll are relative to that reference: R = Ry(yaw)·Rx(pitch)·Rz(roll);
  yaw > 0 turns the face towards the image's left, pitch > 0 tilts it down, roll > 0 turns
  it clockwise on the image.
* **Head position and distance**: the centroid of the pose points in the image (−0.5 …
  0.5 of the frame, 0 = centre) and the Procrustes scale (1 = as far as at calibration,
  > 1 = closer), plus the inter-ocular distance as a fraction of the frame width.
* **Eyes in the head frame**: iris centre (mean of the five iris landmarks) relative to the
  midpoint of the eye corners, after undoing the head's rotation, scale and position, in
  units of the reference inter-ocular distance; and the upper-lid height (the upper lid
  follows vertical gaze, which the iris alone shows weakly).
* **Eye aspect ratio** (Soukupová & Čech 2016) per eye, in the image, for blinks.
"""
from dataclasses import dataclass

import numpy as np

# Subject's right eye is on the image's left in an unmirrored frame; each pair is
# (corner on the image's left, corner on the image's right).
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (362, 263)
RIGHT_IRIS = (468, 469, 470, 471, 472)
LEFT_IRIS = (473, 474, 475, 476, 477)
RIGHT_UPPER_LID, RIGHT_LOWER_LID = 159, 145
LEFT_UPPER_LID, LEFT_LOWER_LID = 386, 374
# Eye aspect ratio points p1..p6 (corner, upper, upper, corner, lower, lower).
RIGHT_EAR = (33, 160, 158, 133, 153, 144)
LEFT_EAR = (362, 385, 387, 263, 373, 380)
EYE_OUTLINES = (
    (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7),
    (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249),
)
# Skull landmarks for pose: nose bridge and tip, forehead, cheekbones, temples, eye
# corners (fixed to the skull), face sides. Not brows, lids, lips or jaw.
POSE_POINTS = (1, 4, 5, 6, 8, 9, 10, 151, 168, 195, 197, 33, 133, 362, 263, 127, 356,
               234, 454, 93, 323, 116, 345, 123, 352, 50, 280, 21, 251, 54, 284, 109, 338,
               67, 297, 103, 332)
N_LANDMARKS = 478

FEATURE_NAMES = ("right_u", "right_v", "left_u", "left_v", "right_lid", "left_lid",
                 "yaw", "pitch", "roll", "head_x", "head_y", "scale")


def euler_from_matrix(r: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in radians for R = Ry(yaw)·Rx(pitch)·Rz(roll)."""
    pitch = float(np.arcsin(np.clip(-r[1, 2], -1.0, 1.0)))
    yaw = float(np.arctan2(r[0, 2], r[2, 2]))
    roll = float(np.arctan2(r[1, 0], r[1, 1]))
    return yaw, pitch, roll


def procrustes(reference: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Rotation R, scale s and translation t with points ≈ s·R·reference + t (rows are
    points), least squares (Umeyama 1991)."""
    mu_a, mu_b = reference.mean(0), points.mean(0)
    a, b = reference - mu_a, points - mu_b
    u, sv, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    fix = np.array([1.0, 1.0, d])
    r = (u * fix) @ vt
    s = float((sv * fix).sum() / (a * a).sum())
    return r, s, mu_b - s * r @ mu_a


@dataclass(frozen=True)
class HeadReference:
    """The head shape that pose is measured against (pose points, centred, pixels) and
    the inter-ocular distance in the same frame."""
    shape: np.ndarray      # (len(POSE_POINTS), 3)
    iod: float

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray | list[np.ndarray]) -> "HeadReference":
        """From one face, or the average of several (each aligned to the first)."""
        faces = [landmarks] if np.ndim(landmarks) == 2 else list(landmarks)
        first = faces[0][list(POSE_POINTS)]
        first = first - first.mean(0)
        aligned = []
        for face in faces:
            pts = face[list(POSE_POINTS)]
            r, s, t = procrustes(first, pts)
            aligned.append(((pts - t) @ r) / s)      # back into the first face's frame
        shape = np.mean(aligned, axis=0)
        shape -= shape.mean(0)
        iod = float(np.mean([_iod(f) for f in faces]))
        return cls(shape=shape, iod=iod)

    def to_dict(self) -> dict:
        return {"shape": self.shape.tolist(), "iod": self.iod}

    @classmethod
    def from_dict(cls, d: dict) -> "HeadReference":
        return cls(shape=np.asarray(d["shape"], float), iod=float(d["iod"]))


def _iod(landmarks: np.ndarray) -> float:
    right = landmarks[list(RIGHT_IRIS)].mean(0)
    left = landmarks[list(LEFT_IRIS)].mean(0)
    return float(np.linalg.norm((right - left)[:2]))


def eye_aspect_ratio(landmarks: np.ndarray, idx=RIGHT_EAR) -> float:
    p = landmarks[list(idx), :2]
    vertical = np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])
    horizontal = 2.0 * np.linalg.norm(p[0] - p[3])
    return float(vertical / horizontal) if horizontal > 0 else 0.0


@dataclass(frozen=True)
class FrameFeatures:
    vector: np.ndarray        # FEATURE_NAMES order
    ear: float                # mean eye aspect ratio of both eyes
    yaw: float                # radians (also in vector)
    pitch: float
    roll: float
    scale: float              # 1 = as far as the reference; > 1 = closer
    head_x: float             # pose-point centroid, fraction of frame from the centre
    head_y: float
    iod_fraction: float       # inter-ocular distance / frame width (distance proxy)
    fit_residual: float       # Procrustes RMS residual / reference IOD (mesh quality)


def extract(landmarks: np.ndarray, reference: HeadReference, width: int,
            height: int) -> FrameFeatures:
    """All features of one face (landmarks in pixels, see the module docstring)."""
    pts = landmarks[list(POSE_POINTS)]
    r, s, t = procrustes(reference.shape, pts)
    residual = pts - (s * reference.shape @ r.T + t)
    fit = float(np.sqrt((residual ** 2).sum(1).mean()) / (s * reference.iod))
    yaw, pitch, roll = euler_from_matrix(r)

    def head(p):  # image pixels -> head frame (reference pixels), position and scale undone
        return ((p - t) @ r) / s

    values = []
    lids = []
    for corners, iris, upper in ((RIGHT_EYE_CORNERS, RIGHT_IRIS, RIGHT_UPPER_LID),
                                 (LEFT_EYE_CORNERS, LEFT_IRIS, LEFT_UPPER_LID)):
        c = head(landmarks[list(corners)])
        mid = c.mean(0)
        i = head(landmarks[list(iris)]).mean(0)
        lid = head(landmarks[upper])
        values += [(i[0] - mid[0]) / reference.iod, (i[1] - mid[1]) / reference.iod]
        lids.append((lid[1] - mid[1]) / reference.iod)
    centroid = pts.mean(0)
    head_x = float(centroid[0] / width - 0.5)
    head_y = float(centroid[1] / height - 0.5)
    vector = np.array(values + lids + [yaw, pitch, roll, head_x, head_y, s], float)
    ear = 0.5 * (eye_aspect_ratio(landmarks, RIGHT_EAR) + eye_aspect_ratio(landmarks, LEFT_EAR))
    return FrameFeatures(vector=vector, ear=ear, yaw=yaw, pitch=pitch, roll=roll, scale=s,
                         head_x=head_x, head_y=head_y,
                         iod_fraction=_iod(landmarks) / width, fit_residual=fit)
