"""The local runtime: one long-lived process that is SageMaker hosting on this machine.

It owns the endpoints and their instances (model-server processes), the router
(``POST /endpoints/{name}/invocations`` on a loopback TCP port), blue/green
deployments, autoscaling and instance supervision. It is a daemon, run by the
state directory's supervisord (``distracted_driver.supervision``), so the
endpoint outlives the command that deployed it and comes back when the
runtime is killed. Tasks drive it through a small control API on a Unix
socket only this user can open (``control.sock``, mode 0600); the TCP port
serves invocations and nothing else. It alone writes ``state.json``, the one
source of truth, after every change; after a restart it brings the endpoints
in service back up from there.

    python -m distracted_driver.hosting.local.runtime --state-dir .state [--port 0] [--log-file F]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time

from aiohttp import web

from distracted_driver.data.payload import INVOKE_ENDPOINT_MAX_BYTES
from distracted_driver.fsutil import read_json, write_json_atomic
from distracted_driver.hosting.base import AlarmThresholds, ScalingPolicy, TrafficRouting
from distracted_driver.hosting.local import endpoint as states
from distracted_driver.hosting.local.autoscaling import ScalerState, decide, record_action
from distracted_driver.hosting.local.bluegreen import Deployment
from distracted_driver.hosting.local.client import kill_orphans
from distracted_driver.hosting.local.endpoint import Endpoint
from distracted_driver.hosting.local.fleet import Fleet
from distracted_driver.hosting.local.instances import InstanceError, adoptable
from distracted_driver.hosting.local.metrics import capture_metrics
from distracted_driver.hosting.local.router import ROUTES, Router, sagemaker_shape
from distracted_driver.hosting.local.state import (
    EndpointConfigRecord,
    ModelRecord,
    RuntimePaths,
    VariantConfig,
    load_state,
    save_state,
    to_json,
)
from distracted_driver.httpserver import (
    GuardedRunner,
    Limits,
    json_errors,
    listen_tcp,
    plain_shape,
    private_unix_socket,
)
from distracted_driver.logs import LogRotation, add_log_arguments, configure_logging
from distracted_driver.model.artifact import ArtifactError, load_artifact
from distracted_driver.serve.capture import CaptureConfig, CaptureWriter
from distracted_driver.storage.local import LocalStorage

log = logging.getLogger("distracted_driver.hosting.runtime")

AUTOSCALE_INTERVAL_S = 0.5
CONTROL_BODY_LIMIT = 64 * 1024 * 1024  # smoke images travel base64 in control requests
INVOCATION_LIMITS = Limits(max_connections=1024)
CAPTURE_CLOSE_TIMEOUT_S = 20.0  # within supervisord's stop wait (client.STOP_TIMEOUT_S)


class ControlError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Runtime:
    def __init__(self, paths: RuntimePaths, log_rotation: LogRotation = LogRotation()):
        self.paths = paths
        self.log_rotation = log_rotation
        state = load_state(paths)
        self.models = {name: ModelRecord(**m) for name, m in state["models"].items()}
        self.configs = {name: EndpointConfigRecord(**c) for name, c in state["endpoint_configs"].items()}
        self.endpoints = {name: Endpoint(name, e) for name, e in state["endpoints"].items()}
        self._next_instance = state.get("next_instance", 1)
        self._left_running = state.get("processes", [])  # instances a previous runtime started
        self.last_port = state.get("runtime_port")
        self.started = time.time()
        self.url = ""
        self.port: int | None = None
        self.stopping = asyncio.Event()
        self._capacity = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.router = Router(self, INVOCATION_LIMITS.body_timeout_s)

    # --- persistence --------------------------------------------------------------------

    def save(self) -> None:
        processes = [
            {
                "pid": i.pid,
                "instance": i.id,
                "port": i.port,
                "endpoint": name,
                "config": fleet.config_name,
                "variant": fleet.name,
                "role": role,
            }
            for name, endpoint in self.endpoints.items()
            for role, fleets in (("blue", endpoint.blue), ("green", endpoint.green or {}))
            for fleet in fleets.values()
            for i in fleet.instances
            if i.pid and i.process.returncode is None
        ]
        save_state(
            self.paths,
            {
                "version": 1,
                "models": {name: to_json(m) for name, m in self.models.items()},
                "endpoint_configs": {name: to_json(c) for name, c in self.configs.items()},
                "endpoints": {name: e.to_record() for name, e in self.endpoints.items()},
                "processes": processes,
                "next_instance": self._next_instance,
                "runtime_port": self.port,
            },
        )

    def new_instance_id(self) -> str:
        number, self._next_instance = self._next_instance, self._next_instance + 1
        return f"i-{number:04d}"

    def new_fleet(self, endpoint_name: str, config: EndpointConfigRecord, variant: VariantConfig) -> Fleet:
        return Fleet(
            endpoint_name,
            config.name,
            variant,
            self.models[variant.model_name],
            self.paths,
            self.new_instance_id,
            self._fleet_changed,
            self.log_rotation,
        )

    def _fleet_changed(self) -> None:
        self.save()
        event, self._capacity = self._capacity, asyncio.Event()
        event.set()  # wakes requests waiting for an instance

    async def wait_for_capacity(self, timeout_s: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._capacity.wait(), timeout_s)

    def fleet_size_changed(self, endpoint: Endpoint) -> None:
        for scaler in endpoint.scalers.values():
            scaler.steady_since = time.monotonic()

    def spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- start and stop -------------------------------------------------------------------

    async def restore(self) -> None:
        """Bring back what state.json says was in service when the runtime last stopped.

        The instances of a runtime that was killed are still running: those of
        the configs in service are taken over, any other is killed.
        """
        running = self._servers_left_running()
        kept = frozenset(process.pid for group in running.values() for _, process in group)
        for pid in kill_orphans(self.paths, keep=kept):
            log.warning("killed model server %d left by a previous runtime", pid)
        for endpoint in self.endpoints.values():
            for record in endpoint.deployments:
                if record.get("outcome") is None:
                    record.update(
                        outcome="failed",
                        phase="done",
                        finished=time.time(),
                        reason="the runtime stopped during the deployment; the endpoint stays on blue",
                    )
            config = self.configs.get(endpoint.config_name or "")
            if config is None:
                endpoint.status = states.FAILED if endpoint.status != states.FAILED else endpoint.status
                continue
            self._start_capture(endpoint)
            self.spawn(self._bring_up(endpoint, config, running))
        self.save()

    def _servers_left_running(self) -> dict[tuple, list]:
        """Blue instances of the previous runtime still alive, by (endpoint, config, variant)."""
        running: dict[tuple, list] = {}
        for record in self._left_running:
            endpoint = self.endpoints.get(record.get("endpoint"))
            if endpoint is None or record.get("role") != "blue" or record.get("config") != endpoint.config_name:
                continue
            process = adoptable(record, str(self.paths.root))
            if process is not None:
                running.setdefault((endpoint.name, record["config"], record["variant"]), []).append((record, process))
        return running

    async def _bring_up(self, endpoint: Endpoint, config: EndpointConfigRecord, running: dict[tuple, list]) -> None:
        """Put the config in service again (taking over its instances that still run); requests meanwhile
        wait for the first instance."""
        endpoint.status = states.SYSTEM_UPDATING
        fleets = {v.variant_name: self.new_fleet(endpoint.name, config, v) for v in config.variants}
        endpoint.blue = fleets
        results = await asyncio.gather(
            *(
                fleet.bring_up(
                    endpoint.instance_counts.get(name, fleet.variant.instance_count),
                    running.get((endpoint.name, config.name, name), []),
                )
                for name, fleet in fleets.items()
            ),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            endpoint.status, endpoint.failure_reason = states.FAILED, f"could not restore: {failures[0]}"
            endpoint.blue = {}
            await asyncio.gather(*(fleet.retire() for fleet in fleets.values()))
            self.save()
            return
        for fleet in fleets.values():
            fleet.supervise()
        endpoint.status = states.IN_SERVICE
        log.info("endpoint %s restored on config %s", endpoint.name, config.name)
        self._fleet_changed()

    async def shutdown(self) -> None:
        log.info("runtime stopping: retiring every instance")
        for endpoint in self.endpoints.values():
            if endpoint.deployment:
                endpoint.deployment.request_rollback("the runtime is stopping")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(
            *(fleet.retire() for e in self.endpoints.values() for fleet in e.all_fleets()), return_exceptions=True
        )
        for endpoint in self.endpoints.values():
            endpoint.green, endpoint.green_share = None, 0.0
        self.save()

    # --- autoscaling ------------------------------------------------------------------------

    async def autoscale_loop(self) -> None:
        while True:
            await asyncio.sleep(AUTOSCALE_INTERVAL_S)
            for endpoint in self.endpoints.values():
                if endpoint.status == states.IN_SERVICE and endpoint.deployment is None:
                    self._autoscale(endpoint)

    def _autoscale(self, endpoint: Endpoint) -> None:
        now = time.monotonic()
        for variant, policy in endpoint.autoscaling.items():
            fleet = endpoint.blue.get(variant)
            if fleet is None or variant in endpoint.scaling_busy:
                continue
            scaler = endpoint.scalers.setdefault(variant, ScalerState(steady_since=now))
            current = len(fleet.in_service())
            if current != fleet.desired():
                continue  # an instance is starting or being replaced: the count is not settled
            invocations = fleet.log.window(policy.metric_window_seconds, now).requests
            decision = decide(policy, scaler, current, invocations, now)
            endpoint.scaling_decisions[variant] = {**decision.to_json(), "time": time.time()}
            if decision.act and decision.desired != current:
                record_action(scaler, decision, now)
                endpoint.scaling_busy.add(variant)
                self.spawn(self._scale(endpoint, fleet, decision))

    async def _scale(self, endpoint: Endpoint, fleet: Fleet, decision) -> None:
        activity = {
            "time": time.time(),
            "variant": fleet.name,
            "from": decision.current,
            "to": decision.desired,
            "metric": decision.to_json()["metric_invocations_per_instance_per_minute"],
            "reason": decision.reason,
            "status": "in-progress",
        }
        endpoint.add_activity(activity)
        log.info(
            "autoscaling %s/%s %d -> %d: %s",
            endpoint.name,
            fleet.name,
            decision.current,
            decision.desired,
            decision.reason,
        )
        try:
            await fleet.scale_to(decision.desired)
            activity["status"] = "successful"
        except InstanceError as error:
            activity["status"], activity["failure"] = "failed", str(error)
            log.error("autoscaling %s/%s failed: %s", endpoint.name, fleet.name, error)
        finally:
            activity["finished"] = time.time()
            endpoint.instance_counts[fleet.name] = fleet.desired()
            endpoint.scaling_busy.discard(fleet.name)
            endpoint.scalers[fleet.name].steady_since = time.monotonic()
            self.save()

    # --- control API ------------------------------------------------------------------------

    def status(self) -> dict:
        return {
            "runtime": {
                "pid": os.getpid(),
                "url": self.url,
                "started": self.started,
                "log": str(self.paths.log_file),
                "control_socket": str(self.paths.control_socket),
            },
            "models": {name: to_json(m) for name, m in self.models.items()},
            "endpoint_configs": {name: to_json(c) for name, c in self.configs.items()},
            "endpoints": {name: e.to_json() for name, e in self.endpoints.items()},
        }

    def put_model(self, body: dict) -> dict:
        # Imported here: the artifact reader brings OpenCV and numpy, which a restarted runtime need not
        # load before it serves again.

        name, model_dir = _required(body, "name"), _required(body, "model_dir")
        try:
            artifact = load_artifact(model_dir)
        except ArtifactError as error:
            raise ControlError(400, str(error)) from None
        if artifact.version != name:
            raise ControlError(400, f"the artifact in {model_dir} is model version {artifact.version}, not {name}")
        self.models[name] = ModelRecord(name, str(model_dir), body.get("artifact_key", ""))
        self.save()
        return to_json(self.models[name])

    def put_endpoint_config(self, body: dict) -> dict:
        try:
            config = EndpointConfigRecord(_required(body, "name"), _required(body, "variants"))
        except (TypeError, ValueError) as error:
            raise ControlError(400, f"invalid endpoint config: {error}") from None
        for variant in config.variants:
            if variant.model_name not in self.models:
                raise ControlError(400, f"variant {variant.variant_name}: no model named {variant.model_name}")
        existing = self.configs.get(config.name)
        if existing is not None:
            if existing.variants != config.variants:
                raise ControlError(
                    409, f"endpoint config {config.name} exists with other variants; configs are immutable"
                )
            return to_json(existing)
        self.configs[config.name] = config
        self.save()
        return to_json(config)

    def deploy(self, name: str, body: dict, kind: str = "update") -> dict:
        """CreateEndpoint or UpdateEndpoint: starts a deployment and answers at once."""
        config = self.configs.get(_required(body, "config"))
        if config is None:
            raise ControlError(400, f"no endpoint config named {body['config']}")
        endpoint = self.endpoints.get(name)
        if endpoint is not None and (endpoint.deployment is not None or endpoint.status == states.SYSTEM_UPDATING):
            raise ControlError(409, f"endpoint {name} is {endpoint.status}; wait until it is InService")
        try:
            routing = TrafficRouting(**body.get("routing", {}))
            alarms = AlarmThresholds(**body.get("alarms", {}))
            smoke = [base64.b64decode(image, validate=True) for image in body.get("smoke_images", [])]
            capture = CaptureConfig.from_json(body["data_capture"]) if body.get("data_capture") else None
        except (TypeError, ValueError, binascii.Error) as error:
            raise ControlError(400, f"invalid deployment request: {error}") from None
        if not smoke:
            raise ControlError(400, "a deployment needs at least one smoke image")
        if endpoint is None:
            endpoint = self.endpoints[name] = Endpoint(name)
        deployment = Deployment(self, endpoint, config, routing, alarms, smoke, kind)
        endpoint.deployment = deployment
        endpoint.add_deployment(deployment.record)
        self.save()
        self.spawn(self._run_deployment(endpoint, deployment, capture))
        return deployment.record

    async def _run_deployment(
        self, endpoint: Endpoint, deployment: Deployment, capture: CaptureConfig | None = None
    ) -> None:
        try:
            await deployment.run()
            if capture is not None and deployment.record["outcome"] == "deployed":
                await self._apply_capture(endpoint, capture)  # as SageMaker: the new config's capture, once live
        finally:
            endpoint.deployment = None
            self.save()

    def rollback(self, name: str, body: dict) -> dict:
        """Stop the deployment in progress (traffic back to blue), or redeploy the previous config."""
        endpoint = self._endpoint(name)
        if endpoint.deployment is not None:
            endpoint.deployment.request_rollback("manual rollback requested")
            return endpoint.deployment.record
        if not endpoint.previous_config:
            raise ControlError(409, f"endpoint {name} has no previous endpoint config to roll back to")
        body = {
            **body,
            "config": endpoint.previous_config,
            "routing": {"strategy": "all-at-once", "wait_seconds": 0, "bake_seconds": 0, "termination_wait_seconds": 0},
        }
        return self.deploy(name, body, kind="rollback")

    def deployment(self, name: str, deployment_id: str) -> dict:
        endpoint = self._endpoint(name)
        for record in endpoint.deployments:
            if record["id"] == deployment_id:
                return record
        raise ControlError(404, f"endpoint {name} has no deployment {deployment_id}")

    def set_autoscaling(self, name: str, variant: str, body: dict | None) -> dict:
        endpoint = self._endpoint(name)
        if variant not in endpoint.blue:
            raise ControlError(400, f"endpoint {name} has no variant {variant}")
        if body is None:
            endpoint.autoscaling.pop(variant, None)
            endpoint.scalers.pop(variant, None)
        else:
            try:
                endpoint.autoscaling[variant] = ScalingPolicy(**body)
            except (TypeError, ValueError) as error:
                raise ControlError(400, f"invalid scaling policy: {error}") from None
            endpoint.scalers[variant] = ScalerState(steady_since=time.monotonic())
            log.info("autoscaling %s/%s: policy %s", name, variant, body)
        self.save()
        return endpoint.to_json()

    # --- data capture ----------------------------------------------------------------------

    async def set_capture(self, name: str, body: dict) -> dict:
        """Capture a share of the endpoint's invocations (``sampling_percent`` 0: none) from now on."""
        endpoint = self._endpoint(name)
        try:
            config = CaptureConfig.from_json(body)
        except ValueError as error:
            raise ControlError(400, str(error)) from None
        await self._apply_capture(endpoint, config)
        self.save()
        return endpoint.to_json()["data_capture"]

    async def _apply_capture(self, endpoint: Endpoint, config: CaptureConfig) -> None:
        before, old = endpoint.data_capture, endpoint.capture_writer
        endpoint.data_capture = config
        if old is not None and config.enabled and before.with_percent(0) == config.with_percent(0):
            log.info("data capture of %s: %d%% of invocations", endpoint.name, config.sampling_percent)
            return  # only the share changed: the router samples, the writer goes on
        endpoint.capture_writer = None
        self._start_capture(endpoint)  # the new writer takes the invocations from now on...
        if old is not None:  # ...while the old one writes out what it holds, off the event loop
            await self._close_writer(endpoint, old, "capture settings changed")

    def _start_capture(self, endpoint: Endpoint) -> None:
        config = endpoint.data_capture
        if config is None or not config.enabled or endpoint.capture_writer is not None:
            return
        endpoint.capture_writer = CaptureWriter(
            LocalStorage(config.destination), config, name=f"capture-{endpoint.name}"
        )
        log.info(
            "data capture of %s: %d%% of invocations to %s",
            endpoint.name,
            config.sampling_percent,
            config.destination_uri,
        )

    @staticmethod
    async def _close_writer(endpoint: Endpoint, writer: CaptureWriter, why: str) -> None:
        before = writer.stats()
        final = await asyncio.to_thread(writer.close, CAPTURE_CLOSE_TIMEOUT_S)
        endpoint.retired_capture.append(final)
        lost = final.lost - before.lost
        log.log(
            logging.WARNING if lost else logging.INFO,
            "data capture of %s (%s): %d queued records written out, %d lost; since the runtime started "
            "%d written in %d files, %d dropped (queue full), %d lost in all",
            endpoint.name,
            why,
            before.queued - lost,
            lost,
            final.written,
            final.files,
            final.dropped,
            final.lost,
        )

    async def close_capture(self) -> None:
        """Write out every queued capture record (a clean stop loses none), and say so."""
        for endpoint in self.endpoints.values():
            writer, endpoint.capture_writer = endpoint.capture_writer, None
            if writer is not None:
                await self._close_writer(endpoint, writer, "the runtime is stopping")

    def metrics_exposition(self) -> bytes:
        return capture_metrics({name: e.capture_stats() for name, e in self.endpoints.items() if e.data_capture})

    async def delete_endpoint(self, name: str) -> None:
        endpoint = self._endpoint(name)
        endpoint.status = states.DELETING
        if endpoint.deployment is not None:
            endpoint.deployment.request_rollback("the endpoint is being deleted")
            while endpoint.deployment is not None:
                await asyncio.sleep(0.05)
        await asyncio.gather(*(fleet.retire() for fleet in endpoint.all_fleets()))
        if endpoint.capture_writer is not None:
            writer, endpoint.capture_writer = endpoint.capture_writer, None
            await self._close_writer(endpoint, writer, "the endpoint is deleted")
        del self.endpoints[name]
        self.save()
        log.info("endpoint %s deleted", name)

    def _endpoint(self, name: str) -> Endpoint:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise ControlError(404, f"no endpoint named {name}")
        return endpoint


