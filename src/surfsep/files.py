"""Atomic file output: write to a temporary file in the target folder, then rename over the target.

A reader never sees a half-written file, and a killed process leaves at most a hidden temporary
file behind. Files get the usual mode for new files (0666 minus the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


LOCK_FILE = ".lock"

# Characters of the target's name kept in its temporary name (at most 4 bytes each in UTF-8), so the
# temporary name stays within the usual 255-byte limit: mkstemp adds 8 characters and the suffix 4.
NAME_PREFIX = 32


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A short prefix keeps the temporary name within the file system's limit when ``path``'s name is long.
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name[:NAME_PREFIX]}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=1) + "\n").encode())


def try_lock(folder: Path) -> IO | None:
    """Create ``folder`` and take the exclusive lock of its lock file without waiting.

    Returns the open lock file, whose closing releases the lock, or None when another process holds
    it. The operating system releases the lock when the process ends, however it ends.
    """
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle
