"""The training job as SageMaker's script mode runs it: channels in, artifact files out.

Inputs and outputs come from the ``SM_*`` environment (or the equivalent flags):
``SM_CHANNEL_TRAIN`` and ``SM_CHANNEL_VALIDATION`` hold ``.rec`` + ``.idx`` files;
the unpacked artifact goes to ``SM_MODEL_DIR`` (SageMaker tars that directory into
``model.tar.gz`` itself; the local runner does the same with ``pack_artifact``);
the history and plots go to ``SM_OUTPUT_DATA_DIR``; checkpoints to
``SM_CHECKPOINT_DIR`` (or ``/opt/ml/checkpoints`` when it exists, SageMaker's
default local checkpoint path). Hyperparameters arrive as ``--name value`` flags,
booleans spelled ``true``/``false`` as SageMaker passes them. On failure the reason
is written to ``<output>/failure``, where SageMaker looks for it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import torch

from distracted_driver.config import DEFAULT_INT8_TOLERANCE, Tolerance, ToleranceError
from distracted_driver.data.channel import decoded_batches, read_records, record_files
from distracted_driver.data.layout import labels_document
from distracted_driver.fsutil import write_bytes_atomic, write_json_atomic
from distracted_driver.hashing import code_version, sha256_file, sha256_json
from distracted_driver.model import artifact as artifact_files
from distracted_driver.model.artifact import NotProbabilities
from distracted_driver.model.evaluate import evaluate_precisions, precision_summary, served_metrics, write_report
from distracted_driver.model.precision import FP32, INT8, choose_from_scores, serving_record
from distracted_driver.system import cpu_count
from distracted_driver.train.baseline import record_baseline
from distracted_driver.train.export import CALIBRATION_BATCH, CALIBRATION_IMAGES, OPSET, export_onnx, quantize_int8
from distracted_driver.train.loop import Checkpoints, TrainConfig, train_finetune, train_frozen
from distracted_driver.train.model import pretrained_weights_path

DEFAULT_LEARNING_RATE = {"frozen": 3e-3, "finetune": 3e-4}
SAGEMAKER_CHECKPOINTS = Path("/opt/ml/checkpoints")
REQUIRED_INPUTS = {
    "train": "SM_CHANNEL_TRAIN",
    "validation": "SM_CHANNEL_VALIDATION",
    "model_dir": "SM_MODEL_DIR",
    "output_data_dir": "SM_OUTPUT_DATA_DIR",
}
# Validation log loss of the exported ONNX model and of the PyTorch model it came from
# must agree this closely when both ran in float32 on the CPU (frozen backbone).
EXPORT_AGREEMENT = 1e-3


def _bool(value: str) -> bool:
    lowered = str(value).strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def _tolerance(value: str) -> str:
    try:
        return str(Tolerance.parse(value))
    except ToleranceError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _env_path(name: str) -> str | None:
    return os.environ.get(name) or None


def _default_job_name() -> str:
    try:
        job = json.loads(os.environ.get("SM_TRAINING_ENV", "{}")).get("job_name")
    except json.JSONDecodeError:
        job = None
    return job or os.environ.get("TRAINING_JOB_NAME") or datetime.now(UTC).strftime("local-%Y%m%d-%H%M%S")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the distracted-driver classifier (SageMaker script mode).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hp = parser.add_argument_group("hyperparameters")
    hp.add_argument("--epochs", type=int, default=40, help="maximum number of epochs")
    hp.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="AdamW learning rate (default 3e-3 with a frozen backbone, 3e-4 when fine-tuning)",
    )
    hp.add_argument("--mini-batch-size", type=int, default=32, help="images per step")
    hp.add_argument("--image-size", type=int, default=224, help="network input size S (images resized to SxS)")
    hp.add_argument(
        "--jpeg-dct-scaling",
        type=_bool,
        default=True,
        help="decode JPEGs at the smallest DCT scale (1/8, 1/4, 1/2) that keeps both edges >= S, "
        "then resize (recorded in preprocess.json; false: full-size decode)",
    )
    hp.add_argument(
        "--freeze-backbone",
        type=_bool,
        default=True,
        help="true: compute backbone features once and train the head (fast on CPUs); false: fine-tune every weight",
    )
    hp.add_argument(
        "--augmentation",
        type=_bool,
        default=None,
        help="random rotation/scale/shift/brightness while fine-tuning (default: on when fine-tuning)",
    )
    hp.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    hp.add_argument(
        "--patience", type=int, default=5, help="stop after this many epochs without a better validation log loss"
    )
    hp.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    hp.add_argument("--dropout", type=float, default=0.2, help="dropout before the classifier")
    hp.add_argument("--pretrained", type=_bool, default=True, help="start from the ImageNet weights (false: random)")
    hp.add_argument("--workers", type=int, default=0, help="image decoding threads (0: all cores)")
    hp.add_argument(
        "--int8-tolerance",
        type=_tolerance,
        default=DEFAULT_INT8_TOLERANCE,
        help="serve the int8 model when its validation log loss is at most fp32's plus the largest of "
        "these terms (a number: absolute; n%%: relative to fp32's); a negative number keeps fp32 "
        "[DD_INT8_TOLERANCE]",
    )
    hp.add_argument("--data-manifest-sha256", default="", help="hash of the data manifest, recorded in provenance")
    hp.add_argument(
        "--code-version",
        default="",
        help="code version recorded in provenance (default: the git commit, which a container lacks)",
    )
    job = parser.add_argument_group("job")
    job.add_argument("--job-name", default=_default_job_name(), help="the model version recorded in provenance")
    job.add_argument(
        "--resume",
        type=_bool,
        default=True,
        help="continue from the checkpoint in the checkpoint directory when there is one",
    )
    job.add_argument("--train", default=_env_path("SM_CHANNEL_TRAIN"), help="train channel [SM_CHANNEL_TRAIN]")
    job.add_argument(
        "--validation", default=_env_path("SM_CHANNEL_VALIDATION"), help="validation channel [SM_CHANNEL_VALIDATION]"
    )
    job.add_argument("--model-dir", default=_env_path("SM_MODEL_DIR"), help="artifact output [SM_MODEL_DIR]")
    job.add_argument(
        "--output-data-dir", default=_env_path("SM_OUTPUT_DATA_DIR"), help="history and plots [SM_OUTPUT_DATA_DIR]"
    )
    job.add_argument(
        "--checkpoint-dir",
        default=None,
        help="[SM_CHECKPOINT_DIR, else /opt/ml/checkpoints when present, else <output>/checkpoints]",
    )
    job.add_argument(
        "--feature-cache-dir",
        default=None,
        help="where frozen-backbone features are cached (default <checkpoint dir>/features)",
    )
    job.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    # SageMaker may pass hyperparameters the script does not know (e.g. its own sagemaker_* ones).
    args, unknown = parser.parse_known_args(argv)
    for name, env in REQUIRED_INPUTS.items():
        if not getattr(args, name):
            parser.error(f"--{name.replace('_', '-')} is required (or the environment variable {env})")
    if unknown:
        print(f"ignoring unknown arguments: {' '.join(unknown)}", flush=True)
    if args.checkpoint_dir is None:
        env = _env_path("SM_CHECKPOINT_DIR")
        default = (
            SAGEMAKER_CHECKPOINTS if SAGEMAKER_CHECKPOINTS.is_dir() else Path(args.output_data_dir) / "checkpoints"
        )
        args.checkpoint_dir = env or str(default)
    if args.feature_cache_dir is None:
        args.feature_cache_dir = str(Path(args.checkpoint_dir) / "features")
    return args


def _log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def _channel_hashes(channel_dir: str) -> dict[str, str]:
    return {path.name: sha256_file(path) for pair in record_files(channel_dir) for path in pair}


def _config(args: argparse.Namespace):

    mode = "frozen" if args.freeze_backbone else "finetune"
    augmentation = (mode == "finetune") if args.augmentation is None else args.augmentation
    if augmentation and mode == "frozen":
        _log("augmentation is not used with a frozen backbone: its features are computed once")
        augmentation = False
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return TrainConfig(
        mode=mode,
        epochs=args.epochs,
        learning_rate=args.learning_rate or DEFAULT_LEARNING_RATE[mode],
        batch_size=args.mini_batch_size,
        image_size=args.image_size,
        jpeg_dct_scaling=args.jpeg_dct_scaling,
        augmentation=augmentation,
        seed=args.seed,
        patience=args.patience,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        pretrained=args.pretrained,
        workers=args.workers,
        device=device,
    )


def run(args: argparse.Namespace) -> dict:
    """Train, export, evaluate the export on the validation channel, write the artifact files. Returns the metrics."""

    job_started = time.perf_counter()
    torch.set_num_threads(cpu_count())
    config = _config(args)
    _log(f"job {args.job_name}: {config.mode} backbone, device {config.device}, {torch.get_num_threads()} threads")

    started = time.perf_counter()
    channels = {"train": _channel_hashes(args.train), "validation": _channel_hashes(args.validation)}
    train_records, skipped_train = read_records(args.train)
    val_records, skipped_val = read_records(args.validation)
    if not train_records or not val_records:
        raise ValueError(f"empty channel: {len(train_records)} train and {len(val_records)} validation records")
    read_seconds = time.perf_counter() - started
    _log(
        f"read {len(train_records)} train and {len(val_records)} validation records "
        f"({len(skipped_train) + len(skipped_val)} unreadable) in {read_seconds:.1f}s"
    )

    data_fingerprint = sha256_json(channels)
    torch.manual_seed(config.seed)
    checkpoints = Checkpoints(args.checkpoint_dir, config.fingerprint(data_fingerprint))
    if not args.resume and checkpoints.path.exists():
        checkpoints.path.unlink()
    if config.mode == "frozen":
        result = train_frozen(
            config, train_records, val_records, checkpoints, data_fingerprint, args.feature_cache_dir, _log
        )
    else:
        result = train_finetune(config, train_records, val_records, checkpoints, _log)
    best = result.history[result.best_epoch - 1] if result.best_epoch else result.history[-1]
    _log(f"best epoch {result.best_epoch}: val_log_loss={best['val_log_loss']:.4f} val_acc={best['val_accuracy']:.3f}")

    model_dir = Path(args.model_dir)
    started = time.perf_counter()
    export_onnx(result.model, model_dir / artifact_files.MODEL_FILE, config.image_size)
    export_seconds = time.perf_counter() - started
    started = time.perf_counter()
    quantization = _quantize(model_dir, train_records, config.preprocessing)
    quantize_seconds = time.perf_counter() - started
    write_json_atomic(model_dir / artifact_files.LABELS_FILE, labels_document())
    write_json_atomic(model_dir / artifact_files.PREPROCESS_FILE, config.preprocessing.to_dict())

    provenance = {
        "model_version": args.job_name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": args.code_version or code_version(),
        "data_manifest_sha256": args.data_manifest_sha256 or None,
        "channels": channels,
        "hyperparameters": {
            k: v
            for k, v in sorted(vars(args).items())
            if k
            not in (
                "train",
                "validation",
                "model_dir",
                "output_data_dir",
                "checkpoint_dir",
                "feature_cache_dir",
                "job_name",
                "code_version",
                "data_manifest_sha256",
            )
        },
        "training": {**{k: v for k, v in vars(config).items()}, "resumed_from_epoch": result.resumed_from_epoch},
        "base_weights": {"file": Path(_weights_path()).name, "sha256": sha256_file(_weights_path())}
        if config.pretrained
        else None,
        "framework": {"torch": torch.__version__, "python": platform.python_version(), "onnx_opset": _opset()},
    }
    # The artifact's own numbers come from the exported ONNX models, exactly as a consumer will run them.
    started = time.perf_counter()
    exported = artifact_files.ModelArtifact(model_dir, labels_document(), config.preprocessing, {}, provenance)
    by_precision = _evaluate_both(exported, args.validation, quantization)
    evaluate_seconds = time.perf_counter() - started
    fp32 = by_precision[FP32]
    gap = abs(fp32["log_loss"] - best["val_log_loss"])
    _log(
        f"exported ONNX model on validation: log_loss={fp32['log_loss']:.4f} accuracy={fp32['accuracy']:.3f} "
        f"(PyTorch {best['val_log_loss']:.4f})"
    )
    if config.mode == "frozen" and config.device == "cpu" and gap > EXPORT_AGREEMENT:
        raise RuntimeError(f"the exported model's validation log loss differs from PyTorch's by {gap:.2e}")
    serving = _choose_precision(by_precision, Tolerance.parse(args.int8_tolerance), quantization)
    write_json_atomic(model_dir / artifact_files.SERVING_FILE, serving)
    served = artifact_files.ModelArtifact(model_dir, labels_document(), config.preprocessing, {}, provenance, serving)
    metrics = served_metrics(served, by_precision)
    _log(f"serving {serving['reason']}")
    started = time.perf_counter()
    baseline = record_baseline(served, args.train, args.validation)  # on the file the endpoint will run
    baseline_seconds = time.perf_counter() - started
    _log(
        f"monitoring baseline: {baseline['validation']['images']} validation images, image statistics of "
        f"{baseline['image_statistics']['images']}, {baseline['features']['components']} feature directions "
        f"({baseline['features']['explained_variance']:.0%} of the variance) in {baseline_seconds:.1f}s"
    )

    metrics.update(
        {
            "mode": config.mode,
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "train_examples": len(train_records),
            "skipped_records": [{"record": s, "reason": r} for s, r in skipped_train + skipped_val + result.skipped],
            "history": result.history,
        }
    )
    timings = {
        "read_seconds": read_seconds,
        **result.timings,
        "export_seconds": export_seconds,
        "quantize_seconds": quantize_seconds,
        "evaluate_seconds": evaluate_seconds,
        "baseline_seconds": baseline_seconds,
        "total_seconds": time.perf_counter() - job_started,
    }
    if result.feature_images_per_second:
        timings["feature_images_per_second"] = result.feature_images_per_second
    provenance["timings"] = {k: round(v, 3) for k, v in timings.items()}
    write_json_atomic(model_dir / artifact_files.METRICS_FILE, metrics)
    write_json_atomic(model_dir / artifact_files.PROVENANCE_FILE, provenance)
    artifact_files.load_artifact(model_dir)

    output_dir = Path(args.output_data_dir)
    write_json_atomic(output_dir / "history.json", result.history)
    paths = write_report(output_dir, metrics, result.history)
    _log(f"artifact files in {model_dir}; plots {', '.join(str(p) for k, p in paths.items() if k != 'metrics')}")
    _log(f"done in {timings['total_seconds']:.1f}s")
    return metrics


def _quantize(model_dir: Path, train_records: list, preprocessing) -> dict:
    """Write ``model.int8.onnx`` calibrated on training images; how it was made, or why there is none."""
    count = min(CALIBRATION_IMAGES, len(train_records))
    # Spread over the whole channel (the converter writes it driver by driver, class by class).
    chosen = [train_records[i * len(train_records) // count] for i in range(count)]
    batches = (batch.images for batch in decoded_batches(chosen, preprocessing, CALIBRATION_BATCH) if len(batch.labels))
    try:
        quantization = quantize_int8(
            model_dir / artifact_files.MODEL_FILE, model_dir / artifact_files.INT8_MODEL_FILE, batches
        )
    except Exception as error:  # noqa: BLE001 - no int8 model is a result (fp32 is served), not a failed job
        _log(f"no int8 model: quantization failed: {type(error).__name__}: {error}")
        return {"problem": f"quantization failed: {type(error).__name__}: {error}"}
    _log(f"int8 model quantized ({quantization['calibration_images']} training images for calibration)")
    return quantization


def _evaluate_both(exported, validation: str, quantization: dict) -> dict[str, dict]:
    """Validation metrics of every model in the artifact; the fp32 model's outputs must be probabilities."""
    by_precision = evaluate_precisions(exported, validation, progress=False)
    if "problem" in by_precision[FP32]:
        raise NotProbabilities(by_precision[FP32]["problem"])
    if INT8 not in by_precision and "problem" in quantization:
        by_precision[INT8] = {"problem": quantization["problem"]}
    for precision, metrics in by_precision.items():
        if "problem" in metrics:
            _log(f"{precision} model on validation: {metrics['problem']}")
        else:
            _log(
                f"{precision} model on validation: log_loss={metrics['log_loss']:.4f} accuracy={metrics['accuracy']:.3f}"
            )
    return by_precision


def _choose_precision(by_precision: dict[str, dict], tolerance: Tolerance, quantization: dict) -> dict:
    """``serving.json``: the precision the rule picks from these scores, the scores and the tolerance."""
    scores = precision_summary(by_precision)
    return serving_record(
        choose_from_scores(scores, tolerance), tolerance, scores, chosen_by="training job", quantization=quantization
    )


def _weights_path() -> str:
    return pretrained_weights_path()


def _opset() -> int:
    return OPSET


def failure_file(args: argparse.Namespace) -> Path:
    """Where SageMaker reads a failed job's reason: ``/opt/ml/output/failure``."""
    output = os.environ.get("SM_OUTPUT_DIR")
    return Path(output) / "failure" if output else Path(args.output_data_dir).parent / "failure"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except Exception as error:  # noqa: BLE001 - the job's last word: reason to the failure file, exit 1
        traceback.print_exc()
        reason = f"{type(error).__name__}: {error}"
        write_bytes_atomic(failure_file(args), reason.encode())
        print(f"training failed: {reason}", file=sys.stderr, flush=True)
        return 1
    return 0
