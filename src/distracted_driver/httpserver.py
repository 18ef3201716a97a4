"""What every HTTP server of ours shares: JSON errors, read timeouts and a connection limit.

The model server, the local runtime and the local API gateway are aiohttp
servers that face clients we do not control. Left to itself, aiohttp answers
a request it cannot parse (a duplicated Content-Type, Content-Length together
with chunked encoding) in text/plain, waits as long as a client likes for its
headers, and accepts connections without limit. Here:

- every refusal is JSON in the server's own error shape (an ``ErrorShape``):
  aiohttp's parser errors, routing's 404 and 405, a slow body's 408, a fault's 500;
- the request line and headers must arrive within ``header_timeout_s`` of the
  connection opening (408, then the connection is closed), a body within
  ``body_timeout_s`` of its headers (``read_body``: 408; what is left of it is
  drained for ``linger_s`` at most); a kept-alive connection that stays idle
  (or half-sent) ``idle_timeout_s`` is closed;
- past ``max_connections`` open connections, a new one gets a 503 and is closed.

``GuardedRunner`` is ``web.AppRunner`` with the above. It serves sockets we bind
ourselves (``listen_on``, ``listen_tcp``; ``private_unix_socket`` makes a socket
only its owner can reach, ``UnixHTTPConnection`` talks to one), so the port is
read from our own socket and only aiohttp's public API is used.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError

from distracted_driver.system import MAX_UNIX_PATH

log = logging.getLogger("distracted_driver.httpserver")

# (status, error code, message) -> (JSON body, extra headers): each server's own error format.
ErrorShape = Callable[[int, str, str], tuple[dict, dict]]
MAX_PARSER_MESSAGE = 200
BACKLOG = 128  # pending connections the kernel queues (aiohttp's sites use the same)
HEADERS_END = b"\r\n\r\n"
LENIENT_HEADERS_END = b"\n\n"  # a bare-LF request, which the parser refuses with a JSON 400 of its own


def plain_shape(status: int, code: str, message: str) -> tuple[dict, dict]:
    """``{"error", "message"}``: the model server's errors."""
    return {"error": code, "message": message}, {}


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 15.0  # aiohttp's keep-alive timeout; above the clients' own (the router keeps 5 s)
    linger_s: float = 2.0  # how long the unread rest of a refused request's body is drained before closing
    max_connections: int = 512


def error_code(status: int) -> str:
    """``Not Found`` -> ``NotFound``: the code for a status that has no more specific one."""
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return "Error"


def error_response(shape: ErrorShape, status: int, code: str, message: str) -> web.Response:
    body, headers = shape(status, code, message)
    return web.json_response(body, status=status, headers=headers)


def _raw_response(shape: ErrorShape, status: int, code: str, message: str) -> bytes:
    """An answer written straight to a connection that has no request object (and is closed after)."""
    body, headers = shape(status, code, message)
    payload = json.dumps(body).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(payload)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def json_errors(shape: ErrorShape, routes: str = "") -> Callable:
    """Middleware: an ``HTTPException`` (404, 405, 408, 413 ...) or a fault becomes a JSON error.

    ``routes`` (for example ``"GET /ping, POST /invocations"``) is named in the
    answer to a request for a route or method the server does not have.
    """

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            default_text = f"{error.status}: {error.reason}"
            if error.text and error.text != default_text:
                message = error.text
            else:
                message = f"{request.method} {request.path}: {error.reason.lower()}"
                if error.status in (404, 405) and routes:
                    message += f"; this server answers {routes}"
            return error_response(shape, error.status, error_code(error.status), message)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(shape, 500, "InternalFailure", "the server failed on this request; see its log")

    return middleware


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """The whole request body, or an HTTPException: 408 when it does not arrive within ``timeout_s``,
    413 past the application's ``client_max_size``, 400 when the client broke the framing or went away."""
    try:
        return await asyncio.wait_for(request.read(), timeout_s)
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the request body did not arrive within {timeout_s:g} s") from None
    except (ConnectionError, HttpProcessingError, ClientPayloadError, web.RequestPayloadError) as error:
        raise web.HTTPBadRequest(text=f"the request body could not be read: {error}") from None


# --- the guarded server ------------------------------------------------------------------------


