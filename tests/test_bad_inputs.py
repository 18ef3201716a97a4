"""Bad-input campaign through the whole local stack: API gateway → Lambda handler → router → model server.

A corpus of hostile images and requests, then hypothesis-generated bodies and
headers. Whatever comes in: no 5xx, every 4xx is JSON with a message, the
stack still answers a good image afterwards, and the memory of the gateway
and of the model server stays bounded.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib

import cv2
import numpy as np
import psutil
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

RSS_GROWTH_LIMIT = 300 * 1024 * 1024  # a decoded 36-megapixel frame is ~110 MB; growth must stay below a few


def jpeg(width=640, height=480, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = 12_000) -> bytes:
    """A small file that decodes to side² grey pixels (144 MB for 12,000): all zeros, deflated."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    chunks = [compressor.compress(row * 500) for _ in range(side // 500)]
    data = b"".join(chunks) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def huge_dimensions_jpeg() -> bytes:
    """A real small JPEG whose frame header claims 65,000 x 65,000 pixels."""
    data = bytearray(jpeg(64, 48))
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", 65_000, 65_000)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def large_but_allowed_png() -> bytes:
    """6,000 x 6,000 (36 megapixels, under the 40-megapixel guard): really decoded by the server."""
    return cv2.imencode(".png", np.zeros((6000, 6000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()


def hostile_corpus() -> list[tuple[str, bytes, str | None]]:
    good = jpeg()
    gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    return [
        ("truncated JPEG", good[: len(good) // 3], "image/jpeg"),
        ("JPEG header only", good[:200], "image/jpeg"),
        ("zero bytes", b"", "image/jpeg"),
        ("one byte", b"\xff", "image/jpeg"),
        ("huge dimensions", huge_dimensions_jpeg(), "image/jpeg"),
        ("PNG bomb", png_bomb(), "image/png"),
        ("36 MP PNG", large_but_allowed_png(), "image/png"),
        ("wrong magic", b"GIF89a" + good[6:], "image/jpeg"),
        ("GIF as JPEG", gif, "image/jpeg"),
        ("text as image", b"this is not an image, just words\n" * 20, "image/jpeg"),
        ("text as x-image", b"<html><body>hello</body></html>", "application/x-image"),
        ("JPEG sent as PNG", good, "image/png"),
        ("7 MB body", np.random.default_rng(1).bytes(7 * 1024 * 1024), "image/jpeg"),
        ("wrong content type", good, "text/plain"),
        ("multipart", good, "multipart/form-data; boundary=x"),
        ("no content type", good, None),
        ("invalid base64", b'{"base64Image": "!!!not*base64"}', "application/json"),
        (
            "base64 of text",
            json.dumps({"base64Image": base64.b64encode(b"hello").decode()}).encode(),
            "application/json",
        ),
        ("JSON without the key", b'{"image": "abc"}', "application/json"),
        ("JSON null", b"null", "application/json"),
        ("deeply nested JSON", b"[" * 200_000, "application/json"),
        ("not UTF-8 JSON", b"\xff\xfe\x00{", "application/json"),
        (
            "7 MB base64 image",
            json.dumps({"base64Image": base64.b64encode(b"\0" * 7_000_000).decode()}).encode(),
            "application/json",
        ),
    ]


def rss(pids) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def send(stack, body: bytes, content_type: str | None, key: str | None = "default", extra=None) -> requests.Response:
    headers = dict(extra or {})
    if content_type is not None:
        headers["Content-Type"] = content_type
    if key is not None:
        headers["x-api-key"] = stack.api_key if key == "default" else key
    return requests.post(stack.predict_url, data=body, headers=headers, timeout=30)


def assert_clean_refusal_or_answer(response: requests.Response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    body = response.json()  # every answer is JSON
    if response.status_code >= 400:
        assert isinstance(body.get("message"), str) and body["message"], f"{what}: no message in {body}"
        assert "Traceback" not in response.text
    else:
        assert body["class"] in [f"c{i}" for i in range(10)], f"{what}: {body}"


def assert_healthy(stack) -> None:
    response = send(stack, jpeg(seed=5), "image/jpeg")
    assert response.status_code == 200 and response.json()["model_version"] == stack.model_version


def test_hostile_corpus(api_stack):
    assert_healthy(api_stack)
    pids = api_stack.process_ids()
    before = rss(pids)
    statuses = {}
    for name, body, content_type in hostile_corpus():
        response = send(api_stack, body, content_type)
        assert_clean_refusal_or_answer(response, name)
        statuses[name] = response.status_code
    assert send(api_stack, jpeg(), "image/jpeg", key=None).status_code == 403  # missing key
    assert send(api_stack, jpeg(), "image/jpeg", key="wrong").json() == {"message": "Forbidden"}
    # The clearly broken ones are refused, with the status that says why.
    assert statuses["zero bytes"] == 400
    assert statuses["7 MB body"] == 413 and statuses["7 MB base64 image"] == 413
    assert statuses["wrong content type"] == 415 and statuses["no content type"] == 415
    assert statuses["huge dimensions"] in (400, 413) and statuses["PNG bomb"] in (400, 413)
    for name in ("truncated JPEG", "text as image", "wrong magic", "invalid base64", "deeply nested JSON"):
        assert statuses[name] == 400, (name, statuses[name])
    assert_healthy(api_stack)
    assert api_stack.process_ids() == pids, "a process was replaced: something crashed"
    assert rss(pids) - before < RSS_GROWTH_LIMIT, f"RSS grew by {(rss(pids) - before) / 2**20:.0f} MiB"


CONTENT_TYPES = [
    "image/jpeg",
    "image/png",
    "application/x-image",
    "application/json",
    "text/plain",
    "application/octet-stream",
    "IMAGE/JPEG; q=1",
    "",
]
HEADER_NAMES = st.from_regex(r"X-[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True)
HEADER_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip)


def bodies():
    prefix = jpeg(64, 48)
    return st.one_of(
        st.binary(max_size=4096),
        st.binary(max_size=2048).map(lambda b: prefix[: len(b) % len(prefix)] + b),  # JPEG-ish heads
        st.builds(
            lambda b: json.dumps({"base64Image": base64.b64encode(b).decode()}).encode(), st.binary(max_size=1024)
        ),
        st.builds(lambda t: json.dumps({"base64Image": t}).encode(), st.text(max_size=200)),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    )


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    body=bodies(),
    content_type=st.sampled_from(CONTENT_TYPES),
    headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4),
)
def test_generated_requests(api_stack, body, content_type, headers):
    response = send(api_stack, body, content_type or None, extra=headers)
    assert_clean_refusal_or_answer(response, f"{content_type} {body[:40]!r}")


def test_healthy_and_bounded_after_the_campaign(api_stack):
    assert_healthy(api_stack)
    assert all(psutil.pid_exists(pid) for pid in api_stack.process_ids())
