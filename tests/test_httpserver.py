"""The guarded aiohttp server every server of ours runs on: JSON refusals, read deadlines, a connection cap.

An in-process server on a free loopback port, clients on raw sockets, so the
bytes a hostile client sends are exactly the ones written here.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web
from hostile_clients import json_error
from waiting import wait_until_async

from distracted_driver.httpserver import GuardedRunner, Limits, json_errors, listen_on, plain_shape, read_body
from distracted_driver.loadtest.hostile import malformed_requests, parse_answer, raw_exchange

pytestmark = pytest.mark.slow  # real servers with read deadlines of seconds

LIMITS = Limits(header_timeout_s=0.5, body_timeout_s=0.5, idle_timeout_s=2.0, max_connections=8)


def _app(body_timeout_s: float) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"bytes": len(await read_body(request, body_timeout_s))})

    app = web.Application(middlewares=[json_errors(plain_shape, routes="POST /echo")])
    app.router.add_post("/echo", echo)
    return app


def serve_and(scenario, limits: Limits = LIMITS):
    """Run ``scenario(port)`` against a guarded server on a free port; returns what it returns."""

    async def main():
        runner = GuardedRunner(_app(limits.body_timeout_s), plain_shape, limits, access_log=None)
        await runner.setup()
        port = await listen_on(runner, "127.0.0.1", 0)
        try:
            return await asyncio.wait_for(scenario(port), 20)
        finally:
            await runner.cleanup()

    return asyncio.run(main())


async def exchange(port: int, raw: bytes) -> tuple[int, dict, bytes]:
    """Send ``raw``, read the answer to the end (from a thread: the server runs on this loop)."""
    return await asyncio.to_thread(raw_exchange, f"http://127.0.0.1:{port}", raw)


def good_request(body: bytes = b"abc") -> bytes:
    return (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def assert_json_error(status, headers, body, expected_status):
    document = json_error((status, headers, body), expected_status)
    assert document["error"], document
    return document


def test_the_parsers_refusals_are_json():
    garbage = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n"

    async def scenario(port):
        return [await exchange(port, raw) for raw in (*malformed_requests("/echo").values(), garbage)]

    for status, headers, body in serve_and(scenario):
        document = assert_json_error(status, headers, body, 400)
        assert document["error"] == "BadRequest" and "parsed" in document["message"]


def test_routing_and_slow_bodies_are_json():
    async def scenario(port):
        missing = await exchange(port, b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        wrong_method = await exchange(port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        # headers in time, then half the body and silence
        slow_body = await exchange(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabcde")
        return missing, wrong_method, slow_body, await exchange(port, good_request())

    missing, wrong_method, slow_body, good = serve_and(scenario)
    assert "POST /echo" in assert_json_error(*missing, 404)["message"]
    assert assert_json_error(*wrong_method, 405)["error"] == "MethodNotAllowed"
    assert "did not arrive within 0.5 s" in assert_json_error(*slow_body, 408)["message"]
    assert good[0] == 200 and json.loads(good[2]) == {"bytes": 3}


def test_a_slow_header_is_closed_while_others_are_served():
    async def scenario(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened = time.monotonic()
        closed = asyncio.ensure_future(reader.read())
        answered = []
        for byte in b"POST /echo HTTP/1.1\r\nHost: x\r\n":  # a byte every 0.1 s: slower than the deadline allows
            if closed.done():
                break
            writer.write(bytes([byte]))
            answered.append(await exchange(port, good_request()))
            await asyncio.sleep(0.1)  # the slow client is the subject: it sends a byte every 0.1 s
        return await asyncio.wait_for(closed, 5), time.monotonic() - opened, answered

    answer, held_s, answered = serve_and(scenario)
    assert_json_error(*parse_answer(answer), 408)
    assert held_s < 2.0, held_s
    assert [a[0] for a in answered] == [200] * len(answered) and len(answered) >= 4


def test_headers_ending_across_two_reads_stop_the_header_deadline():
    """The deadline covers the headers only: once their empty line is in (here split between two
    writes), a body that takes longer than the header deadline, within the body's, is answered."""
    limits = Limits(header_timeout_s=0.5, body_timeout_s=3.0, idle_timeout_s=5.0, max_connections=8)

    async def scenario(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"\n")
        await asyncio.sleep(1.0)  # twice the header deadline
        writer.write(b"abc")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return answer

    status, _, body = parse_answer(serve_and(scenario, limits))
    assert status == 200 and json.loads(body) == {"bytes": 3}


def test_past_the_connection_limit_a_new_connection_gets_503():
    async def scenario(port):
        url = f"http://127.0.0.1:{port}"

        def answer_with(status):
            return lambda: (answer := raw_exchange(url, good_request()))[0] == status and answer

        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMITS.max_connections)]
        refused = await wait_until_async(answer_with(503), 5, what="the held connections to count")
        for _, writer in held:
            writer.close()
        return refused, await wait_until_async(answer_with(200), 5, what="the closed connections to be freed")

    refused, after = serve_and(
        scenario, Limits(header_timeout_s=5, body_timeout_s=5, idle_timeout_s=5, max_connections=8)
    )
    assert assert_json_error(*refused, 503)["error"] == "TooManyConnections"
    assert after[0] == 200
