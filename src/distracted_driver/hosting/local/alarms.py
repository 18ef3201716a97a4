"""The alarms a blue/green deployment watches: error rate and p99 latency of the green fleet.

SageMaker's guardrails watch CloudWatch alarms on the endpoint; here the
router's own request log of the green fleet is the metric source, so a canary
at 10 % is judged on its own requests rather than diluted by blue's.
"""

from __future__ import annotations

from distracted_driver.hosting.base import AlarmThresholds
from distracted_driver.hosting.local.requestlog import WindowStats


def breached(stats: WindowStats, thresholds: AlarmThresholds) -> str | None:
    """Why the alarm is in ALARM for these statistics, or None (OK, or too few requests to tell)."""
    if stats.requests < thresholds.min_requests:
        return None
    if stats.error_rate > thresholds.max_error_rate:
        return (
            f"error rate {stats.error_rate:.1%} ({stats.errors} of {stats.requests} requests in the last "
            f"{stats.seconds:g} s) is above {thresholds.max_error_rate:.1%}"
        )
    if stats.p99_ms is not None and stats.p99_ms > thresholds.max_p99_latency_ms:
        return (
            f"p99 latency {stats.p99_ms:.0f} ms over {stats.requests} requests in the last {stats.seconds:g} s "
            f"is above {thresholds.max_p99_latency_ms:g} ms"
        )
    return None
