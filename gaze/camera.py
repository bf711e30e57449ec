"""The camera: presence (for `glance doctor`) and a capture thread on cv2.VideoCapture.

A source is a device index (``0``), a device path (``/dev/video0``) or a video file
(replay and tests: a file behaves like a camera). Frames live in memory only: the grabber
keeps the newest frame for the processing thread and drops it once taken; nothing is
written anywhere. cv2 is imported when a capture is opened, never at module import.
"""
import glob
import os
import threading
import time
from dataclasses import dataclass


SETTING = "gaze_camera"     # the camera chosen in the window (store settings), a source


@dataclass(frozen=True)
class CameraDevice:
    source: str      # what gaze opens and the calibration is keyed by
    name: str        # what the driver calls it ("Integrated Camera: Integrated C")
    device: str      # /dev/videoN it is now


def list_cameras(dev_dir: str = "/dev", sysfs_dir: str = "/sys/class/video4linux") -> list[CameraDevice]:
    """The cameras gaze can use, found without opening any (opening turns its light on).

    A UVC webcam has two device nodes: the pictures (sysfs ``index`` 0) and its metadata
    (index 1), which cannot capture; only the first is listed. Where udev gave the camera
    a stable name under ``/dev/v4l/by-id`` that name is the source, so a choice (and its
    calibration) survives replugging, which renumbers /dev/videoN."""
    stable = {}
    for link in sorted(glob.glob(os.path.join(dev_dir, "v4l", "by-id", "*"))):
        stable.setdefault(os.path.realpath(link), link)
    found = []
    for device in sorted(glob.glob(os.path.join(dev_dir, "video*")),
                         key=lambda path: (len(path), path)):
        node = os.path.join(sysfs_dir, os.path.basename(device))
        if _read(os.path.join(node, "index")) not in (None, "0"):
            continue
        name = _read(os.path.join(node, "name")) or os.path.basename(device)
        found.append(CameraDevice(stable.get(os.path.realpath(device), device), name, device))
    return found


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def chosen_camera(setting: str | None = None) -> str:
    """The source gaze opens: ``GLANCE_CAMERA`` if set, else the camera chosen in the
    window (``setting``), else the first (index 0)."""
    return os.environ.get("GLANCE_CAMERA") or setting or "0"


def same_camera(a, b) -> bool:
    """Whether two sources name one device (``0``, ``/dev/video0`` and its by-id name)."""
    paths = [CameraConfig(source).device_path or str(source) for source in (a, b)]
    return os.path.realpath(paths[0]) == os.path.realpath(paths[1])


def camera_status(setting: str | None = None) -> dict:
    """Is there a camera, and which one gaze opens (``setting``: the window's choice)?
    Answered without opening it (opening turns its light on). The devices are the
    cameras the window lists: a webcam's metadata node is not a second camera."""
    devices = [camera.device for camera in list_cameras()]
    try:
        import cv2  # noqa: F401  (installed with the gaze extra)
        opencv = True
    except ImportError:
        opencv = False
    # The one gaze opens: with two cameras (a laptop's and a USB one) nothing said which,
    # nor how to choose the other.
    chosen = chosen_camera(setting)
    return {"available": bool(devices), "devices": devices, "opencv_installed": opencv,
            "gaze_uses": f"/dev/video{chosen}" if chosen.isdigit() else chosen,
            "chosen_by": ("GLANCE_CAMERA" if os.environ.get("GLANCE_CAMERA")
                          else "the window" if setting else "default")}


@dataclass(frozen=True)
class CameraConfig:
    source: int | str = 0
    width: int = 640
    height: int = 480
    fps: float = 30.0
    realtime: bool = True     # files: pace at their frame rate (a camera paces itself)
    loop: bool = False        # files: start again at the end
    retry_s: float = 2.0      # wait before reopening a missing or failed camera

    @property
    def is_file(self) -> bool:
        # Any /dev path is a camera: /dev/video2, and the stable names under /dev/v4l/by-id
        # that survive replugging (read as a file, one failed read ended it for good).
        return isinstance(self.source, str) and not self.source.startswith("/dev/") \
            and not self.source.isdigit()

    @property
    def device_path(self) -> str | None:
        if isinstance(self.source, int):
            return f"/dev/video{self.source}"
        if isinstance(self.source, str) and self.source.isdigit():
            return f"/dev/video{self.source}"
        if isinstance(self.source, str) and self.source.startswith("/dev/"):
            return self.source
        return None

    def describe(self) -> str:
        return f"video file {self.source}" if self.is_file else f"camera {self.source}"


@dataclass(frozen=True)
class CameraState:
    state: str          # 'opening' | 'ok' | 'no_camera' | 'camera_busy' | 'ended'
    message: str


NO_CAMERA = ("No camera was found. Plug in a webcam (or check that it is enabled); "
             "gaze resumes by itself when it appears. Glance works without it.")
UNPLUGGED = ("The camera stopped sending pictures (unplugged?). Plug it back in; gaze "
             "resumes by itself.")
BUSY = ("The camera is in use by another program (a video call?) or not allowed. Close "
        "that program; gaze resumes by itself.")


