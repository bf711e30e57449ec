"""Compaction with crypto-erase: after a deletion the database is rewritten into a fresh
file under a NEW key, and the old key is destroyed.

DuckDB reuses freed blocks but does not wipe them, and copies of old blocks can outlive
any overwrite (SSD remapping, backups, journaling). Re-encrypting under a new key and
destroying the old one makes every such leftover undecryptable.

The steps, in order, each safe to be killed after:
  stage_key    a new key is written durably beside the key in force
  copy_rows    every live row is copied into glance.compact.db under the new key
  write_fresh  ... and that file is complete and on disk (a failure before here, a full
               disk typically, leaves the old file and key in force and the store usable)
  detach_old   the old file is checkpointed and closed
  swap_file    glance.compact.db atomically replaces glance.db (fsynced)
  promote_key  the new key becomes the key in force; the old key is overwritten
  reattach     the store reopens the fresh file

``recover`` runs before every open and settles whatever a crash left: before the swap
the old file and old key are in force (the staged key and half-written copy are
discarded); after it the staged key opens the file and is promoted.
"""
import errno
import os
import shutil
from pathlib import Path

from .connection import quote
from .errors import StoreError, WrongKey
from .keys import (DatabaseKey, discard_staged_key, fsync_path, promote_staged_key,
                   stage_next_key, staged_key)

FRESH_FILE = "glance.compact.db"
# Set (in app_settings) with the deletion that needs a compaction at close, so a process
# killed before its close leaves the next one to do it; the compacted copy never has it.
PENDING_SETTING = "compaction_pending"
STEPS = ("stage_key", "copy_rows", "write_fresh", "detach_old", "swap_file", "promote_key", "reattach")


# Room kept free beyond the copy: the folder's other writers (the write-ahead log, spill
# files) go on while it is made.
SPARE_BYTES = 64 << 20


def check_room(data_dir: Path, path: Path) -> None:
    """Refuse (ENOSPC) a rewrite the disk has no room for: the checkpoint that begins it
    writes the log into the file, and the copy needs as much again. A checkpoint that
    fails for want of room makes DuckDB mark the open database unusable (every read
    fails, the privacy panel too, until a restart); refused, the compaction stays owed
    and the store goes on working."""
    log = path.with_name(path.name + ".wal")
    size = path.stat().st_size if path.exists() else 0
    log_size = log.stat().st_size if log.exists() else 0
    needed = size + 2 * log_size + SPARE_BYTES
    free = shutil.disk_usage(data_dir).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"No space left on device: rewriting the database needs "
                                    f"{needed >> 20} MiB free, {free >> 20} MiB are")


def _after_step(name: str) -> None:
    """Fault-injection point: tests replace this to kill the process after a step."""


def _remove_fresh(data_dir: Path) -> None:
    """The copy being written and DuckDB's files beside it: a kill during the copy left
    its write-ahead log, rows under a key that was then discarded."""
    fresh = data_dir / FRESH_FILE
    for leftover in (fresh, *(fresh.with_name(fresh.name + suffix)
                              for suffix in (".wal", ".checkpoint", ".recovery"))):
        leftover.unlink(missing_ok=True)


def rewrite(con, data_dir: Path, path: Path, key: DatabaseKey, alias: str) -> DatabaseKey:
    """Run on the writer thread (``con`` is the write connection, ``alias`` attached)."""
    fresh = data_dir / FRESH_FILE
    _remove_fresh(data_dir)
    check_room(data_dir, path)
    con.execute("CHECKPOINT")
    new_key = stage_next_key(data_dir, key.storage)
    _after_step("stage_key")

    try:
        con.execute(f"ATTACH '{quote(fresh)}' AS glance_fresh (ENCRYPTION_KEY '{new_key.hex}')")
        con.execute(f"COPY FROM DATABASE {alias} TO glance_fresh")
        _after_step("copy_rows")
        con.execute("DELETE FROM glance_fresh.app_settings WHERE key = ?", [PENDING_SETTING])
        rewrite_second_header(con, "glance_fresh")
        con.execute("DETACH glance_fresh")
        fsync_path(fresh)
    except BaseException:
        # (A full disk, typically: the copy needs as much room again.) The old file and
        # key stay in force and the store stays usable; left attached, the copy made
        # every later compaction of this session fail.
        _abandon_fresh(con, fresh, data_dir)
        raise
    _after_step("write_fresh")

    con.execute("USE memory")
    con.execute(f"DETACH {alias}")
    _after_step("detach_old")

    os.replace(fresh, path)
    path.with_name(path.name + ".wal").unlink(missing_ok=True)
    fsync_path(data_dir)
    _after_step("swap_file")

    in_force = promote_staged_key(data_dir, new_key)
    _after_step("promote_key")

    con.execute(f"ATTACH '{quote(path)}' AS {alias} (ENCRYPTION_KEY '{in_force.hex}')")
    con.execute(f"USE {alias}")
    _after_step("reattach")
    return in_force


def _abandon_fresh(con, fresh: Path, data_dir: Path) -> None:
    try:
        con.execute("DETACH DATABASE IF EXISTS glance_fresh")
    except Exception:  # noqa: BLE001 - cleaning up after the error being raised
        pass
    _remove_fresh(fresh.parent)
    discard_staged_key(data_dir)


def rewrite_second_header(con, alias: str) -> None:
    """DuckDB 1.5.5 leaves 4 unauthenticated bytes of uninitialised memory in each
    encrypted header; in a new file the second header holds 4 characters of the key
    string until a later checkpoint rewrites it (found by feedback_store/audit.py).
    One checkpoint plus one more write (checkpointed when the file closes) rewrites it."""
    con.execute(f"CHECKPOINT {alias}")
    con.execute(f"INSERT OR REPLACE INTO {alias}.app_settings VALUES "
                "('file_created_wall_ns', CAST(epoch_ns(now()) AS VARCHAR))")
    con.execute(f"CHECKPOINT {alias}")


def recover(data_dir: Path, path: Path, key: DatabaseKey, try_open) -> DatabaseKey:
    """Settle an interrupted compaction before the store opens. ``try_open(key_hex)``
    opens and closes the database, raising WrongKey when the key does not fit."""
    _remove_fresh(data_dir)
    staged = staged_key(data_dir, key.storage)
    if staged is None:
        return key
    try:
        try_open(key.hex)
    except WrongKey:
        # Killed after the swap, before the promotion: the staged key is in force.
        try:
            try_open(staged.hex)
        except WrongKey:
            raise StoreError(
                f"Neither the key in force nor the staged key opens {path}. The files were "
                "not touched. Restore the key from a backup, or reset with "
                "`glance data delete --all --yes`.") from None
        return promote_staged_key(data_dir, staged)
    discard_staged_key(data_dir)   # killed before the swap: the old file stands
    return key
