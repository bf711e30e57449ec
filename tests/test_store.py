"""feedback_store against a real encrypted DuckDB file."""
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from feedback_store import (
    Conversation, DataDirUnwritable, DatabaseLocked, FeedbackStore, GazeSample, Message,
    PointerSample, SchemaTooNew,
)
from conftest import ROOT


def sample_row(conversation_id, i=0, kind="move"):
    return PointerSample("session", "shown", conversation_id, time.monotonic_ns(), time.time_ns(),
                         kind, float(i), 2.0, i, "qt")


def test_messages_are_committed_and_reopen(home):
    store = FeedbackStore.open(home)
    conversation = store.conversations.create(Conversation(title="first"))
    message = store.conversations.add_message(Message(conversation_id=conversation.id, role="user", content="hello"))
    store.close()
    with FeedbackStore.open(home) as reopened:
        assert [m.content for m in reopened.conversations.messages(conversation.id)] == ["hello"]
        assert reopened.conversations.get(conversation.id).active_leaf_id == message.id


def test_data_dir_and_files_are_private(store, home):
    store.conversations.add_message(Message(conversation_id="c", role="user", content="x"))
    store.flush()
    assert (home.stat().st_mode & 0o777) == 0o700
    for path in home.rglob("*"):  # the cache folder (extension check, model headers) too
        assert (path.stat().st_mode & 0o777) == (0o700 if path.is_dir() else 0o600), path


def test_schema_from_a_newer_version_is_refused_untouched(home):
    store = FeedbackStore.open(home)
    store._write("INSERT INTO schema_migrations VALUES (999, 0)")
    store.close()
    database = home / "glance.db"
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    with pytest.raises(SchemaTooNew) as raised:
        FeedbackStore.open(home)
    assert "newer Glance" in str(raised.value) and "999" in str(raised.value)
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before
    assert not (home / "glance.db.wal").exists()


def test_database_locked_by_another_process_names_it(home):
    FeedbackStore.open(home).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from feedback_store import FeedbackStore
            store = FeedbackStore.open({str(home)!r})
            print("open", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert holder.stdout.readline().strip() == "open"
        # The holder may be compacting: the open that is refused must not touch its
        # half-written copy (the recovery of a crashed compaction deleted it first).
        compacting = home / "glance.compact.db"
        compacting.write_bytes(b"being written by the holder")
        with pytest.raises(DatabaseLocked) as raised:
            FeedbackStore.open(home)
        assert f"PID {holder.pid}" in str(raised.value)
        assert "another process" in str(raised.value)
        assert compacting.read_bytes() == b"being written by the holder"
    finally:
        holder.kill()
        holder.wait()


def test_unwritable_data_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DataDirUnwritable) as raised:
        FeedbackStore.open(blocker / "glance")
    assert "GLANCE_HOME" in str(raised.value)


