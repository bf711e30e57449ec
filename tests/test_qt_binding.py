"""Guard against a Qt binding that corrupts reference counts (PySide6 6.12.0 on 3.11 did:
every Signal.emit dropped a reference to True, every processEvents one to None, and the
app aborted with 'bool_dealloc' after a few thousand streamed tokens)."""
import gc
import sys

from PySide6.QtCore import QEvent, QEventLoop, QObject, QTimer, Signal
from PySide6.QtWidgets import QApplication


class Emitter(QObject):
    token = Signal(str)


def test_streaming_signals_keep_reference_counts(qapp):
    emitter = Emitter()
    received = []
    emitter.token.connect(received.append)
    # What earlier tests left to free (widgets deleted later, cycles) is freed first, and
    # the collector waits: freeing them meanwhile would move the counts by dozens.
    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()
    gc.disable()
    try:
        before = (sys.getrefcount(True), sys.getrefcount(False), sys.getrefcount(None))
        for _ in range(500):
            emitter.token.emit("x")
            QApplication.processEvents()
        loop = QEventLoop()
        QTimer.singleShot(0, loop.quit)
        loop.exec()
        after = (sys.getrefcount(True), sys.getrefcount(False), sys.getrefcount(None))
    finally:
        gc.enable()
    assert len(received) == 500
    # Other threads may hold a few references meanwhile; a leak is one per call.
    assert all(abs(a - b) < 50 for a, b in zip(after, before)), (before, after)
