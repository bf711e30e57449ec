"""Global hooks on a real X server, in their own process (pynput binds to DISPLAY at
import): report pointer events and the pause hotkey, then stop without waiting.

    DISPLAY=:N python tests/hooks_session.py OUT_FILE
"""
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.capture.hooks import GlobalPauseHotkey, GlobalPointerHook  # noqa: E402

out = Path(sys.argv[1])
events, pauses = [], []
pointer = GlobalPointerHook(lambda kind, x, y, source, **extra: events.append((kind, x, y)))
hotkey = GlobalPauseHotkey(lambda: pauses.append(time.monotonic()))
pointer.start()
hotkey.start()
listener = pointer.listener
(out.parent / "hooks-ready").write_text("ready")
deadline = time.monotonic() + 60
seen = out.parent / "hooks-seen.json"
while not (out.parent / "hooks-stop").exists() and time.monotonic() < deadline:
    # What has arrived so far, for the test to wait on (pynput delivers in its own time).
    progress = seen.with_suffix(".tmp")
    progress.write_text(json.dumps({"events": list(events), "pauses": len(pauses)}))
    progress.replace(seen)
    time.sleep(0.05)
pointer.stop()       # returns at once: pynput's join would wait for one more input event
hotkey.stop()
stopped_at = time.monotonic()
out.write_text(json.dumps({"events": events, "pauses": len(pauses),
                           "listener_alive_after_stop": listener.is_alive(),
                           "threads": [t.name for t in threading.enumerate()]}))
