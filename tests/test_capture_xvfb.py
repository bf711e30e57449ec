"""Interaction capture with the real pointer on a real X server: the Glance window runs in
its own process (tests/capture_session.py) and xdotool moves, clicks and scrolls."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, require
from align.features import interaction_features, lines_on_screen_share
from feedback_store import FeedbackStore

pytestmark = [pytest.mark.xvfb, pytest.mark.timeout(600)]


class Session:
    def __init__(self, display, home, tmp_path, *args, env=None):
        require(shutil.which("xdotool") is not None, "xdotool is missing (bootstrap installs it)")
        self.display, self.dir = display, tmp_path / "capture"
        self.dir.mkdir()
        self.count = 0
        env = dict(os.environ, DISPLAY=display, QT_QPA_PLATFORM="xcb", GLANCE_HOME=str(home),
                   GLANCE_CAPTURE_DIR=str(self.dir), **(env or {}))
        self.process = subprocess.Popen([sys.executable, "tests/capture_session.py", *args],
                                        cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.ready = self.wait_file("ready.json")

    def wait_file(self, name, timeout=180):
        path = self.dir / name
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"the window process ended: {self.process.stdout.read()}")
            assert time.monotonic() < deadline, f"no {name} from the window process"
            time.sleep(0.05)
        return json.loads(path.read_text())

    def command(self, do, **data):
        path = self.dir / f"cmd-{self.count}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"do": do, **data}))
        temporary.rename(path)
        answer = self.wait_file(f"done-{self.count}.json")
        self.count += 1
        return answer

    def received(self) -> int:
        return self.command("received")["received"]

    def pointer(self, *args, timeout=30):
        """xdotool, then wait until the window's recorder has the event: pynput delivers
        in its own time, and under load a burst of moves is coalesced into one."""
        before = self.received()
        self.xdotool(*args)
        deadline = time.monotonic() + timeout
        while self.received() <= before:
            assert time.monotonic() < deadline, f"the window never heard xdotool {args}"

    def xdotool(self, *args):
        subprocess.run(["xdotool", *map(str, args)], check=True, timeout=30,
                       env=dict(os.environ, DISPLAY=self.display))

    def point_at(self, word):
        return int((word["x0"] + word["x1"]) / 2), int((word["y0"] + word["y1"]) / 2)

    def quit(self):
        self.command("quit")
        self.process.wait(timeout=60)


def long_words(ready, n=6):
    words = [w for w in ready["words"] if len(w["text"]) >= 4 and w["x1"] - w["x0"] > 20]
    step = max(1, len(words) // n)
    return words[::step][:n]


def test_the_real_pointer_maps_to_the_words_under_it(xvfb_display, home, tmp_path):
    session = Session(xvfb_display, home, tmp_path)
    ready = session.ready
    assert ready["global_hooks"] is True
    assert ready["indicator"] == "Recording: mouse"
    targets = long_words(ready)
    assert len(targets) >= 3, ready["text"]
    for word in targets:
        session.pointer("mousemove", "--sync", *session.point_at(word))
    clicked = targets[1]
    session.pointer("mousemove", "--sync", *session.point_at(clicked))
    session.pointer("click", "1")
    time.sleep(1.0)   # so the double click below is not read as a triple click
    session.xdotool("click", "--repeat", "2", "--delay", "60", "1")   # double click selects a word
    time.sleep(0.2)
    session.xdotool("key", "ctrl+c")
    session.pointer("mousemove", "--sync", *ready["chat_view"])
    session.pointer("click", "5")                                       # wheel down
    flushed = session.command("flush")["pointer_samples"]
    assert flushed > 0
    session.quit()

    with FeedbackStore.open(home) as store:
        moves = store._rows("SELECT x, y, text_offset, word_index, line, shown_reply_id, source "
                            "FROM pointer_samples WHERE kind = 'move' ORDER BY mono_ns")
        clicks = store._rows("SELECT text_offset, word_index, button FROM pointer_samples "
                             "WHERE kind = 'click'")
        scrolls = store._rows("SELECT dy, source FROM pointer_samples WHERE kind = 'scroll'")
        actions = store._rows("SELECT kind, start_offset, end_offset FROM reply_actions "
                              "ORDER BY mono_ns")
        did = interaction_features(store.traces.activity(ready["shown_reply_id"]))
    assert {m["source"] for m in moves} == {"pynput"}
    for word in targets:
        x, y = session.point_at(word)
        here = [m for m in moves if abs(m["x"] - x) < 1 and abs(m["y"] - y) < 1]
        assert here, f"no sample at {word['text']!r}"
        sample = here[-1]
        assert sample["shown_reply_id"] == ready["shown_reply_id"]
        assert abs(sample["word_index"] - word["word"]) <= 1, (word, sample)
        assert sample["line"] == word["line"]
        assert word["start"] - 1 <= sample["text_offset"] <= word["end"]
    assert len(clicks) >= 3 and all(c["button"] == "left" for c in clicks)
    assert all(abs(c["word_index"] - clicked["word"]) <= 1 for c in clicks)
    assert scrolls and scrolls[0]["dy"] < 0
    selected = [a for a in actions if a["kind"] == "select"]
    copied = [a for a in actions if a["kind"] == "copy"]
    assert selected and (selected[-1]["start_offset"], selected[-1]["end_offset"]) == \
        (clicked["start"], clicked["end"])
    # One Ctrl+C, one copy: selecting alone fills X11's selection clipboard, not a copy
    # (the copied data is made for it too), and the key is heard once.
    assert len(copied) == 1 and (copied[-1]["start_offset"], copied[-1]["end_offset"]) == \
        (clicked["start"], clicked["end"])
    # what the reward model reads of it: the word selected (once, however often logged), copied
    assert did["copied"] == 1.0 and did["selected_chars"] == clicked["end"] - clicked["start"]


def test_on_a_hidpi_screen_the_pointer_maps_to_the_words_under_it(xvfb_display, home, tmp_path):
    """The desktop-wide hook reports the X server's device pixels and the window's layout
    is in Qt's logical pixels: at a device pixel ratio of 2 (a HiDPI screen's scaling,
    here QT_SCALE_FACTOR=2) every sample was mapped to the word at twice its distance
    from the screen's corner. Samples are stored in logical pixels, as the layout."""
    session = Session(xvfb_display, home, tmp_path, "--height", "300", env={"QT_SCALE_FACTOR": "2"})
    ready = session.ready
    assert ready["global_hooks"] is True           # (Qt's own events are logical already)
    targets = [w for w in long_words(ready, 12) if 2 * w["x1"] < 1270 and 2 * w["y1"] < 790][:4]
    assert len(targets) >= 2, ready["words"][:5]
    for word in targets:
        x, y = session.point_at(word)
        session.pointer("mousemove", "--sync", 2 * x, 2 * y)       # the device pixels under it
    session.command("flush")
    session.quit()
    with FeedbackStore.open(home) as store:
        moves = store._rows("SELECT x, y, word_index, line, shown_reply_id, source FROM "
                            "pointer_samples WHERE kind = 'move' ORDER BY mono_ns")
    assert {m["source"] for m in moves} == {"pynput"}
    for word in targets:
        x, y = session.point_at(word)
        here = [m for m in moves if abs(m["x"] - x) <= 1 and abs(m["y"] - y) <= 1]
        assert here, (word, [(m["x"], m["y"]) for m in moves][-8:])
        assert here[-1]["shown_reply_id"] == ready["shown_reply_id"]
        assert abs(here[-1]["word_index"] - word["word"]) <= 1 and here[-1]["line"] == word["line"]


