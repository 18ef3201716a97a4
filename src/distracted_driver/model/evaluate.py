"""Validation metrics as Kaggle scores them, their plots, and re-evaluation of an artifact with ONNX Runtime.

No torch here: ``inv train.evaluate`` and the quality gate run on a serving install.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distracted_driver.data.channel import Record, decoded_batches, read_records
from distracted_driver.data.layout import CLASSES
from distracted_driver.fsutil import atomic_path, write_json_atomic
from distracted_driver.model.artifact import ModelArtifact, NotProbabilities, probability_problem
from distracted_driver.model.cache import fetch_artifact
from distracted_driver.model.inference import Classifier
from distracted_driver.storage import open_storage

EPS = 1e-15
UNIFORM_LOG_LOSS = math.log(len(CLASSES))


def log_loss(labels, probabilities, eps: float = EPS) -> float:
    """Multi-class log loss as Kaggle scores State Farm: clip to [eps, 1-eps], renormalise rows, mean -ln p(true)."""
    labels = np.asarray(labels, dtype=np.int64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    p /= p.sum(axis=1, keepdims=True)
    if len(labels) == 0:
        raise ValueError("log loss of an empty set is undefined")
    return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))


def confusion_matrix(labels, predicted, num_classes: int = len(CLASSES)) -> np.ndarray:
    """``matrix[true, predicted]`` counts."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def classification_metrics(labels, probabilities) -> dict:
    """Log loss, accuracy, per-class precision/recall/support and the confusion matrix, JSON-ready."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities)
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted)
    per_class = {}
    for i, name in enumerate(CLASSES):
        predicted_i, actual_i = matrix[:, i].sum(), matrix[i, :].sum()
        per_class[name] = {
            "precision": float(matrix[i, i] / predicted_i) if predicted_i else 0.0,
            "recall": float(matrix[i, i] / actual_i) if actual_i else 0.0,
            "support": int(actual_i),
        }
    return {
        "log_loss": log_loss(labels, probabilities),
        "accuracy": float((predicted == labels).mean()),
        "examples": int(len(labels)),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def _pyplot():
    import matplotlib  # pyplot takes about a second and picks a backend: loaded only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pyplot takes about a second and picks a backend: loaded only to draw

    return plt


def plot_confusion_matrix(matrix, path: str | Path, title: str = "Validation confusion matrix") -> Path:
    plt = _pyplot()
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(CLASSES)), CLASSES)
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_training_curves(history: list[dict], path: str | Path) -> Path:
    """Loss and accuracy per epoch for training and validation."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    loss_ax.plot(epochs, [h["val_log_loss"] for h in history], label="validation")
    loss_ax.axhline(UNIFORM_LOG_LOSS, color="grey", linestyle=":", label="uniform ln 10")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("log loss")
    loss_ax.legend()
    acc_ax.plot(epochs, [h["train_accuracy"] for h in history], label="train")
    acc_ax.plot(epochs, [h["val_accuracy"] for h in history], label="validation")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(0, 1.02)
    acc_ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


@dataclass
class Predictions:
    """A model's answers on a channel, one row per usable record, in channel order."""

    labels: np.ndarray  # int64 [n]
    probabilities: np.ndarray  # float32 [n, 10]
    records: list[Record]  # the records the rows belong to (their JPEG bytes are what was scored)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (record, reason)


def predict_channel(
    artifact: ModelArtifact, channel_dir: str | Path, batch_size: int = 8, progress: bool = True
) -> Predictions:
    """Run the artifact's served model on every image of a channel, exactly as a model server would.

    The ``Classifier`` is the model server's own, over ``artifact.served_model_path``, and pixels are
    prepared only as the artifact's ``preprocess.json`` says. Raises ``NotProbabilities`` when the
    outputs are not probability rows (a missing softmax, NaNs), so no metric is computed from them.

    Batches of 8: EfficientNet-Lite0 takes about 30 MB of activations per image in a run, so 32 peaked
    at 1 GB more, for no speed (``serve.batch_predict.DEFAULT_BATCH_SIZE``).
    """
    result = predict_precisions(artifact, channel_dir, [artifact.served_precision], batch_size, progress)
    predictions = result[artifact.served_precision]
    if isinstance(predictions, NotProbabilities):
        raise predictions
    return predictions


def predict_precisions(
    artifact: ModelArtifact, channel_dir: str | Path, precisions: list[str], batch_size: int = 32, progress: bool = True
) -> dict[str, Predictions | NotProbabilities]:
    """``predict_channel`` for each of the artifact's models in ``precisions`` (fp32, int8), decoding each image once.

    A model whose outputs are not probabilities gets its ``NotProbabilities`` error instead of predictions.
    """
    classifiers = {precision: Classifier(artifact.serving_as(precision)) for precision in precisions}
    records, skipped = read_records(channel_dir)
    by_source = {record.source: record for record in records}
    labels, used = [], []
    rows: dict[str, list[np.ndarray]] = {precision: [] for precision in precisions}
    with tqdm(total=len(records), unit="img", desc="evaluate", disable=not progress) as bar:
        for batch in decoded_batches(records, artifact.preprocessing, batch_size):
            skipped.extend(batch.failed)
            if len(batch.labels):
                for precision, classifier in classifiers.items():
                    rows[precision].append(classifier.predict(batch.images))
                labels.append(batch.labels)
                used.extend(by_source[source] for source in batch.sources)
            bar.update(len(batch.labels) + len(batch.failed))
    if not labels:
        raise ValueError(f"no usable image in {channel_dir}")
    labels = np.concatenate(labels)
    results: dict[str, Predictions | NotProbabilities] = {}
    for precision, classifier in classifiers.items():
        probabilities = np.concatenate(rows[precision])
        problem = probability_problem(probabilities)
        name = classifier.artifact.served_model_path.name
        results[precision] = (
            NotProbabilities(f"the outputs of {name} are not probabilities: {problem}")
            if problem
            else Predictions(labels, probabilities, used, list(skipped))
        )
    return results


