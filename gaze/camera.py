"""Is there a camera? Answered without opening it (opening turns its light on)."""
import glob


def camera_status() -> dict:
    devices = sorted(glob.glob("/dev/video*"))
    try:
        import cv2  # noqa: F401  (installed with the gaze extra)
        opencv = True
    except ImportError:
        opencv = False
    return {"available": bool(devices), "devices": devices, "opencv_installed": opencv}