def test_stored_line_boxes_hold_the_ink_of_the_screenshot(xvfb_display, home, tmp_path):
    from PySide6.QtGui import QImage
    session = Session(xvfb_display, home, tmp_path)
    shot = tmp_path / "screen.png"
    stored = session.command("screenshot", path=str(shot),
                             message_id=session.ready["message_id"])["stored_layout"]
    session.quit()
    image = QImage(str(shot))
    pixels = _lightness(image)
    assert stored, "no line boxes were stored"
    for box in stored:
        x0, y0 = int(box["x"]), int(box["y"])
        x1, y1 = int(box["x"] + box["w"]), int(box["y"] + box["h"])
        region = pixels[y0:y1, x0:x1]
        assert region.size and (region < 128).any(), f"line box {box} holds no ink"
    last = stored[-1]
    band = pixels[int(last["y"] + last["h"]) + 1:int(last["y"] + last["h"]) + 4,
                  int(last["x"]):int(last["x"] + last["w"])]
    assert band.size and not (band < 128).any(), "ink below the last stored line"


def _lightness(image):
    from PySide6.QtGui import QImage
    image = image.convertToFormat(QImage.Format.Format_Grayscale8)
    width, height = image.width(), image.height()
    data = np.frombuffer(image.constBits(), dtype=np.uint8,
                         count=image.bytesPerLine() * height)
    return data.reshape(height, image.bytesPerLine())[:, :width]


