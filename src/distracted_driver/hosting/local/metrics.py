"""The runtime's ``GET /metrics``: each endpoint's data-capture counters in Prometheus text format."""

from __future__ import annotations

from distracted_driver.serve.metrics import Counter

COUNTERS = {  # CaptureStats field -> (metric, help)
    "written": ("runtime_capture_records_written_total", "Captured invocations written to the bucket."),
    "dropped": ("runtime_capture_records_dropped_total",
                "Sampled invocations not captured because the capture queue was full."),
    "lost": ("runtime_capture_records_lost_total", "Captured invocations accepted but never written (a failed write)."),
    "files": ("runtime_capture_files_written_total", "Capture files written to the bucket."),
}
QUEUED = "runtime_capture_queued_records"


def capture_metrics(stats: dict[str, dict]) -> str:
    """``{endpoint: capture stats}`` (``Endpoint.capture_stats()``) as exposition-format text."""
    counters = {field: Counter(name, text, ("endpoint",)) for field, (name, text) in COUNTERS.items()}
    queued = [f"# HELP {QUEUED} Captured invocations accepted and not yet in a file.", f"# TYPE {QUEUED} gauge"]
    for endpoint, counts in sorted(stats.items()):
        for field, counter in counters.items():
            counter.inc(endpoint, amount=counts[field])
        queued.append(f'{QUEUED}{{endpoint="{endpoint}"}} {counts["queued"]}')
    return "\n".join([line for counter in counters.values() for line in counter.render()] + queued) + "\n"