class _GuardedHandler(web.RequestHandler):
    """aiohttp's connection handler, with a header deadline, a connection cap and JSON parser errors."""

    def __init__(self, runner: GuardedRunner):
        super().__init__(runner.server, loop=asyncio.get_running_loop(), **runner.handler_options)
        self.guard = runner
        self.header_timer: asyncio.TimerHandle | None = None
        self.header_tail = b""  # the last bytes seen while waiting for the end of the headers
        self.refused = False  # answered and closing: what else arrives is read and dropped

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        limits = self.guard.limits
        if len(self.guard.server.connections) > limits.max_connections:
            self._answer_and_close(
                503, "TooManyConnections", f"the server has {limits.max_connections} connections open; retry shortly"
            )
            return
        self.header_timer = asyncio.get_running_loop().call_later(limits.header_timeout_s, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.header_timer is not None:  # the first request's headers end at its first empty line
            seen = self.header_tail + data
            if HEADERS_END in seen or LENIENT_HEADERS_END in seen:
                self._stop_header_timer()
            else:
                self.header_tail = seen[-(len(HEADERS_END) - 1) :]
        super().data_received(data)

    def connection_lost(self, exc) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _stop_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        log.info("closing a connection whose request headers took over %g s", self.guard.limits.header_timeout_s)
        self._answer_and_close(
            408, "RequestTimeout", f"the request headers did not arrive within {self.guard.limits.header_timeout_s:g} s"
        )

    def _answer_and_close(self, status: int, code: str, message: str) -> None:
        """Answer, then close our side and drop what the client still sends until it closes (``linger_s`` at
        most): closing with its bytes unread would reset the connection, and the answer could be lost."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.refused = True
        transport.write(_raw_response(self.guard.shape, status, code, message))
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(self.guard.limits.linger_s, self.force_close)

    def handle_error(self, request, status: int = 500, exc=None, message=None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs it; raises if an answer is under way
        if status >= 500:
            text = "the server failed on this request; see its log"
        else:  # the parser's reason, first line only: it may quote the offending bytes at length
            reason = (message or HTTPStatus(status).phrase).strip().splitlines()[0][:MAX_PARSER_MESSAGE]
            text = f"the request could not be parsed: {reason}"
        response = error_response(self.guard.shape, status, error_code(status), text)
        response.force_close()
        return response


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` whose connections have the ``Limits`` and answer parser errors in ``shape``.

    It listens through ``serve`` (or ``listen_on``/``listen_tcp``), never through aiohttp's sites,
    whose connections would have none of the guards.
    """

    def __init__(
        self,
        app: web.Application,
        shape: ErrorShape,
        limits: Limits = Limits(),
        *,
        handle_signals: bool = False,
        shutdown_timeout: float = 60.0,
        **handler_options,
    ):
        self.handler_options = {
            "keepalive_timeout": limits.idle_timeout_s,
            "lingering_time": limits.linger_s,
            **handler_options,
        }
        super().__init__(app, handle_signals=handle_signals, shutdown_timeout=shutdown_timeout, **self.handler_options)
        self.shape = shape
        self.limits = limits
        self.listeners: list[asyncio.Server] = []

    async def serve(self, sock: socket.socket) -> None:
        """Accept connections on ``sock`` (bound; ``setup`` done) until ``cleanup``."""
        if self.server is None:
            raise RuntimeError("call setup() before serve()")
        listener = await asyncio.get_running_loop().create_server(
            lambda: _GuardedHandler(self), sock=sock, backlog=BACKLOG
        )
        self.listeners.append(listener)

    async def cleanup(self) -> None:
        """Stop accepting, then let aiohttp drain and close the connections (its shutdown timeout)."""
        for listener in self.listeners:
            listener.close()
        await super().cleanup()
        self.listeners.clear()


# --- listening ----------------------------------------------------------------------------------


async def listen_on(runner: GuardedRunner, host: str, port: int) -> int:
    """Listen on ``host:port`` (0: any free port); returns the port. ``OSError`` when it is taken."""
    sock = socket.create_server((host, port), backlog=BACKLOG)
    try:
        await runner.serve(sock)
    except BaseException:
        sock.close()
        raise
    return sock.getsockname()[1]


async def listen_tcp(runner: GuardedRunner, host: str, preferred: int | None) -> int:
    """Listen on ``preferred`` if it is free, else on any free port; returns the port.

    A daemon asks for the port it had before a restart, so that its URL, which
    clients hold, survives the restart whenever the port is still free.
    """
    if preferred:
        try:
            return await listen_on(runner, host, preferred)
        except OSError as error:
            log.warning("port %s is taken (%s); listening on a free one", preferred, error)
    return await listen_on(runner, host, 0)


def private_unix_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` that only this user can connect to (mode 0600).

    It is bound under a temporary name, made private, and only then listens and
    takes its real name, so there is no moment when another user could connect.
    """
    staging = path.with_name(f".{path.name}.tmp")
    if len(str(staging).encode()) > MAX_UNIX_PATH:
        raise OSError(
            f"the socket path {path} is too long for a Unix socket ({MAX_UNIX_PATH} bytes at most); "
            "use a shorter state directory"
        )
    for stale in (staging, path):
        stale.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(staging))
        staging.chmod(0o600)
        sock.listen(128)
        staging.rename(path)
    except BaseException:
        sock.close()
        staging.unlink(missing_ok=True)
        raise
    return sock


class UnixHTTPConnection(http.client.HTTPConnection):
    """The standard library's HTTP client connection, over a Unix socket (with its timeout)."""

    def __init__(self, socket_path: str | Path, timeout_s: float):
        super().__init__("localhost", timeout=timeout_s)
        self.socket_path = str(socket_path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock
