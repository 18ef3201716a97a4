"""The main job behind ``make demo``: generated sample data through the whole pipeline to a live REST API.

Each step is a library call that the invoke tasks also expose; this module
only chains them and tells the operator where every output went. Running it
again is cheap: the data is already in the bucket, so the pipeline finds
nothing to do and the demo goes straight to the live stack.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from distracted_driver.config import Settings
from distracted_driver.data.ingest import add_data
from distracted_driver.data.layout import TEST_DIR
from distracted_driver.data.sample import generate_sample
from distracted_driver.gateway import predict_image, start_gateway, stop_gateway
from distracted_driver.hosting import open_hosting
from distracted_driver.hosting.report import capture_text
from distracted_driver.loadtest import run_loadtest
from distracted_driver.model.registry import Registry
from distracted_driver.monitor.capture import capture_keys, iter_capture_records
from distracted_driver.monitor.report import drift_report
from distracted_driver.pipeline.options import RunOptions
from distracted_driver.pipeline.outcomes import exit_code
from distracted_driver.pipeline.run import print_summary, run_pipeline
from distracted_driver.serve.batch_predict import predict_directory
from distracted_driver.storage import open_storage
from distracted_driver.train.gate import serving_line

SAMPLE_QUERIES = 3
# The demo's endpoint captures every invocation, so that the drift report has the demo's traffic to read.
DEMO_CAPTURE_PERCENT = 100
# A window of live traffic for the drift report: new drivers drawn like training (so: no drift).
DRIFT_WINDOW = {"drivers": 10, "images_per_class_driver": 1, "first_driver": 100, "seed": 11}


def _say(message: str) -> None:
    print(f"\n== {message}", flush=True)


def run(settings: Settings) -> int:
    """Run the demo; return the pipeline's exit code (0 when a model is live)."""
    storage = open_storage(settings)
    sample_dir = settings.work_dir / "sample"

    _say(f"sample data -> {sample_dir}")
    generate_sample(sample_dir, overwrite=True)
    _say(f"add it to the bucket -> {storage.uri(settings.raw_prefix + '/')}")
    print(add_data(storage, settings, sample_dir))

    _say(
        f"pipeline: convert, upload, train, evaluate, gate, deploy (capturing {DEMO_CAPTURE_PERCENT}% of the "
        "invocations), smoke, load test"
    )
    record = run_pipeline(settings, RunOptions(capture_percent=DEMO_CAPTURE_PERCENT))
    print_summary(record)
    code = exit_code(record.outcome)
    if code != 0:
        print(f"\nthe pipeline ended {record.outcome}; see `inv pipeline.history`", file=sys.stderr)
        return code

    test_images = sorted((sample_dir / TEST_DIR).glob("*.jpg"))
    _served_precision(settings, storage)
    _batch_prediction(settings, sample_dir / TEST_DIR)
    _endpoint_queries(settings, test_images[:SAMPLE_QUERIES])
    _rest_api(settings, test_images[0], record)
    _where_things_are(settings, storage)
    _data_capture(settings, storage)
    _drift_summary(settings, storage)
    return 0


def _served_precision(settings: Settings, storage) -> None:
    registry = Registry(storage, settings)
    _say("served precision (the endpoint, the REST API and batch prediction all run this file)")
    print(serving_line(registry, "live"))


def _batch_prediction(settings: Settings, images: Path) -> None:
    out = settings.root / "reports" / "submission.csv"
    _say(f"batch prediction of {images} with the live model -> {out}")
    result = predict_directory(settings, "live", images, out, progress=False)
    print(f"{result.predicted} images classified, {len(result.failed)} unreadable, {result.seconds:.1f} s")


def _endpoint_queries(settings: Settings, images: list[Path]) -> None:
    hosting = open_hosting(settings)
    _say(
        f"endpoint {settings.endpoint_name!r} through boto3's sagemaker-runtime client at {hosting.status().runtime_url}"
    )
    for path in images:
        answer, variant = hosting.invoke(path.read_bytes(), "image/jpeg", accept="application/json;verbose=true")
        body = json.loads(answer)
        print(
            f"{path.name}: {body['class']} ({body['label']}, {body['confidence']:.2f}) "
            f"from variant {variant}, model {body['model_version']}"
        )


