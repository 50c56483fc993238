"""Files that hold secrets: private folders, private files written atomically.

Folders are 0700; files are created 0600 under a temporary name (O_EXCL, so
nothing planted there is followed), fsynced and renamed over the target, so a
crash leaves the old file or the new one and a symlink at the target is
replaced, never written through.
"""

from __future__ import annotations

import os
import tempfile


def ensure_private_dir(path: str) -> None:
    """Create ``path`` (and parents) with mode 0700 and tighten it if it exists."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def write_private_file(path: str, data: bytes) -> None:
    """Replace ``path`` atomically by a new 0600 file holding ``data``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lm-", suffix=".tmp")  # O_EXCL, mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
