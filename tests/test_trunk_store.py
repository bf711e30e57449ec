"""The store's trunk guarantees: the table registry covers the schema, the writer
survives bad input, status reads the truth, compaction rotates the key and survives a
kill after every step, paths with quotes work."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from feedback_store import (Conversation, FeedbackStore, GazeSample, MalformedSample, Message,
                            PointerSample, ReplyAction, ViewportEvent, tables)
from feedback_store.compaction import STEPS
from conftest import ROOT, run_glance


def pointer(conversation_id="c", i=0, **fields):
    return PointerSample("s", "r", conversation_id, time.monotonic_ns(), time.time_ns(), "move",
                         float(i), 1.0, i, "qt", **fields)


def schema_tables(store) -> set[str]:
    return {row["table_name"] for row in store._rows(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'glance'")}


def test_every_table_in_the_schema_is_declared_once(store):
    declared = [t.name for t in tables.TABLES]
    assert len(declared) == len(set(declared))
    assert schema_tables(store) == set(declared)
    # Conversation-scoped tables really carry the column deletion uses.
    for table in tables.in_scope("conversation"):
        columns = {row["column_name"] for row in store._rows(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
            (table.name,))}
        assert ("id" if table.name == "conversations" else table.key_column) in columns
    for table in tables.expiring_tables():
        columns = {row["column_name"] for row in store._rows(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
            (table.name,))}
        assert table.expires_on in columns


def test_delete_counts_and_export_follow_the_registry(store, tmp_path):
    """A conversation's rows in every conversation-scoped table go with it."""
    store.consent.set("pointer", True)
    store.consent.set("gaze", True)
    store.consent.set("personalise", True)
    for name in ("doomed", "kept"):
        store.conversations.create(Conversation(title=name, id=name))
        store.conversations.add_message(Message(conversation_id=name, role="user", content="x"))
        store.conversations.set_thumb(name, "m", 1)
        store.samples.record_shown_reply(session_id="s", message_id="m", conversation_id=name,
                                         geometry=(0, 0, 1, 1), device_pixel_ratio=1.0,
                                         rendered_text="t", layout=[])
        store.samples.submit([pointer(name, i) for i in range(3)])
        store.samples.submit([GazeSample("s", "r", name, 1, 2, "raw", 1.0, 2.0)])
        store.samples.submit([ViewportEvent("s", "r", name, 1, 2, "scroll", 0, 3)])
        store.samples.submit([ReplyAction("s", "r", name, "m", 1, 2, "copy", 0, 5)])
        assert store.scores.record("r", "m", name, None, "v1", "pointwise", 0.6, [("x", 0.1)])
        store.training.finish_run(f"run-{name}", {"status": "published", "pairs_used": [{
            "conversation_id": name, "chosen_message_id": "m", "rejected_message_id": "n",
            "source": "thumbs", "epsilon": 0.1, "split": "train"}]})
    store.flush()
    store.delete_conversation("doomed", compact=False)
    for table in tables.in_scope("conversation"):
        column = "id" if table.name == "conversations" else table.key_column
        left = store._rows(f"SELECT {column} AS c FROM {table.name}")
        assert left and {row["c"] for row in left} == {"kept"}, table.name
    assert set(store.counts()) == {t.name for t in tables.counted_tables()}
    from feedback_store.privacy import export_all
    folder = export_all(store, tmp_path / "export")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["tables"]) == {t.name for t in tables.exported_tables()}
    counts = store.counts()
    for table in tables.TABLES:       # all of the user's data is exported, every row (only
        if table.scope not in ("research", "internal"):    # research data and bookkeeping stay)
            assert manifest["tables"][table.name]["rows"] == counts[table.name], table.name


