"""The Lambda handler: request validation, answers of both endpoint formats, error mapping.

SageMaker Runtime is the cloud we cannot reach: it is stubbed with botocore's
Stubber on a real ``sagemaker-runtime`` client (which checks every request
against the service model). Timeouts and unreachable endpoints use real
sockets on loopback. The handler itself is the real file, loaded fresh.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from distracted_driver.data import layout
from distracted_driver.gateway.events import Caller, build_proxy_event, load_handler

pytestmark = pytest.mark.moto  # a moto server for the handler's SageMaker Runtime calls

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"  # only forwarded, never decoded here
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
PROBS = [0.02, 0.03, 0.6, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]


@pytest.fixture
def handler(monkeypatch):
    monkeypatch.setenv("ENDPOINT_NAME", "dd-test")
    monkeypatch.delenv("ENDPOINT_ACCEPT", raising=False)
    monkeypatch.delenv("MODEL_VERSION", raising=False)
    return load_handler()


@pytest.fixture
def runtime(handler):
    """A real sagemaker-runtime client with a Stubber, installed as the handler's client; counts calls."""
    client = boto3.session.Session().client(
        "sagemaker-runtime", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    calls = []
    client.meta.events.register("before-call.sagemaker-runtime.InvokeEndpoint", lambda **kw: calls.append(1))
    stubber = Stubber(client)
    stubber.activate()
    handler._client = client
    stubber.calls = calls
    yield stubber
    stubber.deactivate()


def event(body: bytes | None, content_type: str | None = "image/jpeg", method: str = "POST", headers=None) -> dict:
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    return build_proxy_event(method, "/predict", "/predict", all_headers, {}, body or b"", "test", Caller(api_key="k"))


def answer(stubber, document, expected_type="image/jpeg", body=JPEG, custom_attributes=None):
    data = json.dumps(document).encode()
    response = {"Body": StreamingBody(io.BytesIO(data), len(data)), "ContentType": "application/json"}
    if custom_attributes:
        response["CustomAttributes"] = custom_attributes
    expected = {
        "EndpointName": "dd-test",
        "Body": body,
        "ContentType": expected_type,
        "Accept": "application/json;verbose=true",
    }
    stubber.add_response("invoke_endpoint", response, expected)


def call(handler, evt):
    response = handler.handler(evt, None)
    assert set(response) >= {"statusCode", "headers", "body"}
    assert "Traceback" not in response["body"]
    return response["statusCode"], json.loads(response["body"])


def test_verbose_answer_of_our_model_server(handler, runtime):
    answer(runtime, {"class": "c2", "probabilities": dict(zip(layout.CLASSES, PROBS)), "model_version": "dd-1"})
    status, body = call(handler, event(JPEG))
    assert status == 200
    assert body["class"] == "c2" and body["label"] == "talking on the phone - right"
    assert body["confidence"] == pytest.approx(0.6)
    assert list(body["probabilities"]) == list(layout.CLASSES)
    assert body["model_version"] == "dd-1"
    assert "payload" not in body
    runtime.assert_no_pending_responses()


def test_plain_list_answer_of_the_builtin_algorithm(handler, runtime, monkeypatch):
    monkeypatch.setenv("MODEL_VERSION", "builtin-7")
    answer(runtime, PROBS, expected_type="image/png", body=PNG)
    status, body = call(handler, event(PNG, "image/png"))
    assert status == 200
    assert body["class"] == "c2" and body["probabilities"]["c9"] == pytest.approx(0.05)
    assert body["model_version"] == "builtin-7"


def test_model_version_from_custom_attributes(handler, runtime):
    answer(runtime, {"prediction": PROBS}, custom_attributes="model_version=dd-2")
    status, body = call(handler, event(JPEG))
    assert status == 200 and body["model_version"] == "dd-2" and body["class"] == "c2"


def test_first_version_json_body_gets_payload(handler, runtime):
    answer(runtime, PROBS)
    document = {"base64Image": base64.b64encode(JPEG).decode()}
    status, body = call(handler, event(json.dumps(document).encode(), "application/json"))
    assert status == 200
    assert body["payload"] == PROBS
    assert body["class"] == "c2"


def test_data_url_and_png_sniffed_in_json_body(handler, runtime):
    answer(runtime, PROBS, expected_type="image/png", body=PNG)
    document = {"base64Image": "data:image/png;base64," + base64.b64encode(PNG).decode()}
    status, _ = call(handler, event(json.dumps(document).encode(), "application/json; charset=utf-8"))
    assert status == 200


def test_content_type_header_is_case_insensitive(handler, runtime):
    answer(runtime, PROBS)
    evt = event(JPEG, content_type=None, headers={"CONTENT-TYPE": "Image/JPEG"})
    assert call(handler, evt)[0] == 200
    answer(runtime, PROBS)
    evt = event(JPEG, content_type=None, headers={"content-type": "image/jpeg"})
    evt["headers"] = None  # only the multi-value view
    assert call(handler, evt)[0] == 200


@pytest.mark.parametrize(
    "evt_args, status, words",
    [
        ((None,), 400, "no body"),
        ((JPEG, None), 415, "missing Content-Type"),
        ((JPEG, "text/plain"), 415, "unsupported Content-Type"),
        ((b"x" * 6_291_457,), 413, "limit"),
        ((b"not json", "application/json"), 400, "not valid JSON"),
        ((b"[" * 100_000, "application/json"), 400, "not valid JSON"),
        ((b"\xff\xfe{}", "application/json"), 400, "not valid JSON"),
        ((b'{"image": "abc"}', "application/json"), 400, "base64Image"),
        ((b'["base64Image"]', "application/json"), 400, "base64Image"),
        ((b'{"base64Image": 12}', "application/json"), 400, "string"),
        ((b'{"base64Image": "%%%not base64"}', "application/json"), 400, "not valid base64"),
        ((b'{"base64Image": ""}', "application/json"), 400, "empty"),
        ((JPEG, "image/jpeg", "GET"), 405, "POST"),
    ],
)
def test_bad_requests_are_refused_before_any_call(handler, runtime, evt_args, status, words):
    got, body = call(handler, event(*evt_args))
    assert got == status
    assert words in body["message"]
    assert body["request_id"] and body["error"]
    assert runtime.calls == []


def test_invalid_base64_body_and_oversized_encoded_body(handler, runtime):
    evt = event(JPEG)
    evt["body"] = "!!!" + evt["body"]
    assert call(handler, evt)[0] == 400
    evt["body"] = "A" * 9_000_000
    assert call(handler, evt)[0] == 413
    assert runtime.calls == []


@pytest.mark.parametrize(
    "code, http_status, fields, status, words",
    [
        (
            "ModelError",
            424,
            {
                "OriginalStatusCode": 400,
                "OriginalMessage": '{"error": "InvalidImage", "message": "cannot decode the image"}',
            },
            400,
            "cannot decode the image",
        ),
        ("ModelError", 424, {"OriginalStatusCode": 413, "OriginalMessage": "image too large"}, 413, "image too large"),
        ("ModelError", 424, {"OriginalStatusCode": 500, "OriginalMessage": "boom"}, 502, "model failed"),
        ("ModelError", 424, {"OriginalStatusCode": 503, "OriginalMessage": "queue full"}, 503, "overloaded"),
        ("ThrottlingException", 400, {}, 429, "busy"),
        ("ModelNotReadyException", 429, {}, 429, "busy"),
        ("ServiceUnavailable", 503, {}, 503, "unavailable"),
        ("InternalFailure", 500, {}, 502, "failed"),
        ("ValidationError", 400, {}, 502, "failed"),
    ],
)
def test_endpoint_errors_are_mapped(handler, runtime, code, http_status, fields, status, words):
    # Throttling and 5xx are retried by the client (standard mode, 2 attempts): stub both.
    for _ in range(2):
        runtime.add_client_error(
            "invoke_endpoint",
            service_error_code=code,
            service_message=f"{code} from the stub",
            http_status_code=http_status,
            modeled_fields=fields or None,
        )
    got, body = call(handler, event(JPEG))
    assert got == status
    assert words in body["message"]
    assert body["request_id"]
    assert "from the stub" not in body["message"]  # the service's text stays in the logs


@pytest.mark.parametrize("document", ["not json", {"probabilities": [0.5, 0.5]}, {"probabilities": ["a"] * 10}])
def test_odd_endpoint_answers_are_502(handler, runtime, document):
    data = document.encode() if isinstance(document, str) else json.dumps(document).encode()
    runtime.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(data), len(data))})
    got, body = call(handler, event(JPEG))
    assert got == 502 and body["message"]


