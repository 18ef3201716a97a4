"""The model artifact ``model.tar.gz``: the one place that writes, reads and validates it.

Contents (flat, at the archive root):

- ``model.onnx``: the fp32 network; input ``input`` float32 ``[batch, 3, S, S]``
  (dynamic batch), output ``probabilities`` float32 ``[batch, 10]`` (softmax
  already applied: every row non-negative and summing to 1, which
  ``probability_problem`` checks). A second output ``features`` float32
  ``[batch, F]`` (the pooled penultimate-layer features the head reads) is for
  monitoring only: model servers fetch ``probabilities`` alone, so their answers
  do not depend on it, and models exported before it existed lack it;
- ``model.int8.onnx`` (optional): the same network statically quantized to int8
  (QDQ), with the same input and outputs;
- ``serving.json`` (optional; without it the artifact serves fp32): which of the
  two is served (``precision``: ``fp32`` or ``int8``), the validation scores of
  both and the tolerance that chose (``model.precision``). The served file
  (``ModelArtifact.served_model_path``) is what a model server, batch
  prediction and SageMaker hosting load, so it is the one the gate scores;
- ``labels.json``: ``[{"index", "class", "label"}]`` for c0..c9;
- ``preprocess.json``: ``distracted_driver.data.imaging.Preprocessing`` as a dict;
- ``metrics.json``: validation metrics (``log_loss``, ``accuracy``, …) as the
  training job measured them: information for people, never evidence for the
  gate, which scores the model itself;
- ``provenance.json``: ``model_version`` (the training job name), data manifest
  hash, code version, hyperparameters, timings;
- ``baseline.json`` and ``baseline.npz`` (optional: artifacts trained before
  monitoring lack them): what the drift report compares live traffic with,
  written and read by ``train.baseline``.

Readers (server, gate, batch prediction) use ``load_artifact`` or ``unpack_artifact``.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from distracted_driver.data.imaging import Preprocessing
from distracted_driver.data.layout import CLASSES
from distracted_driver.fsutil import atomic_path
from distracted_driver.model.precision import FP32, INT8

MODEL_FILE = "model.onnx"
INT8_MODEL_FILE = "model.int8.onnx"
SERVING_FILE = "serving.json"
MODEL_FILES = {FP32: MODEL_FILE, INT8: INT8_MODEL_FILE}
LABELS_FILE = "labels.json"
PREPROCESS_FILE = "preprocess.json"
METRICS_FILE = "metrics.json"
PROVENANCE_FILE = "provenance.json"
REQUIRED_FILES = (MODEL_FILE, LABELS_FILE, PREPROCESS_FILE, METRICS_FILE, PROVENANCE_FILE)
BASELINE_FILE = "baseline.json"
BASELINE_ARRAYS_FILE = "baseline.npz"
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
FEATURES_NAME = "features"
# How far a row of the output may sum from 1 (float32 softmax over ten classes is within 1e-6).
PROBABILITY_TOLERANCE = 1e-3


class ArtifactError(ValueError):
    """The artifact is missing a file or holds something inconsistent."""


@dataclass(frozen=True)
class ModelArtifact:
    directory: Path
    labels: list[dict]
    preprocessing: Preprocessing
    metrics: dict
    provenance: dict
    serving: dict = field(default_factory=dict)  # serving.json; {} for an artifact that serves fp32 only

    @property
    def model_path(self) -> Path:
        """The fp32 model."""
        return self.directory / MODEL_FILE

    @property
    def served_precision(self) -> str:
        return self.serving.get("precision", FP32)

    @property
    def served_model_path(self) -> Path:
        """The ONNX file a model server loads for this artifact: what the gate must score."""
        return self.directory / MODEL_FILES[self.served_precision]

    @property
    def precisions(self) -> list[str]:
        """The precisions this artifact has a model file for, fp32 first."""
        return [precision for precision, name in MODEL_FILES.items() if (self.directory / name).is_file()]

    def serving_as(self, precision: str) -> ModelArtifact:
        """The same artifact serving ``precision`` (to score each of its models as a server would run it)."""
        if precision not in self.precisions:
            raise ArtifactError(f"artifact in {self.directory} has no {precision} model ({MODEL_FILES.get(precision)})")
        return replace(self, serving={**self.serving, "precision": precision})

    @property
    def version(self) -> str:
        return self.provenance["model_version"]


class NotProbabilities(ArtifactError):
    """The model's output rows are not probability distributions (e.g. the softmax is missing)."""


