"""Calibration: target sequences, the feature → screen regression, validation, saving.

Everything here is numpy at run time. Fitting the small MLP alternative uses
scikit-learn (the ``align`` extra) when it is installed; the fitted MLP, like the ridge
and kernel ridge models, predicts with plain numpy, so a saved calibration never needs
scikit-learn.

The mapping (see docs/gaze.md for the reasoning), :class:`GazeMapper`:

1. The regression's inputs are the eye features in the head frame (iris offsets and
   upper-lid heights from :mod:`gaze.features`), divided by fixed physical scales (not
   by the spread of the calibration data, so a column that hardly varied is not blown
   up), plus squares and a product of the mean iris offsets.
2. The regression (ridge, kernel ridge or MLP, chosen by leave-one-target-out error)
   gives the eye's direction *in the head*: two angles. Its training targets are the
   directions from the eye to each calibration target, turned into the head frame by
   the head rotation measured on that frame.
3. Geometry does the rest: the head rotation turns the direction into the camera's
   frame and the ray from an eye at the viewing distance (``distance_mm`` / scale)
   meets the screen plane, where the camera sits. So head turns and distance changes
   after calibration need no learning. Sideways head movement needs no term of its
   own: the mesh sees a face that moved sideways as turned by the viewing angle, and
   with the camera in the screen plane that apparent turn cancels the movement to first
   order.
4. An affine correction fitted to recent clicks (background points with expiry,
   :class:`ClickRecalibrator`) is applied last, then a vertical shift learnt from
   reading (the lines the fixations on a reply were on, see
   ``feedback_store.reading_lines.ReadingOffsetMeter``).

``mode="direct"`` (one regression from eye features and head angles straight to pixels,
as face-mesh + ridge trackers do) is kept for comparison.
"""
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .features import FEATURE_NAMES, HeadReference, extract
from .geometry import ScreenGeometry

# Inputs of the regression and their physical scales (iris offsets in inter-ocular
# distances move ≈ 0.003 per degree of eye rotation; angles in radians).
EYE_INPUTS = ("right_u", "right_v", "left_u", "left_v", "right_lid", "left_lid")
INPUTS = EYE_INPUTS + ("yaw", "pitch", "roll")     # for mode="direct"
INPUT_SCALES = {"right_u": 0.02, "right_v": 0.02, "left_u": 0.02, "left_v": 0.02,
                "right_lid": 0.02, "left_lid": 0.02, "yaw": 0.1, "pitch": 0.1, "roll": 0.1,
                "head_x": 0.1, "head_y": 0.1}
SCALE_INDEX = FEATURE_NAMES.index("scale")
OUTPUT_SCALE = 1000.0          # pixels → order-1 numbers for the solvers (mode="direct")
ANGLE_SCALE = 0.1              # radians → order-1 numbers (mode="geometric")

SETTLE_S = 0.45    # after a target appears: the saccade and the settling of the eye
DWELL_S = 1.3      # how long a calibration target is shown
VALIDATION_TARGETS = ((0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7))
DEFAULT_THRESHOLD_DEG = 4.0


def targets(kind: str = "9") -> list[tuple[float, float]]:
    """Calibration targets as screen fractions, in the order shown. The first is the
    centre: the head reference is captured while the user looks at it."""
    if kind == "9":
        return [(0.5, 0.5), (0.1, 0.1), (0.5, 0.1), (0.9, 0.1), (0.9, 0.5), (0.5, 0.9),
                (0.1, 0.9), (0.1, 0.5), (0.9, 0.9)]
    if kind == "5":
        return [(0.5, 0.5), (0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.1, 0.9)]
    if kind == "validation":
        return list(VALIDATION_TARGETS)
    raise ValueError(f"unknown target set {kind!r} (use '9', '5' or 'validation')")


# --- design and models ------------------------------------------------------------------
@dataclass(frozen=True)
class Design:
    """Which features go in and how they are scaled; ``quadratic`` adds squares and the
    product of the two eyes' mean iris offsets (the tangent's curvature)."""
    inputs: tuple[str, ...] = EYE_INPUTS
    quadratic: bool = True

    def matrix(self, f: np.ndarray) -> np.ndarray:
        f = np.atleast_2d(np.asarray(f, float))
        cols = [f[:, FEATURE_NAMES.index(n)] / INPUT_SCALES[n] for n in self.inputs]
        if self.quadratic:
            u = 0.5 * (f[:, 0] + f[:, 2]) / 0.02
            v = 0.5 * (f[:, 1] + f[:, 3]) / 0.02
            cols += [0.1 * u * u, 0.1 * v * v, 0.1 * u * v]
        return np.column_stack(cols)

    def to_dict(self) -> dict:
        return {"inputs": list(self.inputs), "quadratic": self.quadratic}

    @classmethod
    def from_dict(cls, d: dict) -> "Design":
        return cls(tuple(d["inputs"]), bool(d["quadratic"]))


