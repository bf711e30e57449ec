"""The database key: 256 random bits, in the OS keyring or, without one, a 0600 file.

Headless Linux has no keyring backend; ``keyrings.alt`` would silently keep secrets as
base64, so we never depend on it. Without a working keyring the key goes to
``<data dir>/glance.key`` (mode 0600) and the privacy panel says so.
"""
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import keyring
import keyring.errors

from .errors import KeyringLocked, MissingKey

KEYRING_SERVICE = "Glance"
KEY_FILE_NAME = "glance.key"


@dataclass(frozen=True)
class DatabaseKey:
    hex: str
    storage: str  # "keyring" or "file"


def _keyring_user(data_dir: Path) -> str:
    # One key per data folder, so GLANCE_HOME sandboxes never share a key.
    return f"database-key:{data_dir}"


def _read_keyring(data_dir: Path) -> str | None:
    try:
        return keyring.get_password(KEYRING_SERVICE, _keyring_user(data_dir))
    except keyring.errors.KeyringLocked as error:
        raise KeyringLocked() from error
    except keyring.errors.KeyringError:
        return None  # no backend: fall back to the file


def _write_keyring(data_dir: Path, value: str) -> bool:
    """Store the key; True only if reading it back gives the same value."""
    try:
        keyring.set_password(KEYRING_SERVICE, _keyring_user(data_dir), value)
        return keyring.get_password(KEYRING_SERVICE, _keyring_user(data_dir)) == value
    except keyring.errors.KeyringLocked as error:
        raise KeyringLocked() from error
    except keyring.errors.KeyringError:
        return False


def load_or_create_key(data_dir: Path, database_file: Path) -> DatabaseKey:
    key_file = data_dir / KEY_FILE_NAME
    if key_file.exists():
        return DatabaseKey(key_file.read_text().strip(), "file")
    stored = _read_keyring(data_dir)
    if stored:
        return DatabaseKey(stored, "keyring")
    if database_file.exists():
        # Never create a fresh key for an existing database: it would lock the user out.
        raise MissingKey(database_file)
    fresh = secrets.token_hex(32)
    if _write_keyring(data_dir, fresh):
        return DatabaseKey(fresh, "keyring")
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(fresh)
    return DatabaseKey(fresh, "file")


def forget_key(data_dir: Path) -> None:
    """Remove the key from wherever it is kept (used by 'delete everything')."""
    (data_dir / KEY_FILE_NAME).unlink(missing_ok=True)
    try:
        keyring.delete_password(KEYRING_SERVICE, _keyring_user(data_dir))
    except keyring.errors.KeyringError:
        pass
