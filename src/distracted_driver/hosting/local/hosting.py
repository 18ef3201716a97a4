"""``LocalHosting``: the ``Hosting`` interface over the local runtime daemon.

It does what SageMaker's control plane asks of its caller: fetch the artifact
from the bucket (CreateModel), write an endpoint config, start the deployment
and follow it to its end, then record the live version in the registry.
The runtime does the rest (fleets, traffic, alarms, autoscaling).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from distracted_driver.config import Settings
from distracted_driver.hashing import sha256_file
from distracted_driver.hosting.base import (
    AlarmThresholds,
    DeployResult,
    EndpointStatus,
    Hosting,
    HostingError,
    ModelSpec,
    ScalingPolicy,
    TrafficRouting,
)
from distracted_driver.hosting.local import client as daemon
from distracted_driver.hosting.local.state import RuntimePaths, load_state, save_state
from distracted_driver.hosting.smoke import smoke_images as default_smoke_images
from distracted_driver.logs import LogRotation
from distracted_driver.model.artifact import ArtifactError, load_artifact, unpack_artifact
from distracted_driver.model.registry import Registry, RegistryError
from distracted_driver.serve.capture import CaptureConfig, CaptureLimits
from distracted_driver.storage import Storage, open_storage

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2


class LocalHosting(Hosting):
    def __init__(
        self,
        settings: Settings,
        storage: Storage | None = None,
        instance_threads: int | None = None,
        startup_timeout_seconds: float = 120.0,
        on_event: Callable[[dict], None] | None = None,
        log_rotation: LogRotation = LogRotation(),
        capture_limits: CaptureLimits = CaptureLimits(),
    ):
        self.settings = settings
        self.capture_limits = capture_limits  # the capture writer's queue, file size and flush interval
        self.paths = RuntimePaths.under(settings.state_dir)
        self._storage = storage
        self.instance_threads = instance_threads
        self.startup_timeout_seconds = startup_timeout_seconds
        self.on_event = on_event or (lambda event: log.info("%s", event["message"]))
        self.log_rotation = log_rotation  # of the runtime's log and its instances' logs

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = open_storage(self.settings)
        return self._storage

    @property
    def endpoint_name(self) -> str:
        return self.settings.endpoint_name

    def runtime(self) -> daemon.RuntimeClient:
        """A client of the runtime daemon, started if it is not running."""
        daemon.ensure_runtime(self.paths, self.log_rotation)
        return daemon.RuntimeClient.of(self.paths)

    # --- deploy ---------------------------------------------------------------------------

    def deploy(
        self,
        model: ModelSpec,
        routing: TrafficRouting = TrafficRouting(),
        alarms: AlarmThresholds = AlarmThresholds(),
        smoke_images: list[bytes] | None = None,
        capture_percent: int | None = None,
    ) -> DeployResult:
        """Create the endpoint, or swap it blue/green to ``model``; a no-op when it is live already.

        A capture percent (else the settings') is applied when the model is live, as SageMaker applies
        the new endpoint config's DataCaptureConfig; a swap that rolls back leaves capture as it was.
        """
        started, started_wall = time.monotonic(), time.time()
        capture = self._capture_config(capture_percent)
        runtime = self.runtime()
        endpoint = self._settled_endpoint(runtime)
        live = self._serving_version(endpoint)
        if live == model.version:
            self._record_live(model.version, {"endpoint": self.endpoint_name})
            reason = f"{live} is already live on {self.endpoint_name}"
            if capture is not None:
                if ((endpoint or {}).get("data_capture") or {}).get("sampling_percent") != capture.sampling_percent:
                    reason += f"; data capture now {capture.sampling_percent}%"
                self._put_capture(runtime, capture)
            return DeployResult("unchanged", self.endpoint_name, live, reason)
        model_dir = self._fetch_model(model)
        runtime.post("models", {"name": model.version, "model_dir": str(model_dir), "artifact_key": model.artifact_key})
        config = self._put_config(runtime, model)
        prepared = time.monotonic() - started
        images = smoke_images or default_smoke_images(self.storage, self.settings)
        record = runtime.post(
            f"endpoints/{self.endpoint_name}/deployments",
            {
                "config": config,
                "routing": asdict(routing),
                "alarms": asdict(alarms),
                "smoke_images": [base64.b64encode(image).decode() for image in images],
                **({"data_capture": capture.to_json()} if capture is not None else {}),
            },
        )
        record = self._follow(runtime, record)
        timings = {"prepare": round(prepared, 3), **record["timings"]}
        if record.get("all_traffic_on_green_at"):
            timings["swap_to_all_traffic_on_green"] = round(record["all_traffic_on_green_at"] - started_wall, 3)
        timings["client_total"] = round(time.monotonic() - started, 3)
        outcome = record["outcome"]
        if outcome == "deployed":
            self._record_live(
                model.version,
                {"endpoint": self.endpoint_name, "deployment": record["id"], "strategy": routing.strategy},
            )
            return DeployResult("deployed", self.endpoint_name, model.version, "", timings)
        return DeployResult(outcome, self.endpoint_name, live, record["reason"], timings)

    def _fetch_model(self, model: ModelSpec) -> Path:
        """The artifact unpacked under the state directory (fetched again whenever the bucket's tar changed)."""
        target = self.paths.model_dir(model.version)
        marker = target.with_name(f"{target.name}.artifact-sha256")  # the tar the unpacked copy came from
        with contextlib.suppress(ArtifactError, OSError):
            if (
                marker.read_text() == self.storage.checksum(model.artifact_key)
                and load_artifact(target).version == model.version
            ):
                return target
        staging = target.with_name(f".{model.version}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            tar = staging / "model.tar.gz"
            self.storage.get_file(model.artifact_key, tar)
            fetched = sha256_file(tar)
            artifact = unpack_artifact(tar, staging / "model")
            if artifact.version != model.version:
                raise ArtifactError(f"{model.artifact_key} holds model version {artifact.version}, not {model.version}")
            marker.unlink(missing_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging / "model", target)
            marker.write_text(fetched)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _put_config(self, runtime: daemon.RuntimeClient, model: ModelSpec) -> str:
        variant = {
            "variant_name": self.settings.variant_name,
            "model_name": model.version,
            "instance_count": model.instance_count,
            "weight": 1.0,
            "instance_threads": self.instance_threads,
            "startup_timeout_seconds": self.startup_timeout_seconds,
        }
        name = f"{self.endpoint_name}-{model.version}"
        existing = (runtime.get("status")["endpoint_configs"]).get(name)
        if existing is not None and existing["variants"] != [variant]:
            name = f"{name}-{int(time.time() * 1000)}"  # same model, other settings: configs are immutable
        runtime.post("endpoint-configs", {"name": name, "variants": [variant]})
        return name

    def _follow(self, runtime: daemon.RuntimeClient, record: dict) -> dict:
        """Poll the deployment to its end, passing each new event to ``on_event``."""
        seen = 0
        while True:
            for event in record["events"][seen:]:
                self.on_event(event)
            seen = len(record["events"])
            if record["outcome"] is not None:
                return record
            time.sleep(POLL_INTERVAL_S)
            record = runtime.get(f"endpoints/{self.endpoint_name}/deployments/{record['id']}")

    def _record_live(self, version: str, info: dict) -> None:

        registry = Registry(self.storage, self.settings)
        try:
            current = registry.live()
            if current is None or current.get("job") != version or "deployment" in info:
                registry.set_live(version, backend="local", **info)
        except RegistryError as error:  # a model deployed by hand that training never registered
            log.warning("live version not recorded in the registry: %s", error)

    # --- rollback, autoscaling --------------------------------------------------------------

    def rollback(self, smoke_images: list[bytes] | None = None) -> DeployResult:
        """Stop the swap in progress (traffic back to blue), or swap back to the previous model."""
        runtime = self._runtime_with_endpoint()
        before = self._serving_version(self._settled_endpoint(runtime))
        images = smoke_images or default_smoke_images(self.storage, self.settings)
        try:
            record = runtime.post(
                f"endpoints/{self.endpoint_name}/rollback",
                {"smoke_images": [base64.b64encode(i).decode() for i in images]},
            )
        except daemon.RuntimeApiError as error:
            raise HostingError(error.message) from None
        record = self._follow(runtime, record)
        live = self._serving_version(self._endpoint(runtime))
        if record["kind"] == "rollback":
            outcome = "rolled-back" if record["outcome"] == "deployed" else "failed"
        else:
            outcome = record["outcome"]
        if live and live != before:
            self._record_live(
                live, {"endpoint": self.endpoint_name, "deployment": record["id"], "strategy": "rollback"}
            )
        return DeployResult(outcome, self.endpoint_name, live, record["reason"], record["timings"])

    def set_autoscaling(self, policy: ScalingPolicy | None) -> None:
        """Register (or with None, remove) target tracking for the variant."""
        runtime = self._runtime_with_endpoint()
        self._settled_endpoint(runtime)
        path = f"endpoints/{self.endpoint_name}/autoscaling/{self.settings.variant_name}"
        try:
            runtime.call("DELETE", path) if policy is None else runtime.put(path, asdict(policy))
        except daemon.RuntimeApiError as error:
            raise HostingError(error.message) from None

    # --- data capture ---------------------------------------------------------------------------

    def _capture_config(self, percent: int | None) -> CaptureConfig | None:
        """The capture to apply: ``percent``, else the settings' (DD_CAPTURE_PERCENT); None keeps the endpoint's."""
        percent = self.settings.capture_percent if percent is None else percent
        if percent is None:
            return None
        return CaptureConfig(
            percent,
            str(Path(self.settings.bucket_dir).resolve()),
            self.settings.capture_prefix,
            limits=self.capture_limits,
        )

    def set_capture(self, percent: int) -> dict:
        """Capture ``percent`` of the endpoint's invocations from now on (0: none), into the local bucket."""
        runtime = self._runtime_with_endpoint()
        self._settled_endpoint(runtime)
        return self._put_capture(runtime, self._capture_config(percent))

    def _put_capture(self, runtime: daemon.RuntimeClient, capture: CaptureConfig) -> dict:
        try:
            return runtime.put(f"endpoints/{self.endpoint_name}/data-capture", capture.to_json())
        except daemon.RuntimeApiError as error:
            raise HostingError(error.message) from None

    # --- status, invoke, delete ----------------------------------------------------------------

    def status(self) -> EndpointStatus:
        """Endpoint, variants, instances, live version and runtime URL; read-only, starts nothing.

        ``status`` is what is true now: never InService while nothing serves
        (``OutOfService``, with ``status_reason``); ``recorded_status`` is what
        ``state.json`` holds, which a restarted runtime brings back.
        """
        info = daemon.running_runtime(self.paths)
        supervision = daemon.supervision_of(self.paths)
        if info:
            full = daemon.RuntimeClient.of(self.paths).get("status")
            endpoint = full["endpoints"].get(self.endpoint_name)
            runtime = {"running": True, "pid": info.pid, "url": info.url, "log": info.log, "supervisor": supervision}
        else:
            endpoint = load_state(self.paths)["endpoints"].get(self.endpoint_name)
            runtime = {"running": False, "log": str(self.paths.log_file), "supervisor": supervision}
            if endpoint:
                endpoint = {**endpoint, **_without_runtime(endpoint, supervision)}
        details = {"runtime": runtime, "state_dir": str(self.paths.root)}
        if not endpoint:
            return EndpointStatus(
                "local",
                self.endpoint_name,
                runtime_url=info.url if info else None,
                runtime_running=runtime["running"],
                details=details,
            )
        instances = [
            {**instance, "variant": variant["name"], "role": fleet["role"]}
            for variant in endpoint.get("variants", [])
            for fleet in variant["fleets"]
            for instance in fleet["instances"]
        ]
        deployments = endpoint.get("deployments", [])
        details["scaling_activities"] = endpoint.get("scaling_activities", [])[-10:]
        return EndpointStatus(
            backend="local",
            endpoint=self.endpoint_name,
            status=endpoint["status"],
            live_version=self._serving_version(endpoint),
            runtime_url=info.url if info else None,
            instance_count=sum(1 for i in instances if i["state"] == "in-service" and i["role"] == "blue"),
            status_reason=endpoint.get("status_reason") or None,
            recorded_status=endpoint.get("recorded_status", endpoint.get("status")),
            runtime_running=runtime["running"],
            variants=endpoint.get("variants", []),
            instances=instances,
            autoscaling=endpoint.get("autoscaling", {}),
            data_capture=endpoint.get("data_capture"),
            last_deployment=_summary(deployments[-1]) if deployments else None,
            deployment_in_progress=endpoint.get("deployment_in_progress"),
            details=details,
        )

    def invoke(
        self,
        body: bytes,
        content_type: str = "image/jpeg",
        target_variant: str | None = None,
        accept: str = "application/json",
    ) -> tuple[bytes, str]:
        """One request through boto3's sagemaker-runtime client, exactly as a caller in AWS makes it."""
        info = daemon.running_runtime(self.paths)
        if info is None:
            raise HostingError("the local runtime is not running; deploy a model first")
        extra = {"TargetVariant": target_variant} if target_variant else {}
        answer = daemon.sagemaker_runtime_client(info.url, self.settings.region).invoke_endpoint(
            EndpointName=self.endpoint_name, ContentType=content_type, Accept=accept, Body=body, **extra
        )
        return answer["Body"].read(), answer["InvokedProductionVariant"]

    def delete(self) -> None:
        """Delete the endpoint and stop the runtime: no process of ours keeps running.

        Other endpoints of the runtime (made through its control API) stay in
        state.json and come back when the runtime next starts.
        """
        info = daemon.running_runtime(self.paths)
        if info:
            with contextlib.suppress(daemon.RuntimeApiError):
                daemon.RuntimeClient.of(self.paths).delete(f"endpoints/{self.endpoint_name}")
        self.stop_runtime()
        self._forget_endpoint()

    def stop_runtime(self) -> list[int]:
        """Stop the daemon and every instance, whatever endpoints exist; returns pids that had to be killed."""
        return daemon.stop_runtime(self.paths)

    def _forget_endpoint(self) -> None:
        """With no daemon to do it, drop the endpoint from state.json (under the start lock, so no daemon starts meanwhile)."""
        with daemon.start_lock(self.paths):
            if daemon.running_runtime(self.paths) is None:
                state = load_state(self.paths)
                if state["endpoints"].pop(self.endpoint_name, None) is not None or state["processes"]:
                    state["processes"] = []
                    save_state(self.paths, state)

    # --- helpers ----------------------------------------------------------------------------------

    def _endpoint(self, runtime: daemon.RuntimeClient) -> dict | None:
        return runtime.get("status")["endpoints"].get(self.endpoint_name)

    def _settled_endpoint(self, runtime: daemon.RuntimeClient) -> dict | None:
        """The endpoint once a restart has brought it back (status SystemUpdating meanwhile)."""
        deadline = time.monotonic() + self.startup_timeout_seconds
        endpoint = self._endpoint(runtime)
        while endpoint and endpoint["status"] == "SystemUpdating" and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_S)
            endpoint = self._endpoint(runtime)
        return endpoint

    def _runtime_with_endpoint(self) -> daemon.RuntimeClient:
        """The runtime, for an endpoint that exists (state.json says so before any daemon is started)."""
        if self.endpoint_name not in load_state(self.paths)["endpoints"]:
            raise HostingError(f"there is no endpoint {self.endpoint_name}; deploy a model first")
        return self.runtime()

    def _serving_version(self, endpoint: dict | None) -> str | None:
        """The model of our variant in the endpoint config in service."""
        if not endpoint or endpoint.get("status") in (None, "Failed", "Creating") or not endpoint.get("config"):
            return None
        for variant in endpoint.get("variants", []):
            if variant["name"] == self.settings.variant_name:
                blue = next((f for f in variant["fleets"] if f["role"] == "blue"), None)
                if blue:
                    return blue["model_version"]
        configs = load_state(self.paths)["endpoint_configs"]
        config = configs.get(endpoint["config"], {})
        for variant in config.get("variants", []):
            if variant["variant_name"] == self.settings.variant_name:
                return variant["model_name"]
        return None


def _without_runtime(record: dict, supervision: str) -> dict:
    """What a stopped runtime's endpoint is: recorded InService, but nothing answers."""
    if record.get("status") in ("Failed",):
        return {"recorded_status": record["status"], "status_reason": record.get("failure_reason", "")}
    restarting = supervision.startswith(("STARTING", "BACKOFF", "RUNNING"))
    then = (
        "the supervisor is starting it again"
        if restarting
        else "nothing restarts it; any deploy command starts it (inv deploy.swap --model live)"
    )
    return {
        "recorded_status": record.get("status"),
        "status": "OutOfService",
        "status_reason": f"the runtime is not running ({supervision}); {then}",
    }


def _summary(record: dict) -> dict:
    keys = (
        "id",
        "kind",
        "from_versions",
        "to_versions",
        "phase",
        "green_percent",
        "outcome",
        "reason",
        "timings",
        "started",
        "finished",
        "events",
    )
    return {k: record.get(k) for k in keys} | {"strategy": record.get("routing", {}).get("strategy")}
