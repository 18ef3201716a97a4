"""The local API Gateway: proxy events, API keys, throttle, payload limit, OpenAPI, docs, daemon.

The gateway runs as a real process on loopback with the real Lambda handler
in it. Here its runtime URL points at a closed port, so every request that
passes the gateway's checks reaches the handler and comes back as the
handler's 502 "cannot be reached"; the tests through a real endpoint are in
``test_bad_inputs.py`` and the end of this file.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from hostile_clients import json_error
from multidict import CIMultiDict, MultiDict
from openapi_spec_validator import validate
from waiting import wait_until

from distracted_driver.config import Settings
from distracted_driver.gateway import UsagePlan, create_api_key, gateway_status, start_gateway, stop_gateway
from distracted_driver.gateway import keys as keys_module
from distracted_driver.gateway.events import BINARY_MEDIA_TYPES, Caller, build_proxy_event, load_handler
from distracted_driver.gateway.keys import KeyStore, Throttle, TokenBucket
from distracted_driver.gateway.openapi import DOCS_PAGE, openapi_document
from distracted_driver.loadtest.hostile import malformed_requests, parse_answer, raw_exchange, slowloris
from distracted_driver.logs import LogRotation

pytestmark = pytest.mark.slow  # starts real gateway processes

ROOT = Path(__file__).resolve().parents[1]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# --- pure parts ----------------------------------------------------------------


def test_token_bucket_allows_burst_then_rate():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back at 2/s
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 100  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 3


def test_throttle_is_per_key():
    throttle = Throttle(UsagePlan(rate=1, burst=1), clock=lambda: 0.0)
    assert throttle.allow("a") and not throttle.allow("a")
    assert throttle.allow("b")


def test_the_throttle_refills_each_key_at_the_plans_rate():
    now = [0.0]
    throttle = Throttle(UsagePlan(rate=0.5, burst=3), clock=lambda: now[0])
    assert [throttle.allow("a") for _ in range(4)] == [True, True, True, False]
    assert [throttle.allow(None) for _ in range(4)] == [True, True, True, False]  # keyless callers share one
    now[0] += 1.5  # not yet a whole token at 0.5/s
    assert not throttle.allow("a") and not throttle.allow(None)
    now[0] += 0.5
    assert throttle.allow("a") and not throttle.allow("a")
    assert throttle.allow(None) and not throttle.allow(None)


def test_usage_plan_refuses_nonsense():
    with pytest.raises(ValueError):
        UsagePlan(rate=0)
    with pytest.raises(ValueError):
        UsagePlan(burst=0)


def test_key_store_persists_privately(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    first, second = store.create("a"), store.create("b")
    assert len(first["value"]) >= 30 and first["value"] != second["value"]
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    again = KeyStore(tmp_path / "keys.json")
    assert again.lookup(second["value"])["name"] == "b"
    assert again.lookup("nope") is None and again.lookup(None) is None
    assert again.first() == first


def test_keys_are_compared_in_constant_time_with_every_stored_key(tmp_path, monkeypatch):
    store = KeyStore(tmp_path / "keys.json")
    first, second = store.create("a"), store.create("b")
    compared = []

    def compare_digest(a, b):
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(keys_module.hmac, "compare_digest", compare_digest)
    assert store.lookup(first["value"])["id"] == first["id"]
    assert len(compared) == 2  # the match did not end the loop early
    compared.clear()
    assert store.lookup(second["value"][:-1] + "x") is None and len(compared) == 2


def test_proxy_event_for_a_binary_body():
    headers = CIMultiDict([("Content-Type", "image/jpeg"), ("X-Thing", "1"), ("X-Thing", "2"), ("Host", "h:1")])
    event = build_proxy_event(
        "POST",
        "/predict",
        "/predict",
        headers,
        MultiDict([("a", "1"), ("a", "2")]),
        b"\xff\xd8\x00",
        "local",
        Caller(api_key="k", api_key_id="id1", user_agent="ua"),
        request_id="r-1",
    )
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\xff\xd8\x00"
    assert event["headers"]["X-Thing"] == "2" and event["multiValueHeaders"]["X-Thing"] == ["1", "2"]
    assert event["queryStringParameters"] == {"a": "2"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"]}
    context = event["requestContext"]
    assert context["requestId"] == "r-1" and context["stage"] == "local" and context["path"] == "/local/predict"
    assert context["identity"]["apiKey"] == "k" and context["identity"]["apiKeyId"] == "id1"
    assert context["domainName"] == "h:1" and event["resource"] == "/predict" and event["httpMethod"] == "POST"


def test_proxy_event_for_text_and_empty_bodies():
    text = build_proxy_event(
        "POST", "/predict", "/predict", {"content-type": "application/json"}, {}, b'{"a":1}', "s", Caller()
    )
    assert text["isBase64Encoded"] is False and text["body"] == '{"a":1}'
    assert text["queryStringParameters"] is None
    empty = build_proxy_event("POST", "/predict", "/predict", {}, {}, b"", "s", Caller())
    assert empty["body"] is None and empty["headers"] is None


def test_handler_image_types_are_binary_media_types():
    handler = load_handler()
    assert set(handler.IMAGE_TYPES.values()) == set(BINARY_MEDIA_TYPES)


def test_openapi_document_is_valid_and_complete():
    document = openapi_document("http://127.0.0.1:1")
    validate(document)
    operation = document["paths"]["/predict"]["post"]
    assert set(operation["requestBody"]["content"]) == {*BINARY_MEDIA_TYPES, "application/json"}
    assert {"200", "400", "403", "413", "415", "429", "502", "504"} <= set(operation["responses"])
    assert document["x-amazon-apigateway-binary-media-types"] == list(BINARY_MEDIA_TYPES)
    assert document["components"]["securitySchemes"]["api_key"]["name"] == "x-api-key"


def test_docs_page_needs_no_internet():
    assert "<script src" not in DOCS_PAGE and "<link" not in DOCS_PAGE
    assert "http://" not in DOCS_PAGE and "https://" not in DOCS_PAGE
    assert 'fetch("openapi.json")' in DOCS_PAGE


# --- the daemon, a real process ------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A gateway daemon whose runtime URL is a closed port."""
    settings = Settings(root=tmp_path_factory.mktemp("gw"))
    status = start_gateway(settings, runtime_url=closed_port_url(), port=0, plan=UsagePlan(rate=500, burst=500))
    yield settings, status
    stop_gateway(settings)


