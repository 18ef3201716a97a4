"""SageMaker hosting: one endpoint, one stable variant, blue/green updates by SageMaker itself.

Names (all derived from the settings, so Terraform and this module agree; ``inv
infra.check`` verifies the Terraform side):

- model and endpoint config of a version: ``<endpoint>-<version>`` (the version
  is the training job's name), so the live version is read off the endpoint's
  config name and re-deploying it is a no-op; a config that captures data is
  ``<endpoint>-<version>--cap<percent>-<hash>`` (``--`` never occurs in a
  version; the hash is of the whole ``DataCaptureConfig``);
- rollback alarms: ``<endpoint>-invocation-5xx-errors`` and ``<endpoint>-model-latency``
  (created by Terraform's ``alarms`` module);
- scalable target ``endpoint/<endpoint>/variant/<variant>``, policy
  ``<endpoint>-<variant>-invocations-per-instance``;
- Batch Transform jobs (``hosting.batch_transform``): ``<endpoint>-batch-<UTC time>-<hex>``.

A deploy creates the model and endpoint config, then either creates the
endpoint (first deploy: it also registers autoscaling, because nothing else
can before the endpoint exists) or calls ``update_endpoint`` with a blue/green
``DeploymentConfig`` and ``RetainAllVariantProperties=True`` (the instance
count that autoscaling chose survives the swap). SageMaker shifts traffic,
bakes, watches the alarms and rolls back by itself; this module waits,
reports and records the outcome. Older configs and models beyond the last
``keep`` are deleted.

Data capture (``DataCaptureConfig``, see ``serve.capture``) is part of the
endpoint config: each new config copies the live one's, so a swap or a
rollback keeps it, unless a capture percent is given (``--capture-percent``,
``DD_CAPTURE_PERCENT``); ``set_capture`` (``inv deploy.capture``) creates a
config of the live model with the new setting and updates the endpoint to it
(all at once). Files land under ``s3://<bucket>/<capture_prefix>/``, written by
the execution role (encrypted with the pipeline's key when one is set).

How ``TrafficRouting`` maps onto ``BlueGreenUpdatePolicy``:

- all-at-once: ``WaitIntervalInSeconds`` = ``bake_seconds`` (SageMaker's baking
  period after the single shift);
- canary / linear: ``CanarySize`` / ``LinearStepSize`` as ``CAPACITY_PERCENT``,
  ``WaitIntervalInSeconds`` = ``wait_seconds`` (the bake after each step);
- ``TerminationWaitInSeconds`` = ``termination_wait_seconds``;
  ``MaximumExecutionTimeoutInSeconds`` = ``max_execution_seconds`` (600..28800).

Alarm thresholds live in Terraform (``alarm_*`` variables), not here: ``deploy``
checks that the rollback alarms exist and warns when their thresholds differ
from the ``AlarmThresholds`` it was given.

What a first contact with a real account taught:

- SageMaker refuses a CANARY or LINEAR step above 50% of the fleet, so a
  variant of one instance cannot take either: below ``MIN_INSTANCES_FOR_STEPS``
  the swap goes all at once, and the result says so.
- Application Auto Scaling refuses to update an endpoint whose instance type
  changes while its variant is registered: the registration is taken off for
  the swap and put back after it, with the values it had.
- The ECR lifecycle policy keeps every image tagged ``model-<version>``; the
  deploy tags the image of each model it keeps and untags it when it deletes
  the model, so a kept model's image can always be pulled again.
- Once the endpoint serves a version, that is recorded before anything else
  can fail (autoscaling's registration, the cleanup): registry and endpoint
  never disagree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from tqdm import tqdm

from distracted_driver.config import Settings
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
from distracted_driver.hosting.smoke import smoke_images as default_smoke_images
from distracted_driver.hosting.smoke import smoke_problems
from distracted_driver.model.registry import Registry, RegistryError
from distracted_driver.serve.capture import CaptureConfig
from distracted_driver.storage import KeyNotFound, open_storage

log = logging.getLogger(__name__)

SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING_METRIC = "SageMakerVariantInvocationsPerInstance"
ROLLBACK_ALARM_SUFFIXES = ("invocation-5xx-errors", "model-latency")
SETTLING = {"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"}
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
BUILTIN_ALGORITHM = "builtin"
# Limits of the service model (botocore's sagemaker service-2.json).
WAIT_RANGE = (0, 3600)
EXECUTION_RANGE = (600, 28800)
CANARY_MAX_PERCENT = 50
LINEAR_PERCENT_RANGE = (10, 50)
# A canary or linear step is at most 50% of the fleet and at least one instance.
MIN_INSTANCES_FOR_STEPS = 2
# Tag that keeps a kept model's image from the ECR lifecycle policy (terraform/modules/ecr).
MODEL_IMAGE_TAG_PREFIX = "model-"
TRANSFORM_JOB_INFIX = "batch"
CAPTURE_SEPARATOR = "--"  # between the version and the capture part of a config name


# --- names shared with Terraform (checked by infra.check) ----------------------


def rollback_alarm_names(endpoint: str) -> list[str]:
    return [f"{endpoint}-{suffix}" for suffix in ROLLBACK_ALARM_SUFFIXES]


def scalable_resource_id(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def scaling_policy_name(endpoint: str, variant: str) -> str:
    return f"{endpoint}-{variant}-invocations-per-instance"


def transform_job_prefix(endpoint: str) -> str:
    """What every Batch Transform job name of this endpoint starts with (Terraform's grant names the same)."""
    return f"{endpoint}-{TRANSFORM_JOB_INFIX}-"


def version_resource_name(endpoint: str, version: str, capture: dict | None = None) -> str:
    """Name of the model that serves ``version``, and of its endpoint config (which names its capture)."""
    name = f"{endpoint}-{version}"
    if capture:
        digest = hashlib.sha256(json.dumps(capture, sort_keys=True).encode()).hexdigest()[:6]
        name += f"{CAPTURE_SEPARATOR}cap{capture['InitialSamplingPercentage']}-{digest}"
    if len(name) > 63 or not NAME_PATTERN.match(name):
        raise HostingError(
            f"{name!r} is not a valid SageMaker model/config name (letters, digits, '-', at most 63): "
            "shorten the endpoint name"
        )
    return name


# --- request builders ----------------------------------------------------------


def _clamp(value: float, bounds: tuple[int, int]) -> int:
    return int(min(max(round(value), bounds[0]), bounds[1]))


def traffic_routing_config(routing: TrafficRouting) -> dict:
    if routing.strategy == "all-at-once":
        return {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": _clamp(routing.bake_seconds, WAIT_RANGE)}
    wait = _clamp(routing.wait_seconds, WAIT_RANGE)
    if routing.strategy == "canary":
        if routing.canary_percent > CANARY_MAX_PERCENT:
            raise HostingError(f"SageMaker's canary is at most {CANARY_MAX_PERCENT}% of the fleet")
        size = {"Type": "CAPACITY_PERCENT", "Value": routing.canary_percent}
        return {"Type": "CANARY", "CanarySize": size, "WaitIntervalInSeconds": wait}
    low, high = LINEAR_PERCENT_RANGE
    if not low <= routing.linear_step_percent <= high:
        raise HostingError(f"SageMaker's linear step is {low}..{high}% of the fleet")
    size = {"Type": "CAPACITY_PERCENT", "Value": routing.linear_step_percent}
    return {"Type": "LINEAR", "LinearStepSize": size, "WaitIntervalInSeconds": wait}


def routing_for_fleet(routing: TrafficRouting, instances: int) -> tuple[TrafficRouting, str]:
    """The routing SageMaker will take for a variant of ``instances``, and a note when it differs.

    CanarySize and LinearStepSize must be at most half the fleet and at least one
    instance, so below two instances a canary or linear swap goes all at once
    (baking for the canary's wait), which is what the note says.
    """
    if routing.strategy == "all-at-once" or instances >= MIN_INSTANCES_FOR_STEPS:
        return routing, ""
    fallback = TrafficRouting(
        strategy="all-at-once",
        bake_seconds=max(routing.bake_seconds, routing.wait_seconds),
        termination_wait_seconds=routing.termination_wait_seconds,
        max_execution_seconds=routing.max_execution_seconds,
    )
    note = (
        f"{routing.strategy} needs at least {MIN_INSTANCES_FOR_STEPS} instances (each step is at most "
        f"{CANARY_MAX_PERCENT}% of the fleet); the variant has {instances}: swapped all at once instead"
    )
    return fallback, note


def ecr_image(uri: str) -> tuple[str, str, str] | None:
    """``(registry, repository, tag)`` of an ECR image URI, or None for any other registry or a digest."""
    match = re.match(
        r"^(?P<registry>\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?)/"
        r"(?P<repository>[a-z0-9._/-]+):(?P<tag>[A-Za-z0-9_.-]+)$",
        uri or "",
    )
    return (match["registry"], match["repository"], match["tag"]) if match else None


def deployment_config(routing: TrafficRouting, alarm_names: list[str]) -> dict:
    config = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": traffic_routing_config(routing),
            "TerminationWaitInSeconds": _clamp(routing.termination_wait_seconds, WAIT_RANGE),
            "MaximumExecutionTimeoutInSeconds": _clamp(routing.max_execution_seconds, EXECUTION_RANGE),
        }
    }
    if alarm_names:  # AlarmList has at least one entry
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": name} for name in alarm_names]}
    return config


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _not_found(error: ClientError) -> bool:
    message = str(error.response.get("Error", {}).get("Message", ""))
    return _error_code(error) in ("ValidationException", "ResourceNotFound") and (
        "Could not find" in message or "does not exist" in message or "not found" in message.lower()
    )


