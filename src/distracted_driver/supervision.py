"""The local stack's supervisor: one supervisord per state directory keeps the runtime and the gateway up.

A daemon started on its own stays dead once killed: the endpoint answered 502
to every request until someone ran a hosting command by hand. Here the
runtime and the gateway run as programs of supervisord (the process
supervisor from PyPI): a program that exits is started again at once, and
comes back from the state it persisted (the runtime from ``state.json``, the
gateway from its flags and its last port). A program that keeps failing at
start is retried with growing back-off, then marked FATAL; ``deploy.status``
and ``api.status`` report that state.

Under ``<state_dir>/supervisor/``: ``supervisord.conf``, ``programs/<name>.conf``
(written by whoever starts the program), ``supervisord.sock`` (its XML-RPC
socket, reachable by this user only), ``supervisord.log`` and
``supervisord.pid``. supervisord stops when its last program is removed, so a
stopped stack leaves no process behind. Every program (and what it starts)
carries ``DD_SUPERVISED_BY=<that directory>`` in its environment: a
supervisord that was killed leaves its programs running, and the next one
stops them before starting its own, so no program ever runs twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from distracted_driver.fsutil import atomic_path, log_tail
from distracted_driver.httpserver import UnixHTTPConnection
from distracted_driver.system import unix_socket_path

START_TIMEOUT_S = 15.0
# Variables a program gets from whoever starts it (supervisord's own environment is that of
# whoever started it first, perhaps another shell).
PASSED_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")
PASSED_PREFIXES = ("DD_", "AWS_")
RUNNING_STATES = ("STARTING", "RUNNING", "BACKOFF")
MARKER_ENV = "DD_SUPERVISED_BY"


class SupervisorError(RuntimeError):
    """supervisord cannot be started or reached; the message says where its log is."""


@dataclass(frozen=True)
class Program:
    """One long-running process of the local stack, as supervisord runs it."""

    name: str
    command: list[str]
    directory: Path
    output_log: Path  # its stdout and stderr: what its own (rotated) log does not catch, such as a crash
    stop_wait_s: float = 30.0  # after SIGTERM, how long it may drain before SIGKILL (to its process group)
    environment: dict[str, str] = field(default_factory=dict)

    def config(self, supervisor_root: Path) -> str:
        """The ``[program:x]`` section (``%`` doubled: supervisord expands ``%(name)s`` in its files)."""
        environment = {
            **{k: v for k, v in os.environ.items() if k in PASSED_ENVIRONMENT or k.startswith(PASSED_PREFIXES)},
            "PYTHONUNBUFFERED": "1",
            **self.environment,
            MARKER_ENV: str(supervisor_root),
        }
        pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(environment.items()))
        lines = [
            f"[program:{self.name}]",
            f"command={shlex.join(self.command)}",
            f"directory={self.directory}",
            "autostart=true",
            "autorestart=true",
            "startsecs=1",  # up for a second counts as started; an earlier exit is retried with back-off
            "startretries=5",
            "stopsignal=TERM",
            f"stopwaitsecs={max(1, round(self.stop_wait_s))}",
            "killasgroup=true",  # a SIGKILL takes the program's children (the runtime's instances) too
            "redirect_stderr=true",
            f"stdout_logfile={self.output_log}",
            "stdout_logfile_maxbytes=1MB",
            "stdout_logfile_backups=2",
            f"environment={pairs}",
        ]
        return "\n".join(line.replace("%", "%%") for line in lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, socket_path: Path, timeout_s: float):
        super().__init__()
        self.socket_path, self.timeout_s = socket_path, timeout_s

    def make_connection(self, host):
        if self._connection and host == self._connection[0]:
            return self._connection[1]
        self._connection = host, UnixHTTPConnection(self.socket_path, self.timeout_s)
        return self._connection[1]


class Supervisor:
    """supervisord of one state directory: start programs under it, describe them, remove them."""

    def __init__(self, state_dir: str | Path):
        self.root = Path(state_dir).resolve() / "supervisor"

    @property
    def socket(self) -> Path:
        return unix_socket_path(self.root / "supervisord.sock")

    @property
    def log_file(self) -> Path:
        return self.root / "supervisord.log"

    def _program_file(self, name: str) -> Path:
        return self.root / "programs" / f"{name}.conf"

    # --- public -------------------------------------------------------------------------------

    def ensure(self, program: Program) -> dict:
        """Run ``program`` under supervision: started if it is not running, restarted if its definition changed."""
        with self._locked():
            target = self._program_file(program.name)
            config = program.config(self.root)
            if not target.exists() or target.read_text() != config:
                with atomic_path(target) as tmp:
                    tmp.write_text(config)
            if not self._answers():
                self._start_supervisord()
            self._apply_changes()
            info = self.info(program.name)
            if info is None or info["statename"] not in RUNNING_STATES:
                self._rpc().supervisor.startProcess(program.name, False)
                info = self.info(program.name)
        return info

    def remove(self, name: str, stop_wait_s: float = 60.0) -> bool:
        """Stop ``name`` (SIGTERM; SIGKILL to its group after its stop wait) and forget it.

        supervisord itself exits once no program is left. True when a program was stopped.
        """
        with self._locked():
            self._program_file(name).unlink(missing_ok=True)
            if not self._answers():
                return False
            removed = self._apply_changes(stop_wait_s)
            if not list((self.root / "programs").glob("*.conf")):
                self._shutdown()
        return name in removed

    def info(self, name: str) -> dict | None:
        """supervisord's view of ``name`` (``statename``, ``pid``, ``description``, ...), or None
        when supervisord is not running or has no such program."""
        try:
            return self._rpc(timeout_s=5).supervisor.getProcessInfo(name)
        except xmlrpc.client.Fault:
            return None
        except OSError:
            return None

    def describe(self, name: str) -> str:
        """One line for a status report: what supervision does about ``name`` now."""
        info = self.info(name)
        if info is None:
            return "not supervised (supervisord is not running it)"
        if info["statename"] == "FATAL":
            return f"FATAL: it kept exiting at start, supervisord gave up ({info['spawnerr'] or 'see ' + info['stdout_logfile']})"
        return info["statename"] + (f" ({info['description']})" if info["description"] else "")

    # --- internals ---------------------------------------------------------------------------

    def _rpc(self, timeout_s: float = 90.0):
        return xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(self.socket, timeout_s))

    def _answers(self) -> bool:
        try:
            return self._rpc(timeout_s=5).supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    @contextlib.contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _apply_changes(self, stop_wait_s: float = 60.0) -> list[str]:
        """What ``supervisorctl update`` does: reread the program files, stop what went, (re)start what changed."""
        rpc = self._rpc(timeout_s=stop_wait_s + 30)
        added, changed, removed = rpc.supervisor.reloadConfig()[0]
        for name in removed + changed:
            rpc.supervisor.stopProcessGroup(name)
            rpc.supervisor.removeProcessGroup(name)
        for name in changed + added:
            rpc.supervisor.addProcessGroup(name)
        return removed

    def _config(self) -> str:
        return (
            "\n".join(
                [
                    "[unix_http_server]",
                    f"file={self.socket}",
                    "chmod=0700",
                    "[supervisord]",
                    f"logfile={self.log_file}",
                    "logfile_maxbytes=1MB",
                    "logfile_backups=2",
                    f"pidfile={self.root / 'supervisord.pid'}",
                    f"childlogdir={self.root}",
                    f"directory={self.root}",
                    "[rpcinterface:supervisor]",
                    "supervisor.rpcinterface_factory=supervisor.rpcinterface:make_main_rpcinterface",
                    "[include]",
                    f"files={self.root / 'programs'}/*.conf",
                ]
            ).replace("%", "%%")
            + "\n"
        )

    def _start_supervisord(self) -> None:
        for orphan in self._orphans():
            with contextlib.suppress(psutil.Error):
                orphan.kill()
        conf = self.root / "supervisord.conf"
        with atomic_path(conf) as tmp:
            tmp.write_text(self._config())
        # supervisord daemonizes: this returns once it listens on its socket and has forked away.
        started = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            timeout=START_TIMEOUT_S,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            if started.returncode != 0 or time.monotonic() > deadline:
                raise SupervisorError(
                    f"supervisord did not start (exit {started.returncode}): {started.stderr.strip()} "
                    f"{log_tail(self.log_file, lines=5)}"
                )
            time.sleep(0.05)

    def _orphans(self) -> list[psutil.Process]:
        """Processes a previous supervisord of this directory started (or their children), still running."""
        found = []
        for process in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if process.pid != os.getpid() and process.environ().get(MARKER_ENV) == str(self.root):
                    found.append(process)
        return found

    def _shutdown(self) -> None:
        pid = _pid_in(self.root / "supervisord.pid")
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            self._rpc(timeout_s=10).supervisor.shutdown()
        if pid:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(15)


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
