"""Export and deletion: the user's data is theirs to take away or destroy."""
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import StoreError
from .keys import forget_key

EXPORT_TABLES = ("conversations", "messages", "app_sessions", "shown_replies", "feedback",
                 "pointer_samples", "gaze_samples", "consents", "models", "app_settings")


def export_all(store, destination: str | os.PathLike) -> Path:
    """Write every table as Parquet plus manifest.json into a new folder under
    ``destination``. Written to a hidden temporary folder first and renamed at the end,
    so a failure (unwritable, disk full) leaves no partial export behind."""
    destination = Path(destination).expanduser()
    try:
        destination.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".glance-export-", dir=destination))
    except OSError as error:
        raise StoreError(f"Cannot export to {destination}: {error.strerror or error}. "
                         "Choose a folder you can write to.") from error
    final = destination / time.strftime("glance-export-%Y%m%d-%H%M%S")
    try:
        store.flush()
        cursor = store._cursor()
        manifest = {"format": "glance-export", "version": 1, "created": time.time_ns(),
                    "schema_version": store.status()["schema_version"], "tables": {}}
        for table in EXPORT_TABLES:
            target = staging / f"{table}.parquet"
            cursor.execute(f"COPY (SELECT * FROM {table}) TO '{target}' (FORMAT parquet)")
            rows = cursor.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            manifest["tables"][table] = {"file": target.name, "rows": rows,
                                         "sha256": _sha256(target)}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if final.exists():
            final = final.with_name(final.name + f"-{os.getpid()}")
        staging.rename(final)
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)
        reason = getattr(error, "strerror", None) or str(error)
        raise StoreError(f"Export to {destination} failed ({reason}); nothing was left "
                         "behind. Free some space or choose another folder.") from error
    return final


def delete_everything(data_dir: Path, store=None) -> None:
    """Remove the database, adapters, caches and the key. Works without opening the
    database, so it is also the way out when the key is lost."""
    if store is not None:
        store.close()
    data_dir = Path(data_dir)
    if not data_dir.exists():
        return
    for child in data_dir.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    forget_key(data_dir)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