def _open(config: CameraConfig):
    import cv2
    src = config.source
    if isinstance(src, str) and src.isdigit():
        src = int(src)
    if config.is_file:
        cap = cv2.VideoCapture(src)
    else:
        cap = cv2.VideoCapture(src, cv2.CAP_V4L2) if os.name == "posix" else cv2.VideoCapture(src)
        if cap.isOpened():
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
            cap.set(cv2.CAP_PROP_FPS, config.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return cap


class FrameGrabber:
    """Reads frames on its own thread and hands over only the newest one.

    ``take(timeout)`` returns ``(frame, mono_ns, wall_ns)`` or None. For a file source
    with ``realtime=False`` no frame is ever dropped (the grabber waits until the previous
    one was taken), so tests see every frame. A camera that cannot be opened is retried
    every ``retry_s`` seconds; one that stops delivering is released and retried.
    """

    def __init__(self, config: CameraConfig):
        self.config = config
        self.state = CameraState("opening", "Opening the camera…")
        # The device itself, from its opening until it has been released (the app's red
        # dot): the state above says "no camera" a moment before a failing one is released.
        self.device_open = False
        self.frames_read = 0
        self.frames_dropped = 0
        self.fps = 0.0
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._item = None
        self._thread = threading.Thread(target=self._run, name="gaze-grabber", daemon=True)

    # -- control -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the thread to end and wait up to ``timeout``; True if it ended. (A camera
        read that hangs in the driver cannot be interrupted; the thread is a daemon and
        releases the camera when the read returns.)"""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def take(self, timeout: float = 0.2):
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    # -- thread ------------------------------------------------------------------------
    def _set(self, state: str, message: str) -> None:
        self.state = CameraState(state, message)

    def _missing_state(self) -> None:
        path = self.config.device_path
        if self.config.is_file:
            self._set("no_camera", f"The video file {self.config.source} cannot be read.")
        elif path is not None and not os.path.exists(path):
            self._set("no_camera", NO_CAMERA)
        else:
            self._set("camera_busy", BUSY)

    def _publish(self, frame, mono_ns: int, wall_ns: int) -> None:
        with self._cond:
            if not self.config.realtime and self.config.is_file:
                while self._item is not None and not self._stop.is_set():
                    self._cond.wait(0.1)
            if self._item is not None:
                self.frames_dropped += 1
            self._item = (frame, mono_ns, wall_ns)
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            import cv2
        except ImportError:
            self._set("no_camera", "OpenCV is not installed (pip install 'glance[gaze]'), "
                                   "so gaze is off. Glance works without it.")
            return
        cap = None
        fails = 0
        started = None
        period = 1.0 / self.config.fps
        window = []
        try:
            while not self._stop.is_set():
                if cap is None:
                    if self.config.device_path and not os.path.exists(self.config.device_path):
                        self._missing_state()
                        self._stop.wait(self.config.retry_s)
                        continue
                    if self.config.is_file and not os.path.exists(str(self.config.source)):
                        self._set("no_camera", f"The video file {self.config.source} does "
                                               "not exist (yet); waiting for it.")
                        self._stop.wait(self.config.retry_s)
                        continue
                    cap = _open(self.config)
                    if not cap.isOpened():
                        cap.release()
                        cap = None
                        self._missing_state()
                        self._stop.wait(self.config.retry_s)
                        continue
                    self.device_open = True
                    if self.config.is_file:
                        rate = cap.get(cv2.CAP_PROP_FPS)
                        period = 1.0 / rate if rate and rate > 1 else 1.0 / self.config.fps
                    fails, started, index = 0, time.monotonic(), 0
                ok, frame = cap.read()
                if not ok or frame is None:
                    fails += 1
                    if self.config.is_file and self.frames_read > 0:
                        if self.config.loop and fails < 15:   # a file that cannot seek
                            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # back must not spin
                            continue
                        self._set("ended", "The video has ended.")
                        return
                    if fails >= 15 or self.config.is_file:
                        cap.release()
                        cap = None
                        self.device_open = False
                        if self.frames_read > 0:
                            self._set("no_camera", UNPLUGGED)
                        else:
                            self._missing_state()
                        self._stop.wait(self.config.retry_s)
                    else:
                        self._stop.wait(0.05)
                    continue
                fails = 0
                mono_ns, wall_ns = time.monotonic_ns(), time.time_ns()
                self.frames_read += 1
                if self.state.state != "ok":
                    self._set("ok", "The camera is working.")
                window = (window + [mono_ns])[-31:]
                if len(window) > 1:
                    self.fps = (len(window) - 1) / ((window[-1] - window[0]) / 1e9)
                self._publish(frame, mono_ns, wall_ns)
                del frame
                if self.config.is_file and self.config.realtime:
                    index += 1
                    delay = started + index * period - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
        except Exception as error:  # noqa: BLE001 - a driver or OpenCV error ends reading
            self._set("no_camera", f"The camera stopped with an error ({type(error).__name__}: "
                                   f"{error}). Turn gaze off and on to try again.")
        finally:
            if cap is not None:
                cap.release()
            self.device_open = False
