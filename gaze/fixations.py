"""Fixations, saccades and regressions from unsmoothed gaze samples. Pure Python/numpy.

Webcam gaze at ≈ 30 Hz is noisy (≈ 1° sample to sample), so velocity thresholds (I-VT)
invent saccades. This is a dispersion detector (I-DT family) that works online:

* A fixation grows while each new sample lies within ``radius_deg`` of the running
  centroid of the fixation so far.
* One sample outside is held back: if the next sample is back inside, the held one was
  noise and is dropped. If the next one is outside too and near the held one (within
  ``agree`` × the radius), the eyes have moved: the fixation closes at its last inside
  sample and a new one starts with those two. Two outside samples far apart from each
  other (noise, or samples in flight during the saccade) keep waiting for agreement.
* A gap in the samples (blink, face lost) longer than ``max_gap_ms`` closes it.
* It counts only if it lasts ``min_duration_ms`` (≥ 100 ms; a sample stands for one
  sample interval, so three 30 Hz samples make 100 ms; checked to half a sample, as
  timestamps jitter; the interval is the median of the last 15 gaps, so a blink does
  not stretch it).

Fixations are reported when they end (≈ two samples after), which is what the app stores.
"""
import statistics
from collections import deque
from dataclasses import dataclass

import numpy as np

from .points import GazePoint


@dataclass(frozen=True)
class Fixation:
    start_ns: int        # first sample
    end_ns: int          # last sample + one sample interval
    x: float             # mean of its samples (pixels)
    y: float
    n: int               # samples
    wall_end_ns: int = 0
    confidence: float = 1.0

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass(frozen=True)
class Saccade:
    start_ns: int        # end of the fixation before
    end_ns: int          # start of the fixation after
    dx_deg: float        # + right
    dy_deg: float        # + down
    kind: str            # forward | regression | return_sweep | other

    @property
    def amplitude_deg(self) -> float:
        return float(np.hypot(self.dx_deg, self.dy_deg))


class FixationDetector:
    def __init__(self, px_per_degree: float, radius_deg: float = 1.25,
                 min_duration_ms: float = 100.0, max_gap_ms: float = 150.0,
                 agree: float = 1.5):
        self.radius_px = radius_deg * px_per_degree
        self.agree = agree
        self.min_ns = int(min_duration_ms * 1e6)
        self.max_gap_ns = int(max_gap_ms * 1e6)
        self._interval_ns = int(1e9 / 30)       # estimated sample interval: the median
        self._gaps: deque = deque(maxlen=15)    # of the last gaps (a blink's is one of them)
        self._reset()
        self._last_t = None

    def _reset(self, samples=()):
        self._t: list[int] = []
        self._w: list[int] = []
        self._x: list[float] = []
        self._y: list[float] = []
        self._c: list[float] = []
        self._held = None
        for s in samples:
            self._append(*s)

    def _append(self, t, w, x, y, c):
        self._t.append(t)
        self._w.append(w)
        self._x.append(x)
        self._y.append(y)
        self._c.append(c)

    def _centroid(self):
        return sum(self._x) / len(self._x), sum(self._y) / len(self._y)

    def _close(self) -> Fixation | None:
        if not self._t:
            return None
        end = self._t[-1] + self._interval_ns
        # To half a sample: three samples at 30 Hz are 100 ms, and timestamps a little
        # short of that (integer nanoseconds, jitter) lost about half of such fixations.
        if end - self._t[0] < self.min_ns - self._interval_ns // 2:
            return None
        cx, cy = self._centroid()
        return Fixation(self._t[0], end, cx, cy, len(self._t),
                        self._w[-1] + self._interval_ns, float(np.mean(self._c)))

    def add(self, t_ns: int, x: float, y: float, wall_ns: int = 0,
            confidence: float = 1.0) -> Fixation | None:
        """Feed one sample; returns the fixation that this sample ended, if any."""
        sample = (int(t_ns), int(wall_ns), float(x), float(y), float(confidence))
        done = None
        if self._last_t is not None:
            gap = sample[0] - self._last_t
            if 0 < gap < self.max_gap_ns:      # follow the camera's real rate
                self._gaps.append(gap)
                self._interval_ns = int(statistics.median(self._gaps))
            elif gap >= self.max_gap_ns:
                done = self._close()
                self._reset()
        self._last_t = sample[0]
        if not self._t:
            self._append(*sample)
            return done
        cx, cy = self._centroid()
        inside = np.hypot(sample[2] - cx, sample[3] - cy) <= self.radius_px
        if inside:
            self._held = None            # the held sample was noise
            self._append(*sample)
            return done
        if self._held is None:
            self._held = sample
            return done
        held = self._held
        if np.hypot(sample[2] - held[2], sample[3] - held[3]) > self.agree * self.radius_px:
            self._held = sample          # two outside samples that disagree: keep waiting
            return done
        self._held = None                # two outside samples that agree: the eyes moved
        done = self._close()
        self._reset([held, sample])
        return done

    def expire(self, t_ns: int) -> Fixation | None:
        """No usable sample at ``t_ns`` (a blink, the face lost, a point off the screen).
        A fixation whose last sample is ``max_gap_ms`` old has ended: it is reported now,
        not when the eyes come back, seconds later, when the recorder would map it onto
        whatever the screen shows by then (another reply, scrolled text)."""
        if self._last_t is None or not self._t or t_ns - self._last_t < self.max_gap_ns:
            return None
        return self.flush()

    def flush(self) -> Fixation | None:
        """End of data: close the open fixation."""
        done = self._close()
        self._reset()
        self._last_t = None
        return done


