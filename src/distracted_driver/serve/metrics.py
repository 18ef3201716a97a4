"""The model server's metrics in Prometheus text format (exposition format 0.0.4).

A handful of counters, gauges and histograms is all the server needs, so they
are written here rather than pulling a client library into the serving install.
Everything is updated from the event loop thread only.
"""

from __future__ import annotations

import math
import resource
from collections import defaultdict

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(names: tuple[str, ...], values: tuple) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{v}"' for n, v in zip(names, values))
    return "{" + pairs + "}"


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help_text, labels
        self.values: dict[tuple, float] = defaultdict(float)

    def inc(self, *label_values, amount: float = 1.0) -> None:
        self.values[tuple(str(v) for v in label_values)] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in sorted(self.values.items())]
        return lines


class Gauge:
    def __init__(self, name: str, help_text: str, read=None):
        self.name, self.help, self.value, self.read = name, help_text, 0.0, read

    def set(self, value: float) -> None:
        self.value = value

    def render(self) -> list[str]:
        value = self.read() if self.read else self.value
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {_number(value)}"]


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name, self.help = name, help_text
        self.bounds = tuple(buckets) + (math.inf,)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip(self.bounds, self.counts):
            cumulative += count
            lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}')
        lines += [f"{self.name}_sum {_number(self.sum)}", f"{self.name}_count {self.count}"]
        return lines


def _max_rss_bytes() -> int:
    # getrusage's ru_maxrss survives exec, so a server started by a large parent would report
    # the parent's peak; the kernel's per-address-space high-water mark (VmHWM) is the server's own.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class ServerMetrics:
    """What ``GET /metrics`` shows."""

    def __init__(self, max_batch_size: int, queue_depth):
        self.requests = Counter("model_requests_total", "Requests answered, by path and HTTP status.", ("path", "status"))
        self.errors = Counter("model_errors_total", "Requests refused or failed, by error name.", ("error",))
        self.latency = Histogram(
            "model_request_latency_seconds", "Time from request start to response, for /invocations.", LATENCY_BUCKETS
        )
        self.batch_size = Histogram(
            "model_batch_size", "Images per ONNX Runtime run.", tuple(float(b) for b in range(1, max_batch_size + 1))
        )
        self.inference = Histogram(
            "model_inference_seconds", "Duration of one ONNX Runtime run over a batch.", LATENCY_BUCKETS
        )
        self.queue_depth = Gauge("model_queue_depth", "Invocations admitted and not yet answered.", read=queue_depth)
        self.ready = Gauge("model_ready", "1 once the model is loaded and warmed up, 0 before and while draining.")
        self.max_rss = Gauge("process_max_resident_memory_bytes", "Peak resident memory of the server.", read=_max_rss_bytes)

    def render(self) -> str:
        parts = (self.requests, self.errors, self.latency, self.batch_size, self.inference, self.queue_depth,
                 self.ready, self.max_rss)
        return "\n".join(line for part in parts for line in part.render()) + "\n"


def parse_text(text: str) -> dict[str, float]:
    """Sample lines of the exposition format → ``{'name{labels}': value}`` (for tests and benchmarks)."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples
