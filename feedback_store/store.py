"""FeedbackStore: the public API of the database.

Reads use a cursor per thread; every write goes through the single :class:`Writer`.
Consent and incognito are enforced here: a sample without consent, or anything from an
incognito conversation, is refused and counted by reason, never written.
"""
import json
import os
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import migrations
from .connection import open_encrypted, translate
from .consent import CONSENT_TEXT_VERSION, SAMPLE_TABLE_SIGNAL, SIGNALS
from .errors import SchemaTooNew, StoreError
from .keys import DatabaseKey, load_or_create_key
from .paths import ensure_private_dir, glance_home
from .writer import Writer

DATABASE_FILE = "glance.db"

_POINTER_COLUMNS = (("session_id", "VARCHAR"), ("shown_reply_id", "VARCHAR"),
                    ("conversation_id", "VARCHAR"), ("mono_ns", "BIGINT"), ("wall_ns", "BIGINT"),
                    ("kind", "VARCHAR"), ("x", "DOUBLE"), ("y", "DOUBLE"),
                    ("text_offset", "INTEGER"), ("source", "VARCHAR"))
# Column order of the tuples submit_samples takes, with their SQL types.
SAMPLE_COLUMNS = {
    "pointer_samples": _POINTER_COLUMNS,
    "gaze_samples": _POINTER_COLUMNS + (("confidence", "DOUBLE"),),
}
_CONVERSATION_INDEX = 2  # position of conversation_id in every sample tuple
assert all(c[_CONVERSATION_INDEX][0] == "conversation_id" for c in SAMPLE_COLUMNS.values())


def new_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Message:
    conversation_id: str
    role: str
    content: str
    parent_id: str | None = None
    id: str = field(default_factory=new_id)
    created_wall_ns: int = field(default_factory=time.time_ns)
    model: str | None = None
    settings: dict | None = None
    prompt_tokens: int | None = None
    tokens: int | None = None
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    finish_reason: str | None = None
    dropped_turns: int | None = None


@dataclass
class Conversation:
    title: str
    id: str = field(default_factory=new_id)
    created_wall_ns: int = field(default_factory=time.time_ns)
    updated_wall_ns: int = field(default_factory=time.time_ns)
    active_leaf_id: str | None = None
    settings: dict = field(default_factory=dict)
    incognito: bool = False  # never written; lives only in memory


MESSAGE_COLUMNS = tuple(f for f in Message.__dataclass_fields__)