def test_without_consent_nothing_is_stored(xvfb_display, home, tmp_path):
    session = Session(xvfb_display, home, tmp_path, "--pointer", "off")
    assert session.ready["indicator"] == "Not recording"
    words = long_words(session.ready, 3)
    assert len(words) >= 3, session.ready["text"]      # the pointer did pass over the reply
    for word in words:
        session.xdotool("mousemove", "--sync", *session.point_at(word))
    session.command("flush")
    session.quit()
    with FeedbackStore.open(home) as store:
        counts = store.counts()
    assert counts["pointer_samples"] == counts["viewport_events"] == counts["reply_actions"] == 0


def test_minimised_samples_say_so_and_viewport_events_follow(xvfb_display, home, tmp_path):
    session = Session(xvfb_display, home, tmp_path, "--max-tokens", "200", "--height", "330",
                      "--prompt", "Write a long story about a lighthouse keeper.")
    session.xdotool("mousemove", "--sync", *session.ready["chat_view"])
    for button in (5, 5, 5, 4):   # wheel down three steps, then up one: the long reply scrolls
        session.xdotool("click", button)
        time.sleep(0.2)
    session.command("minimize")
    time.sleep(0.5)
    session.pointer("mousemove", "--sync", 300, 300)
    session.pointer("mousemove", "--sync", 320, 310)
    session.command("flush")
    session.command("restore")
    session.quit()
    with FeedbackStore.open(home) as store:
        events = store._rows("SELECT kind, first_line, last_line, window_visible, "
                             "shown_reply_id FROM viewport_events ORDER BY mono_ns")
        hidden = store._rows("SELECT text_offset FROM pointer_samples "
                             "WHERE window_visible = false AND kind = 'move'")
        activity = store.traces.activity(session.ready["shown_reply_id"])
    # The reply's visible lines as shown, then as the wheel moved it (events of the reply
    # still being written, which has no shown reply yet, are not recorded).
    assert all(e["shown_reply_id"] == session.ready["shown_reply_id"] for e in events
               if e["kind"] in ("layout", "scroll")), events
    seen = [(e["first_line"], e["last_line"]) for e in events if e["kind"] in ("layout", "scroll")]
    assert any(e["kind"] == "scroll" for e in events)
    assert len(set(seen)) >= 2, events          # the visible line range changed
    assert any(e["kind"] == "minimized" and e["window_visible"] is False for e in events)
    # The pointer moved while the window was minimised: it was over other applications,
    # which the consent does not cover. The recorder heard the moves (session.pointer waits
    # for that) and kept none.
    assert hidden == []
    # Shown at its end (the chat follows a new reply down); the wheel brought earlier lines
    # on screen: more of its lines were seen than at first, while the furthest line
    # reached, the classic scroll depth, was the last one all along.
    at_first = activity.view_t_ms[0] + 1
    assert lines_on_screen_share(activity.view_t_ms, activity.first_line, activity.last_line,
                                 activity.window_visible, activity.n_lines, at_first) \
        < interaction_features(activity)["lines_on_screen_share"], activity
    assert interaction_features(activity)["scroll_depth"] == 1.0


