"""``store.consent``: decisions per signal, pause, and the refusal counters.

Refusals are counted in memory at once (the capture thread never waits) and persisted by
the writer after each sample flush, so another process's `glance data status` sees them.
"""
import threading
import time
from collections import Counter

from .errors import StoreError
from .signals import CONSENT_TEXT_VERSION, SIGNALS


class ConsentManager:
    def __init__(self, store):
        self.store = store
        self._decisions = self._load()
        self.paused = bool(store.settings.get("paused", False))
        self._pending: Counter = Counter()   # refusals not yet persisted
        self.on_refused = None               # fn() asking for them to be persisted soon
        self._lock = threading.Lock()
        self._persisted = {row["reason"]: row["rows"]
                           for row in store._rows("SELECT reason, rows FROM refusals")}

    def _load(self) -> dict:
        rows = self.store._rows(
            "SELECT signal, arg_max(granted, seq) AS granted, arg_max(at_wall_ns, seq) AS at, "
            "arg_max(text_version, seq) AS text_version FROM consents GROUP BY signal")
        return {row["signal"]: {"on": bool(row["granted"]), "at": row["at"],
                                "text_version": row["text_version"]} for row in rows}

    # --- decisions -------------------------------------------------------------------
    def decisions(self) -> dict:
        """signal -> {on, at, text_version} (None for a signal never decided)."""
        return {signal: self._decisions.get(signal) for signal in SIGNALS}

    def is_on(self, signal: str) -> bool:
        decision = self._decisions.get(signal)
        return bool(decision and decision["on"]
                    and decision["text_version"] == CONSENT_TEXT_VERSION)

    def needed(self) -> bool:
        """True when some signal has no decision made under the current consent text."""
        return any((self._decisions.get(s) or {}).get("text_version") != CONSENT_TEXT_VERSION
                   for s in SIGNALS)

    def set(self, signal: str, on: bool) -> None:
        if signal not in SIGNALS:
            raise StoreError(f"Unknown signal {signal!r}; choose one of: {', '.join(SIGNALS)}.")
        at = time.time_ns()
        # Queued: enforcement reads the in-memory decision, and samples accepted after
        # it reach the writer after this row, so no sample is stored before its consent.
        # Numbered in the order made (schema 9): the wall clock can be set back.
        self.store._post("INSERT INTO consents (signal, granted, at_wall_ns, text_version, seq) "
                         "SELECT ?, ?, ?, ?, coalesce(max(seq), 0) + 1 FROM consents",
                         (signal, bool(on), at, CONSENT_TEXT_VERSION))
        self._decisions[signal] = {"on": bool(on), "at": at, "text_version": CONSENT_TEXT_VERSION}

    def set_paused(self, paused: bool) -> None:
        """Pause all collection (kept across restarts until resumed)."""
        self.paused = bool(paused)
        self.store.settings.set("paused", self.paused)

    # --- refusals --------------------------------------------------------------------
    def count_refused(self, reason: str, rows: int) -> None:
        with self._lock:
            self._pending[reason] += rows
        if self.on_refused is not None:
            self.on_refused()      # (the writer saves them soon, samples written or not)

    @property
    def refused(self) -> Counter:
        """Every refusal ever counted in this database, by reason."""
        with self._lock:
            return Counter(self._persisted) + self._pending

    def persist_refusals(self, con) -> None:
        """Writer-thread hook: fold pending counts into the refusals table."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
        if not pending:
            return
        now = time.time_ns()
        for reason, rows in pending.items():
            con.execute("INSERT INTO refusals VALUES (?, ?, ?) ON CONFLICT (reason) DO UPDATE "
                        "SET rows = refusals.rows + excluded.rows, "
                        "updated_wall_ns = excluded.updated_wall_ns", [reason, rows, now])
        with self._lock:
            for reason, rows in pending.items():
                self._persisted[reason] = self._persisted.get(reason, 0) + rows