class FeedbackStore:
    def __init__(self, data_dir: Path, con, key: DatabaseKey, capacity: int):
        self.data_dir = data_dir
        self.path = data_dir / DATABASE_FILE
        self.key_storage = key.storage
        self._key_hex = key.hex
        self._con = con
        self._local = threading.local()
        self.writer = Writer(con, capacity=capacity)
        self.writer.start()
        self.refused: Counter = Counter()   # reason -> sample rows refused
        self._incognito: set[str] = set()
        self._deleted: set[str] = set()   # samples still in flight for these are refused
        self._consents = self._load_consents()
        self.paused = bool(self.get_setting("paused", False))
        self.closed = False

    # --- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, data_dir: Path | None = None, capacity: int = 4096) -> "FeedbackStore":
        data_dir = ensure_private_dir(Path(data_dir) if data_dir else glance_home())
        path = data_dir / DATABASE_FILE
        key = load_or_create_key(data_dir, path)
        if path.exists():
            # Look before touching: a newer schema must not be migrated or written.
            probe = open_encrypted(path, key.hex, read_only=True)
            try:
                found = migrations.current_version(probe)
            finally:
                probe.close()
            if found > migrations.LATEST_VERSION:
                raise SchemaTooNew(path, found, migrations.LATEST_VERSION)
        con = open_encrypted(path, key.hex)
        try:
            migrations.migrate(con)
        except Exception as error:
            con.close()
            raise translate(error, path) from error
        store = cls(data_dir, con, key, capacity)
        store._restrict_file_modes()
        store.apply_retention()
        return store

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.close()
        try:
            self._con.execute("CHECKPOINT")
        finally:
            self._con.close()
        self._restrict_file_modes()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _restrict_file_modes(self) -> None:
        for child in self.data_dir.iterdir():
            if child.is_file():
                os.chmod(child, 0o600)

    def compact(self) -> None:
        """Rewrite the database into a fresh file, so rows deleted earlier leave no trace
        in any block of any file (DuckDB reuses freed blocks but does not wipe them)."""
        path, key = self.path, self._key_hex
        fresh = path.with_name("glance.compact.db")

        def rewrite(con):
            fresh.unlink(missing_ok=True)
            con.execute("CHECKPOINT")
            con.execute(f"ATTACH '{fresh}' AS glance_fresh (ENCRYPTION_KEY '{key}')")
            con.execute("COPY FROM DATABASE glance TO glance_fresh")
            con.execute("DETACH glance_fresh")
            con.execute("USE memory")
            con.execute("DETACH glance")
            os.replace(fresh, path)
            path.with_name(path.name + ".wal").unlink(missing_ok=True)
            con.execute(f"ATTACH '{path}' AS glance (ENCRYPTION_KEY '{key}')")
            con.execute("USE glance")
        self.writer.call(rewrite)
        self._restrict_file_modes()

    # --- reading -----------------------------------------------------------------------
    def _cursor(self):
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._con.cursor()
            cursor.execute("USE glance")
            self._local.cursor = cursor
        return cursor

    def _rows(self, sql: str, params=()) -> list[dict]:
        cursor = self._cursor().execute(sql, list(params))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def _write(self, sql: str, params=()) -> None:
        self.writer.call(lambda con: con.execute(sql, list(params)))

    # --- conversations -------------------------------------------------------------------
    def create_conversation(self, conversation: Conversation) -> Conversation:
        if conversation.incognito:
            self._incognito.add(conversation.id)
            return conversation
        self._write(
            "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
            (conversation.id, conversation.title, conversation.created_wall_ns,
             conversation.updated_wall_ns, conversation.active_leaf_id,
             json.dumps(conversation.settings)),
        )
        return conversation

    def is_incognito(self, conversation_id: str) -> bool:
        return conversation_id in self._incognito

    def rename_conversation(self, conversation_id: str, title: str) -> None:
        if self.is_incognito(conversation_id):
            return
        self._write("UPDATE conversations SET title = ?, updated_wall_ns = ? WHERE id = ?",
                    (title, time.time_ns(), conversation_id))

    def update_conversation_settings(self, conversation_id: str, settings: dict) -> None:
        if self.is_incognito(conversation_id):
            return
        self._write("UPDATE conversations SET settings = ? WHERE id = ?",
                    (json.dumps(settings), conversation_id))

    def set_active_leaf(self, conversation_id: str, leaf_id: str | None) -> None:
        if self.is_incognito(conversation_id):
            return
        self._write("UPDATE conversations SET active_leaf_id = ?, updated_wall_ns = ? WHERE id = ?",
                    (leaf_id, time.time_ns(), conversation_id))

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        rows = self._rows("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
        return self._conversation(rows[0]) if rows else None

    def list_conversations(self, search: str | None = None) -> list[Conversation]:
        if search:
            pattern = f"%{search}%"
            rows = self._rows(
                "SELECT * FROM conversations c WHERE c.title ILIKE ? OR EXISTS ("
                " SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.content ILIKE ?)"
                " ORDER BY updated_wall_ns DESC", (pattern, pattern))
        else:
            rows = self._rows("SELECT * FROM conversations ORDER BY updated_wall_ns DESC")
        return [self._conversation(row) for row in rows]

    @staticmethod
    def _conversation(row: dict) -> Conversation:
        row = dict(row)
        row["settings"] = json.loads(row["settings"] or "{}")
        return Conversation(**row)

    def delete_conversation(self, conversation_id: str, compact: bool = True) -> None:
        """Delete a conversation and everything derived from it, in one transaction, then
        (unless told not to) rewrite the file so no freed block still holds its text."""
        self._incognito.discard(conversation_id)
        self._deleted.add(conversation_id)

        def delete(con):
            con.execute("BEGIN TRANSACTION")
            try:
                for table in ("pointer_samples", "gaze_samples", "shown_replies", "feedback",
                              "messages"):
                    con.execute(f"DELETE FROM {table} WHERE conversation_id = ?", [conversation_id])
                con.execute("DELETE FROM conversations WHERE id = ?", [conversation_id])
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        self.writer.call(delete)
        if compact:
            self.compact()

    # --- messages ------------------------------------------------------------------------
    def add_message(self, message: Message) -> Message:
        """Commit a message (and make it the conversation's active leaf) before returning."""
        if self.is_incognito(message.conversation_id):
            return message
        row = asdict(message)
        row["settings"] = json.dumps(message.settings) if message.settings is not None else None
        placeholders = ", ".join("?" for _ in MESSAGE_COLUMNS)

        def insert(con):
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}) "
                            f"VALUES ({placeholders})", [row[c] for c in MESSAGE_COLUMNS])
                con.execute("UPDATE conversations SET active_leaf_id = ?, updated_wall_ns = ? "
                            "WHERE id = ?", [message.id, time.time_ns(), message.conversation_id])
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        self.writer.call(insert)
        return message

    def messages(self, conversation_id: str) -> list[Message]:
        rows = self._rows(
            f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE conversation_id = ? "
            "ORDER BY created_wall_ns, id", (conversation_id,))
        for row in rows:
            row["settings"] = json.loads(row["settings"]) if row["settings"] else None
        return [Message(**row) for row in rows]

    # --- explicit feedback -----------------------------------------------------------------
    def set_thumb(self, conversation_id: str, message_id: str, value: int) -> None:
        if value not in (-1, 0, 1):
            raise ValueError("a thumb is -1, 0 or +1")
        if self.is_incognito(conversation_id):
            return
        self._write("INSERT INTO feedback VALUES (?, ?, ?, 'thumb', ?, ?)",
                    (new_id(), message_id, conversation_id, value, time.time_ns()))

    def thumbs(self, conversation_id: str) -> dict[str, int]:
        rows = self._rows(
            "SELECT message_id, arg_max(value, wall_ns) AS value FROM feedback "
            "WHERE conversation_id = ? AND kind = 'thumb' GROUP BY message_id",
            (conversation_id,))
        return {row["message_id"]: row["value"] for row in rows if row["value"]}

    # --- sessions, shown replies and samples ---------------------------------------------
    def start_session(self, app_version: str, screen: dict | None = None) -> str:
        session_id = new_id()
        self._write("INSERT INTO app_sessions VALUES (?, ?, ?, ?, ?)",
                    (session_id, time.time_ns(), time.monotonic_ns(), app_version,
                     json.dumps(screen or {})))
        return session_id

    def record_shown_reply(self, *, session_id: str | None, message_id: str,
                           conversation_id: str, geometry: tuple[int, int, int, int],
                           device_pixel_ratio: float, rendered_text: str,
                           layout: list[dict]) -> str | None:
        """Remember what a reply looked like on screen; samples refer to the returned id."""
        if self.is_incognito(conversation_id):
            return None
        shown_id = new_id()
        x, y, width, height = geometry
        self._write(
            "INSERT INTO shown_replies VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?)",
            (shown_id, session_id, message_id, conversation_id, time.time_ns(),
             time.monotonic_ns(), x, y, width, height, device_pixel_ratio, rendered_text,
             json.dumps(layout)))
        return shown_id

    def mark_reply_hidden(self, shown_reply_id: str) -> None:
        self._write("UPDATE shown_replies SET hidden_mono_ns = ? WHERE id = ?",
                    (time.monotonic_ns(), shown_reply_id))

    def submit_samples(self, table: str, rows: list[tuple]) -> bool:
        """Queue samples without waiting. Refused (and counted) without consent, from an
        incognito conversation, or when the queue is full. Row order: SAMPLE_COLUMNS."""
        columns = SAMPLE_COLUMNS[table]
        signal = SAMPLE_TABLE_SIGNAL[table]
        if self.paused:
            self.refused["paused"] += len(rows)
            return False
        if not self.consent_on(signal):
            self.refused[f"no_consent:{signal}"] += len(rows)
            return False
        if self._incognito or self._deleted:
            for reason, ids in (("incognito", self._incognito), ("deleted", self._deleted)):
                kept = [row for row in rows if row[_CONVERSATION_INDEX] not in ids]
                if len(kept) != len(rows):
                    self.refused[reason] += len(rows) - len(kept)
                rows = kept
        if not rows:
            return False
        return self.writer.submit_samples(table, columns, rows)

    def flush(self) -> None:
        self.writer.flush()

    # --- consent -------------------------------------------------------------------------
    def _load_consents(self) -> dict:
        rows = self._rows(
            "SELECT signal, arg_max(granted, at_wall_ns) AS granted, max(at_wall_ns) AS at, "
            "arg_max(text_version, at_wall_ns) AS text_version FROM consents GROUP BY signal")
        return {row["signal"]: {"on": bool(row["granted"]), "at": row["at"],
                                "text_version": row["text_version"]} for row in rows}

    def consents(self) -> dict:
        """signal -> {on, at, text_version} (None for a signal never decided)."""
        return {signal: self._consents.get(signal) for signal in SIGNALS}

    def consent_on(self, signal: str) -> bool:
        decision = self._consents.get(signal)
        return bool(decision and decision["on"]
                    and decision["text_version"] == CONSENT_TEXT_VERSION)

    def consent_needed(self) -> bool:
        """True when some signal has no decision made under the current consent text."""
        return any(
            (self._consents.get(s) or {}).get("text_version") != CONSENT_TEXT_VERSION
            for s in SIGNALS)

    def set_consent(self, signal: str, on: bool) -> None:
        if signal not in SIGNALS:
            raise StoreError(f"Unknown signal {signal!r}; choose one of: {', '.join(SIGNALS)}.")
        at = time.time_ns()
        self._write("INSERT INTO consents VALUES (?, ?, ?, ?)",
                    (signal, on, at, CONSENT_TEXT_VERSION))
        self._consents[signal] = {"on": on, "at": at, "text_version": CONSENT_TEXT_VERSION}

    def set_paused(self, paused: bool) -> None:
        """Pause all collection (kept across restarts until resumed)."""
        self.paused = bool(paused)
        self.set_setting("paused", self.paused)

    # --- retention -------------------------------------------------------------------
    DEFAULT_RETENTION_DAYS = 90

    @property
    def retention_days(self) -> int:
        return int(self.get_setting("retention_days", self.DEFAULT_RETENTION_DAYS))

    def set_retention_days(self, days: int) -> None:
        if days < 1:
            raise StoreError("Retention must be at least one day.")
        self.set_setting("retention_days", int(days))
        self.apply_retention()

    def apply_retention(self, now_wall_ns: int | None = None) -> int:
        """Delete reading signals (samples, shown replies, sessions) older than the
        retention period. Conversations stay until the user deletes them."""
        cutoff = (now_wall_ns or time.time_ns()) - self.retention_days * 86_400 * 10**9

        def purge(con):
            con.execute("BEGIN TRANSACTION")
            removed = 0
            for table in ("pointer_samples", "gaze_samples"):
                removed += con.execute(f"DELETE FROM {table} WHERE wall_ns < ?", [cutoff]).fetchone()[0]
            con.execute("DELETE FROM shown_replies WHERE shown_wall_ns < ?", [cutoff])
            con.execute("DELETE FROM app_sessions WHERE started_wall_ns < ?", [cutoff])
            con.execute("COMMIT")
            return removed
        return self.writer.call(purge)

    def session_summary(self) -> list[dict]:
        """Per app session: replies shown and samples per signal (the privacy data view)."""
        return self._rows(
            "SELECT s.id, s.started_wall_ns,"
            " (SELECT count(*) FROM shown_replies r WHERE r.session_id = s.id) AS replies,"
            " (SELECT count(*) FROM pointer_samples p WHERE p.session_id = s.id) AS pointer,"
            " (SELECT count(*) FROM gaze_samples g WHERE g.session_id = s.id) AS gaze"
            " FROM app_sessions s ORDER BY s.started_wall_ns DESC")

    # --- models and settings -----------------------------------------------------------------
    def remember_model(self, info: dict) -> None:
        self._write(
            "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (info["path"], info.get("name"), info.get("architecture"),
             info.get("context_length"), info.get("chat_template"), info.get("size_bytes"),
             time.time_ns(), time.time_ns()))

    def models(self) -> list[dict]:
        return self._rows("SELECT * FROM models ORDER BY last_used_wall_ns DESC")

    def forget_model(self, path: str) -> None:
        self._write("DELETE FROM models WHERE path = ?", (path,))

    def get_setting(self, key: str, default=None):
        rows = self._rows("SELECT value FROM app_settings WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    def set_setting(self, key: str, value) -> None:
        self._write("INSERT OR REPLACE INTO app_settings VALUES (?, ?)", (key, json.dumps(value)))

    # --- status ------------------------------------------------------------------------
    TABLES = ("conversations", "messages", "app_sessions", "shown_replies", "feedback",
              "pointer_samples", "gaze_samples", "consents", "models")

    def counts(self) -> dict[str, int]:
        return {t: self._rows(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in self.TABLES}

    def file_sizes(self) -> dict[str, int]:
        return {child.name: child.stat().st_size
                for child in sorted(self.data_dir.iterdir()) if child.is_file()}

    def status(self) -> dict:
        return {
            "encryption": True,
            "key_storage": self.key_storage,
            "consents": self.consents(),
            "counts": self.counts(),
            "bytes": self.file_sizes(),
            "data_dir": str(self.data_dir),
            "schema_version": migrations.LATEST_VERSION,
            "refused": dict(self.refused),
            "dropped_queue_full": self.writer.dropped_full,
            "writer_error": str(self.writer.failure) if self.writer.failure else None,
        }
