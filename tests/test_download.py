"""Model download against a loopback HTTP server that behaves like the hub (Range, 404)."""
import hashlib
import http.server
import threading
import time

import pytest

from app.download import DownloadCancelled, DownloadError, download_model
from app.models import default_model_path, inspect_model

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]


class HubHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    requests: list = []
    seconds_per_mib = 0.0      # a slow link
    # A link that stalls: the first ``stall_after`` bytes, then nothing until the test
    # opens ``resume`` (then a few bytes more, and nothing until ``finish``).
    stall_after: int | None = None
    resume = finish = None

    etag = '"v1"'
    honours_if_range = True    # (a hub that does not sends the rest of whatever it has now)

    def do_GET(self):
        self.requests.append((self.path, self.headers.get("Range")))
        if not self.path.endswith("/resolve/main/model.gguf"):
            self.send_error(404)
            return
        start = 0
        stale = self.honours_if_range and self.headers.get("If-Range") not in (None, self.etag)
        if self.headers.get("Range") and not stale:
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("ETag", self.etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if self.stall_after is not None:
                self.wfile.write(body[:self.stall_after])
                self.wfile.flush()
                self.resume.wait(60)
                self.wfile.write(body[self.stall_after:self.stall_after + 4096])
                self.wfile.flush()
                self.finish.wait(60)
                return
            for offset in range(0, len(body), 1 << 20):
                self.wfile.write(body[offset:offset + (1 << 20)])
                time.sleep(self.seconds_per_mib)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    HubHandler.payload = default_model_path().read_bytes()
    HubHandler.requests = []
    HubHandler.stall_after = None
    HubHandler.etag, HubHandler.honours_if_range = '"v1"', True
    HubHandler.resume, HubHandler.finish = threading.Event(), threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("GLANCE_HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield HubHandler
    HubHandler.resume.set()
    HubHandler.finish.set()
    server.shutdown()


def test_download_with_progress_and_checksum(hub, tmp_path):
    expected = hashlib.sha256(hub.payload).hexdigest()
    seen = []
    path = download_model("owner/repo", "model.gguf", tmp_path, sha256=expected,
                          progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == hub.payload
    assert seen[-1] == (len(hub.payload), len(hub.payload))
    assert inspect_model(path)["architecture"] == "llama"


def cancel_at_10_mib(folder) -> None:
    """A download of the hub's model.gguf into ``folder``, cancelled past 10 MiB."""
    cancel = threading.Event()

    def progress(done, total):
        if done >= 10 * 2**20:
            cancel.set()
    with pytest.raises(DownloadCancelled):
        download_model("owner/repo", "model.gguf", folder, progress=progress, cancel=cancel)


def test_cancel_then_resume(hub, tmp_path):
    cancel_at_10_mib(tmp_path)
    partial = tmp_path / "model.gguf.part"
    kept = partial.stat().st_size
    assert 0 < kept < len(hub.payload)
    path = download_model("owner/repo", "model.gguf", tmp_path)
    assert hub.requests[-1][1] == f"bytes={kept}-"
    assert path.read_bytes() == hub.payload
    assert not partial.exists()


def test_a_file_changed_on_the_hub_is_not_resumed_into_a_mix_of_both(hub, tmp_path):
    """A hub that ignores If-Range sends the rest of the new version after a cancel: it
    was appended to the old version's start, and the mix parsed as a model (same size,
    same header)."""
    cancel_at_10_mib(tmp_path)
    old = hub.payload
    changed = bytearray(old)
    for at in (5 * 2**20, len(old) - 5 * 2**20):          # before and after the cut
        changed[at:at + 2**20] = bytes(reversed(changed[at:at + 2**20]))
    hub.payload, hub.etag, hub.honours_if_range = bytes(changed), '"v2"', False
    path = download_model("owner/repo", "model.gguf", tmp_path)
    assert path.read_bytes() == hub.payload


def test_checksum_mismatch_deletes_the_file(hub, tmp_path):
    with pytest.raises(DownloadError, match="Checksum mismatch"):
        download_model("owner/repo", "model.gguf", tmp_path, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_on_the_hub(hub, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download_model("owner/repo", "other.gguf", tmp_path)


def test_a_file_already_there_is_used_when_its_checksum_matches(hub, tmp_path):
    """Checked against the SHA-256 given, without the network; another file of the same
    name is refused, and kept."""
    there = tmp_path / "model.gguf"
    there.write_bytes(hub.payload)
    expected = hashlib.sha256(hub.payload).hexdigest()
    assert download_model("owner/repo", "model.gguf", tmp_path, sha256=expected) == there
    assert hub.requests == []
    with pytest.raises(DownloadError, match="its SHA-256 is not the one given"):
        download_model("owner/repo", "model.gguf", tmp_path, sha256="0" * 64)
    with pytest.raises(DownloadError, match="already exists"):
        download_model("owner/repo", "model.gguf", tmp_path)
    assert there.read_bytes() == hub.payload and hub.requests == []
    # Reading gigabytes takes seconds, and the dialog waits for a cancel: it stops it.
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DownloadCancelled):
        download_model("owner/repo", "model.gguf", tmp_path, sha256=expected, cancel=cancel)
    assert there.read_bytes() == hub.payload
