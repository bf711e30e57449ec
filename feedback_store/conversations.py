"""``store.conversations``: conversations, their messages and explicit feedback (thumbs).

Incognito conversations are registered here and never written: every write for one is
a no-op, and samples that name one are refused at the door (see samples.py).
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field

from .connection import transaction


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


MESSAGE_COLUMNS = tuple(Message.__dataclass_fields__)


class ConversationManager:
    def __init__(self, store):
        self.store = store
        self._incognito: set[str] = set()
        self._deleted: set[str] = set()   # samples still in flight for these are refused

    def is_incognito(self, conversation_id: str) -> bool:
        return conversation_id in self._incognito

    def create(self, conversation: Conversation) -> Conversation:
        if conversation.incognito:
            self._incognito.add(conversation.id)
            return conversation
        self.store._write(
            "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
            (conversation.id, conversation.title, conversation.created_wall_ns,
             conversation.updated_wall_ns, conversation.active_leaf_id,
             json.dumps(conversation.settings)))
        return conversation

    def rename(self, conversation_id: str, title: str) -> None:
        if not self.is_incognito(conversation_id):
            self.store._write("UPDATE conversations SET title = ?, updated_wall_ns = ? "
                              "WHERE id = ?", (title, time.time_ns(), conversation_id))

    def update_settings(self, conversation_id: str, settings: dict) -> None:
        if not self.is_incognito(conversation_id):
            self.store._write("UPDATE conversations SET settings = ? WHERE id = ?",
                              (json.dumps(settings), conversation_id))

    def set_active_leaf(self, conversation_id: str, leaf_id: str | None) -> None:
        if not self.is_incognito(conversation_id):
            self.store._write("UPDATE conversations SET active_leaf_id = ?, updated_wall_ns = ? "
                              "WHERE id = ?", (leaf_id, time.time_ns(), conversation_id))

    def get(self, conversation_id: str) -> Conversation | None:
        rows = self.store._rows("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
        return self._conversation(rows[0]) if rows else None

    def list(self, search: str | None = None) -> list[Conversation]:
        if search:
            # The words as typed: "100%" or "snake_case" are not patterns.
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern = f"%{escaped}%"
            rows = self.store._rows(
                "SELECT * FROM conversations c WHERE c.title ILIKE ? ESCAPE '\\' OR EXISTS ("
                " SELECT 1 FROM messages m WHERE m.conversation_id = c.id"
                " AND m.content ILIKE ? ESCAPE '\\') ORDER BY updated_wall_ns DESC", (pattern, pattern))
        else:
            rows = self.store._rows("SELECT * FROM conversations ORDER BY updated_wall_ns DESC")
        return [self._conversation(row) for row in rows]

    @staticmethod
    def _conversation(row: dict) -> Conversation:
        row = dict(row)
        row["settings"] = json.loads(row["settings"] or "{}")
        return Conversation(**row)

    # --- messages ------------------------------------------------------------------------
    def add_message(self, message: Message) -> Message:
        """Commit a message (and make it the conversation's active leaf) before returning."""
        if self.is_incognito(message.conversation_id):
            return message
        row = asdict(message)
        row["settings"] = json.dumps(message.settings) if message.settings is not None else None
        placeholders = ", ".join("?" for _ in MESSAGE_COLUMNS)

        def insert(con):
            with transaction(con):
                con.execute(f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}) "
                            f"VALUES ({placeholders})", [row[c] for c in MESSAGE_COLUMNS])
                con.execute("UPDATE conversations SET active_leaf_id = ?, updated_wall_ns = ? "
                            "WHERE id = ?", [message.id, time.time_ns(), message.conversation_id])
        self.store.writer.call(insert)
        return message

    def messages(self, conversation_id: str) -> list[Message]:
        rows = self.store._rows(
            f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE conversation_id = ? "
            "ORDER BY created_wall_ns, id", (conversation_id,))
        for row in rows:
            row["settings"] = json.loads(row["settings"]) if row["settings"] else None
        return [Message(**row) for row in rows]

    # --- explicit feedback -----------------------------------------------------------------
    def set_thumb(self, conversation_id: str, message_id: str, value: int) -> None:
        if value not in (-1, 0, 1):
            raise ValueError("a thumb is -1, 0 or +1")
        if not self.is_incognito(conversation_id):
            self.store._write("INSERT INTO feedback (id, message_id, conversation_id, kind, value, wall_ns) VALUES (?, ?, ?, 'thumb', ?, ?)",
                              (new_id(), message_id, conversation_id, value, time.time_ns()))

    def record_pick(self, conversation_id: str, left_id: str, right_id: str, value: int,
                    picked_mono_ns: int | None = None) -> str | None:
        """An explicit side-by-side choice: +1 left preferred, -1 right, 0 a tie."""
        if value not in (-1, 0, 1):
            raise ValueError("a pick is +1 (left), -1 (right) or 0 (tie)")
        if self.is_incognito(conversation_id):
            return None
        pick_id = new_id()
        self.store._write(
            "INSERT INTO feedback (id, message_id, conversation_id, kind, value, wall_ns, "
            "other_message_id, picked_mono_ns) VALUES (?, ?, ?, 'pick', ?, ?, ?, ?)",
            (pick_id, left_id, conversation_id, value, time.time_ns(), right_id,
             picked_mono_ns or time.monotonic_ns()))
        return pick_id

    def picks(self, conversation_id: str | None = None) -> list[dict]:
        where = "kind = 'pick'" + (" AND conversation_id = ?" if conversation_id else "")
        return self.store._rows(
            "SELECT id, conversation_id, message_id AS left_id, other_message_id AS right_id, "
            f"value, wall_ns, picked_mono_ns FROM feedback WHERE {where} ORDER BY wall_ns",
            (conversation_id,) if conversation_id else ())

    def thumbs(self, conversation_id: str) -> dict[str, int]:
        rows = self.store._rows(
            "SELECT message_id, arg_max(value, wall_ns) AS value FROM feedback "
            "WHERE conversation_id = ? AND kind = 'thumb' GROUP BY message_id",
            (conversation_id,))
        return {row["message_id"]: row["value"] for row in rows if row["value"]}
