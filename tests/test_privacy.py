"""Consent, incognito, encryption, deletion, export and no-network, enforced by the store."""
import hashlib
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time

import duckdb
import keyring
import keyring.errors
import pytest

from feedback_store import (
    CONSENT_TEXT_VERSION, Conversation, GazeSample, PointerSample, FeedbackStore, KeyringLocked, Message,
    MissingKey, StoreError, WrongKey,
)
from feedback_store.connection import open_encrypted
from feedback_store.keys import load_or_create_key
from feedback_store.privacy import export_all
from conftest import ROOT, MemoryKeyring, files_contain, quick_settings, run_glance


def rows(conversation_id, n, start=0, wall_ns=None):
    return [PointerSample("s", "r", conversation_id, time.monotonic_ns(), wall_ns or time.time_ns(),
                          "move", float(i), 1.0, i, "qt") for i in range(start, start + n)]


def gaze_rows(conversation_id, n):
    return [GazeSample(*row[:9], source="webcam", confidence=0.9) for row in rows(conversation_id, n)]


def decrypted_copy(home, target):
    """Every row of the database, decrypted into a plain file (for looking inside)."""
    key = load_or_create_key(home, home / "glance.db")
    con = open_encrypted(home / "glance.db", key.hex, read_only=True)
    con.execute("SET force_compression='uncompressed'")
    con.execute(f"ATTACH '{target}' AS plain")
    con.execute("COPY FROM DATABASE glance TO plain")
    con.execute("DETACH plain")
    con.close()
    return target.read_bytes()


def audited_hits(home, marker: str) -> list:
    """Where ``marker`` is in the plaintext of any block of the data folder's database
    files (the byte-level audit, under the key in force: the 0600 file in tests)."""
    from feedback_store import audit
    key = (home / "glance.key").read_text().strip()
    return audit.find_marker(audit.decrypt_database_files(home, key), marker)


def test_no_network_in_tests():
    from pytest_socket import SocketBlockedError
    with pytest.raises(SocketBlockedError):
        socket.create_connection(("192.0.2.1", 9))
    with pytest.raises(SocketBlockedError):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def test_samples_need_consent_and_are_counted_by_reason(store):
    assert store.samples.submit(rows("c1", 5)) is False
    assert store.samples.submit(gaze_rows("c1", 3)) is False
    store.consent.set("pointer", True)
    assert store.samples.submit(rows("c1", 4))
    store.consent.set_paused(True)
    assert store.samples.submit(rows("c1", 2)) is False
    store.consent.set_paused(False)
    store.consent.set("pointer", False)
    assert store.samples.submit(rows("c1", 1)) is False
    store.flush()
    assert store.counts()["pointer_samples"] == 4
    assert store.counts()["gaze_samples"] == 0
    assert store.consent.refused == {"no_consent:pointer": 6, "no_consent:gaze": 3, "paused": 2}


def test_incognito_samples_and_messages_are_refused(service, store, home):
    from feedback_store import audit
    store.consent.set("pointer", True)
    tree = service.new_conversation(incognito=True)
    assert store.samples.submit(rows(tree.id, 7) + rows("other", 2))
    store.flush()
    assert store.counts()["pointer_samples"] == 2
    assert store.consent.refused["incognito"] == 7
    assert store.samples.record_shown_reply(session_id=None, message_id="m", conversation_id=tree.id,
                                    geometry=(0, 0, 1, 1), device_pixel_ratio=1.0,
                                    rendered_text="x", layout=[]) is None
    service.set_settings(tree, quick_settings())
    service.send(tree, "INCOGNITO-MARKER-6610 hello")
    assert len(tree.messages) == 2                       # the chat happened, in memory only
    store.flush()
    assert store.counts()["messages"] == 0 and store.counts()["conversations"] == 0
    key = (home / "glance.key").read_text().strip()
    assert audit.find_marker(audit.decrypt_database_files(home, key), "INCOGNITO-MARKER-6610") == []


