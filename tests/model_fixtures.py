"""Small but real model artifacts for serving, hosting and pipeline tests.

``build_artifact`` writes a genuine ONNX classifier (3x3 convolution → ReLU →
global average pool → dense → softmax, weights drawn from a seed) with the
artifact's exact input/output contract, plus the JSON files, and packs it as
``model.tar.gz`` through ``model.artifact``. Inference is real, the network is
just tiny (input 64x64 by default), so a server starts in well under a second.
Different seeds give different answers, which is what blue/green tests need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from distracted_driver.config import Settings
from distracted_driver.data.imaging import Preprocessing
from distracted_driver.data.layout import CLASSES, labels_document
from distracted_driver.fsutil import write_json_atomic
from distracted_driver.model import artifact as contract
from distracted_driver.model.artifact import load_artifact
from distracted_driver.model.registry import Registry

OPSET = 17
FILTERS = 8


@dataclass(frozen=True)
class FixtureArtifact:
    version: str
    directory: Path  # unpacked: ``load_artifact(directory)`` works
    tar_path: Path  # the packed ``model.tar.gz``

    def key(self, settings: Settings | None = None) -> str:
        """Where training would have put it: ``models/<version>/output/model.tar.gz``."""
        return f"{(settings or Settings()).models_prefix}/{self.version}/output/model.tar.gz"

    def publish(self, storage, settings: Settings | None = None, register: bool = True) -> str:
        """Put the tar into a bucket at the training job's key and (by default) register it; returns the key."""
        storage.put_file(self.tar_path, self.key(settings))
        if register:
            Registry(storage, settings or Settings()).register(self.version, load_artifact(self.directory))
        return self.key(settings)


