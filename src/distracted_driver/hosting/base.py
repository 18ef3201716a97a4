"""What every hosting backend offers: one endpoint, one stable variant, blue/green updates.

The local runtime (processes on loopback) and SageMaker implement this same
interface, so tasks and the pipeline never branch on the backend.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field

STRATEGIES = ("all-at-once", "canary", "linear")
ABSENT = "absent"  # EndpointStatus.status of an endpoint that does not exist


class HostingError(RuntimeError):
    """The endpoint cannot do what was asked (either backend); the message says why and what to do."""


@dataclass(frozen=True)
class TrafficRouting:
    """How traffic moves from blue to green (SageMaker's TrafficRoutingConfiguration)."""

    strategy: str = "canary"
    canary_percent: int = 10  # CANARY: share of capacity that gets traffic first
    linear_step_percent: int = 25  # LINEAR: share moved per step
    wait_seconds: float = 30.0  # WaitIntervalInSeconds between steps
    bake_seconds: float = 30.0  # watch alarms after all traffic is on green
    termination_wait_seconds: float = 0.0  # keep blue this long before retiring it
    max_execution_seconds: float = 1800.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {self.strategy!r}")
        for name in ("canary_percent", "linear_step_percent"):
            if not 1 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} must be within 1..100")


@dataclass(frozen=True)
class AlarmThresholds:
    """Alarms watched during a swap; any breach rolls traffic back to blue."""

    max_error_rate: float = 0.05
    max_p99_latency_ms: float = 2000.0
    min_requests: int = 5  # fewer requests than this in a window decide nothing
    window_seconds: float = 60.0  # the sliding window both alarms are computed over


@dataclass(frozen=True)
class ScalingPolicy:
    """Target tracking on SageMakerVariantInvocationsPerInstance."""

    min_instances: int = 1
    max_instances: int = 4
    target_invocations_per_instance: float = 600.0  # per minute
    scale_out_cooldown_seconds: float = 60.0
    scale_in_cooldown_seconds: float = 300.0
    metric_window_seconds: float = 60.0  # invocations are averaged over this window

    def __post_init__(self) -> None:
        if not 1 <= self.min_instances <= self.max_instances:
            raise ValueError("need 1 <= min_instances <= max_instances")
        if self.target_invocations_per_instance <= 0 or self.metric_window_seconds <= 0:
            raise ValueError("target_invocations_per_instance and metric_window_seconds must be positive")


@dataclass(frozen=True)
class ModelSpec:
    """A model to deploy: its version (training job name) and artifact key in the bucket."""

    version: str
    artifact_key: str
    instance_count: int = 1


@dataclass
class DeployResult:
    outcome: str  # "deployed" | "rolled-back" | "unchanged" | "failed"
    endpoint: str
    live_version: str | None
    reason: str = ""
    timings: dict = field(default_factory=dict)  # seconds per phase

    @property
    def succeeded(self) -> bool:
        """The model asked for serves (deployed now, or already)."""
        return self.outcome in ("deployed", "unchanged")

    def report_lines(self) -> list[str]:
        lines = [
            f"{self.outcome}: endpoint {self.endpoint}, live model {self.live_version}"
            + (f" ({self.reason})" if self.reason else "")
        ]
        if self.timings:
            lines.append("  timings (s): " + ", ".join(f"{k} {v:g}" for k, v in self.timings.items()))
        return lines


@dataclass(frozen=True)
class EndpointStatus:
    """What ``Hosting.status()`` says on either backend: the fields every caller reads, typed.

    ``status`` is SageMaker's EndpointStatus (``InService``, ``Updating``, ...), ``OutOfService`` when
    nothing answers, or ``absent``. ``instances`` lists serving processes where the backend can see them
    (the local runtime; SageMaker hides its instances). ``data_capture`` is the backend's own view of
    capture (``hosting.report.capture_text`` reads both). ``details`` holds what only one backend knows
    (the local runtime's daemon, deployments and scaling activity; SageMaker's config name), for
    ``inv deploy.status`` to show.
    """

    backend: str
    endpoint: str
    status: str = ABSENT
    live_version: str | None = None
    runtime_url: str | None = None  # where boto3's sagemaker-runtime client sends invocations
    instance_count: int = 0  # in service on the live variant
    status_reason: str | None = None
    recorded_status: str | None = None  # what the endpoint's stored state says (differs while nothing answers)
    runtime_running: bool = True  # the local runtime daemon is up (always True for a cloud backend)
    variants: list[dict] = field(default_factory=list)
    instances: list[dict] = field(default_factory=list)
    autoscaling: dict = field(default_factory=dict)  # {variant: policy fields}
    data_capture: dict | None = None
    last_deployment: dict | None = None
    deployment_in_progress: dict | None = None
    details: dict = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return self.status != ABSENT

    def serves(self, version: str) -> bool:
        """In service with ``version`` live, and something there to answer."""
        return self.live_version == version and self.status == "InService" and self.runtime_running

    def to_dict(self) -> dict:
        return asdict(self)


class Hosting(abc.ABC):
    """One endpoint named by the settings, with one production variant of a stable name."""

    @abc.abstractmethod
    def deploy(
        self,
        model: ModelSpec,
        routing: TrafficRouting = TrafficRouting(),
        alarms: AlarmThresholds = AlarmThresholds(),
        smoke_images: list[bytes] | None = None,
        capture_percent: int | None = None,
    ) -> DeployResult:
        """Create the endpoint, or update it blue/green; deploying the live version is a no-op.

        ``smoke_images`` (JPEG/PNG) must each be answered with valid probabilities by the new model
        (``hosting.smoke``), else it does not stay live; None: a few of the bucket's labelled images,
        or drawn cabin scenes before there are any.
        ``capture_percent`` (0..100) sets the share of invocations captured once the model is live;
        None (and no ``Settings.capture_percent``) keeps what the endpoint captures (nothing, when new).
        """

    @abc.abstractmethod
    def set_capture(self, percent: int) -> dict:
        """Capture this share (0..100; 0: off) of the live endpoint's invocations from now on; the capture status."""

    @abc.abstractmethod
    def rollback(self, smoke_images: list[bytes] | None = None) -> DeployResult:
        """Put traffic back on the previous model by hand (its answers to ``smoke_images`` checked as in deploy)."""

    @abc.abstractmethod
    def set_autoscaling(self, policy: ScalingPolicy | None) -> None:
        """Register target tracking for the variant (replacing any); None removes it."""

    @abc.abstractmethod
    def status(self) -> EndpointStatus:
        """Endpoint, variants, instances, live version, runtime URL; read-only, starts nothing."""

    @abc.abstractmethod
    def invoke(
        self,
        body: bytes,
        content_type: str = "image/jpeg",
        target_variant: str | None = None,
        accept: str = "application/json",
    ) -> tuple[bytes, str]:
        """One request through the endpoint (SageMaker Runtime's InvokeEndpoint): (response body, variant that answered).

        ``accept`` ``application/json;verbose=true`` asks the model server for the class, label and version too.
        """

    @abc.abstractmethod
    def delete(self) -> None:
        """Tear the endpoint down; nothing of it left running."""
