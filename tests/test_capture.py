"""Data capture: SageMaker's record shape and layout, one reader for both backends, a writer off the request path.

The unit tests use the real writer and the real local bucket; the end-to-end ones run the real runtime, real
model servers and real requests through boto3's sagemaker-runtime client, and read what the runtime wrote
with the same reader that reads the files AWS writes (``tests/data/capture/``, see its README).
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from hosting_support import hosted  # noqa: F401
from metrics_support import parse_metrics
from waiting import wait_until

from distracted_driver.hosting.base import ModelSpec, TrafficRouting
from distracted_driver.hosting.local import LocalHosting
from distracted_driver.monitor.capture import capture_keys, iter_capture_records, parse_capture_line
from distracted_driver.serve.capture import (
    CaptureConfig,
    CaptureLimits,
    CaptureWriter,
    Invocation,
    capture_line,
    hour_prefix,
)
from distracted_driver.storage.local import LocalStorage

REPO = Path(__file__).resolve().parents[1]
INV = Path(sys.executable).with_name("inv")
FIXTURES = Path(__file__).parent / "data" / "capture"
KEY_LAYOUT = re.compile(
    r"^capture/(?P<endpoint>[^/]+)/(?P<variant>[^/]+)/(?P<hour>\d{4}/\d{2}/\d{2}/\d{2})/"
    r"\d{2}-\d{2}-\d{3}-[0-9a-f-]{36}\.jsonl$"
)
T0 = datetime(2026, 1, 1, 9, 59, 58, tzinfo=UTC)
FAST = CaptureLimits(flush_seconds=0.2)


def _invocation(number: int = 0, when: datetime = T0, body: bytes = b"\xff\xd8\xff\xe0 a jpeg", variant="AllTraffic"):
    return Invocation(
        "ep",
        variant,
        f"event-{number}",
        when,
        "image/jpeg",
        body,
        "application/json; charset=utf-8",
        json.dumps([0.1] * 10).encode(),
    )


def _put_fixture(storage: LocalStorage, name: str, endpoint: str, when: datetime) -> str:
    """A fixture file at the key SageMaker would give it."""
    key = (
        hour_prefix("capture", endpoint, "AllTraffic", when)
        + f"{when:%M-%S}-000-{'0' * 8}-0000-4000-8000-{'0' * 12}.jsonl"
    )
    storage.put_bytes(key, (FIXTURES / name).read_bytes())
    return key


def _structure(value):
    """Key names at every level (values aside), to compare a record's shape with another's."""
    if isinstance(value, dict):
        return {key: _structure(item) for key, item in value.items()}
    return type(value).__name__


# --- the record and the reader -----------------------------------------------------------------------


def test_a_line_has_sagemakers_fields_in_its_order_and_reads_back():
    line = capture_line(_invocation())
    record = json.loads(line)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # JSON Lines: one event per line
    assert list(record) == ["captureData", "eventMetadata", "eventVersion"]
    assert list(record["captureData"]) == ["endpointInput", "endpointOutput"]
    assert record["captureData"]["endpointInput"] == {
        "observedContentType": "image/jpeg",
        "mode": "INPUT",
        "data": base64.b64encode(b"\xff\xd8\xff\xe0 a jpeg").decode(),
        "encoding": "BASE64",
    }
    assert record["captureData"]["endpointOutput"] == {
        "observedContentType": "application/json; charset=utf-8",
        "mode": "OUTPUT",
        "data": json.dumps([0.1] * 10),
        "encoding": "JSON",
    }  # the media type is in JsonContentTypes, its charset parameter aside
    assert record["eventMetadata"] == {"eventId": "event-0", "inferenceTime": "2026-01-01T09:59:58Z"}
    assert record["eventVersion"] == "0"

    back = parse_capture_line(line, "ep", "AllTraffic", "k")
    assert (back.input_bytes, back.output, back.inference_time, back.refused) == (
        b"\xff\xd8\xff\xe0 a jpeg",
        [0.1] * 10,
        T0,
        False,
    )


def test_the_reader_reads_the_files_aws_writes(tmp_path):
    storage = LocalStorage(tmp_path)
    csv_key = _put_fixture(storage, "documented-csv.jsonl", "xgb-churn", datetime(2022, 2, 14, 17, 25, tzinfo=UTC))
    records = list(iter_capture_records(storage, "capture", "xgb-churn"))
    assert len(records) == 2 and {r.key for r in records} == {csv_key}
    first = records[0]
    assert (first.event_id, first.inference_time, first.variant) == (
        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        datetime(2022, 2, 14, 17, 25, 49, tzinfo=UTC),
        "AllTraffic",
    )
    assert first.input_content_type == "text/csv" and first.input_bytes.startswith(b"69,0,153.7,")
    assert first.input_bytes.endswith(b"\n")
    assert (first.output_content_type, first.output_text, first.output) == (
        "text/csv; charset=utf-8",
        "0.0254181120544672",
        None,
    )  # CSV: not parsed as JSON

    _put_fixture(storage, "image-json.jsonl", "distracted-driver", datetime(2022, 2, 14, 17, 40, tzinfo=UTC))
    [image] = iter_capture_records(storage, "capture", "distracted-driver")
    import cv2
    import numpy as np

    assert cv2.imdecode(np.frombuffer(image.input_bytes, np.uint8), cv2.IMREAD_COLOR).shape == (8, 8, 3)
    assert image.output == [0.01, 0.02, 0.03, 0.04, 0.5, 0.1, 0.1, 0.1, 0.05, 0.05] and not image.refused


def test_since_and_variant_choose_hours_and_records(tmp_path):
    storage = LocalStorage(tmp_path)
    writer = CaptureWriter(storage, CaptureConfig(100, str(tmp_path), limits=FAST))
    times = [T0 - timedelta(hours=2), T0, T0 + timedelta(seconds=3)]  # the last one is in the next hour
    for number, when in enumerate(times):
        writer.offer(_invocation(number, when))
    writer.offer(_invocation(9, T0, variant="Shadow"))
    assert writer.close().written == 4
    hours = {key.split("/")[3:7][-1] for key, _ in capture_keys(storage, "capture", "ep")}
    assert hours == {"07", "09", "10"}  # one folder per hour of the events, UTC
    assert [r.event_id for r in iter_capture_records(storage, "capture", "ep", variant="AllTraffic")] == [
        "event-0",
        "event-1",
        "event-2",
    ]
    assert [r.event_id for r in iter_capture_records(storage, "capture", "ep", since=T0, variant="AllTraffic")] == [
        "event-1",
        "event-2",
    ]
    naive = T0.replace(tzinfo=None) + timedelta(seconds=1)  # a naive time is UTC
    assert [r.event_id for r in iter_capture_records(storage, "capture", "ep", since=naive)] == ["event-2"]
    assert [r.variant for r in iter_capture_records(storage, "capture", "ep", variant="Shadow")] == ["Shadow"]
    assert list(iter_capture_records(storage, "capture", "other-endpoint")) == []


def test_a_line_that_is_not_a_record_is_skipped_and_named(tmp_path):
    storage = LocalStorage(tmp_path)
    good = capture_line(_invocation(1))
    key = hour_prefix("capture", "ep", "AllTraffic", T0) + "59-58-000-x.jsonl"
    storage.put_bytes(
        key,
        good
        + b"{not json\n"
        + b'{"captureData": {}, "eventMetadata": {}}\n'
        + good.replace(b'"BASE64"', b'"ROT13"')
        + b"\n"
        + good,
    )
    skipped: list[str] = []
    records = list(iter_capture_records(storage, "capture", "ep", skipped=skipped))
    assert [r.event_id for r in records] == ["event-1", "event-1"]
    assert [s.split(": ", 1)[0] for s in skipped] == [f"{key}:2", f"{key}:3", f"{key}:4"]
    assert "unknown encoding 'ROT13'" in skipped[2]


# --- the writer ------------------------------------------------------------------------------------------


def test_files_rotate_by_size_and_by_hour_and_are_never_seen_half_written(tmp_path):
    storage = LocalStorage(tmp_path)
    line_size = len(capture_line(_invocation()))
    limits = CaptureLimits(max_file_bytes=3 * line_size, flush_seconds=3600)
    writer = CaptureWriter(storage, CaptureConfig(100, str(tmp_path), limits=limits))
    # Hours still to come (a file of an hour that is over is written at once).
    soon = (datetime.now(UTC) + timedelta(days=1)).replace(hour=9, minute=59, second=58, microsecond=0)
    for number in range(7):
        writer.offer(_invocation(number, soon))  # hour 09
    writer.offer(_invocation(7, soon + timedelta(seconds=5)))  # hour 10
    # Two files of hour 09 are full (rotated by size); the rest waits in memory, invisible.
    wait_until(lambda: writer.stats().files == 2, timeout_s=10, what="two full files")
    assert [len(storage.get_bytes(k).splitlines()) for k, _ in capture_keys(storage, "capture", "ep")] == [3, 3]
    final = writer.close()
    assert (final.accepted, final.written, final.lost, final.queued, final.files) == (8, 8, 0, 0, 4)
    keys = [k for k, _ in capture_keys(storage, "capture", "ep")]
    assert all(KEY_LAYOUT.match(k) for k in keys)
    per_hour = {}
    for key in keys:
        per_hour.setdefault(key.split("/")[6], []).append(len(storage.get_bytes(key).splitlines()))
    assert {hour: sorted(counts) for hour, counts in per_hour.items()} == {"09": [1, 3, 3], "10": [1]}
    assert all(len(storage.get_bytes(k)) <= limits.max_file_bytes for k in keys)
    assert not [p for p in Path(tmp_path).rglob("*") if p.is_file() and p.name.startswith(".")]  # no temporary left


def test_a_full_queue_drops_and_counts_and_a_record_too_big_for_it_is_dropped(tmp_path):
    storage = LocalStorage(tmp_path)
    writer = CaptureWriter(
        storage,
        CaptureConfig(100, str(tmp_path), limits=CaptureLimits(queue_records=1, queue_bytes=4096, flush_seconds=0.2)),
    )
    assert writer.offer(_invocation(0, body=b"x" * 5000)) is False  # bigger than the queue's byte budget
    # A burst from one thread: the writer thread can take the queue only when this one lets go of the GIL.
    accepted = sum(writer.offer(_invocation(n)) for n in range(1, 2001))
    final = writer.close()
    assert final.dropped == 1 + 2000 - accepted and final.dropped > 1
    assert final.written == final.accepted == accepted
    assert len(list(iter_capture_records(storage, "capture", "ep"))) == accepted


def test_close_writes_what_is_queued_and_a_closed_writer_takes_nothing(tmp_path):
    storage = LocalStorage(tmp_path)
    writer = CaptureWriter(storage, CaptureConfig(100, str(tmp_path), limits=CaptureLimits(flush_seconds=3600)))
    soon = datetime.now(UTC) + timedelta(days=1)  # an hour not over yet: nothing is due
    for number in range(20):
        writer.offer(_invocation(number, soon))
    # Behind them, one of an hour already over: written at once, so the thread has taken the 20 before it.
    writer.offer(_invocation(20, datetime.now(UTC) - timedelta(hours=2)))
    wait_until(lambda: writer.stats().written == 1, timeout_s=5, what="the past hour's record written")
    assert len(capture_keys(storage, "capture", "ep")) == 1 and writer.stats().queued == 20
    final = writer.close()
    assert (final.written, final.lost, final.queued) == (21, 0, 0)
    assert writer.offer(_invocation(99)) is False and writer.stats().dropped == 1


def test_a_failed_write_counts_the_records_as_lost_and_the_writer_goes_on(tmp_path):
    storage = LocalStorage(tmp_path)
    blocker = tmp_path / "capture"
    blocker.write_text("a file where the capture folder should be")  # every write under it fails
    writer = CaptureWriter(storage, CaptureConfig(100, str(tmp_path), limits=FAST))
    writer.offer(_invocation(1))
    wait_until(lambda: writer.stats().lost == 1, timeout_s=10, what="the failed write to be counted")
    blocker.unlink()
    writer.offer(_invocation(2))
    final = writer.close()
    assert (final.written, final.lost) == (1, 1)
    assert [r.event_id for r in iter_capture_records(storage, "capture", "ep")] == ["event-2"]


def test_the_config_is_sagemakers_data_capture_config(tmp_path):
    config = CaptureConfig(25, "s3://bucket", "capture", kms_key_id="arn:aws:kms:us-east-1:1:key/k")
    assert config.sagemaker_request() == {
        "EnableCapture": True,
        "InitialSamplingPercentage": 25,
        "DestinationS3Uri": "s3://bucket/capture",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "KmsKeyId": "arn:aws:kms:us-east-1:1:key/k",
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
    }
    assert CaptureConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    local = CaptureConfig(100, str(tmp_path))
    assert local.destination_uri == (tmp_path / "capture").as_uri()
    for bad in (101, -1, "ten"):
        with pytest.raises(ValueError, match="0..100"):
            CaptureConfig(bad, str(tmp_path))


# --- the local runtime, end to end -------------------------------------------------------------------


def _deployed(hosted, make_artifact, version="cap-v1", percent=100, limits=FAST, seed=1) -> LocalHosting:
    hosting = LocalHosting(
        hosted.settings, storage=hosted.storage, instance_threads=1, startup_timeout_seconds=30, capture_limits=limits
    )
    spec = ModelSpec(version, hosted.publish(make_artifact(version, seed=seed)))
    result = hosting.deploy(
        spec, TrafficRouting(strategy="all-at-once", bake_seconds=0), smoke_images=hosted.smoke, capture_percent=percent
    )
    assert result.outcome == "deployed", result.reason
    return hosting


def _records(hosted, **kwargs):
    return list(iter_capture_records(hosted.storage, "capture", hosted.settings.endpoint_name, **kwargs))


def _inv(settings, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "DD_ROOT": str(settings.root)}
    return subprocess.run([str(INV), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_local_runtime_writes_files_the_sagemaker_reader_reads(hosted, make_artifact):
    _deployed(hosted, make_artifact)
    client = hosted.client()
    sent = {}
    for image in hosted.smoke * 3:
        answer = client.invoke_endpoint(EndpointName="distracted-driver", ContentType="image/jpeg", Body=image)
        sent[answer["ResponseMetadata"]["RequestId"]] = (image, json.loads(answer["Body"].read()))
    with pytest.raises(ClientError) as refused:  # the model server refuses it: the refusal is captured too
        client.invoke_endpoint(EndpointName="distracted-driver", ContentType="image/jpeg", Body=b"not a jpeg")
    refusal_id = refused.value.response["ResponseMetadata"]["RequestId"]

    records = wait_until(
        lambda: (r := _records(hosted)) and len(r) == len(sent) + 1 and r,
        timeout_s=20,
        what="every invocation in the bucket",
    )
    # The same reader reads AWS's file beside ours.
    aws_key = _put_fixture(
        hosted.storage, "image-json.jsonl", "distracted-driver", datetime(2022, 2, 14, 17, 40, tzinfo=UTC)
    )
    [from_aws] = [r for r in _records(hosted) if r.key == aws_key]
    by_id = {r.event_id: r for r in records}
    assert set(by_id) == set(sent) | {refusal_id}  # eventId is the x-amzn-RequestId the client got
    for event_id, (image, answer) in sent.items():
        record = by_id[event_id]
        assert (record.input_bytes, record.output, record.variant, record.refused) == (
            image,
            answer,
            "AllTraffic",
            False,
        )
        assert record.input_content_type == "image/jpeg" and record.output_content_type.startswith("application/json")
        match = KEY_LAYOUT.match(record.key)
        assert match and match["hour"] == record.inference_time.strftime("%Y/%m/%d/%H")
        assert abs(record.inference_time - datetime.now(UTC)) < timedelta(minutes=5)
        assert type(record.output) is type(from_aws.output) is list  # the probabilities, read alike
    assert by_id[refusal_id].refused and by_id[refusal_id].input_bytes == b"not a jpeg"
    # Line for line, ours has the shape of AWS's (field names and value types at every level).
    ours = json.loads(hosted.storage.get_bytes(records[0].key).splitlines()[0])
    theirs = json.loads((FIXTURES / "image-json.jsonl").read_bytes())
    assert _structure(ours) == _structure(theirs)


@pytest.mark.slow
def test_deploy_capture_changes_the_share_and_swaps_and_restarts_keep_it(hosted, make_artifact):
    hosting = _deployed(hosted, make_artifact, percent=100)
    client = hosted.client()

    def send(count: int) -> None:
        for n in range(count):
            client.invoke_endpoint(
                EndpointName="distracted-driver", ContentType="image/jpeg", Body=hosted.smoke[n % len(hosted.smoke)]
            )

    def captured() -> int:
        return hosting.status().data_capture["stats"]["accepted"]

    off = _inv(hosted.settings, "deploy.capture", "--percent", "0")
    assert off.returncode == 0, off.stdout + off.stderr
    assert "data capture of distracted-driver: off" in off.stdout
    before = captured()
    send(10)
    assert captured() == before
    half = _inv(hosted.settings, "deploy.capture", "--percent", "50")
    assert half.returncode == 0 and "50% of invocations -> file://" in half.stdout, half.stdout + half.stderr
    before = captured()
    send(200)
    assert 40 <= captured() - before <= 160  # 100 expected; outside this is ~7 standard deviations

    hosted.publish(make_artifact("cap-v2", seed=2))
    swapped = hosting.deploy(
        ModelSpec("cap-v2", "models/cap-v2/output/model.tar.gz"),
        TrafficRouting(strategy="all-at-once", bake_seconds=0),
        smoke_images=hosted.smoke,
    )
    assert swapped.outcome == "deployed"
    assert hosting.status().data_capture["sampling_percent"] == 50  # the swap kept it

    hosting.stop_runtime()  # a clean stop; the next command brings the endpoint back from state.json
    hosting.runtime()
    wait_until(lambda: hosting.status().instance_count == 1, timeout_s=30, what="the endpoint restored")
    status = hosting.status()
    assert (status.live_version, status.data_capture["sampling_percent"]) == ("cap-v2", 50)
    shown = _inv(hosted.settings, "deploy.status")
    assert "data capture: 50% of invocations" in shown.stdout, shown.stdout
    bad = _inv(hosted.settings, "deploy.capture", "--percent", "150")
    assert bad.returncode == 2 and "--percent takes a whole number within 0..100, not 150" in bad.stderr


@pytest.mark.slow
def test_a_full_queue_drops_and_counts_and_no_request_fails(hosted, make_artifact):
    hosting = _deployed(hosted, make_artifact, limits=CaptureLimits(queue_records=1, flush_seconds=0.2))
    client = hosted.client()

    def call(n: int) -> bool:
        answer = client.invoke_endpoint(
            EndpointName="distracted-driver", ContentType="image/jpeg", Body=hosted.smoke[n % len(hosted.smoke)]
        )
        return answer["ResponseMetadata"]["HTTPStatusCode"] == 200

    answered = 0
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for _ in range(5):  # bursts until one overflows the one-record queue (the model server batches answers)
            results = list(pool.map(call, range(64)))
            assert all(results)
            answered += len(results)
            if hosting.status().data_capture["stats"]["dropped"]:
                break
    stats = wait_until(
        lambda: (s := hosting.status().data_capture["stats"])["queued"] == 0 and s,
        timeout_s=10,
        what="the queue written out",
    )
    assert stats["dropped"] > 0 and stats["accepted"] + stats["dropped"] == answered
    assert stats["written"] == stats["accepted"] == len(_records(hosted))
    import urllib.request

    with urllib.request.urlopen(f"{hosted.url()}/metrics", timeout=10) as response:
        metrics = parse_metrics(response.read().decode())
    assert metrics['runtime_capture_records_dropped_total{endpoint="distracted-driver"}'] == stats["dropped"]
    assert metrics['runtime_capture_records_written_total{endpoint="distracted-driver"}'] == stats["written"]
    assert metrics['runtime_capture_queued_records{endpoint="distracted-driver"}'] == 0


@pytest.mark.slow
def test_a_clean_stop_writes_every_queued_record_and_says_so(hosted, make_artifact):
    hosting = _deployed(hosted, make_artifact, limits=CaptureLimits(flush_seconds=3600))
    client = hosted.client()
    for n in range(12):
        client.invoke_endpoint(EndpointName="distracted-driver", ContentType="image/jpeg", Body=hosted.smoke[n % 2])
    assert _records(hosted) == [] and hosting.status().data_capture["stats"]["queued"] == 12
    hosting.stop_runtime()  # SIGTERM through supervisord
    assert len(_records(hosted)) == 12
    log = hosting.paths.log_file.read_text()
    assert "data capture of distracted-driver (the runtime is stopping): 12 queued records written out, 0 lost" in log


@pytest.mark.slow
def test_a_killed_runtime_leaves_only_whole_files_and_captures_again_once_restarted(hosted, make_artifact):
    hosting = _deployed(hosted, make_artifact, limits=CaptureLimits(flush_seconds=0.1))
    client = hosted.client()
    before = hosting.status()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        load = [pool.submit(_send_for, client, hosted.smoke, 3.0) for _ in range(4)]
        time.sleep(1.5)
        os.kill(before.details["runtime"]["pid"], signal.SIGKILL)  # mid-write, as likely as not
        for future in load:
            future.result()
    wait_until(
        lambda: (
            (s := hosting.status()).runtime_running
            and s.details["runtime"]["pid"] != before.details["runtime"]["pid"]
            and s.instance_count == 1
        ),
        timeout_s=30,
        what="the supervisor to restart the runtime",
    )
    skipped: list[str] = []
    kept = _records(hosted, skipped=skipped)
    assert kept and skipped == []  # every file the reader sees is whole: a killed write left a temporary at most
    lines = sum(
        len(hosted.storage.get_bytes(k).splitlines())
        for k, _ in capture_keys(hosted.storage, "capture", "distracted-driver")
    )
    assert lines == len(kept)
    client.invoke_endpoint(EndpointName="distracted-driver", ContentType="image/jpeg", Body=hosted.smoke[0])
    wait_until(lambda: len(_records(hosted)) == len(kept) + 1, timeout_s=10, what="capture after the restart")


def _send_for(client, images: list[bytes], seconds: float) -> int:
    """Invoke back to back for ``seconds``; failures while the runtime is down are expected and not counted."""
    deadline, answered = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        try:
            client.invoke_endpoint(
                EndpointName="distracted-driver", ContentType="image/jpeg", Body=images[answered % 2]
            )
            answered += 1
        except Exception:  # noqa: BLE001 - the runtime is being killed
            time.sleep(0.05)  # a pause between retries while the runtime is down
    return answered


def test_the_settings_capture_percent_comes_from_the_environment_and_reaches_a_watched_run(tmp_path, monkeypatch):
    from distracted_driver.config import Settings
    from distracted_driver.pipeline.watch import settings_environment

    monkeypatch.setenv("DD_CAPTURE_PERCENT", "30")
    assert Settings.from_env(root=tmp_path).capture_percent == 30
    monkeypatch.setenv("DD_CAPTURE_PERCENT", "half")
    with pytest.raises(ValueError, match="DD_CAPTURE_PERCENT takes a whole number within 0..100, not 'half'"):
        Settings.from_env(root=tmp_path)
    monkeypatch.delenv("DD_CAPTURE_PERCENT")
    unset = Settings(root=tmp_path)
    assert unset.capture_percent is None and "DD_CAPTURE_PERCENT" not in settings_environment(unset)
    assert settings_environment(Settings(root=tmp_path, capture_percent=5))["DD_CAPTURE_PERCENT"] == "5"
