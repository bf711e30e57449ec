"""What the tracker hands to the app: gaze points and its health. No dependencies."""
from dataclasses import dataclass

HEALTH_STATES = ("ok", "no_camera", "face_lost", "several_faces", "camera_busy",
                 "not_calibrated", "ended",          # (a replayed video played to its end)
                 "other_screen")                     # (said by the window)


@dataclass(frozen=True)
class GazePoint:
    """One gaze estimate in screen coordinates (global logical pixels).

    ``kind='raw'``: one camera frame, unsmoothed (blinks and rejected frames never become
    points). ``kind='fixation'``: a fixation, reported at its end (``mono_ns``/``wall_ns``
    are its end time) with its ``duration_ms``; x, y are the mean of its raw samples.
    ``confidence`` is 0…1 (face-mesh fit and distance from the calibration pose).
    """
    mono_ns: int
    wall_ns: int
    x: float
    y: float
    kind: str = "raw"
    confidence: float = 1.0
    duration_ms: float | None = None


@dataclass(frozen=True)
class Health:
    """``state`` is one of HEALTH_STATES; ``message`` says in plain words what to do.
    ``drift`` turns on when recent clicks say the estimate has wandered (recalibrate);
    ``hint`` is an optional extra sentence (e.g. "you moved closer than at calibration")."""
    state: str
    message: str
    drift: bool = False
    hint: str = ""
    fps: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == "ok"