def detect(t_ns, x, y, px_per_degree: float, **kw) -> list[Fixation]:
    """Offline: the online detector run over arrays (NaN samples are skipped)."""
    det = FixationDetector(px_per_degree, **kw)
    out = []
    for t, a, b in zip(t_ns, x, y):
        if not (np.isfinite(a) and np.isfinite(b)):
            continue
        f = det.add(int(t), a, b)
        if f is not None:
            out.append(f)
    f = det.flush()
    if f is not None:
        out.append(f)
    return out


def saccades(fixations: list[Fixation], px_per_degree: float, line_tol_deg: float = 0.5,
             min_regression_deg: float = 0.5) -> list[Saccade]:
    """Movements between consecutive fixations, classified for left-to-right reading:
    forward (rightwards on the same line), regression (leftwards on the same line, or up
    to an earlier line), return sweep (down and left: the next line), other. Without the
    text's line geometry, "same line" means within ``line_tol_deg`` vertically; the app's
    layout mapping (which line each fixation is on) does better."""
    out = []
    for a, b in zip(fixations, fixations[1:]):
        dx = (b.x - a.x) / px_per_degree
        dy = (b.y - a.y) / px_per_degree
        if abs(dy) <= line_tol_deg:
            kind = "forward" if dx > 0 else ("regression" if dx < -min_regression_deg else "other")
        elif dy < 0:
            kind = "regression"
        elif dx < 0:
            kind = "return_sweep"
        else:
            kind = "other"
        out.append(Saccade(a.end_ns, b.start_ns, dx, dy, kind))
    return out


def fixation_point(f: Fixation) -> GazePoint:
    """A fixation as the app stores it: a GazePoint of kind 'fixation' at its end."""
    return GazePoint(mono_ns=f.end_ns, wall_ns=f.wall_end_ns, x=f.x, y=f.y, kind="fixation",
                     confidence=f.confidence, duration_ms=f.duration_ms)


def fixation_points(fixations: list[Fixation]) -> list[GazePoint]:
    return [fixation_point(f) for f in fixations]


def match(found: list[Fixation], truth: list[tuple[int, int, float, float]],
          max_dist_px: float, min_overlap: float = 0.5) -> tuple[float, float]:
    """Precision and recall of detected fixations against true ones ((start_ns, end_ns,
    x, y)): a detection matches a true fixation it overlaps in time by at least
    ``min_overlap`` of the shorter one and lies within ``max_dist_px``; one to one."""
    used = set()
    hits = 0
    for f in found:
        for i, (s, e, x, y) in enumerate(truth):
            if i in used:
                continue
            overlap = min(f.end_ns, e) - max(f.start_ns, s)
            shorter = min(f.end_ns - f.start_ns, e - s)
            if overlap >= min_overlap * shorter and np.hypot(f.x - x, f.y - y) <= max_dist_px:
                used.add(i)
                hits += 1
                break
    precision = hits / len(found) if found else 0.0
    recall = hits / len(truth) if truth else 0.0
    return precision, recall
