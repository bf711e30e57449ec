"""``store.training``: what the nightly job reads, and what it leaves behind.

Reading (two ways, same rows):
- :meth:`TrainingManager.rows` — the job opened the store itself (the app is closed);
- :meth:`TrainingManager.write_snapshot` — the app holds the store and writes the same
  rows into a fresh file encrypted with a one-off key (the key travels over the private
  socket only, never to disk); the job reads it with :func:`read_snapshot` and deletes it.

Only what personalisation consent covers leaves the database: consent must be on now,
and a message or a feedback row counts only if it was written while consent was on
(every decision is kept with its time, so the periods are known). Incognito chats are
never stored, so they never appear. Imported research data (scope ``research``) is read
only when asked for.

Writing: a run row when the job starts, its outcome, the pairs it used (scope
``conversation``: deleting a conversation deletes them) and the adapter versions.
:meth:`stale_adapter_versions` finds published versions that trained on a conversation
deleted since, so they can be retired.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from .connection import open_encrypted, quote, transaction
from .writer import columnar_insert

FOREVER = 2**63 - 1
_ALLOWED = f"""allowed AS (
    SELECT start, stop FROM (
        SELECT granted, at_wall_ns AS start,
               lead(at_wall_ns, 1, {FOREVER}) OVER (ORDER BY seq) AS stop
        FROM consents WHERE signal = 'personalise') WHERE granted)"""


def _consented(column: str) -> str:
    return f"EXISTS (SELECT 1 FROM allowed a WHERE {column} >= a.start AND {column} < a.stop)"


# Each label's latest word (a thumb per reply, a pick per pair of replies).
_LATEST_FEEDBACK = """latest AS (
        SELECT * FROM feedback QUALIFY row_number() OVER (
            PARTITION BY kind, CASE WHEN kind = 'pick'
                                    THEN least(message_id, other_message_id) || '|' || greatest(message_id, other_message_id)
                                    ELSE message_id END
            ORDER BY wall_ns DESC, id DESC) = 1)"""

# name -> SELECT producing the rows (consent-filtered); the same text feeds rows() and
# the snapshot, so both paths give the job exactly the same data.
ROW_QUERIES = {
    "messages": f"""WITH {_ALLOWED}
        SELECT m.id, m.conversation_id, m.parent_id, m.role, m.content, m.created_wall_ns,
               m.model, m.finish_reason
        FROM messages m WHERE {_consented('m.created_wall_ns')}
        ORDER BY m.conversation_id, m.created_wall_ns, m.id""",
    # Only each label's latest word counts (a thumb per reply, a pick per pair of replies),
    # and only if that latest word was given with the consent on: a label reversed or
    # cleared while it was off must not be trained on as it was before.
    "feedback": f"""WITH {_ALLOWED}, {_LATEST_FEEDBACK}
        SELECT f.id, f.message_id, f.other_message_id, f.conversation_id, f.kind, f.value,
               f.wall_ns
        FROM latest f WHERE {_consented('f.wall_ns')} ORDER BY f.wall_ns, f.id""",
    # How many labels were given while personalisation was off (counts only, no content):
    # without them "nothing to learn" read as "you never preferred anything".
    "feedback_while_off": f"""WITH {_ALLOWED}, {_LATEST_FEEDBACK}
        SELECT f.kind, count(*) AS labels FROM latest f
        WHERE f.value <> 0 AND NOT {_consented('f.wall_ns')} GROUP BY f.kind ORDER BY f.kind""",
    "reply_scores": f"""WITH {_ALLOWED}
        SELECT s.message_id, s.conversation_id, s.previous_message_id, s.model, s.task,
               s.probability, s.scored_wall_ns
        FROM reply_scores s WHERE {_consented('s.scored_wall_ns')}
        ORDER BY s.scored_wall_ns, s.message_id""",
    "conversations": f"""WITH {_ALLOWED}
        SELECT c.id, c.settings FROM conversations c
        WHERE EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id
                      AND {_consented('m.created_wall_ns')}) ORDER BY c.id""",
}
# Imported research data: side-by-side answers with the study participant's pick.
IMPORTED_QUERY = """
    SELECT t.id AS turn_id, t.conversation_id, t.user_id, t.query,
           l.id AS left_id, l.rendered_text AS left_text,
           r.id AS right_id, r.rendered_text AS right_text, f.value
    FROM research_feedback f
    JOIN research_turns t ON t.id = f.turn_id AND t.import_id = f.import_id
    JOIN research_shown_replies l ON l.turn_id = t.id AND l.import_id = t.import_id AND l.side = 1
    JOIN research_shown_replies r ON r.turn_id = t.id AND r.import_id = t.import_id AND r.side = 2
    WHERE f.kind = 'preference' AND f.value IN (1, 2)
    ORDER BY t.conversation_id, t.turn_index"""
IMPORTED_TABLES = ("research_feedback", "research_turns", "research_shown_replies")

RUN_STATUSES = ("running", "published", "not_published", "nothing_new", "skipped", "failed",
                "interrupted")
PAIR_COLUMNS = (("run_id", "VARCHAR"), ("conversation_id", "VARCHAR"),
                ("prompt_message_id", "VARCHAR"), ("chosen_message_id", "VARCHAR"),
                ("rejected_message_id", "VARCHAR"), ("source", "VARCHAR"),
                ("epsilon", "DOUBLE"), ("split", "VARCHAR"))


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _fetch(cursor, sql: str) -> list[dict]:
    result = cursor.execute(sql)
    names = [d[0] for d in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]


def _has_tables(cursor, names) -> bool:
    found = {row[0] for row in cursor.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database()"
    ).fetchall()}
    return all(name in found for name in names)


def _read_all(cursor, include_imported: bool) -> dict:
    rows = {name: _fetch(cursor, sql) for name, sql in ROW_QUERIES.items()}
    imported = []
    if include_imported and _has_tables(cursor, IMPORTED_TABLES):
        imported = _fetch(cursor, IMPORTED_QUERY)
    rows["imported"] = imported
    return rows


def read_snapshot(path: Path, key_hex: str) -> dict:
    """The rows an app wrote with :meth:`TrainingManager.write_snapshot`."""
    con = open_encrypted(Path(path), key_hex, read_only=True)
    try:
        # A table an app started before an upgrade did not write reads as empty.
        present = {row[0] for row in con.execute(
            "SELECT table_name FROM information_schema.tables").fetchall()}
        rows = {name: _fetch(con, f"SELECT * FROM {name}") if name in present else []
                for name in (*ROW_QUERIES, "imported")}
        meta = _fetch(con, "SELECT * FROM snapshot_info")[0]
    finally:
        con.close()
    rows["consent_on"] = bool(meta["consent_on"])
    return rows


class TrainingManager:
    def __init__(self, store):
        self.store = store

    # --- reading -------------------------------------------------------------------------
    def rows(self, include_imported: bool = False) -> dict:
        """Consented training rows as plain dicts: ``messages``, ``feedback``,
        ``conversations``, ``imported`` (empty unless asked for), ``consent_on``."""
        if not self.store.consent.is_on("personalise"):
            return {**{name: [] for name in ROW_QUERIES}, "imported": [], "consent_on": False}
        self.store.flush()
        with self.store.reading():
            rows = _read_all(self.store._cursor(), include_imported)
        rows["consent_on"] = True
        return rows

    def write_snapshot(self, path: Path, key_hex: str, include_imported: bool = False) -> dict:
        """Write the consented rows into a new file encrypted under ``key_hex`` (on the
        writer thread: samples queued before it are in, the app never waits on it)."""
        path = Path(path)
        path.unlink(missing_ok=True)
        consent_on = self.store.consent.is_on("personalise")

        def write(con):
            con.execute(f"ATTACH '{quote(path)}' AS glance_snapshot (ENCRYPTION_KEY '{key_hex}')")
            counts = {}
            try:
                for name, sql in ROW_QUERIES.items():
                    where = "" if consent_on else " LIMIT 0"
                    con.execute(f"CREATE TABLE glance_snapshot.{name} AS SELECT * FROM ({sql}){where}")
                    counts[name] = con.execute(
                        f"SELECT count(*) FROM glance_snapshot.{name}").fetchone()[0]
                if include_imported and consent_on and _has_tables(con, IMPORTED_TABLES):
                    con.execute(f"CREATE TABLE glance_snapshot.imported AS {IMPORTED_QUERY}")
                else:
                    con.execute("CREATE TABLE glance_snapshot.imported (turn_id VARCHAR, "
                                "conversation_id VARCHAR, user_id VARCHAR, query VARCHAR, "
                                "left_id VARCHAR, left_text VARCHAR, right_id VARCHAR, "
                                "right_text VARCHAR, value DOUBLE)")
                counts["imported"] = con.execute(
                    "SELECT count(*) FROM glance_snapshot.imported").fetchone()[0]
                con.execute("CREATE TABLE glance_snapshot.snapshot_info AS SELECT ? AS consent_on, "
                            "? AS written_wall_ns", [consent_on, time.time_ns()])
            finally:
                con.execute("DETACH glance_snapshot")
            return counts
        counts = self.store.writer.call(write)
        path.chmod(0o600)
        return {"counts": counts, "consent_on": consent_on}

    def existing_conversations(self, ids) -> set[str]:
        ids = list(ids)
        if not ids:
            return set()
        rows = self.store._rows("SELECT id FROM conversations WHERE list_contains(?, id)", (ids,))
        return {row["id"] for row in rows}

    # --- runs ----------------------------------------------------------------------------
    def begin_run(self, run_id: str, via: str, base_model: str | None = None) -> str:
        """Record a run as started; runs left 'running' by a job that died become
        'interrupted' (the caller holds the training lock, so none is really running)."""
        now = time.time_ns()

        def begin(con):
            with transaction(con):
                con.execute("UPDATE training_runs SET status = 'interrupted', finished_wall_ns = ?, "
                            "message = coalesce(message, 'The job stopped before it finished.') "
                            "WHERE status = 'running'", [now])
                con.execute("INSERT INTO training_runs (id, started_wall_ns, status, via, base_model)"
                            " VALUES (?, ?, 'running', ?, ?)", [run_id, now, via, base_model])
        self.store.writer.call(begin)
        return run_id

    def finish_run(self, run_id: str, outcome: dict) -> None:
        """Record how a run ended: ``outcome`` holds status, message, pairs,
        pairs_by_source, fingerprint, base_model, adapter_version, published, report,
        started_wall_ns (used when the start was never recorded), pairs_used (list of
        dicts with the PAIR_COLUMNS minus run_id) and adapter (a row for
        adapter_versions, or None)."""
        status = outcome["status"]
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        now = time.time_ns()
        used = [tuple([run_id] + [pair.get(name) for name, _ in PAIR_COLUMNS[1:]])
                for pair in outcome.get("pairs_used") or []]
        if not self.store.consent.is_on("personalise"):
            used = []     # turned off while the run trained: which replies it paired goes too
        adapter = outcome.get("adapter")

        def finish(con):
            with transaction(con):
                con.execute("INSERT INTO training_runs (id, started_wall_ns, status) VALUES (?, ?, ?) "
                            "ON CONFLICT (id) DO NOTHING",
                            [run_id, outcome.get("started_wall_ns") or now, status])
                con.execute(
                    "UPDATE training_runs SET finished_wall_ns = ?, status = ?, via = coalesce(?, via), "
                    "base_model = coalesce(?, base_model), pairs = ?, pairs_by_source = ?, "
                    "fingerprint = ?, adapter_version = ?, published = ?, report = ?, message = ? "
                    "WHERE id = ?",
                    [now, status, outcome.get("via"), outcome.get("base_model"), outcome.get("pairs"),
                     json.dumps(outcome.get("pairs_by_source") or {}), outcome.get("fingerprint"),
                     outcome.get("adapter_version"), bool(outcome.get("published")),
                     json.dumps(outcome.get("report") or {}, default=str), outcome.get("message"),
                     run_id])
                if used:
                    columnar_insert(con, "training_pairs", PAIR_COLUMNS, used)
                    # A conversation deleted while the run trained (or while this record
                    # waited for the database) already had its rows removed; its pairs go
                    # too, so the adapter counts as having learned from a deleted
                    # conversation and retire_stale takes it out.
                    con.execute("DELETE FROM training_pairs WHERE run_id = ? AND source <> 'imported' "
                                "AND conversation_id NOT IN (SELECT id FROM conversations)", [run_id])
                if adapter:
                    con.execute(
                        "INSERT OR REPLACE INTO adapter_versions (version, run_id, created_wall_ns, "
                        "base_model, conversations, status, status_wall_ns, reason, report) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [adapter["version"], run_id, adapter.get("created_wall_ns") or now,
                         adapter.get("base_model"), adapter.get("conversations"),
                         adapter["status"], now, adapter.get("reason"),
                         json.dumps(adapter.get("report") or {}, default=str)])
        self.store.writer.call(finish)

    def runs(self, limit: int = 20) -> list[dict]:
        rows = self.store._rows("SELECT * FROM training_runs ORDER BY started_wall_ns DESC LIMIT ?",
                                (limit,))
        for row in rows:
            for key in ("pairs_by_source", "report"):
                row[key] = json.loads(row[key]) if row[key] else None
        return rows

    def last_fingerprint(self) -> str | None:
        """The pair set of the newest run that got as far as training (or found nothing
        new): the same set again means nothing new to learn."""
        rows = self.store._rows(
            "SELECT fingerprint FROM training_runs WHERE status IN "
            "('published', 'not_published', 'nothing_new') AND fingerprint IS NOT NULL "
            "ORDER BY started_wall_ns DESC LIMIT 1")
        return rows[0]["fingerprint"] if rows else None

    def pairs_used(self, run_id: str) -> list[dict]:
        return self.store._rows("SELECT * FROM training_pairs WHERE run_id = ? ORDER BY split, "
                                "chosen_message_id", (run_id,))

    # --- adapter versions ----------------------------------------------------------------
    def adapter_versions(self) -> list[dict]:
        rows = self.store._rows("SELECT * FROM adapter_versions ORDER BY created_wall_ns DESC")
        for row in rows:
            row["report"] = json.loads(row["report"]) if row["report"] else None
        return rows

    def set_adapter_status(self, version: str, status: str, reason: str | None = None) -> None:
        self.store._write("UPDATE adapter_versions SET status = ?, status_wall_ns = ?, reason = ? "
                          "WHERE version = ?", (status, time.time_ns(), reason, version))

    def stale_adapter_versions(self) -> list[str]:
        """Published versions trained on a conversation that has since been deleted:
        deletion removed that conversation's training_pairs rows, so fewer distinct
        conversations remain than the version recorded."""
        rows = self.store._rows(
            "SELECT a.version FROM adapter_versions a LEFT JOIN ("
            "  SELECT run_id, count(DISTINCT conversation_id) AS n FROM training_pairs"
            "  WHERE split = 'train' GROUP BY run_id) p ON p.run_id = a.run_id "
            "WHERE a.status = 'published' AND coalesce(p.n, 0) < coalesce(a.conversations, 0)")
        return [row["version"] for row in rows]
