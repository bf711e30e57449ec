"""The real `glance` program on a real X server, used with a keyboard (xdotool), the way a
person would: first-run consent, type a question, Enter, read the reply, Ctrl+Q."""
import os
import shutil
import subprocess
import sys
import time

import pytest

from feedback_store import FeedbackStore
from conftest import ROOT, require

pytestmark = pytest.mark.xvfb


@pytest.fixture(autouse=True)
def _needs_xdotool():
    require(shutil.which("xdotool") is not None,
            "xdotool is missing (scripts/bootstrap.sh installs it)")


def xdotool(display, *args):
    return subprocess.run(["xdotool", *args], env=dict(os.environ, DISPLAY=display),
                          capture_output=True, text=True, timeout=30)


def wait_for_window(display, name, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = xdotool(display, "search", "--onlyvisible", "--name", name)
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.split()[0]
        time.sleep(0.2)
    raise AssertionError(f"no window named {name!r} appeared")


def test_first_run_chat_with_the_keyboard(xvfb_display, home):
    env = dict(os.environ, DISPLAY=xvfb_display, QT_QPA_PLATFORM="xcb", GLANCE_HOME=str(home))
    app = subprocess.Popen([sys.executable, "-m", "app.cli"], env=env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        consent = wait_for_window(xvfb_display, "your choices")
        # No window manager on Xvfb: give keyboard focus directly.
        xdotool(xvfb_display, "windowfocus", "--sync", consent)
        xdotool(xvfb_display, "key", "Return")  # the default button: save (all off)
        main = wait_for_window(xvfb_display, "Glance — New chat")
        xdotool(xvfb_display, "windowfocus", "--sync", main)
        xdotool(xvfb_display, "type", "--delay", "20", "What colour is the sky?")
        xdotool(xvfb_display, "key", "Return")
        # The title follows the first message once it is committed.
        wait_for_window(xvfb_display, "Glance — What colour is the sky")
        time.sleep(1.0)  # let some of the reply stream in; Ctrl+Q stops it either way
        xdotool(xvfb_display, "key", "ctrl+q")
        app.wait(timeout=60)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    assert app.returncode == 0, app.stderr[-2000:]
    # A clean quit: the nightly socket is taken down and the database is checkpointed and
    # closed (DuckDB removes its WAL then), even though the process freezes its objects
    # out of the garbage collector before exiting (app.cli.entry).
    assert not (home / "nightly.sock").exists()
    assert not (home / "glance.db.wal").exists()
    with FeedbackStore.open(home) as store:
        assert not store.consent.needed()
        assert not any(store.consent.is_on(s) for s in ("pointer", "gaze", "personalise"))
        (conversation,) = store.conversations.list()
        user, reply = store.conversations.messages(conversation.id)
        assert user.content == "What colour is the sky?"
        assert conversation.title == "What colour is the sky?"
        # Quitting (the reply may or may not have ended by then) keeps what was written,
        # with how it ended; nothing is half-stored.
        assert reply.role == "assistant" and reply.parent_id == user.id
        assert reply.finish_reason in ("stop", "length", "cancelled")
