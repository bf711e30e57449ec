"""File locks: one nightly job per data folder (the lock is released by the OS if the
process dies), and one checkpoint converter at a time. fcntl on Unix, msvcrt on Windows.
GUI-free and cheap to import: the app asks ``job_running`` before tidying training files."""
from __future__ import annotations

import os
from pathlib import Path

from feedback_store.locks import FileLock, HeldElsewhere, held_elsewhere

LOCK_FILE = Path("training") / "nightly.lock"   # under the data folder


class AlreadyRunning(RuntimeError):
    pass


class TrainingLock:
    """One nightly job at a time per data folder."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = FileLock(self.path, f"PID {os.getpid()}")

    def acquire(self) -> "TrainingLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except HeldElsewhere as held:
            raise AlreadyRunning(f"Another nightly training is running ({held.holder}); "
                                 "this one stops here. Try again when it has finished.") from None
        return self

    def release(self) -> None:
        self._lock.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def job_running(data_dir: Path) -> bool:
    """Whether a nightly job holds the training lock of ``data_dir`` now."""
    return held_elsewhere(Path(data_dir) / LOCK_FILE) is not None


def as_seen_now(runs: list[dict], data_dir: Path) -> list[dict]:
    """Runs as they stand now: one recorded as 'running' while no job holds the lock was
    stopped (Ctrl-C, a kill, a power cut) and is shown as interrupted, as the next run
    records it ("running" until then, in `glance doctor` and `align status`)."""
    if not any(run["status"] == "running" for run in runs) or job_running(data_dir):
        return runs
    return [dict(run, status="interrupted",
                 message=run.get("message") or "The job stopped before it finished.")
            if run["status"] == "running" else run for run in runs]
