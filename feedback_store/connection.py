"""Open the encrypted DuckDB file, offline, and turn DuckDB's errors into clear ones.

FACTS (measured here): only duckdb 1.5.5 + the httpfs extension from PyPI can write
encrypted files offline. Extension auto-install/-load must be off first, or DuckDB
looks up its extension server; temp files must be encrypted too, or spills are plaintext.
"""
import re
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import duckdb

from .errors import DatabaseLocked, StoreError, WrongKey
from .paths import read_cache_note, write_cache_note

ATTACH_ALIAS = "glance"


def httpfs_extension_path() -> Path:
    spec = find_spec("duckdb_extension_httpfs")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError(
            "The DuckDB httpfs extension package is missing, so the database cannot be "
            "encrypted. Reinstall Glance (scripts/bootstrap.sh)."
        )
    root = Path(spec.submodule_search_locations[0])
    found = sorted(root.glob(f"extensions/v{duckdb.__version__}/httpfs.duckdb_extension"))
    if not found:
        raise StoreError(
            f"No httpfs extension for duckdb {duckdb.__version__} under {root}; "
            "duckdb and duckdb-extension-httpfs must both be 1.5.5."
        )
    return found[0]


def connect(data_dir: Path, extension: Path | None = None,
            verified_note: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB, offline, able to read and write encrypted files. Each LOAD of
    httpfs costs its signature check (≈ 40 ms here), even twice in one process: connect
    once per open.
    ``verified_note`` (the store passes ``<data folder>/cache/httpfs-verified``) lets
    later opens skip the extension's signature check, see below; without it, every load
    is checked (snapshots and the nightly job's reads leave nothing behind)."""
    extension = extension or httpfs_extension_path()
    fingerprint = file_fingerprint(extension)
    # DuckDB checks the extension's RSA signature over all of its 21 MB on every LOAD
    # (≈ 40 ms of each start). It is checked in full the first time; later loads skip it
    # only while the file is the very one that passed (same inode, size, mtime and
    # ctime: any write or replacement changes the ctime, which no user can set back).
    trusted = verified_note is not None and read_cache_note(verified_note) == fingerprint
    config = {"allow_unsigned_extensions": True} if trusted else {}
    con = duckdb.connect(":memory:", config=config)
    try:
        con.execute("SET autoinstall_known_extensions=false")
        con.execute("SET autoload_known_extensions=false")
        con.execute(f"LOAD '{quote(extension)}'")
        con.execute("SET temp_file_encryption=true")
        # Spill files stay in the private data folder (DuckDB's default is ./.tmp).
        con.execute(f"SET temp_directory='{quote(Path(data_dir) / 'tmp')}'")
    except duckdb.Error as error:
        con.close()
        raise StoreError(f"DuckDB could not be set up for encrypted files: {error}") from error
    if verified_note is not None and not trusted:
        write_cache_note(verified_note, fingerprint)
    return con


VERIFIED_FILE = Path("cache") / "httpfs-verified"


def file_fingerprint(path: Path) -> str:
    stat = Path(path).stat()
    return (f"{Path(path).resolve()}|{stat.st_dev}|{stat.st_ino}|{stat.st_size}|"
            f"{stat.st_mtime_ns}|{stat.st_ctime_ns}")


def attach(con, path: Path, key_hex: str, read_only: bool = False) -> None:
    """Attach ``path`` (encrypted) as the store's database and select it."""
    options = f"ENCRYPTION_KEY '{key_hex}'" + (", READ_ONLY" if read_only else "")
    try:
        con.execute(f"ATTACH '{quote(path)}' AS {ATTACH_ALIAS} ({options})")
        con.execute(f"USE {ATTACH_ALIAS}")
    except duckdb.Error as error:
        raise translate(error, path) from error


def detach(con) -> None:
    con.execute("USE memory")
    con.execute(f"DETACH {ATTACH_ALIAS}")


def open_encrypted(path: Path, key_hex: str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with ``path`` attached (encrypted) and selected."""
    con = connect(Path(path).parent)
    try:
        attach(con, path, key_hex, read_only)
    except Exception:
        con.close()
        raise
    return con


def translate(error: Exception, path: Path) -> Exception:
    text = str(error)
    if "Wrong encryption key" in text:
        return WrongKey(path)
    if "AES tag" in text:
        # The key opened the header, so it is the right key: a block does not decrypt.
        return StoreError(
            f"The database {path} is damaged: part of it no longer decrypts with its key (a "
            "disk error, or the file was changed outside Glance). Nothing was changed. "
            "Restore a backup of the file, or reset with `glance data delete --all --yes` "
            "to start empty.")
    if "Could not set lock" in text or "Conflicting lock" in text:
        holder = re.search(r"Conflicting lock is held in (.+?\(PID \d+\))", text)
        return DatabaseLocked(path, holder.group(1).strip() if holder else "unknown process")
    return StoreError(f"Could not open the database {path}: {text}")


@contextmanager
def transaction(con):
    """``with transaction(con):`` BEGIN … COMMIT; any exception (interrupts included)
    rolls back and propagates, so a half-written change never stays."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def quote(path) -> str:
    """A path inside a single-quoted SQL string literal."""
    return str(path).replace("'", "''")
