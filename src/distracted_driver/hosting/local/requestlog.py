"""The router's own record of the requests each fleet served, over a sliding window.

This is the local CloudWatch: alarms read a fleet's error rate and p99 latency
from it, autoscaling its invocations per instance per minute.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass

KEEP_SECONDS = 600.0  # older entries are dropped; no window looks further back
MAX_ENTRIES = 200_000


@dataclass(frozen=True)
class WindowStats:
    seconds: float
    requests: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def per_minute(self) -> float:
        return self.requests * 60.0 / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "window_seconds": round(self.seconds, 3),
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "p50_ms": None if self.p50_ms is None else round(self.p50_ms, 2),
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 2),
        }


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (as CloudWatch's pNN statistics) of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


class RequestLog:
    """Append-only (time, ok, latency) entries; an error is a 5xx or a failed connection."""

    def __init__(self) -> None:
        self._entries: collections.deque[tuple[float, bool, float]] = collections.deque(maxlen=MAX_ENTRIES)
        self.total = 0
        self.total_errors = 0

    def record(self, ok: bool, latency_ms: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._entries.append((now, ok, latency_ms))
        self.total += 1
        self.total_errors += not ok
        while self._entries and self._entries[0][0] < now - KEEP_SECONDS:
            self._entries.popleft()

    def window(self, seconds: float, now: float | None = None) -> WindowStats:
        now = time.monotonic() if now is None else now
        since = now - seconds
        latencies, errors = [], 0
        for stamp, ok, latency in reversed(self._entries):
            if stamp < since:
                break
            latencies.append(latency)
            errors += not ok
        latencies.sort()
        return WindowStats(seconds, len(latencies), errors, percentile(latencies, 50), percentile(latencies, 99))
