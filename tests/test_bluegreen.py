"""Blue/green swaps under load: no failed request, smoke tests that keep bad models out, alarms that roll back."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from hosting_support import LoadLoop, fails_on_dark_frames, hosted, night_frames, without_softmax, wrong_class_count  # noqa: F401
from waiting import wait_until

from distracted_driver.hosting.base import AlarmThresholds, ModelSpec, TrafficRouting
from distracted_driver.hosting.local.alarms import breached
from distracted_driver.hosting.local.requestlog import RequestLog, WindowStats
from distracted_driver.model.registry import Registry

ALL_AT_ONCE = TrafficRouting(strategy="all-at-once", bake_seconds=0)


# --- alarms and the request log (no processes) ------------------------------------------------


def test_alarm_needs_enough_requests_then_fires_on_error_rate_or_p99():
    thresholds = AlarmThresholds(max_error_rate=0.1, max_p99_latency_ms=200, min_requests=5, window_seconds=10)
    assert breached(WindowStats(10, 4, 4, 10, 10), thresholds) is None  # too few requests to judge
    assert breached(WindowStats(10, 20, 2, 10, 50), thresholds) is None  # exactly at the limit is fine
    assert "error rate 15.0%" in breached(WindowStats(10, 20, 3, 10, 50), thresholds)
    assert "p99 latency 250 ms" in breached(WindowStats(10, 20, 0, 10, 250), thresholds)


def test_request_log_window_counts_errors_and_p99():
    log = RequestLog()
    for n in range(100):
        log.record(ok=n % 10 != 0, latency_ms=float(n + 1), now=1000.0 + n * 0.1)
    stats = log.window(5.0, now=1010.0)  # the last 50 entries: latencies 51..100
    assert (stats.requests, stats.errors) == (50, 5)
    assert stats.p99_ms == 100.0 and stats.p50_ms == 75.0
    assert stats.per_minute == pytest.approx(600.0)
    assert log.window(5.0, now=2000.0).requests == 0


# --- swaps with real processes --------------------------------------------------------------------


def _blue(hosted, make_artifact, version="bg-blue", seed=1):
    result = hosted.hosting.deploy(
        ModelSpec(version, hosted.publish(make_artifact(version, seed=seed))), ALL_AT_ONCE, smoke_images=hosted.smoke
    )
    assert result.outcome == "deployed", result
    return version


def _live_in_registry(hosted):
    return Registry(hosted.storage, hosted.settings).live()["job"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "routing",
    [
        TrafficRouting(strategy="all-at-once", bake_seconds=0.5),
        TrafficRouting(
            strategy="linear", linear_step_percent=50, wait_seconds=1, bake_seconds=0.5, termination_wait_seconds=0.5
        ),
    ],
    ids=["all-at-once", "linear"],
)
def test_swap_under_load_fails_no_request(hosted, make_artifact, routing):
    blue = _blue(hosted, make_artifact)
    green = "bg-green"
    spec = ModelSpec(green, hosted.publish(make_artifact(green, seed=2)))
    with LoadLoop(hosted, hosted.smoke, threads=2) as load:
        load.wait_for(10)
        result = hosted.hosting.deploy(spec, routing, AlarmThresholds(), smoke_images=hosted.smoke)
        during = len(load.outcomes)
        load.wait_for(during + 20)
    outcomes = load.stop()
    assert result.outcome == "deployed", result
    assert all(o.ok for o in outcomes), Counter(o.error for o in outcomes if not o.ok)
    assert {o.version for o in outcomes} == {blue, green}
    assert {o.version for o in outcomes[during + 2 :]} == {green}  # two threads: one answer may straddle the end
    assert result.timings["swap_to_all_traffic_on_green"] > 0
    status = hosted.hosting.status()
    assert status.live_version == green and _live_in_registry(hosted) == green
    assert [i["model"] for i in status.instances] == [green]  # blue retired


@pytest.mark.slow
@pytest.mark.parametrize(
    "faulty, expected",
    [
        (
            without_softmax,
            "probabilities outside [0, 1]",
        ),  # healthy on /ping, wrong answers: only the smoke test sees it
        (wrong_class_count, "exited with code 1 before it was healthy"),  # never healthy
    ],
    ids=["wrong-answers", "never-healthy"],
)
def test_green_that_fails_before_traffic_never_gets_any(hosted, make_artifact, tmp_path, faulty, expected):
    blue = _blue(hosted, make_artifact)
    bad = faulty(tmp_path / "faulty", "bg-faulty")
    with LoadLoop(hosted, hosted.smoke, threads=1) as load:
        result = hosted.hosting.deploy(
            ModelSpec(bad.version, hosted.publish(bad)), ALL_AT_ONCE, AlarmThresholds(), smoke_images=hosted.smoke
        )
    outcomes = load.stop()
    assert result.outcome == "failed" and expected in result.reason, result
    assert result.live_version == blue
    assert outcomes and all(o.ok and o.version == blue for o in outcomes)
    status = hosted.hosting.status()
    events = [e["message"] for e in status.last_deployment["events"]]
    assert "phase smoke-test" in events or "exited" in events[-1]
    assert not any("of traffic on green" in e for e in events)
    assert status.live_version == blue and status.status == "InService"
    assert [i["model"] for i in status.instances] == [blue]
    assert _live_in_registry(hosted) == blue


@pytest.mark.slow
def test_canary_that_answers_errors_is_rolled_back_to_blue(hosted, make_artifact, tmp_path):
    blue = _blue(hosted, make_artifact)
    bad = fails_on_dark_frames(tmp_path / "faulty", "bg-night-blind")
    routing = TrafficRouting(strategy="canary", canary_percent=50, wait_seconds=60, bake_seconds=60)
    alarms = AlarmThresholds(max_error_rate=0.05, min_requests=5, window_seconds=30)
    night = night_frames(2)
    with LoadLoop(hosted, night, threads=2) as load:  # it is night: every frame is dark
        result = hosted.hosting.deploy(
            ModelSpec(bad.version, hosted.publish(bad)), routing, alarms, smoke_images=hosted.smoke
        )  # daytime smoke images pass
        after = len(load.outcomes)
        load.wait_for(after + 20)
    outcomes = load.stop()
    assert result.outcome == "rolled-back", result
    assert "error rate" in result.reason and result.live_version == blue
    assert result.timings["total"] < routing.wait_seconds  # the alarm ended the canary, not its wait
    failed = [o for o in outcomes if not o.ok]
    assert failed and all(o.error == "ModelError" and o.original_status == 500 for o in failed)  # the canary's share
    assert all(o.ok and o.version == blue for o in outcomes[after + 2 :])  # after the rollback: blue only
    status = hosted.hosting.status()
    assert status.live_version == blue and [i["model"] for i in status.instances] == [blue]
    assert status.last_deployment["outcome"] == "rolled-back"
    assert _live_in_registry(hosted) == blue


@pytest.mark.slow
def test_manual_rollback_after_a_swap_and_during_a_bake(hosted, make_artifact):
    blue = _blue(hosted, make_artifact)
    green = ModelSpec("bg-green", hosted.publish(make_artifact("bg-green", seed=2)))
    assert hosted.hosting.deploy(green, ALL_AT_ONCE, smoke_images=hosted.smoke).outcome == "deployed"

    back = hosted.hosting.rollback(smoke_images=hosted.smoke)
    assert (back.outcome, back.live_version) == ("rolled-back", blue)
    assert _live_in_registry(hosted) == blue

    results = []
    baking = TrafficRouting(strategy="all-at-once", bake_seconds=120)
    swap = threading.Thread(
        target=lambda: results.append(hosted.hosting.deploy(green, baking, smoke_images=hosted.smoke))
    )
    swap.start()
    wait_until(
        lambda: (hosted.hosting.status().deployment_in_progress or {}).get("phase") == "baking",
        timeout_s=30,
        what="the swap to bake",
    )
    stopped = hosted.hosting.rollback(smoke_images=hosted.smoke)
    swap.join(timeout=30)
    assert stopped.outcome == "rolled-back" and "manual rollback" in stopped.reason
    assert results[0].outcome == "rolled-back" and results[0].live_version == blue
    assert hosted.hosting.status().live_version == blue