def post(url, key=None, data=b"\xff\xd8\xff\xd9", content_type="image/jpeg", timeout=10):
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["x-api-key"] = key
    return requests.post(f"{url}/predict", data=data, headers=headers, timeout=timeout)


def test_daemon_status_and_restart_is_a_noop(gateway):
    settings, status = gateway
    assert status["running"] and status["url"].startswith("http://127.0.0.1:")
    assert status["api_key"] and status["pid"]
    assert json.loads((Path(settings.state_dir) / "gateway" / "ready.json").read_text())["pid"] == status["pid"]
    assert status["supervisor"].startswith(("STARTING", "RUNNING"))
    again = start_gateway(settings, runtime_url=status["runtime_url"], port=0, plan=UsagePlan(rate=500, burst=500))
    assert again["pid"] == status["pid"] and again["note"] == "already running"


def test_missing_or_unknown_key_is_forbidden(gateway):
    _, status = gateway
    for key in (None, "", "not-a-key"):
        response = post(status["url"], key)
        assert response.status_code == 403 and response.json() == {"message": "Forbidden"}


def test_valid_key_reaches_the_real_handler(gateway):
    _, status = gateway
    response = post(status["url"], status["api_key"])
    assert response.status_code == 502
    body = response.json()
    assert body["error"] == "EndpointUnreachable" and body["message"] and body["request_id"]
    assert response.headers["x-amzn-RequestId"] == body["request_id"]


def test_handler_validation_through_the_gateway(gateway):
    _, status = gateway
    assert post(status["url"], status["api_key"], content_type="text/plain").status_code == 415
    assert post(status["url"], status["api_key"], data=b"").status_code == 400
    legacy = post(status["url"], status["api_key"], data=b'{"base64Image": "%%"}', content_type="application/json")
    assert legacy.status_code == 400 and "base64" in legacy.json()["message"]


def test_payload_over_api_gateway_limit_is_413(gateway):
    _, status = gateway
    response = post(status["url"], status["api_key"], data=b"\0" * (10 * 1024 * 1024 + 1))
    assert response.status_code == 413 and response.json() == {"message": "Request Too Long"}


