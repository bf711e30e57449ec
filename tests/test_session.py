"""The window's bookkeeping without a screen: shown replies, what is recording, and the
rule that the core never needs Qt."""
import os
import subprocess
import sys
import textwrap

from app.session import AppSession, ReplyOnScreen
from conftest import ROOT


def reply(message_id="m1", conversation_id="c1"):
    return ReplyOnScreen(message_id, conversation_id, (10, 20, 300, 40), 1.0, "Hello there.",
                         [{"line": 0, "start": 0, "end": 12, "x": 10, "y": 20, "w": 80, "h": 16}])


def test_a_reply_is_recorded_once_per_showing_and_hidden_when_it_leaves(store):
    session = AppSession(store)
    first = session.reply_shown(reply())
    assert session.reply_shown(reply()) == first        # re-rendering is not a new showing
    second = session.reply_shown(reply("m2"))
    assert session.replies_hidden(keep={"m2"}) == ["m1"]
    assert session.shown_id("m1") is None and session.shown_id("m2") == second
    store.flush()
    rows = store._rows("SELECT id, message_id, hidden_mono_ns, layout FROM shown_replies "
                       "ORDER BY message_id")
    assert [(r["id"], r["message_id"]) for r in rows] == [(first, "m1"), (second, "m2")]
    assert rows[0]["hidden_mono_ns"] is not None and rows[1]["hidden_mono_ns"] is None
    assert '"end": 12' in rows[0]["layout"]


def test_incognito_replies_are_never_recorded(store):
    session = AppSession(store)
    store.conversations._incognito.add("secret")
    assert session.reply_shown(reply(conversation_id="secret")) is None
    store.flush()
    assert store.counts()["shown_replies"] == 0


def test_recording_state_needs_a_running_collector_consent_and_no_pause(store):
    session = AppSession(store)
    assert session.recording_state(incognito=False).text == "Not recording"
    session.set_collector("pointer", object())
    assert session.recording_state(incognito=False).text == "Not recording"   # no consent
    store.consent.set("pointer", True)
    state = session.recording_state(incognito=False)
    assert state.text == "Recording: mouse" and state.recording == ("pointer",)
    assert session.recording_state(incognito=True).text == "Not recording"
    store.consent.set("gaze", True)
    session.set_collector("gaze", object())
    state = session.recording_state(incognito=False)
    assert state.text == "Recording: mouse, camera" and state.camera_on
    assert session.toggle_pause() is True
    state = session.recording_state(incognito=False)
    assert state.text == "Recording paused" and state.recording == ()
    assert state.camera_on           # the dot shows the camera until it has closed
    session.set_collector("gaze", None)
    assert not session.recording_state(incognito=False).camera_on
    session.cameras_closing.add("a camera still closing")
    assert session.recording_state(incognito=False).camera_on
    session.cameras_closing.clear()
    session.toggle_pause()
    assert session.recording_state(incognito=False).text == "Recording: mouse"


BLOCK_QT = textwrap.dedent("""
    import importlib, pkgutil, sys
    class NoQt:
        def find_spec(self, name, path=None, target=None):
            if name == "PySide6" or name.startswith("PySide6."):
                raise ImportError("PySide6 is unavailable in this test")
    sys.meta_path.insert(0, NoQt())
    imported = []
    for package in ("app", "feedback_store", "gaze", "align"):
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            if info.name.startswith("app.ui"):
                continue
            importlib.import_module(info.name)
            imported.append(info.name)
    assert "PySide6" not in sys.modules
    print(len(imported), " ".join(imported))
""")


def test_the_personal_adapter_state_follows_what_is_published_for_the_loaded_model(store, tmp_path):
    from align.adapters import AdapterConfig, base_identity, publish
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + bytes(90))
    session = AppSession(store)
    state = session.adapter_state(str(model), enabled=True)
    assert state.text == "Base model" and not state.available and "align --nightly" in state.tooltip
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"GGUF")
    version = publish(AdapterConfig(session.adapters_dir), adapter, None,
                      {"base": base_identity(model), "pairs": {"train": 12, "heldout": 3}})
    state = session.adapter_state(str(model), enabled=True)
    assert (state.text, state.available, state.enabled) == (f"Personal {version}", True, True)
    assert "12 preference pairs" in state.tooltip
    off = session.adapter_state(str(model), enabled=False)
    assert off.text == f"Base model (personal {version} off)" and off.available and not off.enabled
    assert session.adapter_state(str(other), enabled=True).text == "Base model"   # other model
    assert session.use_personal_adapter() is True
    session.set_use_personal_adapter(False)
    assert session.use_personal_adapter() is False
    store.flush()
    from feedback_store.settings import SettingsManager
    assert SettingsManager(store).get("use_personal_adapter") is False    # in the file, not only in memory


def test_the_core_imports_without_qt():
    result = subprocess.run([sys.executable, "-c", BLOCK_QT], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    modules = result.stdout.split()
    assert "app.session" in modules and "feedback_store.store" in modules
    # Control: the blocker really blocks.
    blocked = subprocess.run([sys.executable, "-c", BLOCK_QT.replace(
        'if info.name.startswith("app.ui")', 'if False')], cwd=ROOT, capture_output=True,
        text=True, timeout=300, env=dict(os.environ))
    assert blocked.returncode != 0 and "PySide6 is unavailable" in blocked.stderr
