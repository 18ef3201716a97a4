"""Start, stop and describe the local API gateway as a detached process.

Everything it keeps is under ``<state_dir>/gateway/``: ``gateway.pid``,
``gateway.log``, ``gateway.json`` (URL, endpoint, runtime URL, usage plan),
``api_keys.json`` and ``settings.json`` (the usage plan and port last asked
for, reused by the next ``api.up``).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from distracted_driver.config import Settings
from distracted_driver.fsutil import log_tail, read_json, write_json_atomic
from distracted_driver.gateway.keys import KeyStore, UsagePlan

DEFAULT_PORT = 8088
MODULE = "distracted_driver.gateway.app"


class GatewayError(RuntimeError):
    """The gateway cannot start or be reached; the message says what to do."""


def gateway_dir(settings: Settings) -> Path:
    return Path(settings.state_dir) / "gateway"


def key_store(settings: Settings) -> KeyStore:
    return KeyStore(gateway_dir(settings) / "api_keys.json")


def create_api_key(settings: Settings, name: str = "default") -> dict:
    return key_store(settings).create(name)


def default_api_key(settings: Settings) -> dict:
    """The first key there is; one is created when there is none."""
    store = key_store(settings)
    return store.first() or store.create("default")


def runtime_url_of(settings: Settings) -> str:
    """The local SageMaker Runtime URL of the running endpoint, from the hosting status."""
    from distracted_driver.hosting import open_hosting

    status = open_hosting(settings).status()
    url = status.get("runtime_url")
    if not url:
        raise GatewayError(
            f"no endpoint {settings.endpoint_name!r} is running (hosting status has no runtime_url); "
            "deploy a model first (inv deploy.create, or make demo), or pass --runtime-url"
        )
    return url


def start_gateway(
    settings: Settings,
    runtime_url: str | None = None,
    port: int | None = None,
    plan: UsagePlan | None = None,
    timeout_s: float = 30.0,
) -> dict:
    """Start the gateway daemon (or keep the running one if nothing changed); returns its status."""
    saved = _saved_settings(settings)
    plan = plan or saved_plan(settings)
    port = saved.get("port", DEFAULT_PORT) if port is None else port
    runtime_url = runtime_url or runtime_url_of(settings)
    default_api_key(settings)
    current = gateway_status(settings)
    if current["running"]:
        if current["runtime_url"] == runtime_url and current["plan"] == plan.to_dict():
            return {**current, "note": "already running"}
        stop_gateway(settings)
    write_json_atomic(gateway_dir(settings) / "settings.json", {"plan": plan.to_dict(), "port": port})
    note = ""
    if port and not _port_free(port):
        note = f"port {port} is in use; picked a free one"
        port = 0
    process = _spawn(settings, runtime_url, port, plan)
    state = _wait_ready(settings, process, timeout_s)
    write_json_atomic(
        _state_file(settings),
        {**state, "endpoint": settings.endpoint_name, "runtime_url": runtime_url, "plan": plan.to_dict(),
         "started": time.time()},
    )
    return {**gateway_status(settings), **({"note": note} if note else {})}


def saved_plan(settings: Settings) -> UsagePlan:
    """The usage plan the last ``api.up`` asked for (defaults the first time)."""
    return UsagePlan.from_dict(_saved_settings(settings).get("plan", {}))


def stop_gateway(settings: Settings, timeout_s: float = 10.0) -> bool:
    """Stop the daemon if it runs; True when one was stopped."""
    process = _process(settings)
    stopped = False
    if process is not None:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except psutil.TimeoutExpired:
                process.kill()
                process.wait(5)
        stopped = True
    for path in (_pid_file(settings), _state_file(settings)):
        path.unlink(missing_ok=True)
    return stopped


def gateway_status(settings: Settings) -> dict:
    """``running``, ``url``, ``api_key``, ``endpoint``, ``runtime_url``, ``plan``, ``pid``, ``log``."""
    process = _process(settings)
    state = read_json(_state_file(settings)) if process else {}
    key = key_store(settings).first()
    running = bool(process) and bool(state) and _healthy(state.get("url"))
    return {
        "running": running,
        "url": state.get("url") if running else None,
        "predict_url": f"{state['url']}/predict" if running else None,
        "docs_url": f"{state['url']}/docs" if running else None,
        "api_key": key["value"] if key else None,
        "endpoint": state.get("endpoint", settings.endpoint_name),
        "runtime_url": state.get("runtime_url"),
        "plan": state.get("plan"),
        "pid": process.pid if process else None,
        "log": str(_log_file(settings)),
    }


# --- internals ---------------------------------------------------------------


def _spawn(settings: Settings, runtime_url: str, port: int, plan: UsagePlan) -> subprocess.Popen:
    directory = gateway_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    ready = directory / "ready.json"
    ready.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", MODULE,
        "--runtime-url", runtime_url,
        "--endpoint", settings.endpoint_name,
        "--keys", str(directory / "api_keys.json"),
        "--port", str(port),
        "--rate", str(plan.rate),
        "--burst", str(plan.burst),
        "--ready-file", str(ready),
    ]
    if not plan.require_key:
        command.append("--no-require-key")
    with open(_log_file(settings), "ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=settings.root, start_new_session=True,  # outlives the command that started it
        )
    _pid_file(settings).write_text(f"{process.pid}\n")
    return process


def _wait_ready(settings: Settings, process: subprocess.Popen, timeout_s: float) -> dict:
    ready = gateway_dir(settings) / "ready.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _pid_file(settings).unlink(missing_ok=True)
            raise GatewayError(f"the gateway exited with {process.returncode}:\n{log_tail(_log_file(settings))}")
        state = read_json(ready)
        if state and _healthy(state["url"]):
            return state
        time.sleep(0.1)
    process.terminate()
    process.wait(10)
    _pid_file(settings).unlink(missing_ok=True)
    raise GatewayError(f"the gateway did not come up within {timeout_s:.0f} s:\n{log_tail(_log_file(settings))}")


def _process(settings: Settings) -> psutil.Process | None:
    """The daemon named by the pid file, if that pid is still our gateway (not a reused pid)."""
    try:
        pid = int(_pid_file(settings).read_text().strip())
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE or MODULE not in " ".join(process.cmdline()):
            return None
        return process
    except (FileNotFoundError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _healthy(url: str | None) -> bool:
    if not url:
        return False
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _saved_settings(settings: Settings) -> dict:
    return read_json(gateway_dir(settings) / "settings.json") or {}


def _log_file(settings: Settings) -> Path:
    return gateway_dir(settings) / "gateway.log"


def _pid_file(settings: Settings) -> Path:
    return gateway_dir(settings) / "gateway.pid"


def _state_file(settings: Settings) -> Path:
    return gateway_dir(settings) / "gateway.json"
