"""Facts about the machine the code runs on, and about its processes."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import tempfile
from pathlib import Path

import psutil

MAX_UNIX_PATH = 107  # sun_path holds 108 bytes, the last one a NUL
# Servers bind under a staging name first: supervisord at "<path>.<pid>" (a pid has up to 7
# digits), our own at ".<name>.tmp". A socket path must leave room for the longer of them.
SOCKET_STAGING_ROOM = 8


def cpu_count() -> int:
    """Cores this process may use (its affinity mask, which a container or taskset may narrow), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def process_identity(pid: int | None = None) -> dict:
    """Who a process is, for a record another process may check later: host, pid and the pid's start time."""
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "pid": pid, "pid_started": process_start_time(pid)}


def process_start_time(pid: int) -> float:
    """When ``pid`` started (seconds since the epoch), 0.0 when there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def process_gone(host: str | None, pid: int | None, pid_started: float | None) -> str:
    """Why the process a record names is certainly gone, or "" while it may still run.

    Only a process of this host can be checked; a reused pid is told apart by its start time.
    """
    if not pid or host != socket.gethostname():
        return ""
    try:
        process = psutil.Process(pid)
        started, zombie = process.create_time(), process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return f"pid {pid} is gone"
    except psutil.Error:  # another user's process: it exists
        return ""
    if zombie:
        return f"pid {pid} is gone (it has exited)"
    if pid_started and abs(started - pid_started) > 1.0:
        return f"pid {pid} is gone (the number now belongs to another process)"
    return ""


def unix_socket_path(path: Path) -> Path:
    """Where the socket meant to be at ``path`` really lives: ``path`` itself when it fits a Unix socket address.

    A state directory nested deep (a CI runner's temporary directory) makes the address longer
    than the kernel takes. Then the socket lives in this user's private directory under the
    system's temporary directory, named by a hash of ``path``, so that every process asking for
    ``path`` finds the same socket.
    """
    if len(str(path).encode()) + SOCKET_STAGING_ROOM <= MAX_UNIX_PATH:
        return path
    directory = Path(tempfile.gettempdir()) / f"distracted-driver-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{directory} must be a directory of this user that only this user can open; remove it")
    digest = hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:24]
    return directory / f"{digest}-{path.name}"