class RidgeModel:
    """Linear least squares with an L2 penalty (intercept not penalised). numpy only."""
    kind = "ridge"

    def __init__(self, lam: float = 0.1):
        self.lam = lam
        self.w = self.b = None

    def fit(self, x, y):
        mx, my = x.mean(0), y.mean(0)
        xc = x - mx
        self.w = np.linalg.solve(xc.T @ xc + self.lam * len(x) * np.eye(x.shape[1]),
                                 xc.T @ (y - my))
        self.b = my - mx @ self.w
        return self

    def predict(self, x):
        return x @ self.w + self.b

    def to_dict(self):
        return {"kind": self.kind, "lam": self.lam, "w": self.w.tolist(), "b": self.b.tolist()}

    @classmethod
    def from_dict(cls, d):
        m = cls(d["lam"])
        m.w, m.b = np.asarray(d["w"]), np.asarray(d["b"])
        return m


class KernelRidgeModel:
    """Kernel ridge with an RBF kernel plus a linear kernel (so it extrapolates linearly
    beyond the calibration targets instead of falling back to the mean). numpy only."""
    kind = "kernel"

    def __init__(self, gamma: float = 0.1, lam: float = 0.1):
        self.gamma, self.lam = gamma, lam
        self.xt = self.alpha = self.my = self.mx = None

    def _k(self, a, b):
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-self.gamma * np.maximum(d2, 0)) + (a @ b.T) / a.shape[1]

    def fit(self, x, y):
        self.mx, self.my = x.mean(0), y.mean(0)
        self.xt = x - self.mx
        k = self._k(self.xt, self.xt)
        self.alpha = np.linalg.solve(k + self.lam * np.eye(len(x)), y - self.my)
        return self

    def predict(self, x):
        return self._k(x - self.mx, self.xt) @ self.alpha + self.my

    def to_dict(self):
        return {"kind": self.kind, "gamma": self.gamma, "lam": self.lam,
                "xt": self.xt.tolist(), "alpha": self.alpha.tolist(),
                "mx": self.mx.tolist(), "my": self.my.tolist()}

    @classmethod
    def from_dict(cls, d):
        m = cls(d["gamma"], d["lam"])
        m.xt, m.alpha = np.asarray(d["xt"]), np.asarray(d["alpha"])
        m.mx, m.my = np.asarray(d["mx"]), np.asarray(d["my"])
        return m


class MLPModel:
    """One hidden tanh layer. Fitted with scikit-learn's MLPRegressor (L-BFGS), predicted
    with numpy from the exported weights."""
    kind = "mlp"

    def __init__(self, hidden: int = 16, alpha: float = 1.0, seed: int = 0):
        self.hidden, self.alpha, self.seed = hidden, alpha, seed
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []

    def fit(self, x, y):
        from sklearn.neural_network import MLPRegressor
        net = MLPRegressor(hidden_layer_sizes=(self.hidden,), activation="tanh",
                           solver="lbfgs", alpha=self.alpha, max_iter=3000,
                           random_state=self.seed)
        net.fit(x, y)
        self.layers = [(np.asarray(w), np.asarray(b))
                       for w, b in zip(net.coefs_, net.intercepts_)]
        return self

    def predict(self, x):
        h = np.tanh(x @ self.layers[0][0] + self.layers[0][1])
        return h @ self.layers[1][0] + self.layers[1][1]

    def to_dict(self):
        return {"kind": self.kind, "hidden": self.hidden, "alpha": self.alpha,
                "layers": [[w.tolist(), b.tolist()] for w, b in self.layers]}

    @classmethod
    def from_dict(cls, d):
        m = cls(d["hidden"], d["alpha"])
        m.layers = [(np.asarray(w), np.asarray(b)) for w, b in d["layers"]]
        return m


MODEL_CLASSES = {c.kind: c for c in (RidgeModel, KernelRidgeModel, MLPModel)}
GRIDS = {
    "ridge": [{"lam": lam} for lam in (1e-4, 1e-3, 1e-2, 0.1, 1.0)],
    "kernel": [{"gamma": g, "lam": lam} for g in (0.01, 0.05, 0.2) for lam in (1e-2, 0.1, 1.0)],
    "mlp": [{"alpha": a} for a in (1.0, 10.0)],
}


