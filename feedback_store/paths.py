"""Where Glance keeps its files. GLANCE_HOME overrides every path."""
import os
import re
import sys
import tempfile
from pathlib import Path

import platformdirs

from .errors import DataDirIsAFile, DataDirUnwritable


def glance_home() -> Path:
    override = os.environ.get("GLANCE_HOME")
    if override:
        return Path(override).expanduser().resolve()
    return Path(platformdirs.user_data_dir("Glance", appauthor=False))


WRITE_PROBE_PREFIX = ".write-probe-"
# Files Glance makes at the top of its folder besides its glance.* files (the database,
# key, lock...). (The probe's name before 2026-12-07 without its dash.)
GLANCE_FILES = ("nightly.sock", ".write-probe")
# The glance.* files by their exact names: the database (and the copy a compaction makes)
# with DuckDB's files beside it, the key and the next key (and the files they are written
# to before being linked into place), the first key's lock, the note saying the key is in
# the keyring, the store's lock, and the temporary files atomic writes leave when killed.
# A prefix ("glance.") also took the user's own glance.txt, or a folder glance.backup
# with all it held, from a folder shared with them.
_GLANCE_NAME = re.compile(r"glance\.(?:(?:compact\.)?db(?:\.wal|\.checkpoint|\.recovery)?"
                          r"|key(?:\.next)?(?:\.\d+\.[0-9a-f]{8})?|key\.lock|keyring|lock)(?:\.tmp)?")


def is_glance_file(name: str) -> bool:
    """Whether a file at the top of the data folder is one Glance makes."""
    return bool(_GLANCE_NAME.fullmatch(name)) or name.startswith(WRITE_PROBE_PREFIX) \
        or name in GLANCE_FILES


def is_utf8(text: str) -> bool:
    """False for a str holding bytes the file system allowed but that are not UTF-8 (kept
    as surrogates): the database and the model take text only."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def output_reader_gone() -> int:
    """After a BrokenPipeError on stdout (`glance doctor | head -1`: the reader took what
    it wanted and closed the pipe; a traceback before): stdout goes to /dev/null, so the
    interpreter's last flush does not fail again, and the exit code is 1, as Python's
    documentation advises."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


def not_utf8_problem(args) -> str | None:
    """What to say when one of a command line's arguments (an argparse namespace), or
    GLANCE_HOME, is not UTF-8: a Latin-1 prompt, file name or folder passed on ended in a
    traceback."""
    named = [(f"--{name.replace('_', '-')}", value) for name, value in vars(args).items()]
    for name, value in named + [("GLANCE_HOME", os.environ.get("GLANCE_HOME"))]:
        if isinstance(value, str) and not is_utf8(value):
            return (f"{name} holds bytes that are not UTF-8 text (a name or text in another "
                    "encoding); give it as UTF-8.")
    return None


def refuse_a_file(path: Path) -> None:
    """A data folder that is a file (a mistyped GLANCE_HOME): said so. mkdir's "File
    exists" was reported as permissions to fix, and the lock check was a traceback."""
    if path.exists() and not path.is_dir():
        raise DataDirIsAFile(path)


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (0700) and check we can write in it."""
    refuse_a_file(path)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
        # A probe of its own: the app and the nightly job check the same folder at once,
        # and a shared name let one remove the other's probe (a false "unwritable").
        descriptor, probe = tempfile.mkstemp(prefix=WRITE_PROBE_PREFIX, dir=path)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise DataDirUnwritable(path, error.strerror or str(error)) from error
    return path


# --- start-up caches (``<data folder>/cache``) -----------------------------------------
# Small notes that save work at start (the verified encryption extension, model headers).
# Nothing of the user's is in them; they go with "delete everything" like the rest.

def read_cache_note(path: Path) -> str | None:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def write_cache_note(path: Path, text: str) -> None:
    """Best effort (without the note the work is simply done again), atomic (another
    Glance process may read it meanwhile), 0600 in a 0700 folder, and only inside an
    existing data folder: a cache never creates one."""
    path = Path(path)
    if not path.parent.parent.is_dir():
        return
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except OSError:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass          # a folder that refused the write may refuse this too
