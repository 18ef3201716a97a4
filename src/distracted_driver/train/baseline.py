"""The baseline the drift report compares live traffic with, recorded by the training job in the artifact.

``baseline.json`` (numbers people can read) and ``baseline.npz`` (the feature arrays),
computed with the artifact's **served** model file and its ``preprocess.json``:

- on validation, drivers the model never trained on, as live traffic is: the predicted
  class of every image (counts per class; the true labels' counts beside them), every
  image's confidence (its top probability), and the pooled penultimate-layer features
  (the model's ``features`` output): their mean and covariance, the principal directions
  of that covariance that the drift report measures distances along (each scaled to unit
  variance), and the validation features in those coordinates, in channel order, which is
  the driver list's order (so the report can calibrate a distance by the one between parts
  of validation that hold different drivers);
- on training and validation images alike (the model plays no part): the per-image
  statistics of ``data.image_stats``, measured on the channel records as ``data.convert``
  wrote them, at most ``MAX_STATISTIC_IMAGES`` spread evenly over both channels.

Torch-free: ONNX Runtime through the model server's own ``Classifier``.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distracted_driver.data.channel import Record, decoded_batches, read_records
from distracted_driver.data.image_stats import STATISTICS, image_statistics
from distracted_driver.data.imaging import ImageError, decode_image
from distracted_driver.data.layout import CLASSES
from distracted_driver.fsutil import atomic_path, write_json_atomic
from distracted_driver.hashing import sha256_file
from distracted_driver.model.artifact import (
    BASELINE_ARRAYS_FILE,
    BASELINE_FILE,
    MODEL_FILES,
    ArtifactError,
    ModelArtifact,
)
from distracted_driver.system import cpu_count

FORMAT = 1
MAX_STATISTIC_IMAGES = 5000
# Distances are measured along at most this many principal directions of the validation features:
# a covariance of 1280 dimensions cannot be estimated from a few hundred captured images, 64 can.
MAX_COMPONENTS = 64


@dataclass(frozen=True)
class Baseline:
    """What ``baseline.json`` and ``baseline.npz`` hold, read back."""

    summary: dict  # baseline.json
    feature_mean: np.ndarray  # [F]
    feature_covariance: np.ndarray  # [F, F]
    projection: np.ndarray  # [F, k]: principal directions of the covariance (largest variance first), each
    # divided by its standard deviation, so that the baseline has unit variance along every one
    validation_projected: np.ndarray  # [n, k]: each validation image's features in those coordinates, in channel order

    @property
    def predicted_counts(self) -> np.ndarray:
        return np.array([self.summary["validation"]["predicted_counts"][c] for c in CLASSES], dtype=np.int64)

    @property
    def confidences(self) -> np.ndarray:
        return np.asarray(self.summary["validation"]["confidences"], dtype=np.float64)

    def statistic(self, name: str) -> np.ndarray:
        return np.asarray(self.summary["image_statistics"]["values"][name], dtype=np.float64)

    def project(self, features: np.ndarray) -> np.ndarray:
        """Features ``[n, F]`` in the baseline's principal coordinates ``[n, k]`` (centred, unit variance)."""
        return (np.asarray(features, dtype=np.float64) - self.feature_mean) @ self.projection

    def measured_with(self, artifact: ModelArtifact) -> ModelArtifact:
        """``artifact`` serving the very model file this baseline was recorded on, to measure live features with.

        Features are comparable only between runs of one file: an int8 model's are not its fp32 twin's.
        The training job records the baseline on the served file, so this is normally the artifact
        itself; an artifact whose ``serving.json`` was changed after training still gets the file its
        baseline knows. ArtifactError when the artifact no longer holds that file, byte for byte.
        """
        name = self.summary.get("model_file")
        precision = next((p for p, file in MODEL_FILES.items() if file == name), None)
        if precision is None or precision not in artifact.precisions:
            raise ArtifactError(
                f"the baseline of model {artifact.version} was recorded on {name!r}, which the artifact does not hold"
            )
        measuring = artifact.serving_as(precision)
        if sha256_file(measuring.served_model_path) != self.summary.get("model_sha256"):
            raise ArtifactError(
                f"the baseline of model {artifact.version} was recorded on another {name} "
                "(its sha256 differs): record the baseline again or retrain"
            )
        return measuring


