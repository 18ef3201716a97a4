"""The model server: SageMaker's hosting contract over one artifact, one process per instance.

``GET /ping`` answers 200 only once the model is loaded and a warm-up
inference went through (503 before, and again while draining);
``POST /invocations`` takes ``image/jpeg``, ``image/png`` or
``application/x-image`` and answers the JSON list of the ten probabilities (or,
with ``Accept: application/json;verbose=true``, class, label, confidence,
probabilities and model version); ``GET /metrics`` is Prometheus text.
Every response carries ``X-Model-Version``; every error is JSON
``{"error", "message"}``, aiohttp's own refusals included. Headers must
arrive within ``--header-timeout`` seconds and a body within
``--read-timeout`` (408 otherwise); past ``--max-connections`` a connection
gets a 503 (``distracted_driver.httpserver``).

The event loop only moves bytes: decoding and preprocessing run on a thread
pool, inference on the batcher's thread (OpenCV and ONNX Runtime both release
the GIL). SIGTERM or SIGINT stops listening, lets the requests in flight
finish, then exits 0.

    python -m distracted_driver.serve.server --model-dir DIR [--port 8080] ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from aiohttp import web

from distracted_driver.data.imaging import MAX_PIXELS, ImageError
from distracted_driver.data.payload import INVOKE_ENDPOINT_MAX_BYTES
from distracted_driver.httpserver import GuardedRunner, Limits, json_errors, listen_on, plain_shape, read_body
from distracted_driver.logs import add_log_arguments, configure_logging
from distracted_driver.model.artifact import ArtifactError, load_artifact
from distracted_driver.model.inference import Classifier
from distracted_driver.serve.batching import DynamicBatcher
from distracted_driver.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from distracted_driver.serve.metrics import ServerMetrics
from distracted_driver.system import cpu_count

log = logging.getLogger("distracted_driver.serve")

IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image")
VERSION_HEADER = "X-Model-Version"
KNOWN_PATHS = ("/ping", "/invocations", "/metrics")
ROUTES = "GET /ping, POST /invocations, GET /metrics"
DEFAULT_PORT = 8080
WARMUP_FRAME = (480, 640)  # height, width of a camera frame


@dataclass(frozen=True)
class ServerConfig:
    model_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_batch_size: int = 8
    max_batch_delay_ms: float = 5.0
    queue_size: int = 64  # invocations admitted at once (reading, decoding, waiting, running)
    threads: int | None = None  # ONNX Runtime intra-op threads; default all cores
    concurrent_batches: int = 2  # batches run at once on the session's threads (serve.batching)
    decode_workers: int | None = None  # decode + preprocess threads; default all cores
    max_pixels: int = MAX_PIXELS
    warmup_runs: int = 2
    read_timeout_s: float = 30.0  # the body, once the headers are in
    header_timeout_s: float = 10.0
    max_connections: int = 256
    shutdown_timeout_s: float = 30.0

    def limits(self) -> Limits:
        return Limits(
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.read_timeout_s,
            max_connections=self.max_connections,
        )


def wants_verbose(accept: str) -> bool:
    """``Accept: application/json;verbose=true`` (any spacing or case) asks for the verbose object."""
    for media_range in accept.split(","):
        mime, *params = (part.strip().lower() for part in media_range.split(";"))
        if mime == "application/json" and any(p.replace(" ", "") == "verbose=true" for p in params):
            return True
    return False


def _warmup_image() -> bytes:
    """A camera-sized JPEG, so warm-up goes through the very decode path requests take."""
    gradient = np.linspace(0, 255, WARMUP_FRAME[1], dtype=np.uint8)
    frame = np.dstack([np.tile(gradient, (WARMUP_FRAME[0], 1))] * 3)
    ok, encoded = cv2.imencode(".jpg", frame)
    assert ok
    return encoded.tobytes()


class ModelServer:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.artifact = load_artifact(config.model_dir)  # a broken artifact stops us before we listen
        self.version = self.artifact.version
        self.classifier: Classifier | None = None
        self.batcher: DynamicBatcher | None = None
        self.ready = False
        self.draining = False
        self.failure: str | None = None
        self.in_flight = 0
        self.metrics = ServerMetrics(config.max_batch_size, queue_depth=lambda: self.in_flight)
        self.decode_pool = ThreadPoolExecutor(config.decode_workers or cpu_count(), thread_name_prefix="decode")
        self.stop_event: asyncio.Event | None = None
        self.port: int | None = None

    # --- application -------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(
            client_max_size=INVOKE_ENDPOINT_MAX_BYTES,
            middlewares=[self._count, json_errors(plain_shape, routes=ROUTES)],
        )
        app.router.add_get("/ping", self.ping)
        app.router.add_post("/invocations", self.invocations)
        app.router.add_get("/metrics", self.metrics_page)
        app.on_response_prepare.append(self._add_version_header)
        return app

    async def _add_version_header(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers[VERSION_HEADER] = self.version

    @web.middleware
    async def _count(self, request: web.Request, handler) -> web.StreamResponse:
        """Every answer in the metrics: requests by path and status, errors by name, latency."""
        started = time.monotonic()
        response = await handler(request)
        path = request.path if request.path in KNOWN_PATHS else "other"
        self.metrics.requests.labels(path, response.status).inc()
        if response.status >= 400 and isinstance(response, web.Response) and response.body:
            self.metrics.errors.labels(json.loads(response.body).get("error", "unknown")).inc()
        if path == "/invocations":
            self.metrics.latency.observe(time.monotonic() - started)
        return response

    # --- handlers -----------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.Response:
        if self.ready and not self.draining:
            return web.json_response(
                {
                    "status": "healthy",
                    "model_version": self.version,
                    "precision": self.artifact.served_precision,
                    "model_file": self.artifact.served_model_path.name,
                }
            )
        state = "draining" if self.draining else "loading"
        return web.json_response({"status": state, "model_version": self.version}, status=503)

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def invocations(self, request: web.Request) -> web.Response:
        if not self.ready:
            return self._error(503, "ModelNotReady", "the model is still loading; retry once /ping answers 200")
        if request.content_type not in IMAGE_CONTENT_TYPES:
            return self._error(
                415,
                "UnsupportedMediaType",
                f"content type {request.content_type!r} is not accepted; send one of {', '.join(IMAGE_CONTENT_TYPES)}",
            )
        if self.in_flight >= self.config.queue_size:
            return self._error(503, "Overloaded", f"{self.in_flight} requests are queued; retry shortly")
        self.in_flight += 1
        try:
            return await self._classify(request)
        finally:
            self.in_flight -= 1

    async def _classify(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > INVOKE_ENDPOINT_MAX_BYTES:
            return self._too_large(request.content_length)
        try:
            body = await read_body(request, self.config.read_timeout_s)
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(None)
        loop = asyncio.get_running_loop()
        try:
            tensor = await loop.run_in_executor(self.decode_pool, self.classifier.prepare, body, self.config.max_pixels)
        except ImageError as error:
            return self._error(400, "InvalidImage", str(error))
        probabilities = await self.batcher.submit(tensor)
        if wants_verbose(request.headers.get("Accept", "")):
            return web.json_response(self.classifier.describe(probabilities))
        return web.json_response([float(p) for p in probabilities])

    def _too_large(self, size: int | None) -> web.Response:
        stated = f"{size} bytes" if size is not None else "the body"
        return self._error(413, "PayloadTooLarge", f"{stated} exceeds the limit of {INVOKE_ENDPOINT_MAX_BYTES} bytes")

    @staticmethod
    def _error(status: int, error: str, message: str) -> web.Response:
        return web.json_response({"error": error, "message": message}, status=status)

    # --- lifecycle ----------------------------------------------------------------

    async def load(self) -> None:
        """Build the session and warm it up through decode and a full batch; then /ping turns 200."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            self.classifier = await loop.run_in_executor(None, Classifier, self.artifact, self.config.threads)
            self.batcher = DynamicBatcher(
                self.classifier.predict,
                self.config.max_batch_size,
                self.config.max_batch_delay_ms / 1000.0,
                on_batch=self._record_batch,
                concurrency=self.config.concurrent_batches,
            )
            self.batcher.start()
            tensor = await loop.run_in_executor(self.decode_pool, self.classifier.prepare, _warmup_image())
            for _ in range(max(1, self.config.warmup_runs)):
                for size in sorted({1, self.config.max_batch_size}):
                    probabilities = await self.batcher.run_now(np.stack([tensor] * size))
                    if probabilities.shape != (size, len(self.classifier.labels)):
                        raise ArtifactError(f"model answered shape {probabilities.shape} for a batch of {size}")
        except Exception as error:
            log.error("model %s failed to load: %s", self.version, error)
            self.failure = str(error)
            self.stop_event.set()
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info(
            "model %s ready after %.2f s (warm-up included), serving %s (%s)",
            self.version,
            time.monotonic() - started,
            self.artifact.served_precision,
            self.artifact.served_model_path.name,
        )

    def _record_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.inference.observe(seconds)

    async def serve(self) -> int:
        """Listen until SIGTERM/SIGINT, then drain; 0 on a clean stop, 1 when the model failed to load."""
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        runner = GuardedRunner(
            self.make_app(),
            plain_shape,
            self.config.limits(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.config.shutdown_timeout_s,
        )
        await runner.setup()
        self.port = await listen_on(runner, self.config.host, self.config.port)
        log.info("model server listening on http://%s:%d (model %s)", self.config.host, self.port, self.version)
        loader = loop.create_task(self.load())
        await self.stop_event.wait()
        self.draining = True
        self.metrics.ready.set(0)
        log.info("stopping: draining %d request(s) in flight", self.in_flight)
        loader.cancel()
        await runner.cleanup()  # stops listening, then waits for the handlers in flight
        if self.batcher is not None:
            await self.batcher.close()
        self.decode_pool.shutdown(wait=True)
        log.info("model server stopped")
        return 1 if self.failure else 0


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, ServerConfig]:
    parser = argparse.ArgumentParser(
        prog="python -m distracted_driver.serve.server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model-dir", required=True, type=Path, help="unpacked model.tar.gz")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT)),
        help="port (default $SAGEMAKER_BIND_TO_PORT or 8080; 0 picks a free one, logged at start)",
    )
    parser.add_argument("--max-batch-size", type=int, default=8, help="images per ONNX Runtime run")
    parser.add_argument("--max-batch-delay-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    parser.add_argument("--queue-size", type=int, default=64, help="invocations admitted at once; more get 503")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    parser.add_argument(
        "--concurrent-batches", type=int, default=2, help="batches run at once, sharing those threads (default 2)"
    )
    parser.add_argument("--decode-workers", type=int, default=None, help="decode threads (default: all cores)")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="largest image accepted, in pixels")
    parser.add_argument("--warmup-runs", type=int, default=2, help="warm-up inferences before /ping turns 200")
    parser.add_argument("--read-timeout", type=float, default=30.0, help="seconds allowed for a request body to arrive")
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds allowed for a request's headers to arrive once connected",
    )
    parser.add_argument("--max-connections", type=int, default=256, help="open connections at most; more get 503")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds to drain on SIGTERM")
    add_log_arguments(parser)
    args = parser.parse_args(argv)
    if args.max_batch_size < 1 or args.queue_size < 1 or args.concurrent_batches < 1:
        parser.error("--max-batch-size, --queue-size and --concurrent-batches must be at least 1")
    return args, ServerConfig(
        model_dir=args.model_dir,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        queue_size=args.queue_size,
        threads=args.threads,
        concurrent_batches=args.concurrent_batches,
        decode_workers=args.decode_workers,
        max_pixels=args.max_pixels,
        warmup_runs=args.warmup_runs,
        read_timeout_s=args.read_timeout,
        header_timeout_s=args.header_timeout,
        max_connections=args.max_connections,
        shutdown_timeout_s=args.shutdown_timeout,
    )


def main(argv: list[str] | None = None) -> int:
    args, config = parse_args(argv)
    configure_logging(args, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    cv2.setNumThreads(1)  # parallelism comes from the decode pool; OpenCV's own pool would oversubscribe
    try:
        server = ModelServer(config)
    except ArtifactError as error:
        log.error("%s", error)
        return 1
    return asyncio.run(server.serve())


if __name__ == "__main__":
    sys.exit(main())
