"""Classifier on ONNX Runtime and the untrusted-image checks in front of it."""

from __future__ import annotations

import asyncio
import json
import shutil

import cv2
import numpy as np
import onnx
import pytest

from distracted_driver.data.imaging import ImageError, Preprocessing, preprocess
from distracted_driver.data.imaging import decode_image as read_image
from distracted_driver.model.artifact import ArtifactError, load_artifact
from distracted_driver.model.inference import Classifier
from distracted_driver.serve.batching import DynamicBatcher


def encode(extension: str, seed: int = 0, **params) -> bytes:
    small = np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    flags = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if params.get("progressive") else []
    return cv2.imencode(extension, cv2.resize(small, (640, 480)), flags)[1].tobytes()


@pytest.fixture(scope="module")
def classifier(make_artifact):
    return Classifier(load_artifact(make_artifact("inference-test-v1", seed=3).directory), threads=1)


def test_predict_gives_softmax_rows(classifier):
    batch = np.random.default_rng(0).normal(size=(5, 3, 64, 64)).astype(np.float32)
    probabilities = classifier.predict(batch)
    assert probabilities.shape == (5, 10) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert classifier.version == "inference-test-v1" and classifier.labels[0]["class"] == "c0"


def test_a_row_does_not_depend_on_its_batch(classifier):
    batch = np.random.default_rng(1).normal(size=(8, 3, 64, 64)).astype(np.float32)
    together = classifier.predict(batch)
    alone = np.concatenate([classifier.predict(batch[i : i + 1]) for i in range(8)])
    assert np.allclose(together, alone, atol=1e-6)


def test_prepare_is_imaging_preprocess_with_the_artifact_parameters(classifier, make_artifact, tmp_path):
    data = encode(".jpg")
    # 640x480 for a 64-pixel input: 1/8 would give 80x60, below 64, so libjpeg-turbo decodes at 2/8 (160x120),
    # as OpenCV's own reduced decode does.
    quarter = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_4)
    assert quarter.shape == (120, 160, 3)
    assert np.array_equal(classifier.prepare(data), preprocess(quarter, Preprocessing(input_size=64)))
    # An artifact whose preprocess.json predates the field was trained on full decodes, and keeps them.
    old = tmp_path / "old"
    shutil.copytree(make_artifact("inference-test-v1", seed=3).directory, old)
    recorded = json.loads((old / "preprocess.json").read_text())
    del recorded["jpeg_dct_scaling"]
    (old / "preprocess.json").write_text(json.dumps(recorded))
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(
        Classifier(load_artifact(old), threads=1).prepare(data), preprocess(full, Preprocessing(input_size=64))
    )


def test_seeds_give_different_models(make_artifact, classifier):
    other = Classifier(load_artifact(make_artifact("inference-test-v2", seed=4).directory), threads=1)
    batch = classifier.prepare(encode(".jpg"))[None]
    assert not np.allclose(classifier.predict(batch), other.predict(batch))


def test_describe_names_the_most_likely_class(classifier):
    row = np.array([0.05] * 10, dtype=np.float32)
    row[7] = 0.55
    answer = classifier.describe(row)
    assert answer["class"] == "c7" and answer["label"] == "reaching behind"
    assert answer["confidence"] == pytest.approx(0.55) and answer["model_version"] == "inference-test-v1"
    json.dumps(answer)  # plain floats only


@pytest.mark.parametrize("extension,params", [(".jpg", {}), (".jpg", {"progressive": True}), (".png", {})])
def test_read_image_accepts_complete_images(extension, params):
    assert read_image(encode(extension, **params)).shape == (480, 640, 3)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"BM" + b"\0" * 100, "signature"),
        (encode(".jpg")[:-2], "truncated"),
        (encode(".jpg", progressive=True)[:-300], "truncated"),
        (encode(".png")[:-12], "truncated"),
        (encode(".jpg")[:40], "header"),
    ],
)
def test_read_image_refuses_what_is_not_a_whole_image(data, reason):
    with pytest.raises(ImageError, match=reason):
        read_image(data)


def test_read_image_refuses_too_many_pixels_before_decoding():
    with pytest.raises(ImageError, match="exceeds the limit of 1000 pixels"):
        read_image(encode(".png"), max_pixels=1000)


def _rewrite(directory, change) -> None:
    model = onnx.load(directory / "model.onnx")
    change(model)
    onnx.save(model, directory / "model.onnx")


def test_a_model_that_breaks_the_contract_is_refused(make_artifact, tmp_path):
    source = make_artifact("inference-test-v1", seed=3).directory
    renamed, resized = tmp_path / "renamed", tmp_path / "resized"
    shutil.copytree(source, renamed)
    shutil.copytree(source, resized)
    _rewrite(renamed, _rename_input)
    with pytest.raises(ArtifactError, match="input 'input'"):
        Classifier(load_artifact(renamed))
    (resized / "preprocess.json").write_text(json.dumps(Preprocessing(input_size=96).to_dict()))  # the graph takes 64
    with pytest.raises(ArtifactError, match="does not match"):
        Classifier(load_artifact(resized))


def _rename_input(model) -> None:
    model.graph.input[0].name = "data"
    model.graph.node[0].input[0] = "data"


def test_batcher_groups_concurrent_submissions(classifier):
    sizes = []

    async def scenario():
        batcher = DynamicBatcher(
            classifier.predict, max_batch_size=4, max_delay_s=0.05, on_batch=lambda size, seconds: sizes.append(size)
        )
        batcher.start()
        inputs = [classifier.prepare(encode(".jpg", seed=i)) for i in range(10)]
        rows = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        await batcher.close()
        return inputs, rows

    inputs, rows = asyncio.run(scenario())
    assert sizes == [4, 4, 2]
    assert np.allclose(np.stack(rows), classifier.predict(np.stack(inputs)), atol=1e-6)


def test_batcher_fails_the_batch_not_the_loop(classifier):
    calls = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("model fault")
        return classifier.predict(batch)

    async def scenario():
        batcher = DynamicBatcher(flaky, max_batch_size=8, max_delay_s=0.0)
        batcher.start()
        x = classifier.prepare(encode(".jpg"))
        with pytest.raises(RuntimeError, match="model fault"):
            await batcher.submit(x)
        row = await batcher.submit(x)
        await batcher.close()
        return row

    assert asyncio.run(scenario()).shape == (10,)
