"""File locks: one nightly job per data folder (the lock is released by the OS if the
process dies), and one checkpoint converter at a time. fcntl on Unix, msvcrt on Windows.
GUI-free and cheap to import: the app asks ``job_running`` before tidying training files."""
from __future__ import annotations

import os
from pathlib import Path

from feedback_store.locks import lock_file, unlock_file

LOCK_FILE = Path("training") / "nightly.lock"   # under the data folder


class AlreadyRunning(RuntimeError):
    pass


class TrainingLock:
    """One nightly job at a time per data folder (fcntl lock, released by the OS if the
    process dies)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = None

    def acquire(self) -> "TrainingLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        if not lock_file(handle, blocking=False):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise AlreadyRunning(f"Another nightly training is running ({holder}); "
                                 "this one stops here. Try again when it has finished.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()}")
        handle.flush()
        os.chmod(self.path, 0o600)
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            unlock_file(self._file)
            self._file.close()
            self._file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def job_running(data_dir: Path) -> bool:
    """Whether a nightly job holds the training lock of ``data_dir`` now."""
    path = Path(data_dir) / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        if not lock_file(handle, blocking=False):
            return True
        unlock_file(handle)
    return False
