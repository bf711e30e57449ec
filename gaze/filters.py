"""Per-frame rejection helpers and the One-Euro filter. Pure Python/numpy.

Order in the pipeline (docs/gaze.md): reject first (no face, several faces, blink, poor
mesh fit, implausible point), then fixations on the unsmoothed samples; the One-Euro
filter only smooths the cursor that is drawn.
"""
import math


class OneEuroFilter:
    """Casiez, Roussel & Vogel (CHI 2012): a low-pass filter whose cut-off rises with
    speed — steady when the eyes rest, little lag when they jump. Works on one value;
    use one per axis. ``min_cutoff`` in Hz, ``beta`` per unit of speed."""

    def __init__(self, min_cutoff: float = 0.8, beta: float = 0.004, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._x = self._dx = self._t = None

    @staticmethod
    def _alpha(cutoff: float, dt: float) -> float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: float, t: float) -> float:
        if self._t is None or t <= self._t:
            self._x, self._dx, self._t = x, 0.0, t
            return x
        dt = t - self._t
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * abs(self._dx)
        a = self._alpha(cutoff, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x

    def reset(self) -> None:
        self._x = self._dx = self._t = None


class PointFilter:
    """One-Euro on x and y (pixels, seconds); resets after a gap."""

    def __init__(self, min_cutoff: float = 0.8, beta: float = 0.004, max_gap_s: float = 0.5):
        self.fx = OneEuroFilter(min_cutoff, beta)
        self.fy = OneEuroFilter(min_cutoff, beta)
        self.max_gap_s = max_gap_s
        self._last = None

    def __call__(self, x: float, y: float, t: float) -> tuple[float, float]:
        if self._last is not None and t - self._last > self.max_gap_s:
            self.fx.reset()
            self.fy.reset()
        self._last = t
        return self.fx(x, t), self.fy(y, t)


class BlinkDetector:
    """Eye aspect ratio below ``ratio`` × its running level = the eyes are closing: the
    frame is dropped, and so are ``pad_frames`` frames after they reopen (the lid still
    distorts the iris estimate).

    The running level is the median EAR of the last ``window_s`` seconds — a running mean
    that blinks (a few frames each) cannot drag down, while a lasting change (a squint,
    new lighting, a new head angle) becomes the new level within about half the window.
    No decision before ``warmup`` frames.
    """

    def __init__(self, ratio: float = 0.8, window_s: float = 3.0, warmup: int = 8,
                 pad_frames: int = 1):
        import collections
        self.ratio, self.window_s, self.warmup = ratio, window_s, warmup
        self.pad_frames = pad_frames
        self._history = collections.deque()
        self._closed = False
        self._pad = 0
        self.blinks = 0            # blinks seen (closing events)

    @property
    def mean(self) -> float | None:
        if not self._history:
            return None
        import statistics
        return statistics.median(e for _, e in self._history)

    @property
    def threshold(self) -> float | None:
        level = self.mean
        return None if level is None else self.ratio * level

    def update(self, ear: float, t: float) -> bool:
        """Feed one frame's EAR at time ``t`` (seconds); True = drop this frame."""
        level = self.mean if len(self._history) >= self.warmup else None
        self._history.append((t, ear))
        while self._history and self._history[0][0] < t - self.window_s:
            self._history.popleft()
        if level is None:
            return False
        if ear < self.ratio * level:
            if not self._closed:
                self.blinks += 1
            self._closed = True
            self._pad = self.pad_frames
            return True
        self._closed = False
        if self._pad > 0:
            self._pad -= 1
            return True
        return False
