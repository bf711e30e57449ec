"""Shared fixtures: real model, real DuckDB (in a per-test GLANCE_HOME), real Qt offscreen.

The whole suite runs with sockets blocked (pyproject addopts: --disable-socket); only
the download test opens a loopback server.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Headless CI has no keyring; make that explicit so every run takes the same path.
os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"

import keyring  # noqa: E402
import keyring.backend  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"


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


def run_glance(*args, home: Path, timeout=120, **kwargs):
    env = dict(os.environ, GLANCE_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT, **kwargs)


def files_contain(directory: Path, marker: bytes) -> list[Path]:
    """Every file under ``directory`` whose raw bytes contain ``marker``."""
    return [p for p in directory.rglob("*") if p.is_file() and marker in p.read_bytes()]


@pytest.fixture(scope="session")
def xvfb_display():
    """A real X server for the screenshot tests; skipped where Xvfb is missing."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (scripts/bootstrap.sh installs it)")
    display = ":97"
    server = subprocess.Popen(["Xvfb", display, "-screen", "0", "1280x800x24", "-nolisten",
                               "tcp", "-noreset"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    socket_path = Path(f"/tmp/.X11-unix/X{display[1:]}")
    for _ in range(100):
        if socket_path.exists():
            break
        time.sleep(0.05)
    yield display
    server.terminate()
    server.wait()
