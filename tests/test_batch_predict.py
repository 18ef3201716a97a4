"""Batch prediction: a directory of images → a Kaggle submission CSV, unreadable images skipped."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from distracted_driver.config import Settings
from distracted_driver.data.layout import CLASSES
from distracted_driver.model.artifact import ArtifactError, load_artifact
from distracted_driver.model.cache import fetch_artifact
from distracted_driver.model.inference import Classifier
from distracted_driver.model.registry import Registry
from distracted_driver.serve.batch_predict import list_images, predict_directory, predict_images, write_submission
from distracted_driver.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
GOOD = 11


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Eleven readable frames (one PNG), a corrupt one, a truncated one, and a file that is no image."""
    directory = tmp_path_factory.mktemp("imgs") / "test"
    directory.mkdir()
    rng = np.random.default_rng(0)
    for i in range(GOOD):
        frame = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (640, 480))
        cv2.imwrite(str(directory / (f"img_{i}.png" if i == 3 else f"img_{i}.jpg")), frame)
    (directory / "img_corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    whole = (directory / "img_0.jpg").read_bytes()
    (directory / "img_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (directory / "notes.txt").write_text("not an image")
    return directory


@pytest.fixture(scope="module")
def model(make_artifact):
    return make_artifact("batch-test-v1", seed=5)


def test_predictions_match_the_classifier_image_by_image(images, model):
    artifact = load_artifact(model.directory)
    result = predict_images(artifact, list_images(images), batch_size=4, workers=2, progress=False)
    assert sorted(result.names) == sorted([f"img_{i}.png" if i == 3 else f"img_{i}.jpg" for i in range(GOOD)])
    assert result.names == sorted(result.names)  # input order kept
    assert sorted(name for name, _ in result.failed) == ["img_corrupt.jpg", "img_truncated.jpg"]
    assert all(reason for _, reason in result.failed)
    classifier = Classifier(artifact)
    for name, row in zip(result.names, result.probabilities):
        alone = classifier.predict(classifier.prepare((images / name).read_bytes())[None])[0]
        assert np.allclose(row, alone, atol=1e-6)


def test_submission_has_kaggle_columns(images, model, tmp_path):
    result = predict_images(load_artifact(model.directory), list_images(images), batch_size=3, progress=False)
    out = write_submission(result, tmp_path / "out" / "submission.csv")
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["img", *CLASSES]
    assert [r[0] for r in rows[1:]] == result.names
    for row in rows[1:]:
        assert sum(float(p) for p in row[1:]) == pytest.approx(1.0, abs=1e-4)
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]  # no temporary left behind


def test_an_empty_directory_gives_a_header_only_csv(model, tmp_path):
    result = predict_images(load_artifact(model.directory), [], progress=False)
    write_submission(result, tmp_path / "empty.csv")
    assert (tmp_path / "empty.csv").read_text().strip() == ",".join(["img", *CLASSES])


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        root=tmp_path, bucket_dir=tmp_path / "bucket", state_dir=tmp_path / "state", work_dir=tmp_path / "work"
    )


def test_models_come_from_the_bucket_through_a_cache(settings, make_artifact):
    storage = open_storage(settings)
    make_artifact("dd-20240101-000000-aaaa", seed=6).publish(storage)
    make_artifact("dd-20240102-000000-bbbb", seed=7).publish(storage)
    latest = fetch_artifact(settings, "latest")
    assert latest.version == "dd-20240102-000000-bbbb"
    assert latest.directory == settings.work_dir / "models" / "dd-20240102-000000-bbbb" / "model"
    mtime = latest.model_path.stat().st_mtime_ns
    assert fetch_artifact(settings, "dd-20240102-000000-bbbb").model_path.stat().st_mtime_ns == mtime  # reused
    assert fetch_artifact(settings, "dd-20240101-000000-aaaa").version == "dd-20240101-000000-aaaa"
    Registry(storage, settings).set_live("dd-20240101-000000-aaaa")
    assert fetch_artifact(settings, "live").version == "dd-20240101-000000-aaaa"
    with pytest.raises(ArtifactError, match="does not exist"):
        fetch_artifact(settings, "dd-20991231-000000-ffff")


def test_predict_directory_from_the_bucket(settings, images, model, tmp_path):
    model.publish(open_storage(settings))
    result = predict_directory(settings, model.version, images, tmp_path / "sub.csv", batch_size=8, progress=False)
    assert result.predicted == GOOD and len(result.failed) == 2
    assert not result.names  # the rows went to the CSV as they came, not into memory
    rows = list(csv.reader((tmp_path / "sub.csv").open()))
    in_memory = predict_images(load_artifact(model.directory), list_images(images), batch_size=3, progress=False)
    assert [r[0] for r in rows[1:]] == in_memory.names
    assert np.allclose(np.asarray([r[1:] for r in rows[1:]], float), in_memory.probabilities, atol=1e-5)


def test_an_interrupted_prediction_leaves_no_csv(settings, images, model, tmp_path, monkeypatch):
    model.publish(open_storage(settings))
    runs = []
    real_predict = Classifier.predict

    def interrupted(self, batch):
        runs.append(len(batch))
        if len(runs) == 2:
            raise KeyboardInterrupt
        return real_predict(self, batch)

    monkeypatch.setattr(Classifier, "predict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_directory(settings, model.version, images, tmp_path / "out" / "sub.csv", batch_size=4, progress=False)
    assert runs == [4, 4] and list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_invoke_task_writes_the_csv_and_lists_skipped_images(settings, images, model, tmp_path):
    model.publish(open_storage(settings))
    env = {
        **os.environ,
        "DD_BUCKET_DIR": str(settings.bucket_dir),
        "DD_WORK_DIR": str(settings.work_dir),
        "DD_STATE_DIR": str(settings.state_dir),
    }
    out = tmp_path / "submission.csv"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "inv"),
            "predict.batch",
            "--model",
            "latest",
            "--images",
            str(images),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"{GOOD} images predicted, 2 unreadable" in result.stdout
    assert "skipped img_truncated.jpg: image is truncated" in result.stdout
    assert len(out.read_text().splitlines()) == GOOD + 1