def _required(body: dict, key: str):
    if not isinstance(body, dict) or key not in body:
        raise ControlError(400, f"missing field {key!r}")
    return body[key]


# --- HTTP -----------------------------------------------------------------------------------


def make_invocation_app(runtime: Runtime) -> web.Application:
    """The TCP port: SageMaker Runtime's invocations, the endpoint health check and the metrics, nothing else."""
    app = web.Application(
        client_max_size=INVOKE_ENDPOINT_MAX_BYTES + 1, middlewares=[json_errors(sagemaker_shape, ROUTES)]
    )
    app.router.add_post("/endpoints/{name}/invocations", runtime.router.invocations)
    app.router.add_get("/endpoints/{name}/health", runtime.router.health)
    app.router.add_get("/metrics", runtime.router.metrics)
    return app


def make_control_app(runtime: Runtime) -> web.Application:
    """The control socket: models, endpoint configs, deployments, autoscaling, status, shutdown."""
    app = web.Application(client_max_size=CONTROL_BODY_LIMIT, middlewares=[json_errors(plain_shape), _control_errors])
    routes = web.RouteTableDef()

    @routes.get("/health")
    async def health(request):
        return web.json_response({"pid": os.getpid(), "url": runtime.url, "started": runtime.started})

    @routes.get("/status")
    async def status(request):
        return web.json_response(runtime.status())

    @routes.post("/models")
    async def models(request):
        return web.json_response(runtime.put_model(await _json(request)))

    @routes.post("/endpoint-configs")
    async def endpoint_configs(request):
        return web.json_response(runtime.put_endpoint_config(await _json(request)))

    @routes.post("/endpoints/{name}/deployments")
    async def deploy(request):
        return web.json_response(runtime.deploy(request.match_info["name"], await _json(request)), status=202)

    @routes.get("/endpoints/{name}/deployments/{id}")
    async def deployment(request):
        return web.json_response(runtime.deployment(request.match_info["name"], request.match_info["id"]))

    @routes.post("/endpoints/{name}/rollback")
    async def rollback(request):
        return web.json_response(runtime.rollback(request.match_info["name"], await _json(request)), status=202)

    @routes.put("/endpoints/{name}/autoscaling/{variant}")
    async def autoscaling(request):
        info = request.match_info
        return web.json_response(runtime.set_autoscaling(info["name"], info["variant"], await _json(request)))

    @routes.delete("/endpoints/{name}/autoscaling/{variant}")
    async def no_autoscaling(request):
        return web.json_response(
            runtime.set_autoscaling(request.match_info["name"], request.match_info["variant"], None)
        )

    @routes.put("/endpoints/{name}/data-capture")
    async def data_capture(request):
        return web.json_response(await runtime.set_capture(request.match_info["name"], await _json(request)))

    @routes.delete("/endpoints/{name}")
    async def delete(request):
        await runtime.delete_endpoint(request.match_info["name"])
        return web.json_response({"deleted": request.match_info["name"]})

    @routes.post("/shutdown")
    async def shutdown(request):
        runtime.stopping.set()
        return web.json_response({"stopping": True})

    app.add_routes(routes)
    return app