def test_samples_flushed_before_a_kill_survive(xvfb_display, home, tmp_path):
    session = Session(xvfb_display, home, tmp_path)
    for word in long_words(session.ready):
        session.xdotool("mousemove", "--sync", *session.point_at(word))
        time.sleep(0.05)
    flushed = session.command("flush")["pointer_samples"]
    assert flushed > 0
    session.process.send_signal(signal.SIGKILL)
    session.process.wait(timeout=30)
    with FeedbackStore.open(home) as store:
        assert store.counts()["pointer_samples"] >= flushed


COVER = """
import sys
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QWidget
app = QApplication([])
cover = QWidget()
cover.setWindowTitle("another application")
cover.setGeometry(*map(int, sys.argv[1:5]))
cover.show()
QTimer.singleShot(500, lambda: print("shown", flush=True))
app.exec()
"""


def test_points_over_another_application_covering_the_window_are_not_kept(
        xvfb_display, home, tmp_path):
    """Another application's window over part of Glance's: the pointer over it is inside
    Glance's area, over words that cannot be seen, and is not kept."""
    session = Session(xvfb_display, home, tmp_path)
    words = long_words(session.ready, 20)
    lines = sorted({w["line"] for w in words})
    assert len(lines) >= 2, session.ready["text"]
    hidden = [w for w in words if w["line"] == lines[0]]
    shown = [w for w in words if w["line"] == lines[-1]]
    top = min(w["y0"] for w in hidden) - 2
    bottom = max(w["y1"] for w in hidden) + 2
    assert bottom < min(w["y0"] for w in shown)
    left, right = session.ready["window"][0], session.ready["window"][2]
    session.pointer("mousemove", "--sync", *session.point_at(shown[0]))
    assert session.command("received")["over_window"] is True
    cover = subprocess.Popen(
        [sys.executable, "-c", COVER, str(left), str(int(top)), str(right - left),
         str(int(bottom - top))], env=dict(os.environ, DISPLAY=xvfb_display,
                                           QT_QPA_PLATFORM="xcb"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert cover.stdout.readline().strip() == "shown"
        x, y = session.point_at(hidden[0])
        session.pointer("mousemove", "--sync", x, y)       # onto the other application
        deadline = time.monotonic() + 30
        while session.command("received")["over_window"]:
            assert time.monotonic() < deadline, "Glance never heard the pointer leave"
            time.sleep(0.05)
        under_cover = (x + 3, y + 1)
        session.pointer("mousemove", "--sync", *under_cover)
    finally:
        cover.kill()
        cover.wait(timeout=30)
    deadline = time.monotonic() + 30                        # gone from under the pointer
    while not session.command("received")["over_window"]:
        assert time.monotonic() < deadline, "Glance never heard the pointer come back"
        time.sleep(0.05)
    uncovered = (x - 3, y)
    session.pointer("mousemove", "--sync", *uncovered)
    session.pointer("mousemove", "--sync", *session.point_at(shown[-1]))
    session.command("flush")
    session.quit()
    with FeedbackStore.open(home) as store:
        moves = store._rows("SELECT x, y FROM pointer_samples WHERE kind = 'move'")

    def kept(x, y):
        return any(abs(m["x"] - x) < 1 and abs(m["y"] - y) < 1 for m in moves)
    assert not kept(*under_cover), "a point over the covering application was kept"
    assert kept(*uncovered), "the words uncovered again were not recorded"
    assert kept(*session.point_at(shown[-1])), moves


def test_the_desktop_wide_hotkey_goes_with_the_pointer_consent(xvfb_display, home, tmp_path):
    """The pause hotkey is a keyboard hook on the whole desktop (it keeps no key, but it
    sees them all): withdrawing the consent it came with left it running until quit.
    Paused, it stays: it is how collection resumes from another application."""
    session = Session(xvfb_display, home, tmp_path)
    assert session.ready["global_hooks"] is True
    assert session.command("pause")["hotkey"] is True          # paused: kept to resume
    assert session.command("pause")["hotkey"] is True
    assert session.command("pointer_consent", on=False)["hotkey"] is False
    assert session.command("pointer_consent", on=True)["hotkey"] is True
    session.quit()
