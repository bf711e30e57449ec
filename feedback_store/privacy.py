"""Export and deletion: the user's data is theirs to take away or destroy."""
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import duckdb

from . import tables
from .connection import quote, translate
from .errors import DatabaseLocked, StoreError, interrupted
from .keys import forget_key
from .locks import STORE_LOCK_FILE, held_elsewhere
from .paths import is_glance_file


def export_all(store, destination: str | os.PathLike, progress=None) -> Path:
    """Write every table as Parquet plus manifest.json into a new folder under
    ``destination``. Written to a hidden temporary folder first and renamed at the end,
    so a failure (unwritable, disk full, Ctrl-C) leaves no partial export behind."""
    destination = Path(destination).expanduser()
    if destination.exists() and not destination.is_dir():
        raise StoreError(f"Cannot export to {destination}: it is a file, not a folder. "
                         "Choose a folder (it is created if it does not exist).")
    home = Path(store.data_dir).resolve()
    if destination.resolve() == home or home in destination.resolve().parents:
        # An export there is not encrypted, and "delete everything" takes the folder for
        # one shared with the user's own files: it would stay.
        raise StoreError(f"Cannot export into Glance's data folder {home}: the export is not "
                         "encrypted and must live somewhere you choose. Choose another folder.")
    try:
        destination.mkdir(parents=True, exist_ok=True)
        # An export killed half-way (there is no cleaning up after a kill) left plain
        # copies of some tables here: the next export to this folder removes them.
        for stale in destination.glob(".glance-export-*"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".glance-export-", dir=destination))
    except OSError as error:
        raise StoreError(f"Cannot export to {destination}: {error.strerror or error}. "
                         "Choose a folder you can write to.") from error
    final = destination / time.strftime("glance-export-%Y%m%d-%H%M%S")
    try:
        store.flush()
        manifest = {"format": "glance-export", "version": 1, "created": time.time_ns(),
                    "schema_version": store.schema_version(), "tables": {}}
        exported = tables.exported_tables()
        for index, table in enumerate(exported):
            target = staging / f"{table.name}.parquet"
            with store.reading():
                cursor = store._cursor()
                cursor.execute(f"COPY (SELECT * FROM {table.name}) TO '{quote(target)}' "
                               "(FORMAT parquet)")
                rows = cursor.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0]
            manifest["tables"][table.name] = {"file": target.name, "rows": rows,
                                              "sha256": _sha256(target)}
            if progress is not None:
                progress(index + 1, len(exported))
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if final.exists():
            final = final.with_name(final.name + f"-{os.getpid()}")
        staging.rename(final)
    except BaseException as error:          # Ctrl-C too: no partial plain copy stays
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(error, Exception) or interrupted(error):   # (Ctrl-C during a query)
            raise
        reason = getattr(error, "strerror", None) or str(error)
        raise StoreError(f"Export to {destination} failed ({reason}); nothing was left "
                         "behind. Free some space or choose another folder.") from error
    return final


# What Glance itself makes in its data folder: the database and its key (glance.db,
# .wal, glance.compact.db, glance.key, glance.key.next, ...), these files, and these
# folders with what Glance puts in them. GLANCE_HOME may name a folder that also holds
# the user's own files (a typo, or their home folder); those are never Glance's to delete.
GLANCE_FOLDERS = {
    "adapters": ("active.json", "v[0-9]*", ".staging-*", ".pending-*", ".active.json.*",
                 ".active.lock", ".retired-*"),
    "cache": ("gguf-headers.json*", "httpfs-verified*", "hf", "*.tmp"),
    "gaze": ("calibration-*.json", "*.tmp"),
    "models": ("*.gguf", "*.gguf.part", "*.gguf.part.json"),
    "reward": ("reward-*.json*",),
    "tmp": ("duckdb_temp*", "*.tmp", "*.block"),
    "training": ("nightly.lock", "settings.json", "work", "snapshots", "*.tmp"),
}


def is_glance_entry(path: Path, shared: bool = False) -> bool:
    """Whether Glance made ``path`` (a top-level entry of its data folder). In a folder
    shared with other files, a folder of Glance's name counts only if all it holds looks
    like Glance's, and ``models`` never does (a user's own models folder looks the same)."""
    name = path.name
    if is_glance_file(name):
        return not path.is_dir() or path.is_symlink()     # a folder is never by a file's name
    if name not in GLANCE_FOLDERS or not path.is_dir() or path.is_symlink():
        return False
    if not shared:
        return True
    if name == "models":
        return False
    patterns = GLANCE_FOLDERS[name]
    return all(any(fnmatch.fnmatch(child.name, pattern) for pattern in patterns)
               for child in path.iterdir())


def delete_everything(data_dir: Path, store=None) -> list[Path]:
    """Remove the database, adapters, caches and the key. Works without opening the
    database, so it is also the way out when the key is lost. Returns what was left
    because Glance did not make it (nothing, in a folder only Glance uses)."""
    if store is not None:
        try:
            store.close(save=False)
        except Exception:  # noqa: BLE001 - a store that fails to close is deleted all the same
            pass           # (whatever else holds the folder is found just below)
    data_dir = Path(data_dir)
    if not data_dir.exists():
        return []
    if not data_dir.is_dir():
        raise StoreError(f"{data_dir} is a file, not a Glance data folder: nothing was deleted.")
    _refuse_if_in_use(data_dir / "glance.db")
    # The key first: it is overwritten before it is unlinked (unlinked first, as the
    # loop below would, its bytes stayed in free blocks beside the deleted database).
    forget_key(data_dir)
    children = sorted(data_dir.iterdir())
    shared = not all(is_glance_entry(child) for child in children)
    kept = []
    for child in children:
        if not is_glance_entry(child, shared):
            kept.append(child)
        elif child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return kept


def _refuse_if_in_use(path: Path) -> None:
    """Another process (the running app, a command) has the database open: deleting the
    files under it would leave it writing into unlinked files and creating new ones
    beside a deleted key, i.e. half-deleted. Refuse, naming it; nothing is deleted.
    Needs no key: DuckDB checks the file lock before the encryption."""
    holder = held_elsewhere(path.with_name(STORE_LOCK_FILE))
    if holder is not None:
        raise DatabaseLocked(path, holder)
    if not path.exists():
        return
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET autoinstall_known_extensions=false")
        con.execute("SET autoload_known_extensions=false")
        con.execute(f"ATTACH '{quote(path)}' AS in_use_probe (READ_ONLY)")
    except duckdb.Error as error:
        refusal = translate(error, path)
        if isinstance(refusal, DatabaseLocked):
            raise refusal from None
    finally:
        con.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
