"""The monitoring baseline a training job records in the artifact, on real channels and a real ONNX model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from distracted_driver.data.image_stats import STATISTICS, image_statistics
from distracted_driver.data.imaging import Preprocessing, decode_image
from distracted_driver.serve.inference import Classifier
from distracted_driver.train.artifact import (
    BASELINE_ARRAYS_FILE,
    BASELINE_FILE,
    ArtifactError,
    load_artifact,
)
from distracted_driver.train.baseline import load_baseline, record_baseline
from distracted_driver.train.channel import decoded_batches, read_records
from model_fixtures import features_exposed, tiny_onnx_model, write_artifact


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, tiny_channels):
    """A tiny real classifier that outputs its features too, with its baseline recorded on the tiny channels."""
    root = tmp_path_factory.mktemp("baseline")
    fixture = write_artifact(root, "monitored", features_exposed(tiny_onnx_model(seed=3)), Preprocessing(input_size=64))
    artifact = load_artifact(fixture.directory)
    summary = record_baseline(artifact, tiny_channels / "train", tiny_channels / "validation")
    return artifact, summary


def test_the_baseline_is_what_the_served_model_answers_on_validation(monitored, tiny_channels):
    artifact, summary = monitored
    records, _ = read_records(tiny_channels / "validation")
    classifier = Classifier(artifact)
    probabilities = np.concatenate([classifier.predict(batch.images) for batch in
                                    decoded_batches(records, artifact.preprocessing, 8)])
    validation = summary["validation"]
    assert validation["images"] == len(records) == 20  # two unseen drivers x ten classes
    assert validation["predicted_counts"] == {f"c{i}": int((probabilities.argmax(1) == i).sum()) for i in range(10)}
    assert validation["label_counts"] == {f"c{i}": 2 for i in range(10)}
    assert np.allclose(validation["confidences"], probabilities.max(axis=1))
    assert summary["model_file"] == artifact.served_model_path.name


def test_image_statistics_cover_training_and_validation_records(monitored, tiny_channels):
    _, summary = monitored
    records = [*read_records(tiny_channels / "train")[0], *read_records(tiny_channels / "validation")[0]]
    measured = summary["image_statistics"]
    assert measured["images"] == len(records) == 60 and measured["unreadable"] == 0
    first = image_statistics(decode_image(records[0].payload))
    assert {name: measured["values"][name][0] for name in STATISTICS} == first
    # The records are as data.convert wrote them: shorter edge 256 of the 640x480 frames.
    assert set(measured["values"]["size"]) == {341 * 256}


def test_features_are_summarised_in_whitened_principal_coordinates(monitored, tiny_channels):
    artifact, _ = monitored
    baseline = load_baseline(artifact)
    records, _ = read_records(tiny_channels / "validation")
    classifier = Classifier(artifact)
    features = np.concatenate([classifier.predict_with_features(batch.images)[1]
                               for batch in decoded_batches(records, artifact.preprocessing, 8)]).astype(np.float64)
    assert np.allclose(baseline.feature_mean, features.mean(axis=0), atol=1e-5)
    assert np.allclose(baseline.feature_covariance, np.cov(features, rowvar=False), atol=1e-4)
    components = len(features) // 4
    assert baseline.projection.shape == (8, components)
    projected = baseline.validation_projected
    assert np.allclose(projected, baseline.project(features), atol=1e-4)  # in channel order
    assert np.allclose(np.cov(projected, rowvar=False), np.eye(components), atol=1e-3)
    assert np.allclose(baseline.projection.T @ baseline.feature_covariance @ baseline.projection,
                       np.eye(components), atol=1e-3)


def test_a_model_without_a_baseline_or_a_features_output_is_named(tmp_path, make_artifact, tiny_channels):
    plain = load_artifact(make_artifact("no-monitoring").directory)
    with pytest.raises(ArtifactError, match="no-monitoring has no monitoring baseline .*retrain"):
        load_baseline(plain)
    assert not Classifier(plain).has_features
    with pytest.raises(ArtifactError, match="has no 'features' output"):
        record_baseline(plain, tiny_channels / "train", tiny_channels / "validation")


def test_a_damaged_baseline_is_refused_with_the_reason(monitored, tmp_path):
    artifact, _ = monitored
    copy = tmp_path / "copy"
    shutil.copytree(artifact.directory, copy)
    (copy / BASELINE_ARRAYS_FILE).write_bytes(b"not numpy")
    with pytest.raises(ArtifactError, match="baseline of model monitored is unreadable"):
        load_baseline(load_artifact(copy))
    (copy / BASELINE_FILE).write_text(json.dumps({"format": 99}))
    shutil.copy(artifact.directory / BASELINE_ARRAYS_FILE, copy / BASELINE_ARRAYS_FILE)
    with pytest.raises(ArtifactError, match="format 99"):
        load_baseline(load_artifact(copy))


# --- the verdict over a baseline ---------------------------------------------------------------


def _traffic_like_validation(artifact, tiny_channels, refused: int = 0):
    """Traffic whose every figure is validation's own (as if validation were sent again), plus refusals."""
    from distracted_driver.monitor.traffic import Traffic

    baseline = load_baseline(artifact)
    records, _ = read_records(tiny_channels / "validation")
    classifier = Classifier(artifact)
    outputs = [classifier.predict_with_features(batch.images) for batch in
               decoded_batches(records, artifact.preprocessing, 8)]
    return baseline, Traffic(
        requests=len(records) + refused, refused=[(f"bad-{i}", "the image fails the check") for i in range(refused)],
        event_ids=[record.source for record in records],
        probabilities=np.concatenate([p for p, _ in outputs]).astype(np.float64),
        statistics={name: baseline.statistic(name)[-len(records):] for name in STATISTICS},
        features=np.concatenate([f for _, f in outputs]).astype(np.float64))


def test_the_verdict_needs_enough_answers_except_for_refusals(monitored, tiny_channels):
    from distracted_driver.monitor.drift import DriftThresholds
    from distracted_driver.monitor.report import judge

    artifact, _ = monitored
    baseline, traffic = _traffic_like_validation(artifact, tiny_channels)
    judged = judge(traffic, baseline, DriftThresholds(min_records=10))
    assert judged["verdict"] == "no-drift" and judged["drifted_checks"] == []
    assert judged["checks"]["predicted_classes"]["psi"] == pytest.approx(0.0, abs=1e-9)
    assert judged["checks"]["features"]["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert judge(traffic, baseline, DriftThresholds())["verdict"] == "too-few"  # 20 answers < 50
    # Refusals are judged on the requests: 20 answers and 40 refusals of 60 requests is drift.
    baseline, refusing = _traffic_like_validation(artifact, tiny_channels, refused=40)
    judged = judge(refusing, baseline, DriftThresholds())
    assert judged["verdict"] == "drift" and judged["drifted_checks"] == ["refused"]
    assert judged["checks"]["features"]["drifted"] is None  # 20 answers: not judged