def test_a_malformed_row_costs_only_itself_and_the_writer_keeps_going(store):
    store.consent.set("pointer", True)
    with pytest.raises(MalformedSample):   # not a sample at all: refused at the door
        store.samples.submit([pointer(), ("a", "plain", "tuple")])
    # A bad value inside a sample fails the batch insert; the writer keeps the good rows.
    assert store.samples.submit([pointer("c", 1), pointer("c", 2)._replace(x="not a number"),
                                 pointer("c", 3)._replace(mono_ns=2**70)])
    # A job that raises inside the writer thread (not a DuckDB error) is counted too.
    store.writer.post(lambda con: 1 / 0)
    store.samples.submit([pointer("c", i) for i in range(10, 15)])
    store.conversations.create(Conversation(title="after", id="after"))
    store.conversations.add_message(Message(conversation_id="after", role="user", content="ok"))
    store.flush()
    assert store.writer.is_alive()
    assert [m.content for m in store.conversations.messages("after")] == ["ok"]
    assert sorted(r["x"] for r in store._rows("SELECT x FROM pointer_samples")) == \
        [1.0, 10.0, 11.0, 12.0, 13.0, 14.0]
    assert store.writer.failed_rows["pointer_samples"] == 2
    status = store.status()
    assert status["writer_failures"] >= 2
    assert "ZeroDivisionError" in status["writer_error"]


def store_columns():
    from feedback_store.samples import SAMPLE_COLUMNS
    return SAMPLE_COLUMNS["pointer_samples"]


def test_a_call_on_a_stopped_writer_raises_instead_of_waiting(home):
    from feedback_store.writer import WriterStopped
    store = FeedbackStore.open(home)
    store.writer.close()
    with pytest.raises(WriterStopped):
        store.conversations.create(Conversation(title="late"))
    store._con.close()


def test_samples_given_while_the_writer_closes_are_refused_not_lost(home):
    """The queue took samples after the writer's stop: submit said True and they were
    never written."""
    import threading
    store = FeedbackStore.open(home)
    store.consent.set("pointer", True)
    # The writer held by a call, so its close is under way but not over (after it, the
    # stopped thread alone refuses them).
    started, gate = threading.Event(), threading.Event()
    holder = threading.Thread(target=lambda: store.writer.call(lambda con: (started.set(), gate.wait())))
    holder.start()
    assert started.wait(60)
    closer = threading.Thread(target=store.writer.close)
    try:
        closer.start()
        deadline = time.monotonic() + 60
        while not store.writer._stopping and time.monotonic() < deadline:
            time.sleep(0.001)
        assert store.writer.is_alive()                  # really while it closes
        assert store.samples.submit([pointer() for _ in range(3)]) is False
        assert store.consent.refused["closed"] == 3
    finally:
        gate.set()
        holder.join(60)
        closer.join(60)
    assert store.writer.queue.qsize() == 0
    store._con.close()


def test_refusals_are_saved_while_every_sample_is_refused(home):
    """The counts were saved after a flush of samples: with a consent off none is ever
    buffered, so they waited in memory until the store closed, and a kill lost them."""
    store = FeedbackStore.open(home)
    assert store.samples.submit([pointer() for _ in range(5)]) is False     # no consent
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not store._rows("SELECT * FROM refusals"):
        time.sleep(0.05)
    assert store._rows("SELECT reason, rows FROM refusals") == [
        {"reason": "no_consent:pointer", "rows": 5}]
    store.close()


def test_status_reads_encryption_and_schema_version_from_the_file(store, tmp_path):
    import duckdb
    from feedback_store import migrations
    from feedback_store.keys import DatabaseKey
    status = store.status()
    assert status["encryption"] is True
    assert status["schema_version"] == migrations.LATEST_VERSION
    row = store._rows("SELECT max(version) AS v FROM schema_migrations")[0]
    assert status["schema_version"] == row["v"]
    # ... from the file: a plain one (the store refuses to open one itself) says False.
    con = duckdb.connect(":memory:")
    con.execute(f"ATTACH '{tmp_path / 'plain.db'}' AS glance")
    con.execute("USE glance")
    migrations.migrate(con)
    plain = FeedbackStore(tmp_path, con, DatabaseKey("00" * 32, "file"), 16)
    try:
        assert plain.encrypted() is False and plain.status()["encryption"] is False
    finally:
        plain.close(save=False)


def test_refusals_persist_and_another_process_sees_them(home):
    with FeedbackStore.open(home) as store:
        store.consent.set("pointer", False)
        store.consent.set_paused(False)
        assert store.samples.submit([pointer() for _ in range(7)]) is False
        store.conversations._incognito.add("secret")
        store.consent.set("pointer", True)
        store.samples.submit([pointer("secret") for _ in range(3)])
    status = json.loads(run_glance("data", "status", "--json", home=home).stdout)
    assert status["refused"] == {"no_consent:pointer": 7, "incognito": 3}


