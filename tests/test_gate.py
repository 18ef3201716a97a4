"""The quality gate scores every candidate itself, with its served model, on the bucket's validation set.

Models are real ONNX files: nearest-prototype classifiers of the validation images (right on all
of them), and the same networks broken as real exports break: classes rotated by one, the softmax
left out. Each carries a ``metrics.json`` that lies, which the gate must ignore.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from model_fixtures import (
    IMAGENET_NORMALISATION,
    derived_artifact,
    memorizing_artifact,
    rotated_classes,
    softmax_removed,
)
from train_support import bucket_with_channels

from distracted_driver.data.channel import read_records
from distracted_driver.data.layout import CLASSES
from distracted_driver.hosting.local import LocalHosting
from distracted_driver.hosting.release import release
from distracted_driver.hosting.smoke import answer_problem
from distracted_driver.model.artifact import NotProbabilities, load_artifact, probability_problem
from distracted_driver.model.evaluate import evaluate_artifact, predict_channel
from distracted_driver.model.registry import Registry
from distracted_driver.storage import open_storage
from distracted_driver.train.gate import (
    GateError,
    NotCleared,
    SmokeSet,
    clearance,
    judge,
    smoke_set_for,
)

LIES = {"log_loss": 0.001, "accuracy": 1.0}  # what a bad candidate's metrics.json claims


@pytest.fixture
def bucket(tmp_path, tiny_channels):
    """A local bucket holding the tiny channels, and its registry."""
    settings = bucket_with_channels(tmp_path / "root", tiny_channels)
    return Registry(open_storage(settings), settings)


def _publish(registry, artifact):
    artifact.publish(registry.storage, registry.settings)
    return artifact.version


def _good(tmp_path, tiny_channels, version="good", sharpness=16.0, metrics=None):
    return memorizing_artifact(tmp_path / "models", version, tiny_channels / "validation", sharpness, metrics)


# --- outputs must be probabilities ------------------------------------------------------------------


def test_probability_rows_are_non_negative_and_sum_to_one():
    uniform = np.full((2, 10), 0.1)
    assert probability_problem(uniform) is None
    assert "outside [0, 1]" in probability_problem(uniform - np.eye(2, 10) * 0.2)
    assert "do not sum to 1" in probability_problem(uniform * 1.1)
    assert "NaN" in probability_problem(np.full((1, 10), np.nan))
    assert "shape (2, 5)" in probability_problem(np.full((2, 5), 0.2))
    # The runtime's pre-traffic check of a green instance uses the same contract.
    assert answer_problem(json.dumps([0.1] * 10).encode()) is None
    assert "outside [0, 1]" in answer_problem(json.dumps([-1.0, 2.0] + [0.0] * 8).encode())


def test_evaluation_refuses_scores_that_are_not_probabilities(tmp_path, tiny_channels):
    broken = derived_artifact(_good(tmp_path, tiny_channels), tmp_path / "models", "no-softmax", model=softmax_removed)
    with pytest.raises(NotProbabilities, match=r"model.onnx are not probabilities: probabilities outside \[0, 1\]"):
        evaluate_artifact(load_artifact(broken.directory), tiny_channels / "validation", progress=False)


# --- the gate scores, it never reads a score ------------------------------------------------------


def test_a_model_with_rotated_labels_is_rejected_whatever_its_metrics_say(bucket, tmp_path, tiny_channels):
    rotated = derived_artifact(
        _good(tmp_path, tiny_channels), tmp_path / "models", "rotated", model=rotated_classes, metrics=LIES
    )
    _publish(bucket, rotated)
    assert (
        bucket.get("rotated")["metrics"]["log_loss"] == LIES["log_loss"]
    )  # the registry keeps the claim as information

    decision = judge(bucket, "rotated")
    assert not decision.passed
    assert decision.candidate_accuracy == 0.0 and decision.candidate_log_loss > 5.0
    assert f"scores validation log loss {decision.candidate_log_loss:.4f} (accuracy 0.000)" in decision.reason
    assert f"not below {0.5 * math.log(10):.4f}" in decision.reason
    record = bucket.gate_record("rotated", decision.data_manifest_sha256)
    assert record["passed"] is False and record["artifact_sha256"] == bucket.get("rotated")["artifact_sha256"]


def test_a_model_without_its_softmax_is_rejected_as_not_probabilities(bucket, tmp_path, tiny_channels):
    _publish(
        bucket,
        derived_artifact(
            _good(tmp_path, tiny_channels), tmp_path / "models", "no-softmax", model=softmax_removed, metrics=LIES
        ),
    )
    decision = judge(bucket, "no-softmax")
    assert not decision.passed and decision.candidate_log_loss is None
    assert "no-softmax is rejected: the outputs of model.onnx are not probabilities" in decision.reason
    assert decision.smoke_images == 0


def test_a_good_model_passes_on_its_own_score_and_the_gate_keeps_real_validation_images(
    bucket, tmp_path, tiny_channels
):
    good = _good(tmp_path, tiny_channels, metrics={"log_loss": 9.0, "accuracy": 0.0})  # modest about itself
    _publish(bucket, good)
    decision = judge(bucket, "good", smoke_per_class=1)
    assert decision.passed, decision.reason
    expected = evaluate_artifact(load_artifact(good.directory), tiny_channels / "validation", progress=False)
    assert decision.candidate_log_loss == pytest.approx(expected["log_loss"], abs=1e-6)
    assert decision.candidate_accuracy == 1.0 and decision.examples == expected["examples"] == 20
    assert decision.data_manifest_sha256 == bucket.data_manifest_sha256()

    smoke = smoke_set_for(bucket, "good")
    assert len(smoke) == decision.smoke_images == len(CLASSES)
    assert sorted(smoke.labels) == list(range(len(CLASSES)))  # one image per class
    records = {r.source: r for r in read_records(tiny_channels / "validation")[0]}
    offline = predict_channel(load_artifact(good.directory), tiny_channels / "validation", progress=False)
    rows = {r.source: row for r, row in zip(offline.records, offline.probabilities)}
    for image, label, probabilities, source in zip(smoke.images, smoke.labels, smoke.probabilities, smoke.sources):
        assert image == records[source].payload and image.startswith(b"\xff\xd8")  # the channel's JPEG bytes
        assert label == records[source].label
        np.testing.assert_allclose(probabilities, rows[source], atol=1e-6)
    assert smoke.accuracy == 1.0 and smoke.artifact_sha256 == decision.artifact_sha256
    assert SmokeSet.from_dict(json.loads(json.dumps(smoke.to_dict()))) == smoke


def test_the_candidate_is_compared_with_the_live_model_scored_on_the_same_images(bucket, tmp_path, tiny_channels):
    bucket.set_live(_publish(bucket, _good(tmp_path, tiny_channels, "incumbent", sharpness=16, metrics=LIES)))
    _publish(
        bucket, _good(tmp_path, tiny_channels, "sharper", sharpness=32, metrics={"log_loss": 5.0, "accuracy": 0.1})
    )
    _publish(bucket, _good(tmp_path, tiny_channels, "softer", sharpness=8, metrics=LIES))

    better = judge(bucket, "sharper")
    assert better.passed and better.live == "incumbent"
    assert better.candidate_log_loss < better.live_log_loss < 0.5  # both scored here: neither claim was read
    assert f"live incumbent scores {better.live_log_loss:.4f} (accuracy 1.000) on the same images" in better.reason
    cached = bucket.get("incumbent")["evaluations"][better.data_manifest_sha256]
    assert cached["artifact_sha256"] == bucket.get("incumbent")["artifact_sha256"]
    assert cached["log_loss"] == better.live_log_loss

    worse = judge(bucket, "softer")
    assert not worse.passed and worse.candidate_log_loss > worse.live_log_loss + 0.05
    assert "worse than the tolerance of 0.05" in worse.reason
    assert judge(bucket, "softer", tolerance=1.0).passed


def test_the_gate_needs_the_validation_set_the_manifest_names(tmp_path, tiny_channels):
    from distracted_driver.config import Settings

    settings = Settings(root=tmp_path / "empty")
    empty = Registry(open_storage(settings), settings)
    _publish(empty, _good(tmp_path, tiny_channels))
    with pytest.raises(GateError, match="no data manifest"):
        judge(empty, "good")

    tampered = bucket_with_channels(tmp_path / "tampered", tiny_channels)
    registry = Registry(open_storage(tampered), tampered)
    _publish(registry, _good(tmp_path, tiny_channels))
    rec = next(k for k in registry.storage.list_keys("data/validation/") if k.endswith(".rec"))
    registry.storage.put_bytes(rec, registry.storage.get_bytes(rec)[:-100])
    with pytest.raises(GateError, match="does not match the data manifest"):
        judge(registry, "good")


# --- what a deploy needs -----------------------------------------------------------------------------


def test_clearance_needs_a_pass_for_this_validation_set_this_artifact_and_this_live_model(
    bucket, tmp_path, tiny_channels
):
    good = _good(tmp_path, tiny_channels)
    _publish(bucket, good)
    with pytest.raises(NotCleared, match="has no gate record for the current validation set"):
        clearance(bucket, "good")
    judge(bucket, "good")
    assert clearance(bucket, "good")["passed"]

    _publish(bucket, derived_artifact(good, tmp_path / "models", "rotated", model=rotated_classes, metrics=LIES))
    judge(bucket, "rotated")
    with pytest.raises(NotCleared, match="the gate rejected rotated on the current validation set"):
        clearance(bucket, "rotated")

    # The bucket's artifact replaced after the gate scored it: the record no longer vouches for it.
    skewed = derived_artifact(
        good,
        tmp_path / "skewed",
        "good",
        preprocessing=dataclasses.replace(load_artifact(good.directory).preprocessing, **IMAGENET_NORMALISATION),
    )
    bucket.storage.put_file(skewed.tar_path, bucket.artifact_key("good"))
    with pytest.raises(NotCleared, match="is not the one the gate scored"):
        clearance(bucket, "good")
    bucket.storage.put_file(good.tar_path, bucket.artifact_key("good"))
    assert clearance(bucket, "good")["passed"]

    # Another model went live since: the comparison is stale.
    _publish(bucket, _good(tmp_path, tiny_channels, "other", sharpness=20))
    bucket.set_live("other")
    with pytest.raises(NotCleared, match="but other is live now"):
        clearance(bucket, "good")
    assert clearance(bucket, "other")["passed"]  # the live model itself needs no gate

    # New validation data: the old record is for another validation set.
    manifest = json.loads(bucket.storage.get_bytes("data/manifest.json"))
    manifest["note"] = "a new upload"
    bucket.storage.put_bytes("data/manifest.json", json.dumps(manifest).encode())
    bucket.set_live("rotated")
    with pytest.raises(NotCleared, match="has no gate record for the current validation set"):
        clearance(bucket, "good")


def test_release_refuses_an_ungated_model_before_touching_the_endpoint(bucket, tmp_path, tiny_channels):
    _publish(bucket, _good(tmp_path, tiny_channels))
    hosting = LocalHosting(bucket.settings, storage=bucket.storage)
    with pytest.raises(NotCleared, match="judge it with `inv model.gate --candidate good`"):
        release(bucket.settings, hosting, "good", storage=bucket.storage)
    status = hosting.status()
    assert status.runtime_running is False and status.status == "absent"
    assert "forced_deploys" not in bucket.get("good")
