"""The same image bytes give the same network input in every stage that feeds a model.

Stages: the training reader over RecordIO (``data.channel``), evaluation
(``model.evaluate.predict_channel``), batch prediction (``serve.batch_predict``)
and the model server as a real process over HTTP. In-process tensors are
compared bit for bit. Evaluation, batch prediction and the server only hand
back the model's output, so they run a probe model instead of a classifier:
it recovers the 0-255 pixel values from its input, takes ten projections of
them with positive integer weights (exact in float64 whatever the summation
order) and answers them divided by their sum: rows of probabilities, as the
gate's evaluation requires, equal only when every pixel is.

Which bytes: with ``--pass-through`` the records hold the source files, so the
training reader and serving see the same file; with the converter's default
``--resize 256`` the records hold a 341x256 re-encoding, and the same tensors
come out when those stored bytes are served. The DCT scale is chosen from the
stored image's size (1/2 for a 640x480 camera frame, full size for a 341x256
record at a 224 input), so it is the same wherever the same bytes are decoded.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from model_fixtures import build_artifact
from onnx import TensorProto, helper, numpy_helper
from waiting import wait_until

from distracted_driver.data.channel import decoded_batches, read_records
from distracted_driver.data.convert import ConvertOptions, convert_list
from distracted_driver.data.imaging import Preprocessing
from distracted_driver.data.sample import generate_sample
from distracted_driver.data.split import ListEntry, write_lst
from distracted_driver.model import artifact as contract
from distracted_driver.model.artifact import load_artifact
from distracted_driver.model.evaluate import predict_channel
from distracted_driver.model.inference import Classifier
from distracted_driver.serve.batch_predict import predict_images

pytestmark = pytest.mark.slow  # starts a model server process

ROOT = Path(__file__).resolve().parents[1]
SIZE = 224  # the real input size: camera frames decode at 1/2, the converter's records at full size
PARAMS = Preprocessing(input_size=SIZE)


def _probe_weights() -> np.ndarray:
    return np.random.default_rng(11).integers(1, 1000, (3 * SIZE * SIZE, 10)).astype(np.float64)


def probe_model() -> onnx.ModelProto:
    """input → pixels (x * std + mean) / scale, rounded → ten integer-weighted sums over their total, in float64."""
    shape = [1, 3, 1, 1]
    constants = {
        "std": np.asarray(PARAMS.std, np.float64).reshape(shape),
        "mean": np.asarray(PARAMS.mean, np.float64).reshape(shape),
        "scale": np.asarray(PARAMS.scale, np.float64),
        "flat": np.array([0, -1], np.int64),
        "across": np.array([1], np.int64),
        "weights": _probe_weights(),
    }
    nodes = [
        helper.make_node("Cast", [contract.INPUT_NAME], ["x"], to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["x", "std"], ["spread"]),
        helper.make_node("Add", ["spread", "mean"], ["shifted"]),
        helper.make_node("Div", ["shifted", "scale"], ["levels"]),
        helper.make_node("Round", ["levels"], ["pixels"]),
        helper.make_node("Reshape", ["pixels", "flat"], ["row"]),
        helper.make_node("MatMul", ["row", "weights"], ["projections"]),
        helper.make_node("ReduceSum", ["projections", "across"], ["total"], keepdims=1),
        helper.make_node("Div", ["projections", "total"], [contract.OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        "pixel-probe",
        [helper.make_tensor_value_info(contract.INPUT_NAME, TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info(contract.OUTPUT_NAME, TensorProto.DOUBLE, ["batch", 10])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test_decode_parity")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def expected_answer(tensor: np.ndarray) -> np.ndarray:
    """What the probe answers for one preprocessed input, computed here from the tensor."""
    std = np.asarray(PARAMS.std, np.float64)[:, None, None]
    mean = np.asarray(PARAMS.mean, np.float64)[:, None, None]
    pixels = np.round((tensor.astype(np.float64) * std + mean) / PARAMS.scale)
    projections = pixels.reshape(-1) @ _probe_weights()
    return projections / projections.sum()


def _exif_rotated(jpeg: bytes) -> bytes:
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0)  # orientation 6: OpenCV turns it upright at full size
    payload = b"Exif\x00\x00MM\x00*" + struct.pack(">IH", 8, 1) + entry + struct.pack(">I", 0)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Source images (camera frames, and one each of the paths decoded at full size), both channels, the probe."""
    root = tmp_path_factory.mktemp("parity")
    sample = generate_sample(root / "sample", drivers=1, images_per_class_driver=1, test_images=0, progress=False)
    frames = sorted((sample.out_dir / "imgs" / "train").glob("c*/*.jpg"))
    images = root / "images"
    images.mkdir()
    sources = {f"frame_{i}.jpg": path.read_bytes() for i, path in enumerate(frames)}
    pixels = cv2.imdecode(np.frombuffer(sources["frame_0.jpg"], np.uint8), cv2.IMREAD_COLOR)
    sources["large.jpg"] = cv2.imencode(".jpg", cv2.resize(pixels, (1280, 960)))[1].tobytes()  # 1/4
    sources["small.jpg"] = cv2.imencode(".jpg", cv2.resize(pixels, (200, 150)))[1].tobytes()  # under 224: full
    sources["exif.jpg"] = _exif_rotated(sources["frame_1.jpg"])
    sources["frame.png"] = cv2.imencode(".png", pixels)[1].tobytes()
    for name, data in sources.items():
        (images / name).write_bytes(data)
    lst = root / "all.lst"
    write_lst(lst, [ListEntry(i, float(i % 10), name) for i, name in enumerate(sources)])
    channels = {}
    for name, options in (("pass-through", ConvertOptions(pass_through=True)), ("resized", ConvertOptions())):
        convert_list(lst, images, root / name, "train", options, workers=1, progress=False)
        channels[name] = root / name
    probe = build_artifact(root / "probe", "pixel-probe", input_size=SIZE)
    onnx.save(probe_model(), probe.directory / contract.MODEL_FILE)
    return {
        "root": root,
        "names": list(sources),
        "images": images,
        "channels": channels,
        "probe": load_artifact(probe.directory),
    }


