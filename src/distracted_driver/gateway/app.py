"""The local API Gateway: ``POST /predict`` → REST proxy event → the real Lambda handler.

What API Gateway does in front of the Lambda, in its order: route (403
"Missing Authentication Token" for anything else), API key (403
"Forbidden"), usage-plan throttle (429), payload limit (413), then the Lambda
proxy integration (the handler runs in a thread pool, like concurrent Lambda
containers; a handler that raises or answers garbage is a 502, one that runs
past the timeout a 504). ``/openapi.json``, ``/docs`` and ``/health`` are the
local gateway's own; ``/health`` includes the endpoint: 200 only while the
runtime answers and an instance of the endpoint is in service, else 503 with
the reason.

Every refusal is JSON ``{"message": ...}``, aiohttp's own included; slow
headers and bodies get a 408 and a connection cap holds (``httpserver``).

Run it with ``python -m distracted_driver.gateway.app --runtime-url URL
--endpoint NAME --keys FILE`` (``inv api.up`` does, under the state
directory's supervisor, which starts it again if it dies).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import signal
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from distracted_driver.data.payload import LAMBDA_REQUEST_MAX_BYTES
from distracted_driver.fsutil import read_json, write_json_atomic
from distracted_driver.gateway.events import HANDLER_PATH, Caller, LambdaContext, build_proxy_event, load_handler
from distracted_driver.gateway.keys import KeyStore, Throttle, UsagePlan
from distracted_driver.gateway.openapi import DOCS_PAGE, openapi_document
from distracted_driver.httpserver import GuardedRunner, Limits, json_errors, listen_tcp, read_body
from distracted_driver.logs import add_log_arguments, configure_logging

API_GATEWAY_MAX_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
HEALTH_TIMEOUT_S = 3.0
RUNTIME_SESSION = web.AppKey("runtime_session", aiohttp.ClientSession)  # for the health check's calls
access_log = logging.getLogger("gateway.access")


def gateway_shape(status: int, code: str, message: str) -> tuple[dict, dict]:
    """API Gateway's own errors are ``{"message": ...}`` and nothing else."""
    return {"message": message}, {}


@dataclass
class GatewayConfig:
    endpoint_name: str
    runtime_url: str
    keys_path: Path
    plan: UsagePlan = field(default_factory=UsagePlan)
    stage: str = "local"
    workers: int = 32  # concurrent handler invocations, like reserved Lambda concurrency
    lambda_timeout_s: float = 29.0  # API Gateway's integration timeout
    max_request_bytes: int = API_GATEWAY_MAX_BYTES
    handler_path: Path = HANDLER_PATH
    limits: Limits = field(default_factory=lambda: Limits(max_connections=1024))


def lambda_environment(config: GatewayConfig) -> dict[str, str]:
    """The variables the handler's process needs: its endpoint, where SageMaker Runtime is, and credentials.

    Dummy credentials and a region are only filled in when none are set: the
    local runtime does not check signatures, but botocore signs every call.
    """
    env = {
        "ENDPOINT_NAME": config.endpoint_name,
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": config.runtime_url,
        "MAX_POOL_CONNECTIONS": str(config.workers),
    }
    if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")):
        env.update(AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local")
    if not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        env["AWS_DEFAULT_REGION"] = "us-east-1"
    return env


def make_app(config: GatewayConfig) -> web.Application:
    """The aiohttp application. The handler reads its settings from ``os.environ`` (see ``lambda_environment``)."""
    handler = load_handler(config.handler_path)
    keys = KeyStore(config.keys_path)
    throttle = Throttle(config.plan)
    pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="lambda")
    document = openapi_document()

    async def predict(request: web.Request) -> web.Response:
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        key = keys.lookup(request.headers.get("x-api-key"))
        response = await _gate_and_invoke(request, request_id, key)
        response.headers["x-amzn-RequestId"] = request_id
        access_log.info(
            json.dumps(
                {
                    "requestId": request_id,
                    "ip": request.remote,
                    "method": request.method,
                    "path": request.path,
                    "status": response.status,
                    "apiKeyId": key["id"] if key else None,
                    "latencyMs": round((time.perf_counter() - started) * 1000, 1),
                }
            )
        )
        return response

    async def _gate_and_invoke(request: web.Request, request_id: str, key: dict | None) -> web.Response:
        if config.plan.require_key and key is None:
            return _message(403, "Forbidden")
        if not throttle.allow(key["id"] if key else None):
            return _message(429, "Too Many Requests")
        if (request.content_length or 0) > config.max_request_bytes:
            return _message(413, "Request Too Long")
        try:
            body = await read_body(request, config.limits.body_timeout_s)
        except web.HTTPRequestEntityTooLarge:
            return _message(413, "Request Too Long")
        except web.HTTPException as refusal:  # a body too slow (408) or broken (400)
            return _message(refusal.status, refusal.text)
        caller = Caller(
            source_ip=request.remote or "127.0.0.1",
            user_agent=request.headers.get("User-Agent"),
            api_key=key["value"] if key else None,
            api_key_id=key["id"] if key else None,
        )
        event = build_proxy_event(
            request.method,
            "/predict",
            request.path,
            request.headers,
            request.query,
            body,
            config.stage,
            caller,
            request_id,
        )
        if len(json.dumps(event)) > LAMBDA_REQUEST_MAX_BYTES:
            return _message(413, "Request Too Long")
        context = LambdaContext(aws_request_id=str(uuid.uuid4()), timeout_s=config.lambda_timeout_s)
        loop = asyncio.get_running_loop()
        try:
            result = await asyncio.wait_for(
                loop.run_in_executor(pool, handler.handler, event, context), config.lambda_timeout_s
            )
        except TimeoutError:
            return _message(504, "Endpoint request timed out")
        except Exception:
            logging.getLogger("gateway").exception("the Lambda function failed (request %s)", request_id)
            return _message(502, "Internal server error")
        return _proxy_response(result, request_id)

    async def health(request: web.Request) -> web.Response:
        endpoint = await _endpoint_health(request.app[RUNTIME_SESSION], config)
        body = {"endpoint": config.endpoint_name, "runtime_url": config.runtime_url, "endpoint_health": endpoint}
        if endpoint.get("instances_in_service"):
            return web.json_response({"status": "ok", **body})
        return web.json_response({"status": "unhealthy", "message": endpoint["message"], **body}, status=503)

    async def openapi(request: web.Request) -> web.Response:
        server = f"{request.scheme}://{request.host}"
        return web.json_response({**document, "servers": [{"url": server}]})

    async def docs(request: web.Request) -> web.Response:
        return web.Response(text=DOCS_PAGE, content_type="text/html")

    async def missing(request: web.Request) -> web.Response:
        return _message(403, "Missing Authentication Token")

    async def open_runtime_session(app: web.Application) -> None:
        app[RUNTIME_SESSION] = aiohttp.ClientSession()

    async def shutdown(app: web.Application) -> None:
        pool.shutdown(wait=False, cancel_futures=True)
        await app[RUNTIME_SESSION].close()

    app = web.Application(client_max_size=config.max_request_bytes, middlewares=[json_errors(gateway_shape)])
    app.router.add_post("/predict", predict)
    app.router.add_get("/health", health)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/docs", docs)
    app.router.add_route("*", "/{tail:.*}", missing)
    app.on_startup.append(open_runtime_session)
    app.on_shutdown.append(shutdown)
    return app


