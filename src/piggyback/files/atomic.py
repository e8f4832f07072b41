"""Writing files atomically: readers see the old file or the whole new one, never a
partial one (a crash, a full disk or a kill mid-write leaves the previous file).

The new content goes to a temporary file beside the target (same file system), is
flushed to disk, then renamed over the target. A failed write removes the temporary
file and raises ``WriteError`` naming the target; a SIGKILL mid-write can leave a
``.<name>.<random>.tmp`` beside it, which nothing reads and which is safe to delete.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# fsync is not supported everywhere (some FUSE and network file systems): there the
# rename still makes the write atomic for readers, only not durable across a power cut.
_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


class WriteError(OSError):
    """An output could not be written; the previous file at that path is unchanged.
    ``errno`` is the cause's, where it had one (ENOSPC, EACCES...)."""

    def __init__(self, path: Path, cause: Exception):
        self.message = (
            f"cannot write {path} ({_describe(cause)}); the previous file, if any, is unchanged"
        )
        super().__init__(self.message)
        self.errno = getattr(cause, "errno", None)
        self.filename = str(path)

    def __str__(self) -> str:  # OSError's would be "[Errno N] None: path"
        return self.message


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _current_umask()  # read once, at import: os.umask is process-wide


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over
    ``path``. Any failure (full disk, no permission, a writer error) raises
    ``WriteError`` and leaves ``path`` as it was and no temporary file behind.

    The new file gets the mode of the file it replaces, or the usual mode for a new
    file (0666 less the umask), not the owner-only mode of a temporary file."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        os.chmod(tmp, _mode_for(path))
        _fsync(tmp)
        os.replace(tmp, path)
        tmp = None
    except Exception as error:
        raise WriteError(path, error) from error
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    _fsync(path.parent, strict=False)  # the rename, durable; the new file is in place anyway


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def atomic_move(source: Path, destination: Path) -> None:
    """Rename ``source`` to ``destination``; across file systems, copy atomically."""
    Path(destination).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, destination)
    except OSError:
        atomic_write(destination, lambda tmp: shutil.copyfile(source, tmp))
        Path(source).unlink()


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def _fsync(path: Path, strict: bool = True) -> None:
    """Flush a file's (or, not strict, a folder's) content to disk where the file
    system can; not strict, any failure is ignored."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError as error:
        if strict and error.errno not in _FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _describe(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {error}"