class ModelServer:
    """``python -m distracted_driver.serve.server`` on a free loopback port."""

    def __init__(self, model_dir: Path, log_path: Path):
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "distracted_driver.serve.server", "--model-dir", str(model_dir), "--port", "0"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        self.url = self._wait(lambda: re.search(r"listening on (http://127\.0\.0\.1:\d+)", log_path.read_text()))[1]
        self._wait(lambda: self._ping() == 200)

    def _ping(self) -> int:
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=5) as answer:
                return answer.status
        except OSError:
            return 0

    def _wait(self, found, timeout_s: float = 60):
        return wait_until(found, timeout_s, what="the model server", process=self.proc, details=self.log_path.read_text)

    def invoke(self, data: bytes) -> np.ndarray:
        content_type = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
        request = urllib.request.Request(self.url + "/invocations", data=data, headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return np.asarray(json.loads(answer.read()), np.float64)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(workspace):
    running = ModelServer(workspace["probe"].directory, workspace["root"] / "server.log")
    yield running
    running.stop()


def _training_reader(channel: Path) -> dict[int, np.ndarray]:
    """Record key → the tensor the training reader prepared for it."""
    records, skipped = read_records(channel)
    assert not skipped
    tensors = {}
    for batch in decoded_batches(records, PARAMS, batch_size=4, workers=2):
        assert not batch.failed
        tensors.update((int(source.split(":")[1]), image) for source, image in zip(batch.sources, batch.images))
    return tensors


def _stored_bytes(channel: Path) -> dict[int, bytes]:
    records, _ = read_records(channel)
    return {int(r.source.split(":")[1]): r.payload for r in records}


@pytest.mark.parametrize("channel", ["pass-through", "resized"])
def test_every_stage_prepares_the_same_pixels(workspace, server, channel, tmp_path):
    names, probe = workspace["names"], workspace["probe"]
    stored = _stored_bytes(workspace["channels"][channel])
    if channel == "pass-through":
        assert all(stored[i] == (workspace["images"] / name).read_bytes() for i, name in enumerate(names))
    served = tmp_path / "served"  # the bytes the training reader decoded, as files for batch prediction
    served.mkdir()
    for i, name in enumerate(names):
        (served / name).write_bytes(stored[i])

    trained = _training_reader(workspace["channels"][channel])
    classifier = Classifier(probe, threads=1)
    for i, name in enumerate(names):  # batch prediction and the server prepare with Classifier.prepare
        prepared = classifier.prepare(stored[i])
        assert prepared.dtype == np.float32 and prepared.tobytes() == trained[i].tobytes(), name

    expected = {name: expected_answer(trained[i]) for i, name in enumerate(names)}
    predictions = predict_channel(probe, workspace["channels"][channel], batch_size=4, progress=False)
    evaluated = predictions.probabilities
    assert not predictions.skipped and len(evaluated) == len(names)
    batch = predict_images(probe, sorted(served.iterdir()), batch_size=3, workers=2, progress=False)
    assert not batch.failed
    by_name = dict(zip(batch.names, batch.probabilities))
    for i, name in enumerate(names):
        assert np.array_equal(evaluated[i], expected[name]), f"evaluation, {name}"
        assert np.array_equal(by_name[name], expected[name]), f"batch prediction, {name}"
        assert np.array_equal(server.invoke(stored[i]), expected[name]), f"model server over HTTP, {name}"


def test_the_probe_sees_the_decode_scale(workspace, tmp_path):
    """An artifact from before DCT scaling decodes at full size: the probe's answers differ, so the test above can fail."""
    old = tmp_path / "old"
    shutil.copytree(workspace["probe"].directory, old)
    recorded = json.loads((old / contract.PREPROCESS_FILE).read_text())
    del recorded["jpeg_dct_scaling"]
    (old / contract.PREPROCESS_FILE).write_text(json.dumps(recorded))
    paths = [workspace["images"] / name for name in ("frame_0.jpg", "large.jpg", "small.jpg", "frame.png")]
    scaled = predict_images(workspace["probe"], paths, progress=False).probabilities
    full = predict_images(load_artifact(old), paths, progress=False).probabilities
    assert not np.array_equal(scaled[0], full[0]) and not np.array_equal(scaled[1], full[1])
    assert np.array_equal(scaled[2], full[2]) and np.array_equal(scaled[3], full[3])  # under 224, and a PNG
