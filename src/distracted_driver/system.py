"""Facts about the machine the code runs on, and about its processes."""

from __future__ import annotations

import os
import socket

import psutil


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