def test_decisions_carry_time_and_text_version_and_expire_with_the_text(home):
    with FeedbackStore.open(home) as store:
        assert store.consent.needed()
        before = time.time_ns()
        for signal in ("pointer", "gaze", "personalise"):
            store.consent.set(signal, signal == "pointer")
        after = time.time_ns()
        assert not store.consent.needed()
        decision = store.consent.decisions()["pointer"]
        assert decision["on"] and decision["text_version"] == CONSENT_TEXT_VERSION
        assert before <= decision["at"] <= after
        # A decision made under an older consent text no longer counts.
        store._write("INSERT INTO consents SELECT 'pointer', true, ?, ?, max(seq) + 1 FROM consents",
                     (time.time_ns(), CONSENT_TEXT_VERSION - 1))
    with FeedbackStore.open(home) as store:
        assert store.consent.needed()
        assert not store.consent.is_on("pointer")


def test_marker_is_not_in_any_raw_file(service, store, home):
    tree = service.new_conversation()
    service.set_settings(tree, quick_settings())
    service.send(tree, "MARKER-PLAINTEXT-7731 please repeat MARKER-PLAINTEXT-7731")
    store.flush()
    assert files_contain(home, b"MARKER-PLAINTEXT-7731") == []  # while open (WAL)
    store.close()
    assert files_contain(home, b"MARKER-PLAINTEXT-7731") == []
    # Control: the same look finds the marker once the rows are decrypted.
    assert b"MARKER-PLAINTEXT-7731" in decrypted_copy(home, home.parent / "plain.db")


def test_deleting_a_conversation_leaves_no_trace_after_compaction(service, store, home):
    doomed = service.new_conversation()
    service.set_settings(doomed, quick_settings())
    service.send(doomed, "DOOMED-MARKER-5521 tell me a secret")
    kept = service.new_conversation()
    service.set_settings(kept, quick_settings())
    service.send(kept, "KEPT-MARKER-1234 hello")
    store.consent.set("pointer", True)
    store.samples.submit(rows(doomed.id, 100) + rows(kept.id, 10))
    store.flush()
    # Every block of every file, decrypted: a copy of the live rows would not show the
    # deleted rows a DELETE leaves in the file until compaction rewrites it.
    assert audited_hits(home, "DOOMED-MARKER-5521")       # control: seen before the delete
    key_before = (home / "glance.key").read_bytes()
    store.delete_conversation(doomed.id)  # deletes, then rewrites the file under a new key
    assert store.counts()["pointer_samples"] == 10
    store.close()
    assert (home / "glance.key").read_bytes() != key_before
    assert audited_hits(home, "DOOMED-MARKER-5521") == []
    assert audited_hits(home, "KEPT-MARKER-1234")          # control: the audit sees text
    assert files_contain(home, b"DOOMED-MARKER-5521") == []


def test_deleting_while_samples_stream_in_loses_nothing_else(store):
    """Samples queued on every side of a deletion, in a fixed order (the writer held by a
    gate, no sleeps): those let in at the door before it, queued before it or after it,
    are dropped by the writer's last look (the deletion is known from its start), later
    ones are refused at the door, and the other conversation's all stay."""
    from feedback_store.samples import SAMPLE_COLUMNS
    store.consent.set("pointer", True)
    started, gate = threading.Event(), threading.Event()
    blocker = threading.Thread(target=lambda: store.writer.call(lambda con: (started.set(), gate.wait())))
    blocker.start()
    deleter = threading.Thread(target=store.delete_conversation, args=("doomed",))
    try:
        assert started.wait(60)
        assert store.samples.submit(rows("doomed", 10)) and store.samples.submit(rows("kept", 10))
        queued = store.writer.queue.qsize()
        deleter.start()
        deadline = time.monotonic() + 60
        while store.writer.queue.qsize() == queued and time.monotonic() < deadline:
            time.sleep(0.001)               # until the deletion is queued behind the gate
        assert store.writer.queue.qsize() == queued + 1
        # Let in at the door before the deletion was known, queued after it (the race the
        # writer's last look is for), then refused at the door.
        store.writer.submit_samples("pointer_samples", SAMPLE_COLUMNS["pointer_samples"],
                                    rows("doomed", 7, start=10))
        assert store.samples.submit(rows("doomed", 5, start=20)) is False
        assert store.samples.submit(rows("kept", 10, start=10))
    finally:
        gate.set()                          # (a failure above must not leave the writer held)
        blocker.join(60)
        if deleter.ident is not None:
            deleter.join(60)
    store.flush()
    counted = {
        r["conversation_id"]: r["n"] for r in
        store._rows("SELECT conversation_id, count(*) AS n FROM pointer_samples GROUP BY ALL")}
    assert counted == {"kept": 20}
    assert store.consent.refused["deleted"] == 10 + 7 + 5