@web.middleware
async def _control_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except ControlError as error:
        return web.json_response({"error": type(error).__name__, "message": str(error)}, status=error.status)


async def _json(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise ControlError(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise ControlError(400, "the request body must be a JSON object")
    return body


async def serve(paths: RuntimePaths, host: str, port: int, log_rotation: LogRotation = LogRotation()) -> None:
    runtime = Runtime(paths, log_rotation)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stopping.set)
    invocations = GuardedRunner(
        make_invocation_app(runtime), sagemaker_shape, INVOCATION_LIMITS, access_log=None, handle_signals=False
    )
    control = GuardedRunner(
        make_control_app(runtime), plain_shape, Limits(max_connections=64), access_log=None, handle_signals=False
    )
    await invocations.setup()
    await control.setup()
    # The port it had last time, so that its URL (which a gateway or a client may hold) survives a restart.
    bound = await listen_tcp(invocations, host, port or runtime.last_port)
    await control.serve(private_unix_socket(paths.control_socket))
    runtime.port, runtime.url = bound, f"http://{host}:{bound}"
    write_json_atomic(
        paths.runtime_file,
        {
            "pid": os.getpid(),
            "url": runtime.url,
            "port": bound,
            "started": runtime.started,
            "log": str(paths.log_file),
            "control_socket": str(paths.control_socket),
        },
    )
    log.info(
        "runtime %d listening on %s, control on %s (state in %s)",
        os.getpid(),
        runtime.url,
        paths.control_socket,
        paths.root,
    )
    await runtime.restore()
    scaler = loop.create_task(runtime.autoscale_loop())
    await runtime.stopping.wait()
    scaler.cancel()
    await runtime.shutdown()
    await invocations.cleanup()
    await runtime.close_capture()  # after the port closed: no invocation comes after it
    await control.cleanup()
    if (read_json(paths.runtime_file) or {}).get("pid") == os.getpid():
        paths.runtime_file.unlink(missing_ok=True)
        paths.control_socket.unlink(missing_ok=True)
    log.info("runtime %d stopped", os.getpid())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distracted_driver.hosting.local.runtime", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--state-dir", required=True, help="the settings' state_dir; the runtime keeps its files under hosting/"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only by default)")
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="port (default 0: the one used last time if free, else any free one; see runtime.json)",
    )
    add_log_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args, "%(asctime)s %(levelname)s %(message)s")
    paths = RuntimePaths.under(args.state_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    lock = open(paths.daemon_lock, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.error("another runtime already runs on %s", paths.root)
        return 3
    asyncio.run(serve(paths, args.host, args.port, LogRotation(args.log_max_bytes, args.log_backups)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
