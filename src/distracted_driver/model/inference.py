"""The classifier behind the model server and batch prediction: ONNX Runtime on an artifact.

Pixels are prepared only through ``data.imaging.model_input`` with the
artifact's own ``Preprocessing``, so the same bytes give the same input here as
in training and evaluation; ``decode_image`` checks untrusted bytes (signature,
size, completeness) before a decoder sees them.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from distracted_driver.data.imaging import MAX_PIXELS, model_input
from distracted_driver.model.artifact import FEATURES_NAME, INPUT_NAME, OUTPUT_NAME, ArtifactError, ModelArtifact
from distracted_driver.system import cpu_count


class Classifier:
    """ONNX Runtime session over ``model.onnx`` of an artifact; ``predict`` takes a preprocessed batch."""

    def __init__(self, artifact: ModelArtifact, threads: int | None = None):
        self.artifact = artifact
        self.threads = threads or cpu_count()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Decode threads share the cores with inference; ORT's idle threads would otherwise
        # spin-wait for the next run and take CPU that decoding needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(artifact.served_model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # ORT raises its own untyped errors for a broken graph
            raise ArtifactError(f"{artifact.served_model_path} cannot be loaded by ONNX Runtime: {error}") from None
        self._check_signature()

    def _check_signature(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise ArtifactError(
                f"model.onnx must have input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
                f"has {sorted(inputs)} and {sorted(outputs)}"
            )
        shape = inputs[INPUT_NAME].shape
        size = self.input_size
        if len(shape) != 4 or shape[1] != 3 or any(isinstance(d, int) and d != size for d in shape[2:]):
            raise ArtifactError(f"model input shape {shape} does not match [N, 3, {size}, {size}] of preprocess.json")

    @property
    def version(self) -> str:
        return self.artifact.version

    @property
    def labels(self) -> list[dict]:
        return self.artifact.labels

    @property
    def input_size(self) -> int:
        return self.artifact.preprocessing.input_size

    def prepare(self, data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """Image bytes → one preprocessed input ``[3, S, S]``; raises ``ImageError``."""
        return model_input(data, self.artifact.preprocessing, max_pixels)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``[N, 3, S, S]`` float32 → ``[N, 10]`` probabilities."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    @property
    def has_features(self) -> bool:
        """Whether the served model also outputs ``features`` (models exported before monitoring do not)."""
        return FEATURES_NAME in {output.name for output in self.session.get_outputs()}

    def predict_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[N, 3, S, S]`` → (``[N, 10]`` probabilities, ``[N, F]`` pooled features), for monitoring.

        The model server never calls this: it fetches the probabilities alone (``predict``).
        """
        if not self.has_features:
            raise ArtifactError(
                f"{self.artifact.served_model_path.name} has no {FEATURES_NAME!r} output "
                "(exported before monitoring): retrain to monitor its features"
            )
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        probabilities, features = self.session.run([OUTPUT_NAME, FEATURES_NAME], {INPUT_NAME: batch})
        return probabilities, features

    def describe(self, probabilities: np.ndarray) -> dict:
        """One row of probabilities as the verbose answer: class, label, confidence, all ten."""
        best = int(np.argmax(probabilities))
        return {
            "class": self.labels[best]["class"],
            "label": self.labels[best]["label"],
            "confidence": float(probabilities[best]),
            "probabilities": [float(p) for p in probabilities],
            "model_version": self.version,
        }