@dataclass
class _Endpoint:
    status: str
    config: str
    failure: str = ""
    raw: dict | None = None


class SageMakerHosting(Hosting):
    def __init__(
        self,
        settings: Settings,
        *,
        sagemaker=None,
        autoscaling=None,
        cloudwatch=None,
        runtime=None,
        ecr=None,
        storage=None,
        registry=None,
        keep: int = 3,
        poll_seconds: float = 15.0,
        create_timeout_seconds: float = 3600.0,
        progress: bool = True,
    ):
        self.settings = settings
        self.endpoint = settings.endpoint_name
        self.variant = settings.variant_name
        session = boto3.session.Session(region_name=settings.region)
        retries = Config(retries={"max_attempts": 10, "mode": "adaptive"})
        self.sagemaker = sagemaker or session.client("sagemaker", config=retries)
        self.autoscaling = autoscaling or session.client("application-autoscaling", config=retries)
        self.cloudwatch = cloudwatch or session.client("cloudwatch", config=retries)
        self.runtime = runtime or session.client("sagemaker-runtime")
        self.ecr = ecr or session.client("ecr", config=retries)
        self._storage = storage
        self._registry = registry
        self.keep = max(1, keep)
        self.poll_seconds = poll_seconds
        self.create_timeout_seconds = create_timeout_seconds
        self.progress = progress

    # -- the registry (the live record) -----------------------------------------

    @property
    def storage(self):
        if self._storage is None:
            self._storage = open_storage(self.settings)
        return self._storage

    @property
    def registry(self):
        if self._registry is None:
            self._registry = Registry(self.storage, self.settings)
        return self._registry

    # -- reading the endpoint ----------------------------------------------------

    def _describe(self) -> _Endpoint | None:
        try:
            raw = self.sagemaker.describe_endpoint(EndpointName=self.endpoint)
        except ClientError as error:
            if _not_found(error):
                return None
            raise
        return _Endpoint(raw["EndpointStatus"], raw.get("EndpointConfigName", ""), raw.get("FailureReason", ""), raw)

    def _version_of(self, config_name: str) -> str | None:
        """The model version a model or endpoint config name serves (its capture part aside)."""
        prefix = f"{self.endpoint}-"
        return config_name[len(prefix) :].split(CAPTURE_SEPARATOR)[0] if config_name.startswith(prefix) else None

    def _exists(self, describe, **name) -> bool:
        try:
            describe(**name)
        except ClientError as error:
            if _not_found(error):
                return False
            raise
        return True

    def _wait(self, done, timeout: float, what: str) -> _Endpoint | None:
        """Poll the endpoint until ``done(state)``; a one-line progress display while waiting."""

        deadline = time.monotonic() + timeout
        with tqdm(total=0, bar_format="{desc} [{elapsed}]", disable=not self.progress) as bar:
            while True:
                state = self._describe()
                bar.set_description_str(f"{what}: {self._progress_text(state)}")
                if done(state):
                    return state
                if time.monotonic() > deadline:
                    raise HostingError(f"{what}: still {state.status if state else 'absent'} after {timeout:.0f} s")
                time.sleep(self.poll_seconds)

    @staticmethod
    def _progress_text(state: _Endpoint | None) -> str:
        if state is None:
            return "absent"
        text = state.status
        pending = (state.raw or {}).get("PendingDeploymentSummary")
        if pending:
            blue = sum(v.get("CurrentWeight", 0) for v in state.raw.get("ProductionVariants", []))
            green = sum(v.get("CurrentWeight", 0) for v in pending.get("ProductionVariants", []))
            total = blue + green
            if total:
                text += f", green {100 * green / total:.0f}% of traffic"
        return text

    # -- deploy ----------------------------------------------------------------

    def _image_for(self, version: str) -> str:
        if self._algorithm(version) == BUILTIN_ALGORITHM:
            from sagemaker.core import image_uris

            return image_uris.retrieve("image-classification", self.settings.region)
        if not self.settings.serving_image:
            raise HostingError(
                "no serving image: set DD_SERVING_IMAGE (Terraform output serving_image_uri, "
                "written to .state/aws.env by `inv infra.outputs`)"
            )
        return self.settings.serving_image

    def _algorithm(self, version: str) -> str | None:
        """What trained ``version``: SageMaker jobs record it in ``models/<job>/status.json``."""

        try:
            status = json.loads(self.storage.get_bytes(f"{self.settings.models_prefix}/{version}/status.json"))
        except KeyNotFound:
            return None
        return status.get("algorithm")

    def ensure_model(self, model: ModelSpec) -> str:
        """The SageMaker model that serves ``model`` (``<endpoint>-<version>``), made once: the endpoint's
        configs and Batch Transform jobs (``hosting.batch_transform``) run the same one."""
        name = version_resource_name(self.endpoint, model.version)
        self._ensure_model(name, model)
        return name

    def _ensure_model(self, name: str, model: ModelSpec) -> None:
        if self._exists(self.sagemaker.describe_model, ModelName=name):
            return
        if not self.settings.role_arn:
            raise HostingError("no execution role: set DD_ROLE_ARN (Terraform output sagemaker_role_arn)")
        image = self._image_for(model.version)
        self._keep_image(image, model.version)
        self.sagemaker.create_model(
            ModelName=name,
            PrimaryContainer={
                "Image": image,
                "ModelDataUrl": f"s3://{self.settings.bucket}/{model.artifact_key}",
                "Environment": {"MODEL_VERSION": model.version},
            },
            ExecutionRoleArn=self.settings.role_arn,
            Tags=[{"Key": "model-version", "Value": model.version}, {"Key": "endpoint", "Value": self.endpoint}],
        )

    # -- the serving image: kept while a kept model names it ---------------------------

    def _ours(self, image: str) -> tuple[str, str] | None:
        """(repository, tag) when ``image`` is in the serving image's repository (not AWS's algorithm images)."""
        parsed, ours = ecr_image(image), ecr_image(self.settings.serving_image)
        if parsed is None or ours is None or parsed[:2] != ours[:2]:
            return None
        return parsed[1], parsed[2]

    def _keep_image(self, image: str, version: str) -> None:
        """Tag ``image`` ``model-<version>`` so that the ECR lifecycle policy never expires it."""
        found = self._ours(image)
        if found is None:
            return
        repository, tag = found
        images = self.ecr.batch_get_image(repositoryName=repository, imageIds=[{"imageTag": tag}]).get("images", [])
        if not images:
            raise HostingError(f"image {image} is not in ECR: run `inv infra.push-image` first")
        request = {
            "repositoryName": repository,
            "imageManifest": images[0]["imageManifest"],
            "imageTag": f"{MODEL_IMAGE_TAG_PREFIX}{version}",
        }
        if images[0].get("imageManifestMediaType"):
            request["imageManifestMediaType"] = images[0]["imageManifestMediaType"]
        try:
            self.ecr.put_image(**request)
        except ClientError as error:
            if _error_code(error) not in ("ImageAlreadyExistsException", "ImageTagAlreadyExistsException"):
                raise

    def _release_image(self, model_name: str) -> None:
        """Remove the ``model-<version>`` tag of a model being deleted (the image itself stays while tagged otherwise)."""
        version = self._version_of(model_name)
        try:
            image = self.sagemaker.describe_model(ModelName=model_name)["PrimaryContainer"]["Image"]
        except (ClientError, KeyError):
            return
        found = self._ours(image)
        if found is None or version is None:
            return
        self.ecr.batch_delete_image(
            repositoryName=found[0], imageIds=[{"imageTag": f"{MODEL_IMAGE_TAG_PREFIX}{version}"}]
        )

    def _ensure_config(
        self, name: str, model: ModelSpec, capture: dict | None = None, variants: list[dict] | None = None
    ) -> None:
        """The endpoint config ``name``: ``variants`` (copied from another config), else one variant of
        ``model``; with ``capture`` as its ``DataCaptureConfig``."""
        if self._exists(self.sagemaker.describe_endpoint_config, EndpointConfigName=name):
            return
        variants = variants or [
            {
                "VariantName": self.variant,
                "ModelName": version_resource_name(self.endpoint, model.version),
                "InitialInstanceCount": model.instance_count,
                "InstanceType": self.settings.serving_instance_type,
                "InitialVariantWeight": 1.0,
            }
        ]
        self.sagemaker.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=variants,
            **({"DataCaptureConfig": capture} if capture else {}),
            Tags=[{"Key": "model-version", "Value": model.version}, {"Key": "endpoint", "Value": self.endpoint}],
        )

    # -- data capture ---------------------------------------------------------------

    def capture_request(self, percent: int) -> dict | None:
        """The ``DataCaptureConfig`` for ``percent`` of the invocations (None for 0: no capture)."""
        if not percent:
            return None
        return CaptureConfig(
            percent, f"s3://{self.settings.bucket}", self.settings.capture_prefix, kms_key_id=self.settings.kms_key_id
        ).sagemaker_request()

    def _live_capture(self, config_name: str | None) -> dict | None:
        """The ``DataCaptureConfig`` of an endpoint config, as it was created (to copy into the next one)."""
        if not config_name:
            return None
        return self.sagemaker.describe_endpoint_config(EndpointConfigName=config_name).get("DataCaptureConfig")

    def _capture_for(self, percent: int | None, state: _Endpoint | None) -> dict | None:
        """The capture of the next config: ``percent`` (else the settings'), else a copy of the live config's."""
        percent = self.settings.capture_percent if percent is None else percent
        if percent is not None:
            return self.capture_request(percent)
        return self._live_capture(state.config if state is not None else None)

    def _variants_of(self, config_name: str) -> list[dict]:
        """A config's production variants, as a new config takes them."""
        fields = ("VariantName", "ModelName", "InitialInstanceCount", "InstanceType", "InitialVariantWeight")
        described = self.sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
        return [{k: v[k] for k in fields if k in v} for v in described["ProductionVariants"]]

    def set_capture(self, percent: int) -> dict:
        """A config of the live model with the new capture, and the endpoint updated to it (all at once)."""
        state = self._settle(self._describe())
        if state is None or state.status != "InService":
            raise HostingError(
                f"endpoint {self.endpoint} is {state.status if state else 'absent'}: deploy a model first"
            )
        version = self._version_of(state.config)
        capture = self.capture_request(percent)
        name = version_resource_name(self.endpoint, version, capture)
        if name != state.config:
            self._ensure_config(name, ModelSpec(version, ""), capture, self._variants_of(state.config))
            result = self._update(
                name, ModelSpec(version, ""), TrafficRouting(strategy="all-at-once", bake_seconds=0), [], state, {}
            )
            if result.outcome != "deployed":
                raise HostingError(f"the capture change did not go live ({result.outcome}: {result.reason})")
            self._cleanup(keep_also={name})
        return self.status().data_capture or {"EnableCapture": False}

    def _check_alarms(self, alarms: AlarmThresholds) -> list[str]:
        names = rollback_alarm_names(self.endpoint)
        found = {a["AlarmName"]: a for a in self.cloudwatch.describe_alarms(AlarmNames=names).get("MetricAlarms", [])}
        missing = [name for name in names if name not in found]
        if missing:
            raise HostingError(f"rollback alarms {missing} do not exist: run `inv infra.apply` first")
        latency = found[names[1]].get("Threshold")
        if latency is not None and abs(latency - alarms.max_p99_latency_ms * 1000) > 1:
            # CloudWatch's ModelLatency is in microseconds.
            log.warning("alarm %s fires at %.0f us; requested %.0f ms", names[1], latency, alarms.max_p99_latency_ms)
        return names

    def _settle(self, state: _Endpoint | None) -> _Endpoint | None:
        """Wait out a change in progress; remove an endpoint that failed (it serves nothing)."""
        if state is not None and state.status in SETTLING:
            state = self._wait(lambda s: s is None or s.status not in SETTLING, self.create_timeout_seconds, "settling")
        if state is not None and state.status == "UpdateRollbackFailed":
            raise HostingError(f"endpoint {self.endpoint} is UpdateRollbackFailed ({state.failure}): fix it by hand")
        if state is not None and state.status == "Failed":
            log.warning("endpoint %s failed (%s): deleting it to create it again", self.endpoint, state.failure)
            self.sagemaker.delete_endpoint(EndpointName=self.endpoint)
            state = self._wait(lambda s: s is None, self.create_timeout_seconds, "removing failed endpoint")
        return state

    def deploy(
        self,
        model: ModelSpec,
        routing: TrafficRouting | None = None,
        alarms: AlarmThresholds | None = None,
        smoke_images: list[bytes] | None = None,
        capture_percent: int | None = None,
    ) -> DeployResult:
        """Create the endpoint or swap it blue/green; then the smoke check through SageMaker Runtime, which
        SageMaker cannot run before traffic moves: a failure swaps back to blue (or removes a new endpoint)."""
        routing, alarms = routing or TrafficRouting(), alarms or AlarmThresholds()
        started = time.monotonic()
        timings: dict[str, float] = {}
        state = self._settle(self._describe())
        capture = self._capture_for(capture_percent, state)
        name = version_resource_name(self.endpoint, model.version, capture)
        if state is not None and state.status == "InService" and state.config == name:
            return DeployResult("unchanged", self.endpoint, model.version, f"{model.version} is already live", timings)

        self._ensure_model(version_resource_name(self.endpoint, model.version), model)
        self._ensure_config(name, model, capture)
        timings["prepare"] = round(time.monotonic() - started, 3)

        if state is None:
            result = self._create(name, model, timings)
        else:
            alarm_names = self._check_alarms(alarms)
            result = self._update(name, model, routing, alarm_names, state, timings)
        if result.outcome == "deployed":
            problems = self._smoke(smoke_images, timings)
            if problems:
                return self._undo(model.version, state, problems, timings)
            # Recorded first: whatever fails after this, the registry names what the endpoint serves.
            self._record_live(model.version, config=name)
            if state is None:
                self._register_first_scaling(model.version)
            self._cleanup(keep_also={name})
        timings["total"] = round(time.monotonic() - started, 3)
        return result

    def _create(self, name: str, model: ModelSpec, timings: dict) -> DeployResult:
        began = time.monotonic()
        self.sagemaker.create_endpoint(
            EndpointName=self.endpoint,
            EndpointConfigName=name,
            Tags=[{"Key": "endpoint", "Value": self.endpoint}],
        )
        state = self._wait(
            lambda s: s is not None and s.status not in SETTLING, self.create_timeout_seconds, "creating"
        )
        timings["create"] = round(time.monotonic() - began, 3)
        if state.status != "InService":
            return DeployResult("failed", self.endpoint, None, state.failure or state.status, timings)
        return DeployResult("deployed", self.endpoint, model.version, "endpoint created", timings)

    def _smoke(self, images: list[bytes] | None, timings: dict) -> list[str]:
        """What was wrong with the endpoint's answers to the smoke images (``hosting.smoke``)."""
        began = time.monotonic()
        images = images or default_smoke_images(self.storage, self.settings)
        problems = smoke_problems(lambda body, content_type: self.invoke(body, content_type)[0], images)
        timings["smoke_test"] = round(time.monotonic() - began, 3)
        return problems

    def _undo(self, version: str, blue: _Endpoint | None, problems: list[str], timings: dict) -> DeployResult:
        """The swap to ``version`` failed the smoke check: back to blue's config, or no endpoint when it was new."""
        reason = f"smoke test of {version} failed: {'; '.join(problems[:3])}"
        if blue is None:
            self.sagemaker.delete_endpoint(EndpointName=self.endpoint)
            self._wait(lambda s: s is None, self.create_timeout_seconds, "removing the new endpoint")
            return DeployResult("failed", self.endpoint, None, f"{reason}; the new endpoint was deleted", timings)
        previous = self._version_of(blue.config)
        back = self._update(
            blue.config,
            ModelSpec(previous, ""),
            TrafficRouting(strategy="all-at-once", bake_seconds=0),
            [],
            self._describe(),
            timings,
        )
        if back.outcome != "deployed":
            return DeployResult(
                "failed",
                self.endpoint,
                back.live_version,
                f"{reason}; swapping back to {previous} ended {back.outcome}: {back.reason}",
                timings,
            )
        return DeployResult("rolled-back", self.endpoint, previous, f"{reason}; swapped back to {previous}", timings)

    def _register_first_scaling(self, version: str) -> None:
        """Nothing could register autoscaling before the endpoint existed; Terraform's autoscaling
        module adopts this registration once enabled (same names, same values)."""
        try:
            self.set_autoscaling(ScalingPolicy())
        except ClientError as error:
            raise HostingError(
                f"endpoint {self.endpoint} serves {version} (recorded as live), but registering its autoscaling "
                f"failed: {error}. Application Auto Scaling needs sagemaker:DescribeEndpoint, "
                "DescribeEndpointConfig and UpdateEndpointWeightsAndCapacities for the caller; fix the role, "
                "then run `inv deploy.autoscale --backend aws` (or `inv infra.apply`)"
            ) from error

    def _instances(self, blue: _Endpoint) -> int:
        """The variant's instance count now: the green fleet gets the same (RetainAllVariantProperties)."""
        for variant in (blue.raw or {}).get("ProductionVariants", []):
            if variant.get("VariantName") == self.variant:
                return int(variant.get("DesiredInstanceCount") or variant.get("CurrentInstanceCount") or 0)
        return 0

    def _instance_type(self, config: str) -> str | None:
        described = self.sagemaker.describe_endpoint_config(EndpointConfigName=config)
        for variant in described.get("ProductionVariants", []):
            if variant.get("VariantName") == self.variant:
                return variant.get("InstanceType")
        return None

    def _update(self, name, model, routing, alarm_names, blue: _Endpoint, timings) -> DeployResult:
        began = time.monotonic()
        routing, note = routing_for_fleet(routing, self._instances(blue))
        if note:
            log.warning("%s", note)
        # Application Auto Scaling refuses an instance-type change on a registered variant:
        # take the registration off for the swap, put the same values back after it.
        registered = {}
        if self._instance_type(blue.config) != self._instance_type(name):
            registered = self._scaling().get(self.variant, {})
            if registered:
                self._deregister()
        try:
            self.sagemaker.update_endpoint(
                EndpointName=self.endpoint,
                EndpointConfigName=name,
                RetainAllVariantProperties=True,
                DeploymentConfig=deployment_config(routing, alarm_names),
            )
            result = self._await_update(name, model, routing, blue, began, timings)
        finally:
            if registered:
                self.set_autoscaling(ScalingPolicy(**{k: v for k, v in registered.items() if v is not None}))
        if note:
            result.reason = f"{result.reason} ({note})"
        return result

    def _await_update(self, name, model, routing, blue: _Endpoint, began: float, timings) -> DeployResult:
        timeout = _clamp(routing.max_execution_seconds, EXECUTION_RANGE) + self.create_timeout_seconds
        # update_endpoint may return before the status leaves InService: the update is
        # over once the endpoint settles with a modification time later than blue's.
        blue_modified = blue.raw["LastModifiedTime"]

        def finished(s: _Endpoint | None) -> bool:
            return (
                s is not None
                and s.status not in SETTLING
                and (s.config == name or s.raw["LastModifiedTime"] > blue_modified)
            )

        state = self._wait(finished, timeout, f"blue/green {routing.strategy}")
        timings["swap"] = round(time.monotonic() - began, 3)
        previous = self._version_of(blue.config)
        if state.status == "InService" and state.config == name:
            return DeployResult("deployed", self.endpoint, model.version, f"replaced {previous}", timings)
        if state.status == "InService":
            return DeployResult("rolled-back", self.endpoint, previous, state.failure or "rolled back", timings)
        return DeployResult(
            "failed", self.endpoint, self._version_of(state.config), state.failure or state.status, timings
        )

    # -- rollback, cleanup ---------------------------------------------------------

    def _our_configs(self) -> list[dict]:
        """Our endpoint configs, newest first."""
        prefix = f"{self.endpoint}-"
        configs = []
        paginator = self.sagemaker.get_paginator("list_endpoint_configs")
        for page in paginator.paginate(NameContains=prefix, SortBy="CreationTime", SortOrder="Descending"):
            configs.extend(c for c in page["EndpointConfigs"] if c["EndpointConfigName"].startswith(prefix))
        return configs

    def rollback(self, smoke_images: list[bytes] | None = None) -> DeployResult:
        """Swap back to the newest config of an older version (all at once), with the live capture."""
        state = self._settle(self._describe())
        if state is None:
            raise HostingError(f"endpoint {self.endpoint} does not exist")
        live = self._version_of(state.config)
        older = [
            c["EndpointConfigName"] for c in self._our_configs() if self._version_of(c["EndpointConfigName"]) != live
        ]
        if not older:
            raise HostingError("no earlier endpoint config to roll back to")
        previous = older[0]
        version = self._version_of(previous)
        capture = self._live_capture(state.config)  # the previous model, with the capture the endpoint has now
        target = version_resource_name(self.endpoint, version, capture)
        if target != previous:
            self._ensure_config(target, ModelSpec(version, ""), capture, self._variants_of(previous))
        routing = TrafficRouting(strategy="all-at-once", bake_seconds=0)
        timings: dict[str, float] = {}
        result = self._update(target, ModelSpec(version, ""), routing, [], state, timings)
        if result.outcome == "deployed":
            self._record_live(version, config=target, rollback=True)
            result.reason = f"rolled back to {version}"
            problems = self._smoke(smoke_images, timings)
            if problems:  # it serves, and is recorded so; there is nothing further back to go to safely
                result.outcome = "failed"
                result.reason += f", whose answers fail the smoke test: {'; '.join(problems[:3])}"
        return result

    def _record_live(self, version: str, **info) -> None:

        try:
            self.registry.set_live(version, endpoint=self.endpoint, backend="aws", **info)
        except RegistryError as error:  # a built-in algorithm's model is not in the registry
            log.warning("%s is live but not recorded as live: %s", version, error)

    def _cleanup(self, keep_also: set[str]) -> list[str]:
        """Delete endpoint configs and models beyond the newest ``keep`` versions (never the live one); of each
        kept version, its newest config (the one a rollback starts from) stays."""
        configs = [c["EndpointConfigName"] for c in self._our_configs()]
        newest: dict[str, str] = {}  # version -> its newest config, newest versions first
        for config in configs:
            newest.setdefault(self._version_of(config), config)
        kept = set(list(newest.values())[: self.keep]) | keep_also
        kept_models = {version_resource_name(self.endpoint, self._version_of(config)) for config in kept}
        deleted = []
        for config in configs:
            if config in kept:
                continue
            self.sagemaker.delete_endpoint_config(EndpointConfigName=config)
            deleted.append(config)
        return deleted + self._delete_models(keep=kept_models)

    def _delete_models(self, keep: set[str] = frozenset()) -> list[str]:
        """Delete our models (``<endpoint>-*``) except ``keep``, each image's ``model-<version>`` tag with it."""
        deleted = []
        paginator = self.sagemaker.get_paginator("list_models")
        for page in paginator.paginate(NameContains=f"{self.endpoint}-"):
            for summary in page["Models"]:
                model = summary["ModelName"]
                if model.startswith(f"{self.endpoint}-") and model not in keep:
                    self._release_image(model)
                    self.sagemaker.delete_model(ModelName=model)
                    deleted.append(model)
        return deleted

    # -- autoscaling ---------------------------------------------------------------

    def set_autoscaling(self, policy: ScalingPolicy | None) -> None:
        """Register the variant and its target-tracking policy (upserts); ``None`` deregisters it."""
        resource = scalable_resource_id(self.endpoint, self.variant)
        if policy is None:
            self._deregister()
            return
        self.autoscaling.register_scalable_target(
            ServiceNamespace="sagemaker",
            ResourceId=resource,
            ScalableDimension=SCALABLE_DIMENSION,
            MinCapacity=policy.min_instances,
            MaxCapacity=policy.max_instances,
        )
        self.autoscaling.put_scaling_policy(
            PolicyName=scaling_policy_name(self.endpoint, self.variant),
            ServiceNamespace="sagemaker",
            ResourceId=resource,
            ScalableDimension=SCALABLE_DIMENSION,
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": float(policy.target_invocations_per_instance),
                "PredefinedMetricSpecification": {"PredefinedMetricType": SCALING_METRIC},
                "ScaleOutCooldown": int(policy.scale_out_cooldown_seconds),
                "ScaleInCooldown": int(policy.scale_in_cooldown_seconds),
            },
        )

    def _scaling(self) -> dict:
        """``{variant: policy}`` as registered with Application Auto Scaling ({} when not registered)."""
        resource = scalable_resource_id(self.endpoint, self.variant)
        targets = self.autoscaling.describe_scalable_targets(
            ServiceNamespace="sagemaker", ResourceIds=[resource], ScalableDimension=SCALABLE_DIMENSION
        )["ScalableTargets"]
        if not targets:
            return {}
        entry = {"min_instances": targets[0]["MinCapacity"], "max_instances": targets[0]["MaxCapacity"]}
        policies = self.autoscaling.describe_scaling_policies(
            ServiceNamespace="sagemaker",
            ResourceId=resource,
            ScalableDimension=SCALABLE_DIMENSION,
            PolicyNames=[scaling_policy_name(self.endpoint, self.variant)],
        )["ScalingPolicies"]
        if policies:
            tracking = policies[0]["TargetTrackingScalingPolicyConfiguration"]
            entry.update(
                target_invocations_per_instance=tracking["TargetValue"],
                scale_out_cooldown_seconds=tracking.get("ScaleOutCooldown"),
                scale_in_cooldown_seconds=tracking.get("ScaleInCooldown"),
            )
        return {self.variant: entry}

    # -- status, invoke, delete -------------------------------------------------------

    def status(self) -> EndpointStatus:
        state = self._describe()
        runtime_url = f"https://runtime.sagemaker.{self.settings.region}.amazonaws.com"
        details = {"region": self.settings.region}
        if state is None:
            return EndpointStatus("aws", self.endpoint, runtime_url=runtime_url, details=details)
        variants = [
            {
                "name": v["VariantName"],
                "current_instances": v.get("CurrentInstanceCount", 0),
                "desired_instances": v.get("DesiredInstanceCount", 0),
                "weight": v.get("CurrentWeight"),
            }
            for v in state.raw.get("ProductionVariants", [])
        ]
        return EndpointStatus(
            backend="aws",
            endpoint=self.endpoint,
            status=state.status,
            live_version=self._version_of(state.config),
            runtime_url=runtime_url,
            instance_count=sum(v["current_instances"] for v in variants if v["name"] == self.variant),
            status_reason=state.failure or None,
            recorded_status=state.status,
            variants=variants,
            autoscaling=self._scaling(),
            data_capture=state.raw.get("DataCaptureConfig"),  # EnableCapture, CaptureStatus, CurrentSamplingPercentage…
            details={**details, "config": state.config},
        )

    def invoke(
        self,
        body: bytes,
        content_type: str = "image/jpeg",
        target_variant: str | None = None,
        accept: str = "application/json",
    ) -> tuple[bytes, str]:
        request = {"EndpointName": self.endpoint, "Body": body, "ContentType": content_type, "Accept": accept}
        if target_variant:
            request["TargetVariant"] = target_variant
        answer = self.runtime.invoke_endpoint(**request)
        return answer["Body"].read(), answer.get("InvokedProductionVariant", self.variant)

    def _deregister(self) -> None:
        """Remove the scalable target (its policies go with it); nothing registered is fine."""
        try:
            self.autoscaling.deregister_scalable_target(
                ServiceNamespace="sagemaker",
                ResourceId=scalable_resource_id(self.endpoint, self.variant),
                ScalableDimension=SCALABLE_DIMENSION,
            )
        except ClientError as error:
            if _error_code(error) != "ObjectNotFoundException":
                raise

    def delete(self) -> None:
        self._deregister()
        if self._describe() is not None:
            self._settle(self._describe())
            self.sagemaker.delete_endpoint(EndpointName=self.endpoint)
            self._wait(lambda s: s is None, self.create_timeout_seconds, "deleting")
        self._delete_all_versions()

    def _delete_all_versions(self) -> None:
        for config in self._our_configs():
            self.sagemaker.delete_endpoint_config(EndpointConfigName=config["EndpointConfigName"])
        self._delete_models()
