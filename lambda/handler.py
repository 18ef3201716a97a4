"""API Gateway (REST, Lambda proxy) handler for ``POST /predict``.

The body is a JPEG or PNG image (base64 in the event when API Gateway marks
it binary), or JSON ``{"base64Image": "..."}`` as the first version of this
API took. The image goes to the SageMaker endpoint named by ``ENDPOINT_NAME``
through ``sagemaker-runtime`` ``invoke_endpoint``; the answer is
``{class, label, confidence, probabilities, model_version, payload}``.

Only the standard library, boto3 and two standard-library-only modules of the
package (``data/layout.py``, ``data/payload.py``), which
``infra.terraform.package_lambdas`` zips beside this file; the local API
gateway runs this very file in-process. ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``
(honoured by boto3 itself) points it at the local runtime.

Environment:
    ENDPOINT_NAME         endpoint to invoke (required)
    ENDPOINT_ACCEPT       Accept header sent to the endpoint
                          (default ``application/json;verbose=true``; the answer
                          may also be a plain JSON list, as the built-in
                          algorithm gives, and both are read)
    CONNECT_TIMEOUT_S     default 2
    READ_TIMEOUT_S        default 20 (below API Gateway's 29 s integration limit)
    MAX_ATTEMPTS          total attempts including retries, default 2
    MAX_POOL_CONNECTIONS  default 32 (the local gateway calls from many threads)
    MODEL_VERSION         reported when the endpoint's answer does not say
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time
import uuid

import boto3
import botocore.config
import botocore.exceptions

from distracted_driver.data.layout import CLASSES, DESCRIPTIONS
from distracted_driver.data.payload import INVOKE_ENDPOINT_MAX_BYTES, image_content_type

IMAGE_TYPES = {
    "image/jpeg": "image/jpeg",
    "image/jpg": "image/jpeg",
    "image/png": "image/png",
    "application/x-image": "application/x-image",
}
JSON_TYPE = "application/json"
ACCEPTED_TYPES = tuple(IMAGE_TYPES) + (JSON_TYPE,)

THROTTLING_CODES = {"ThrottlingException", "ModelNotReadyException", "TooManyRequestsException"}

logger = logging.getLogger("predict")
logger.setLevel(logging.INFO)

_client = None
_client_lock = threading.Lock()


class RequestError(Exception):
    """A request refused before or after the endpoint call; becomes a JSON error response."""

    def __init__(self, status: int, message: str, error: str):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error = error


# --- the endpoint client (one per container) ---------------------------------


def client_config() -> botocore.config.Config:
    return botocore.config.Config(
        connect_timeout=float(os.environ.get("CONNECT_TIMEOUT_S", "2")),
        read_timeout=float(os.environ.get("READ_TIMEOUT_S", "20")),
        retries={"total_max_attempts": int(os.environ.get("MAX_ATTEMPTS", "2")), "mode": "standard"},
        max_pool_connections=int(os.environ.get("MAX_POOL_CONNECTIONS", "32")),
    )


def runtime_client():
    """The ``sagemaker-runtime`` client, created on first use and kept for the container's life."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = boto3.session.Session().client("sagemaker-runtime", config=client_config())
    return _client


# --- the handler -------------------------------------------------------------


def handler(event, context):
    started = time.perf_counter()
    request_id = _request_id(event, context)
    try:
        response = _predict(event, request_id)
        status = 200
    except RequestError as exc:
        status = exc.status
        response = _error_response(exc, request_id)
    except Exception:  # a fault of ours: logged with its trace, never sent to the client
        logger.exception(json.dumps({"event": "unhandled", "request_id": request_id}))
        status = 500
        response = _error_response(RequestError(500, "internal error", "InternalError"), request_id)
    _log(
        "request",
        request_id=request_id,
        status=status,
        ms=round((time.perf_counter() - started) * 1000, 1),
        **({"error": json.loads(response["body"]).get("error")} if status != 200 else {}),
    )
    return response


def _predict(event, request_id: str) -> dict:
    if not isinstance(event, dict):
        raise RequestError(400, "the event is not an API Gateway proxy event", "BadRequest")
    method = (event.get("httpMethod") or "POST").upper()
    if method != "POST":
        raise RequestError(405, f"method {method} is not allowed; use POST", "MethodNotAllowed")
    image, content_type, legacy = _image_from_event(event)
    answer = _invoke(image, content_type, request_id)
    body = _prediction(answer)
    if legacy:
        body["payload"] = body["probabilities_list"]
    body.pop("probabilities_list")
    body["request_id"] = request_id
    version = body.get("model_version")
    return _response(200, body, request_id, {"X-Model-Version": str(version)} if version else None)


