"""The model server's ``GET /metrics``, in Prometheus text format, through ``prometheus_client``.

Each server keeps its own registry (tests run several servers in one process). The
``*_created`` series the client adds by default are switched off: the page shows the
same series it always has, so dashboards and alerts keep working.
"""

from __future__ import annotations

import resource

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
        self.registry = CollectorRegistry(auto_describe=True)
        into = {"registry": self.registry}
        self.requests = Counter(
            "model_requests", "Requests answered, by path and HTTP status.", ("path", "status"), **into
        )
        self.errors = Counter("model_errors", "Requests refused or failed, by error name.", ("error",), **into)
        self.latency = Histogram(
            "model_request_latency_seconds",
            "Time from request start to response, for /invocations.",
            buckets=LATENCY_BUCKETS,
            **into,
        )
        self.batch_size = Histogram(
            "model_batch_size",
            "Images per ONNX Runtime run.",
            buckets=tuple(float(b) for b in range(1, max_batch_size + 1)),
            **into,
        )
        self.inference = Histogram(
            "model_inference_seconds", "Duration of one ONNX Runtime run over a batch.", buckets=LATENCY_BUCKETS, **into
        )
        self.queue_depth = Gauge("model_queue_depth", "Invocations admitted and not yet answered.", **into)
        self.queue_depth.set_function(queue_depth)
        self.ready = Gauge(
            "model_ready", "1 once the model is loaded and warmed up, 0 before and while draining.", **into
        )
        self.max_rss = Gauge("process_max_resident_memory_bytes", "Peak resident memory of the server.", **into)
        self.max_rss.set_function(_max_rss_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
