"""The runtime's ``GET /metrics``: each endpoint's data-capture counters in Prometheus text format."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

COUNTERS = {  # CaptureStats field -> (metric, help)
    "written": ("runtime_capture_records_written_total", "Captured invocations written to the bucket."),
    "dropped": (
        "runtime_capture_records_dropped_total",
        "Sampled invocations not captured because the capture queue was full.",
    ),
    "lost": ("runtime_capture_records_lost_total", "Captured invocations accepted but never written (a failed write)."),
    "files": ("runtime_capture_files_written_total", "Capture files written to the bucket."),
}
QUEUED = ("runtime_capture_queued_records", "Captured invocations accepted and not yet in a file.")


class _CaptureCollector:
    """The counters as the endpoints' writers keep them: read once, when the page is asked for."""

    def __init__(self, stats: dict[str, dict]):
        self.stats = stats

    def collect(self):
        families = {
            field: CounterMetricFamily(name, text, labels=("endpoint",)) for field, (name, text) in COUNTERS.items()
        }
        queued = GaugeMetricFamily(*QUEUED, labels=("endpoint",))
        for endpoint, counts in sorted(self.stats.items()):
            for field, family in families.items():
                family.add_metric((endpoint,), counts[field])
            queued.add_metric((endpoint,), counts["queued"])
        return [*families.values(), queued]


def capture_metrics(stats: dict[str, dict]) -> bytes:
    """``{endpoint: capture stats}`` (``Endpoint.capture_stats()``) as exposition-format text."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_CaptureCollector(stats))
    return generate_latest(registry)
