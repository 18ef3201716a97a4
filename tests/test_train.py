"""Training jobs for real: the runner, the script, the artifact they leave, failures, and resuming."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import tarfile
from datetime import UTC
from pathlib import Path

import numpy as np
import pytest
from waiting import wait_until

from distracted_driver.model.artifact import (
    BASELINE_ARRAYS_FILE,
    BASELINE_FILE,
    INT8_MODEL_FILE,
    REQUIRED_FILES,
    SERVING_FILE,
    unpack_artifact,
)
from distracted_driver.model.evaluate import evaluate_artifact, evaluate_model
from distracted_driver.model.registry import Registry
from distracted_driver.storage import open_storage
from distracted_driver.train import job as train_job
from distracted_driver.train.baseline import load_baseline
from distracted_driver.train.runner import SCRIPT, TrainingJobFailed, hyperparameter_args, new_job_name, run_local_job

pytestmark = pytest.mark.slow  # torch training steps and job processes

JOB_NAME = re.compile(r"^dd-\d{8}-\d{6}-[0-9a-f]{4}$")


def test_job_names_are_unique_and_sort_by_time():
    from datetime import datetime

    early = new_job_name(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = new_job_name(datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC))
    assert JOB_NAME.match(early) and early.startswith("dd-20260102-030405-")
    assert early < late
    assert len({new_job_name() for _ in range(50)}) == 50


def test_hyperparameters_become_sagemaker_style_flags():
    args = hyperparameter_args({"learning_rate": 0.01, "freeze-backbone": False, "epochs": 3, "augmentation": None})
    assert args == ["--learning-rate", "0.01", "--freeze-backbone", "false", "--epochs", "3"]
    parsed = train_job.parse_args(
        [
            *args,
            "--train",
            "t",
            "--validation",
            "v",
            "--model-dir",
            "m",
            "--output-data-dir",
            "o",
            "--sagemaker_program",
            "train.py",
        ]
    )
    assert (parsed.learning_rate, parsed.freeze_backbone, parsed.epochs) == (0.01, False, 3)
    assert parsed.jpeg_dct_scaling  # the default; `--jpeg-dct-scaling false` trains and records full decoding
    full = train_job._config(
        train_job.parse_args(
            [
                "--jpeg-dct-scaling",
                "false",
                "--train",
                "t",
                "--validation",
                "v",
                "--model-dir",
                "m",
                "--output-data-dir",
                "o",
            ]
        )
    )
    assert full.preprocessing.decode_min_size == 0 and not full.preprocessing.to_dict()["jpeg_dct_scaling"]


def test_script_runs_on_its_own_as_a_sagemaker_entry_point(tmp_path):
    """``python train.py --help`` from elsewhere: it finds the package and documents its SageMaker inputs."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for name in ("SM_CHANNEL_TRAIN", "SM_CHANNEL_VALIDATION", "SM_MODEL_DIR", "--freeze-backbone", "--learning-rate"):
        assert name in result.stdout
    missing = subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert missing.returncode == 2 and "SM_CHANNEL_TRAIN" in missing.stderr


