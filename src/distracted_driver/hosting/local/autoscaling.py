"""Target tracking on invocations per instance per minute, as Application Auto Scaling does it.

The metric is SageMaker's ``SageMakerVariantInvocationsPerInstance``: the
variant's invocations per minute, averaged over the policy's window, divided
by the instances in service. The desired capacity is
``ceil(instances × metric / target)`` clamped to [min, max]. As in
Application Auto Scaling, a scale-out may follow another scale-out only after
the scale-out cooldown, and a scale-in only once the scale-in cooldown has
passed since the last scaling activity of either kind, so capacity goes up
quickly and comes down cautiously. No decision is taken until the variant has
served at its current size for a whole window (CloudWatch's "insufficient
data"), so a half-empty window never looks like a quiet one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distracted_driver.hosting.base import ScalingPolicy


@dataclass
class ScalerState:
    """When capacity last changed, per variant (monotonic seconds)."""

    last_scale_out: float = -math.inf
    last_scale_in: float = -math.inf
    steady_since: float = 0.0  # the variant has had its current instance count since then

    @property
    def last_activity(self) -> float:
        return max(self.last_scale_out, self.last_scale_in)


@dataclass(frozen=True)
class Decision:
    current: int
    desired: int  # what the policy asks for, within bounds
    act: bool  # False while a cooldown or missing data holds the change back
    metric: float | None  # invocations per instance per minute
    reason: str

    def to_json(self) -> dict:
        return {
            "current": self.current,
            "desired": self.desired,
            "act": self.act,
            "metric_invocations_per_instance_per_minute": None if self.metric is None else round(self.metric, 1),
            "reason": self.reason,
        }


def wanted_capacity(policy: ScalingPolicy, current: int, metric: float) -> int:
    """Instances that would bring the metric to the target, before the bounds."""
    return math.ceil(current * metric / policy.target_invocations_per_instance - 1e-9)


def within_bounds(policy: ScalingPolicy, count: int) -> int:
    return min(policy.max_instances, max(policy.min_instances, count))


def decide(policy: ScalingPolicy, state: ScalerState, current: int, invocations: int, now: float) -> Decision:
    """What to do for a variant with ``current`` instances in service that served ``invocations``
    in the last ``policy.metric_window_seconds``."""
    if not policy.min_instances <= current <= policy.max_instances:
        desired = within_bounds(policy, current)
        return Decision(
            current,
            desired,
            True,
            None,
            f"{current} instances is outside the bounds [{policy.min_instances}, {policy.max_instances}]",
        )
    window = policy.metric_window_seconds
    if now - state.steady_since < window:
        return Decision(current, current, False, None, f"collecting a full {window:g} s window at {current} instances")
    metric = invocations * 60.0 / window / max(1, current)
    wanted = wanted_capacity(policy, current, metric)
    desired = within_bounds(policy, wanted)
    bounded = "" if wanted == desired else f", {desired} within [{policy.min_instances}, {policy.max_instances}]"
    comparison = (
        f"{metric:.0f} invocations/instance/min over the last {window:g} s "
        f"(target {policy.target_invocations_per_instance:g}) asks for {wanted} instances{bounded}"
    )
    if desired > current:
        wait = state.last_scale_out + policy.scale_out_cooldown_seconds - now
        if wait > 0:
            return Decision(current, desired, False, metric, f"{comparison}; scale-out cooldown has {wait:.1f} s left")
        return Decision(current, desired, True, metric, f"scale out: {comparison}")
    if desired < current:
        wait = state.last_activity + policy.scale_in_cooldown_seconds - now
        if wait > 0:
            return Decision(current, desired, False, metric, f"{comparison}; scale-in cooldown has {wait:.1f} s left")
        return Decision(current, desired, True, metric, f"scale in: {comparison}")
    return Decision(current, current, False, metric, comparison)


def record_action(state: ScalerState, decision: Decision, now: float) -> None:
    if decision.desired > decision.current:
        state.last_scale_out = now
    elif decision.desired < decision.current:
        state.last_scale_in = now
