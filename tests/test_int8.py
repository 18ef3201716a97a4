"""int8 serving is chosen on scores, never assumed: export, the training job's choice, the gate's check, serving.

Every model here is real: EfficientNet-Lite0 trained by the real training job on the tiny channels,
exported to fp32 and quantized to int8 by ONNX Runtime, and scored on the real validation channel.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest
from train_support import TINY_HYPERPARAMETERS, bucket_with_channels
from waiting import wait_until

from distracted_driver.config import Settings, Tolerance, ToleranceError
from distracted_driver.model.artifact import (
    INT8_MODEL_FILE,
    MODEL_FILE,
    SERVING_FILE,
    ArtifactError,
    load_artifact,
    pack_artifact,
)
from distracted_driver.model.evaluate import evaluate_precisions, precision_summary
from distracted_driver.model.inference import Classifier
from distracted_driver.model.precision import FP32, INT8, choose, choose_from_scores
from distracted_driver.model.registry import Registry, version_rows
from distracted_driver.storage import open_storage
from distracted_driver.train.export import FLOAT_NODE_PREFIXES, fold_pads_into_convs
from distracted_driver.train.gate import judge, smoke_set_for

# With no live model the tiny 2-epoch model (log loss ~1.7) must only beat a uniform guess (ln 10).
BASELINE = 1.0


# --- the rule ---------------------------------------------------------------------------------------


def test_the_tolerance_is_the_larger_of_an_absolute_and_a_relative_term():
    default = Tolerance.parse(None)
    assert (default.absolute, default.relative, str(default)) == (0.01, 0.03, "0.01,3%")
    assert default.limit(0.1) == pytest.approx(0.11)  # 3 % of 0.1 is 0.003: the absolute 0.01 counts
    assert default.limit(1.0) == pytest.approx(1.03)  # 3 % of 1.0 is 0.03: the relative term counts
    assert Tolerance.parse("0").limit(0.5) == 0.5
    assert Tolerance.parse("-1").limit(0.5) == -0.5
    assert Tolerance.parse(" 5% ").limit(2.0) == pytest.approx(2.1)
    for bad in ("", "abc", "1,2", "1%,2%", "nan", "0.01;3%"):
        with pytest.raises(ToleranceError):
            Tolerance.parse(bad)
    with pytest.raises(ValueError, match="DD_INT8_TOLERANCE"):
        Settings(int8_tolerance="three percent")


def test_int8_is_served_only_within_the_limit():
    tolerance = Tolerance.parse("0.01,3%")
    assert choose(0.10, 0.11, tolerance).precision == INT8  # exactly at the limit
    assert choose(0.10, 0.1101, tolerance).precision == FP32
    assert choose(0.10, None, tolerance, "quantization failed: x").reason == "fp32: quantization failed: x"
    assert (
        choose_from_scores({FP32: {"log_loss": 0.1}, INT8: {"problem": "not probabilities"}}, tolerance).precision
        == FP32
    )


# --- the export --------------------------------------------------------------------------------------


def test_the_explicit_pad_of_each_stride_2_convolution_is_folded_into_it():
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "pads")
    graph = helper.make_graph(
        [
            helper.make_node("Pad", ["x", "pads"], ["padded"]),
            helper.make_node("Conv", ["padded", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weights, pads],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    import onnxruntime as ort

    x = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert fold_pads_into_convs(model) == 1
    assert [node.op_type for node in model.graph.node] == ["Conv"]
    assert helper.get_attribute_value(model.graph.node[0].attribute[-1]) == [0, 0, 1, 1]
    np.testing.assert_array_equal(ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0], before)


@pytest.mark.slow
def test_the_training_job_exports_a_real_int8_model_and_serves_what_its_scores_choose(trained_job, tmp_path):
    settings, job = trained_job
    artifact = Registry(open_storage(settings), settings).fetch_artifact(job, tmp_path)
    assert artifact.precisions == [FP32, INT8]

    fp32, int8 = onnx.load(artifact.directory / MODEL_FILE), onnx.load(artifact.directory / INT8_MODEL_FILE)
    assert "Pad" not in {node.op_type for node in fp32.graph.node}
    read = {name for node in fp32.graph.node for name in node.input}
    assert all(tensor.name in read for tensor in fp32.graph.initializer)  # nothing for ONNX Runtime to warn about
    quantized = [node for node in int8.graph.node if node.op_type == "QuantizeLinear"]
    assert len(quantized) > 40  # every convolution's input past the first block
    int8_weights = [t for t in int8.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 40
    convs = {node.name: node for node in int8.graph.node if node.op_type == "Conv"}
    kept = [name for name in convs if name.startswith(FLOAT_NODE_PREFIXES)]
    assert kept and all(not _reads_dequantized_weights(int8, convs[name]) for name in kept)
    assert all(_reads_dequantized_weights(int8, node) for name, node in convs.items() if name not in kept)

    serving = json.loads((artifact.directory / SERVING_FILE).read_text())
    assert serving["chosen_by"] == "training job" and serving["tolerance"] == "0.01,3%"
    assert serving["quantization"]["calibration_images"] == 40  # every image of the tiny train channel
    # The scores it chose by are what its own models score on the validation channel, and the choice is the rule's.
    validation = settings.work_dir / "jobs" / job / "input" / "data" / "validation"
    again = precision_summary(evaluate_precisions(artifact, validation, progress=False))
    # Quantization keeps the monitoring output: the int8 model's own pooled features, like fp32's but not the
    # same (each row about 17 % off here): the drift report measures live features with the baseline's file.
    from distracted_driver.data.channel import decoded_batches, read_records

    images = next(iter(decoded_batches(read_records(validation)[0], artifact.preprocessing, 20))).images
    int8_classifier, fp32_classifier = Classifier(artifact.serving_as(INT8)), Classifier(artifact.serving_as(FP32))
    assert int8_classifier.has_features
    int8_features = int8_classifier.predict_with_features(images)[1]
    fp32_features = fp32_classifier.predict_with_features(images)[1]
    assert int8_features.shape == fp32_features.shape == (20, 1280)
    assert np.corrcoef(int8_features.ravel(), fp32_features.ravel())[0, 1] > 0.95
    assert np.abs(int8_features - fp32_features).max() > 1e-3
    for precision in (FP32, INT8):
        assert serving["scores"][precision]["log_loss"] == pytest.approx(again[precision]["log_loss"], abs=1e-6)
    assert serving["precision"] == choose_from_scores(again, Tolerance.parse("0.01,3%")).precision
    assert artifact.served_precision == serving["precision"]
    assert artifact.metrics["log_loss"] == serving["scores"][serving["precision"]]["log_loss"]
    assert artifact.metrics["by_precision"] == serving["scores"]


@pytest.fixture(scope="module")
def fp32_job(tmp_path_factory, tiny_channels):
    """A real training job run with DD_INT8_TOLERANCE=-1: its int8 model can never be within the limit."""
    from distracted_driver.train.runner import run_local_job

    settings = dataclasses.replace(
        bucket_with_channels(tmp_path_factory.mktemp("fp32-job"), tiny_channels), int8_tolerance="-1"
    )
    return settings, run_local_job(settings, TINY_HYPERPARAMETERS, stream=None)


@pytest.mark.slow
def test_a_negative_tolerance_makes_the_training_job_and_the_gate_serve_fp32(fp32_job, tmp_path):
    settings, job = fp32_job
    registry = Registry(open_storage(settings), settings)
    artifact = registry.fetch_artifact(job, tmp_path / "fetched")
    serving = artifact.serving
    assert artifact.precisions == [FP32, INT8]  # quantized and scored all the same
    assert serving["tolerance"] == "-1" and serving["precision"] == FP32
    fp32, int8 = serving["scores"][FP32]["log_loss"], serving["scores"][INT8]["log_loss"]
    assert serving["limit"] == pytest.approx(fp32 - 1) and int8 > serving["limit"]
    assert "above the limit" in serving["reason"]
    assert artifact.served_model_path.name == MODEL_FILE
    assert registry.get(job)["serving"]["precision"] == FP32

    decision = judge(registry, job, baseline_fraction=BASELINE)
    assert decision.passed, decision.reason
    assert (decision.precision, decision.fp32_log_loss) == (FP32, pytest.approx(fp32, abs=1e-6))
    assert decision.int8_log_loss == pytest.approx(int8, abs=1e-6)
    record = registry.gate_record(job, decision.data_manifest_sha256)
    assert record["precision"]["chosen"] == record["precision"]["served"] == FP32
    # The smoke set holds the fp32 model's answers, which the endpoint will be held to.
    smoke = smoke_set_for(registry, job)
    fp32_classifier = Classifier(artifact)
    image = smoke.images[0]
    assert fp32_classifier.predict(fp32_classifier.prepare(image)[None])[0] == pytest.approx(
        smoke.probabilities[0], abs=1e-6
    )
    rows = version_rows(registry.list_versions(), None, decision.data_manifest_sha256)
    assert job in rows[1] and " fp32 " in rows[1] and "gate" in rows[1] and f"{int8:.4f}" in rows[1]


def _claiming(artifact, out_dir, precision: str):
    """The same two real models, with serving.json claiming ``precision`` (as a looser tolerance would have chosen)."""
    directory = out_dir / "model"
    shutil.copytree(artifact.directory, directory)
    serving = {**artifact.serving, "precision": precision, "tolerance": "1"}
    (directory / SERVING_FILE).write_text(json.dumps(serving))
    return load_artifact(directory), pack_artifact(directory, out_dir / "model.tar.gz")


@pytest.mark.slow
def test_the_gate_rejects_int8_that_its_own_scores_put_outside_the_tolerance(fp32_job, tmp_path, tiny_channels):
    settings, job = fp32_job
    source = Registry(open_storage(settings), settings).fetch_artifact(job, tmp_path / "fetched")
    claimed, tar = _claiming(source, tmp_path / "claims-int8", INT8)
    bucket = Registry(open_storage(root := bucket_with_channels(tmp_path / "bucket", tiny_channels)), root)
    bucket.storage.put_file(tar, bucket.artifact_key("claims-int8"))
    bucket.register("claims-int8", claimed)

    rejected = judge(bucket, "claims-int8", baseline_fraction=BASELINE, int8_tolerance="-1")
    assert not rejected.passed and rejected.precision == INT8
    assert "serves int8, but on the gate's own scores the precision rule chooses fp32" in rejected.reason
    assert "tolerance 1, the gate's is -1" in rejected.reason

    # With a tolerance it is within, the same artifact passes, and its smoke set is the int8 model's answers.
    passed = judge(bucket, "claims-int8", baseline_fraction=BASELINE, int8_tolerance="1")
    assert passed.passed and passed.precision == INT8, passed.reason
    smoke = smoke_set_for(bucket, "claims-int8")
    int8_classifier, fp32_classifier = Classifier(claimed), Classifier(claimed.serving_as(FP32))
    inputs = np.stack([int8_classifier.prepare(image) for image in smoke.images])
    np.testing.assert_allclose(int8_classifier.predict(inputs), np.asarray(smoke.probabilities), atol=1e-6)
    assert np.abs(fp32_classifier.predict(inputs) - np.asarray(smoke.probabilities)).max() > 1e-4  # truly another model


@pytest.mark.slow
def test_the_sagemaker_entry_point_and_batch_prediction_run_the_served_file(fp32_job, tmp_path, tiny_channels):
    """What serving.json names is what a model server (started as SageMaker starts it) and batch prediction run."""
    import csv
    import os
    import re
    import signal
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from distracted_driver.serve.batch_predict import predict_directory

    settings, job = fp32_job
    source = Registry(open_storage(settings), settings).fetch_artifact(job, tmp_path / "fetched")
    claimed, tar = _claiming(source, tmp_path / "int8", INT8)
    images = sorted((tiny_channels.parent / "sample" / "imgs" / "test").glob("*.jpg"))
    int8_classifier, fp32_classifier = Classifier(claimed), Classifier(claimed.serving_as(FP32))
    inputs = np.stack([int8_classifier.prepare(path.read_bytes()) for path in images])
    expected, other = int8_classifier.predict(inputs), fp32_classifier.predict(inputs)
    assert np.abs(expected - other).max() > 1e-4

    root = Path(__file__).resolve().parents[1]
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "SM_MODEL_DIR": str(claimed.directory), "SAGEMAKER_BIND_TO_PORT": "0"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(root / "scripts" / "serve.py"), "serve", "--host", "127.0.0.1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
        )
    try:
        wait_until(
            lambda: "ready after" in log_path.read_text(),
            120,
            what="the server to be ready",
            process=proc,
            details=log_path.read_text,
        )
        url = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log_path.read_text()).group(1)
        ping = json.loads(urllib.request.urlopen(url + "/ping", timeout=10).read())
        assert (ping["precision"], ping["model_file"]) == (INT8, INT8_MODEL_FILE)
        assert "serving int8 (model.int8.onnx)" in log_path.read_text()
        request = urllib.request.Request(
            url + "/invocations", data=images[0].read_bytes(), headers={"Content-Type": "image/jpeg"}
        )
        served = json.loads(urllib.request.urlopen(request, timeout=30).read())
        np.testing.assert_allclose(served, expected[0], atol=1e-6)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

    bucket = Registry(
        open_storage(root_settings := bucket_with_channels(tmp_path / "bucket", tiny_channels)), root_settings
    )
    bucket.storage.put_file(tar, bucket.artifact_key("int8-served"))
    bucket.register("int8-served", claimed)
    result = predict_directory(
        root_settings, "int8-served", images[0].parent, tmp_path / "submission.csv", progress=False
    )
    with open(tmp_path / "submission.csv") as handle:
        rows = {row[0]: [float(v) for v in row[1:]] for row in list(csv.reader(handle))[1:]}
    assert (result.predicted, result.failed) == (len(images), [])
    assert sorted(rows) == [path.name for path in images]
    np.testing.assert_allclose([rows[path.name] for path in images], expected, atol=1e-5)


def test_an_artifact_cannot_serve_a_model_it_lacks(make_artifact, tmp_path):
    source = make_artifact("fp32-only")
    assert load_artifact(source.directory).precisions == [FP32]
    directory = tmp_path / "model"
    shutil.copytree(source.directory, directory)
    (directory / SERVING_FILE).write_text(json.dumps({"precision": INT8}))
    with pytest.raises(ArtifactError, match="serves int8 but the artifact .* lacks model.int8.onnx"):
        load_artifact(directory)
    (directory / SERVING_FILE).write_text(json.dumps({"precision": "fp16"}))
    with pytest.raises(ArtifactError, match="must be one of fp32, int8"):
        load_artifact(directory)


def _reads_dequantized_weights(model, conv) -> bool:
    producers = {output: node for node in model.graph.node for output in node.output}
    weight = producers.get(conv.input[1])
    return weight is not None and weight.op_type == "DequantizeLinear"
