"""Sample data in the exact State Farm layout, drawn procedurally (see ``cabin``).

    <out>/imgs/train/c0..c9/img_<n>.jpg   640x480 JPEG
    <out>/imgs/test/img_<n>.jpg
    <out>/driver_imgs_list.csv            subject,classname,img
    <out>/sample_submission.csv           img,c0,...,c9 (uniform 0.1)

Everything is a pure function of the options: the same seed gives the same
bytes, whatever the number of worker processes. Image numbers are derived
from the driver number, so batches made for different drivers
(``first_driver``) never reuse a file name, and the whole tree is written in
a temporary directory that is renamed into place at the end, so an
interrupted run leaves nothing that looks complete.

``kaggle_size(scale)`` gives the competition's own counts (its class balance,
its test-set size) for ``benchmarks/kaggle_scale.py``.
"""

from __future__ import annotations

import csv
import functools
import io
import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from distracted_driver.data import cabin
from distracted_driver.data.layout import (
    CLASSES,
    DRIVER_LIST,
    DRIVER_LIST_HEADER,
    SAMPLE_SUBMISSION,
    TEST_DIR,
    TRAIN_DIR,
)
from distracted_driver.system import cpu_count

# The 26 subjects of the Kaggle training set; the default sample uses their names.
KAGGLE_SUBJECTS = (
    2,
    12,
    14,
    15,
    16,
    21,
    22,
    24,
    26,
    35,
    39,
    41,
    42,
    45,
    47,
    49,
    50,
    51,
    52,
    56,
    61,
    64,
    66,
    72,
    75,
    81,
)
# Kaggle's State Farm data: training images per class c0..c9 (22,424 over 26 drivers) and test images.
KAGGLE_CLASS_COUNTS = (2489, 2267, 2317, 2346, 2326, 2312, 2325, 2002, 1911, 2129)
KAGGLE_TEST_IMAGES = 79_726
# Each driver owns the image numbers [n * SLOTS, (n + 1) * SLOTS): the lower half
# for its training images, the upper half for test images: those of a batch that
# starts at that driver, continuing into the upper halves of the batch's next
# drivers when there are more. So batches for other drivers never collide.
SLOTS = 10_000
MAX_IMAGES_PER_CLASS_DRIVER = SLOTS // 2 // len(CLASSES)
TEST_SLOTS = SLOTS // 2  # test images per driver of the batch
MAX_TEST_IMAGES = TEST_SLOTS  # of a one-driver batch; a batch of N drivers may have N times as many
TEST_DRIVERS = 4  # unseen drivers behind the unlabelled test images
JPEG_QUALITY = 90
TEST_CHUNK = 200  # test images per task of a worker process


class SampleError(ValueError):
    """The options cannot produce a sample, or the output directory is not ours to replace."""


@dataclass
class SampleReport:
    out_dir: Path
    subjects: list[str]
    train_images: int
    test_images: int
    bytes: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.train_images} train images of {len(self.subjects)} drivers "
            f"({self.subjects[0]}..{self.subjects[-1]}), {self.test_images} test images, "
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s -> {self.out_dir}"
        )


def kaggle_size(scale: float = 1.0) -> tuple[tuple[int, ...], int]:
    """(training images per class, test images) of the Kaggle competition times ``scale``, each at least 1."""
    if not scale > 0:
        raise SampleError(f"scale must be positive, not {scale}")
    return tuple(max(1, round(n * scale)) for n in KAGGLE_CLASS_COUNTS), max(1, round(KAGGLE_TEST_IMAGES * scale))


def per_driver_counts(class_counts, drivers: int) -> list[list[int]]:
    """``counts[driver][class]``: each class's images spread over the drivers as evenly as possible.

    The images left over after an even share go round the drivers, each class continuing where
    the previous one stopped, so drivers' totals differ by one at most.
    """
    counts = [[0] * len(CLASSES) for _ in range(drivers)]
    turn = 0
    for class_i, total in enumerate(class_counts):
        base, extra = divmod(int(total), drivers)
        for j in range(drivers):
            counts[j][class_i] = base + (1 if (j - turn) % drivers < extra else 0)
        turn = (turn + extra) % drivers
    return counts


def driver_numbers(drivers: int, first_driver: int | None = None) -> list[int]:
    """Kaggle's subject numbers by default, else ``first_driver``, ``first_driver + 1``, ..."""
    if drivers < 1:
        raise SampleError("drivers must be at least 1")
    if first_driver is None:
        extra = range(KAGGLE_SUBJECTS[-1] + 1, KAGGLE_SUBJECTS[-1] + 1 + max(0, drivers - len(KAGGLE_SUBJECTS)))
        return [*KAGGLE_SUBJECTS, *extra][:drivers]
    if first_driver < 0:
        raise SampleError("first_driver must not be negative")
    return list(range(first_driver, first_driver + drivers))