def evaluate_artifact(artifact: ModelArtifact, channel_dir: str | Path, progress: bool = True) -> dict:
    """Metrics of an artifact's served model on a channel, plus what was skipped and how long it took."""
    start = time.perf_counter()
    predictions = predict_channel(artifact, channel_dir, progress=progress)
    return metrics_of(predictions, time.perf_counter() - start)


def evaluate_precisions(artifact: ModelArtifact, channel_dir: str | Path, progress: bool = True) -> dict[str, dict]:
    """``evaluate_artifact`` for every model the artifact holds (fp32, int8): precision → metrics.

    A model whose outputs are not probabilities gets ``{"problem": reason}`` instead of metrics.
    """
    start = time.perf_counter()
    results = predict_precisions(artifact, channel_dir, artifact.precisions, progress=progress)
    seconds = time.perf_counter() - start
    return {
        precision: {"problem": str(result)} if isinstance(result, NotProbabilities) else metrics_of(result, seconds)
        for precision, result in results.items()
    }


def precision_summary(by_precision: dict[str, dict]) -> dict[str, dict]:
    """The headline scores of each precision, as ``metrics.json`` and the registry keep them."""
    return {
        precision: (
            {"problem": metrics["problem"]}
            if "problem" in metrics
            else {"log_loss": metrics["log_loss"], "accuracy": metrics["accuracy"], "examples": metrics["examples"]}
        )
        for precision, metrics in by_precision.items()
    }


def metrics_of(predictions: Predictions, seconds: float | None = None) -> dict:
    """``classification_metrics`` of the predictions, with the skipped records (and the time taken)."""
    metrics = classification_metrics(predictions.labels, predictions.probabilities)
    metrics["skipped"] = [{"record": source, "reason": reason} for source, reason in predictions.skipped]
    if seconds is not None:
        metrics["seconds"] = round(seconds, 3)
    return metrics


def write_report(report_dir: str | Path, metrics: dict, history: list[dict] | None) -> dict[str, Path]:
    """``metrics.json``, ``confusion_matrix.png`` and (with a history) ``training_curves.png`` in ``report_dir``."""
    report_dir = Path(report_dir)
    paths = {"metrics": report_dir / "metrics.json", "confusion_matrix": report_dir / "confusion_matrix.png"}
    write_json_atomic(paths["metrics"], metrics)
    plot_confusion_matrix(metrics["confusion_matrix"], paths["confusion_matrix"])
    if history:
        paths["training_curves"] = plot_training_curves(history, report_dir / "training_curves.png")
    return paths


def evaluate_model(settings, model: str = "latest", report_dir: str | Path | None = None, progress: bool = True):
    """Re-evaluate a stored model on the bucket's validation channel; write the report.

    Returns ``(job, metrics, paths)``; the report goes to ``reports/models/<job>/`` unless
    ``report_dir`` is given. The training curves come from the history inside the artifact.
    """
    storage = open_storage(settings)
    artifact = fetch_artifact(settings, model, storage)
    job = artifact.version
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="evaluate-") as tmp:
        prefix = f"{settings.data_prefix}/validation"
        if not storage.download_prefix(prefix, tmp):
            raise FileNotFoundError(f"no validation channel at {storage.uri(prefix)}; upload the data first")
        by_precision = evaluate_precisions(artifact, tmp, progress=progress)
    metrics = served_metrics(artifact, by_precision)
    metrics["model_version"] = job
    metrics["data_manifest_sha256"] = storage.checksum(f"{settings.data_prefix}/manifest.json")
    report_dir = Path(report_dir) if report_dir else settings.root / "reports" / "models" / job
    paths = write_report(report_dir, metrics, artifact.metrics.get("history"))
    return job, metrics, paths


def served_metrics(artifact: ModelArtifact, by_precision: dict[str, dict]) -> dict:
    """The served model's metrics, with the served precision and every precision's headline scores.

    Raises ``NotProbabilities`` when the served model's outputs are not probabilities."""
    served = by_precision[artifact.served_precision]
    if "problem" in served:
        raise NotProbabilities(served["problem"])
    return {**served, "served_precision": artifact.served_precision, "by_precision": precision_summary(by_precision)}


def report_lines(job: str, metrics: dict, paths: dict) -> list[str]:
    """``inv train.evaluate``: the model, its summary, and where each file of the report went."""
    summary = [f"  {line}" for line in summary_lines(metrics)]
    return [f"model {job}", *summary, *(f"  {name}: {path}" for name, path in paths.items())]


def summary_lines(metrics: dict) -> list[str]:
    """A few lines people read: log loss, accuracy, the precision served, and per-class recall."""
    recall = " ".join(f"{name}:{value['recall']:.2f}" for name, value in metrics["per_class"].items())
    lines = [
        f"validation log loss {metrics['log_loss']:.4f} (uniform guess {UNIFORM_LOG_LOSS:.4f}), "
        f"accuracy {metrics['accuracy']:.3f} on {metrics['examples']} images",
    ]
    if metrics.get("by_precision"):
        scores = ", ".join(
            f"{precision} "
            + (
                f"log loss {value['log_loss']:.4f} accuracy {value['accuracy']:.3f}"
                if "log_loss" in value
                else value["problem"]
            )
            for precision, value in metrics["by_precision"].items()
        )
        lines.append(f"serves {metrics['served_precision']} ({scores})")
    lines.append(f"recall per class: {recall}")
    return lines
