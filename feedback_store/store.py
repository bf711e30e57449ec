"""FeedbackStore: the one façade over the database, with a small manager per concern.

    store.conversations  conversations, messages, thumbs
    store.samples        app sessions, shown replies, the sample stream
    store.consent        decisions, pause, refusal counters
    store.traces         reading traces read back as numpy arrays
    store.settings       app settings;  store.models  the model list

Reads use a cursor per thread; every write goes through the single :class:`Writer`.
What spans every table (deleting a conversation, retention, counts, export) is derived
from the registry in tables.py, so a new table cannot be forgotten.
"""
import os
import threading
import time
from pathlib import Path

import duckdb

from . import compaction, migrations, tables
from .connection import (ATTACH_ALIAS, VERIFIED_FILE, attach, connect, detach, transaction,
                         translate)
from .consent import ConsentManager
from .conversations import Conversation, ConversationManager, Message, new_id  # noqa: F401
from .errors import DatabaseLocked, NoGlanceData, SchemaTooNew, StoreError
from .keys import DatabaseKey, load_or_create_key
from .locks import STORE_LOCK_FILE, FileLock, HeldElsewhere, this_process
from .paths import ensure_private_dir, glance_home, is_glance_file, refuse_a_file
from .samples import SampleManager
from .settings import ModelList, SettingsManager
from .traces import TraceReader
from .scores import ScoreManager
from .training import TrainingManager
from .writer import Writer

DATABASE_FILE = "glance.db"


def _try_attach(con, path: Path, key_hex: str) -> None:
    attach(con, path, key_hex, read_only=True)
    detach(con)


class _SharedExclusiveLock:
    """Many readers, or one compaction rewriting the file: reads never see the database
    detached, and wait while it is rewritten (seconds for months of samples)."""

    def __init__(self):
        self._condition = threading.Condition()
        self._readers = 0
        self._exclusive = False

    def __enter__(self):
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive)
            self._readers += 1

    def __exit__(self, *exc):
        with self._condition:
            self._readers -= 1
            self._condition.notify_all()

    def exclusive(self):
        lock = self

        class _Exclusive:
            def __enter__(self):
                with lock._condition:
                    lock._condition.wait_for(lambda: not lock._exclusive)
                    lock._exclusive = True
                    lock._condition.wait_for(lambda: lock._readers == 0)

            def __exit__(self, *exc):
                with lock._condition:
                    lock._exclusive = False
                    lock._condition.notify_all()
        return _Exclusive()


def owe_compaction(con) -> None:
    """Inside a deletion's transaction: the file must be compacted, by this session's
    close or, if it never closes, by the next one's."""
    con.execute("INSERT OR REPLACE INTO app_settings VALUES (?, 'true')",
                [compaction.PENDING_SETTING])


