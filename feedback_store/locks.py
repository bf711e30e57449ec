"""An exclusive lock on an open file, released by the OS if the process dies: fcntl on
Unix, msvcrt on Windows. (The nightly job's lock in align.locks uses these too.)"""
import os
import sys
from pathlib import Path

# Held by the one process that has the store open, from before anything is touched (the
# recovery of an interrupted compaction, the key) until after the file is closed.
# DuckDB's own lock on glance.db comes too late for the recovery, which would delete the
# half-written file of a compaction running in another process, and is not held between
# the compaction's swap and reattach.
STORE_LOCK_FILE = "glance.lock"


def lock_file(handle, blocking: bool) -> bool:
    """An exclusive lock on an open file (fcntl; msvcrt on Windows). False if taken."""
    try:
        import fcntl
    except ImportError:                      # Windows
        import msvcrt
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def unlock_file(handle) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(handle, fcntl.LOCK_UN)


class HeldElsewhere(Exception):
    """The lock is held by another process (or another open in this one)."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


class FileLock:
    """An exclusive lock held through an open file, released by the OS if the process dies.
    The file names its holder, so whoever finds it taken can say who has it."""

    def __init__(self, path: Path, holder: str):
        self.path = Path(path)
        self.holder = holder
        self._file = None

    def acquire(self) -> "FileLock":
        handle = open(self.path, "a+")
        if not lock_file(handle, blocking=False):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise HeldElsewhere(holder)
        handle.seek(0)
        handle.truncate()
        handle.write(self.holder)
        handle.flush()
        os.chmod(self.path, 0o600)
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.truncate(0)          # nobody holds it now (before letting go)
            self._file.flush()
            unlock_file(self._file)
            self._file.close()
            self._file = None


def held_elsewhere(path: Path) -> str | None:
    """Who holds the lock on ``path`` now (None: nobody, or no such file)."""
    try:
        handle = open(path, "r")
    except (FileNotFoundError, NotADirectoryError):     # (no folder, or a file named as one)
        return None
    with handle:
        if lock_file(handle, blocking=False):
            unlock_file(handle)
            return None
        return handle.read().strip() or "another process"


def this_process() -> str:
    """How a lock names this process: the command and its PID."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if not name or name.startswith("-"):          # python -c / -m
        name = Path(sys.executable).name
    return f"{name} (PID {os.getpid()})"
