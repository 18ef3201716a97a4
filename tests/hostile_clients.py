"""Clients that misbehave on purpose, for the tests of every server: raw bytes and slow sockets.

- ``raw_exchange``: exactly these bytes on a fresh connection, the whole answer back;
- ``MALFORMED``: requests aiohttp's parser refuses (its refusals must be JSON too);
- ``slowloris``: many connections that send their headers a byte at a time, while
  a normal client keeps calling the server; reports when each slow socket was closed.

Loopback only, bounded in sockets and in time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

MALFORMED = {
    "duplicated Content-Type": (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Type: image/png\r\n"
                                b"Content-Length: 3\r\n\r\nabc"),
    "Content-Length with chunked": (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
                                    b"\r\n3\r\nabc\r\n0\r\n\r\n"),
}


def url_address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    return host, int(port)


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


def json_error(answer: tuple[int, dict, bytes], status: int) -> dict:
    """The answer's JSON body, after checking its status and content type."""
    got, headers, body = answer
    assert got == status, (got, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    document = json.loads(body)
    assert document.get("message"), document
    return document


@dataclass
class SlowlorisResult:
    closed_after_s: list[float | None]  # per slow socket: seconds until the server closed it (None: never)
    answers: list[bytes]  # what each slow socket got before the close
    normal_ok: int = 0
    normal_failed: list[str] = field(default_factory=list)


def slowloris(url: str, normal_call: Callable[[], bool], sockets: int = 200, trickle_s: float = 1.0,
              give_up_s: float = 30.0) -> SlowlorisResult:
    """``sockets`` connections send a request head one byte per ``trickle_s``; ``normal_call`` (True when it
    was answered as it should be) runs back to back meanwhile. Ends when every slow socket is closed, or
    after ``give_up_s``."""
    head = b"POST /endpoints/x/invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nX-Pad: " + b"a" * 200
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
            for byte in head:
                writer.write(bytes([byte]))
                try:
                    data = await asyncio.wait_for(reader.read(65536), trickle_s)
                except asyncio.TimeoutError:
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
        await asyncio.wait_for(asyncio.gather(*(one(i, started) for i in range(sockets)), return_exceptions=True),
                               give_up_s)

    worker = threading.Thread(target=normal_loop, daemon=True)
    worker.start()
    try:
        asyncio.run(main())
    except asyncio.TimeoutError:
        pass
    finally:
        done.set()
        worker.join(timeout=60)
    return result
