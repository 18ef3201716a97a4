"""What API Gateway hands a Lambda: the REST proxy event, the context, and the handler itself.

The event follows the REST API (v1) Lambda proxy integration format: single-
and multi-value headers and query parameters, ``requestContext`` with the
request id, stage and caller identity (API key included), and a body that is
base64 when its content type is one of the API's binary media types.
"""

from __future__ import annotations

import base64
import importlib.util
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from multidict import CIMultiDictProxy, MultiDictProxy

BINARY_MEDIA_TYPES = ("image/jpeg", "image/png", "application/x-image")
HANDLER_PATH = Path(__file__).resolve().parents[3] / "lambda" / "handler.py"
ACCOUNT_ID = "000000000000"  # the local stand-in for an AWS account


def load_handler(path: str | Path = HANDLER_PATH) -> ModuleType:
    """Import ``lambda/handler.py`` as a fresh module (``lambda`` is a keyword, not a package)."""
    path = Path(path)
    name = f"dd_lambda_handler_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the Lambda handler from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_binary(content_type: str | None, binary_media_types=BINARY_MEDIA_TYPES) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return any(media_type == t or t == "*/*" for t in binary_media_types)


@dataclass(frozen=True)
class Caller:
    """Who made the request, as ``requestContext.identity`` reports it."""

    source_ip: str = "127.0.0.1"
    user_agent: str | None = None
    api_key: str | None = None
    api_key_id: str | None = None


def build_proxy_event(
    method: str,
    resource: str,
    path: str,
    headers: CIMultiDictProxy | dict,
    query: MultiDictProxy | dict,
    body: bytes,
    stage: str,
    caller: Caller,
    request_id: str | None = None,
    binary_media_types=BINARY_MEDIA_TYPES,
) -> dict:
    """The REST API proxy event for one request."""
    request_id = request_id or str(uuid.uuid4())
    single_headers, multi_headers = _single_and_multi(headers)
    single_query, multi_query = _single_and_multi(query)
    content_type = _find(single_headers, "content-type")
    if not body:
        event_body, encoded = None, False
    elif is_binary(content_type, binary_media_types):
        event_body, encoded = base64.b64encode(body).decode("ascii"), True
    else:
        event_body, encoded = body.decode("utf-8", "replace"), False
    now = datetime.now(UTC)
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": single_headers or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": single_query or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "local",
            "resourcePath": resource,
            "httpMethod": method,
            "extendedRequestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "path": f"/{stage}{path}",
            "accountId": ACCOUNT_ID,
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": "localhost",
            "domainName": _find(single_headers, "host") or "localhost",
            "apiId": "local",
            "requestId": request_id,
            "identity": {
                "sourceIp": caller.source_ip,
                "userAgent": caller.user_agent,
                "apiKey": caller.api_key,
                "apiKeyId": caller.api_key_id,
                "accountId": None,
                "caller": None,
                "user": None,
                "userArn": None,
                "accessKey": None,
                "cognitoIdentityId": None,
                "cognitoIdentityPoolId": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
            },
        },
        "body": event_body,
        "isBase64Encoded": encoded,
    }


def _single_and_multi(pairs) -> tuple[dict, dict]:
    """API Gateway's two views of repeated names: the last value, and all values."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in pairs.items():
        single[key] = value
        multi.setdefault(key, []).append(value)
    return single, multi


def _find(headers: dict, name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


@dataclass
class LambdaContext:
    """The fields of the Lambda context object that handlers read."""

    aws_request_id: str
    function_name: str = "distracted-driver-predict"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    timeout_s: float = 30.0
    log_group_name: str = "/aws/lambda/distracted-driver-predict"
    log_stream_name: str = "local"
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s
        self.invoked_function_arn = f"arn:aws:lambda:local:{ACCOUNT_ID}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
