"""The database key: 256 random bits, in the OS keyring or, without one, a 0600 file.

Headless Linux has no keyring backend; ``keyrings.alt`` would silently keep secrets as
base64, so we never depend on it. Without a working keyring the key goes to
``<data dir>/glance.key`` (mode 0600) and the privacy panel says so.

Key rotation (crypto-erase after a deletion) uses a *staged* next key kept beside the
key in force (``glance.key.next`` or a second keyring entry) while the database is
rewritten under it. Whatever point a crash interrupts, the database opens with one of
the two, and the open promotes or discards the staged key (see compaction.py).
"""
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from .errors import DamagedKey, KeyringKeepsKey, KeyringLocked, KeyringUnavailable, MissingKey
from .locks import lock_file, unlock_file

KEYRING_SERVICE = "Glance"
KEY_FILE_NAME = "glance.key"
NEXT_KEY_FILE_NAME = "glance.key.next"
FIRST_KEY_LOCK = "glance.key.lock"   # only while a fresh folder's first key is made
# Says the key is in the keyring (no secret in it): without it, a keyring that cannot be
# reached (ssh, cron, before login) looked the same as a lost key, and the advice was to
# reset, i.e. to delete data whose key was safe.
KEYRING_NOTE = "glance.keyring"


@dataclass(frozen=True)
class DatabaseKey:
    hex: str
    storage: str  # "keyring" or "file"


def _keyring():
    """The keyring package, imported when first needed: with a key file (headless
    machines) an ordinary open never asks the keyring, and importing it costs ≈ 20 ms of
    every start."""
    import keyring
    import keyring.errors
    return keyring


def _keyring_user(data_dir: Path, staged: bool = False) -> str:
    # One key per data folder, so GLANCE_HOME sandboxes never share a key.
    return f"database-key{'-next' if staged else ''}:{data_dir}"


def _read_keyring(data_dir: Path, staged: bool = False) -> str | None:
    keyring = _keyring()
    try:
        return keyring.get_password(KEYRING_SERVICE, _keyring_user(data_dir, staged))
    except keyring.errors.KeyringLocked as error:
        raise KeyringLocked() from error
    except keyring.errors.KeyringError:
        return None  # no backend: fall back to the file


def _write_keyring(data_dir: Path, value: str, staged: bool = False) -> bool:
    """Store the key; True only if reading it back gives the same value."""
    user = _keyring_user(data_dir, staged)
    keyring = _keyring()
    try:
        keyring.set_password(KEYRING_SERVICE, user, value)
        return keyring.get_password(KEYRING_SERVICE, user) == value
    except keyring.errors.KeyringLocked as error:
        raise KeyringLocked() from error
    except keyring.errors.KeyringError:
        return False


def _keyring_problem(data_dir: Path) -> str | None:
    """Why the keyring cannot be asked now (None: it answers)."""
    keyring = _keyring()
    try:
        keyring.get_password(KEYRING_SERVICE, _keyring_user(data_dir))
    except keyring.errors.KeyringError as error:
        return str(error) or type(error).__name__
    return None


def _note_key_in_keyring(data_dir: Path, in_keyring: bool) -> None:
    note = data_dir / KEYRING_NOTE
    if in_keyring and not note.exists():
        _write_synced(note, f"The database key of this folder is in the system keyring "
                            f"(service {KEYRING_SERVICE!r}, user {_keyring_user(data_dir)!r}).\n")
    elif not in_keyring:
        note.unlink(missing_ok=True)


def _delete_keyring(data_dir: Path, staged: bool = False) -> str | None:
    """Remove the key's keyring entry; None when it is gone (or was never there), else
    why it may still be there: the keyring was locked, or out of reach while the folder's
    note says the key is in it. Compactions pass over that (their key is rewritten
    anyway); *delete everything* must not (``forget_key``)."""
    keyring = _keyring()
    try:
        keyring.delete_password(KEYRING_SERVICE, _keyring_user(data_dir, staged))
    except keyring.errors.PasswordDeleteError:
        pass
    except keyring.errors.KeyringError as error:
        if isinstance(error, keyring.errors.KeyringLocked) or (data_dir / KEYRING_NOTE).exists():
            return str(error) or type(error).__name__
    return None