def subject_name(number: int) -> str:
    return f"p{number:03d}"


def _train_numbers(driver: int, count: int, seed: int) -> np.ndarray:
    """This driver's image numbers, shuffled so that a number does not reveal the class."""
    slots = np.random.default_rng([seed, driver, 1]).permutation(SLOTS // 2)[:count]
    return driver * SLOTS + slots


def _encode(frame: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR frame
        raise RuntimeError("JPEG encoding failed")
    return buffer.tobytes()


def _look(seed: int, stream: int, number: int, shift: str | None = None) -> cabin.DriverLook:
    rng = np.random.default_rng([seed, stream, number])
    look = cabin.random_look(rng)
    return cabin.shifted_look(look, shift, rng) if shift else look


def _csv_text(header, rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _check_output(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not overwrite:
        raise SampleError(f"{out_dir} already exists and is not empty; pass overwrite (--overwrite) to replace it")
    if not (out_dir / DRIVER_LIST).is_file():
        raise SampleError(f"refusing to replace {out_dir}: it does not look like a sample ({DRIVER_LIST} missing)")


def _replace_dir(staging: Path, out_dir: Path) -> None:
    """Move the finished tree into place; an old sample is set aside first and removed after."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "tree")
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old)


def generate_sample(
    out_dir: str | Path,
    drivers: int = 26,
    images_per_class_driver: int = 3,
    test_images: int = 40,
    seed: int = 0,
    first_driver: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    class_counts: tuple[int, ...] | None = None,
    workers: int = 1,
    shift: str | None = None,
) -> SampleReport:
    """Draw a labelled batch for ``drivers`` drivers in the Kaggle layout under ``out_dir``.

    Subjects are Kaggle's (p002, p012, ... p081) unless ``first_driver`` is
    given, in which case they are consecutive from it (``first_driver=90``:
    p090, p091, ...), which is how a batch of new drivers is made.
    ``class_counts`` (images per class over all drivers) replaces
    ``images_per_class_driver``; ``kaggle_size()`` gives the competition's.
    ``workers`` processes draw in parallel (0: all cores); the bytes are the same.
    ``shift`` (one of ``cabin.SHIFTS``: night, angle, cabin) draws every driver of
    the batch under a condition the default sample never shows.
    """
    if shift is not None and shift not in cabin.SHIFTS:
        raise SampleError(f"shift must be one of {', '.join(cabin.SHIFTS)}, not {shift!r}")
    numbers = driver_numbers(drivers, first_driver)
    if class_counts is None:
        if not 1 <= images_per_class_driver <= MAX_IMAGES_PER_CLASS_DRIVER:
            raise SampleError(f"images_per_class_driver must be between 1 and {MAX_IMAGES_PER_CLASS_DRIVER}")
        counts = [[images_per_class_driver] * len(CLASSES) for _ in numbers]
    else:
        if len(class_counts) != len(CLASSES) or min(class_counts) < 0:
            raise SampleError(f"class_counts must give {len(CLASSES)} counts, none negative")
        counts = per_driver_counts(class_counts, len(numbers))
        if max(max(row) for row in counts) > MAX_IMAGES_PER_CLASS_DRIVER:
            raise SampleError(f"more than {MAX_IMAGES_PER_CLASS_DRIVER} images of a class per driver: use more drivers")
    if not 0 <= test_images <= TEST_SLOTS * len(numbers):
        raise SampleError(
            f"test_images must be between 0 and {TEST_SLOTS * len(numbers)} ({TEST_SLOTS} per driver of the batch)"
        )
    out_dir = Path(out_dir).resolve()
    _check_output(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for name in CLASSES:
            (staging / TRAIN_DIR / name).mkdir(parents=True)
        (staging / TEST_DIR).mkdir(parents=True)
        tasks = [("train", staging, seed, driver, row, shift) for driver, row in zip(numbers, counts)]
        tasks += [
            ("test", staging, seed, numbers, start, min(start + TEST_CHUNK, test_images), shift)
            for start in range(0, test_images, TEST_CHUNK)
        ]
        rows, test_names, size = [], [], 0
        total = sum(map(sum, counts)) + test_images
        with tqdm(total=total, desc="drawing sample", unit="img", disable=not progress) as bar:
            for kind, items, task_bytes in _run_tasks(tasks, workers or cpu_count(), seed):
                (rows if kind == "train" else test_names).extend(items)
                size += task_bytes
                bar.update(len(items))
        (staging / DRIVER_LIST).write_text(_csv_text(DRIVER_LIST_HEADER, rows))
        uniform = [f"{1 / len(CLASSES):.1f}"] * len(CLASSES)
        (staging / SAMPLE_SUBMISSION).write_text(_csv_text(("img", *CLASSES), [(n, *uniform) for n in test_names]))
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SampleReport(
        out_dir=out_dir,
        subjects=[subject_name(n) for n in numbers],
        train_images=len(rows),
        test_images=len(test_names),
        bytes=size,
        seconds=time.perf_counter() - started,
    )


# --- drawing, in this process or in worker processes ----------------------------------

_noise: cabin.SensorNoise | None = None  # per process: the same bank for every frame of a seed


def _start_worker(seed: int) -> None:
    global _noise
    cv2.setNumThreads(1)  # one process per core already
    _noise = cabin.SensorNoise(np.random.default_rng([seed, 0]))


def _draw_task(task: tuple) -> tuple[str, list, int]:
    """One driver's training images, or a chunk of test images: written to disk, their rows returned."""
    kind, *args = task
    return (kind, *(_draw_driver(*args) if kind == "train" else _draw_test(*args)))


def _run_tasks(tasks: list[tuple], workers: int, seed: int):
    """Results of ``_draw_task`` in task order; in worker processes when ``workers > 1``.

    Workers come from a fork server (no inherited threads: a plain fork of a process that has used
    OpenCV can deadlock), so a script that draws with workers must guard its top level with
    ``if __name__ == "__main__":``. Each task's images are drawn from their own seeded streams,
    so the bytes do not depend on which process draws them.
    """
    if workers <= 1 or len(tasks) <= 1:
        threads = cv2.getNumThreads()
        _start_worker(seed)
        try:
            yield from map(_draw_task, tasks)
        finally:
            cv2.setNumThreads(threads)
        return
    context = multiprocessing.get_context("forkserver")
    with context.Pool(min(workers, len(tasks)), initializer=_start_worker, initargs=(seed,)) as pool:
        yield from pool.imap(_draw_task, tasks)


def _draw_driver(
    root: Path, seed: int, driver: int, per_class: list[int], shift: str | None = None
) -> tuple[list[tuple], int]:
    look = _look(seed, 1, driver, shift)
    light = cabin.lighting_map(look)
    image_numbers = iter(_train_numbers(driver, sum(per_class), seed))
    rows, size = [], 0
    for class_i, classname in enumerate(CLASSES):
        for k in range(per_class[class_i]):
            rng = np.random.default_rng([seed, 2, driver, class_i, k])
            data = _encode(cabin.render(look, classname, rng, light, _noise))
            name = f"img_{next(image_numbers)}.jpg"
            (root / TRAIN_DIR / classname / name).write_bytes(data)
            rows.append((subject_name(driver), classname, name))
            size += len(data)
    return rows, size


def _test_number(seed: int, numbers: list[int], i: int) -> int:
    """The image number of test image ``i``: a shuffled slot in the upper half of the batch's i // TEST_SLOTS-th driver."""
    block, position = divmod(i, TEST_SLOTS)
    driver = numbers[block]
    slot = _test_slots(seed, driver)[position]
    return driver * SLOTS + SLOTS // 2 + int(slot)


@functools.lru_cache(maxsize=4)
def _test_slots(seed: int, driver: int) -> np.ndarray:
    return np.random.default_rng([seed, driver, 4]).permutation(TEST_SLOTS)


def _draw_test(
    root: Path, seed: int, numbers: list[int], start: int, stop: int, shift: str | None = None
) -> tuple[list[str], int]:
    """Unlabelled frames of drivers that are not in the training batch, as in Kaggle's test set."""
    first = numbers[0]
    looks = [_look(seed, 3, first * TEST_DRIVERS + j, shift) for j in range(TEST_DRIVERS)]
    lights = [cabin.lighting_map(look) for look in looks]
    names, size = [], 0
    for i in range(start, stop):
        rng = np.random.default_rng([seed, 5, first, i])
        j = i % TEST_DRIVERS
        classname = CLASSES[int(rng.integers(len(CLASSES)))]
        data = _encode(cabin.render(looks[j], classname, rng, lights[j], _noise))
        name = f"img_{_test_number(seed, numbers, i)}.jpg"
        (root / TEST_DIR / name).write_bytes(data)
        names.append(name)
        size += len(data)
    return names, size