class FeedbackStore:
    def __init__(self, data_dir: Path, con, key: DatabaseKey, capacity: int,
                 lock: FileLock | None = None):
        self.data_dir = data_dir
        self._lock = lock
        self.path = data_dir / DATABASE_FILE
        self._key = key
        self._con = con
        self._local = threading.local()
        self._cursors: list = []            # every thread's read cursor, to close them all
        self._cursors_lock = threading.Lock()
        self._reading = _SharedExclusiveLock()
        self.writer = Writer(con, capacity=capacity)
        self.settings = SettingsManager(self)
        self.models = ModelList(self)
        self.conversations = ConversationManager(self)
        self.samples = SampleManager(self)
        self.consent = ConsentManager(self)
        self.traces = TraceReader(self)
        self.training = TrainingManager(self)
        self.scores = ScoreManager(self)
        self.writer.on_flush = self.consent.persist_refusals
        self.consent.on_refused = self.writer.flush_soon
        self.writer.keep_rows = self.samples.not_deleted
        self.writer.start()
        self.closed = False
        # Rows expired in a session that never closed (killed, logged out) are still in
        # the file's blocks: this close compacts them.
        self._compaction_owed = bool(self.settings.get(compaction.PENDING_SETTING, False))

    @property
    def key_storage(self) -> str:
        return self._key.storage

    # --- opening -----------------------------------------------------------------------
    @classmethod
    def open_existing(cls, data_dir: Path | None = None) -> "FeedbackStore":
        """Open the database only if there is one (:class:`NoGlanceData` otherwise)."""
        data_dir = Path(data_dir) if data_dir else glance_home()
        if not (data_dir / DATABASE_FILE).exists():
            refuse_a_file(data_dir)
            raise NoGlanceData(data_dir)
        return cls.open(data_dir)

    @classmethod
    def open(cls, data_dir: Path | None = None, capacity: int = 4096) -> "FeedbackStore":
        # Files DuckDB creates later (the WAL, spill files) must be the user's alone too.
        os.umask(0o077)
        data_dir = ensure_private_dir(Path(data_dir) if data_dir else glance_home())
        path = data_dir / DATABASE_FILE
        lock = FileLock(data_dir / STORE_LOCK_FILE, this_process())
        try:
            lock.acquire()
        except HeldElsewhere as held:
            raise DatabaseLocked(path, held.holder) from None
        try:
            return cls._open_locked(data_dir, path, capacity, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(cls, data_dir: Path, path: Path, capacity: int, lock) -> "FeedbackStore":
        key = load_or_create_key(data_dir, path)
        con = connect(data_dir, verified_note=data_dir / VERIFIED_FILE)
        try:
            if path.exists():
                key = compaction.recover(data_dir, path, key,
                                         lambda hex_key: _try_attach(con, path, hex_key))
                # Look before touching: a newer schema must not be migrated or written.
                attach(con, path, key.hex, read_only=True)
                found = migrations.current_version(con)
                detach(con)
                if found > migrations.LATEST_VERSION:
                    raise SchemaTooNew(path, found, migrations.LATEST_VERSION)
                created = False
            else:
                created = True
            attach(con, path, key.hex)
            migrations.migrate(con)
            if created:
                compaction.rewrite_second_header(con, ATTACH_ALIAS)
        except StoreError:
            con.close()
            raise
        except Exception as error:
            con.close()
            raise translate(error, path) from error
        try:
            store = cls(data_dir, con, key, capacity, lock)   # reads settings, consents, ...
        except duckdb.Error as error:                  # a damaged block is met here too
            con.close()
            raise translate(error, path) from error
        store._restrict_file_modes()
        # The first write to a freshly attached encrypted file costs ≈ 0.2 s inside
        # DuckDB (measured; later writes take ~1 ms). Queue one now, so it overlaps with
        # what the caller does next (loading the model) instead of delaying its first
        # real write.
        store.settings.set("last_opened_wall_ns", time.time_ns())
        store.apply_retention_daily()
        return store

    def close(self, save: bool = True) -> None:
        """``save=False``: the files are about to be deleted, so nothing more is written
        (no refusal counts, compaction or checkpoint): on a full disk those failed, and
        *Delete everything* with them."""
        if self.closed:
            return
        self.closed = True
        self.writer.close()
        try:
            with self._reading.exclusive():
                # A read cursor can be left inside a transaction DuckDB counts as a write
                # (seen intermittently: "Cannot CHECKPOINT: there are other write
                # transactions active" at the end of `glance data status`).
                self._drop_cursors()
            if not save:
                return
            self.consent.persist_refusals(self._con)
            if self._compaction_owed:       # deleted or expired rows: crypto-erase before closing
                self._key = compaction.rewrite(self._con, self.data_dir, self.path, self._key,
                                               ATTACH_ALIAS)
            self._con.execute("CHECKPOINT")
        finally:
            self._con.close()
            self._restrict_file_modes()
            if self._lock is not None:
                self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _restrict_file_modes(self) -> None:
        # Glance's files only: the folder may also hold the user's (GLANCE_HOME set to a
        # folder in use); their scripts stayed 0600, no longer executable.
        for child in self.data_dir.iterdir():
            if child.is_file() and not child.is_symlink() and is_glance_file(child.name):
                os.chmod(child, 0o600)

    # --- reading and writing -------------------------------------------------------------
    def _cursor(self):
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._con.cursor()
            cursor.execute(f"USE {ATTACH_ALIAS}")
            self._local.cursor = cursor
            with self._cursors_lock:
                self._cursors.append(cursor)
        return cursor

    def _drop_cursors(self) -> None:
        """Close every thread's read cursor; each thread makes a new one when it reads
        again. Only with no read in flight (``_reading.exclusive()``)."""
        with self._cursors_lock:
            cursors, self._cursors = self._cursors, []
        self._local = threading.local()
        for cursor in cursors:
            try:
                cursor.close()
            except Exception:  # noqa: BLE001 - a cursor of a detached database may refuse
                pass

    def _rows(self, sql: str, params=()) -> list[dict]:
        with self._reading:
            cursor = self._cursor().execute(sql, list(params))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def reading(self):
        """Hold while reading with ``_cursor()`` directly (export does)."""
        return self._reading

    def _write(self, sql: str, params=()) -> None:
        self.writer.call(lambda con: con.execute(sql, list(params)))

    def _post(self, sql: str, params=()) -> None:
        """Queue a write without waiting for it (the UI thread's writes)."""
        self.writer.post(lambda con: con.execute(sql, list(params)))

    def flush(self) -> None:
        self.writer.flush()

    # --- what spans every table --------------------------------------------------------
    def delete_conversation(self, conversation_id: str, compact: bool = True) -> None:
        """Delete a conversation and everything derived from it (every table of the
        conversation scope), in one transaction, then (unless told not to) rewrite the
        file under a new key so no freed block can be read again."""
        self.conversations._incognito.discard(conversation_id)
        self.conversations._deleted.add(conversation_id)

        def delete(con):
            with transaction(con):
                for table in tables.conversation_tables():
                    column = "id" if table.name == "conversations" else table.key_column
                    con.execute(f"DELETE FROM {table.name} WHERE {column} = ?", [conversation_id])
                if compact:         # done at once below; if that fails, owed till it works
                    owe_compaction(con)
            self._compaction_owed = compact or self._compaction_owed
        self.writer.call(delete)
        if compact:
            try:
                self.compact()
            except Exception as error:  # noqa: BLE001 - said to the user, retried at close
                reason = getattr(error, "strerror", None) or str(error)
                raise StoreError(
                    "The conversation was deleted, but the database could not be rewritten "
                    f"to erase its text from the file for good ({reason}). Free some disk "
                    "space: Glance tries again when it closes.") from error

    def compact(self) -> None:
        """Rewrite the database into a fresh file under a new key (crypto-erase)."""
        self.writer.call(self._rewrite)

    def _rewrite(self, con) -> None:
        """On the writer's thread: the compaction itself."""
        with self._reading.exclusive():
            self._drop_cursors()   # they hold the old catalog
            self._key = compaction.rewrite(con, self.data_dir, self.path, self._key, ATTACH_ALIAS)
            self._compaction_owed = False      # the rewrite left every deleted row behind
        self._restrict_file_modes()

    def apply_retention(self, now_wall_ns: int | None = None, wait: bool = True) -> int | None:
        """Delete reading signals older than the retention period (every table that
        declares an expiry column; research data never expires). If any went, the file is
        compacted when the store closes: DuckDB leaves deleted rows readable in live and
        freed blocks (docs/privacy.md), and expired means gone; compacting at once would
        make every read wait for the rewrite (seconds for months of samples), once a day
        at a moment nobody chose. Conversations stay until the user deletes them."""
        cutoff = (now_wall_ns or time.time_ns()) - self.settings.retention_days * 86_400 * 10**9

        def purge(con):
            removed = 0
            keyed = {row[0] for row in con.execute(
                "SELECT table_name FROM information_schema.columns WHERE column_name = 'session_id' "
                "AND table_catalog = current_database()").fetchall()}
            with transaction(con):
                for table in tables.expiring_tables():
                    condition = f"{table.expires_on} < ?"
                    if table.scope == "session":
                        # A session that outlasted the period (the app left open for days)
                        # stays while rows of it do (their own times are newer): the
                        # privacy panel lists the samples by their session.
                        condition += "".join(
                            f" AND id NOT IN (SELECT session_id FROM {other.name} "
                            "WHERE session_id IS NOT NULL)"
                            for other in tables.expiring_tables() if other.name in keyed)
                    removed += con.execute(f"DELETE FROM {table.name} WHERE {condition}",
                                           [cutoff]).fetchone()[0]
                # A score is made from its reply's showing and samples and goes with them:
                # by its own time it outlived them by as long as the reply stayed on screen.
                removed += con.execute("DELETE FROM reply_scores WHERE shown_reply_id NOT IN "
                                       "(SELECT id FROM shown_replies)").fetchone()[0]
                if removed:     # in the same transaction: a kill before close still compacts
                    owe_compaction(con)
            if removed:
                self._compaction_owed = True
            return removed
        if wait:
            return self.writer.call(purge)
        self.writer.post(purge)
        return None

    def apply_retention_daily(self) -> None:
        """At most once a day, queued (start-up never waits for it)."""
        last = self.settings.get("retention_last_wall_ns", 0)
        if time.time_ns() - last >= 86_400 * 10**9:
            self.settings.set("retention_last_wall_ns", time.time_ns())
            self.apply_retention(wait=False)

    def counts(self) -> dict[str, int]:
        return {t.name: self._rows(f"SELECT count(*) AS n FROM {t.name}")[0]["n"]
                for t in tables.counted_tables()}

    def file_sizes(self) -> dict[str, int]:
        return {child.name: child.stat().st_size
                for child in sorted(self.data_dir.iterdir()) if child.is_file()}

    def encrypted(self) -> bool:
        """Read from DuckDB itself, not assumed."""
        rows = self._rows("SELECT encrypted FROM duckdb_databases() WHERE database_name = ?",
                          (ATTACH_ALIAS,))
        return bool(rows and rows[0]["encrypted"])

    def schema_version(self) -> int:
        with self._reading:
            return migrations.current_version(self._cursor())

    def status(self) -> dict:
        return {
            "encryption": self.encrypted(),
            "key_storage": self.key_storage,
            "consents": self.consent.decisions(),
            "counts": self.counts(),
            "bytes": self.file_sizes(),
            "data_dir": str(self.data_dir),
            "schema_version": self.schema_version(),
            "refused": dict(self.consent.refused),
            "dropped_queue_full": self.writer.dropped_full,
            "writer_failures": self.writer.failures,
            "writer_error": self.writer.last_failure,
            "gaze_camera": self.settings.get("gaze_camera"),  # gaze.camera.SETTING: the doctor says it
        }


__all__ = ["FeedbackStore", "Conversation", "Message", "new_id", "StoreError"]