def _image_from_event(event) -> tuple[bytes, str, bool]:
    """(image bytes, content type for the endpoint, whether the body was the JSON base64 form)."""
    media_type = _media_type(_header(event, "content-type"))
    body = event.get("body")
    if body is None or body == "":
        raise RequestError(400, "the request has no body; send a JPEG or PNG image", "MissingBody")
    if not media_type:
        raise RequestError(
            415, f"missing Content-Type header; use one of {', '.join(ACCEPTED_TYPES)}", "UnsupportedMediaType"
        )
    if media_type not in ACCEPTED_TYPES:
        raise RequestError(
            415,
            f"unsupported Content-Type {media_type!r}; use one of {', '.join(ACCEPTED_TYPES)}",
            "UnsupportedMediaType",
        )
    raw = _body_bytes(body, bool(event.get("isBase64Encoded")))
    if media_type == JSON_TYPE:
        image = _image_from_json(raw)
        legacy = True
        content_type = image_content_type(image) or "application/x-image"  # the model server says what is wrong
    else:
        image, legacy, content_type = raw, False, IMAGE_TYPES[media_type]
    if not image:
        raise RequestError(400, "the image is empty", "EmptyImage")
    if len(image) > INVOKE_ENDPOINT_MAX_BYTES:
        raise RequestError(
            413, f"the image is {len(image)} bytes; the limit is {INVOKE_ENDPOINT_MAX_BYTES} bytes", "PayloadTooLarge"
        )
    return image, content_type, legacy


def _body_bytes(body, is_base64: bool) -> bytes:
    if not isinstance(body, str):
        raise RequestError(400, "the event body is not a string", "BadRequest")
    if not is_base64:
        return body.encode("utf-8", "surrogateescape")
    # Refuse an encoded body far over the limit before decoding it.
    if len(body) > (INVOKE_ENDPOINT_MAX_BYTES * 4) // 3 + 1024:
        raise RequestError(
            413, f"the request body is over the limit of {INVOKE_ENDPOINT_MAX_BYTES} bytes", "PayloadTooLarge"
        )
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "the body is marked base64 but is not valid base64", "InvalidBase64") from None


def _image_from_json(raw: bytes) -> bytes:
    if len(raw) > (INVOKE_ENDPOINT_MAX_BYTES * 4) // 3 + 1024:
        raise RequestError(
            413, f"the request body is over the limit of {INVOKE_ENDPOINT_MAX_BYTES} bytes", "PayloadTooLarge"
        )
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        raise RequestError(400, "the body is not valid JSON", "InvalidJson") from None
    if not isinstance(document, dict) or "base64Image" not in document:
        raise RequestError(400, 'a JSON body must be an object {"base64Image": "<base64 JPEG or PNG>"}', "MissingImage")
    encoded = document["base64Image"]
    if not isinstance(encoded, str):
        raise RequestError(400, "base64Image must be a string of base64", "InvalidBase64")
    if encoded.startswith("data:") and "," in encoded:  # a data URL: keep what follows the comma
        encoded = encoded.split(",", 1)[1]
    try:
        return base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "base64Image is not valid base64", "InvalidBase64") from None


# --- the endpoint call and its errors ------------------------------------------


def _invoke(image: bytes, content_type: str, request_id: str) -> dict | list:
    endpoint = os.environ.get("ENDPOINT_NAME")
    if not endpoint:
        raise RequestError(500, "the API is misconfigured: ENDPOINT_NAME is not set", "Misconfigured")
    try:
        result = runtime_client().invoke_endpoint(
            EndpointName=endpoint,
            Body=image,
            ContentType=content_type,
            Accept=os.environ.get("ENDPOINT_ACCEPT", "application/json;verbose=true"),
        )
        raw = result["Body"].read()
    except botocore.exceptions.ClientError as exc:
        raise _endpoint_error(exc, request_id) from None
    except botocore.exceptions.ReadTimeoutError:
        raise RequestError(504, "the model endpoint did not answer in time", "EndpointTimeout") from None
    except (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.EndpointConnectionError):
        raise RequestError(502, "the model endpoint cannot be reached", "EndpointUnreachable") from None
    except botocore.exceptions.BotoCoreError as exc:
        _log("endpoint-failure", request_id=request_id, error=type(exc).__name__, detail=str(exc))
        raise RequestError(502, "the model endpoint call failed", "EndpointFailure") from None
    try:
        answer = json.loads(raw)
    except ValueError:
        _log("endpoint-failure", request_id=request_id, error="NotJson", detail=raw[:200].decode("latin-1"))
        raise RequestError(502, "the model endpoint answered something that is not JSON", "BadEndpointAnswer") from None
    if isinstance(answer, dict) and "model_version" not in answer:
        answer.setdefault("model_version", _version_from_attributes(result.get("CustomAttributes")))
    elif isinstance(answer, list):
        answer = {"probabilities": answer, "model_version": _version_from_attributes(result.get("CustomAttributes"))}
    return answer


