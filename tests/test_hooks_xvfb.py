"""The OS-wide pointer hook and pause hotkey (pynput) on a real X server."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT, require

pytestmark = [pytest.mark.xvfb, pytest.mark.timeout(180)]


def test_global_pointer_and_pause_hotkey_and_a_stop_that_does_not_hang(xvfb_display, tmp_path):
    require(shutil.which("xdotool") is not None, "xdotool is missing (bootstrap installs it)")
    env = dict(os.environ, DISPLAY=xvfb_display)
    env.pop("QT_QPA_PLATFORM", None)
    out = tmp_path / "hooks.json"
    process = subprocess.Popen([sys.executable, "tests/hooks_session.py", str(out)], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "hooks-ready").exists():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)

    def xdotool(*args):
        subprocess.run(["xdotool", *map(str, args)], env=env, check=True, timeout=30)
    xdotool("mousemove", "--sync", 100, 120)
    xdotool("mousemove", "--sync", 300, 320)
    xdotool("click", "1")
    xdotool("click", "5")
    xdotool("key", "ctrl+shift+p")
    xdotool("key", "ctrl+p")          # not the combination: no pause

    def arrived():
        try:
            seen = json.loads((tmp_path / "hooks-seen.json").read_text())
        except (OSError, ValueError):
            return False
        kinds = {event[0] for event in seen["events"]}
        return ["move", 300, 320] in seen["events"] and {"click", "scroll"} <= kinds \
            and seen["pauses"] >= 1
    deadline = time.monotonic() + 30
    while not arrived():              # delivered in pynput's own time, under load too
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "the hooks did not report the input in 30 s"
        time.sleep(0.05)
    time.sleep(0.5)                   # and a moment for a wrong pause (ctrl+p) to show
    (tmp_path / "hooks-stop").write_text("stop")
    # The process ends by itself: stop() did not wait for another input event (with
    # pynput's join it would hang here until the test timeout).
    assert process.wait(timeout=60) == 0, process.stdout.read()
    report = json.loads(out.read_text())
    kinds = [e[0] for e in report["events"]]
    assert ["move", 300, 320] in report["events"]
    assert "click" in kinds and "scroll" in kinds
    assert report["pauses"] == 1
