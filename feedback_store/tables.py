"""Every table of the database, declared once with its owner and privacy scope.

Deletion, retention, export and counts are derived from this list, so a new table
cannot be forgotten by any of them: `tests/test_trunk_store.py::test_every_table_in_the_schema_is_declared_once` fails when the schema holds
a table that is not declared here.

Scopes:
- ``conversation``: rows belong to one conversation (column ``conversation_id``);
  deleting the conversation deletes them.
- ``session``: rows belong to one app session (column ``session_id``).
- ``global``: settings, consents, the model list: kept until *Delete everything*.
- ``research``: imported research data (e.g. the IFLLM study); never expired by
  retention, never used for the user's training unless asked, removable on its own.
- ``internal``: bookkeeping of the database itself (migrations, refusal counters).
"""
from dataclasses import dataclass

SCOPES = ("conversation", "session", "global", "research", "internal")


@dataclass(frozen=True)
class Table:
    name: str
    scope: str
    owner: str                     # the store manager that writes it
    expires_on: str | None = None  # wall-clock ns column retention applies to
    exported: bool = True          # part of `glance data export`

    @property
    def key_column(self) -> str | None:
        return {"conversation": "conversation_id", "session": "session_id"}.get(self.scope)


TABLES: tuple[Table, ...] = (
    Table("conversations", "conversation", "conversations"),
    Table("messages", "conversation", "conversations"),
    Table("feedback", "conversation", "conversations"),
    Table("shown_replies", "conversation", "samples", expires_on="shown_wall_ns"),
    Table("pointer_samples", "conversation", "samples", expires_on="wall_ns"),
    Table("gaze_samples", "conversation", "samples", expires_on="wall_ns"),
    Table("viewport_events", "conversation", "samples", expires_on="wall_ns"),
    Table("reply_actions", "conversation", "samples", expires_on="wall_ns"),
    # The reward model's score of each shown reply (migration 0006, store.scores).
    Table("reply_scores", "conversation", "scores", expires_on="scored_wall_ns"),
    # Nightly training (migration 0004, store.training): the pairs a run used go with
    # their conversation; runs and adapter versions are global history.
    Table("training_pairs", "conversation", "training"),
    Table("training_runs", "global", "training"),
    Table("adapter_versions", "global", "training"),
    Table("app_sessions", "session", "samples", expires_on="started_wall_ns"),
    Table("consents", "global", "consent"),
    Table("models", "global", "models"),
    Table("app_settings", "global", "settings"),
    # Imported research data (migration 0003, written by align/research.py): public
    # study data, not the user's, so not exported.
    Table("research_imports", "research", "research", exported=False),
    Table("research_conversations", "research", "research", exported=False),
    Table("research_turns", "research", "research", exported=False),
    Table("research_shown_replies", "research", "research", exported=False),
    Table("research_samples", "research", "research", exported=False),
    Table("research_feedback", "research", "research", exported=False),
    Table("refusals", "internal", "consent"),
    Table("schema_migrations", "internal", "migrations", exported=False),
)

assert all(t.scope in SCOPES for t in TABLES)
BY_NAME = {t.name: t for t in TABLES}


def in_scope(scope: str) -> list[Table]:
    return [t for t in TABLES if t.scope == scope]


def conversation_tables() -> list[Table]:
    """Children first, the conversations row last (deletion order)."""
    tables = in_scope("conversation")
    return [t for t in tables if t.name != "conversations"] + [BY_NAME["conversations"]]


def expiring_tables() -> list[Table]:
    return [t for t in TABLES if t.expires_on and t.scope != "research"]


def exported_tables() -> list[Table]:
    return [t for t in TABLES if t.exported]


def counted_tables() -> list[Table]:
    return [t for t in TABLES if t.scope != "internal"]
