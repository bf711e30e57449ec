"""The nightly job ↔ the running app: a private AF_UNIX socket in the data folder.

DuckDB lets one process open the database. When the app is running it owns the file,
so the job asks the app instead of opening it (``app/training_link.py`` serves this):

    client = AppClient.find(data_dir)        # None: no app is serving
    info = client.request("snapshot", run_id=..., include_imported=False)
    ...
    client.request("finish", run_id=..., outcome={...})

One request per connection: a JSON object on one line, answered by one JSON line
(``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``).

Operations (protocol 1):
  hello                      → pid, protocol, model (the GGUF the app chats with), idle_s
  snapshot run_id, include_imported
                             → path + key of a one-off encrypted snapshot of the consented
                               training rows, model, last_fingerprint, retired; the app
                               records the run as started
  finish run_id, outcome     → the app records how the run ended (store.training.finish_run)
  existing ids               → which of these conversations still exist, and whether
                               personalisation is still allowed
  runs limit                 → the newest recorded runs (align status)

Who may talk: the socket file is 0600 inside the 0700 data folder, and the server checks
the peer's uid (SO_PEERCRED) where the platform has it. The snapshot key travels only
over this socket, never to disk.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import struct
import sys
import tempfile
import time
from pathlib import Path

PROTOCOL = 1
# How long a client waits for the app's hello before taking it for gone (and opening
# the database itself, which the app holds: "in use by another process").
HELLO_S = 5.0
SOCKET_NAME = "nightly.sock"
MAX_MESSAGE = 64 * 2**20
_MAX_PATH = 100   # sun_path is 104–108 bytes depending on the platform


class LinkError(RuntimeError):
    """The app answered with an error."""


class LinkClosed(LinkError, ConnectionError):
    """The app went away mid-request (it is closing): try again."""


class LinkUnavailable(OSError):
    """No private place for the socket: the app serves no link, the job opens the store."""


def socket_path(data_dir: Path) -> Path:
    """``<data dir>/nightly.sock``; when that path is too long for AF_UNIX, a 0700
    folder in the temp dir named after the data folder (both sides compute the same)."""
    data_dir = Path(data_dir).resolve()
    path = data_dir / SOCKET_NAME
    if len(os.fsencode(path)) <= _MAX_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"glance-{os.getuid()}-{digest}"
    folder.mkdir(mode=0o700, exist_ok=True)
    # Its name can be worked out by anyone: made first by another user (or a link to
    # elsewhere), it is not ours, and every link and job failed on a PermissionError.
    found = folder.lstat()
    if stat.S_ISLNK(found.st_mode) or not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() \
            or found.st_mode & 0o077:
        raise LinkUnavailable(f"{folder} is not a private folder of this user")
    return folder / SOCKET_NAME


def send_message(sock: socket.socket, message: dict) -> None:
    sock.sendall(json.dumps(message, default=str).encode("utf-8") + b"\n")


def read_message(sock: socket.socket, deadline: float | None = None) -> dict | None:
    """One newline-ended JSON message; ``deadline`` (``time.monotonic()``) bounds the
    whole of it, not each read (a byte every few seconds held a reader for ever)."""
    chunks, size = [], 0
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LinkError("the message did not arrive in time")
            sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
        if size > MAX_MESSAGE:
            raise LinkError("message too large")
    data = b"".join(chunks)
    if not data.strip():
        return None
    return json.loads(data.decode("utf-8"))


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end (Linux), or None where unknown."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class AppClient:
    def __init__(self, path: Path, timeout: float = 120.0):
        self.path = Path(path)
        self.timeout = timeout

    @classmethod
    def find(cls, data_dir: Path, timeout: float = 120.0) -> "AppClient | None":
        """A client for the app serving ``data_dir``, or None when no app answers."""
        if sys.platform == "win32":
            return None
        try:
            client = cls(socket_path(data_dir), timeout)
        except LinkUnavailable:
            return None
        if not client.path.exists():
            return None
        try:
            hello = client.request("hello", timeout=HELLO_S)
        except (OSError, LinkError, ValueError):
            return None
        if hello.get("protocol") != PROTOCOL:
            return None
        client.hello = hello
        return client

    def request(self, op: str, timeout: float | None = None, **args) -> dict:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout or self.timeout)
        try:
            sock.connect(str(self.path))
            send_message(sock, dict(args, op=op))
            answer = read_message(sock)
        finally:
            sock.close()
        if answer is None:
            raise LinkClosed(f"the app closed the connection during {op!r}")
        if not answer.get("ok"):
            raise LinkError(answer.get("error") or f"{op!r} failed in the app")
        return answer


def ask_open_app(data_dir: Path, call, what: str, locked: Exception):
    """``call(client)`` on the Glance window that holds the database (``locked``: the
    DatabaseLocked error that said it is held). The commands that read the store ask the
    window this way; when it cannot answer, a StoreError says why in one sentence: the
    nightly job holds the database for a moment, or the lock error itself (it names the
    process), or the window could not hand over ``what``."""
    from feedback_store.errors import StoreError
    from .locks import job_running
    client = AppClient.find(data_dir)
    if client is None and job_running(data_dir):
        raise StoreError("the nightly job is reading or saving the database (usually a few "
                         "seconds); try again in a moment.")
    if client is None:
        raise locked
    try:
        return call(client)
    except (LinkError, OSError) as error:       # an older window, or it closed meanwhile
        raise StoreError(f"Glance is open and could not hand over {what} ({error}).") from error


def tell_app_adapters_changed(data_dir: Path) -> bool:
    """Tell a running window that the active adapter changed (its label follows), if one
    runs. False when none answered: it reads the adapters when it next starts anyway."""
    client = AppClient.find(data_dir, timeout=5.0)
    if client is None:
        return False
    try:
        client.request("adapters_changed", timeout=5.0)
    except (OSError, LinkError, ValueError):
        return False
    return True