def test_aiohttps_own_refusals_are_api_gateway_json(gateway):
    _, status = gateway
    for name, raw in malformed_requests("/predict").items():
        answer = raw_exchange(status["url"], raw)
        assert json_error(answer, 400)["message"].startswith("the request could not be parsed"), name
        assert list(json.loads(answer[2])) == ["message"]


def test_health_includes_the_endpoint(gateway):
    settings, status = gateway
    health = requests.get(f"{status['url']}/health", timeout=10)
    assert health.status_code == 503  # the process runs, but its runtime (a closed port) does not answer
    assert "does not answer" in health.json()["message"] and health.json()["endpoint_health"]["status"] == "Unreachable"
    described = gateway_status(settings)
    assert described["running"] is True and described["healthy"] is False
    assert "does not answer" in described["problem"]


def test_the_log_is_rotated(tmp_path):
    settings = Settings(root=tmp_path)
    status = start_gateway(
        settings,
        runtime_url=closed_port_url(),
        port=0,
        plan=UsagePlan(rate=5000, burst=5000),
        log_rotation=LogRotation(max_bytes=4096, backups=2),
    )
    try:
        with requests.Session() as session:
            for _ in range(150):  # one access-log line each, about 200 bytes
                session.post(f"{status['url']}/predict", data=b"x", headers={"Content-Type": "image/jpeg"}, timeout=10)
        logs = sorted(p.name for p in (tmp_path / ".state" / "gateway").glob("gateway.log*"))
        assert logs == ["gateway.log", "gateway.log.1", "gateway.log.2"]
        assert all((tmp_path / ".state" / "gateway" / name).stat().st_size <= 4096 for name in logs)
    finally:
        stop_gateway(settings)


def test_unknown_route_is_missing_authentication_token(gateway):
    _, status = gateway
    for method, path in (("GET", "/predict"), ("POST", "/other"), ("GET", "/")):
        response = requests.request(method, status["url"] + path, timeout=5)
        assert response.status_code == 403 and response.json() == {"message": "Missing Authentication Token"}


