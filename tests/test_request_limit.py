"""The real size limit of an image through the REST API in AWS: Lambda's 6,291,456-byte request, which holds
the image base64 inside the proxy event. Just above it the client gets API Gateway's
413 {"message": "Request Too Long"}; the handler (and its own 413) never runs."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import requests

from distracted_driver.config import Settings
from distracted_driver.data.payload import LAMBDA_REQUEST_MAX_BYTES
from distracted_driver.gateway import UsagePlan, start_gateway, stop_gateway
from distracted_driver.infra.limits import event_bytes, largest_image

REPO = Path(__file__).resolve().parents[1]


def test_the_largest_image_is_what_fits_in_lambdas_request():
    largest = largest_image()
    assert event_bytes(largest) <= LAMBDA_REQUEST_MAX_BYTES < event_bytes(largest + 1)
    assert 4_700_000 < largest < LAMBDA_REQUEST_MAX_BYTES * 3 // 4  # base64 and the envelope take the rest
    documented = re.search(r"largest image is ([\d,]+) bytes", (REPO / "docs" / "aws.md").read_text())
    assert documented and int(documented.group(1).replace(",", "")) == largest


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """The local API Gateway in front of the real handler; its runtime is a closed port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    settings = Settings(root=tmp_path_factory.mktemp("limit"))
    status = start_gateway(settings, runtime_url=closed, port=0, plan=UsagePlan(rate=100, burst=100))
    yield status
    stop_gateway(settings)


@pytest.mark.slow
def test_just_above_the_limit_the_client_gets_request_too_long(gateway):
    def post(size: int) -> requests.Response:
        return requests.post(
            f"{gateway['url']}/predict",
            data=b"\xff" * size,
            timeout=30,
            headers={"Content-Type": "image/jpeg", "x-api-key": gateway["api_key"]},
        )

    largest = largest_image()
    below, above = post(largest - 16 * 1024), post(largest + 16 * 1024)  # the local envelope is a little smaller
    assert below.status_code != 413 and "error" in below.json()  # the handler ran (and found no endpoint)
    assert above.status_code == 413 and above.json() == {"message": "Request Too Long"}
    assert largest + 16 * 1024 < 6_291_456  # far below the handler's own limit, which cannot fire through the API
