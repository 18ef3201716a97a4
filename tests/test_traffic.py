"""Measuring captured requests as the baseline was measured: answers, refusals, statistics, features."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from model_fixtures import features_exposed, tiny_onnx_model, write_artifact

from distracted_driver.data.convert import ConvertOptions, transform
from distracted_driver.data.image_stats import image_statistics
from distracted_driver.data.imaging import Preprocessing, decode_image
from distracted_driver.model.artifact import load_artifact
from distracted_driver.model.inference import Classifier
from distracted_driver.monitor.capture import CaptureRecord
from distracted_driver.monitor.traffic import answer_probabilities, observe

UNIFORM = [0.1] * 10


def _record(number: int, body: bytes | None, output) -> CaptureRecord:
    text = json.dumps(output) if output is not None else "<html>bad gateway</html>"
    return CaptureRecord(
        event_id=f"event-{number}",
        inference_time=datetime(2026, 11, 30, tzinfo=UTC),
        endpoint="distracted-driver",
        variant="AllTraffic",
        input_content_type="image/jpeg",
        input_bytes=body,
        output_content_type="application/json",
        output_text=text,
        output=output,
    )


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    fixture = write_artifact(
        tmp_path_factory.mktemp("traffic"),
        "traffic-model",
        features_exposed(tiny_onnx_model(2)),
        Preprocessing(input_size=64),
    )
    return Classifier(load_artifact(fixture.directory))


def test_the_answers_the_endpoint_gives_are_read_and_errors_are_not():
    assert answer_probabilities(UNIFORM).tolist() == UNIFORM
    verbose = {"class": "c0", "probabilities": UNIFORM, "model_version": "dd-1"}
    assert answer_probabilities(verbose).tolist() == UNIFORM
    assert answer_probabilities({"prediction": UNIFORM}).tolist() == UNIFORM
    assert answer_probabilities({"probabilities": {f"c{i}": 0.1 for i in range(10)}}).tolist() == UNIFORM
    for error in (
        {"error": "ImageError", "message": "not a JPEG"},
        None,
        [0.5] * 10,
        [0.1] * 9,
        ["a"] * 10,
        [float("nan")] * 10,
    ):
        assert answer_probabilities(error) is None, error


def test_refusals_are_counted_and_the_rest_measured_as_records_are(classifier, tiny_channels):
    sample = tiny_channels.parent / "sample" / "imgs" / "test"
    images = [path.read_bytes() for path in sorted(sample.glob("*.jpg"))]
    records = [_record(i, image, {"probabilities": UNIFORM, "model_version": "dd-1"}) for i, image in enumerate(images)]
    records += [
        _record(90, b"not a jpeg", {"error": "ImageError", "message": "not an image"}),
        _record(91, images[0][: len(images[0]) // 2], UNIFORM),  # answered, yet the check refuses it
        _record(92, images[0], None),  # a gateway's HTML error page: no answer
        _record(93, None, UNIFORM),
    ]  # input not captured
    traffic = observe(records, classifier, ConvertOptions())
    assert traffic.requests == len(images) + 4 and traffic.answered == len(images)
    reasons = dict(traffic.refused)
    assert set(reasons) == {"event-90", "event-91", "event-92", "event-93"}
    assert reasons["event-90"].startswith("the endpoint answered") and "not an image" in reasons["event-90"]
    assert reasons["event-91"].startswith("the image fails the check")
    assert reasons["event-93"] == "no image in the captured request"
    assert traffic.model_versions == {"dd-1": len(images)}
    # Statistics of the frame brought to the channel's form: the same numbers as its training record would give.
    as_record = image_statistics(decode_image(transform(images[0], ConvertOptions())))
    assert {name: values[0] for name, values in traffic.statistics.items()} == as_record
    assert as_record["size"] == 341 * 256
    # Features of the live model on that same record-form image, prepared by its preprocess.json.
    record_form = transform(images[0], ConvertOptions())
    expected = classifier.predict_with_features(classifier.prepare(record_form)[None])[1][0]
    assert np.allclose(traffic.features[0], expected, atol=1e-6)
    assert traffic.predicted_counts.sum() == len(images)