def record_baseline(
    artifact: ModelArtifact, train_dir: str | Path, validation_dir: str | Path, batch_size: int = 32
) -> dict:
    """Compute the baseline of ``artifact`` and write it into the artifact's directory; returns baseline.json."""
    from distracted_driver.model.inference import Classifier

    classifier = Classifier(artifact)
    validation, _ = read_records(validation_dir)
    labels, probabilities, features, skipped = _validation_outputs(classifier, validation, batch_size)
    training, _ = read_records(train_dir)
    statistics, unreadable = _image_statistics([*training, *validation])
    mean, covariance = features.mean(axis=0), np.cov(features, rowvar=False)
    directions, variances = principal_directions(covariance, components=min(MAX_COMPONENTS, len(features) // 4))
    projection = directions / np.sqrt(np.maximum(variances, variances.max() * 1e-12))
    summary = {
        "format": FORMAT,
        "model_file": artifact.served_model_path.name,
        "model_sha256": sha256_file(artifact.served_model_path),
        "validation": {
            "images": int(len(labels)),
            "skipped": len(skipped),
            "predicted_counts": _counts(probabilities.argmax(axis=1)),
            "label_counts": _counts(labels),
            "confidences": _floats(probabilities.max(axis=1)),
        },
        "image_statistics": {
            "measured_on": "channel records as data.convert wrote them",
            "images": len(statistics[STATISTICS[0]]),
            "unreadable": unreadable,
            "values": {name: _floats(values) for name, values in statistics.items()},
        },
        "features": {
            "dimension": int(features.shape[1]),
            "components": int(projection.shape[1]),
            "explained_variance": round(float(variances.sum() / max(np.trace(covariance), 1e-12)), 4),
        },
    }
    arrays = {
        "feature_mean": mean,
        "feature_covariance": covariance.astype(np.float32),
        "projection": projection,
        "validation_projected": ((features - mean) @ projection).astype(np.float32),
    }
    _write_arrays(Path(artifact.directory) / BASELINE_ARRAYS_FILE, arrays)
    write_json_atomic(Path(artifact.directory) / BASELINE_FILE, summary)
    return summary


def principal_directions(covariance: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``components`` eigenvectors of largest eigenvalue ``[F, k]`` (each with a positive largest entry,
    so the same covariance always gives the same directions) and their eigenvalues."""
    components = max(1, min(components, covariance.shape[0]))
    values, vectors = np.linalg.eigh(np.asarray(covariance, dtype=np.float64))
    order = np.argsort(values)[::-1][:components]
    vectors = vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(components)])
    return vectors * signs, np.clip(values[order], 0.0, None)


def load_baseline(artifact: ModelArtifact) -> Baseline:
    """The artifact's baseline; ArtifactError when it has none (trained before monitoring) or it is unreadable."""
    directory = Path(artifact.directory)
    try:
        summary = json.loads((directory / BASELINE_FILE).read_text())
        with np.load(directory / BASELINE_ARRAYS_FILE, allow_pickle=False) as arrays:
            loaded = {
                name: arrays[name]
                for name in ("feature_mean", "feature_covariance", "projection", "validation_projected")
            }
    except FileNotFoundError:
        raise ArtifactError(
            f"model {artifact.version} has no monitoring baseline ({BASELINE_FILE}): it was "
            "trained before monitoring existed; retrain it (inv pipeline.run) to monitor it"
        ) from None
    except (ValueError, KeyError, OSError) as error:
        raise ArtifactError(f"the baseline of model {artifact.version} is unreadable: {error}") from None
    if summary.get("format") != FORMAT:
        raise ArtifactError(
            f"the baseline of model {artifact.version} has format {summary.get('format')!r}, this code reads {FORMAT}"
        )
    return Baseline(
        summary,
        loaded["feature_mean"].astype(np.float64),
        loaded["feature_covariance"].astype(np.float64),
        loaded["projection"].astype(np.float64),
        loaded["validation_projected"].astype(np.float64),
    )


def _validation_outputs(classifier, records: list[Record], batch_size: int):
    labels, probabilities, features, skipped = [], [], [], []
    for batch in decoded_batches(records, classifier.artifact.preprocessing, batch_size):
        skipped.extend(batch.failed)
        if len(batch.labels):
            p, f = classifier.predict_with_features(batch.images)
            labels.append(batch.labels)
            probabilities.append(p)
            features.append(f)
    if len(labels) == 0 or sum(len(x) for x in labels) < 2:
        raise ValueError("the baseline needs at least two decodable validation images")
    return (
        np.concatenate(labels),
        np.concatenate(probabilities).astype(np.float64),
        np.concatenate(features).astype(np.float64),
        skipped,
    )


def _image_statistics(records: list[Record]) -> tuple[dict[str, list[float]], int]:
    """Statistics of at most ``MAX_STATISTIC_IMAGES`` records, evenly spaced; (values per statistic, unreadable)."""
    if len(records) > MAX_STATISTIC_IMAGES:
        chosen = np.linspace(0, len(records) - 1, MAX_STATISTIC_IMAGES).round().astype(int)
        records = [records[i] for i in chosen]

    def measure(record: Record):
        try:
            return image_statistics(decode_image(record.payload))
        except ImageError:
            return None

    with ThreadPoolExecutor(cpu_count()) as pool:
        measured = list(pool.map(measure, records))
    values = {name: [m[name] for m in measured if m is not None] for name in STATISTICS}
    return values, sum(m is None for m in measured)


def _counts(indices) -> dict[str, int]:
    counts = np.bincount(np.asarray(indices, dtype=np.int64), minlength=len(CLASSES))
    return {name: int(counts[i]) for i, name in enumerate(CLASSES)}


def _floats(values) -> list[float]:
    # Not rounded: a captured value compared with its rounded twin would differ by the rounding.
    return [float(v) for v in values]


def _write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())
