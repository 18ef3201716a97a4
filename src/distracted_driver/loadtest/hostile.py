"""Hostile clients for the fault benchmark and the tests: raw bytes and slow sockets against a server of ours.

- ``raw_exchange`` sends exactly the given bytes on a fresh connection and
  reads the whole answer; ``malformed_requests`` are ones aiohttp's HTTP parser
  refuses before any handler of ours runs (their answers must be JSON too);
- ``slowloris`` opens many connections that send a request head one byte at a
  time, never finishing it, while a normal client keeps calling the same
  server, and reports when the server closed each slow socket and how the
  normal calls fared.

Loopback only, bounded in sockets and in time.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HEAD = b"POST /endpoints/x/invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nX-Pad: " + b"a" * 200
MAX_SOCKETS = 1000


def url_address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rstrip("/").split("/")[0].split(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"hostile clients only go to loopback, not {host}")
    return host, int(port)


def malformed_requests(path: str) -> dict[str, bytes]:
    """Requests to ``path`` that aiohttp's HTTP parser refuses, by what is wrong with them."""
    start = f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode()
    return {
        "duplicated Content-Type": start + b"Content-Type: image/jpeg\r\nContent-Type: image/png\r\n"
        b"Content-Length: 3\r\n\r\nabc",
        "Content-Length with chunked": start + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
    }


def raw_exchange(url: str, data: bytes, timeout_s: float = 10.0) -> tuple[int, dict, bytes]:
    """(status, lower-cased headers, body) of the answer to ``data``, read until the server closes."""
    with socket.create_connection(url_address(url), timeout=timeout_s) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return parse_answer(b"".join(chunks))


def parse_answer(raw: bytes) -> tuple[int, dict, bytes]:
    """(status, lower-cased headers, body) of a raw HTTP/1.1 answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@dataclass
class SlowlorisResult:
    closed_after_s: list[float | None]  # per slow socket: seconds until the server closed it (None: never)
    answers: list[bytes]  # what each slow socket got before the close
    normal_ok: int = 0
    normal_failed: list[str] = field(default_factory=list)

    @property
    def closed(self) -> int:
        return sum(t is not None for t in self.closed_after_s)

    @property
    def longest_held_s(self) -> float | None:
        """Seconds the server held the slow socket it closed last (None if it closed none)."""
        return max((t for t in self.closed_after_s if t is not None), default=None)


def slowloris(
    url: str, normal_call: Callable[[], bool], sockets: int = 200, trickle_s: float = 1.0, give_up_s: float = 30.0
) -> SlowlorisResult:
    """``sockets`` connections send a request head one byte per ``trickle_s``; ``normal_call`` (True when it
    was answered as it should be) runs back to back meanwhile. Ends when every slow socket is closed, or
    after ``give_up_s``."""
    if not 0 < sockets <= MAX_SOCKETS:
        raise ValueError(f"between 1 and {MAX_SOCKETS} sockets")
    host, port = url_address(url)
    result = SlowlorisResult([None] * sockets, [b""] * sockets)
    done = threading.Event()

    def normal_loop():
        while not done.is_set():
            try:
                if normal_call():
                    result.normal_ok += 1
                else:
                    result.normal_failed.append("wrong answer")
            except Exception as error:  # a refused or reset connection counts as a failure
                result.normal_failed.append(repr(error))

    async def one(index: int, started: float) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for byte in HEAD:
                writer.write(bytes([byte]))
                try:
                    data = await asyncio.wait_for(reader.read(65536), trickle_s)
                except TimeoutError:
                    continue
                except ConnectionError:
                    data = b""
                result.answers[index] = data
                result.closed_after_s[index] = time.monotonic() - started
                return
        finally:
            writer.close()

    async def main() -> None:
        started = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(*(one(i, started) for i in range(sockets)), return_exceptions=True), give_up_s
        )

    worker = threading.Thread(target=normal_loop, daemon=True)
    worker.start()
    try:
        asyncio.run(main())
    except TimeoutError:
        pass
    finally:
        done.set()
        worker.join(timeout=60)
    return result