def tiny_onnx_model(seed: int = 0, input_size: int = 64) -> onnx.ModelProto:
    """Conv 3→8 (3x3, stride 2) → ReLU → GlobalAveragePool → Flatten → Gemm 8→10 → Softmax."""
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.5, (FILTERS, 3, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, FILTERS).astype(np.float32)
    dense_w = rng.normal(0, 1.0, (FILTERS, len(CLASSES))).astype(np.float32)
    dense_b = rng.normal(0, 0.1, len(CLASSES)).astype(np.float32)
    nodes = [
        helper.make_node(
            "Conv", ["input", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "dense_w", "dense_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [contract.OUTPUT_NAME], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-classifier",
        [helper.make_tensor_value_info(contract.INPUT_NAME, TensorProto.FLOAT, ["batch", 3, input_size, input_size])],
        [helper.make_tensor_value_info(contract.OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(CLASSES)])],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((conv_w, "conv_w"), (conv_b, "conv_b"), (dense_w, "dense_w"), (dense_b, "dense_b"))
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests.model_fixtures"
    )
    model.ir_version = 8  # readable by every onnxruntime the project allows
    onnx.checker.check_model(model)
    return model


def build_artifact(
    out_dir: str | Path,
    version: str = "test-model-1",
    seed: int = 0,
    input_size: int = 64,
    metrics: dict | None = None,
) -> FixtureArtifact:
    """Write ``out_dir/<version>/model/`` (unpacked) and ``out_dir/<version>/model.tar.gz``."""
    return write_artifact(
        out_dir,
        version,
        tiny_onnx_model(seed, input_size),
        Preprocessing(input_size=input_size),
        metrics or {"log_loss": 2.3, "accuracy": 0.1},
        seed=seed,
    )


# --- models that know the validation images, and the ways a model goes wrong ----------------------
#
# The gate and smoke tests need a model that scores well on a real validation channel without
# minutes of training: ``memorizing_artifact`` builds a nearest-prototype classifier in ONNX whose
# prototypes are the channel's own images (preprocessed exactly as the artifact says), so it is
# right on every one of them. ``sharpness`` sets how confident it is (a lower one gives a higher
# log loss at the same accuracy). The helpers after it break any artifact, a trained one included,
# as real failures do: the classes rotated by one, the softmax left out, preprocess.json altered.

POOL = 8  # the network averages 8x8 blocks: a 64-pixel input becomes 3x8x8 = 192 features


def _pooled(images: np.ndarray) -> np.ndarray:
    n, channels, size, _ = images.shape
    blocks = images.reshape(n, channels, size // POOL, POOL, size // POOL, POOL).mean(axis=(3, 5))
    return blocks.reshape(n, -1).astype(np.float64)


def channel_prototypes(channel_dir: Path, input_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features [n, d], labels [n]) of every image in a RecordIO channel."""
    from distracted_driver.data.channel import decoded_batches, read_records

    records, _ = read_records(channel_dir)
    features, labels = [], []
    for batch in decoded_batches(records, Preprocessing(input_size=input_size), 64, workers=1):
        features.append(_pooled(batch.images))
        labels.append(batch.labels)
    return np.concatenate(features), np.concatenate(labels)


def prototype_onnx_model(
    features: np.ndarray, labels: np.ndarray, temperature: float, input_size: int = 64
) -> onnx.ModelProto:
    """AveragePool → Flatten → Gemm (2x·p - |p|², over T) → per-class LogSumExp → Softmax.

    Each class gets as many prototypes as the largest class (repeats fill the smaller ones), so the
    scores reshape to [batch, 10, m]; -|x - p|²/T up to a term that is the same for every class.
    """
    per_class = max(int((labels == c).sum()) for c in range(len(CLASSES)))
    ordered = []
    for c in range(len(CLASSES)):
        mine = features[labels == c]
        if len(mine) == 0:
            raise ValueError(f"no prototype of class {CLASSES[c]}")
        ordered.append(mine[np.arange(per_class) % len(mine)])
    prototypes = np.concatenate(ordered)
    weights = (2.0 * prototypes.T / temperature).astype(np.float32)
    bias = (-(prototypes**2).sum(axis=1) / temperature).astype(np.float32)
    nodes = [
        helper.make_node(
            "AveragePool", [contract.INPUT_NAME], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]
        ),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "weights", "bias"], ["similarity"]),
        helper.make_node("Reshape", ["similarity", "by_class"], ["grouped"]),
        helper.make_node("ReduceLogSumExp", ["grouped"], ["scores"], axes=[2], keepdims=0),
        helper.make_node("Softmax", ["scores"], [contract.OUTPUT_NAME], axis=1),
    ]
    initializers = [
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(np.array([-1, len(CLASSES), per_class], np.int64), "by_class"),
    ]
    graph = helper.make_graph(
        nodes,
        "nearest-prototype",
        [helper.make_tensor_value_info(contract.INPUT_NAME, TensorProto.FLOAT, ["batch", 3, input_size, input_size])],
        [helper.make_tensor_value_info(contract.OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(CLASSES)])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests.model_fixtures"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def typical_distance(features: np.ndarray) -> float:
    """The median squared distance between two images: a temperature of this order gives soft answers."""
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(features), size=(512, 2))
    return float(np.median(((features[pairs[:, 0]] - features[pairs[:, 1]]) ** 2).sum(axis=1)))


def write_artifact(
    out_dir: str | Path,
    version: str,
    model: onnx.ModelProto,
    preprocessing: Preprocessing,
    metrics: dict | None = None,
    **provenance,
) -> FixtureArtifact:
    """Write and pack an artifact around ``model`` (``out_dir/<version>/model`` and ``model.tar.gz``)."""
    root = Path(out_dir) / version
    directory = root / "model"
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, directory / contract.MODEL_FILE)
    write_json_atomic(directory / contract.LABELS_FILE, labels_document())
    write_json_atomic(directory / contract.PREPROCESS_FILE, preprocessing.to_dict())
    write_json_atomic(directory / contract.METRICS_FILE, metrics or {"log_loss": 0.01, "accuracy": 1.0})
    write_json_atomic(
        directory / contract.PROVENANCE_FILE,
        {"model_version": version, **provenance, "built_by": "tests/model_fixtures.py"},
    )
    return FixtureArtifact(version, directory, contract.pack_artifact(directory, root / "model.tar.gz"))


def memorizing_artifact(
    out_dir: str | Path, version: str, channel_dir: Path, sharpness: float = 4.0, metrics: dict | None = None
) -> FixtureArtifact:
    """A nearest-prototype model of ``channel_dir``'s images; ``sharpness`` = typical distance / temperature."""
    features, labels = channel_prototypes(channel_dir)
    model = prototype_onnx_model(features, labels, typical_distance(features) / sharpness)
    return write_artifact(out_dir, version, model, Preprocessing(input_size=64), metrics)


def _output_producer(graph) -> onnx.NodeProto:
    return next(node for node in graph.node if contract.OUTPUT_NAME in node.output)


def rotated_classes(model: onnx.ModelProto, shift: int = 1) -> onnx.ModelProto:
    """The same network answering each class's probability under the next class's name."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    producer = _output_producer(graph)
    producer.output[list(producer.output).index(contract.OUTPUT_NAME)] = "unrotated"
    order = np.array([(c - shift) % len(CLASSES) for c in range(len(CLASSES))], np.int64)
    graph.initializer.append(numpy_helper.from_array(order, "rotation"))
    graph.node.append(helper.make_node("Gather", ["unrotated", "rotation"], [contract.OUTPUT_NAME], axis=1))
    onnx.checker.check_model(model)
    return model


def softmax_removed(model: onnx.ModelProto) -> onnx.ModelProto:
    """The network with its final softmax left out: it answers scores, not probabilities."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    softmax = _output_producer(graph)
    assert softmax.op_type == "Softmax", softmax.op_type
    scores = softmax.input[0]
    graph.node.remove(softmax)
    for node in graph.node:
        node.output[:] = [contract.OUTPUT_NAME if name == scores else name for name in node.output]
    onnx.checker.check_model(model)
    return model


def features_exposed(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same network with its pooled ``features`` (what its head reads; both networks here name them so)
    also a graph output, as the training job exports models for monitoring."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    width = next(int(init.dims[0]) for init in graph.initializer if init.name in ("dense_w", "weights"))
    graph.output.append(helper.make_tensor_value_info(contract.FEATURES_NAME, TensorProto.FLOAT, ["batch", width]))
    onnx.checker.check_model(model)
    return model


def quantized_int8(model: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    """``model`` statically quantized by ONNX Runtime (QDQ, int8 weights, uint8 activations) on ``calibration``
    ``[n, 3, S, S]`` batches, as the training job quantizes (its ``quantize_int8`` also keeps the real network's
    first layers in fp32 by their names, which these tiny graphs do not have); its outputs are the model's."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(np.asarray(calibration, np.float32), max(1, len(calibration) // 8)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {contract.INPUT_NAME: np.ascontiguousarray(batch)}

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for number, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{number}"
    softmax = [node.name for node in model.graph.node if node.op_type == "Softmax"]  # stays fp32, as in the job
    with tempfile.TemporaryDirectory(prefix="fixture-int8-") as scratch:
        onnx.save(model, f"{scratch}/fp32.onnx")
        quantize_static(
            f"{scratch}/fp32.onnx",
            f"{scratch}/int8.onnx",
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=softmax,
        )
        return onnx.load(f"{scratch}/int8.onnx")


def derived_artifact(
    source: FixtureArtifact | Path,
    out_dir: str | Path,
    version: str,
    *,
    model=None,
    preprocessing: Preprocessing | None = None,
    metrics: dict | None = None,
) -> FixtureArtifact:
    """A copy of an unpacked artifact (a fixture's, or a trained one's directory) with parts replaced.

    ``model`` is a function of the source's ONNX model; ``preprocessing`` replaces preprocess.json.
    """
    directory = Path(getattr(source, "directory", source))
    original = load_artifact(directory)
    graph = onnx.load(directory / contract.MODEL_FILE)
    return write_artifact(
        out_dir,
        version,
        model(graph) if model else graph,
        preprocessing or original.preprocessing,
        metrics or original.metrics,
    )


# Training/serving skew in one file: ImageNet's normalisation where the model learnt the project's.
IMAGENET_NORMALISATION = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
