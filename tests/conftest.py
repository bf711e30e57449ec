"""Shared fixtures: real model, real DuckDB (in a per-test GLANCE_HOME), real Qt offscreen.

The whole suite runs with sockets blocked (pyproject addopts: --disable-socket); only
the download test opens a loopback server.
"""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# No test may touch the developer's own Glance folder: one that forgets the `home`
# fixture gets this throw-away folder instead of ~/.local/share/Glance (removed when the
# run ends: every run left one in /tmp).
os.environ["GLANCE_HOME"] = tempfile.mkdtemp(prefix="glance-tests-home-")
atexit.register(shutil.rmtree, os.environ["GLANCE_HOME"], True)
# Headless CI has no keyring; make that explicit so every run takes the same path.
os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"

import keyring  # noqa: E402
import keyring.backend  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"


def require(condition, reason: str) -> None:
    """Skip the calling test when ``condition`` is false (a tool, model or library it
    needs is missing), except on CI (CI=true), where a missing prerequisite is a setup
    failure that must not pass unnoticed: there the test fails with ``reason``."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true, so this is a failure, not a skip: {reason}", pytrace=False)
    pytest.skip(reason)


class MemoryKeyring(keyring.backend.KeyringBackend):
    """A working keyring that lives in this process (for tests of the keyring path)."""
    priority = 1

    def __init__(self):
        super().__init__()
        self.secrets = {}

    def get_password(self, service, username):
        return self.secrets.get((service, username))

    def set_password(self, service, username, password):
        self.secrets[(service, username)] = password

    def delete_password(self, service, username):
        self.secrets.pop((service, username), None)


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "glance-home"
    monkeypatch.setenv("GLANCE_HOME", str(path))
    return path


@pytest.fixture
def store(home):
    from feedback_store import FeedbackStore
    store = FeedbackStore.open(home)
    yield store
    store.close()


@pytest.fixture(scope="session")
def engine():
    from app.engine import ChatEngine
    from app.models import ModelError, default_model_path
    try:
        default_model_path()
    except ModelError as error:
        require(False, str(error))
    engine = ChatEngine()
    yield engine
    engine.close()


@pytest.fixture
def service(store, engine):
    from app.chat import ChatService
    return ChatService(store, engine)


@pytest.fixture
def window(qtbot, store, engine):
    """The real main window on the real model and store, shown offscreen."""
    from app.ui.main_window import MainWindow
    store.settings.set("generation", quick_settings().to_dict())
    window = MainWindow(store, engine)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    yield window
    window.close()


def quick_settings(**overrides):
    from app.engine import GenerationSettings
    values = {"seed": 7, "max_tokens": 24, "temperature": 0.7}
    values.update(overrides)
    return GenerationSettings(**values)


def run_glance(*args, home: Path, timeout=120, env: dict | None = None, **kwargs):
    """``env``: variables set beside this process's (GLANCE_HOME is ``home``)."""
    env = dict(os.environ, **(env or {}), GLANCE_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT, **kwargs)


def nightly_settings(home: Path, **sections) -> Path:
    """``training/settings.json`` for a nightly job a test starts. The job runs at normal
    priority: at its real, idle priority it gets nothing while anything else on a busy
    machine runs, and a test waiting for it would time out (the priority itself has a
    test of its own)."""
    import json
    settings = {"nightly": {"lower_priority": False}, **sections}
    path = home / "training" / "settings.json"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps(settings))
    return path


def files_contain(directory: Path, marker: bytes) -> list[Path]:
    """Every file under ``directory`` whose raw bytes contain ``marker``."""
    return [p for p in directory.rglob("*") if p.is_file() and marker in p.read_bytes()]


def free_display_number(first: int = 90) -> int:
    """The lowest display number from ``first`` with neither a socket in /tmp/.X11-unix
    nor a lock file /tmp/.X<n>-lock (another X server, or another test run, has it)."""
    number = first
    while (Path(f"/tmp/.X11-unix/X{number}").exists()
           or Path(f"/tmp/.X{number}-lock").exists()):
        number += 1
    return number


def start_xvfb(attempts: int = 5, timeout_s: float = 20.0):
    """Start Xvfb on a free display; return (display, process, stderr file) once it is
    really serving it: the process is alive, its socket exists, and the display's lock
    file names this process (not a server someone else started on that number).
    Raises RuntimeError with Xvfb's own stderr when it cannot."""
    problems = []
    number = free_display_number()
    for _ in range(attempts):
        stderr = tempfile.TemporaryFile()
        server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1280x800x24",
                                   "-nolisten", "tcp", "-noreset"],
                                  stdout=subprocess.DEVNULL, stderr=stderr)
        socket_path = Path(f"/tmp/.X11-unix/X{number}")
        lock_path = Path(f"/tmp/.X{number}-lock")
        deadline = time.monotonic() + timeout_s
        while server.poll() is None and time.monotonic() < deadline:
            try:
                owner = int(lock_path.read_text().strip())
            except (OSError, ValueError):
                owner = None
            if owner == server.pid and socket_path.exists():
                return f":{number}", server, stderr
            time.sleep(0.05)
        if server.poll() is None:
            server.kill()
        server.wait()
        stderr.seek(0)
        problems.append(f":{number} (exit {server.returncode}): "
                        + stderr.read().decode(errors="replace").strip()[-800:])
        stderr.close()
        # Most likely another run took this number between the scan and the start.
        number = free_display_number(number + 1)
    raise RuntimeError("Xvfb did not start: " + " | ".join(problems))


@pytest.fixture(scope="session")
def xvfb_display():
    """A real X server (Xvfb) on a free display, checked to be running; skipped where
    Xvfb is missing or cannot start (failed on CI)."""
    require(shutil.which("Xvfb") is not None,
            "Xvfb is not installed (scripts/bootstrap.sh installs it)")
    try:
        display, server, stderr = start_xvfb()
    except RuntimeError as error:
        require(False, str(error))
    yield display
    server.terminate()
    server.wait()
    stderr.close()


def copy_gguf_with_template(source, target, template: str):
    """A copy of a GGUF model with another chat template (weights kept as they are)."""
    import gguf
    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(target), reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = template if name == "tokenizer.chat_template" else field.contents()
        main = field.types[0]
        if main == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, value, main, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, value, main)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype,
                               tensor.data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
    return target


def write_gguf(path, architecture: str, with_tensor: bool):
    """A well-formed GGUF with a chat template that inspection accepts but llama.cpp
    cannot load (an architecture it does not know, or a llama without its weights)."""
    import numpy as np
    from gguf import GGUFWriter
    writer = GGUFWriter(str(path), arch=architecture)
    writer.add_name(f"broken {architecture}")
    writer.add_context_length(2048)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    if with_tensor:
        writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
