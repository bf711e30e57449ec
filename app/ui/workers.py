"""Run slow core calls off the UI thread and report back through Qt signals."""
import threading
from typing import Callable

from PySide6.QtCore import QThread, Signal


class GenerationThread(QThread):
    """Runs ``job(on_token=..., cancel=...)`` (a ChatService call) on its own thread.

    Tokens arrive in the UI thread as queued ``token`` signals; ``stop()`` sets the
    cancel event the engine checks after every token.
    """
    token = Signal(str)
    posted = Signal(object)   # the user's message, once committed (before the reply)
    done = Signal(object)     # the committed Message (or tuple of messages)
    failed = Signal(str)

    def __init__(self, job: Callable, parent=None):
        super().__init__(parent)
        self.job = job
        self.cancel = threading.Event()

    def run(self) -> None:
        try:
            result = self.job(on_token=self.token.emit, cancel=self.cancel)
        except BaseException as error:  # shown to the user; nothing is lost (see ChatService)
            # (BaseException too: the window is busy until it hears done or failed)
            self.failed.emit(str(error) or type(error).__name__)
        else:
            self.done.emit(result)

    def stop(self) -> None:
        self.cancel.set()


class CallThread(QThread):
    """Runs ``fn(*args)`` off the UI thread (downloads, exports)."""
    done = Signal(object)
    failed = Signal(str)
    progress = Signal(object, object)

    def __init__(self, fn: Callable, *args, parent=None, **kwargs):
        super().__init__(parent)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.cancel = threading.Event()
        self.error: BaseException | None = None   # what ``failed`` said, for its kind

    def run(self) -> None:
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as error:   # (the window is busy until it hears one or other)
            self.error = error
            self.failed.emit(str(error) or type(error).__name__)
        else:
            self.done.emit(result)


def retire(thread: QThread) -> None:
    """A worker whose end the window has handled: waited for (it has ended or is about
    to) and deleted. Returns None, for ``self.job = retire(self.job)``."""
    thread.wait()
    thread.deleteLater()
