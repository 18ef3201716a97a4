"""Talking to the runtime daemon: start it under supervision, call its control API, stop it.

The daemon runs as the ``runtime`` program of the state directory's
supervisord (``distracted_driver.supervision``), so it outlives the ``inv``
command that started it and is started again, from ``state.json``, when it
dies. ``runtime.json`` says where it listens; its control API is the Unix
socket ``control.sock`` (mode 0600); a file lock makes two commands that start
it at once share one daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from distracted_driver.fsutil import log_tail, read_json
from distracted_driver.hosting.local.instances import OWNER_ENV, SERVER_MODULE
from distracted_driver.hosting.local.state import RuntimePaths
from distracted_driver.httpserver import UnixHTTPConnection
from distracted_driver.logs import LogRotation
from distracted_driver.supervision import Program, Supervisor

RUNTIME_MODULE = "distracted_driver.hosting.local.runtime"
PROGRAM = "runtime"  # its name under supervisord
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0


class RuntimeApiError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"runtime answered {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RuntimeInfo:
    pid: int
    url: str
    log: str


class RuntimeClient:
    """JSON over HTTP to the control socket; stdlib only, so any process of this user can use it."""

    def __init__(self, socket_path: str | Path, timeout_s: float = 120.0):
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s

    @classmethod
    def of(cls, paths: RuntimePaths, timeout_s: float = 120.0) -> RuntimeClient:
        return cls(paths.control_socket, timeout_s)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        connection = UnixHTTPConnection(self.socket_path, self.timeout_s)
        try:
            connection.request(
                method,
                f"/{path.lstrip('/')}",
                body=data,
                headers={"Content-Type": "application/json"} if data is not None else {},
            )
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        if response.status >= 400:
            try:
                message = json.loads(payload).get("message", payload.decode(errors="replace"))
            except ValueError:
                message = payload.decode(errors="replace")
            raise RuntimeApiError(response.status, message)
        return json.loads(payload or b"{}")

    def get(self, path: str) -> dict:
        return self.call("GET", path)

    def post(self, path: str, body: dict | None = None) -> dict:
        return self.call("POST", path, body or {})

    def put(self, path: str, body: dict) -> dict:
        return self.call("PUT", path, body)

    def delete(self, path: str) -> dict:
        return self.call("DELETE", path)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def running_runtime(paths: RuntimePaths) -> RuntimeInfo | None:
    """The daemon that answers for these paths, or None."""
    info = read_json(paths.runtime_file)
    if not info or not _alive(info.get("pid", -1)):
        return None
    try:
        health = RuntimeClient.of(paths, timeout_s=5).get("health")
    except (OSError, ValueError, RuntimeApiError):
        return None
    if health.get("pid") != info["pid"]:
        return None
    return RuntimeInfo(info["pid"], info["url"], info.get("log", str(paths.log_file)))


@contextlib.contextmanager
def start_lock(paths: RuntimePaths):
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.start_lock, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def runtime_program(paths: RuntimePaths, log_rotation: LogRotation = LogRotation()) -> Program:
    return Program(
        PROGRAM,
        [
            sys.executable,
            "-m",
            RUNTIME_MODULE,
            "--state-dir",
            str(paths.root.parent),
            *log_rotation.arguments(paths.log_file),
        ],
        directory=paths.root,
        output_log=paths.output_file,
        stop_wait_s=STOP_TIMEOUT_S,
    )


def ensure_runtime(paths: RuntimePaths, log_rotation: LogRotation = LogRotation()) -> RuntimeInfo:
    """The running daemon, started under supervision if there is none."""
    with start_lock(paths):
        info = running_runtime(paths)
        if info:
            return info
        supervisor = Supervisor(paths.root.parent)
        supervisor.ensure(runtime_program(paths, log_rotation))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            info = running_runtime(paths)
            if info:
                return info
            program = supervisor.info(PROGRAM)
            if program is None or program["statename"] in ("FATAL", "STOPPED"):
                raise RuntimeError(
                    f"the runtime did not start: {supervisor.describe(PROGRAM)}; "
                    f"{paths.log_file} ends:\n{_tails(paths)}"
                )
            time.sleep(0.1)
        raise RuntimeError(
            f"the runtime did not come up within {START_TIMEOUT_S:g} s; {paths.log_file} ends:\n{_tails(paths)}"
        )


def _tails(paths: RuntimePaths) -> str:
    return "\n".join(tail for tail in (log_tail(paths.log_file, 8), log_tail(paths.output_file, 8)) if tail)


def supervision_of(paths: RuntimePaths) -> str:
    """What the supervisor does about the runtime now, in one line."""
    return Supervisor(paths.root.parent).describe(PROGRAM)


def stop_runtime(paths: RuntimePaths) -> list[int]:
    """Stop the daemon (it drains and stops its instances) and anything of ours it left; returns pids killed."""
    killed = []
    Supervisor(paths.root.parent).remove(PROGRAM, STOP_TIMEOUT_S)  # SIGTERM; its group is SIGKILLed past the wait
    info = read_json(paths.runtime_file)
    pid = info.get("pid") if info else None
    if pid and _alive(pid):  # a runtime started by hand, outside supervision
        with contextlib.suppress(OSError, RuntimeApiError):
            RuntimeClient.of(paths, timeout_s=10).post("shutdown")
        if not _wait_gone(pid, STOP_TIMEOUT_S):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)  # its instances are killed below (kill_orphans)
            killed.append(pid)
            _wait_gone(pid, 5)
    killed += kill_orphans(paths)
    for leftover in (paths.runtime_file, paths.control_socket):
        leftover.unlink(missing_ok=True)
    return killed


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def kill_orphans(paths: RuntimePaths, keep: frozenset[int] = frozenset()) -> list[int]:
    """Model servers started by a runtime of these paths (found by their environment) that outlived it,
    except the pids in ``keep``; returns the pids killed."""
    killed = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if process.info["pid"] in keep or SERVER_MODULE not in " ".join(process.info.get("cmdline") or []):
            continue
        with contextlib.suppress(psutil.Error):
            if process.environ().get(OWNER_ENV) == str(paths.root):
                process.kill()
                killed.append(process.info["pid"])
    return killed


def sagemaker_runtime_client(url: str, region: str = "us-east-1"):
    """boto3's own ``sagemaker-runtime`` client pointed at the local runtime (credentials are not checked)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name=region,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"mode": "standard", "max_attempts": 3}, read_timeout=70),
    )
