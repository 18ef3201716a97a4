"""Helpers for the monitoring tests: traffic through the real endpoint, waiting for its capture, ground truth."""

from __future__ import annotations

import csv
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from distracted_driver.config import Settings
from distracted_driver.data.layout import DRIVER_LIST
from distracted_driver.hashing import sha256_bytes


def images_of(batch: Path) -> list[Path]:
    """Every labelled image of a Kaggle-layout batch, in a stable order."""
    return sorted((batch / "imgs" / "train").glob("c*/*.jpg"))


def send_images(settings: Settings, paths: list[Path], workers: int = 4) -> datetime:
    """Post every image to the live endpoint (boto3's sagemaker-runtime, as in production); returns when the
    window began: a whole second after anything sent before, since captured times have whole seconds."""
    from distracted_driver.hosting import open_hosting
    from distracted_driver.hosting.local.client import sagemaker_runtime_client

    client = sagemaker_runtime_client(open_hosting(settings).status().runtime_url, settings.region)

    def send(path: Path) -> None:
        answer = client.invoke_endpoint(
            EndpointName=settings.endpoint_name, ContentType="image/jpeg", Body=path.read_bytes()
        )
        answer["Body"].read()

    time.sleep(1.1)
    start = datetime.now(UTC).replace(microsecond=0)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(send, paths))
    return start


def wait_for_capture(settings: Settings, since: datetime, count: int, timeout_s: float = 60.0) -> int:
    """Wait until the bucket holds ``count`` captured records since ``since`` (the writer flushes every 2 s)."""
    from distracted_driver.monitor.capture import iter_capture_records
    from distracted_driver.storage import open_storage

    storage = open_storage(settings)
    deadline = time.monotonic() + timeout_s
    found = 0
    while time.monotonic() < deadline:
        found = sum(
            1 for _ in iter_capture_records(storage, settings.capture_prefix, settings.endpoint_name, since=since)
        )
        if found >= count:
            return found
        time.sleep(0.5)
    raise AssertionError(f"only {found} of {count} requests captured since {since} after {timeout_s} s")


def ground_truth(batch: Path) -> dict[str, tuple[str, str]]:
    """sha256 of each image's bytes → (subject, class), from the generator's own driver list."""
    with open(batch / DRIVER_LIST, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        sha256_bytes((batch / "imgs" / "train" / row["classname"] / row["img"]).read_bytes()): (
            row["subject"],
            row["classname"],
        )
        for row in rows
    }


def validation_frames(channels: Path) -> list[bytes]:
    """The camera frames (as the generator drew them) of the validation drivers of a converted sample's channels:
    traffic exactly like the baseline's."""
    import json

    drivers = set(json.loads((channels / "manifest.json").read_text())["splits"]["validation"]["drivers"])
    sample = channels.parent / "sample"
    with open(sample / DRIVER_LIST, newline="") as handle:
        return [
            (sample / "imgs" / "train" / row["classname"] / row["img"]).read_bytes()
            for row in csv.DictReader(handle)
            if row["subject"] in drivers
        ]


def captured_file(settings: Settings, classifier, images: list[bytes], when: datetime) -> tuple[str, bytes]:
    """(bucket key, contents) of one capture file as SageMaker writes it: each image with ``classifier``'s answer,
    a second apart from ``when``."""
    from datetime import timedelta

    from distracted_driver.serve.capture import Invocation, capture_line, file_name, hour_prefix

    lines = []
    for number, image in enumerate(images):
        answer = classifier.predict(classifier.prepare(image)[None])[0]
        body = ("[" + ", ".join(f"{p:.6f}" for p in answer) + "]").encode()
        lines.append(
            capture_line(
                Invocation(
                    settings.endpoint_name,
                    settings.variant_name,
                    f"event-{number}",
                    when + timedelta(seconds=number),
                    "image/jpeg",
                    image,
                    "application/json",
                    body,
                )
            )
        )
    key = hour_prefix(settings.capture_prefix, settings.endpoint_name, settings.variant_name, when) + file_name(when)
    return key, b"".join(lines)


def tiny_sample_thresholds(directory: Path) -> Path:
    """The shipped drift thresholds, but 20 requests are enough: the tiny sample has 20 validation images."""
    shipped = Path(__file__).resolve().parents[1] / "load_test" / "drift.toml"
    path = directory / "drift.toml"
    path.write_text(shipped.read_text().replace("min_records = 50", "min_records = 20"))
    return path
