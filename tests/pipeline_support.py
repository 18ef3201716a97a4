"""Helpers for the pipeline tests: a local bucket with sample data, batches to add, the CLI, cleanup."""

from __future__ import annotations

import csv
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

from distracted_driver.config import Settings
from distracted_driver.data.layout import CLASSES, DRIVER_LIST, DRIVER_LIST_HEADER, TRAIN_DIR
from distracted_driver.pipeline.options import RunOptions

REPO = Path(__file__).resolve().parents[1]
INV = Path(sys.executable).parent / "inv"

# The smallest training that still learns the sample's classes well enough to pass the gate's
# baseline (half of ln 10) on two unseen drivers: frozen backbone, 96 px, 15 epochs.
HYPERPARAMETERS = {"epochs": 15, "image-size": 96}
# Whole drivers in validation by count: adding images of existing drivers leaves the validation side as it was.
CONVERT = {"val_drivers": 2}


def fast_options(**changes) -> RunOptions:
    values = dict(
        hyperparameters=HYPERPARAMETERS, convert=CONVERT, wait_seconds=1.0, bake_seconds=1.0, load_seconds=0.0
    )
    values.update(changes)
    return RunOptions(**values)


def cli_flags(options: RunOptions) -> list[str]:
    """The ``inv pipeline.run`` flags that give ``options`` (for the keys the tests use)."""
    flags = [f"--epochs={options.hyperparameters['epochs']}", f"--image-size={options.hyperparameters['image-size']}"]
    extra = {k: v for k, v in options.hyperparameters.items() if k not in ("epochs", "image-size")}
    if extra:
        flags.append("--extra=" + ",".join(f"{k}={v}" for k, v in extra.items()))
    flags += [
        f"--val-drivers={options.convert['val_drivers']}",
        f"--wait-seconds={options.wait_seconds:g}",
        f"--bake-seconds={options.bake_seconds:g}",
        f"--load-seconds={options.load_seconds:g}",
    ]
    return flags


def environment(settings: Settings) -> dict:
    return {**os.environ, "DD_ROOT": str(settings.root)}


def run_cli(settings: Settings, *args: str, python_flags: tuple[str, ...] = (), timeout: float = 300):
    """``inv <args>`` from the repository against the settings' root."""
    return subprocess.run(
        [sys.executable, *python_flags, str(INV), *args],
        cwd=REPO,
        env=environment(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sample_batch(
    directory: Path, drivers: int, per_class: int, seed: int, first_driver: int | None = None, shift: str | None = None
) -> Path:
    from distracted_driver.data.sample import generate_sample

    generate_sample(
        directory,
        drivers=drivers,
        images_per_class_driver=per_class,
        test_images=0,
        seed=seed,
        first_driver=first_driver,
        progress=False,
        shift=shift,
    )
    return directory


def add_batch(settings: Settings, directory: Path):
    from distracted_driver.data.ingest import add_data
    from distracted_driver.storage import open_storage

    report = add_data(open_storage(settings), settings, directory, progress=False)
    assert report.manifest_key and not report.refused, str(report)
    return report


def mislabeled_batch(directory: Path, subjects: list[str], drivers: int, per_class: int, seed: int) -> Path:
    """A batch of new frames credited to ``subjects`` whose labels are shuffled: every image in a wrong class.

    Frames drawn for new drivers (so no content repeats what the bucket holds) are moved to a random
    other class folder under fresh names, and the driver list says the same.
    """
    drawn = sample_batch(directory.with_name(directory.name + "-drawn"), drivers, per_class, seed, first_driver=700)
    rng = random.Random(seed)
    rows = []
    for number, image in enumerate(sorted((drawn / TRAIN_DIR).glob("c*/*.jpg"))):
        wrong = rng.choice([c for c in CLASSES if c != image.parent.name])
        name = f"img_{900000 + seed * 10000 + number}.jpg"
        target = directory / TRAIN_DIR / wrong / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
        rows.append((subjects[number % len(subjects)], wrong, name))
    with open(directory / DRIVER_LIST, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(DRIVER_LIST_HEADER)
        writer.writerows(rows)
    shutil.rmtree(drawn)
    return directory


def stop_stack(settings: Settings) -> None:
    """Stop the gateway and the hosting runtime of ``settings`` (whatever of them runs)."""
    from distracted_driver.gateway import stop_gateway
    from distracted_driver.hosting import open_hosting

    stop_gateway(settings)
    open_hosting(settings).stop_runtime()


def first_driver_keeping_validation_unseen(
    existing: dict[str, int], validation: set[str], drivers: int, split_seed: int = 0
) -> int:
    """A first driver number for a batch of ``drivers`` new subjects after which the driver split
    still keeps every driver the live model trained on out of validation.

    The split draws the validation drivers anew whenever the set of drivers changes, so a model
    trained before new drivers arrived may have seen some of the new validation drivers, and the
    gate would compare it on partly-seen drivers against a candidate on unseen ones. Until the split
    keeps its assignment stable as drivers are added, this picks the newcomers' numbers (with the
    split's own rule) so that validation holds only former validation drivers and newcomers.
    """
    from distracted_driver.data.sample import subject_name
    from distracted_driver.data.split import choose_validation

    trained_on = set(existing) - validation
    for first in range(1, 1000 - drivers):
        newcomers = {subject_name(first + i): 1 for i in range(drivers)}
        if newcomers.keys() & existing.keys():
            continue
        groups = {**existing, **newcomers}
        chosen, _ = choose_validation(
            groups, val_count=CONVERT["val_drivers"], val_fraction=None, fold=None, folds=5, seed=split_seed
        )
        if not chosen & trained_on:
            return first
    raise AssertionError("no batch of new drivers keeps the live model's training drivers out of validation")
