"""The whole monitoring loop on loopback: capture, drift, export for review, labels, data.add, retraining.

A model trained on daylight drivers is live with every request captured. Night traffic of new
drivers arrives; ``inv monitor.report`` flags it; ``inv monitor.export`` writes the captured
images as a review batch; the test plays the reviewer with the generator's ground truth
(drivers and classes), leaving a few rows unreviewed; ``inv data.add`` adds the reviewed rows;
``inv pipeline.run`` retrains, the gate judges, and the new model goes live. On night drivers
that neither model ever saw, the new model's log loss is lower than the old one's.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from monitor_support import ground_truth, images_of, send_images, wait_for_capture
from pipeline_support import (
    add_batch,
    cli_flags,
    fast_options,
    first_driver_keeping_validation_unseen,
    run_cli,
    sample_batch,
    stop_stack,
)

from distracted_driver.config import Settings
from distracted_driver.hashing import sha256_bytes
from distracted_driver.model.cache import fetch_artifact
from distracted_driver.model.evaluate import log_loss
from distracted_driver.model.inference import Classifier
from distracted_driver.model.registry import Registry
from distracted_driver.pipeline.run import run_pipeline
from distracted_driver.storage import open_storage

pytestmark = pytest.mark.slow

NIGHT_DRIVERS = 6
UNREVIEWED = 3


def _scores(settings: Settings, job: str, paths) -> tuple[float, float]:
    """(log loss, accuracy) of model ``job`` on labelled images, run as the model server runs it."""
    classifier = Classifier(fetch_artifact(settings, job))
    labels = np.array([int(path.parent.name[1:]) for path in paths])
    batch = np.stack([classifier.prepare(path.read_bytes()) for path in paths])
    probabilities = np.concatenate([classifier.predict(batch[i : i + 32]) for i in range(0, len(batch), 32)])
    return log_loss(labels, probabilities), float((probabilities.argmax(1) == labels).mean())


def test_night_traffic_is_flagged_labelled_added_and_learnt(tmp_path, capsys):
    settings = Settings(root=tmp_path)
    storage = open_storage(settings)
    options = fast_options(capture_percent=100)
    try:
        add_batch(settings, sample_batch(tmp_path / "daylight", drivers=8, per_class=3, seed=1))
        first = run_pipeline(settings, options, log=lambda message: None, stream=None, progress=False)
        assert first.outcome == "deployed", first.reason

        # Night traffic of new drivers, numbered so that the next split keeps the live model's drivers out of
        # validation (pipeline_support explains why).
        subjects = json.loads(storage.get_bytes("raw/manifests/000001.json"))["counts"]["per_subject"]
        validation = set(json.loads(storage.get_bytes("data/manifest.json"))["splits"]["validation"]["drivers"])
        first_night = first_driver_keeping_validation_unseen(subjects, validation, drivers=NIGHT_DRIVERS)
        night = sample_batch(
            tmp_path / "night", drivers=NIGHT_DRIVERS, per_class=2, seed=7, first_driver=first_night, shift="night"
        )
        since = send_images(settings, images_of(night))
        wait_for_capture(settings, since, len(images_of(night)))

        report = run_cli(settings, "monitor.report", "--since", since.isoformat())
        assert report.returncode == 3, report.stdout + report.stderr
        assert "DRIFT in " in report.stderr and "brightness" in report.stderr

        review = tmp_path / "review"
        exported = run_cli(settings, "monitor.export", "--since", since.isoformat(), "--out", str(review))
        assert exported.returncode == 0, exported.stderr
        assert f"{len(images_of(night))} of {len(images_of(night))} captured requests exported" in exported.stdout
        with open(review / "driver_imgs_list.csv", newline="") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == ["subject", "classname", "img", "model_class", "model_confidence", "event_id", "captured_at"]
        assert all(row[0] == "" and row[1] == row[3] for row in rows[1:])  # waiting for review

        # The reviewer: each image's driver and true class from the generator, a few rows left for later.
        truth = ground_truth(night)
        guessed_right = 0
        for row in rows[1 + UNREVIEWED :]:
            subject, classname = truth[sha256_bytes((review / "imgs" / "train" / row[3] / row[2]).read_bytes())]
            guessed_right += classname == row[3]
            row[0], row[1] = subject, classname
        with open(review / "driver_imgs_list.csv", "w", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows(rows)
        added = run_cli(settings, "data.add", "--from", str(review))
        assert added.returncode == 2, added.stdout + added.stderr  # the unreviewed rows are refused, counted
        reviewed = len(rows) - 1 - UNREVIEWED
        assert f"{reviewed} added" in added.stdout and f"{UNREVIEWED} row(s) not reviewed yet" in added.stdout

        second = run_cli(settings, "pipeline.run", *cli_flags(options), timeout=900)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
        live = Registry(storage, settings).live()["job"]
        assert live != first.model_version

        # Night drivers that neither model saw: the new model knows the night better.
        unseen = sample_batch(
            tmp_path / "night-unseen", drivers=3, per_class=2, seed=8, first_driver=800, shift="night"
        )
        before = _scores(settings, first.model_version, images_of(unseen))
        after = _scores(settings, live, images_of(unseen))
        with capsys.disabled():
            print(
                f"\nnight drivers never seen ({len(images_of(unseen))} images): live model {first.model_version} "
                f"log loss {before[0]:.4f} accuracy {before[1]:.3f}; retrained {live} log loss {after[0]:.4f} "
                f"accuracy {after[1]:.3f}; the live model guessed {guessed_right} of {reviewed} reviewed images"
            )
        assert after[0] < before[0]
    finally:
        stop_stack(settings)