def _write_synced(path: Path, value: str, exclusive: bool = False) -> None:
    """A 0600 file, synced; ``exclusive``: never over one that exists (FileExistsError)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
        handle.flush()
        os.fsync(handle.fileno())


def _write_file_durably(path: Path, value: str) -> None:
    """Write a 0600 file and fsync it and its folder, so a crash cannot lose it."""
    temporary = path.with_name(path.name + ".tmp")
    _write_synced(temporary, value)
    os.replace(temporary, path)
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: so a rename in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _shred_file(path: Path) -> None:
    """Overwrite a key file in place before it is replaced or removed. Best effort: on
    journaling or copy-on-write file systems and SSDs the old bytes may survive."""
    try:
        size = path.stat().st_size
        with open(path, "r+b") as handle:
            # Random hex of the same shape: a half-finished rotation then reads as a
            # wrong key (and recovery tries the staged one), never as garbage.
            handle.write(secrets.token_hex(max(size, 64) // 2 + 1).encode()[:max(size, 64)])
            handle.flush()
            os.fsync(handle.fileno())
    except FileNotFoundError:
        pass


def _read_key_file(key_file: Path, database_file: Path) -> DatabaseKey:
    # Checked before use: anything else would reach DuckDB's ATTACH as SQL text.
    text = key_file.read_bytes().strip()
    if not re.fullmatch(rb"[0-9a-f]{64}", text):
        raise DamagedKey(key_file, database_file)
    return DatabaseKey(text.decode(), "file")


def load_or_create_key(data_dir: Path, database_file: Path) -> DatabaseKey:
    key = _existing_key(data_dir, database_file)
    if key is not None:
        return key
    # The first key is made by one process at a time. Two Glance processes starting on a
    # fresh folder (the app and a command, or the nightly job) each made one: with a
    # keyring the second overwrote the first's, and the database the first made with it
    # could never be opened again.
    lock_path = data_dir / FIRST_KEY_LOCK
    with open(lock_path, "a+") as lock:
        lock_file(lock, blocking=True)
        try:
            key = _existing_key(data_dir, database_file)     # made meanwhile
            if key is not None:
                return key
            if database_file.exists():
                # Never create a fresh key for an existing database: it would lock the
                # user out. (Its key is made before it, under this lock: it is lost,
                # unless it is in a keyring that cannot be reached from here.)
                problem = ((data_dir / KEYRING_NOTE).exists() and _keyring_problem(data_dir))
                if problem:
                    raise KeyringUnavailable(database_file, problem)
                raise MissingKey(database_file)
            return _create_key(data_dir, database_file)
        finally:
            # Gone once the key is there: a process still waiting on this file finds
            # the key when it gets the lock, and a later one never needs it.
            try:
                lock_path.unlink(missing_ok=True)
            except OSError:
                pass                     # (Windows: not while open; it is harmless)
            unlock_file(lock)


def _existing_key(data_dir: Path, database_file: Path) -> DatabaseKey | None:
    key_file = data_dir / KEY_FILE_NAME
    if key_file.exists():
        return _read_key_file(key_file, database_file)
    stored = _read_keyring(data_dir)
    if not stored:
        return None
    _note_key_in_keyring(data_dir, True)      # (folders made before the note existed)
    return DatabaseKey(stored, "keyring")


def _create_key(data_dir: Path, database_file: Path) -> DatabaseKey:
    fresh = secrets.token_hex(32)
    if _write_keyring(data_dir, fresh):
        _note_key_in_keyring(data_dir, True)
        return DatabaseKey(fresh, "keyring")
    try:
        _create_key_file(data_dir / KEY_FILE_NAME, fresh)
    except FileExistsError:             # (made by an older Glance, which takes no lock)
        return _read_key_file(data_dir / KEY_FILE_NAME, database_file)
    fsync_path(data_dir)
    return DatabaseKey(fresh, "file")


def _create_key_file(key_file: Path, value: str) -> None:
    """Create the key file, never over one that exists (FileExistsError). Written beside
    it and linked into place, so another process never reads it half written; where the
    file system has no links (FAT, some network mounts), created in place."""
    temporary = key_file.with_name(f"{key_file.name}.{os.getpid()}.{secrets.token_hex(4)}")
    _write_synced(temporary, value)
    try:
        os.link(temporary, key_file)
        return
    except FileExistsError:
        raise
    except OSError:
        pass
    finally:
        temporary.unlink()
    _write_synced(key_file, value, exclusive=True)


# --- rotation ---------------------------------------------------------------------------
def stage_next_key(data_dir: Path, storage: str) -> DatabaseKey:
    """Create the key the rewritten database will use, durably, beside the current one."""
    fresh = secrets.token_hex(32)
    if storage == "keyring" and _write_keyring(data_dir, fresh, staged=True):
        return DatabaseKey(fresh, "keyring")
    _write_file_durably(data_dir / NEXT_KEY_FILE_NAME, fresh)
    return DatabaseKey(fresh, "file")


def staged_key(data_dir: Path, storage: str) -> DatabaseKey | None:
    """The key a compaction staged, if one was interrupted. Only a database whose key is
    in the keyring stages its next key there (``stage_next_key``), so with a key file
    the keyring is never asked: importing it alone costs ≈ 45 ms of every start."""
    path = data_dir / NEXT_KEY_FILE_NAME
    if path.exists():
        return DatabaseKey(path.read_text().strip(), "file")
    if storage != "keyring":
        return None
    stored = _read_keyring(data_dir, staged=True)
    return DatabaseKey(stored, "keyring") if stored else None


def promote_staged_key(data_dir: Path, staged: DatabaseKey) -> DatabaseKey:
    """The staged key becomes the key in force and the old key is destroyed: blocks of
    the old file that survive anywhere can no longer be decrypted."""
    key_file = data_dir / KEY_FILE_NAME
    if staged.storage == "keyring":
        if not _write_keyring(data_dir, staged.hex):
            raise KeyringLocked()
        _shred_file(key_file)
        key_file.unlink(missing_ok=True)
        _delete_keyring(data_dir, staged=True)
        _note_key_in_keyring(data_dir, True)
        return DatabaseKey(staged.hex, "keyring")
    _shred_file(key_file)
    os.replace(data_dir / NEXT_KEY_FILE_NAME, key_file)
    fsync_path(data_dir)
    _delete_keyring(data_dir)  # a key file now rules; never leave an older keyring copy
    _note_key_in_keyring(data_dir, False)
    return DatabaseKey(staged.hex, "file")


def discard_staged_key(data_dir: Path) -> None:
    path = data_dir / NEXT_KEY_FILE_NAME
    if path.exists():
        _shred_file(path)
        path.unlink()
    _delete_keyring(data_dir, staged=True)


def forget_key(data_dir: Path) -> None:
    """Remove the key from wherever it is kept (used by 'delete everything'). The keyring
    first: if it keeps the key (``KeyringKeepsKey``: a backup of the database would still
    open with it), nothing else has been touched."""
    for staged in (False, True):
        kept = _delete_keyring(data_dir, staged)
        if kept:
            raise KeyringKeepsKey(kept)
    for name in (KEY_FILE_NAME, NEXT_KEY_FILE_NAME):
        _shred_file(data_dir / name)
        (data_dir / name).unlink(missing_ok=True)
    _note_key_in_keyring(data_dir, False)
