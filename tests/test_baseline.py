"""The monitoring baseline a training job records in the artifact, on real channels and a real ONNX model."""

from __future__ import annotations

import json
import shutil
from datetime import UTC

import numpy as np
import onnx
import pytest
from model_fixtures import features_exposed, quantized_int8, tiny_onnx_model, write_artifact
from monitor_support import captured_file, tiny_sample_thresholds, validation_frames

from distracted_driver.data.channel import decoded_batches, read_records
from distracted_driver.data.image_stats import STATISTICS, image_statistics
from distracted_driver.data.imaging import Preprocessing, decode_image
from distracted_driver.fsutil import write_json_atomic
from distracted_driver.model.artifact import (
    BASELINE_ARRAYS_FILE,
    BASELINE_FILE,
    INT8_MODEL_FILE,
    MODEL_FILES,
    SERVING_FILE,
    ArtifactError,
    load_artifact,
)
from distracted_driver.model.inference import Classifier
from distracted_driver.model.precision import FP32, INT8
from distracted_driver.train.baseline import load_baseline, record_baseline

pytestmark = pytest.mark.slow  # real int8 quantization and drift reports on small models


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
    probabilities = np.concatenate(
        [classifier.predict(batch.images) for batch in decoded_batches(records, artifact.preprocessing, 8)]
    )
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
    features = np.concatenate(
        [
            classifier.predict_with_features(batch.images)[1]
            for batch in decoded_batches(records, artifact.preprocessing, 8)
        ]
    ).astype(np.float64)
    assert np.allclose(baseline.feature_mean, features.mean(axis=0), atol=1e-5)
    assert np.allclose(baseline.feature_covariance, np.cov(features, rowvar=False), atol=1e-4)
    components = len(features) // 4
    assert baseline.projection.shape == (8, components)
    projected = baseline.validation_projected
    assert np.allclose(projected, baseline.project(features), atol=1e-4)  # in channel order
    assert np.allclose(np.cov(projected, rowvar=False), np.eye(components), atol=1e-3)
    assert np.allclose(
        baseline.projection.T @ baseline.feature_covariance @ baseline.projection, np.eye(components), atol=1e-3
    )


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
    outputs = [
        classifier.predict_with_features(batch.images) for batch in decoded_batches(records, artifact.preprocessing, 8)
    ]
    return baseline, Traffic(
        requests=len(records) + refused,
        refused=[(f"bad-{i}", "the image fails the check") for i in range(refused)],
        event_ids=[record.source for record in records],
        probabilities=np.concatenate([p for p, _ in outputs]).astype(np.float64),
        statistics={name: baseline.statistic(name)[-len(records) :] for name in STATISTICS},
        features=np.concatenate([f for _, f in outputs]).astype(np.float64),
    )


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


# --- live features are measured with the very model file the baseline was recorded on -----------
#
# An artifact may serve int8 (train/precision.py): its features are not its fp32 twin's. The report
# must measure captured traffic with the file the baseline names, or the feature distance measures
# quantization instead of traffic.


@pytest.fixture(scope="module")
def serving_int8(tmp_path_factory, tiny_channels):
    """A tiny classifier as the training job leaves one: fp32 with features, its real int8 quantization
    (calibrated on training images), and ``serving.json`` serving int8."""
    fp32 = features_exposed(tiny_onnx_model(seed=4))
    preprocessing = Preprocessing(input_size=64)
    records, _ = read_records(tiny_channels / "train")
    calibration = np.concatenate([batch.images for batch in decoded_batches(records, preprocessing, 8)])
    fixture = write_artifact(tmp_path_factory.mktemp("int8-served"), "int8-served", fp32, preprocessing)
    onnx.save(quantized_int8(fp32, calibration), fixture.directory / INT8_MODEL_FILE)
    write_json_atomic(fixture.directory / SERVING_FILE, {"precision": INT8})
    return load_artifact(fixture.directory)