@pytest.mark.slow
def test_local_job_leaves_a_valid_artifact_in_the_bucket(trained_job, tmp_path):
    settings, job = trained_job
    storage = open_storage(settings)
    assert JOB_NAME.match(job)
    status = json.loads(storage.get_bytes(f"models/{job}/status.json"))
    assert status["status"] == "Completed"
    assert storage.exists(f"models/{job}/output/train.log")
    log = storage.get_bytes(f"models/{job}/output/train.log").decode()
    assert "epoch 2/2" in log and "val_log_loss" in log

    tar = tmp_path / "model.tar.gz"
    storage.get_file(f"models/{job}/output/model.tar.gz", tar)
    with tarfile.open(tar) as archive:
        assert sorted(archive.getnames()) == sorted(
            [*REQUIRED_FILES, INT8_MODEL_FILE, SERVING_FILE, BASELINE_FILE, BASELINE_ARRAYS_FILE]
        )
    artifact = unpack_artifact(tar, tmp_path / "model")
    assert artifact.version == job
    assert artifact.preprocessing.input_size == 160 and artifact.preprocessing.jpeg_dct_scaling
    provenance = artifact.provenance
    assert provenance["data_manifest_sha256"] == storage.checksum("data/manifest.json")
    assert provenance["code_version"] and provenance["hyperparameters"]["epochs"] == 2
    assert provenance["timings"]["total_seconds"] > 0
    assert len(artifact.metrics["history"]) == 2

    # Only the artifact's own files, as a consumer would: the same numbers as recorded.
    metrics = evaluate_artifact(
        artifact, settings.work_dir / "jobs" / job / "input" / "data" / "validation", progress=False
    )
    assert metrics["log_loss"] == pytest.approx(artifact.metrics["log_loss"], abs=1e-6)
    assert metrics["log_loss"] < np.log(10)
    entry = Registry(storage, settings).get(job)
    assert entry["metrics"]["log_loss"] == artifact.metrics["log_loss"]

    # The monitoring baseline, from the served model: its answers on validation, its 1280 features.
    baseline = load_baseline(artifact)
    assert baseline.summary["validation"]["label_counts"] == {c: v["support"] for c, v in metrics["per_class"].items()}
    confidences = np.sort(baseline.confidences)
    assert len(confidences) == metrics["examples"] and 0.1 <= confidences[0] <= confidences[-1] <= 1.0
    assert baseline.summary["image_statistics"]["images"] == 60
    assert baseline.feature_mean.shape == (1280,) and baseline.projection.shape == (1280, metrics["examples"] // 4)
    assert provenance["timings"]["baseline_seconds"] > 0
    # Recorded on the file the endpoint runs (this job's scores choose int8), so the report measures with it.
    assert baseline.summary["model_file"] == artifact.served_model_path.name
    assert baseline.measured_with(artifact).served_model_path == artifact.served_model_path


@pytest.mark.slow
def test_evaluate_model_writes_the_report(trained_job, tmp_path):
    settings, job = trained_job
    evaluated, metrics, paths = evaluate_model(settings, "latest", tmp_path / "report", progress=False)
    assert evaluated == job
    assert json.loads(paths["metrics"].read_text())["log_loss"] == pytest.approx(metrics["log_loss"])
    assert paths["confusion_matrix"].read_bytes()[:4] == b"\x89PNG"
    assert paths["training_curves"].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_failed_job_leaves_its_log_and_status_and_no_artifact(trained_job):
    settings, _ = trained_job
    storage = open_storage(settings)
    before = Registry(storage, settings).list_versions()
    output = io.StringIO()
    with pytest.raises(TrainingJobFailed, match="image_size must be at least 1") as failure:
        run_local_job(settings, {"image-size": 0}, stream=output)
    job = failure.value.job
    status = json.loads(storage.get_bytes(f"models/{job}/status.json"))
    assert status["status"] == "Failed"
    assert "image_size must be at least 1" in status["failure_reason"]
    assert "Traceback" in storage.get_bytes(f"models/{job}/output/train.log").decode()
    assert "training failed" in output.getvalue()
    assert not storage.exists(f"models/{job}/output/model.tar.gz")
    assert Registry(storage, settings).list_versions() == before


def test_job_without_data_in_the_bucket_fails_clearly(tmp_path):
    from distracted_driver.config import Settings

    settings = Settings(root=tmp_path)
    with pytest.raises(TrainingJobFailed, match="upload the channels first"):
        run_local_job(settings, {"epochs": 1}, stream=None)
    (status_key,) = [k for k in open_storage(settings).list_keys("models/") if k.endswith("status.json")]
    assert json.loads(open_storage(settings).get_bytes(status_key))["status"] == "Failed"


def _script_args(tiny_channels: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--train",
        str(tiny_channels / "train"),
        "--validation",
        str(tiny_channels / "validation"),
        "--model-dir",
        str(out / "model"),
        "--output-data-dir",
        str(out / "output"),
        "--checkpoint-dir",
        str(out / "checkpoints"),
        "--feature-cache-dir",
        str(out.parent / "features"),
        "--job-name",
        out.name,
        *extra,
    ]


def _history(out: Path) -> list[dict]:
    return json.loads((out / "model" / "metrics.json").read_text())["history"]


def _same_training(a: list[dict], b: list[dict]) -> None:
    keys = ("epoch", "train_loss", "train_accuracy", "val_log_loss", "val_accuracy")
    assert [h[k] for h in a for k in keys] == pytest.approx([h[k] for h in b for k in keys], rel=1e-5)


@pytest.mark.slow
def test_frozen_training_asked_for_more_epochs_continues_from_its_checkpoint(tmp_path, tiny_channels, capsys):
    """Two epochs, then a rerun asked for three resumes at epoch 3 and ends as an uninterrupted run does."""
    flags = ["--image-size", "96", "--mini-batch-size", "16", "--patience", "10"]
    resumed = tmp_path / "resumed"
    assert train_job.main(_script_args(tiny_channels, resumed, "--epochs", "2", *flags)) == 0
    assert len(_history(resumed)) == 2
    assert train_job.main(_script_args(tiny_channels, resumed, "--epochs", "3", *flags)) == 0
    assert "resuming from the checkpoint of epoch 2" in capsys.readouterr().out
    straight = tmp_path / "straight"
    assert train_job.main(_script_args(tiny_channels, straight, "--epochs", "3", *flags)) == 0
    _same_training(_history(resumed), _history(straight))


@pytest.mark.slow
def test_killed_fine_tuning_resumes_and_ends_as_an_uninterrupted_run(tmp_path, tiny_channels, capsys):
    """SIGKILL during epoch 2 of a fine-tuning job; the rerun picks up the epoch-1 checkpoint (optimizer,
    schedule, augmentation and all) and reaches the same numbers as a run that was never stopped."""
    flags = [
        "--freeze-backbone",
        "false",
        "--augmentation",
        "true",
        "--image-size",
        "64",
        "--mini-batch-size",
        "20",
        "--epochs",
        "2",
        "--patience",
        "10",
    ]
    killed = tmp_path / "killed"
    command = [sys.executable, str(SCRIPT), *_script_args(tiny_channels, killed, *flags)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        for line in process.stdout:
            if "epoch 1/2" in line:
                process.kill()
                break
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert (killed / "checkpoints" / "checkpoint.pt").is_file() and not (killed / "model" / "model.onnx").exists()

    assert train_job.main(_script_args(tiny_channels, killed, *flags)) == 0
    assert "resuming from the checkpoint of epoch 1" in capsys.readouterr().out
    straight = tmp_path / "straight"
    assert train_job.main(_script_args(tiny_channels, straight, *flags)) == 0
    _same_training(_history(killed), _history(straight))


@pytest.mark.slow
def test_checkpoint_of_other_hyperparameters_is_not_resumed(tmp_path, tiny_channels):
    out = tmp_path / "job"
    common = ["--image-size", "96", "--epochs", "1"]
    assert train_job.main(_script_args(tiny_channels, out, *common, "--seed", "1")) == 0
    assert train_job.main(_script_args(tiny_channels, out, *common, "--seed", "2")) == 1
    assert "other hyperparameters" in (out / "failure").read_text()
    assert train_job.main(_script_args(tiny_channels, out, *common, "--seed", "2", "--resume", "false")) == 0


# --- loading only tensors: a planted checkpoint or feature cache cannot run code ---------------------


class _RunsCode:
    """Unpickling this creates ``marker``: what a planted pickle could do, made visible."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_real_checkpoint_loads_with_tensors_only(tmp_path):
    import math

    import torch

    from distracted_driver.train.loop import Checkpoints

    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    checkpoints = Checkpoints(tmp_path, "fingerprint-1")
    history = [{"epoch": 1, "val_log_loss": 0.5}]
    checkpoints.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "early_stopping": {"best": math.inf, "best_epoch": 0},
            "history": history,
            "best_state": model.state_dict(),
            "epoch": 1,
        }
    )
    state = checkpoints.load()
    assert state["history"] == history and state["early_stopping"]["best"] == math.inf
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])


def test_a_checkpoint_that_would_run_code_is_refused_unopened(tmp_path):
    import torch

    from distracted_driver.train.loop import CheckpointMismatch, Checkpoints

    marker = tmp_path / "code-ran"
    checkpoints = Checkpoints(tmp_path, "fingerprint-1")
    torch.save({"fingerprint": "fingerprint-1", "history": _RunsCode(marker)}, checkpoints.path)
    with pytest.raises(CheckpointMismatch, match="more than tensors"):
        checkpoints.load()
    assert not marker.exists()


def test_a_feature_cache_file_that_would_run_code_is_ignored_and_replaced(tmp_path):
    import torch
    from hostile_images import camera_like_jpeg

    from distracted_driver.data.channel import Record
    from distracted_driver.train.loop import FeatureExtractor, TrainConfig, _feature_cache_key, cached_features
    from distracted_driver.train.model import build_model

    config = TrainConfig(image_size=32, pretrained=False, batch_size=2, workers=1)
    records = [Record(f"train:{i}", i, camera_like_jpeg(64, 48, seed=i)) for i in range(2)]
    planted = tmp_path / f"train-{_feature_cache_key(config, 'data-1')}.pt"
    marker = tmp_path / "code-ran"
    torch.save({"features": torch.zeros(2, 1280), "labels": torch.zeros(2), "failed": [_RunsCode(marker)]}, planted)
    logged = []
    extractor = FeatureExtractor(build_model(pretrained=False, seed=0), config)
    x, y, failed, rate = cached_features(extractor, records, config, "train", tmp_path, "data-1", logged.append)
    assert not marker.exists() and "ignoring the unreadable cache file" in logged[0]
    assert x.shape == (2, 1280) and y.tolist() == [0, 1] and failed == [] and rate
    again = cached_features(extractor, records, config, "train", tmp_path, "data-1", logged.append)
    assert torch.equal(again[0], x) and again[3] is None and "from cache" in logged[-1]


@pytest.mark.slow
def test_a_training_script_killed_with_sigkill_fails_its_job_naming_the_signal(tmp_path, tiny_channels):
    import os
    import threading

    from train_support import bucket_with_channels

    settings = bucket_with_channels(tmp_path, tiny_channels)
    outcome = []

    def train():
        try:
            outcome.append(run_local_job(settings, {"epochs": 30, "image-size": 64, "patience": 30}, stream=None))
        except TrainingJobFailed as error:
            outcome.append(error)

    thread = threading.Thread(target=train)
    thread.start()

    def started_script():
        for path in (settings.work_dir / "jobs").glob("*/status.json"):
            if script := json.loads(path.read_text()).get("script"):
                return script
        return None

    script = wait_until(started_script, timeout_s=120, interval_s=0.1, what="the training script to start")
    os.kill(script["pid"], signal.SIGKILL)
    thread.join(timeout=120)
    assert isinstance(outcome[0], TrainingJobFailed) and "killed by SIGKILL" in str(outcome[0])
    status = json.loads(open_storage(settings).get_bytes(f"models/{outcome[0].job}/status.json"))
    assert status["status"] == "Failed" and status["failure_reason"].startswith("killed by SIGKILL")
    assert status["runner"]["pid"] == os.getpid() and status["script"]["pid"] == script["pid"]