def _endpoint_error(exc: botocore.exceptions.ClientError, request_id: str) -> RequestError:
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    http_status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    _log("endpoint-error", request_id=request_id, code=code, http_status=http_status, detail=error.get("Message"))
    if code == "ModelError":
        original = _int_or_none(exc.response.get("OriginalStatusCode") or error.get("OriginalStatusCode"))
        if original is not None and 400 <= original < 500 and original != 429:
            message = _model_message(exc.response.get("OriginalMessage") or error.get("OriginalMessage"))
            return RequestError(original, message or "the model refused the image", "InvalidImage")
        if original == 429:
            return RequestError(429, "the model is busy; retry shortly", "Throttled")
        if original == 503:  # the model server's queue is full: back-pressure, not a fault
            return RequestError(503, "the model is overloaded; retry shortly", "ServiceUnavailable")
        return RequestError(502, "the model failed on this request", "ModelError")
    if code in THROTTLING_CODES or http_status == 429:
        return RequestError(429, "the model endpoint is busy; retry shortly", "Throttled")
    if code == "ServiceUnavailable" or http_status == 503:
        return RequestError(503, "the model endpoint is unavailable; retry shortly", "ServiceUnavailable")
    return RequestError(502, "the model endpoint failed", "EndpointError")


def _model_message(original) -> str | None:
    """The model server's own message out of its JSON error body, else the text itself."""
    if not original:
        return None
    try:
        document = json.loads(original)
    except ValueError:
        return str(original)[:500]
    if isinstance(document, dict):
        return str(document.get("message") or document.get("error") or original)[:500]
    return str(original)[:500]


# --- the answer --------------------------------------------------------------


def _prediction(answer) -> dict:
    """Our verbose object, the built-in algorithm's list, or ``{"prediction": [...]}`` → one shape."""
    probabilities = answer.get("probabilities", answer.get("prediction"))
    if isinstance(probabilities, dict):
        probabilities = [probabilities.get(name) for name in CLASSES]
    if (
        not isinstance(probabilities, list)
        or len(probabilities) != len(CLASSES)
        or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in probabilities)
    ):
        raise RequestError(502, "the model endpoint answered an unexpected shape", "BadEndpointAnswer")
    probabilities = [float(p) for p in probabilities]
    best = max(range(len(CLASSES)), key=probabilities.__getitem__)
    return {
        "class": CLASSES[best],
        "label": DESCRIPTIONS[CLASSES[best]],
        "confidence": probabilities[best],
        "probabilities": dict(zip(CLASSES, probabilities)),
        "model_version": answer.get("model_version") or os.environ.get("MODEL_VERSION"),
        "probabilities_list": probabilities,
    }


def _version_from_attributes(attributes: str | None) -> str | None:
    """``model_version=...`` out of the endpoint's CustomAttributes, if the container sent it."""
    for part in (attributes or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "model_version" and value:
            return value
    return None


# --- proxy responses, headers, logs -------------------------------------------


def _response(status: int, body: dict, request_id: str, headers: dict | None = None) -> dict:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", "X-Request-Id": request_id, **(headers or {})},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def _error_response(exc: RequestError, request_id: str) -> dict:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return _response(
        exc.status, {"error": exc.error, "message": exc.message, "request_id": request_id}, request_id, headers
    )


def _header(event, name: str) -> str | None:
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == name and value is not None:
            return str(value)
    for key, values in (event.get("multiValueHeaders") or {}).items():
        if key.lower() == name and values:
            return str(values[-1])
    return None


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _request_id(event, context) -> str:
    if isinstance(event, dict):
        request_id = (event.get("requestContext") or {}).get("requestId")
        if request_id:
            return str(request_id)
    return getattr(context, "aws_request_id", None) or str(uuid.uuid4())


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _log(event: str, **fields) -> None:
    logger.info(json.dumps({"event": event, **fields}, default=str))
