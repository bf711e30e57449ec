"""``store.scores``: the reward model's judgement of each shown reply (align/scoring.py
computes it; migration 0006). A score is derived from reading samples and exists for
training, so it is kept only with the personalisation consent, never for an incognito or
deleted conversation, and goes with its conversation and with retention."""
from __future__ import annotations

import json
import time


class ScoreManager:
    def __init__(self, store):
        self.store = store

    def record(self, shown_reply_id: str, message_id: str, conversation_id: str,
               previous_message_id: str | None, model: str, task: str, probability: float,
               contributions: list[tuple[str, float]]) -> bool:
        """Queue one score (never waited for). False, and nothing written, without the
        personalisation consent, while paused, or for an incognito or deleted conversation."""
        consent = self.store.consent
        conversations = self.store.conversations
        if (not consent.is_on("personalise") or consent.paused
                or conversation_id in conversations._incognito
                or conversation_id in conversations._deleted):
            return False
        self.store._post(
            "INSERT INTO reply_scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (shown_reply_id, message_id, conversation_id, previous_message_id, model, task,
             float(probability), json.dumps([[name, round(value, 6)] for name, value in contributions]),
             time.time_ns()))
        return True

    def for_message(self, message_id: str) -> list[dict]:
        """Every score of a reply, newest first, contributions decoded."""
        rows = self.store._rows("SELECT * FROM reply_scores WHERE message_id = ? "
                                "ORDER BY scored_wall_ns DESC", (message_id,))
        for row in rows:
            row["contributions"] = json.loads(row["contributions"] or "[]")
        return rows