async def _endpoint_health(session: aiohttp.ClientSession, config: GatewayConfig) -> dict:
    """The local runtime's word on the endpoint: ``status``, ``instances_in_service``, and ``message`` when none."""
    url = f"{config.runtime_url.rstrip('/')}/endpoints/{config.endpoint_name}/health"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as answer:
            found = await answer.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as error:
        return {
            "status": "Unreachable",
            "instances_in_service": 0,
            "message": f"the endpoint's runtime at {config.runtime_url} does not answer ({type(error).__name__})",
        }
    if not isinstance(found, dict):
        found = {}
    health = {"status": found.get("status", "Unknown"), "instances_in_service": found.get("instances_in_service") or 0}
    if not health["instances_in_service"]:
        health["message"] = found.get("message") or f"the runtime answered {answer.status}"
    return health


def _message(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def _proxy_response(result, request_id: str) -> web.Response:
    """The handler's proxy response as HTTP; a malformed one is API Gateway's 502."""
    try:
        status = int(result["statusCode"])
        headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers[str(name)] = ", ".join(str(v) for v in values)
        body = result.get("body") or ""
        data = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
        if not 100 <= status <= 599:
            raise ValueError(status)
    except (TypeError, KeyError, ValueError, AttributeError):
        logging.getLogger("gateway").error("malformed Lambda proxy response (request %s)", request_id)
        return _message(502, "Internal server error")
    headers.pop("Content-Length", None)
    return web.Response(status=status, body=data, headers=headers)


# --- the process -------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime-url", required=True, help="SageMaker Runtime base URL (the local runtime's)")
    parser.add_argument("--endpoint", required=True, help="endpoint name the handler invokes")
    parser.add_argument("--keys", required=True, type=Path, help="API key file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--rate", type=float, default=UsagePlan.rate, help="throttle: requests/s per key")
    parser.add_argument("--burst", type=int, default=UsagePlan.burst, help="throttle: burst per key")
    parser.add_argument("--no-require-key", action="store_true", help="accept requests without an API key")
    parser.add_argument("--stage", default="local")
    parser.add_argument("--workers", type=int, default=32, help="concurrent handler invocations")
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="written with the URL and pid once listening; with --port 0, the port it names is tried "
        "first, so a restarted gateway keeps its URL",
    )
    add_log_arguments(parser)
    return parser.parse_args(argv)


async def serve(config: GatewayConfig, host: str, port: int, ready_file: Path | None) -> None:
    runner = GuardedRunner(make_app(config), gateway_shape, config.limits, access_log=None)
    await runner.setup()
    previous = (read_json(ready_file) or {}).get("port") if ready_file and not port else None
    bound = await listen_tcp(runner, host, port or previous)
    url = f"http://{host}:{bound}"
    logging.getLogger("gateway").info(json.dumps({"event": "listening", "url": url, "pid": os.getpid()}))
    if ready_file:
        write_json_atomic(ready_file, {"url": url, "port": bound, "pid": os.getpid()})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("the local gateway binds to loopback only")
    configure_logging(args, "%(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    config = GatewayConfig(
        endpoint_name=args.endpoint,
        runtime_url=args.runtime_url,
        keys_path=args.keys,
        plan=UsagePlan(rate=args.rate, burst=args.burst, require_key=not args.no_require_key),
        stage=args.stage,
        workers=args.workers,
    )
    os.environ.update(lambda_environment(config))  # this process is the Lambda's container
    asyncio.run(serve(config, args.host, args.port, args.ready_file))


if __name__ == "__main__":
    main()