def test_a_data_folder_with_an_apostrophe_works(tmp_path):
    home = tmp_path / "Ann's data"
    with FeedbackStore.open(home) as store:
        store.conversations.create(Conversation(title="quoted", id="q"))
        store.delete_conversation("q")          # compaction attaches a path
        from feedback_store.privacy import export_all
        export_all(store, tmp_path / "O'Brien export")
    with FeedbackStore.open(home) as store:
        assert store.conversations.list() == []


def test_compaction_rotates_the_key_and_destroys_the_old_one(home, tmp_path):
    with FeedbackStore.open(home) as store:
        store.conversations.create(Conversation(title="x", id="x"))
        old_key = (home / "glance.key").read_text()
        # A second name for the key file's blocks: what an undelete tool would find.
        left_behind = tmp_path / "same-inode"
        os.link(home / "glance.key", left_behind)
        store.delete_conversation("x")
        assert left_behind.read_text() != old_key and len(left_behind.read_bytes()) >= len(old_key)
        new_key = (home / "glance.key").read_text()
        assert new_key != old_key
        assert not (home / "glance.key.next").exists()
        store.conversations.create(Conversation(title="after compaction", id="y"))
    from feedback_store.connection import open_encrypted
    from feedback_store.errors import WrongKey
    with pytest.raises(WrongKey):
        open_encrypted(home / "glance.db", old_key, read_only=True)
    with FeedbackStore.open(home) as store:
        assert [c.id for c in store.conversations.list()] == ["y"]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from feedback_store import FeedbackStore, compaction
    step = sys.argv[2]
    def after(name):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)
    compaction._after_step = after
    store = FeedbackStore.open(sys.argv[1])
    from feedback_store import Conversation, Message
    store.conversations.create(Conversation(title="long", id="long"))
    for i in range(50):       # written by this process: the copy then keeps a write-ahead log
        store.conversations.add_message(Message(conversation_id="long", role="user",
                                                content=f"line {i} " + "x" * 200))
    store.delete_conversation("doomed")
