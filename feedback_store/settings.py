"""``store.settings`` (app settings as JSON values) and ``store.models`` (the model list)."""
from __future__ import annotations

import json
import time

from .errors import StoreError

DEFAULT_RETENTION_DAYS = 90


class SettingsManager:
    """Read once at open, then served from memory; a change is queued to the writer, so
    setting a value never makes the caller wait and reading it back is immediate."""

    def __init__(self, store):
        self.store = store
        self._values = {row["key"]: json.loads(row["value"])
                        for row in store._rows("SELECT key, value FROM app_settings")}

    def get(self, key: str, default=None):
        return self._values.get(key, default)

    def set(self, key: str, value) -> None:
        encoded = json.dumps(value)
        self._values[key] = json.loads(encoded)
        self.store._post("INSERT OR REPLACE INTO app_settings VALUES (?, ?)", (key, encoded))

    @property
    def retention_days(self) -> int:
        return int(self.get("retention_days", DEFAULT_RETENTION_DAYS))

    def set_retention_days(self, days: int) -> None:
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise StoreError("Retention must be a whole number of days, at least one.")
        self.set("retention_days", days)


class ModelList:
    """Models the user added or downloaded, with their GGUF metadata."""

    def __init__(self, store):
        self.store = store

    def remember(self, info: dict) -> None:
        self.store._write(
            "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (info["path"], info.get("name"), info.get("architecture"),
             info.get("context_length"), info.get("chat_template"), info.get("size_bytes"),
             time.time_ns(), time.time_ns()))

    def list(self) -> list[dict]:
        return self.store._rows("SELECT * FROM models ORDER BY last_used_wall_ns DESC")

    def forget(self, path: str) -> None:
        self.store._write("DELETE FROM models WHERE path = ?", (path,))
