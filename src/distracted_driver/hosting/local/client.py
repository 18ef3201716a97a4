"""Talking to the runtime daemon: start it detached, call its control API, stop it.

The daemon is started in its own session (``start_new_session``) with its
output in ``runtime.log``, so it outlives the ``inv`` command that started it.
``runtime.json`` says where it listens; a file lock makes two commands that
start it at once share one daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import psutil

from distracted_driver.fsutil import log_tail, read_json
from distracted_driver.hosting.local.instances import OWNER_ENV, SERVER_MODULE
from distracted_driver.hosting.local.state import RuntimePaths

RUNTIME_MODULE = "distracted_driver.hosting.local.runtime"
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
    """JSON over HTTP to ``/_control/``; stdlib only, so any process can use it."""

    def __init__(self, url: str, timeout_s: float = 120.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/_control/{path.lstrip('/')}", data=data, method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                message = json.loads(payload).get("message", payload.decode(errors="replace"))
            except ValueError:
                message = payload.decode(errors="replace")
            raise RuntimeApiError(error.code, message) from None

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
        health = RuntimeClient(info["url"], timeout_s=5).get("health")
    except (OSError, RuntimeApiError):
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


def ensure_runtime(paths: RuntimePaths) -> RuntimeInfo:
    """The running daemon, started (detached) if there is none."""
    with start_lock(paths):
        info = running_runtime(paths)
        if info:
            return info
        with contextlib.suppress(FileNotFoundError):
            paths.runtime_file.unlink()
        with open(paths.log_file, "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", RUNTIME_MODULE, "--state-dir", str(paths.root.parent)],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True, close_fds=True, cwd=paths.root,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the runtime exited with code {process.returncode} at start; "
                    f"{paths.log_file} ends:\n{log_tail(paths.log_file, lines=8)}"
                )
            info = running_runtime(paths)
            if info and info.pid == process.pid:
                return info
            time.sleep(0.1)
        process.kill()
        raise RuntimeError(f"the runtime did not come up within {START_TIMEOUT_S:g} s; see {paths.log_file}")


def stop_runtime(paths: RuntimePaths) -> list[int]:
    """Stop the daemon (it drains and stops its instances) and anything of ours it left; returns pids killed."""
    killed = []
    info = read_json(paths.runtime_file)
    pid = info.get("pid") if info else None
    if pid and _alive(pid):
        with contextlib.suppress(OSError, RuntimeApiError):
            RuntimeClient(info["url"], timeout_s=10).post("shutdown")
        if not _wait_gone(pid, STOP_TIMEOUT_S):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # the daemon leads its session: this takes its instances too
            killed.append(pid)
            _wait_gone(pid, 5)
    killed += kill_orphans(paths)
    with contextlib.suppress(FileNotFoundError):
        paths.runtime_file.unlink()
    return killed


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def kill_orphans(paths: RuntimePaths) -> list[int]:
    """Model servers started by the runtime of these paths (found by their environment) that outlived it."""
    killed = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if SERVER_MODULE not in " ".join(process.info.get("cmdline") or []):
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
        "sagemaker-runtime", endpoint_url=url, region_name=region,
        aws_access_key_id="local", aws_secret_access_key="local",
        config=Config(retries={"mode": "standard", "max_attempts": 3}, read_timeout=70),
    )