def test_openapi_and_docs_are_served(gateway):
    _, status = gateway
    document = requests.get(f"{status['url']}/openapi.json", timeout=5).json()
    validate(document)
    assert document["servers"] == [{"url": status["url"]}]
    page = requests.get(status["docs_url"], timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")


def test_new_key_is_accepted_without_restart(gateway):
    settings, status = gateway
    key = create_api_key(settings, "late")["value"]
    wait_until(
        lambda: post(status["url"], key).status_code != 403,
        timeout_s=5,
        interval_s=0.2,
        what="the new key to be picked up",
    )


def test_throttle_answers_429_past_the_burst(tmp_path):
    settings = Settings(root=tmp_path)
    status = start_gateway(settings, runtime_url=closed_port_url(), port=0, plan=UsagePlan(rate=0.5, burst=3))
    try:
        with ThreadPoolExecutor(10) as pool:
            codes = list(pool.map(lambda _: post(status["url"], status["api_key"]).status_code, range(10)))
        assert codes.count(429) >= 6 and 3 <= codes.count(502) <= 4, codes  # burst 3, +1 if 2 s passed
        assert all(post(status["url"], status["api_key"]).json() == {"message": "Too Many Requests"} for _ in range(2))
        # A refused request takes no token: polling comes through once one is back (0.5/s; the refill itself
        # is timed with a fake clock in test_the_throttle_refills_each_key_at_the_plans_rate).
        wait_until(
            lambda: post(status["url"], status["api_key"]).status_code == 502,
            timeout_s=10,
            interval_s=0.2,
            what="a token back",
        )
        assert gateway_status(settings)["plan"] == {"rate": 0.5, "burst": 3, "require_key": True}
    finally:
        stop_gateway(settings)


def test_stop_leaves_nothing_running(tmp_path):
    settings = Settings(root=tmp_path)
    status = start_gateway(settings, runtime_url=closed_port_url(), port=0)
    pid = status["pid"]
    supervisor = int((tmp_path / ".state" / "supervisor" / "supervisord.pid").read_text())
    assert stop_gateway(settings) is True
    for gone in (pid, supervisor):  # the supervisor stops with its last program
        assert not psutil.pid_exists(gone) or psutil.Process(gone).status() == psutil.STATUS_ZOMBIE
    assert gateway_status(settings)["running"] is False
    assert stop_gateway(settings) is False


@pytest.mark.slow  # `inv` processes
def test_invoke_tasks_up_status_key_down(tmp_path):
    env = {**os.environ, "DD_ROOT": str(tmp_path)}
    inv = [sys.executable, "-m", "invoke", "-r", str(ROOT)]

    def run(*args):
        return subprocess.run([*inv, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    up = run("api.up", "--port", "0", "--runtime-url", closed_port_url(), "--rate", "50", "--burst", "60")
    assert up.returncode == 0, up.stderr
    try:
        status = json.loads(run("api.status", "--json").stdout)
        assert status["running"] and status["plan"]["rate"] == 50
        assert post(status["url"], status["api_key"]).status_code == 502
        key = run("api.key").stdout.strip()
        assert KeyStore(tmp_path / ".state" / "gateway" / "api_keys.json").lookup(key)
    finally:
        down = run("api.down")
    assert "API stopped" in down.stdout
    assert json.loads(run("api.status", "--json").stdout)["running"] is False


# --- through the real stack: gateway → handler → local runtime → model server ------------------


def frame(seed=0, ext=".jpg") -> bytes:
    import cv2
    import numpy as np

    image = np.random.default_rng(seed).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    return cv2.imencode(ext, image)[1].tobytes()


@pytest.mark.slow
def test_prediction_end_to_end_matches_the_endpoint(api_stack):
    import boto3

    image = frame(1)
    response = post(api_stack.url, api_stack.api_key, data=image)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == api_stack.model_version == response.headers["X-Model-Version"]
    assert body["class"] in body["probabilities"] and body["label"]
    assert body["confidence"] == max(body["probabilities"].values())
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    # The same image straight at the endpoint with boto3 (the plain list answer) gives the same numbers.
    runtime = boto3.session.Session().client(
        "sagemaker-runtime",
        endpoint_url=api_stack.runtime_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    direct = json.loads(
        runtime.invoke_endpoint(EndpointName=api_stack.settings.endpoint_name, Body=image, ContentType="image/jpeg")[
            "Body"
        ].read()
    )
    assert list(body["probabilities"].values()) == pytest.approx(direct, abs=1e-6)


@pytest.mark.slow
def test_png_and_first_version_json_body(api_stack):
    png = post(api_stack.url, api_stack.api_key, data=frame(2, ".png"), content_type="image/png")
    assert png.status_code == 200 and "payload" not in png.json()
    document = {"base64Image": base64.b64encode(frame(2, ".png")).decode()}
    legacy = post(api_stack.url, api_stack.api_key, data=json.dumps(document), content_type="application/json")
    assert legacy.status_code == 200
    assert legacy.json()["payload"] == list(legacy.json()["probabilities"].values())
    assert legacy.json()["payload"] == pytest.approx(list(png.json()["probabilities"].values()))


@pytest.mark.slow
def test_model_servers_refusal_is_passed_on(api_stack):
    whole = frame(3)
    response = post(api_stack.url, api_stack.api_key, data=whole[: len(whole) // 2])  # cut inside the scan
    assert response.status_code == 400
    assert response.json()["error"] == "InvalidImage" and "truncated" in response.json()["message"]


@pytest.mark.slow
def test_predict_image_client(api_stack, tmp_path):
    from distracted_driver.gateway import predict_image

    path = tmp_path / "frame.png"
    path.write_bytes(frame(4, ".png"))
    status, body = predict_image(api_stack.predict_url, api_stack.api_key, path)
    assert status == 200 and body["model_version"] == api_stack.model_version
    assert predict_image(api_stack.predict_url, "wrong", path) == (403, {"message": "Forbidden"})


@pytest.mark.slow
def test_slow_headers_are_closed_while_predictions_go_on(api_stack):
    result = slowloris(
        api_stack.url,
        lambda: post(api_stack.url, api_stack.api_key, data=frame(5)).status_code == 200,
        sockets=200,
        give_up_s=40,
    )
    assert result.closed == 200 and result.longest_held_s < 20, result.closed_after_s
    assert json_error(parse_answer(result.answers[0]), 408) == {
        "message": "the request headers did not arrive within 10 s"
    }
    assert result.normal_ok >= 5 and not result.normal_failed, result.normal_failed[:3]