def test_samples_and_scores_let_in_just_before_a_deletion_do_not_outlive_it(store):
    """The door (admit) and the queue are two steps: a recorder or the scorer may pass
    the door, then the conversation is deleted (its deletion queued), then its rows reach
    the queue behind the deletion. They were written after it and outlived it."""
    store.consent.set("pointer", True)
    store.consent.set("personalise", True)
    admitted = rows("doomed", 5)                    # passed the door ...
    store.delete_conversation("doomed", compact=False)
    # ... and reach the queue behind the deletion
    from feedback_store.samples import SAMPLE_COLUMNS
    store.writer.submit_samples("pointer_samples", SAMPLE_COLUMNS["pointer_samples"], admitted)
    store.samples.admit = lambda signal, rows: rows      # the scorer passed the door before it
    store.scores.record("shown", "message", "doomed", None, "m", "pointwise", 0.7, [])
    store.flush()
    assert store.counts()["pointer_samples"] == 0 and store.counts()["reply_scores"] == 0
    assert store.consent.refused["deleted"] == 5 + 1          # the score is counted too


def test_wrong_key_is_refused_and_database_untouched(home):
    FeedbackStore.open(home).close()
    database = home / "glance.db"
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    (home / "glance.key").write_text("00" * 32)
    with pytest.raises(WrongKey, match="does not open"):
        FeedbackStore.open(home)
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before


def test_missing_key_is_refused_never_replaced(home):
    FeedbackStore.open(home).close()
    database = home / "glance.db"
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    (home / "glance.key").unlink()
    with pytest.raises(MissingKey, match="reset"):
        FeedbackStore.open(home)
    assert not (home / "glance.key").exists()
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before


def test_a_keyring_out_of_reach_is_not_called_a_lost_key(home):
    """Over ssh, from cron or before login the keyring cannot be asked: that was reported
    as a missing key, with the advice to reset (delete all data whose key was safe)."""
    import keyring.backends.fail
    from feedback_store import KeyringUnavailable
    previous = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    try:
        FeedbackStore.open(home).close()
        assert not (home / "glance.key").exists()         # the key is in the keyring
        database = home / "glance.db"
        before = hashlib.sha256(database.read_bytes()).hexdigest()
        keyring.set_keyring(keyring.backends.fail.Keyring())
        with pytest.raises(KeyringUnavailable) as raised:
            FeedbackStore.open(home)
        assert "not lost" in str(raised.value) and "delete" not in str(raised.value)
        assert hashlib.sha256(database.read_bytes()).hexdigest() == before
        assert not (home / "glance.key").exists()
    finally:
        keyring.set_keyring(previous)


def test_locked_keyring_is_a_clear_error(home):
    class LockedKeyring(MemoryKeyring):
        def get_password(self, service, username):
            raise keyring.errors.KeyringLocked("locked")
    previous = keyring.get_keyring()
    keyring.set_keyring(LockedKeyring())
    try:
        with pytest.raises(KeyringLocked, match="Unlock"):
            FeedbackStore.open(home)
        assert not (home / "glance.db").exists()
    finally:
        keyring.set_keyring(previous)


def test_delete_everything_with_the_keyring_locked_deletes_nothing_and_says_so(home):
    """The keyring's refusal was passed over: the folder went, the key stayed in the
    keyring, and a backup of the database still opened with it, without a word."""
    from feedback_store import KeyringKeepsKey
    from feedback_store.privacy import delete_everything

    class LockedKeyring(MemoryKeyring):
        locked = False

        def delete_password(self, service, username):
            if self.locked:
                raise keyring.errors.KeyringLocked("the user dismissed the unlock prompt")
            super().delete_password(service, username)
    previous, unlocking = keyring.get_keyring(), LockedKeyring()
    keyring.set_keyring(unlocking)
    try:
        store = FeedbackStore.open(home)
        assert unlocking.secrets and not (home / "glance.key").exists()   # the key is in the keyring
        before = sorted(p.name for p in home.iterdir())
        unlocking.locked = True
        with pytest.raises(KeyringKeepsKey, match="Nothing was deleted"):
            delete_everything(home, store)
        assert sorted(p.name for p in home.iterdir()) == before and unlocking.secrets
        unlocking.locked = False
        assert delete_everything(home) == [] and list(home.iterdir()) == []
        assert not unlocking.secrets
    finally:
        keyring.set_keyring(previous)