def probability_problem(rows) -> str | None:
    """Why ``rows`` (``[n, 10]`` model outputs) are not probabilities, or None.

    Each row must hold ten finite values in [0, 1] that sum to 1 within ``PROBABILITY_TOLERANCE``.
    """
    try:
        values = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        return "the output is not an array of numbers"
    if values.ndim != 2 or values.shape[1] != len(CLASSES) or values.shape[0] == 0:
        return f"expected rows of {len(CLASSES)} probabilities, got an output of shape {values.shape}"
    if not np.isfinite(values).all():
        return "the output holds NaN or infinite values"
    if values.min() < 0.0 or values.max() > 1.0:
        return f"probabilities outside [0, 1] (values from {values.min():.4g} to {values.max():.4g})"
    sums = values.sum(axis=1)
    if np.abs(sums - 1.0).max() > PROBABILITY_TOLERANCE:
        return f"probabilities do not sum to 1 (row sums from {sums.min():.4f} to {sums.max():.4f})"
    return None


def _read_json(directory: Path, name: str):
    try:
        return json.loads((directory / name).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"artifact in {directory} lacks {name}") from None
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{name} in {directory} is not valid JSON: {error}") from None


def load_artifact(directory: str | Path) -> ModelArtifact:
    """Read and validate an unpacked artifact."""
    directory = Path(directory)
    if not (directory / MODEL_FILE).is_file():
        raise ArtifactError(f"artifact in {directory} lacks {MODEL_FILE}")
    labels = _read_json(directory, LABELS_FILE)
    if [entry.get("class") for entry in labels] != list(CLASSES):
        raise ArtifactError(f"{LABELS_FILE} must list {', '.join(CLASSES)} in order")
    try:
        preprocessing = Preprocessing.from_dict(_read_json(directory, PREPROCESS_FILE))
    except (TypeError, ValueError) as error:
        raise ArtifactError(f"{PREPROCESS_FILE}: {error}") from None
    provenance = _read_json(directory, PROVENANCE_FILE)
    if not provenance.get("model_version"):
        raise ArtifactError(f"{PROVENANCE_FILE} lacks model_version")
    serving = _read_json(directory, SERVING_FILE) if (directory / SERVING_FILE).exists() else {}
    if not isinstance(serving, dict):
        raise ArtifactError(f"{SERVING_FILE} in {directory} must be a JSON object")
    precision = serving.get("precision", FP32)
    if precision not in MODEL_FILES:
        raise ArtifactError(f"{SERVING_FILE} names precision {precision!r}; it must be one of {', '.join(MODEL_FILES)}")
    if not (directory / MODEL_FILES[precision]).is_file():
        raise ArtifactError(
            f"{SERVING_FILE} serves {precision} but the artifact in {directory} lacks {MODEL_FILES[precision]}"
        )
    return ModelArtifact(directory, labels, preprocessing, _read_json(directory, METRICS_FILE), provenance, serving)


def pack_artifact(directory: str | Path, tar_path: str | Path) -> Path:
    """Validate ``directory`` and write it as a gzipped tar, atomically."""
    load_artifact(directory)
    with atomic_path(tar_path) as tmp:
        with tarfile.open(tmp, "w:gz") as archive:
            for name in sorted(p.name for p in Path(directory).iterdir() if p.is_file()):
                archive.add(Path(directory) / name, arcname=name)
    return Path(tar_path)


def unpack_artifact(tar_path: str | Path, directory: str | Path) -> ModelArtifact:
    """Extract a ``model.tar.gz`` (regular files only, no paths outside) and validate it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tar_path, "r:gz") as archive:
            archive.extractall(directory, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise ArtifactError(f"cannot unpack {tar_path}: {error}") from None
    return load_artifact(directory)
