"""Training images/s in both modes on the same images, and batch prediction against a bare ONNX Runtime loop.

    .venv/bin/python benchmarks/train_throughput.py [--images 256] [--image-size 224] [--rounds 2]

Images: the first ``--images`` of the default demo sample's train channel (640x480 frames
stored at 341x256 by the converter), the same for every measurement.

- **frozen**: ``train.loop.train_frozen``: decode + preprocess + backbone features
  (once), then head epochs on the cached features. Images/s = images / (feature
  extraction + all head epochs); the head epochs' own rate is printed too.
- **fine-tune**: ``train.loop.train_finetune``, one epoch: decode + augmentation +
  forward + backward + AdamW step, as measured by the loop itself.
- **batch prediction**: ``serve.batch_predict.predict_images`` (D1's: decode pool + batched
  ONNX Runtime) on the same images as JPEG files, against a bare in-process loop (read,
  decode, preprocess and ``session.run`` in batches of the same size, one after the other),
  same model (EfficientNet-Lite0, ImageNet backbone, fresh head), same batch size. Rounds
  alternate the two; each keeps its best. Last line: ``batch_predict_ratio X``
  (predict_images images/s / bare loop images/s).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_channels import sample_channels  # noqa: E402

from distracted_driver.data.channel import read_records  # noqa: E402
from distracted_driver.data.imaging import Preprocessing, decode_image, preprocess  # noqa: E402
from distracted_driver.data.layout import labels_document  # noqa: E402
from distracted_driver.fsutil import write_json_atomic  # noqa: E402
from distracted_driver.model import artifact as contract  # noqa: E402
from distracted_driver.serve.batch_predict import predict_images  # noqa: E402
from distracted_driver.train.export import export_onnx  # noqa: E402
from distracted_driver.train.loop import Checkpoints, TrainConfig, train_finetune, train_frozen  # noqa: E402
from distracted_driver.train.model import build_model  # noqa: E402


def frozen_rate(records, val_records, args) -> tuple[float, float]:
    config = TrainConfig(
        mode="frozen",
        epochs=args.head_epochs,
        patience=args.head_epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
    )
    with tempfile.TemporaryDirectory(prefix="bench-frozen-") as tmp:
        result = train_frozen(config, records, val_records, Checkpoints(tmp, "bench"), "bench", None, lambda _: None)
    head_seconds = sum(h["seconds"] for h in result.history)
    feature_seconds = len(records) / result.feature_images_per_second
    head_rate = len(records) * len(result.history) / head_seconds
    return len(records) / (feature_seconds + head_seconds), head_rate


def finetune_rate(records, val_records, args) -> float:
    config = TrainConfig(
        mode="finetune",
        epochs=1,
        batch_size=args.batch_size,
        image_size=args.image_size,
        augmentation=True,
        learning_rate=3e-4,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        result = train_finetune(config, records, val_records, Checkpoints(tmp, "bench"), lambda _: None)
    return result.history[0]["images_per_second"]


def write_artifact(directory: Path, image_size: int) -> contract.ModelArtifact:
    export_onnx(build_model(seed=0), directory / contract.MODEL_FILE, image_size)
    write_json_atomic(directory / contract.LABELS_FILE, labels_document())
    write_json_atomic(directory / contract.PREPROCESS_FILE, Preprocessing(input_size=image_size).to_dict())
    write_json_atomic(directory / contract.METRICS_FILE, {})
    write_json_atomic(directory / contract.PROVENANCE_FILE, {"model_version": "bench-train-throughput"})
    return contract.load_artifact(directory)


def bare_loop(artifact: contract.ModelArtifact, paths: list[Path], batch_size: int) -> float:
    """Read, decode, preprocess, run: the simplest correct loop, in one thread (ORT uses every core)."""
    session = ort.InferenceSession(str(artifact.model_path), providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        batch = np.stack(
            [
                preprocess(decode_image(p.read_bytes()), artifact.preprocessing)
                for p in paths[start : start + batch_size]
            ]
        )
        session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: batch})
    return len(paths) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--head-epochs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    _, channels = sample_channels()
    records, _ = read_records(channels / "train")
    records = records[: args.images]
    val_records, _ = read_records(channels / "validation")
    val_records = val_records[: args.batch_size]
    print(f"{len(records)} images at {args.image_size}px, batch {args.batch_size}, {os.cpu_count()} cores", flush=True)

    frozen, head = frozen_rate(records, val_records, args)
    print(
        f"frozen backbone: {frozen:.1f} images/s end to end "
        f"(features once, then {args.head_epochs} head epochs at {head:.0f} images/s)",
        flush=True,
    )
    finetune = finetune_rate(records, val_records, args)
    print(f"fine-tuning: {finetune:.1f} images/s per epoch (decode + augment + forward + backward + step)", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        artifact = write_artifact(Path(tmp) / "model", args.image_size)
        paths = []
        for record in records:  # the same images, as the JPEG files batch prediction reads
            path = Path(tmp) / "images" / f"{record.source.replace(':', '_')}.jpg"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(record.payload)
            paths.append(path)
        bare, batched = 0.0, 0.0
        for round_ in range(1, args.rounds + 1):
            bare = max(bare, bare_loop(artifact, paths, args.batch_size))
            result = predict_images(artifact, paths, batch_size=args.batch_size, progress=False)
            assert not result.failed and len(result.names) == len(paths)
            batched = max(batched, result.images_per_second)
            print(
                f"round {round_}: bare loop {bare:.1f} images/s, predict_images {batched:.1f} images/s (best so far)",
                flush=True,
            )
    print(f"frozen {frozen:.1f} finetune {finetune:.1f} images/s; batch prediction {batched:.1f} vs bare {bare:.1f}")
    print(f"batch_predict_ratio {batched / bare:.2f}")


if __name__ == "__main__":
    main()