def test_a_consent_withdrawn_after_the_clock_was_set_back_stays_withdrawn(home, monkeypatch):
    """The newest decision was the one with the latest wall-clock time: set back an hour
    (a time correction, a dual-boot clock), a "pointer off" sorted before the "on" it
    replaced, and after a restart the pointer was recorded again."""
    import time as real_time
    with FeedbackStore.open(home) as store:
        store.consent.set("pointer", True)
        hour_ago = real_time.time_ns() - 3600 * 10**9
        monkeypatch.setattr("feedback_store.consent.time.time_ns", lambda: hour_ago)
        store.consent.set("pointer", False)
        monkeypatch.undo()
        store.consent.set("gaze", True)
        assert not store.consent.is_on("pointer")
    with FeedbackStore.open(home) as store:
        assert not store.consent.is_on("pointer") and store.consent.is_on("gaze")
        assert store.consent.decisions()["pointer"]["at"] == hour_ago     # as it was made
        assert store.samples.submit(rows("c", 1)) is False


def test_export_writes_parquet_and_manifest(service, store, tmp_path):
    tree = service.new_conversation()
    service.set_settings(tree, quick_settings())
    service.send(tree, "export me")
    folder = export_all(store, tmp_path / "out")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["tables"]["messages"]["rows"] == 2
    contents = duckdb.sql(f"SELECT content FROM '{folder / 'messages.parquet'}' ORDER BY created_wall_ns").fetchall()
    assert contents[0][0] == "export me"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".glance-export")]


def test_export_to_unwritable_folder_leaves_nothing(store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    blocker = out / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="Cannot export"):
        export_all(store, blocker / "inside")
    with pytest.raises(StoreError, match="it is a file, not a folder"):
        export_all(store, blocker)
    assert list(out.iterdir()) == [blocker] and blocker.read_text() == "x"


def test_export_into_the_data_folder_is_refused(store):
    """An export there is plaintext beside the encrypted database, and made "delete
    everything" take the folder for one shared with the user's files: it stayed."""
    store.flush()    # (the retention queued at opening writes glance.db.wal whenever it runs)
    before = sorted(p.name for p in store.data_dir.iterdir())
    for inside in (store.data_dir, store.data_dir / "exports", store.data_dir / "cache" / ".." / "x"):
        with pytest.raises(StoreError, match="Cannot export into Glance's data folder"):
            export_all(store, inside)
    assert sorted(p.name for p in store.data_dir.iterdir()) == before


