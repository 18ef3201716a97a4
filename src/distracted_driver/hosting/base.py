"""What every hosting backend offers: one endpoint, one stable variant, blue/green updates.

The local runtime (processes on loopback) and SageMaker implement this same
interface, so tasks and the pipeline never branch on the backend.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

STRATEGIES = ("all-at-once", "canary", "linear")


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


class Hosting(abc.ABC):
    """One endpoint named by the settings, with one production variant of a stable name."""

    @abc.abstractmethod
    def deploy(self, model: ModelSpec, routing: TrafficRouting, alarms: AlarmThresholds,
               capture_percent: int | None = None) -> DeployResult:
        """Create the endpoint, or update it blue/green; deploying the live version is a no-op.

        ``capture_percent`` (0..100) sets the share of invocations captured once the model is live;
        None (and no ``Settings.capture_percent``) keeps what the endpoint captures (nothing, when new).
        """

    @abc.abstractmethod
    def set_capture(self, percent: int) -> dict:
        """Capture this share (0..100; 0: off) of the live endpoint's invocations from now on; the capture status."""

    @abc.abstractmethod
    def rollback(self) -> DeployResult:
        """Put traffic back on the previous model by hand."""

    @abc.abstractmethod
    def set_autoscaling(self, policy: ScalingPolicy) -> None: ...

    @abc.abstractmethod
    def status(self) -> dict:
        """JSON-able: endpoint, variants, instances, live version, runtime URL."""

    @abc.abstractmethod
    def invoke(self, body: bytes, content_type: str = "image/jpeg", target_variant: str | None = None) -> tuple[bytes, str]:
        """One request through the endpoint: (response body, variant that answered)."""

    @abc.abstractmethod
    def delete(self) -> None:
        """Tear the endpoint down; nothing of it left running."""
