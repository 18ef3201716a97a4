"""Start, stop and describe the local API gateway, a program of the state directory's supervisor.

The supervisor (``distracted_driver.supervision``) starts the gateway again
at once if it dies, on the port it had. Everything the gateway keeps is under
``<state_dir>/gateway/``: ``ready.json`` (URL, port and pid, written by the
running gateway), ``gateway.log`` (its log, one line per request, rotated),
``gateway.out`` (what it wrote outside its log: a crash), ``gateway.json``
(endpoint, runtime URL, usage plan), ``api_keys.json`` and ``settings.json``
(the usage plan and port last asked for, reused by the next ``api.up``).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from distracted_driver.config import Settings
from distracted_driver.fsutil import log_tail, read_json, write_json_atomic
from distracted_driver.gateway.keys import KeyStore, UsagePlan
from distracted_driver.hosting import open_hosting
from distracted_driver.logs import LogRotation
from distracted_driver.supervision import Program, Supervisor

DEFAULT_PORT = 8088
MODULE = "distracted_driver.gateway.app"
PROGRAM = "gateway"  # its name under supervisord
STOP_WAIT_S = 10.0


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
    url = open_hosting(settings).status().runtime_url
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
    log_rotation: LogRotation = LogRotation(),
) -> dict:
    """Start the gateway under supervision (or keep the running one if nothing changed); returns its status."""
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
    _ready_file(settings).unlink(missing_ok=True)  # a fresh start takes the port asked for, not the last one
    Supervisor(settings.state_dir).ensure(_program(settings, runtime_url, port, plan, log_rotation))
    state = _wait_ready(settings, timeout_s)
    write_json_atomic(
        _state_file(settings),
        {
            **state,
            "endpoint": settings.endpoint_name,
            "runtime_url": runtime_url,
            "plan": plan.to_dict(),
            "started": time.time(),
        },
    )
    return {**gateway_status(settings), **({"note": note} if note else {})}


def saved_plan(settings: Settings) -> UsagePlan:
    """The usage plan the last ``api.up`` asked for (defaults the first time)."""
    return UsagePlan.from_dict(_saved_settings(settings).get("plan", {}))


def stop_gateway(settings: Settings, timeout_s: float = STOP_WAIT_S) -> bool:
    """Stop the gateway if it runs (and take it from supervision); True when one was stopped."""
    stopped = Supervisor(settings.state_dir).remove(PROGRAM, timeout_s)
    process = _process(settings)
    if process is not None:  # one started outside supervision
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except psutil.TimeoutExpired:
                process.kill()
                process.wait(5)
        stopped = True
    for path in (_ready_file(settings), _state_file(settings)):
        path.unlink(missing_ok=True)
    return stopped


def gateway_status(settings: Settings) -> dict:
    """``running`` (the process answers), ``healthy`` (and the endpoint behind it serves), ``problem`` when
    it does not, ``url``, ``api_key``, ``endpoint``, ``runtime_url``, ``plan``, ``pid``, ``log``, ``supervisor``."""
    process = _process(settings)
    ready = read_json(_ready_file(settings)) or {}
    state = read_json(_state_file(settings)) or {}
    health = _health(ready.get("url")) if process else None
    running = health is not None
    healthy = running and health[0] == 200
    key = key_store(settings).first()
    url = ready.get("url") if running else None
    return {
        "running": running,
        "healthy": healthy,
        "problem": None if healthy else (health[1].get("message") if running else "the gateway is not running"),
        "url": url,
        "predict_url": f"{url}/predict" if url else None,
        "docs_url": f"{url}/docs" if url else None,
        "api_key": key["value"] if key else None,
        "endpoint": state.get("endpoint", settings.endpoint_name),
        "runtime_url": state.get("runtime_url"),
        "endpoint_health": health[1].get("endpoint_health") if running else None,
        "plan": state.get("plan"),
        "pid": process.pid if process else None,
        "log": str(_log_file(settings)),
        "supervisor": Supervisor(settings.state_dir).describe(PROGRAM),
    }


def started_lines(status: dict) -> list[str]:
    """``inv api.up``: where the API is, its docs, a key, and a request to try."""
    return [
        f"API up at {status['url']} ({status.get('note') or 'started'}; pid {status['pid']}, log {status['log']})",
        f"  docs:    {status['docs_url']}",
        f"  API key: {status['api_key']}",
        f"  try:     curl -s -X POST {status['predict_url']} -H 'x-api-key: {status['api_key']}' "
        "-H 'Content-Type: image/jpeg' --data-binary @IMAGE.jpg",
    ]


def status_lines(status: dict) -> list[str]:
    """``inv api.status``: where the API is, whether the endpoint behind it serves, a key to call it with."""
    if not status["running"]:
        return [f"API not running (supervisor: gateway {status['supervisor']}); start it with: inv api.up"]
    lines = [f"API running at {status['url']} -> endpoint {status['endpoint']} via {status['runtime_url']}"]
    if not status["healthy"]:
        lines.append(f"  but the endpoint does not serve: {status['problem']}")
    return lines + [
        f"  API key {status['api_key']}; throttle {status['plan']}; log {status['log']}",
        f"  supervisor: gateway {status['supervisor']}",
    ]


# --- internals ---------------------------------------------------------------


def _program(settings: Settings, runtime_url: str, port: int, plan: UsagePlan, log_rotation: LogRotation) -> Program:
    directory = gateway_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        MODULE,
        "--runtime-url",
        runtime_url,
        "--endpoint",
        settings.endpoint_name,
        "--keys",
        str(directory / "api_keys.json"),
        "--port",
        str(port),
        "--rate",
        str(plan.rate),
        "--burst",
        str(plan.burst),
        "--ready-file",
        str(_ready_file(settings)),
        *log_rotation.arguments(_log_file(settings)),
    ]
    if not plan.require_key:
        command.append("--no-require-key")
    return Program(
        PROGRAM, command, directory=Path(settings.root), output_log=directory / "gateway.out", stop_wait_s=STOP_WAIT_S
    )


def _wait_ready(settings: Settings, timeout_s: float) -> dict:
    supervisor = Supervisor(settings.state_dir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = read_json(_ready_file(settings))
        if state and _process(settings) and _health(state["url"]) is not None:
            return state
        program = supervisor.info(PROGRAM)
        if program is None or program["statename"] in ("FATAL", "STOPPED"):
            break
        time.sleep(0.1)
    failure = supervisor.describe(PROGRAM)
    stop_gateway(settings)
    raise GatewayError(
        f"the gateway did not come up within {timeout_s:.0f} s ({failure}):\n"
        f"{log_tail(_log_file(settings))}\n{log_tail(gateway_dir(settings) / 'gateway.out')}".rstrip()
    )


def _process(settings: Settings) -> psutil.Process | None:
    """The gateway named by ``ready.json``, if that pid is still our gateway (not a reused pid)."""
    try:
        pid = int((read_json(_ready_file(settings)) or {})["pid"])
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE or MODULE not in " ".join(process.cmdline()):
            return None
        return process
    except (KeyError, TypeError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _health(url: str | None) -> tuple[int, dict] | None:
    """(status, body) of the gateway's ``/health`` (200, or 503 when the endpoint does not serve); None if it
    does not answer."""
    if not url:
        return None
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read())
        except ValueError:
            return error.code, {"message": f"/health answered {error.code}"}
    except (urllib.error.URLError, OSError, ValueError):
        return None


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


def _ready_file(settings: Settings) -> Path:
    return gateway_dir(settings) / "ready.json"


def _state_file(settings: Settings) -> Path:
    return gateway_dir(settings) / "gateway.json"
