"""Cold start: nothing heavy is imported until a feature needs it, the GGUF header is read
without the gguf package, and the app's ready hook (used by bench/startup.py) works."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from app.models import ModelError, default_model_path, inspect_model
from conftest import ROOT, require, run_glance

# Each costs from a few hundred ms to seconds to import, and none is needed to chat.
HEAVY = ["torch", "transformers", "trl", "peft", "datasets", "accelerate", "mediapipe",
         "cv2", "sklearn", "skimage", "scipy", "jax", "matplotlib", "gguf"]

PROBE = textwrap.dedent("""
    import json, sys
    import app.cli, app.ui.main, app.ui.main_window
    from app.models import default_model_path, inspect_model
    inspect_model(default_model_path())  # the header reader must not need gguf
    for name in sys.argv[2:]:
        __import__(name)  # only the control passes names here
    heavy = json.loads(sys.argv[1])
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
""")


def gguf_package():
    """The gguf package (a dev dependency): the reference reader these tests compare
    against. Skipped only where it is missing and CI is not set."""
    require(importlib.util.find_spec("gguf") is not None,
            "the gguf package is missing (pip install -e '.[dev]')")
    import gguf
    return gguf


def heavy_modules_after_start(*extra_imports: str) -> list[str]:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY), *extra_imports],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cli_and_window_import_nothing_heavy():
    assert heavy_modules_after_start() == []


def test_duckdb_is_imported_without_reading_its_package_metadata():
    """duckdb's version module imported importlib.metadata (email, zipfile, csv...): about
    20 ms of every start, with the one-shot chat at its 1.3x limit. duckdb is given its
    version from the engine it bundles, the same one the package metadata states."""
    probe = ("import sys, json, app.cli, app.ui.main, app.ui.main_window, duckdb; "
             "print(json.dumps(['importlib.metadata' in sys.modules, duckdb.__version__, "
             "duckdb.version()]))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, QT_QPA_PLATFORM="offscreen"),
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    loaded, version, long_version = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded is False
    from importlib.metadata import version as package_version
    assert version == package_version("duckdb") and version in long_version


def test_the_import_probe_sees_a_heavy_import():
    # The control: were a start-up module to import gguf, the probe would report it.
    gguf_package()
    assert "gguf" in heavy_modules_after_start("gguf")


def test_embedded_model_header():
    info = inspect_model(default_model_path())
    assert info["architecture"] == "llama"
    assert info["context_length"] == 8192
    assert "im_start" in info["chat_template"]
    assert info["name"]


def test_a_file_cut_after_it_was_inspected_is_refused(tmp_path):
    """The header is cached per (path, size, mtime): a changed file is read again."""
    copy = tmp_path / "model.gguf"
    copy.write_bytes(default_model_path().read_bytes())
    assert inspect_model(copy)["architecture"] == "llama"
    with open(copy, "r+b") as handle:
        handle.truncate(os.path.getsize(copy) - 1000)
    with pytest.raises(ModelError, match="truncated"):
        inspect_model(copy)


def test_damaged_headers_are_refused(tmp_path):
    header = default_model_path().read_bytes()[:4096]
    cases = {
        "version": header[:4] + (99).to_bytes(4, "little") + header[8:],
        "kv_count": header[:16] + (2**62).to_bytes(8, "little") + header[24:],
        "cut_in_header": header[:2000],
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(data)
        with pytest.raises(ModelError, match="damaged or truncated"):
            inspect_model(path)


def test_reader_matches_gguf_on_the_embedded_model():
    gguf = gguf_package()
    from app.models import _read_header
    path = default_model_path()
    reader = gguf.GGUFReader(path)
    fields = reader.fields
    architecture = fields["general.architecture"].contents()
    header = _read_header.__wrapped__(str(path.resolve()), 0, 0)
    assert header.architecture == architecture
    assert header.name == fields["general.name"].contents()
    assert header.context_length == fields[f"{architecture}.context_length"].contents()
    assert header.chat_template == fields["tokenizer.chat_template"].contents()
    assert header.expected_end == max(t.data_offset + t.n_bytes for t in reader.tensors)


def test_reader_matches_gguf_on_odd_layouts(tmp_path):
    """Custom alignment, every scalar type, string/number/nested arrays, f16 tensors."""
    gguf = gguf_package()
    import numpy as np
    from app.models import _read_header
    for alignment in (None, 1, 64):
        path = tmp_path / f"odd-{alignment}.gguf"
        writer = gguf.GGUFWriter(str(path), arch="qwen2")
        if alignment:
            writer.add_custom_alignment(alignment)
        writer.add_name("odd")
        writer.add_context_length(4096)
        writer.add_bool("x.bool", True)
        writer.add_float32("x.float", 0.5)
        writer.add_int8("x.int8", -3)
        writer.add_uint64("x.uint64", 2**40)
        writer.add_array("x.numbers", [1, 2, 3])
        writer.add_array("x.strings", ["a", "bé", ""])
        writer.add_array("x.nested", [[1, 2], [3]])
        writer.add_chat_template("{{ messages }}")
        writer.add_tensor("a", np.ones((3, 5), dtype=np.float32))
        writer.add_tensor("b", np.ones((7,), dtype=np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        reader = gguf.GGUFReader(path)
        header = _read_header.__wrapped__(str(path), 0, 0)
        assert (header.architecture, header.name, header.context_length, header.chat_template) \
            == ("qwen2", "odd", 4096, "{{ messages }}")
        assert header.expected_end == max(t.data_offset + t.n_bytes for t in reader.tensors)


def test_app_reports_ready_and_quits(tmp_path):
    """The hook bench/startup.py times: printed once the window is usable, then quit."""
    home = tmp_path / "home"
    for signal in ("pointer", "gaze", "personalise"):  # no consent dialog to wait on
        assert run_glance("consent", "set", signal, "off", home=home).returncode == 0
    env = dict(os.environ, GLANCE_HOME=str(home), QT_QPA_PLATFORM="offscreen",
               GLANCE_PRINT_READY="1", GLANCE_QUIT_WHEN_READY="1")
    done = subprocess.run([sys.executable, "-m", "app.cli"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines().count("glance-ready") == 1


def test_ready_is_printed_only_once_the_window_is_usable(qtbot, store, engine, capsys,
                                                         monkeypatch):
    """Counted above, not timed: printed before the window was shown or had its input
    focused, bench/startup.py would time a window nobody could type into."""
    from PySide6.QtWidgets import QApplication
    from app.ui.main import _announce_ready
    from app.ui.main_window import MainWindow
    from conftest import quick_settings
    monkeypatch.setenv("GLANCE_PRINT_READY", "1")
    monkeypatch.delenv("GLANCE_QUIT_WHEN_READY", raising=False)
    store.settings.set("generation", quick_settings().to_dict())
    window = MainWindow(store, engine)
    qtbot.addWidget(window)
    _announce_ready(QApplication.instance(), window)
    qtbot.wait(300)                                   # not shown yet: not usable
    assert "glance-ready" not in capsys.readouterr().out
    window.show()
    window.activateWindow()
    qtbot.waitUntil(lambda: window.input.hasFocus(), timeout=10_000)
    qtbot.wait(100)
    assert capsys.readouterr().out.splitlines() == ["glance-ready"]
    window.close()


def test_the_header_cache_is_used_across_processes_and_notices_a_rewritten_file(home, tmp_path):
    """The vocabulary walk runs once per file version: the next process reads the cached
    header (shown by planting a different name in the cache), and a rewritten file is
    parsed again. Seen red with the identity check removed: the planted name came back."""
    gguf = gguf_package()
    import numpy as np
    from app import models
    home.mkdir(parents=True)

    def write(name):
        writer = gguf.GGUFWriter(str(tmp_path / "small.gguf"), arch="llama")
        writer.add_name(name)
        writer.add_chat_template("{{ messages }}")
        writer.add_tensor("a", np.ones((4,), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        models._read_header.cache_clear()  # as in a new process
        return tmp_path / "small.gguf"

    path = write("first")
    assert inspect_model(path)["name"] == "first"
    cache_file = home / models.HEADER_CACHE
    entries = json.loads(cache_file.read_text())
    entries[str(path.resolve())]["header"][1] = "planted"
    cache_file.write_text(json.dumps(entries))
    assert inspect_model(path)["name"] == "planted"
    time.sleep(0.01)
    assert inspect_model(write("second"))["name"] == "second"
    cache_file.write_text("{not json")
    assert inspect_model(path)["name"] == "second"
    # A cache that cannot be written is only a cache: the model is fine. (Its clean-up
    # raised again inside the handler, and the model was reported "damaged or truncated".)
    import shutil
    shutil.rmtree(cache_file.parent)
    cache_file.parent.write_text("a file where the cache folder goes")
    models._read_header.cache_clear()
    assert inspect_model(path)["name"] == "second"


def test_an_open_with_a_key_file_never_imports_the_keyring(home):
    """With a key file in force (headless machines) the keyring package is not imported
    at all (≈ 45 ms of every start): not for the key, not for a staged compaction key.
    Seen red when the staged-key lookup asked the keyring regardless of the storage."""
    import secrets
    home.mkdir(parents=True, mode=0o700)
    key_file = home / "glance.key"      # as a machine without a keyring backend has it
    key_file.write_text(secrets.token_hex(32))
    key_file.chmod(0o600)
    probe = ("import sys; from feedback_store import FeedbackStore; "
             "FeedbackStore.open().close(); print('keyring' in sys.modules)")
    env = dict(os.environ, GLANCE_HOME=str(home))
    for _ in range(2):  # creating the database, then opening it
        opened = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                               env=env, cwd=ROOT, timeout=120)
        assert opened.returncode == 0, opened.stderr
        assert opened.stdout.strip() == "False"