def _copy(artifact, directory):
    shutil.copytree(artifact.directory, directory)
    return load_artifact(directory)


def test_the_int8_model_keeps_its_own_features_output(serving_int8, tiny_channels):
    records, _ = read_records(tiny_channels / "validation")
    images = next(iter(decoded_batches(records, serving_int8.preprocessing, 20))).images
    int8, fp32 = Classifier(serving_int8), Classifier(serving_int8.serving_as(FP32))
    assert int8.has_features and fp32.has_features
    int8_features, fp32_features = int8.predict_with_features(images)[1], fp32.predict_with_features(images)[1]
    assert int8_features.shape == fp32_features.shape == (20, 8)
    assert np.abs(int8_features - fp32_features).max() > 1e-4  # a mismatch of files would show


@pytest.mark.parametrize("recorded_on", [INT8, FP32])
def test_the_report_measures_features_with_the_file_the_baseline_was_recorded_on(
    serving_int8, tiny_channels, tmp_path, recorded_on
):
    """The int8 model is served and answers; the baseline was recorded on int8 (as the training job does) or on
    fp32 (an artifact baselined before its serving.json changed). Validation's own frames sent again give a
    feature distance of zero either way: the features were measured with the baseline's file."""
    from datetime import datetime, timedelta

    from distracted_driver.config import Settings
    from distracted_driver.model.artifact import pack_artifact
    from distracted_driver.model.registry import Registry
    from distracted_driver.monitor.report import drift_report
    from distracted_driver.storage import open_storage

    artifact = _copy(serving_int8, tmp_path / "model")
    record_baseline(artifact.serving_as(recorded_on), tiny_channels / "train", tiny_channels / "validation")
    settings = Settings(root=tmp_path / "root")
    storage = open_storage(settings)
    registry = Registry(storage, settings)
    tar_path = pack_artifact(artifact.directory, tmp_path / "model.tar.gz")
    storage.put_file(tar_path, registry.artifact_key(artifact.version))
    registry.register(artifact.version, artifact)
    registry.set_live(artifact.version)
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    storage.put_bytes(*captured_file(settings, Classifier(artifact), validation_frames(tiny_channels), when))

    report = drift_report(
        settings,
        since=when - timedelta(minutes=1),
        out_root=tmp_path / "reports",
        thresholds=tiny_sample_thresholds(tmp_path),
    ).report
    assert report["model"]["served_file"] == INT8_MODEL_FILE
    assert report["model"]["model_file"] == MODEL_FILES[recorded_on]
    assert report["records"]["answered"] == 20
    assert report["checks"]["features"]["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert report["verdict"] == "no-drift", report["drifted_checks"]


def test_a_baseline_whose_model_file_changed_or_went_is_refused(serving_int8, tiny_channels, tmp_path):
    artifact = _copy(serving_int8, tmp_path / "model")
    record_baseline(artifact, tiny_channels / "train", tiny_channels / "validation")
    baseline = load_baseline(artifact)
    assert baseline.summary["model_file"] == INT8_MODEL_FILE
    assert baseline.measured_with(artifact).served_model_path == artifact.served_model_path

    requantized = _copy(artifact, tmp_path / "requantized")
    onnx.save(
        quantized_int8(features_exposed(tiny_onnx_model(seed=4)), np.zeros((8, 3, 64, 64), np.float32)),
        requantized.directory / INT8_MODEL_FILE,
    )
    with pytest.raises(ArtifactError, match="recorded on another model.int8.onnx .*sha256 differs"):
        baseline.measured_with(load_artifact(requantized.directory))

    fp32_only = _copy(artifact, tmp_path / "fp32-only")
    (fp32_only.directory / INT8_MODEL_FILE).unlink()
    (fp32_only.directory / SERVING_FILE).unlink()
    with pytest.raises(ArtifactError, match="recorded on 'model.int8.onnx', which the artifact does not hold"):
        baseline.measured_with(load_artifact(fp32_only.directory))
