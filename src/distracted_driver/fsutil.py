"""File helpers: atomic writes (an interrupted job never leaves a half-written output), JSON and log reads."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# Read once at import: os.umask can only be read by setting it, which races with other threads.
_FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_path(target: str | Path, mode: int | None = None):
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success.

    The result gets ``mode``, or by default what a plain ``open()`` would give under the umask.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; give the result the mode a plain open() would have.
        os.chmod(tmp, _FILE_MODE if mode is None else mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# What a write can fail with that is about the place written to, not the data.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


@contextlib.contextmanager
def naming_failed_writes(path: str | Path):
    """A failed write (a full disk, a file-size limit) inside the block names ``path``, and only once.

    A file object's write or flush raises such an error without a file name, and
    each close that follows raises it again, chained to the first; what leaves
    this block is one error that says where.
    """
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno in _WRITE_ERRNOS:
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise


def write_bytes_atomic(target: str | Path, data: bytes) -> None:
    with naming_failed_writes(target), atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: str | Path, value) -> None:
    write_bytes_atomic(target, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> dict | None:
    """A JSON file, or None when it does not exist or is unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def log_tail(path: str | Path, lines: int = 20) -> str:
    """The last lines of a log file ("" when there is none), to quote in an error."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
