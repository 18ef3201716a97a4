"""Sample data in the exact State Farm layout, drawn procedurally (see ``cabin``).

    <out>/imgs/train/c0..c9/img_<n>.jpg   640x480 JPEG
    <out>/imgs/test/img_<n>.jpg
    <out>/driver_imgs_list.csv            subject,classname,img
    <out>/sample_submission.csv           img,c0,...,c9 (uniform 0.1)

Everything is a pure function of the options: the same seed gives the same
bytes. Image numbers are derived from the driver number, so batches made for
different drivers (``first_driver``) never reuse a file name, and the whole
tree is written in a temporary directory that is renamed into place at the
end, so an interrupted run leaves nothing that looks complete.
"""

from __future__ import annotations

import csv
import io
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

# The 26 subjects of the Kaggle training set; the default sample uses their names.
KAGGLE_SUBJECTS = (
    2, 12, 14, 15, 16, 21, 22, 24, 26, 35, 39, 41, 42,
    45, 47, 49, 50, 51, 52, 56, 61, 64, 66, 72, 75, 81,
)
# Each driver owns the image numbers [n * SLOTS, (n + 1) * SLOTS): the lower half
# for its training images, the upper half for the test images of a batch that
# starts at that driver. So batches for other drivers never collide.
SLOTS = 10_000
MAX_IMAGES_PER_CLASS_DRIVER = SLOTS // 2 // len(CLASSES)
MAX_TEST_IMAGES = SLOTS // 2
TEST_DRIVERS = 4  # unseen drivers behind the unlabelled test images
JPEG_QUALITY = 90


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
    shift: str | None = None,
) -> SampleReport:
    """Draw a labelled batch for ``drivers`` drivers in the Kaggle layout under ``out_dir``.

    Subjects are Kaggle's (p002, p012, ... p081) unless ``first_driver`` is
    given, in which case they are consecutive from it (``first_driver=90``:
    p090, p091, ...), which is how a batch of new drivers is made. ``shift``
    (one of ``cabin.SHIFTS``: night, angle, cabin) draws every driver of the
    batch under a condition the default sample never shows.
    """
    if shift is not None and shift not in cabin.SHIFTS:
        raise SampleError(f"shift must be one of {', '.join(cabin.SHIFTS)}, not {shift!r}")
    if not 1 <= images_per_class_driver <= MAX_IMAGES_PER_CLASS_DRIVER:
        raise SampleError(f"images_per_class_driver must be between 1 and {MAX_IMAGES_PER_CLASS_DRIVER}")
    if not 0 <= test_images <= MAX_TEST_IMAGES:
        raise SampleError(f"test_images must be between 0 and {MAX_TEST_IMAGES}")
    numbers = driver_numbers(drivers, first_driver)
    out_dir = Path(out_dir).resolve()
    _check_output(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        noise = cabin.SensorNoise(np.random.default_rng([seed, 0]))
        total = len(numbers) * len(CLASSES) * images_per_class_driver + test_images
        with tqdm(total=total, desc="drawing sample", unit="img", disable=not progress) as bar:
            rows, size = _draw_train(staging, numbers, images_per_class_driver, seed, noise, bar, shift)
            test_names, test_size = _draw_test(staging, numbers[0], test_images, seed, noise, bar, shift)
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
        bytes=size + test_size,
        seconds=time.perf_counter() - started,
    )


def _draw_train(root: Path, numbers, per_class: int, seed: int, noise, bar, shift=None) -> tuple[list[tuple], int]:
    for name in CLASSES:
        (root / TRAIN_DIR / name).mkdir(parents=True)
    rows, size = [], 0
    for driver in numbers:
        look = _look(seed, 1, driver, shift)
        light = cabin.lighting_map(look)
        image_numbers = iter(_train_numbers(driver, len(CLASSES) * per_class, seed))
        for class_i, classname in enumerate(CLASSES):
            for k in range(per_class):
                rng = np.random.default_rng([seed, 2, driver, class_i, k])
                data = _encode(cabin.render(look, classname, rng, light, noise))
                name = f"img_{next(image_numbers)}.jpg"
                (root / TRAIN_DIR / classname / name).write_bytes(data)
                rows.append((subject_name(driver), classname, name))
                size += len(data)
                bar.update()
    return rows, size


def _draw_test(root: Path, first: int, count: int, seed: int, noise, bar, shift=None) -> tuple[list[str], int]:
    """Unlabelled frames of drivers that are not in the training batch, as in Kaggle's test set."""
    (root / TEST_DIR).mkdir(parents=True)
    looks = [_look(seed, 3, first * TEST_DRIVERS + j, shift) for j in range(TEST_DRIVERS)]
    lights = [cabin.lighting_map(look) for look in looks]
    slots = np.random.default_rng([seed, first, 4]).permutation(SLOTS // 2)[:count]
    names, size = [], 0
    for i, slot in enumerate(slots):
        rng = np.random.default_rng([seed, 5, first, i])
        j = i % TEST_DRIVERS
        classname = CLASSES[int(rng.integers(len(CLASSES)))]
        data = _encode(cabin.render(looks[j], classname, rng, lights[j], noise))
        name = f"img_{first * SLOTS + SLOTS // 2 + int(slot)}.jpg"
        (root / TEST_DIR / name).write_bytes(data)
        names.append(name)
        size += len(data)
        bar.update()
    return names, size
