"""Batch prediction over a directory of images → Kaggle's ``sample_submission.csv`` format.

Decoding and preprocessing run on a thread pool (OpenCV releases the GIL)
a bounded distance ahead of ONNX Runtime, which takes the inputs in batches;
memory stays flat whatever the number of images. An image that cannot be
read is listed with the reason and left out of the CSV, never the end of
the job.
"""

from __future__ import annotations

import collections
import csv
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
from tqdm import tqdm

from distracted_driver.data.imaging import ImageError
from distracted_driver.data.layout import CLASSES
from distracted_driver.fsutil import atomic_path
from distracted_driver.serve.inference import Classifier
from distracted_driver.system import cpu_count
from distracted_driver.train.artifact import ModelArtifact

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class BatchResult:
    names: list[str]
    probabilities: np.ndarray  # [len(names), 10]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return len(self.names) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (f"{len(self.names)} images predicted, {len(self.failed)} unreadable, "
                f"{self.seconds:.1f} s ({self.images_per_second:.1f} images/s)")


def list_images(directory: str | Path) -> list[Path]:
    """The JPEG/PNG files directly inside ``directory`` (Kaggle's ``imgs/test``), sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no image directory at {directory}")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def predict_payloads(
    classifier: Classifier,
    names: list[str],
    read: Callable[[str], bytes],
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> BatchResult:
    """Read, decode and preprocess each name on a pool, run the model in batches, keep input order."""
    cv2.setNumThreads(1)  # the pool is the parallelism; OpenCV's own threads would only oversubscribe
    started = time.perf_counter()
    done_names: list[str] = []
    rows: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []

    def prepare(name: str) -> np.ndarray:
        return classifier.prepare(read(name))

    def run(batch_names: list[str], tensors: list[np.ndarray]) -> None:
        if tensors:
            rows.append(classifier.predict(np.stack(tensors)))
            done_names.extend(batch_names)

    window = batch_size * 2 + (workers or cpu_count())  # how far decoding may run ahead
    with ThreadPoolExecutor(workers or cpu_count(), thread_name_prefix="decode") as pool, \
            tqdm(total=len(names), unit="img", disable=not progress, desc="predict") as bar:
        queued: collections.deque[tuple[str, Future]] = collections.deque()
        pending = iter(names)
        batch_names: list[str] = []
        tensors: list[np.ndarray] = []
        _refill(queued, pending, pool, prepare, window)
        while queued:
            name, future = queued.popleft()
            _refill(queued, pending, pool, prepare, window)
            try:
                tensors.append(future.result())
                batch_names.append(name)
            except (ImageError, OSError) as error:
                failed.append((name, str(error)))
            if len(tensors) == batch_size:
                run(batch_names, tensors)
                batch_names, tensors = [], []
            bar.update(1)
        run(batch_names, tensors)
    probabilities = np.concatenate(rows) if rows else np.zeros((0, len(CLASSES)), np.float32)
    return BatchResult(done_names, probabilities, failed, time.perf_counter() - started)


def _refill(queued: collections.deque, pending, pool: ThreadPoolExecutor, prepare, window: int) -> None:
    while len(queued) < window:
        name = next(pending, None)
        if name is None:
            return
        queued.append((name, pool.submit(prepare, name)))


def predict_images(
    artifact: ModelArtifact,
    paths: Iterable[str | Path],
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> BatchResult:
    """Classify image files; names in the result are the file names (Kaggle's ``img`` column)."""
    by_name = {Path(p).name: Path(p) for p in paths}
    classifier = Classifier(artifact, threads)
    return predict_payloads(
        classifier, list(by_name), lambda name: by_name[name].read_bytes(), batch_size, workers, progress
    )


def write_submission(result: BatchResult, out_csv: str | Path) -> Path:
    """``img,c0,…,c9``, one row per predicted image, written atomically."""
    with atomic_path(out_csv) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["img", *CLASSES])
            for name, row in zip(result.names, result.probabilities):
                writer.writerow([name, *(f"{p:.6g}" for p in row)])
    return Path(out_csv)


def predict_directory(
    settings,
    model: str,
    images: str | Path,
    out_csv: str | Path,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> BatchResult:
    """``inv predict.batch``: fetch the model (job, ``latest`` or ``live``), classify ``images``, write the CSV."""
    from distracted_driver.serve.model_cache import fetch_artifact

    artifact = fetch_artifact(settings, model)
    result = predict_images(artifact, list_images(images), batch_size, workers, progress)
    write_submission(result, out_csv)
    return result
