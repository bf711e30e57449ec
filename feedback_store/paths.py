"""Where Glance keeps its files. GLANCE_HOME overrides every path."""
import os
from pathlib import Path

import platformdirs

from .errors import DataDirUnwritable


def glance_home() -> Path:
    override = os.environ.get("GLANCE_HOME")
    if override:
        return Path(override).expanduser().resolve()
    return Path(platformdirs.user_data_dir("Glance", appauthor=False))


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (0700) and check we can write in it."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
        probe = path / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise DataDirUnwritable(path, error.strerror or str(error)) from error
    return path
