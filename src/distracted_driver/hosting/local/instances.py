"""One instance = one model-server process on a free loopback port.

The runtime starts it, waits for ``/ping``, routes to it while it is in
service, and stops it by first taking it out of rotation, then letting the
requests it holds finish, then SIGTERM (the server drains too).

A killed runtime does not take its instances with it: the supervisor starts
the runtime again at once, and the new one takes over every instance that
``state.json`` names and that still answers ``/ping`` (``AdoptedProcess``),
so a runtime crash costs the router's restart, not the models' warm-up. It
kills any other model server of its state directory (found by ``OWNER_ENV``).
A runtime that stops (SIGTERM) stops its instances first, and one killed by
the supervisor after its stop timeout is killed with its process group,
instances included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import psutil

from distracted_driver.fsutil import log_tail
from distracted_driver.logs import LogRotation

log = logging.getLogger("distracted_driver.hosting.runtime")

SERVER_MODULE = "distracted_driver.serve.server"
PING_INTERVAL_S = 0.1
STOP_TIMEOUT_S = 15.0
EXIT_POLL_S = 0.2

STARTING, IN_SERVICE, DRAINING, STOPPED, FAILED = "starting", "in-service", "draining", "stopped", "failed"
# Set in every instance's environment to the runtime's state directory, so that
# whatever serves for a runtime can be found (psutil) even if the runtime is gone.
OWNER_ENV = "DD_HOSTING_RUNTIME"


class InstanceError(RuntimeError):
    """An instance did not come up; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AdoptedProcess:
    """A model server that a previous runtime started, as this runtime holds it: the part of
    ``asyncio.subprocess.Process`` an ``Instance`` uses. Not our child, so its exit is polled."""

    def __init__(self, process: psutil.Process):
        self._process = process
        self.pid = process.pid
        self._returncode: int | None = None

    @property
    def returncode(self) -> int | None:
        if self._returncode is None and not self._running():
            self._returncode = -1  # not our child: its exit status is its parent's to read
        return self._returncode

    def _running(self) -> bool:
        try:
            return self._process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    async def wait(self) -> int:
        while self.returncode is None:
            await asyncio.sleep(EXIT_POLL_S)
        return self._returncode

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(psutil.Error):
            self._process.send_signal(sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def adoptable(record: dict, owner: str) -> psutil.Process | None:
    """The live model server a ``state.json`` process record names, if it is still ours (not a reused pid)."""
    try:
        process = psutil.Process(record["pid"])
        if process.status() == psutil.STATUS_ZOMBIE or SERVER_MODULE not in " ".join(process.cmdline()):
            return None
        return process if process.environ().get(OWNER_ENV) == owner else None
    except (psutil.Error, KeyError, TypeError):
        return None


class Instance:
    def __init__(
        self,
        instance_id: str,
        model_name: str,
        model_dir: str,
        log_path: Path,
        owner: str,
        threads: int | None = None,
        log_rotation: LogRotation = LogRotation(),
    ):
        self.id = instance_id
        self.model_name = model_name
        self.model_dir = model_dir
        self.log_path = log_path  # the server's own log, rotated
        self.output_path = log_path.with_suffix(".out")  # what it writes outside its log (a crash, native warnings)
        self.log_rotation = log_rotation
        self.owner = owner
        self.threads = threads
        self.state = STARTING
        self.port: int | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.outstanding = 0  # requests the router has sent and not yet seen answered
        self.idle = asyncio.Event()
        self.idle.set()
        self.started = time.time()
        self.failure = ""
        self.requests = 0
        self.errors = 0
        self.ping_failures = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            SERVER_MODULE,
            "--model-dir",
            self.model_dir,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.log_rotation.arguments(self.log_path),
        ]
        if self.threads:
            command += ["--threads", str(self.threads), "--decode-workers", str(self.threads)]
        return command

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, timeout_s: float) -> None:
        """Spawn the server and return once ``/ping`` answers 200; InstanceError otherwise."""
        for attempt in range(3):
            self.port = free_port()
            await self._spawn()
            try:
                await self._wait_ready(timeout_s)
                return
            except InstanceError as error:
                await self.kill()
                if "address already in use" in str(error).lower() and attempt < 2:
                    continue  # another process took the port between our probe and its bind
                self.state, self.failure = FAILED, str(error)
                raise

    async def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.output_path, "ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env={**os.environ, "PYTHONUNBUFFERED": "1", OWNER_ENV: self.owner},
            )
        self._open_session()
        log.info(
            "instance %s: started pid %d on port %d for model %s", self.id, self.process.pid, self.port, self.model_name
        )

    def _open_session(self) -> None:
        self.session = aiohttp.ClientSession(
            base_url=self.url,
            # idle connections are dropped before the server's own idle timeout (15 s) could close one under us
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=5),
            auto_decompress=False,
        )

    async def take_over(self, process: psutil.Process, port: int) -> bool:
        """Serve through a running server a previous runtime started; False (and it is killed) unless it
        answers ``/ping`` with 200."""
        self.process, self.port = AdoptedProcess(process), port
        self.started = process.create_time()
        self._open_session()
        if await self.ping(timeout_s=5.0):
            self.state = IN_SERVICE
            log.info("instance %s: took over pid %d on port %d (model %s)", self.id, process.pid, port, self.model_name)
            return True
        log.warning("instance %s: pid %d does not answer /ping; killing it", self.id, process.pid)
        await self.kill()
        self.state = STOPPED
        return False

    async def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise InstanceError(
                    f"instance {self.id} exited with code {self.process.returncode} before it was healthy; "
                    f"its log ({self.log_path}) ends:\n{self.log_tail()}"
                )
            if await self.ping(timeout_s=2.0):
                self.state = IN_SERVICE
                return
            await asyncio.sleep(PING_INTERVAL_S)
        raise InstanceError(
            f"instance {self.id} did not answer /ping with 200 within {timeout_s:g} s; see {self.log_path}"
        )

    def log_tail(self, lines: int = 8) -> str:
        """The end of its log, and of its raw output when there is any (a crash shows there)."""
        return "\n".join(tail for tail in (log_tail(self.log_path, lines), log_tail(self.output_path, lines)) if tail)

    async def ping(self, timeout_s: float = 2.0) -> bool:
        try:
            async with self.session.get("/ping", timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                await response.read()
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    def acquire(self) -> None:
        self.outstanding += 1
        self.idle.clear()

    def release(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self.idle.set()

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Out of rotation first, then wait for its requests, then SIGTERM (SIGKILL if it hangs)."""
        if self.state in (STOPPED,):
            return
        if self.state != FAILED:
            self.state = DRAINING
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.idle.wait(), drain_timeout_s)
        if self.process and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("instance %s: no exit %g s after SIGTERM; killing it", self.id, STOP_TIMEOUT_S)
                await self.kill()
        await self._close_session()
        if self.state != FAILED:
            self.state = STOPPED
        log.info("instance %s: stopped", self.id)

    async def kill(self) -> None:
        if self.process and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        await self._close_session()

    async def _close_session(self) -> None:
        if self.session is not None and not self.session.closed:
            await self.session.close()

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "model": self.model_name,
            "state": self.state,
            "pid": self.pid,
            "port": self.port,
            "url": self.url if self.port else None,
            "outstanding": self.outstanding,
            "requests": self.requests,
            "errors": self.errors,
            "started": self.started,
            "log": str(self.log_path),
            **({"failure": self.failure} if self.failure else {}),
        }