""")


@pytest.mark.parametrize("step", STEPS)
def test_a_kill_after_any_compaction_step_leaves_a_database_that_opens(home, step):
    with FeedbackStore.open(home) as store:
        for name in ("doomed", "kept"):
            store.conversations.create(Conversation(title=name, id=name))
            store.conversations.add_message(Message(conversation_id=name, role="user",
                                                    content=f"{name} text"))
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(home), step], cwd=ROOT,
                            env=dict(os.environ), capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    with FeedbackStore.open(home) as store:
        # Nothing of the copy stays (its write-ahead log did until the next compaction).
        assert not [p.name for p in home.iterdir() if p.name.startswith("glance.compact.db")]
        ids = {c.id for c in store.conversations.list()}
        assert "kept" in ids and "doomed" not in ids   # the delete committed before compaction
        assert [m.content for m in store.conversations.messages("kept")] == ["kept text"]
        # Killed before the compacted file took over: its close owes the compaction.
        assert store._compaction_owed == (STEPS.index(step) < STEPS.index("swap_file"))
    assert not (home / "glance.key.next").exists()
    assert not (home / "glance.compact.db").exists()


def test_a_compaction_that_fails_leaves_the_store_working_and_is_owed(home, monkeypatch):
    """A full disk during the copy (it needs the database's size again) left the copy
    attached: every later deletion of the session failed with a binder error, and the
    deleted text was never erased. Now the failure says what happened, the next deletion
    compacts, and one left owed is done when the store closes."""
    from feedback_store import compaction
    from feedback_store.errors import StoreError

    def full_disk(step):
        if step == "copy_rows":
            raise OSError(28, "No space left on device")
    store = FeedbackStore.open(home)
    for name in ("first", "second", "kept"):
        store.conversations.create(Conversation(title=name, id=name))
    old_key = (home / "glance.key").read_text()
    with monkeypatch.context() as disk:
        disk.setattr(compaction, "_after_step", full_disk)
        with pytest.raises(StoreError, match="No space left on device") as raised:
            store.delete_conversation("first")
    assert "was deleted" in str(raised.value)
    assert not (home / "glance.compact.db").exists() and not (home / "glance.key.next").exists()
    assert (home / "glance.key").read_text() == old_key
    assert store._compaction_owed
    store.delete_conversation("second")                  # space freed
    assert (home / "glance.key").read_text() != old_key
    assert not store._compaction_owed
    with monkeypatch.context() as disk:
        disk.setattr(compaction, "_after_step", full_disk)
        with pytest.raises(StoreError):
            store.delete_conversation("kept")
    key_before_close = (home / "glance.key").read_text()
    store.close()                                        # the owed compaction
    assert (home / "glance.key").read_text() != key_before_close
    with FeedbackStore.open(home) as store:
        assert store.conversations.list() == [] and not store._compaction_owed


def test_a_compaction_the_disk_has_no_room_for_is_not_begun(home, monkeypatch):
    """Its first step, DuckDB's checkpoint, failed on a full disk and DuckDB then marked
    the open database unusable: every read failed, the privacy panel would not open. With
    too little room (as the disk reports it) the rewrite is refused before it begins: the
    store works on and the compaction stays owed until there is room."""
    import collections
    from feedback_store import compaction
    from feedback_store.errors import StoreError
    store = FeedbackStore.open(home)
    for name in ("first", "kept"):
        store.conversations.create(Conversation(title=name, id=name))
    old_key = (home / "glance.key").read_text()
    usage = collections.namedtuple("usage", "total used free")
    with monkeypatch.context() as disk:
        disk.setattr(compaction.shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 1 << 20))
        with pytest.raises(StoreError, match="needs .* MiB free, 1 MiB are"):
            store.delete_conversation("first")
    assert (home / "glance.key").read_text() == old_key and store._compaction_owed
    assert [c.id for c in store.conversations.list()] == ["kept"] and store.status()["counts"]
    store.close()                                        # room again: the owed compaction
    assert (home / "glance.key").read_text() != old_key


def test_no_fragment_of_the_key_stays_in_a_new_or_compacted_file(home):
    """DuckDB 1.5.5 leaves 4 characters of the key string in a new file's second header
    (tests/test_block_audit.py shows it); the store rewrites that header."""
    from feedback_store import audit

    def leaks():
        key = (home / "glance.key").read_text().strip()
        fragments = {key[i:i + 4].encode() for i in range(len(key) - 3)}
        return [(offset, pad) for offset, pad in audit.unauthenticated_bytes(home / "glance.db")
                if pad in fragments]
    FeedbackStore.open(home).close()
    assert leaks() == []
    with FeedbackStore.open(home) as store:
        store.conversations.create(Conversation(title="x", id="x"))
        store.delete_conversation("x")
    assert leaks() == []


def test_the_extension_signature_is_skipped_only_for_the_very_file_that_passed(tmp_path):
    """DuckDB's RSA check of httpfs costs ≈ 40 ms of each start, so it runs once per
    file; a file changed after it passed (here: its signature) is checked again and
    refused. Seen red with the fingerprint comparison removed: the damaged copy loaded."""
    import shutil
    from feedback_store.connection import VERIFIED_FILE, connect, httpfs_extension_path
    from feedback_store.errors import StoreError
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    extension = tmp_path / "httpfs.duckdb_extension"
    shutil.copyfile(httpfs_extension_path(), extension)
    note = data_dir / VERIFIED_FILE
    for _ in range(2):  # verified in full, then trusted by its fingerprint
        connect(data_dir, extension, note).close()
    assert note.read_text().startswith(str(extension.resolve()))
    passed = extension.stat()
    with open(extension, "r+b") as handle:  # the signature is the file's last 256 bytes
        handle.seek(-10, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-10, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))
    # A write within the file system's clock tick may leave its times as they were: the
    # change is made visible as any later edit would be, not waited for.
    os.utime(extension, ns=(passed.st_atime_ns, passed.st_mtime_ns + 1_000_000_000))
    with pytest.raises(StoreError, match="signature"):
        connect(data_dir, extension, note)
