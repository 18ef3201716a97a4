"""Assertions on what a hostile client got back (the clients are ``distracted_driver.loadtest.hostile``)."""

from __future__ import annotations

import json


def json_error(answer: tuple[int, dict, bytes], status: int) -> dict:
    """The answer's JSON body, after checking its status and content type."""
    got, headers, body = answer
    assert got == status, (got, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    document = json.loads(body)
    assert document.get("message"), document
    return document
