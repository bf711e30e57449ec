"""The single writer: one thread owns the write connection.

Producers never touch DuckDB. Calls that must be durable before the UI moves on
(messages, consents, deletions) wait for their commit; high-rate samples are queued
without waiting, buffered, and flushed in one transaction per table at least every
``flush_interval_s``. The queue is bounded: when it is full a sample batch is refused
and counted, never silently lost.

The thread cannot die: whatever a batch or a call raises is caught, counted and kept in
``failures``/``last_failure``; a call's exception goes back to its caller. A caller never
waits forever: if the thread is gone, ``call`` raises instead of blocking.
"""
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, TimeoutError as FutureTimeout

import duckdb
import numpy as np

from .errors import StoreError

_STOP = object()
_WAKE = object()      # flush_soon's wake-up: nothing to do but the timer
_INT_NULL = np.iinfo(np.int64).min


class WriterStopped(StoreError):
    def __init__(self):
        super().__init__("The database writer has stopped (the store was closed). "
                         "Restart Glance; nothing already saved is lost.")


def columnar_insert(con: duckdb.DuckDBPyConnection, table: str, columns: tuple[tuple[str, str], ...],
                    rows: list[tuple]) -> None:
    """Insert rows as typed numpy columns: DuckDB scans them ~1000x faster than
    executemany (which commits per row) or object arrays (analysed value by value).
    NULLs travel as sentinels ('' / int64 min / NaN) and are restored in SQL."""
    values = list(zip(*rows))
    batch, select = {}, []
    for index, (name, sql_type) in enumerate(columns):
        column = values[index]
        if sql_type == "VARCHAR":
            batch[name] = np.array(["" if v is None else str(v) for v in column], dtype=str)
            select.append(f"nullif({name}, '')")
        elif sql_type == "BOOLEAN":
            batch[name] = np.array([-1 if v is None else int(v) for v in column], dtype=np.int8)
            select.append(f"nullif({name}, -1)::BOOLEAN")
        elif sql_type == "DOUBLE":
            batch[name] = np.array([np.nan if v is None else v for v in column], dtype=np.float64)
            select.append(f"if(isnan({name}), NULL, {name})")
        else:  # BIGINT / INTEGER
            batch[name] = np.array([_INT_NULL if v is None else v for v in column], dtype=np.int64)
            select.append(f"nullif({name}, {_INT_NULL})")
    con.register("sample_batch", batch)
    try:
        con.execute(f"INSERT INTO {table} ({', '.join(n for n, _ in columns)}) "
                    f"SELECT {', '.join(select)} FROM sample_batch")
    finally:
        con.unregister("sample_batch")


def _valid(row) -> bool:
    from .samples import MalformedSample, check
    try:
        check(row)
        return True
    except MalformedSample:
        return False


