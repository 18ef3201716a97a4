"""Batch prediction on either backend: ``inv predict.batch`` here (``serve.batch_predict``, ONNX Runtime on
this machine) or on SageMaker Batch Transform (``hosting.batch_transform``), chosen by the settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from distracted_driver.config import Settings
from distracted_driver.serve.batch_predict import predict_directory


@dataclass(frozen=True)
class BatchOptions:
    batch_size: int = 8  # local: images per ONNX Runtime run
    workers: int = 0  # local: decode threads (0: all cores); aws: threads moving images (0: 16)
    instances: int = 1  # aws: the transform job's instances
    instance_type: str | None = None  # aws: None for the serving type, or the next size Batch Transform offers
    max_concurrent: int = 8  # aws: MaxConcurrentTransforms
    max_payload_mb: int = 6  # aws: MaxPayloadInMB


@dataclass
class BatchOutcome:
    lines: list[str] = field(default_factory=list)  # what was done, each skipped image with its reason
    error: str = ""  # set when the job did not give every image an answer or a reason


def predict_batch(
    settings: Settings, model: str, images: str | Path, out_csv: str | Path, options: BatchOptions = BatchOptions()
) -> BatchOutcome:
    """Classify ``images`` with ``model`` into a Kaggle submission CSV, on the settings' backend."""
    if settings.backend == "aws":
        # boto3's clients: the aws extra's, imported only when Batch Transform is chosen.
        from distracted_driver.hosting.batch_transform import TransformOptions, run_batch_transform

        transform = TransformOptions(
            options.instances,
            options.instance_type,
            options.max_concurrent,
            options.max_payload_mb,
            workers=options.workers or 16,
        )
        result = run_batch_transform(settings, model, images, out_csv, transform)
        lines = [f"{result.summary()} -> {out_csv}"] + [f"  {note}" for note in result.notes]
        return BatchOutcome(lines + _skipped(result.batch.failed), result.error)
    result = predict_directory(settings, model, images, out_csv, options.batch_size, options.workers or None)
    return BatchOutcome([f"{result.summary()} -> {out_csv}"] + _skipped(result.failed))


def _skipped(failed: list[tuple[str, str]]) -> list[str]:
    return [f"  skipped {name}: {reason}" for name, reason in failed]
