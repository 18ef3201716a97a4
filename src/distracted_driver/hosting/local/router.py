"""``POST /endpoints/{name}/invocations``, answered as SageMaker Runtime answers it.

So boto3's ``sagemaker-runtime`` client works against the runtime with
``endpoint_url=``. Errors follow botocore's service model (rest-json: the code
in ``x-amzn-ErrorType`` and ``__type``, the text in ``message``):

- unknown endpoint or variant, endpoint not in service → 400 ``ValidationError``;
- the container answered non-2xx → 424 ``ModelError`` with ``OriginalStatusCode``
  and ``OriginalMessage``; a container timeout → 424 ``ModelError`` too;
- no instance in service → 503 ``ServiceUnavailable`` (boto3 retries it);
- a body above 6,291,456 bytes → 413 with no error code, which is what the
  real service sends ("HTTP content length exceeded ... bytes"); boto3 raises
  a ``ClientError`` whose code is ``"413"``;
- anything else refused (a request aiohttp cannot parse, an unknown route, a
  body slower than the read timeout) is an error of the same shape
  (``sagemaker_shape``), never text and never a path of ours.

``GET /endpoints/{name}/health`` (not SageMaker's; the local gateway's health
check calls it) answers 200 while an instance is in service, else 503
``ServiceUnavailable`` saying why; it shows no pid and no path.

A request whose connection to an instance fails (refused, reset, closed before
an answer: the instance died) is retried on another instance; inference has no
side effects, so this is safe, and an instance dying mid-swap costs no request.

Data capture: when the endpoint captures, the router samples that share of the
invocations the model server answered (its answers and its 4xx refusals) and
offers each to the endpoint's ``CaptureWriter`` (``serve.capture``), which
queues it and writes from its own thread; a full queue drops and counts, so a
request never waits for capture. The event's ``eventId`` is the request id the
router answers with (``x-amzn-RequestId``).

``GET /metrics`` (Prometheus text) shows the capture counters of each endpoint.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from datetime import UTC, datetime

import aiohttp
from aiohttp import web

from distracted_driver.data.payload import INVOKE_ENDPOINT_MAX_BYTES
from distracted_driver.httpserver import read_body
from distracted_driver.serve.capture import Invocation
from distracted_driver.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

log = logging.getLogger("distracted_driver.hosting.runtime")

MAX_ATTEMPTS = 3
CAPACITY_WAIT_S = 5.0  # how long a request waits for an instance when none is in service
INVOCATION_TIMEOUT_S = 60.0  # SageMaker gives a container 60 s to answer
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes")
FORWARDED_RESPONSE_HEADERS = ("Content-Type", "X-Model-Version", "X-Amzn-SageMaker-Custom-Attributes")
MAX_ORIGINAL_MESSAGE = 4096
VARIANT_HEADER = "x-Amzn-Invoked-Production-Variant"
TARGET_VARIANT_HEADER = "X-Amzn-SageMaker-Target-Variant"


# The modelled SageMaker Runtime error for a status, where one fits a refusal that is not the router's own.
SAGEMAKER_CODES = {
    400: "ValidationError",
    404: "UnknownOperationException",
    405: "UnknownOperationException",
    500: "InternalFailure",
    503: "ServiceUnavailable",
}
ROUTES = "POST /endpoints/{name}/invocations, GET /endpoints/{name}/health, GET /metrics"


def _error_parts(code: str | None, message: str, request_id: str | None = None, **members) -> tuple[dict, dict]:
    body = {"message": message, **members}
    headers = {"x-amzn-RequestId": request_id or str(uuid.uuid4())}
    if code:
        body["__type"] = code
        headers["x-amzn-ErrorType"] = code
    return body, headers


def sagemaker_error(
    http_status: int, code: str | None, message: str, request_id: str | None = None, **members
) -> web.Response:
    body, headers = _error_parts(code, message, request_id, **members)
    return web.Response(
        status=http_status, body=json.dumps(body).encode(), content_type="application/json", headers=headers
    )


def sagemaker_shape(status: int, code: str, message: str) -> tuple[dict, dict]:
    """The ``httpserver.ErrorShape`` of the invocation port: rest-json errors botocore parses."""
    return _error_parts(SAGEMAKER_CODES.get(status, code), message)


def _original_message(body: bytes) -> str:
    """The container's body as text, as SageMaker passes it on (our server's is JSON)."""
    return body[:MAX_ORIGINAL_MESSAGE].decode("utf-8", errors="replace")


class Router:
    def __init__(self, runtime, body_timeout_s: float):
        self.runtime = runtime  # runtime.endpoints, runtime.wait_for_capacity
        self.body_timeout_s = body_timeout_s

    async def health(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        endpoint = self.runtime.endpoints.get(name)
        if endpoint is None:
            return sagemaker_error(400, "ValidationError", f"Endpoint {name} of account 000000000000 not found.")
        status, _ = endpoint.availability()  # the reason may name paths: deploy.status shows it, this port does not
        serving = endpoint.instances_in_service()
        facts = {"endpoint": name, "status": status, "instances_in_service": serving}
        if serving:
            return web.json_response(facts)
        return sagemaker_error(
            503,
            "ServiceUnavailable",
            f"Endpoint {name} is {status}: no instance is in service; inv deploy.status says why.",
            **facts,
        )

    async def invocations(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._invocations(request)
        except web.HTTPException:  # a refusal (a slow or broken body): the app's JSON errors answer it
            raise
        except Exception:  # a fault of ours: answered as SageMaker's InternalFailure, never a bare 500
            log.exception("router failed on %s", request.path)
            return sagemaker_error(
                500, "InternalFailure", "An internal failure occurred in the local runtime; see its log."
            )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.runtime.metrics_exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _invocations(self, request: web.Request) -> web.StreamResponse:
        arrived = datetime.now(UTC)
        name = request.match_info["name"]
        endpoint = self.runtime.endpoints.get(name)
        if endpoint is None or not endpoint.blue:
            if endpoint is None:
                return sagemaker_error(400, "ValidationError", f"Endpoint {name} of account 000000000000 not found.")
            return sagemaker_error(
                400, "ValidationError", f"Endpoint {name} is not in service (status {endpoint.status})."
            )
        if request.content_length is not None and request.content_length > INVOKE_ENDPOINT_MAX_BYTES:
            return self._too_large()
        try:
            body = await read_body(request, self.body_timeout_s)
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        if len(body) > INVOKE_ENDPOINT_MAX_BYTES:
            return self._too_large()
        target = request.headers.get(TARGET_VARIANT_HEADER)
        if target is not None and target not in endpoint.variant_names():
            return sagemaker_error(
                400,
                "ValidationError",
                f"The variant {target} is not valid for endpoint {name}; its variants are {', '.join(sorted(endpoint.variant_names()))}.",
            )
        headers = {h: request.headers[h] for h in FORWARDED_REQUEST_HEADERS if h in request.headers}
        return await self._forward(endpoint, target, body, headers, arrived)

    @staticmethod
    def _too_large() -> web.Response:
        return sagemaker_error(413, None, f"HTTP content length exceeded {INVOKE_ENDPOINT_MAX_BYTES} bytes.")

    async def _forward(
        self, endpoint, target: str | None, body: bytes, headers: dict, arrived: datetime
    ) -> web.StreamResponse:
        tried: set = set()
        waited = False
        while len(tried) < MAX_ATTEMPTS:
            choice = endpoint.route(target, tried)
            if choice is None:
                if waited:
                    break
                waited = True
                await self.runtime.wait_for_capacity(CAPACITY_WAIT_S)
                continue
            fleet, instance = choice
            started = time.monotonic()
            instance.acquire()
            try:
                async with instance.session.post(
                    "/invocations",
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=INVOCATION_TIMEOUT_S),
                ) as answer:
                    payload = await answer.read()
                    status, answer_headers = answer.status, answer.headers
            except TimeoutError:
                self._record(fleet, instance, ok=False, started=started)
                return sagemaker_error(
                    424,
                    "ModelError",
                    f"Your invocation timed out while waiting for a response from container primary "
                    f"(instance {instance.id}, variant {fleet.name}). See its log for more information "
                    "(inv deploy.status lists each instance's log).",
                )
            except aiohttp.ClientError as error:
                self._record(fleet, instance, ok=False, started=started)
                log.warning(
                    "%s/%s: instance %s unreachable (%s); retrying elsewhere",
                    endpoint.name,
                    fleet.name,
                    instance.id,
                    error,
                )
                fleet.mark_suspect(instance)
                tried.add(instance)
                continue
            finally:
                instance.release()
            self._record(fleet, instance, ok=status < 500, started=started)
            request_id = str(uuid.uuid4())
            if status < 500:  # an answer, or the model server's refusal of a bad input: both are what it saw
                self._capture(
                    endpoint,
                    Invocation(
                        endpoint.name,
                        fleet.name,
                        request_id,
                        arrived,
                        headers.get("Content-Type", ""),
                        body,
                        answer_headers.get("Content-Type", ""),
                        payload,
                    ),
                )
            if status >= 300:
                return self._model_error(fleet, instance, status, payload, request_id)
            response = web.Response(status=200, body=payload)
            for header in FORWARDED_RESPONSE_HEADERS:
                if header in answer_headers:
                    response.headers[header] = answer_headers[header]
            response.headers[VARIANT_HEADER] = fleet.name
            response.headers["x-amzn-RequestId"] = request_id
            return response
        return sagemaker_error(
            503, "ServiceUnavailable", f"No instance of endpoint {endpoint.name} is in service. Try your call again."
        )

    @staticmethod
    def _capture(endpoint, invocation: Invocation) -> None:
        """Sample the invocation and offer it to the writer: never waits (a full queue drops and counts)."""
        config, writer = endpoint.data_capture, endpoint.capture_writer
        if writer is None or config is None or not config.enabled:
            return
        if config.sampling_percent < 100 and random.random() * 100 >= config.sampling_percent:
            return
        writer.offer(invocation)

    @staticmethod
    def _record(fleet, instance, ok: bool, started: float) -> None:
        fleet.log.record(ok, (time.monotonic() - started) * 1000.0)
        instance.requests += 1
        instance.errors += not ok

    @staticmethod
    def _model_error(fleet, instance, status: int, payload: bytes, request_id: str) -> web.Response:
        original = _original_message(payload)
        kind = "client" if status < 500 else "server"
        return sagemaker_error(
            424,
            "ModelError",
            request_id=request_id,
            message=f'Received {kind} error ({status}) from primary with message "{original}". '
            f"See the log of instance {instance.id} for more information (inv deploy.status lists it).",
            OriginalStatusCode=status,
            OriginalMessage=original,
            LogStreamArn=f"arn:aws:logs:local:000000000000:log-group:/aws/sagemaker/Endpoints/{fleet.endpoint}:log-stream:{fleet.name}/{instance.id}",
        )
