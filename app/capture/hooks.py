"""OS-wide hooks through pynput: the pointer (moves, clicks, scroll) and the pause hotkey.

Global hooks need an X server (X11, or XWayland for X clients). On Wayland-only
sessions or without a display, :func:`global_hooks_available` says why, and the window
falls back to its own Qt events (only inside Glance's windows) and says so in the
privacy panel.

pynput's ``listener.stop(); listener.join()`` hangs until one more input event arrives
(pynput issue #583): we stop without joining. The listener thread is a daemon and ends at
the next event; nothing waits for it.
"""
import os
import sys
import time


def global_hooks_available() -> tuple[bool, str]:
    """(available, why not) for OS-wide pointer and hotkey hooks."""
    if sys.platform.startswith("linux"):
        if not os.environ.get("DISPLAY"):
            if os.environ.get("WAYLAND_DISPLAY"):
                return False, ("Wayland does not let applications see the pointer outside "
                               "their own windows; Glance records it inside its window only.")
            return False, "No X display: Glance records the pointer inside its window only."
    try:
        import pynput.mouse  # noqa: F401  (raises ImportError without a usable backend)
    except Exception as error:  # noqa: BLE001 - any backend failure means "not available"
        return False, f"Global pointer hooks are unavailable ({error}); Glance records the " \
                      "pointer inside its window only."
    return True, ""


class GlobalPointerHook:
    """Calls ``on_event(kind, x, y, source, button=, dx=, dy=)`` from pynput's thread."""

    def __init__(self, on_event):
        self.on_event = on_event
        self.listener = None

    def start(self) -> None:
        from pynput import mouse

        def moved(x, y):
            self.on_event("move", x, y, "pynput")

        def clicked(x, y, button, pressed):
            if pressed:
                self.on_event("click", x, y, "pynput", button=getattr(button, "name", str(button)))

        def scrolled(x, y, dx, dy):
            self.on_event("scroll", x, y, "pynput", dx=dx, dy=dy)

        self.listener = mouse.Listener(on_move=moved, on_click=clicked, on_scroll=scrolled)
        self.listener.daemon = True
        self.listener.start()
        self.listener.wait()   # returns once the X connection is set up

    @property
    def running(self) -> bool:
        return self.listener is not None and self.listener.running

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()   # no join: see the module docstring
            self.listener = None


class GlobalPauseHotkey:
    """Ctrl+Shift+P anywhere on the desktop calls ``on_pause()`` (from pynput's thread).
    Only that combination is matched; no key is recorded."""

    COMBINATION = "<ctrl>+<shift>+p"

    def __init__(self, on_pause):
        self.on_pause = on_pause
        self.listener = None
        self._last = 0.0

    def _fire(self) -> None:
        now = time.monotonic()
        if now - self._last > 0.3:   # one press, one toggle (auto-repeat sends several)
            self._last = now
            self.on_pause()

    def start(self) -> None:
        from pynput import keyboard
        self.listener = keyboard.GlobalHotKeys({self.COMBINATION: self._fire})
        self.listener.daemon = True
        self.listener.start()
        self.listener.wait()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
