"""``store.scores``: the reward model's judgement of each shown reply (align/scoring.py
computes it; migration 0006). A score is derived from reading samples and exists for
training, so it goes through the same door as samples under the personalisation
consent (never for an incognito or deleted conversation, refusals counted), and goes
with its conversation and with retention."""
from __future__ import annotations

import json
import time
from typing import NamedTuple


class ReplyScore(NamedTuple):
    """One row of ``reply_scores`` (its columns, in order, but the last)."""
    shown_reply_id: str
    message_id: str
    conversation_id: str
    previous_message_id: str | None
    model: str
    task: str
    probability: float
    contributions: str          # JSON [[feature, signed log-odds], ...]


class ScoreManager:
    def __init__(self, store):
        self.store = store

    def record(self, shown_reply_id: str, message_id: str, conversation_id: str,
               previous_message_id: str | None, model: str, task: str, probability: float,
               contributions: list[tuple[str, float]]) -> bool:
        """Queue one score (never waited for). False, and nothing written, when the
        store's door (``samples.admit``) refuses it."""
        row = ReplyScore(shown_reply_id, message_id, conversation_id, previous_message_id,
                         model, task, float(probability),
                         json.dumps([[name, round(value, 6)] for name, value in contributions]))
        if not self.store.samples.admit("personalise", [row]):
            return False
        values = [*row, time.time_ns()]
        deleted = self.store.conversations._deleted

        def insert(con):
            # Checked again on the writer's thread: the conversation may have been deleted
            # after the door let the score in (a deletion is queued before this runs).
            if conversation_id not in deleted:
                con.execute("INSERT INTO reply_scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            else:
                self.store.consent.count_refused("deleted", 1)
        self.store.writer.post(insert)
        return True

    def for_message(self, message_id: str) -> list[dict]:
        """Every score of a reply, newest first, contributions decoded."""
        rows = self.store._rows("SELECT * FROM reply_scores WHERE message_id = ? "
                                "ORDER BY scored_wall_ns DESC", (message_id,))
        for row in rows:
            row["contributions"] = json.loads(row["contributions"] or "[]")
        return rows
