"""Errors a user can see. Each message says what happened and what to do."""


class StoreError(Exception):
    """Base class: str(error) is a sentence fit for a dialog or the terminal."""


class DatabaseLocked(StoreError):
    def __init__(self, path, holder: str):
        super().__init__(
            f"The Glance database {path} is in use by another process ({holder}). "
            "Close the other Glance window or command and try again."
        )
        self.holder = holder


class SchemaTooNew(StoreError):
    def __init__(self, path, found: int, known: int):
        super().__init__(
            f"The database {path} was written by a newer Glance (schema version {found}; "
            f"this version knows up to {known}). Nothing was changed. "
            "Update Glance to open it."
        )
        self.found, self.known = found, known


class WrongKey(StoreError):
    def __init__(self, path):
        super().__init__(
            f"The encryption key does not open {path}. The database was not touched. "
            "Restore the key that belongs to it (keyring entry or glance.key file), "
            "or reset with `glance data delete --all --yes` to start empty."
        )


class DamagedKey(WrongKey):
    """The key file holds something that is not a key (Glance writes 64 hex digits)."""

    def __init__(self, key_file, path):
        StoreError.__init__(
            self,
            f"The key file {key_file} is damaged: it does not hold a database key (64 "
            f"hexadecimal digits). Neither it nor the database {path} was touched. Restore "
            "the key file from a backup, or reset with `glance data delete --all --yes` to "
            "start empty."
        )


class MissingKey(StoreError):
    def __init__(self, path):
        super().__init__(
            f"The database {path} is encrypted but its key is missing from the keyring "
            "and from the key file. The database was not touched. Restore the key, "
            "or reset with `glance data delete --all --yes` to start empty."
        )


class KeyringLocked(StoreError):
    def __init__(self):
        super().__init__(
            "The system keyring is locked, so Glance cannot read its database key. "
            "Unlock the keyring (log in to your desktop session) and start Glance again."
        )


class KeyringUnavailable(StoreError):
    def __init__(self, path, reason: str):
        super().__init__(
            f"The key of the database {path} is kept in the system keyring, which cannot be "
            f"reached from here ({reason}). Nothing was changed, and the key is not lost. "
            "Run Glance in your desktop session (not over ssh, cron or before you log in), "
            "or start the keyring service."
        )


class KeyringKeepsKey(StoreError):
    def __init__(self, reason: str):
        super().__init__(
            f"The database key is in the system keyring, which could not remove it ({reason}), "
            "and a copy of the database (a backup) would still open with it. Nothing was "
            "deleted. Unlock the keyring (or do this in your desktop session) and delete "
            "everything again."
        )


class DataDirUnwritable(StoreError):
    def __init__(self, path, reason: str):
        super().__init__(
            f"Glance cannot write to its data folder {path} ({reason}). "
            "Fix its permissions or set GLANCE_HOME to a folder you own."
        )


class DataDirIsAFile(StoreError):
    def __init__(self, path):
        super().__init__(f"Glance's data folder {path} is a file, not a folder: set GLANCE_HOME "
                         "to a folder (Glance makes it if it does not exist).")


class NoGlanceData(StoreError):
    """No database in the folder: a command that only reads (or refuses) would otherwise
    make one, and a key, in a folder Glance was never used in or was emptied by *Delete
    everything*."""

    def __init__(self, data_dir):
        super().__init__(f"There is no Glance data in {data_dir} yet (Glance was not used "
                         "with this data folder, or everything was deleted).")
        self.data_dir = data_dir


class ConsentRequired(StoreError):
    """Raised only where a caller asks for a strict write; samples are counted instead."""


class UnknownConversation(StoreError):
    def __init__(self, conversation_id: str):
        super().__init__(f"No conversation with id {conversation_id!r}. "
                         "List the ids with `glance conversations`.")
        self.conversation_id = conversation_id


def permission_message(error: PermissionError) -> str:
    """One line for a file or folder the user's account may not read or write (a data
    folder owned by another account, or with its permissions changed)."""
    where = error.filename or "a file Glance needs"
    return (f"no permission to use {where} ({error.strerror or error}). Fix its permissions, "
            "or set GLANCE_HOME to a folder you own.")


def interrupted(error: BaseException) -> bool:
    """Whether ``error`` is Ctrl-C: raised as KeyboardInterrupt, or, when it came during a
    query, as DuckDB's "Query interrupted" RuntimeError (a command then said an export
    failed for want of space, or ended in a traceback)."""
    return isinstance(error, KeyboardInterrupt) or (
        isinstance(error, RuntimeError) and str(error).startswith("Query interrupted"))