class Writer(threading.Thread):
    def __init__(self, con: duckdb.DuckDBPyConnection, capacity: int = 4096,
                 flush_interval_s: float = 0.25):
        super().__init__(name="glance-store-writer", daemon=True)
        self.con = con
        self.queue: queue.Queue = queue.Queue(maxsize=capacity)
        self.flush_interval_s = flush_interval_s
        self.dropped_full = 0            # sample rows refused because the queue was full
        self.written = defaultdict(int)  # table -> sample rows written
        self.failed_rows = defaultdict(int)  # table -> sample rows that could not be written
        self.failures = 0                # batches or posted jobs that raised
        self.last_failure: str | None = None
        self.on_flush = None             # optional fn(con) run after each sample flush
        # Optional fn(table, columns, rows) -> the rows still to write, run on this thread
        # right before they are inserted, i.e. after every call queued before them (e.g.
        # their conversation's deletion).
        self.keep_rows = None
        self._buffer: dict[str, tuple[tuple, list[list[tuple]]]] = {}
        self._last_flush = time.monotonic()
        self._stopping = False
        self._flush_owed = False
        self.max_queued_rows = 500_000     # ≈ 10 s at 50 k samples/s; ≈ 150 MB at most
        self._queued_rows = 0
        self._rows_lock = threading.Lock()

    # --- producers -------------------------------------------------------------------
    def call(self, fn, *args):
        """Run ``fn(con, *args)`` on the writer thread and wait for its result."""
        if not self.is_alive() or self._stopping:
            raise WriterStopped()
        future: Future = Future()
        self.queue.put((fn, args, future))
        while True:
            try:
                return future.result(timeout=1.0)
            except FutureTimeout:
                if not self.is_alive():
                    raise WriterStopped() from None

    def post(self, fn, *args) -> None:
        """Queue ``fn(con, *args)`` without waiting for it to run. Never dropped: when the
        queue is full (the writer far behind) this waits for room rather than lose a
        consent or a thumb."""
        if not self.is_alive() or self._stopping:
            raise WriterStopped()
        self.queue.put((fn, args, None))

    @property
    def accepting(self) -> bool:
        return self.is_alive() and not self._stopping

    def submit_samples(self, table: str, columns: tuple, rows: list[tuple]) -> bool:
        """Queue rows without waiting. Memory is bounded in rows, not only in queue items:
        past ``max_queued_rows`` waiting to be written, a batch is refused and counted.
        Refused once the writer is closing (queued behind its stop, they were lost while
        this said they were taken)."""
        with self._rows_lock:
            if not self.accepting:
                return False
            if self._queued_rows + len(rows) > self.max_queued_rows:
                self.dropped_full += len(rows)
                return False
            try:
                self.queue.put_nowait(("samples", table, columns, rows))
            except queue.Full:
                self.dropped_full += len(rows)
                return False
            self._queued_rows += len(rows)
            return True

    def flush_soon(self) -> None:
        """Run the flush hook (``on_flush``: the refusal counts) within a flush interval
        even when no sample is buffered: with a consent off every sample is refused and
        none buffered, and the counts waited in memory for the close (a kill lost them)."""
        if self._flush_owed or not self.accepting:
            return
        self._flush_owed = True
        try:
            self.queue.put_nowait(_WAKE)
        except queue.Full:
            pass                  # (the items waiting wake it as well)

    def flush(self) -> None:
        """Wait until every sample submitted so far is committed."""
        self.call(lambda con: None)

    def close(self) -> None:
        if self.is_alive():
            with self._rows_lock:     # (no batch is queued behind the stop)
                self._stopping = True
            self.queue.put(_STOP)
            self.join()

    # --- the thread ------------------------------------------------------------------
    def run(self) -> None:
        while True:
            timeout = max(0.0, self.flush_interval_s - (time.monotonic() - self._last_flush))
            try:
                item = self.queue.get(timeout=timeout if self._buffer or self._flush_owed else None)
            except queue.Empty:
                self._flush_samples()
                continue
            if item is _STOP:
                self._flush_samples()
                return
            if item is _WAKE:
                continue
            try:
                self._handle(item)
            except BaseException as error:  # noqa: BLE001 - the writer must outlive any item
                self._record_failure(error)

    def _handle(self, item) -> None:
        if item[0] == "samples":
            _, table, columns, rows = item
            self._buffer.setdefault(table, (columns, []))[1].append(rows)
            if time.monotonic() - self._last_flush >= self.flush_interval_s:
                self._flush_samples()
            return
        fn, args, future = item
        # Samples queued before this call are committed first: a call never
        # overtakes data submitted earlier (deletion relies on it).
        self._flush_samples()
        if future is None:
            fn(self.con, *args)
            return
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(self.con, *args))
        except BaseException as error:  # handed to the caller, who decides
            future.set_exception(error)

    def _flush_samples(self) -> None:
        self._last_flush = time.monotonic()
        owed, self._flush_owed = self._flush_owed, False
        if not self._buffer:
            if owed:
                self._on_flush()
            return
        buffered, self._buffer = self._buffer, {}
        with self._rows_lock:
            self._queued_rows -= sum(len(c) for _, chunks in buffered.values() for c in chunks)
        for table, (columns, chunks) in buffered.items():
            rows = [r for chunk in chunks for r in chunk]
            if self.keep_rows is not None:
                try:
                    rows = self.keep_rows(table, columns, rows)
                except BaseException as error:  # noqa: BLE001 - keep them, say so
                    self._record_failure(error)
                if not rows:
                    continue
            try:
                columnar_insert(self.con, table, columns, rows)
                self.written[table] += len(rows)
            except BaseException as error:  # noqa: BLE001
                # One bad row must not cost the others: keep the rows that pass the
                # field check, count the rest.
                self._record_failure(error)
                good = [r for r in rows if _valid(r)]
                self.failed_rows[table] += len(rows) - len(good)
                if good:
                    try:
                        columnar_insert(self.con, table, columns, good)
                        self.written[table] += len(good)
                    except BaseException as second:  # noqa: BLE001
                        self._record_failure(second)
                        self.failed_rows[table] += len(good)
        self._on_flush()

    def _on_flush(self) -> None:
        if self.on_flush is not None:
            try:
                self.on_flush(self.con)
            except BaseException as error:  # noqa: BLE001
                self._record_failure(error)

    def _record_failure(self, error: BaseException) -> None:
        self.failures += 1
        self.last_failure = f"{type(error).__name__}: {error}"
        try:  # a failed statement can leave a transaction open; never keep it
            self.con.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - there was no transaction
            pass