def test_processes_checking_the_data_dir_at_once_do_not_fail_each_other(tmp_path):
    """The app and the nightly job open the same folder at the same moment (CI caught
    the app told its folder was unwritable: the job had removed the app's write probe)."""
    home = tmp_path / "glance"
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from feedback_store.paths import ensure_private_dir
        for _ in range(2000):
            ensure_private_dir(Path(sys.argv[1]))
    """)
    checkers = [subprocess.Popen([sys.executable, "-c", script, str(home)], cwd=ROOT,
                                 stderr=subprocess.PIPE, text=True) for _ in range(3)]
    failures = [checker.communicate()[1] for checker in checkers if checker.wait() != 0]
    assert failures == []
    assert list(home.iterdir()) == []          # no probe is left behind
    # One left by a crash (this probe, or an older version's) is Glance's to delete.
    from feedback_store.privacy import is_glance_entry
    assert all(is_glance_entry(home / name) for name in (".write-probe", ".write-probe-x1"))
    assert not is_glance_entry(home / "my-notes.txt")


def test_processes_making_the_first_key_at_once_share_one_key(tmp_path):
    """A fresh folder opened by two processes at once gets one key, never two (the
    second used to fail on the file the first had just made, or read it half written)."""
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from feedback_store.keys import load_or_create_key
        home = Path(sys.argv[1])
        print(load_or_create_key(home, home / "glance.db").hex)
    """)
    for attempt in range(15):
        home = tmp_path / f"glance-{attempt}"
        home.mkdir()
        makers = [subprocess.Popen([sys.executable, "-c", script, str(home)], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for _ in range(3)]
        answers = [maker.communicate() for maker in makers]
        assert [error for _, error in answers if error] == []
        keys = {key.strip() for key, _ in answers}
        assert keys == {(home / "glance.key").read_text()}
        assert [entry.name for entry in home.iterdir()] == ["glance.key"]


def test_processes_making_the_first_key_in_a_keyring_at_once_share_one_key(tmp_path):
    """With a keyring, each process making the first key wrote its own: the second
    overwrote the first's, and a database made with the first could never be opened."""
    script = textwrap.dedent("""
        import json, sys, time
        from pathlib import Path
        import keyring, keyring.backend

        class SharedKeyring(keyring.backend.KeyringBackend):   # one file all processes see
            priority = 1
            path = Path(sys.argv[2])

            def _read(self):
                return json.loads(self.path.read_text()) if self.path.exists() else {}

            def get_password(self, service, user):
                return self._read().get(f"{service}/{user}")

            def set_password(self, service, user, value):
                time.sleep(0.5)           # a slow keyring: between a look and a write
                entries = self._read()
                entries[f"{service}/{user}"] = value
                self.path.write_text(json.dumps(entries))

            def delete_password(self, service, user):
                pass
        keyring.set_keyring(SharedKeyring())
        from feedback_store.keys import load_or_create_key
        home = Path(sys.argv[1])
        key = load_or_create_key(home, home / "glance.db")
        print(key.hex, key.storage)
    """)
    for attempt in range(3):
        home, shared = tmp_path / f"glance-{attempt}", tmp_path / f"keyring-{attempt}.json"
        home.mkdir()
        makers = [subprocess.Popen([sys.executable, "-c", script, str(home), str(shared)],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True) for _ in range(3)]
        answers = [maker.communicate() for maker in makers]
        assert [error for _, error in answers if error] == []
        keys = {out.split()[0] for out, _ in answers}
        assert {out.split()[1] for out, _ in answers} == {"keyring"}
        assert keys == set(json.loads(shared.read_text()).values())
        assert len(keys) == 1
        # nothing left of the lock; the note that the key is in the keyring
        assert [p.name for p in home.iterdir()] == ["glance.keyring"]


def test_a_key_and_database_made_by_another_process_meanwhile_are_used(tmp_path, monkeypatch):
    """Between looking for the key file and for the database, another process made both:
    this one said the key was missing, inviting the user to wipe their data."""
    from feedback_store import keys
    home = tmp_path / "glance"
    home.mkdir()
    theirs = "ab" * 32

    def the_other_process_meanwhile(*_args, **_kwargs):
        (home / "glance.key").write_text(theirs)
        (home / "glance.db").write_bytes(b"made by the other process")
        return None                            # (and no keyring here)
    monkeypatch.setattr(keys, "_read_keyring", the_other_process_meanwhile)
    assert keys.load_or_create_key(home, home / "glance.db").hex == theirs


def test_a_key_file_is_made_where_the_file_system_has_no_links(tmp_path, monkeypatch):
    """FAT, exFAT and some network mounts refuse hard links: Glance could not start."""
    from feedback_store import keys

    def no_links(*_args):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(keys.os, "link", no_links)
    monkeypatch.setattr(keys, "_write_keyring", lambda *a, **k: False)
    home = tmp_path / "glance"
    home.mkdir()
    key = keys.load_or_create_key(home, home / "glance.db")
    assert [entry.name for entry in home.iterdir()] == ["glance.key"]
    assert (home / "glance.key").read_text() == key.hex and key.storage == "file"
    assert (home / "glance.key").stat().st_mode & 0o777 == 0o600
    assert keys.load_or_create_key(home, home / "glance.db").hex == key.hex


def test_samples_are_flushed_without_being_asked(store):
    store.consent.set("pointer", True)
    assert store.samples.submit([sample_row("c", i) for i in range(50)])
    # No explicit flush: the writer flushes on its own timer (at least once a second).
    deadline = time.monotonic() + 10
    while store.counts()["pointer_samples"] < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.counts()["pointer_samples"] == 50


def test_full_queue_refuses_and_counts(home):
    store = FeedbackStore.open(home, capacity=2)
    store.consent.set("pointer", True)
    started, gate = threading.Event(), threading.Event()
    # Block the writer so the queue fills up: the blocking job is off the queue once it runs.
    blocker = threading.Thread(
        target=lambda: store.writer.call(lambda con: (started.set(), gate.wait())))
    blocker.start()
    assert started.wait(60)
    accepted = sum(store.samples.submit([sample_row("c", i)]) for i in range(10))
    gate.set()
    blocker.join()
    store.flush()
    assert accepted == 2
    assert store.writer.dropped_full == 8
    assert store.counts()["pointer_samples"] == 2
    assert store.status()["dropped_queue_full"] == 8
    store.close()


def test_keyring_is_used_when_it_works(home, monkeypatch):
    import keyring
    from conftest import MemoryKeyring
    backend = MemoryKeyring()
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    try:
        with FeedbackStore.open(home) as store:
            assert store.status()["key_storage"] == "keyring"
        assert not (home / "glance.key").exists()
        assert len(next(iter(backend.secrets.values()))) == 64  # 256 bits, hex
    finally:
        keyring.set_keyring(previous)


def test_key_file_fallback_is_0600(store, home):
    assert store.status()["key_storage"] == "file"
    key_file = home / "glance.key"
    assert (key_file.stat().st_mode & 0o777) == 0o600
    assert len(key_file.read_text().strip()) == 64


def test_sample_columns_keep_nulls_and_values(store):
    store.consent.set("gaze", True)
    store.samples.submit([
        GazeSample(None, None, "c", 5, 6, "raw", None, 2.5, None, "webcam", None),
        GazeSample("s", "r", "c", 7, 8, "fixation", 1.25, -3.0, 42, "webcam", confidence=0.75)])
    store.flush()
    got = store._rows("SELECT session_id, shown_reply_id, mono_ns, x, y, text_offset, confidence "
                      "FROM gaze_samples ORDER BY mono_ns")
    assert got == [
        {"session_id": None, "shown_reply_id": None, "mono_ns": 5, "x": None, "y": 2.5,
         "text_offset": None, "confidence": None},
        {"session_id": "s", "shown_reply_id": "r", "mono_ns": 7, "x": 1.25, "y": -3.0,
         "text_offset": 42, "confidence": 0.75}]
