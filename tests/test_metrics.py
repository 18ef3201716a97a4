"""The ``GET /metrics`` pages, read with prometheus_client's parser: the names, types and labels
dashboards and alerts use (docs/serving.md, docs/hosting.md), and the values behind them."""

from __future__ import annotations

from metrics_support import metric_families, parse_metrics

from distracted_driver.hosting.local.metrics import capture_metrics
from distracted_driver.serve.metrics import ServerMetrics

SERVER_FAMILIES = {  # family name (as the parser gives it) -> (type, labels of its samples)
    "model_requests": ("counter", {"path", "status"}),
    "model_errors": ("counter", {"error"}),
    "model_request_latency_seconds": ("histogram", {"le"}),
    "model_batch_size": ("histogram", {"le"}),
    "model_inference_seconds": ("histogram", {"le"}),
    "model_queue_depth": ("gauge", set()),
    "model_ready": ("gauge", set()),
    "process_max_resident_memory_bytes": ("gauge", set()),
}
CAPTURE_FAMILIES = {
    "runtime_capture_records_written": ("counter", {"endpoint"}),
    "runtime_capture_records_dropped": ("counter", {"endpoint"}),
    "runtime_capture_records_lost": ("counter", {"endpoint"}),
    "runtime_capture_files_written": ("counter", {"endpoint"}),
    "runtime_capture_queued_records": ("gauge", {"endpoint"}),
}


def test_model_server_page_keeps_its_names_and_counts():
    depth = [3]
    metrics = ServerMetrics(max_batch_size=4, queue_depth=lambda: depth[0])
    metrics.requests.labels("/invocations", 200).inc()
    metrics.requests.labels("/invocations", 200).inc()
    metrics.requests.labels("/ping", 200).inc()
    metrics.errors.labels("UnsupportedMediaType").inc()
    metrics.latency.observe(0.03)
    metrics.batch_size.observe(3)
    metrics.inference.observe(0.2)
    metrics.ready.set(1)
    text = metrics.render().decode()
    assert metric_families(text) == SERVER_FAMILIES
    samples = parse_metrics(text)
    assert samples['model_requests_total{path="/invocations",status="200"}'] == 2
    assert samples['model_requests_total{path="/ping",status="200"}'] == 1
    assert samples['model_errors_total{error="UnsupportedMediaType"}'] == 1
    assert samples['model_request_latency_seconds_bucket{le="0.025"}'] == 0
    assert samples['model_request_latency_seconds_bucket{le="0.05"}'] == 1
    assert samples["model_request_latency_seconds_count"] == 1
    assert samples['model_batch_size_bucket{le="2.0"}'] == 0 and samples['model_batch_size_bucket{le="3.0"}'] == 1
    assert samples['model_batch_size_bucket{le="+Inf"}'] == 1 and samples["model_batch_size_sum"] == 3
    assert samples["model_inference_seconds_sum"] == 0.2
    assert samples["model_ready"] == 1 and samples["model_queue_depth"] == 3
    depth[0] = 0
    assert parse_metrics(metrics.render().decode())["model_queue_depth"] == 0  # read when the page is asked for
    assert samples["process_max_resident_memory_bytes"] > 10e6
    assert not [key for key in samples if key.endswith("_created") or "_created{" in key]  # no series beyond ours


def test_runtime_capture_page_keeps_its_names_and_counts():
    stats = {
        "blue": {"written": 7, "dropped": 2, "lost": 0, "files": 1, "queued": 3},
        "green": {"written": 0, "dropped": 0, "lost": 1, "files": 0, "queued": 0},
    }
    text = capture_metrics(stats).decode()
    assert metric_families(text) == CAPTURE_FAMILIES
    samples = parse_metrics(text)
    assert samples['runtime_capture_records_written_total{endpoint="blue"}'] == 7
    assert samples['runtime_capture_records_dropped_total{endpoint="blue"}'] == 2
    assert samples['runtime_capture_records_lost_total{endpoint="green"}'] == 1
    assert samples['runtime_capture_files_written_total{endpoint="blue"}'] == 1
    assert samples['runtime_capture_queued_records{endpoint="blue"}'] == 3
    assert len(samples) == 10


def test_runtime_capture_page_without_capturing_endpoints():
    assert metric_families(capture_metrics({}).decode()) == {
        name: (kind, set()) for name, (kind, _) in CAPTURE_FAMILIES.items()
    }