def sklearn_available() -> bool:
    try:
        import sklearn  # noqa: F401
        return True
    except ImportError:
        return False


# --- the mapper ------------------------------------------------------------------------
@dataclass
class Affine:
    """Correction applied last: p' = a @ p + b (pixels)."""
    a: np.ndarray = field(default_factory=lambda: np.eye(2))
    b: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def apply(self, p: np.ndarray) -> np.ndarray:
        return p @ self.a.T + self.b

    def to_dict(self):
        return {"a": self.a.tolist(), "b": self.b.tolist()}

    @classmethod
    def from_dict(cls, d):
        return cls(np.asarray(d["a"], float), np.asarray(d["b"], float))


class GazeMapper:
    """Feature vectors (FEATURE_NAMES order) → screen points (global logical px).

    ``mode="geometric"`` (the default): the regression maps the eye features to the
    eye's direction *in the head* (two angles); the head rotation measured by the mesh
    turns that direction into the camera's frame, and the ray from an eye at the viewing
    distance (``screen.distance_mm`` / scale) meets the screen plane. The head's
    contribution is never learned from the few head movements made while calibrating:
    it is geometry. ``mirror`` is −1 for an ordinary (unmirrored) camera image, +1 for a
    mirrored one; calibration tries both and keeps the better.

    ``mode="direct"``: one regression from all features (eyes and head rotation) straight
    to screen pixels, as face-mesh + ridge trackers do; kept for comparison.
    """

    def __init__(self, design: Design, model, screen: ScreenGeometry,
                 mode: str = "geometric", mirror: float = -1.0,
                 correction: Affine | None = None):
        if mode not in ("geometric", "direct"):
            raise ValueError(f"unknown mapper mode {mode!r}")
        self.design, self.model, self.screen = design, model, screen
        self.mode, self.mirror = mode, float(mirror)
        self.correction = correction or Affine()

    # geometry ------------------------------------------------------------------------
    def _rotations(self, f: np.ndarray) -> np.ndarray:
        from .synthetic import rotation_matrix
        yi, pi, ri = (FEATURE_NAMES.index(n) for n in ("yaw", "pitch", "roll"))
        return np.stack([rotation_matrix(a, b, c) for a, b, c in f[:, [yi, pi, ri]]])

    def _depth(self, f: np.ndarray) -> np.ndarray:
        return self.screen.distance_mm / np.clip(f[:, SCALE_INDEX], 0.5, 2.0)

    def _angles(self, f: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Eye-in-head angles (radians) that would put the gaze on screen points ``y``."""
        cx, cy = self.screen.camera_px
        ppmm = self.screen.px_per_mm
        z = self._depth(f)
        target = np.c_[self.mirror * (y[:, 0] - cx) / ppmm, (y[:, 1] - cy) / ppmm, -z]
        d = target / np.linalg.norm(target, axis=1, keepdims=True)
        h = np.einsum("nji,nj->ni", self._rotations(f), d)        # R^T d
        return np.c_[np.arctan2(h[:, 0], -h[:, 2]), np.arctan2(h[:, 1], np.hypot(h[:, 0], h[:, 2]))]

    def _screen(self, f: np.ndarray, angles: np.ndarray) -> np.ndarray:
        a, b = angles[:, 0], angles[:, 1]
        h = np.c_[np.sin(a) * np.cos(b), np.sin(b), -np.cos(a) * np.cos(b)]
        d = np.einsum("nij,nj->ni", self._rotations(f), h)
        dz = np.minimum(d[:, 2], -1e-3)                    # looking away from the screen
        lam = self._depth(f) / -dz
        cx, cy = self.screen.camera_px
        ppmm = self.screen.px_per_mm
        return np.c_[cx + self.mirror * lam * d[:, 0] * ppmm, cy + lam * d[:, 1] * ppmm]

    # fitting and prediction ------------------------------------------------------------
    def uncorrected(self, f) -> np.ndarray:
        f = np.atleast_2d(np.asarray(f, float))
        out = self.model.predict(self.design.matrix(f))
        if self.mode == "direct":
            return out * OUTPUT_SCALE
        return self._screen(f, out * ANGLE_SCALE)

    def predict(self, f) -> np.ndarray:
        return self.correction.apply(self.uncorrected(f))

    def fit(self, f: np.ndarray, y: np.ndarray) -> "GazeMapper":
        f = np.atleast_2d(np.asarray(f, float))
        y = np.asarray(y, float)
        target = y / OUTPUT_SCALE if self.mode == "direct" else self._angles(f, y) / ANGLE_SCALE
        self.model.fit(self.design.matrix(f), target)
        return self

    def to_dict(self) -> dict:
        return {"design": self.design.to_dict(), "model": self.model.to_dict(),
                "screen": self.screen.to_dict(), "mode": self.mode, "mirror": self.mirror,
                "correction": self.correction.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "GazeMapper":
        model = MODEL_CLASSES[d["model"]["kind"]].from_dict(d["model"])
        return cls(Design.from_dict(d["design"]), model, ScreenGeometry.from_dict(d["screen"]),
                   d["mode"], d["mirror"], Affine.from_dict(d["correction"]))


# --- fitting and model choice ------------------------------------------------------------
def _errors_px(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.norm(pred - y, axis=1)


def cross_validate(kind: str, params: dict, f, y, groups, screen: ScreenGeometry,
                   design: Design, mode: str = "geometric", mirror: float = -1.0) -> float:
    """Leave-one-target-out mean error in degrees."""
    errs = []
    for g in np.unique(groups):
        test = groups == g
        m = GazeMapper(design, MODEL_CLASSES[kind](**params), screen, mode, mirror)
        m.fit(f[~test], y[~test])
        errs.append(_errors_px(m.predict(f[test]), y[test]))
    return float(screen.px_to_deg(np.concatenate(errs)).mean())


def choose_and_fit(kind: str, f, y, groups, screen: ScreenGeometry, design: Design,
                   mode: str = "geometric", mirrors=(-1.0, 1.0)) -> tuple[GazeMapper, float, dict]:
    """Best hyper-parameters (and camera mirroring) of one model kind by
    leave-one-target-out error; refit on all the data."""
    import warnings
    best = None
    if mode != "geometric":
        mirrors = (-1.0,)
    with warnings.catch_warnings(), _one_blas_thread():
        warnings.simplefilter("ignore")      # sklearn's convergence notes on tiny data
        for mirror in mirrors:
            for params in GRIDS[kind]:
                err = cross_validate(kind, params, f, y, groups, screen, design, mode, mirror)
                if best is None or err < best[0]:
                    best = (err, params, mirror)
        mapper = GazeMapper(design, MODEL_CLASSES[kind](**best[1]), screen, mode, best[2])
        mapper.fit(f, y)
    return mapper, best[0], dict(best[1])


def _one_blas_thread():
    """Small solves and the MLP's L-BFGS run ≈ 10× faster on one BLAS thread than on
    several competing with the chat model for two cores."""
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(1)
    except ImportError:
        import contextlib
        return contextlib.nullcontext()


def fit_models(f: np.ndarray, y: np.ndarray, groups: np.ndarray, screen: ScreenGeometry,
               kinds=("ridge", "kernel", "mlp"), design: Design | None = None,
               mode: str = "geometric") -> tuple[GazeMapper, dict]:
    """Fit each model kind on the same calibration data; pick the one with the lowest
    leave-one-target-out error, preferring the simpler one (ridge < kernel < mlp) unless
    a more complex one is better by more than 10 %. The camera's mirroring is decided
    by the ridge fit (the first kind) and reused. Returns (mapper, comparison)."""
    design = design or (Design() if mode == "geometric" else Design(INPUTS))
    kinds = [k for k in kinds if k != "mlp" or sklearn_available()]
    results = {}
    mirrors = (-1.0, 1.0)
    for kind in kinds:
        started = time.perf_counter()
        mapper, err, params = choose_and_fit(kind, f, y, groups, screen, design, mode,
                                             mirrors)
        mirrors = (mapper.mirror,)
        results[kind] = {"cv_error_deg": err, "params": params, "mapper": mapper,
                         "fit_s": time.perf_counter() - started}
    chosen = kinds[0]
    for kind in kinds[1:]:
        if results[kind]["cv_error_deg"] < 0.9 * results[chosen]["cv_error_deg"]:
            chosen = kind
    comparison = {k: {"cv_error_deg": round(v["cv_error_deg"], 3), "params": v["params"],
                      "fit_s": round(v["fit_s"], 2)} for k, v in results.items()}
    comparison["chosen"] = chosen
    comparison["mode"] = mode
    comparison["mirror"] = results[chosen]["mapper"].mirror
    return results[chosen]["mapper"], comparison


# --- recording a calibration (GUI-free; the Qt screen drives it) ---------------------------
@dataclass
class _Frame:
    target: int
    t: float          # seconds since the target appeared
    landmarks: np.ndarray
    width: int
    height: int
    blink: bool


class CalibrationRecorder:
    """Collects face-mesh landmarks while targets are shown, then fits and validates.

    The UI calls :meth:`show_target` when a target appears (and ``None`` between
    targets); the tracker's frame listener calls :meth:`add_frame` from its thread.
    Frames in the first ``settle_s`` seconds of a target and blink frames are not used.
    Landmarks (not images) are kept in memory only until the calibration is fitted.
    """

    def __init__(self, screen: ScreenGeometry, kind: str = "9", settle_s: float = SETTLE_S):
        import threading
        self.screen = screen
        self.settle_s = settle_s
        self.kind = kind
        self.calibration_targets = [screen.relative(*p) for p in targets(kind)]
        self.validation_targets = [screen.relative(*p) for p in targets("validation")]
        self._lock = threading.Lock()
        self._phase = "calibration"
        self._current: int | None = None
        self._shown_at = 0.0
        self.frames: dict[str, list[_Frame]] = {"calibration": [], "validation": []}
        self.frames_seen = 0        # frames with a face while a target was shown
        self.blinks_seen = 0        # ... of them, blinks

    def show_target(self, index: int | None, phase: str = "calibration",
                    at: float | None = None) -> None:
        with self._lock:
            self._phase, self._current = phase, index
            self._shown_at = time.monotonic() if at is None else at

    def add_frame(self, landmarks: np.ndarray | None, width: int, height: int,
                  blink: bool = False, at: float | None = None) -> None:
        with self._lock:
            if landmarks is None or self._current is None:
                return
            # Out of the same frames as the blinks: counting every frame given (between
            # targets, without a face) put a fifth of blinks at 14 % and no advice.
            self.frames_seen += 1
            self.blinks_seen += int(blink)
            t = (time.monotonic() if at is None else at) - self._shown_at
            self.frames[self._phase].append(
                _Frame(self._current, t, np.array(landmarks, copy=True), width, height, blink))

    def usable(self, phase: str) -> list[_Frame]:
        with self._lock:
            return [f for f in self.frames[phase] if f.t >= self.settle_s and not f.blink]

    def counts(self, phase: str) -> dict[int, int]:
        out: dict[int, int] = {}
        for f in self.usable(phase):
            out[f.target] = out.get(f.target, 0) + 1
        return out

    def fit(self, kinds=("ridge", "kernel", "mlp"), threshold_deg=DEFAULT_THRESHOLD_DEG,
            min_frames_per_target: int = 5, mode: str = "geometric",
            design: Design | None = None) -> "Calibration":
        frames = self.usable("calibration")
        n_targets = len(self.calibration_targets)
        per = self.counts("calibration")
        missing = [i for i in range(n_targets) if per.get(i, 0) < min_frames_per_target]
        if missing:
            raise CalibrationError(
                f"Too few clear views of the face at {len(missing)} of {n_targets} targets. "
                + ADVICE["no_face"])
        centre = [f.landmarks for f in frames if f.target == 0]
        reference = HeadReference.from_landmarks(centre)
        feats = np.array([extract(f.landmarks, reference, f.width, f.height).vector
                          for f in frames])
        y = np.array([self.calibration_targets[f.target] for f in frames], float)
        groups = np.array([f.target for f in frames])
        keep = robust_keep(feats, groups)
        mapper, comparison = fit_models(feats[keep], y[keep], groups[keep], self.screen, kinds,
                                        design, mode)
        return Calibration(mapper=mapper, reference=reference, kind=self.kind,
                           comparison=comparison, threshold_deg=threshold_deg,
                           created_wall_s=time.time(), samples=int(keep.sum()))

    def validate(self, calibration: "Calibration",
                 min_frames_per_target: int = 5) -> "ValidationReport":
        """As ``fit``, every target needs a few clear views: with the face seen at one of
        four (even one frame) the check passed on that corner alone, its precision NaN."""
        frames = self.usable("validation")
        per = self.counts("validation")
        missing = [i for i in range(len(self.validation_targets))
                   if per.get(i, 0) < min_frames_per_target]
        if missing:
            raise CalibrationError(
                f"Too few clear views of the face at {len(missing)} of "
                f"{len(self.validation_targets)} check points. " + ADVICE["no_face"])
        feats = np.array([extract(f.landmarks, calibration.reference, f.width, f.height).vector
                          for f in frames])
        pred = calibration.mapper.predict(feats)
        targets_px = np.array([self.validation_targets[f.target] for f in frames], float)
        report = validation_report(pred, targets_px, np.array([f.target for f in frames]),
                                   self.screen, calibration.threshold_deg,
                                   blink_fraction=self.blinks_seen / max(1, self.frames_seen),
                                   scale=feats[:, SCALE_INDEX])
        calibration.validation = report
        return report


def robust_keep(feats: np.ndarray, groups: np.ndarray, k: float = 4.0) -> np.ndarray:
    """Drop per-target outlier frames (eye features more than k robust SDs from the
    target's median): a glance away from the target, a half blink."""
    keep = np.ones(len(feats), bool)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        x = feats[idx, :4]
        med = np.median(x, 0)
        mad = np.median(np.abs(x - med), 0) * 1.4826 + 1e-4
        keep[idx] = (np.abs(x - med) / mad <= k).all(1)
    return keep


class CalibrationError(Exception):
    """Calibration could not be fitted; str() says why and what to do."""


ADVICE = {
    "no_face": "Sit facing the camera, about an arm's length away, with your whole face "
               "in view.",
    "lighting": "Light your face from the front (a window or lamp behind the screen, not "
                "behind you) and avoid strong light from one side.",
    "glasses": "If you wear glasses, tilt the screen or lamp so that no reflection covers "
               "your eyes, or try without them.",
    "distance": "Keep your head at the distance you calibrated at (about an arm's length) "
                "and try not to lean in or back.",
    "still": "Follow each dot with your eyes and keep your head still while it shrinks.",
}


@dataclass
class ValidationReport:
    accuracy_px: float
    accuracy_deg: float
    precision_px: float           # RMS of sample-to-sample distances
    precision_deg: float
    sd_px: float                  # spread around the mean (SD of distance)
    per_target_deg: list[float]
    samples: int
    threshold_deg: float
    passed: bool
    advice: list[str]
    blink_fraction: float = 0.0   # of the frames with a face at a target (files before: 0)

    def summary(self) -> str:
        verdict = "Gaze is on." if self.passed else \
            f"That is above the {self.threshold_deg:g}° needed, so gaze stays off."
        return (f"Accuracy {self.accuracy_deg:.1f}° ({self.accuracy_px:.0f} px), precision "
                f"{self.precision_deg:.2f}° ({self.precision_px:.0f} px). {verdict}")

    def to_dict(self) -> dict:
        return asdict(self)


def validation_report(pred: np.ndarray, target: np.ndarray, groups: np.ndarray,
                      screen: ScreenGeometry, threshold_deg: float = DEFAULT_THRESHOLD_DEG,
                      blink_fraction: float = 0.0, scale: np.ndarray | None = None
                      ) -> ValidationReport:
    """Accuracy: mean over targets of the distance between the mean estimate and the
    target. Precision: RMS of successive sample-to-sample distances within a target."""
    acc, s2s, spread, per = [], [], [], []
    for g in np.unique(groups):
        p = pred[groups == g]
        t = target[groups == g][0]
        err = float(np.linalg.norm(p.mean(0) - t))
        acc.append(err)
        per.append(float(screen.px_to_deg(err)))
        if len(p) > 1:
            s2s.append(np.linalg.norm(np.diff(p, axis=0), axis=1) ** 2)
        spread.append(np.linalg.norm(p - p.mean(0), axis=1) ** 2)
    accuracy = float(np.mean(acc))
    precision = float(np.sqrt(np.concatenate(s2s).mean())) if s2s else float("nan")
    sd = float(np.sqrt(np.concatenate(spread).mean()))
    acc_deg = float(screen.px_to_deg(accuracy))
    prec_deg = float(screen.px_to_deg(precision))
    advice = []
    passed = acc_deg <= threshold_deg
    if not passed or prec_deg > 1.0:
        if prec_deg > 1.0:
            advice.append(ADVICE["lighting"])
        if blink_fraction > 0.15:
            advice.append(ADVICE["glasses"])
        if scale is not None and len(scale) and (np.ptp(scale) > 0.1
                                                 or abs(np.median(scale) - 1) > 0.08):
            advice.append(ADVICE["distance"])
        if not advice:
            advice += [ADVICE["still"], ADVICE["lighting"], ADVICE["glasses"]]
    return ValidationReport(accuracy, acc_deg, precision, prec_deg, sd, per,
                            int(len(pred)), threshold_deg, passed, advice, blink_fraction)


# --- the result, saved per user, camera, screen layout and screen ------------------------------------
@dataclass
class Calibration:
    mapper: GazeMapper
    reference: HeadReference
    kind: str = "9"
    comparison: dict = field(default_factory=dict)
    threshold_deg: float = DEFAULT_THRESHOLD_DEG
    created_wall_s: float = 0.0
    samples: int = 0
    validation: ValidationReport | None = None

    @property
    def enabled(self) -> bool:
        """Gaze is used only after a validation under the threshold."""
        return self.validation is not None and self.validation.accuracy_deg <= self.threshold_deg

    def to_dict(self) -> dict:
        return {"version": 1, "mapper": self.mapper.to_dict(),
                "reference": self.reference.to_dict(), "kind": self.kind,
                "comparison": self.comparison, "threshold_deg": self.threshold_deg,
                "created_wall_s": self.created_wall_s, "samples": self.samples,
                "validation": self.validation.to_dict() if self.validation else None}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        if d.get("version") != 1:
            raise CalibrationError("This calibration was saved by another version of Glance; "
                                   "calibrate again.")
        v = d.get("validation")
        return cls(mapper=GazeMapper.from_dict(d["mapper"]),
                   reference=HeadReference.from_dict(d["reference"]), kind=d["kind"],
                   comparison=d["comparison"], threshold_deg=d["threshold_deg"],
                   created_wall_s=d["created_wall_s"], samples=d["samples"],
                   validation=ValidationReport(**v) if v else None)


def calibration_key(user: str, camera: str, screens: list[dict],
                    screen: tuple[int, int, int, int] | None = None) -> str:
    """Calibrations are kept per user, camera, screen layout and the screen they were made
    on (x, y, width, height): with two monitors, calibrating on the second must not throw
    away the first's. Without ``screen``: the key of a calibration saved before they were
    kept per screen (one per layout), still read."""
    fields = {"user": user, "camera": camera, "screens": screens}
    if screen is not None:
        fields["screen"] = list(screen)
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def calibration_path(data_dir, user: str, camera: str, screens: list[dict],
                     screen: tuple[int, int, int, int] | None = None) -> Path:
    key = calibration_key(user, camera, screens, screen)
    return Path(data_dir) / "gaze" / f"calibration-{key}.json"


def screen_of(calibration: "Calibration") -> tuple[int, int, int, int]:
    """The screen a calibration maps onto (x, y, width, height in logical pixels)."""
    s = calibration.mapper.screen
    return (int(s.left_px), int(s.top_px), int(s.width_px), int(s.height_px))


def save(calibration: Calibration, path) -> Path:
    """Atomic write, 0600 (the file holds face-shape numbers, no image)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(calibration.to_dict(), out)
    os.replace(tmp, path)
    return path


def load(path) -> Calibration | None:
    path = Path(path)
    if not path.exists():
        return None
    try:
        return Calibration.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, CalibrationError):
        return None


# --- implicit recalibration and drift -----------------------------------------------------------
@dataclass
class _Background:
    raw: np.ndarray          # uncorrected prediction (px)
    click: np.ndarray        # where the user clicked (px)
    expires: float           # monotonic seconds


class ClickRecalibrator:
    """Clicks as background calibration points: a user looks where they click, so the
    uncorrected estimate just before a click and the click position form a pair. Up to
    ``capacity`` pairs are kept, each for ``lifetime_s`` (WebEyeTrack keeps 100 for 60 s);
    an affine correction pulled towards the identity is refitted on each click.

    Reading as weak vertical targets (ANCHORS): a chat gets few clicks, but its replies
    are read, and the lines the fixations were on say how far below the text the gaze
    lands (:meth:`add_reading_offset`, measured on the corrected output). Half of each
    measurement is added to a vertical shift applied after the affine, so a wrong line
    now and then moves it by half a line; it is forgotten ``reading_lifetime_s`` after
    the last measurement, and a click, which knows better, starts it again from 0.

    Drift: when the median error of the calibrated estimate (before this correction) at
    the last ``drift_window`` clicks exceeds ``drift_deg``, or reading has shifted the
    estimate by ``drift_deg`` or more, :attr:`drift` turns on and the user is asked to
    recalibrate: the correction hides it only while clicks and reading keep coming."""

    READING_GAIN = 0.5

    def __init__(self, screen: ScreenGeometry, capacity: int = 100, lifetime_s: float = 60.0,
                 drift_deg: float = 3.0, drift_window: int = 6, shrink_px: float = 4.0,
                 reading_lifetime_s: float = 120.0):
        self.screen = screen
        self.capacity, self.lifetime_s = capacity, lifetime_s
        self.drift_deg, self.drift_window = drift_deg, drift_window
        self.shrink = shrink_px
        self.points: list[_Background] = []
        # (error in degrees, when it expires): a drift is what the last clicks say now, and
        # clicks from an hour ago said nothing about now (the flag stayed on all that time).
        self._recent_errors: list[tuple[float, float]] = []
        self.affine = Affine()
        self.reading_lifetime_s = reading_lifetime_s
        self.reading_dy = 0.0               # px subtracted from y after the affine
        self._reading_expires = 0.0
        # When a click, an expiry or a reset last changed the correction (monotonic s):
        # a reading measured on fixations from before it saw another correction.
        self._changed_at = float("-inf")

    @property
    def recent_errors_deg(self) -> list[float]:
        return [error for error, _ in self._recent_errors]

    def add(self, raw_estimate, click_xy, now: float | None = None) -> Affine:
        now = time.monotonic() if now is None else now
        raw = np.asarray(raw_estimate, float)
        click = np.asarray(click_xy, float)
        err = float(self.screen.px_to_deg(np.linalg.norm(raw - click)))
        self._recent_errors = (self._recent_errors + [(err, now + self.lifetime_s)])[-self.drift_window:]
        self.points.append(_Background(raw, click, now + self.lifetime_s))
        self.points = self.points[-self.capacity:]
        self.reading_dy, self._changed_at = 0.0, now
        return self.refit(now)

    def add_reading_offset(self, offset_px: float, now: float | None = None,
                           since: float | None = None) -> float:
        """The corrected estimate was ``offset_px`` below the lines read (negative:
        above), measured on fixations from ``since`` on (monotonic s; one from before the
        last click, expiry or reset is ignored). Returns the vertical shift now applied."""
        now = time.monotonic() if now is None else now
        if since is not None and since < self._changed_at:
            return self.reading_dy
        limit = 2 * self.drift_deg * self.screen.px_per_degree
        self.reading_dy = float(np.clip(self.reading_dy + self.READING_GAIN * offset_px,
                                        -limit, limit))
        self._reading_expires = now + self.reading_lifetime_s
        return self.reading_dy

    def refresh(self, now: float | None = None) -> None:
        """Forget what has expired (called for every frame: cheap when nothing has)."""
        now = time.monotonic() if now is None else now
        if (self.points and self.points[0].expires <= now) or \
                (self.reading_dy and self._reading_expires <= now):
            self.refit(now)          # (expire() forgets both; the affine of the rest)

    def apply(self, raw) -> np.ndarray:
        """The corrected estimate: the clicks' affine, then reading's vertical shift."""
        return self.affine.apply(np.asarray(raw, float)) - np.array([0.0, self.reading_dy])

    def expire(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        kept = [p for p in self.points if p.expires > now]
        if len(kept) != len(self.points):
            # The clicks' correction changes: a reading measured through the old one
            # (which then pushed the estimate the wrong way) no longer counts.
            self._changed_at = now
        self.points = kept
        self._recent_errors = [(e, expires) for e, expires in self._recent_errors if expires > now]
        if self.reading_dy and self._reading_expires <= now:
            self.reading_dy, self._changed_at = 0.0, now

    def refit(self, now: float | None = None) -> Affine:
        self.expire(now)
        n = len(self.points)
        if n == 0:
            self.affine = Affine()
            return self.affine
        raw = np.array([p.raw for p in self.points])
        click = np.array([p.click for p in self.points])
        if n < 4:
            # Offset only, shrunk towards zero by how few points there are.
            b = (click - raw).mean(0) * n / (n + 1.0)
            self.affine = Affine(np.eye(2), b)
            return self.affine
        # Affine a, b minimising |a·raw + b − click|² + λ|a − I|² (λ in pixel² units).
        centre = raw.mean(0)
        x = np.c_[raw - centre, np.ones(n)]
        lam = (self.shrink * 100.0) ** 2
        reg = np.diag([lam, lam, 0.0])
        prior = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
        target = click - centre
        sol = np.linalg.solve(x.T @ x + reg, x.T @ target + reg @ prior)
        a = sol[:2].T
        b = sol[2] + centre - a @ centre
        self.affine = Affine(a, b)
        return self.affine

    @property
    def drift(self) -> bool:
        if abs(self.reading_dy) >= self.drift_deg * self.screen.px_per_degree:
            return True
        if len(self.recent_errors_deg) < self.drift_window:
            return False
        return float(np.median(self.recent_errors_deg)) > self.drift_deg

    def reset(self) -> None:
        self.points.clear()
        self._recent_errors.clear()
        self.affine = Affine()
        self.reading_dy, self._changed_at = 0.0, time.monotonic()
