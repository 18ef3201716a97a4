"""Batch prediction over a directory of images → Kaggle's ``sample_submission.csv`` format.

Decoding and preprocessing run on a thread pool (OpenCV releases the GIL)
a bounded distance ahead of ONNX Runtime, which takes the inputs in batches;
``predict_directory`` writes each batch's rows to the CSV as it comes, so
memory stays flat whatever the number of images. An image that cannot be
read is listed with the reason and left out of the CSV, never the end of
the job. The CSV is written under a temporary name and renamed when whole.
"""

from __future__ import annotations

import collections
import csv
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from distracted_driver.data.imaging import ImageError
from distracted_driver.data.layout import CLASSES
from distracted_driver.fsutil import atomic_path
from distracted_driver.model.artifact import ModelArtifact
from distracted_driver.model.cache import fetch_artifact
from distracted_driver.model.inference import Classifier
from distracted_driver.system import cpu_count

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Images per ONNX Runtime run. EfficientNet-Lite0 at 224 takes about 30 MB of activations per image
# in the run: batch 32 peaked at 1.0 GB of RSS, batch 8 at 0.35 GB, with the same images/s.
DEFAULT_BATCH_SIZE = 8
Batches = Iterable[tuple[list[str], np.ndarray]]  # (names, probabilities [len(names), 10]) per model run


@dataclass
class BatchResult:
    predicted: int
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    seconds: float = 0.0
    # The rows themselves, when kept in memory (predict_images); predict_directory streams them to its CSV.
    names: list[str] = field(default_factory=list)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, len(CLASSES)), np.float32))

    @property
    def images_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"{self.predicted} images predicted, {len(self.failed)} unreadable, "
            f"{self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
        )


def list_images(directory: str | Path) -> list[Path]:
    """The JPEG/PNG files directly inside ``directory`` (Kaggle's ``imgs/test``), sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no image directory at {directory}")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def iter_predictions(
    classifier: Classifier,
    names: list[str],
    read: Callable[[str], bytes],
    failed: list[tuple[str, str]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    progress: bool = True,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Read, decode and preprocess each name on a pool, run the model in batches; yield each batch's rows in input order.

    Unreadable images are appended to ``failed`` as ``(name, reason)``. At most a few batches of
    inputs are in memory at once.
    """
    cv2.setNumThreads(1)  # the pool is the parallelism; OpenCV's own threads would only oversubscribe

    def prepare(name: str) -> np.ndarray:
        return classifier.prepare(read(name))

    window = batch_size * 2 + (workers or cpu_count())  # how far decoding may run ahead
    with (
        ThreadPoolExecutor(workers or cpu_count(), thread_name_prefix="decode") as pool,
        tqdm(total=len(names), unit="img", disable=not progress, desc="predict") as bar,
    ):
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
                yield batch_names, classifier.predict(np.stack(tensors))
                batch_names, tensors = [], []
            bar.update(1)
        if tensors:
            yield batch_names, classifier.predict(np.stack(tensors))


def predict_payloads(
    classifier: Classifier,
    names: list[str],
    read: Callable[[str], bytes],
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    progress: bool = True,
) -> BatchResult:
    """``iter_predictions`` with every row kept in the result (for a bounded number of images)."""
    started = time.perf_counter()
    failed: list[tuple[str, str]] = []
    done_names: list[str] = []
    rows: list[np.ndarray] = []
    for batch_names, probabilities in iter_predictions(classifier, names, read, failed, batch_size, workers, progress):
        done_names.extend(batch_names)
        rows.append(probabilities)
    probabilities = np.concatenate(rows) if rows else np.zeros((0, len(CLASSES)), np.float32)
    return BatchResult(len(done_names), failed, time.perf_counter() - started, done_names, probabilities)


def _refill(queued: collections.deque, pending, pool: ThreadPoolExecutor, prepare, window: int) -> None:
    while len(queued) < window:
        name = next(pending, None)
        if name is None:
            return
        queued.append((name, pool.submit(prepare, name)))


def predict_images(
    artifact: ModelArtifact,
    paths: Iterable[str | Path],
    batch_size: int = DEFAULT_BATCH_SIZE,
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


def write_rows(batches: Batches, out_csv: str | Path) -> int:
    """``img,c0,…,c9``, one row per predicted image, batch by batch as they come; atomic. Returns the rows written."""
    written = 0
    with atomic_path(out_csv) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["img", *CLASSES])
            for names, probabilities in batches:
                writer.writerows([name, *(f"{p:.6g}" for p in row)] for name, row in zip(names, probabilities))
                written += len(names)
    return written


def write_submission(result: BatchResult, out_csv: str | Path) -> Path:
    """The rows of an in-memory result as a submission CSV, written atomically."""
    write_rows([(result.names, result.probabilities)], out_csv)
    return Path(out_csv)


def predict_directory(
    settings,
    model: str,
    images: str | Path,
    out_csv: str | Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    progress: bool = True,
) -> BatchResult:
    """``inv predict.batch``: fetch the model (job, ``latest`` or ``live``), classify ``images``, stream the CSV.

    The result carries counts and the unreadable images, not the rows: they are in the CSV.
    """
    artifact = fetch_artifact(settings, model)
    directory = Path(images)
    names = [path.name for path in list_images(directory)]
    classifier = Classifier(artifact)
    started = time.perf_counter()
    failed: list[tuple[str, str]] = []
    batches = iter_predictions(
        classifier, names, lambda name: (directory / name).read_bytes(), failed, batch_size, workers, progress
    )
    written = write_rows(batches, out_csv)
    return BatchResult(written, failed, time.perf_counter() - started)
