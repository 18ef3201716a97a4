"""Small but real model artifacts for serving, hosting and pipeline tests.

``build_artifact`` writes a genuine ONNX classifier (3x3 convolution → ReLU →
global average pool → dense → softmax, weights drawn from a seed) with the
artifact's exact input/output contract, plus the JSON files, and packs it as
``model.tar.gz`` through ``train.artifact``. Inference is real, the network is
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
from distracted_driver.train import artifact as contract
from distracted_driver.train.artifact import load_artifact
from distracted_driver.train.registry import Registry

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
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
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
        [numpy_helper.from_array(a, n) for a, n in
         ((conv_w, "conv_w"), (conv_b, "conv_b"), (dense_w, "dense_w"), (dense_b, "dense_b"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests.model_fixtures")
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
    root = Path(out_dir) / version
    directory = root / "model"
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_onnx_model(seed, input_size), directory / contract.MODEL_FILE)
    write_json_atomic(directory / contract.LABELS_FILE, labels_document())
    write_json_atomic(directory / contract.PREPROCESS_FILE, Preprocessing(input_size=input_size).to_dict())
    write_json_atomic(directory / contract.METRICS_FILE, metrics or {"log_loss": 2.3, "accuracy": 0.1})
    write_json_atomic(
        directory / contract.PROVENANCE_FILE,
        {"model_version": version, "seed": seed, "built_by": "tests/model_fixtures.py"},
    )
    tar_path = contract.pack_artifact(directory, root / "model.tar.gz")
    return FixtureArtifact(version, directory, tar_path)