def test_export_to_a_full_disk_leaves_no_partial_export(home, tmp_path):
    with FeedbackStore.open(home) as store:
        store.consent.set("pointer", True)
        store.samples.submit(rows("c", 20000))
    destination = tmp_path / "full"
    destination.mkdir()
    # RLIMIT_FSIZE makes every write past 64 KiB fail with EFBIG, as a full disk would.
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from feedback_store import FeedbackStore, StoreError
        from feedback_store.privacy import export_all
        store = FeedbackStore.open({str(home)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        try:
            export_all(store, {str(destination)!r})
        except StoreError as error:
            print("REFUSED", error)
        import os; os._exit(0)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert "REFUSED" in result.stdout, result.stdout + result.stderr
    assert "nothing was left" in result.stdout
    assert list(destination.iterdir()) == []


def test_delete_everything_on_a_full_disk_deletes_everything(home):
    """Closing the store first saved its last rows and checkpointed: on a full disk that
    failed, and nothing was deleted (the panel only printed the error). The files are
    about to go: nothing more is written to them."""
    script = textwrap.dedent(f"""
        import os, resource, signal
        from feedback_store import Conversation, FeedbackStore, Message
        from feedback_store.privacy import delete_everything
        store = FeedbackStore.open({str(home)!r})
        store.conversations.create(Conversation(title="chat", id="c1"))
        for j in range(200):
            store.conversations.add_message(Message("c1", "user", "SECRET " + "x" * 2000))
        # No file may grow past its size now, as on a full disk: the checkpoint fails.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        largest = max(entry.stat().st_size for entry in os.scandir({str(home)!r}) if entry.is_file())
        resource.setrlimit(resource.RLIMIT_FSIZE, (largest, largest))
        print("KEPT", delete_everything({str(home)!r}, store))
        os._exit(0)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert "KEPT []" in result.stdout, result.stdout + result.stderr
    assert list(home.iterdir()) == []


def test_an_export_stopped_half_way_leaves_no_plain_copy(store, tmp_path):
    """Ctrl-C during an export left its hidden staging folder, with plain copies of the
    tables written so far; one left by a killed export stayed for good."""
    store.conversations.add_message(Message(conversation_id="c", role="user",
                                            content="EXPORT-MARKER-4471"))
    destination = tmp_path / "exports"

    def interrupted(done, total):
        raise KeyboardInterrupt                      # what Ctrl-C raises, after a table
    with pytest.raises(KeyboardInterrupt):
        export_all(store, destination, progress=interrupted)
    assert list(destination.iterdir()) == []
    # Ctrl-C during a table's query comes as DuckDB's "Query interrupted": it was "failed
    # ... free some space", exit 2.
    def during_a_query(done, total):
        raise RuntimeError("Query interrupted")
    with pytest.raises(RuntimeError, match="Query interrupted"):
        export_all(store, destination, progress=during_a_query)
    assert list(destination.iterdir()) == []
    killed = destination / ".glance-export-k1ll3d"    # as a kill leaves it
    killed.mkdir()
    (killed / "messages.parquet").write_text("EXPORT-MARKER-4471")
    done = export_all(store, destination)
    assert list(destination.iterdir()) == [done]


def test_retention_removes_old_signals_only(service, store):
    store.consent.set("pointer", True)
    old = time.time_ns() - 100 * 86_400 * 10**9
    store.samples.submit(rows("c", 5, wall_ns=old) + rows("c", 3))
    tree = service.new_conversation()
    service.set_settings(tree, quick_settings())
    service.send(tree, "keep my chat")
    store.flush()
    assert store.settings.retention_days == 90
    assert store.apply_retention() == 5
    assert store.counts()["pointer_samples"] == 3
    assert store.counts()["messages"] == 2
    store.samples.submit(rows("c", 2, wall_ns=time.time_ns() - 2 * 86_400 * 10**9))
    store.flush()
    assert store.apply_retention() == 0                 # two days old: kept for 90
    store.settings.set_retention_days(1)
    assert store.apply_retention() == 2                 # the new period applies at once
    assert store.counts()["pointer_samples"] == 3


def test_retention_empties_every_reading_signal_table(store):
    """Only pointer samples were made old anywhere: gaze, what was on screen, actions and
    scores could have been kept for ever unnoticed."""
    from feedback_store import ReplyAction, ViewportEvent, tables
    for signal in ("pointer", "gaze", "personalise"):
        store.consent.set(signal, True)
    store.conversations.create(Conversation(title="kept", id="c"))
    store.conversations.add_message(Message(conversation_id="c", role="user", content="x"))
    session = store.samples.start_session("test")
    shown = store.samples.record_shown_reply(session_id=session, message_id="m", conversation_id="c",
                                             geometry=(0, 0, 1, 1), device_pixel_ratio=1.0,
                                             rendered_text="t", layout=[])
    store.samples.submit(rows("c", 3))
    store.samples.submit(gaze_rows("c", 2))
    store.samples.submit([ViewportEvent(session, shown, "c", 1, time.time_ns(), "scroll", 0, 3)])
    store.samples.submit([ReplyAction(session, shown, "c", "m", 1, time.time_ns(), "copy", 0, 5)])
    assert store.scores.record(shown, "m", "c", None, "v1", "pointwise", 0.6, [])
    store.flush()
    signal_tables = [t.name for t in tables.TABLES if t.owner in ("samples", "scores")]
    assert all(store.counts()[name] > 0 for name in signal_tables), store.counts()
    store.apply_retention(now_wall_ns=time.time_ns() + (store.settings.retention_days + 1) * 86_400 * 10**9)
    counts = store.counts()
    assert {name: counts[name] for name in signal_tables} == dict.fromkeys(signal_tables, 0)
    assert counts["conversations"] == 1 and counts["messages"] == 1


def test_a_session_longer_than_the_retention_period_stays_listed_while_its_samples_do(store):
    """A session's row expired by its start: with the app open for days, its newer
    samples stayed while the privacy panel's table, which lists samples by session, no
    longer showed them."""
    day = 86_400 * 10**9
    store.settings.set_retention_days(7)
    store.consent.set("pointer", True)
    session = store.samples.start_session("test")
    now = time.time_ns()
    store.samples.submit([PointerSample(session, None, "c", d, now + d * day, "move", 1.0, 1.0)
                          for d in range(3, 10)])                  # days 3 to 9 of the session
    store.flush()
    assert store.apply_retention(now_wall_ns=now + 9 * day) == 0    # day 9: nothing is 7 days old
    assert [(row["id"], row["pointer"]) for row in store.samples.session_summary()] == [(session, 7)]
    assert store.apply_retention(now_wall_ns=now + 13 * day) == 3   # days 3 to 5 go
    assert [(row["id"], row["pointer"]) for row in store.samples.session_summary()] == [(session, 4)]
    assert store.apply_retention(now_wall_ns=now + 30 * day) == 5   # the rest, and the session
    assert store.samples.session_summary() == []


def test_expired_text_is_gone_from_the_file_not_only_from_the_tables(store, home):
    """DuckDB leaves deleted rows readable in live and freed blocks: expiry deleted the
    rows, but the text of a reply shown long ago stayed in the file, readable with the
    key, until some conversation was deleted. Now the store compacts when it closes after a
    retention pass that expired rows."""
    store.consent.set("pointer", True)
    long_ago = time.time_ns() - 100 * 86_400 * 10**9
    for marker, wall_ns in (("EXPIRED-MARKER-8812", long_ago), ("RECENT-MARKER-3390", None)):
        shown = store.samples.record_shown_reply(
            session_id="s", message_id=marker, conversation_id="c", geometry=(0, 0, 10, 10),
            device_pixel_ratio=1.0, rendered_text=marker + " the reply as shown", layout=[])
        if wall_ns:
            store._write("UPDATE shown_replies SET shown_wall_ns = ? WHERE id = ?", (wall_ns, shown))
    store.flush()
    store.compact()                                 # both markers in one file's blocks
    store._write("CHECKPOINT")
    assert store.apply_retention() == 1
    store.close()                                   # compacts: rows expired in this session
    plain = decrypted_copy(home, home.parent / "plain.db")
    assert b"RECENT-MARKER-3390" in plain            # control: the look sees markers
    assert b"EXPIRED-MARKER-8812" not in plain
    # Every block of the file decrypted, free ones included (feedback_store/audit.py):
    from feedback_store.audit import decrypt_database_files
    key = load_or_create_key(home, home / "glance.db")
    blocks = decrypt_database_files(home, key.hex)
    assert any(b"RECENT-MARKER-3390" in block.plaintext for block in blocks)
    assert not any(b"EXPIRED-MARKER-8812" in block.plaintext for block in blocks)


def test_rows_expired_by_a_session_that_was_killed_are_compacted_by_the_next(home):
    """The compaction owed to expired rows was remembered only in memory: a window killed
    before it closed (logout, a crash) left the expired text in the file for good, as
    the next day's retention pass found nothing more to delete."""
    script = textwrap.dedent(f"""
        import os, time
        from feedback_store import FeedbackStore
        store = FeedbackStore.open({str(home)!r})
        store.consent.set("pointer", True)
        shown = store.samples.record_shown_reply(
            session_id="s", message_id="EXPIRED-MARKER-5120", conversation_id="c",
            geometry=(0, 0, 10, 10), device_pixel_ratio=1.0,
            rendered_text="EXPIRED-MARKER-5120 the reply as shown", layout=[])
        store._write("UPDATE shown_replies SET shown_wall_ns = ? WHERE id = ?",
                     (time.time_ns() - 100 * 86_400 * 10**9, shown))
        store.flush()
        store.compact()
        store._write("CHECKPOINT")
        assert store.apply_retention() == 1
        os._exit(0)                                 # killed: no close
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=120)
    from feedback_store.audit import decrypt_database_files
    key = load_or_create_key(home, home / "glance.db")
    assert any(b"EXPIRED-MARKER-5120" in block.plaintext      # control: still readable
               for block in decrypt_database_files(home, key.hex))
    FeedbackStore.open(home).close()                # the next session's close compacts
    key = load_or_create_key(home, home / "glance.db")
    assert not any(b"EXPIRED-MARKER-5120" in block.plaintext
                   for block in decrypt_database_files(home, key.hex))
    with FeedbackStore.open(home) as store:         # and owes nothing more
        assert store._compaction_owed is False


def test_cli_data_and_consent_commands(home, tmp_path):
    assert run_glance("consent", "set", "pointer", "on", home=home).returncode == 0
    bad = run_glance("consent", "set", "telepathy", "on", home=home)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    chat = run_glance("chat", "--prompt", "CLI-MARKER-889 hi", "--max-tokens", "8", "--json", home=home)
    conversation = json.loads(chat.stdout.strip().splitlines()[-1])["conversation_id"]
    status = json.loads(run_glance("data", "status", "--json", home=home).stdout)
    assert {"encryption", "key_storage", "consents", "counts", "bytes", "data_dir"} <= set(status)
    assert status["encryption"] is True and status["key_storage"] == "file"
    assert status["consents"]["pointer"]["on"] is True
    assert status["consents"]["pointer"]["text_version"] == CONSENT_TEXT_VERSION
    assert status["consents"]["gaze"] is None
    assert status["counts"]["messages"] == 2 and "glance.db" in status["bytes"]
    exported = run_glance("data", "export", str(tmp_path / "export"), home=home)
    assert exported.returncode == 0 and (tmp_path / "export").exists()
    assert audited_hits(home, "CLI-MARKER-889")             # control: seen before the delete
    deleted = run_glance("data", "delete", "--conversation", conversation, home=home)
    assert deleted.returncode == 0, deleted.stderr
    assert audited_hits(home, "CLI-MARKER-889") == []      # compacted, not only deleted
    assert files_contain(home, b"CLI-MARKER-889") == []
    assert json.loads(run_glance("data", "status", "--json", home=home).stdout)["counts"]["messages"] == 0
    refused = run_glance("data", "delete", "--all", home=home)
    assert refused.returncode == 2 and (home / "glance.db").exists()
    (home / "adapters").mkdir()
    (home / "adapters" / "lora.gguf").write_bytes(b"x")
    wiped = run_glance("data", "delete", "--all", "--yes", home=home)
    assert wiped.returncode == 0
    assert list(home.iterdir()) == []


def test_ctrl_c_during_a_conversation_delete_finishes_it_and_says_so(home):
    """Ctrl-C during `glance data delete --conversation` ended the command with exit 130
    and no word, though the rows were gone and the file rewritten: the user could not
    tell whether the conversation was deleted."""
    import os
    import signal
    from feedback_store.conversations import Conversation
    with FeedbackStore.open(home) as store:
        doomed = store.conversations.create(Conversation(title="DOOMED-MARKER-4471")).id
        # Bulk, so the rewrite under a new key takes a while (any table is rewritten).
        store.writer.call(lambda con: con.execute(
            "CREATE TABLE filler AS SELECT range AS i, md5(range::varchar) AS s FROM range(1000000)"))
    delete = subprocess.Popen([sys.executable, "-m", "app.cli", "data", "delete", "--conversation", doomed],
                              cwd=ROOT, env=dict(os.environ, GLANCE_HOME=str(home)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The file's rewrite under a new key has begun: the rows are gone, the deletion is
    # under way (a Ctrl-C before it, while the store opened, stops with nothing deleted).
    while delete.poll() is None and not (home / "glance.compact.db").exists():
        time.sleep(0.002)
    delete.send_signal(signal.SIGINT)
    out, err = delete.communicate(timeout=120)
    assert delete.returncode == 0, err
    assert "finishing the deletion first" in err and f"Deleted conversation {doomed}" in out
    with FeedbackStore.open(home) as store:
        assert store.conversations.get(doomed) is None and store._compaction_owed is False
    assert audited_hits(home, "DOOMED-MARKER-4471") == []     # erased from the file, too


def test_what_was_on_screen_is_not_recorded_while_collection_is_paused(store):
    """Paused, the window still recorded each reply shown, when, and (at its hiding) for
    how long: "Pause all collection" had left that out."""
    def show(message_id):
        return store.samples.record_shown_reply(
            session_id="s", message_id=message_id, conversation_id="c",
            geometry=(0, 0, 10, 10), device_pixel_ratio=1.0, rendered_text="a reply", layout=[])
    store.consent.set_paused(True)
    assert show("while-paused") is None
    store.consent.set_paused(False)
    assert show("after") is not None
    store.flush()
    assert [r["message_id"] for r in store._rows("SELECT message_id FROM shown_replies")] == ["after"]