def test_internal_fault_is_500_without_trace(handler, runtime, caplog):
    evt = event(JPEG)
    evt["headers"] = "not a mapping"
    with caplog.at_level(logging.INFO, logger="predict"):
        got, body = call(handler, evt)
    assert got == 500 and body == {
        "error": "InternalError",
        "message": "internal error",
        "request_id": body["request_id"],
    }
    assert any(r.exc_info for r in caplog.records)  # the trace is logged, not answered


def test_logs_are_json_with_the_request_id(handler, runtime, caplog):
    answer(runtime, PROBS)
    evt = event(JPEG)
    with caplog.at_level(logging.INFO, logger="predict"):
        handler.handler(evt, None)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "predict"]
    assert lines[-1]["event"] == "request"
    assert lines[-1]["request_id"] == evt["requestContext"]["requestId"]
    assert lines[-1]["status"] == 200


def test_missing_endpoint_name_is_a_clear_500(handler, runtime, monkeypatch):
    monkeypatch.delenv("ENDPOINT_NAME")
    got, body = call(handler, event(JPEG))
    assert got == 500 and "ENDPOINT_NAME" in body["message"]


# --- real sockets: the client honours AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME and its timeouts ---


@pytest.fixture
def silent_server():
    """A TCP server on loopback that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    server.close()


@pytest.fixture
def real_client_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("READ_TIMEOUT_S", "0.3")
    monkeypatch.setenv("CONNECT_TIMEOUT_S", "0.3")
    monkeypatch.setenv("MAX_ATTEMPTS", "1")


def test_read_timeout_is_504(handler, silent_server, real_client_env, monkeypatch):
    url, accepted = silent_server
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", url)
    got, body = call(handler, event(JPEG))
    assert got == 504 and "in time" in body["message"]
    assert accepted  # the request went where the environment variable said
    assert handler.runtime_client() is handler.runtime_client()  # created once per container
    assert handler.runtime_client().meta.config.read_timeout == 0.3


def test_unreachable_endpoint_is_502(handler, real_client_env, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", f"http://127.0.0.1:{port}")
    got, body = call(handler, event(JPEG))
    assert got == 502 and "cannot be reached" in body["message"]