def _rest_api(settings: Settings, image: Path, record) -> None:
    status = start_gateway(settings)
    _say(f"REST API at {status['predict_url']} (docs: {status.get('docs_url', status['url'] + '/docs')})")
    print(
        f"curl -s -H 'x-api-key: {status['api_key']}' -H 'Content-Type: image/jpeg' "
        f"--data-binary @{image} {status['predict_url']}"
    )
    code, answer = predict_image(status["predict_url"], status["api_key"], image)
    print(f"-> {code} {json.dumps(answer)[:300]}")

    loadtest = next((s for s in record.stages if s.name == "loadtest" and s.outputs), None)
    if loadtest is not None and loadtest.status == "done" and loadtest.outputs.get("summary"):
        _say(f"load test of this run: {loadtest.outputs['summary']} (report: {loadtest.outputs.get('report')})")
        return
    _say("short load test (4 users, 10 s)")
    result = run_loadtest(settings, users=4, spawn_rate=4, run_time="10s")
    print(f"{result.summary.line()} | report: {result.report_dir} | SLO: {'met' if result.passed else result.misses}")


def _where_things_are(settings: Settings, storage) -> None:
    _say("where things are")
    print(f"bucket:        {storage.uri(settings.data_prefix)} (and models/, registry/, pipeline/ beside it)")
    print("models:        inv model.list")
    print("endpoint:      inv deploy.status --json")
    print("REST API:      inv api.status --json")
    print("runs:          inv pipeline.history")
    print(f"plots/reports: {settings.root / 'reports'}")
    print("stop it all:   make down")


def _data_capture(settings: Settings, storage) -> None:
    """Where the endpoint's captured traffic lands, and how much of it is there."""
    capture = open_hosting(settings).status().data_capture
    _say(f"data capture: {capture_text(capture)}")
    files = capture_keys(storage, settings.capture_prefix, settings.endpoint_name)
    where = storage.uri(f"{settings.capture_prefix}/{settings.endpoint_name}")
    print(
        f"captured traffic: {where}/<variant>/yyyy/mm/dd/hh/*.jsonl ({len(files)} files so far; "
        f"SageMaker's layout and record shape); change the share with inv deploy.capture --percent P"
    )


def _drift_summary(settings: Settings, storage) -> None:
    """Send a window of new drivers through the endpoint, and print the drift report's one line on it."""

    window = settings.work_dir / "drift-window"
    generate_sample(window, test_images=0, overwrite=True, progress=False, **DRIFT_WINDOW)
    images = sorted((window / "imgs" / "train").glob("c*/*.jpg"))
    _say(
        f"drift: {len(images)} requests of {DRIFT_WINDOW['drivers']} new drivers through the endpoint, then "
        "inv monitor.report on what it captured"
    )
    hosting = open_hosting(settings)
    time.sleep(1.0)  # captured times have whole seconds: the window starts on a second of its own
    since = datetime.now(UTC).replace(microsecond=0)
    for path in images:
        hosting.invoke(path.read_bytes())
    deadline = time.monotonic() + 30  # the capture writer flushes every few seconds
    while time.monotonic() < deadline and sum(
        1 for _ in iter_capture_records(storage, settings.capture_prefix, settings.endpoint_name, since=since)
    ) < len(images):
        time.sleep(0.5)
    result = drift_report(settings, since=since)
    print(f"report: {result.directory} (inv monitor.report --since 24h for the whole day)")
    print(f"drift: {result.line}")


def down(settings: Settings) -> None:
    """Stop the REST API and the local endpoint; nothing of ours is left running."""
    stop_gateway(settings)
    open_hosting(settings).delete()
    print("REST API and endpoint stopped")
