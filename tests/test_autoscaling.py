"""Target tracking on invocations per instance per minute: the decision rule, then real scaling under load."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hosting_support import LoadLoop, hosted  # noqa: F401
from waiting import wait_until

from distracted_driver.hosting.base import ModelSpec, ScalingPolicy, TrafficRouting
from distracted_driver.hosting.local.autoscaling import ScalerState, decide, record_action

POLICY = ScalingPolicy(
    min_instances=1,
    max_instances=4,
    target_invocations_per_instance=600,
    scale_out_cooldown_seconds=60,
    scale_in_cooldown_seconds=300,
    metric_window_seconds=60,
)


def test_scale_out_to_the_capacity_that_meets_the_target_within_max():
    state = ScalerState(steady_since=0)
    decision = decide(POLICY, state, current=1, invocations=1500, now=100)  # 1500/min on one instance
    assert (decision.act, decision.desired) == (True, 3) and decision.metric == pytest.approx(1500)
    assert decision.reason.startswith("scale out")
    assert decide(POLICY, state, current=2, invocations=6000, now=100).desired == 4  # capped at max


def test_cooldowns_and_a_full_window_hold_changes_back():
    policy = dataclasses.replace(POLICY, scale_out_cooldown_seconds=120)
    assert not decide(policy, ScalerState(steady_since=90), 1, 5000, now=100).act  # window not full yet
    state = ScalerState(steady_since=0)
    out = decide(policy, state, 1, 1500, now=100)
    record_action(state, out, now=100)
    state.steady_since = 100  # the new instances joined
    held = decide(policy, state, 3, 3000, now=170)  # window full again, 1000/instance wants 4: cooldown holds it
    assert (held.act, held.desired) == (False, 4) and "scale-out cooldown" in held.reason
    assert decide(policy, state, 3, 3000, now=221).act
    idle = decide(policy, state, 3, 0, now=300)  # traffic stopped: min, but not before the scale-in cooldown
    assert (idle.act, idle.desired) == (False, 1) and "scale-in cooldown" in idle.reason
    assert decide(policy, state, 3, 0, now=401).act


def test_target_tracking_holds_steady_at_the_target():
    state = ScalerState(steady_since=0)
    steady = decide(POLICY, state, current=2, invocations=1200, now=1000)  # exactly 600/instance
    assert (steady.act, steady.desired) == (False, 2)
    assert decide(POLICY, state, current=2, invocations=700, now=1000).desired == math.ceil(2 * 350 / 600)


def test_outside_bounds_is_corrected_at_once():
    decision = decide(ScalingPolicy(min_instances=2, max_instances=3), ScalerState(steady_since=1e9), 1, 0, now=0)
    assert (decision.act, decision.desired) == (True, 2)


@pytest.mark.slow
def test_scales_out_under_load_and_back_in_after_it(hosted, make_artifact):
    spec = ModelSpec("as-v1", hosted.publish(make_artifact("as-v1", seed=1)))
    result = hosted.hosting.deploy(
        spec, TrafficRouting(strategy="all-at-once", bake_seconds=0), smoke_images=hosted.smoke
    )
    assert result.outcome == "deployed"
    # Short windows and cooldowns so the test takes seconds; the rule is the one above.
    hosted.hosting.set_autoscaling(
        ScalingPolicy(
            min_instances=1,
            max_instances=2,
            target_invocations_per_instance=120,
            scale_out_cooldown_seconds=1,
            scale_in_cooldown_seconds=3,
            metric_window_seconds=2,
        )
    )
    counts = []

    def in_service(expected):
        status = hosted.hosting.status()
        counts.append(status.instance_count)
        settled = all(a["status"] != "in-progress" for a in status["scaling_activities"])
        return status.instance_count == expected and settled and status

    with LoadLoop(hosted, hosted.smoke, threads=2, pause_s=0.01) as load:  # far above 2 requests/s per instance
        scaled_out = wait_until(lambda: in_service(2), timeout_s=30, what="scale-out to 2 instances")
        load.wait_for(len(load.outcomes) + 100)  # sustained load at max: it must not grow past 2
        in_service(2)
    outcomes = load.stop()
    scaled_in = wait_until(lambda: in_service(1), timeout_s=30, what="scale-in to 1 instance after the load")
    assert all(o.ok for o in outcomes)
    assert max(counts) == 2 and min(counts) >= 1
    activities = scaled_in["scaling_activities"]
    out, back = activities[0], activities[-1]
    assert (out["from"], out["to"], out["status"]) == (1, 2, "successful") and out["reason"].startswith("scale out")
    assert (back["from"], back["to"], back["status"]) == (2, 1, "successful") and back["reason"].startswith("scale in")
    assert all(a["to"] <= 2 for a in activities)
    assert scaled_out["variants"][0]["autoscaling"]["max_instances"] == 2
    log_text = (hosted.settings.state_dir / "hosting" / "runtime.log").read_text()
    assert "autoscaling distracted-driver/AllTraffic 1 -> 2: scale out" in log_text
