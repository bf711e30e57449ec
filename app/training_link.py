"""The app's side of the nightly job's private socket (protocol in ``align/ipc.py``).

GUI-free: the main window owns one :class:`TrainingLink`, starts it once the store is
open and stops it before closing the store. While the app runs it is the only process
with the database open, so the job asks here for an encrypted snapshot of the consented
training rows and hands back the run's outcome, which is written through the store's own
writer (no sample the app records meanwhile is lost or blocked for long).

Also here: :func:`open_store_waiting`, for the app starting while a nightly job holds
the database for its few seconds of reading or recording.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from align import adapters as adapter_files
from align.ipc import HELLO_S, PROTOCOL, peer_uid, read_message, send_message, socket_path
from align.locks import LOCK_FILE, job_running
from feedback_store import DatabaseLocked, FeedbackStore

SNAPSHOTS = Path("training") / "snapshots"


def tidy_training(store, data_dir: Path, deleted: bool = False) -> list[str]:
    """Retire adapters and reward models trained on conversations deleted since, and (when
    no job is running) remove leftover snapshots and unfinished training state that
    learned from them (the rest stays for the next run to resume). Returns the versions retired. The window (its
    link) and ``glance data delete`` both come here (``deleted``: a conversation was)."""
    retired = adapter_files.retire_stale(store, adapter_files.adapters_dir(data_dir))
    from align.scoring import model_dir, retire_models
    retire_models(store, model_dir(data_dir), unlisted=deleted)
    if not job_running(data_dir):
        shutil.rmtree(Path(data_dir) / SNAPSHOTS, ignore_errors=True)
        adapter_files.remove_stale_work(store, Path(data_dir) / "training" / "work")
    return retired


# How long a client may take to send its request (the link answers one at a time): well
# inside a client's wait for its hello, so one that trickles its bytes is dropped before
# the others give up on the app (at 10 s, every command did).
REQUEST_S = 2.0
assert REQUEST_S < HELLO_S / 2
# The form of feedback_store.training.new_run_id(), the snapshot's file name.
RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")


class TrainingLink:
    def __init__(self, store: FeedbackStore, model_path: Callable[[], str | None] | None = None,
                 idle_seconds: Callable[[], float | None] | None = None,
                 on_adapters_changed: Callable[[], None] | None = None,
                 scoring: Callable[[], dict] | None = None):
        self.store = store
        self.scoring = scoring or (lambda: None)
        self.data_dir = Path(store.data_dir)
        self.model_path = model_path or (lambda: None)
        self.idle_seconds = idle_seconds or (lambda: None)
        self.on_adapters_changed = on_adapters_changed
        self.path = socket_path(self.data_dir)
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connection: socket.socket | None = None   # the one being answered
        self.served: list[str] = []      # operations answered (status, tests)

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> "TrainingLink":
        self._remove_stale_socket()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)      # the socket file is born 0600
        try:
            server.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        server.listen(4)            # accept() waits without a timeout: stop() wakes it
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="glance-training-link", daemon=True)
        self._thread.start()
        self.tidy()
        return self

    def stop(self) -> None:
        self._stopping.set()
        connection = self._connection
        if connection is not None:       # (a client still sending: not waited for)
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._server is not None:
            # Wake the accept() at once: it polled every 0.5 s before, and closing the
            # window waited for the poll. Linux wakes it on shutdown() (EINVAL); elsewhere
            # shutdown() of a listening socket fails, and a connection wakes it.
            try:
                self._server.shutdown(socket.SHUT_RDWR)
            except OSError:
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as waker:
                        waker.settimeout(1)
                        waker.connect(str(self.path))
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._server is not None:
            self._server.close()
            self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _remove_stale_socket(self) -> None:
        if not self.path.exists():
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink(missing_ok=True)      # left by an app that died
            return
        finally:
            probe.close()
        raise RuntimeError(f"Another Glance is already serving {self.path}.")

    # --- housekeeping the window calls -----------------------------------------------------
    def job_running(self) -> bool:
        return job_running(self.data_dir)

    def tidy(self, deleted: bool = False) -> list[str]:
        """:func:`tidy_training`, and the window hears of adapters retired. Call after
        deleting a conversation (``deleted``); runs at start too."""
        retired = tidy_training(self.store, self.data_dir, deleted)
        if retired and self.on_adapters_changed is not None:
            self.on_adapters_changed()
        return retired

    # --- serving ---------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._server.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                self._stopping.wait(0.1)     # (out of file handles: do not spin)
                continue
            if self._stopping.is_set():      # stop()'s own wake-up call
                connection.close()
                return
            self._connection = connection
            with connection:
                connection.settimeout(REQUEST_S)
                try:
                    self._answer(connection)
                except Exception:  # noqa: BLE001 - one bad client must not stop the link
                    pass
                finally:
                    self._connection = None

    def _answer(self, connection: socket.socket) -> None:
        uid = peer_uid(connection)
        if uid is not None and uid != os.getuid():
            send_message(connection, {"ok": False, "error": "not the same user"})
            return
        # The whole request within REQUEST_S: the link answers one client at a time, and
        # one sending a byte every few seconds held it (every other client gave up).
        request = read_message(connection, deadline=time.monotonic() + REQUEST_S)
        if request is None or self._stopping.is_set():
            return
        op = request.pop("op", None)
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            send_message(connection, {"ok": False, "error": f"unknown operation {op!r}"})
            return
        try:
            answer = handler(**request)
        except Exception as error:  # noqa: BLE001 - reported to the job, which decides
            send_message(connection, {"ok": False, "error": f"{type(error).__name__}: {error}"})
            return
        self.served.append(op)
        send_message(connection, dict(answer, ok=True))

    def _op_hello(self) -> dict:
        return {"protocol": PROTOCOL, "pid": os.getpid(), "model": self.model_path(),
                "idle_s": self.idle_seconds()}

    def _op_snapshot(self, run_id: str, include_imported: bool = False) -> dict:
        if not RUN_ID.fullmatch(str(run_id)):
            # A file name in the data folder: "../../glance" named the live database,
            # which the snapshot's writer removed first.
            raise ValueError(f"not a run id: {run_id!r}")
        retired = adapter_files.retire_stale(self.store, adapter_files.adapters_dir(self.data_dir))
        if retired and self.on_adapters_changed is not None:
            self.on_adapters_changed()
        folder = self.data_dir / SNAPSHOTS
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_hex(32)
        path = folder / f"{run_id}.db"
        written = self.store.training.write_snapshot(path, key, include_imported=include_imported)
        model = self.model_path()
        self.store.training.begin_run(run_id, "app", Path(model).name if model else None)
        return {"path": str(path), "key": key, "model": model, "counts": written["counts"],
                "consent_on": written["consent_on"],
                "last_fingerprint": self.store.training.last_fingerprint(), "retired": retired}

    def _op_reward_labels(self) -> dict:
        """The user's labelled rows for the reward models (consented only), computed here
        because they need the reading traces in the database this app holds."""
        from align.train import live_tables
        # (with the consent: without it `align reward train` gave the wrong reason for
        # using none of the user's rows)
        return {**{task: table.to_json() for task, table in live_tables(self.store).items()},
                "consent_on": self.store.consent.is_on("personalise")}

    def _op_status(self) -> dict:
        """``store.status()`` and the last nightly run, for `glance data status` and
        `glance doctor` while this app holds the database, with how scoring goes here."""
        return {"status": self.store.status(), "runs": self.store.training.runs(1),
                "scoring": self.scoring()}

    def _op_reward_scores(self, limit: int = 20) -> dict:
        """The newest scored replies (``align.scoring.recent_scores``), for
        `align reward scores` while this app holds the database."""
        from align.scoring import recent_scores
        return {"scores": recent_scores(self.store, limit)}

    def _op_finish(self, run_id: str, outcome: dict) -> dict:
        self.store.training.finish_run(run_id, outcome)
        # A conversation deleted while the job trained: its adapter must not stay in use.
        retired = adapter_files.retire_stale(self.store, adapter_files.adapters_dir(self.data_dir))
        if (outcome.get("published") or retired) and self.on_adapters_changed is not None:
            self.on_adapters_changed()
        return {"retired": retired}

    def _op_adapters_changed(self) -> dict:
        """A version became active or was rolled back after the job's record (the job
        records before it activates, so the label read the old one at ``finish``)."""
        if self.on_adapters_changed is not None:
            self.on_adapters_changed()
        return {}

    def _op_runs(self, limit: int = 10) -> dict:
        return {"runs": self.store.training.runs(limit)}

    def _op_existing(self, ids: list) -> dict:
        return {"ids": sorted(self.store.training.existing_conversations(ids)),
                "personalise": self.store.consent.is_on("personalise")}


def open_store_waiting(data_dir: Path | None = None, on_wait: Callable[[str], None] | None = None,
                       timeout_s: float = 300.0, poll_s: float = 0.5) -> FeedbackStore:
    """Open the store; while another process (normally the nightly job, which holds the
    file for a few seconds at its start and end) has it, tell ``on_wait`` once what is
    happening and retry until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        try:
            return FeedbackStore.open(data_dir)
        except DatabaseLocked as error:
            if time.monotonic() > deadline:
                raise
            if not told and on_wait is not None:
                on_wait(_waiting_message(data_dir, error))
                told = True
            time.sleep(poll_s)


def _waiting_message(data_dir, error: DatabaseLocked) -> str:
    from feedback_store import glance_home
    lock = Path(data_dir or glance_home()) / LOCK_FILE
    try:
        job = lock.read_text().strip()
    except OSError:
        job = ""
    if job and job in str(error.holder):
        return ("The nightly personalisation is reading or saving its results; Glance opens "
                "as soon as it lets go of the database (usually a few seconds)…")
    return (f"Another Glance process ({error.holder}) has the database open; waiting for it "
            "to finish…")
