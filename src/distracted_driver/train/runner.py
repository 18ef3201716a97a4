"""Run ``scripts/train.py`` as a local training job, laid out as SageMaker lays one out.

A job directory ``<work_dir>/jobs/<job>/`` mirrors ``/opt/ml``::

    input/data/train/ input/data/validation/   the channels, fetched from the bucket
    model/                                     SM_MODEL_DIR: the unpacked artifact
    output/data/                               SM_OUTPUT_DATA_DIR: history, plots
    output/failure                             the reason, when the script fails
    checkpoints/                               SM_CHECKPOINT_DIR
    train.log  status.json

and the bucket gets what SageMaker would put there::

    models/<job>/output/model.tar.gz     only when the job completed
    models/<job>/output/output.tar.gz    history and plots
    models/<job>/output/train.log        always
    models/<job>/status.json             InProgress, Completed, Failed or Stopped, with the reason

The status names the process that runs the job (host, pid, start time) and its
training script's. A job whose runner was killed outright (SIGKILL) cannot say
how it ended; ``close_orphaned_jobs``, which every run and every pipeline run
calls first, records it Stopped with the reason, and stops its script if that
still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import psutil

from distracted_driver.config import Settings
from distracted_driver.data.channels import download_channels
from distracted_driver.fsutil import atomic_path, write_bytes_atomic, write_json_atomic
from distracted_driver.model.artifact import load_artifact, pack_artifact
from distracted_driver.model.precision import with_tolerance
from distracted_driver.model.registry import Registry
from distracted_driver.storage import KeyNotFound, Storage, open_storage
from distracted_driver.system import process_gone, process_identity
from distracted_driver.train.trainer import Trainer, TrainingFailed

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "train.py"


class TrainingJobFailed(TrainingFailed):
    def __init__(self, job: str, reason: str, log_path: Path):
        super().__init__(f"training job {job} failed: {reason} (log: {log_path})")
        self.job, self.reason, self.log_path = job, reason, log_path


def new_job_name(now: datetime | None = None) -> str:
    """``dd-YYYYMMDD-HHMMSS-<4 hex>``: sortable by start time, unique by the random tail."""
    now = now or datetime.now(UTC)
    return f"dd-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def hyperparameter_args(hyperparameters: dict) -> list[str]:
    """``{"learning_rate": 0.01, "freeze_backbone": True}`` → ``--learning-rate 0.01 --freeze-backbone true``."""
    args = []
    for key, value in hyperparameters.items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += [f"--{key.replace('_', '-')}", text]
    return args


class LocalJob:
    """Paths and bucket keys of one job."""

    def __init__(self, settings: Settings, job: str):
        self.settings, self.name = settings, job
        self.root = settings.work_dir / "jobs" / job
        self.model_dir = self.root / "model"
        self.output_dir = self.root / "output"
        self.output_data_dir = self.output_dir / "data"
        self.checkpoint_dir = self.root / "checkpoints"
        self.log_path = self.root / "train.log"
        self.status_path = self.root / "status.json"
        prefix = f"{settings.models_prefix}/{job}"
        self.artifact_key = f"{prefix}/output/model.tar.gz"
        self.output_key = f"{prefix}/output/output.tar.gz"
        self.log_key = f"{prefix}/output/train.log"
        self.status_key = f"{prefix}/status.json"

    def channel_dir(self, channel: str) -> Path:
        return self.root / "input" / "data" / channel


def _run_script(
    command: list[str], env: dict, log_path: Path, stream: IO[str] | None, on_start: Callable[[int], None]
) -> int:
    """Run the script, copying its combined output to the log file and to ``stream`` as it comes."""
    with (
        open(log_path, "ab") as log,
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        ) as process,
    ):
        try:
            on_start(process.pid)
            while chunk := process.stdout.read1(65536):
                log.write(chunk)
                log.flush()
                if stream is not None:
                    stream.write(chunk.decode(errors="replace"))
                    stream.flush()
        except BaseException:
            process.terminate()
            process.wait(timeout=30)
            raise
        return process.wait()


def _tar_dir(directory: Path, tar_path: Path) -> Path:
    with atomic_path(tar_path) as tmp, tarfile.open(tmp, "w:gz") as archive:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            archive.add(path, arcname=path.relative_to(directory).as_posix())
    return tar_path


def _failure_reason(job: LocalJob, returncode: int) -> str:
    failure = job.output_dir / "failure"
    if failure.is_file():
        return failure.read_text().strip()
    lines = job.log_path.read_text(errors="replace").strip().splitlines() if job.log_path.exists() else []
    how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"
    return how + (f" (last output: {lines[-1]})" if lines else "")


class LocalTrainer(Trainer):
    """Training jobs on this machine (``run_local_job``)."""

    def __init__(self, settings: Settings, stream: IO[str] | None = sys.stdout):
        self.settings, self.stream = settings, stream

    def train(self, hyperparameters: dict, *, resume: str | None = None) -> str:
        return run_local_job(self.settings, hyperparameters, job_name=resume, stream=self.stream)


def run_local_job(
    settings: Settings,
    hyperparameters: dict | None = None,
    job_name: str | None = None,
    stream: IO[str] | None = sys.stdout,
    script: str | Path = SCRIPT,
    register: bool = True,
) -> str:
    """Train on the bucket's channels, store and register the artifact; return the job name.

    ``job_name`` of an earlier job that did not complete resumes it from its last checkpoint.
    Raises ``TrainingJobFailed`` (after recording the failure in the bucket) when the job fails.
    """
    storage = open_storage(settings)
    hyperparameters = with_tolerance(hyperparameters, settings.int8_tolerance)
    job = LocalJob(settings, job_name or new_job_name())
    close_orphaned_jobs(storage, settings, closed_by=f"training job {job.name}")
    previous = storage.get_bytes(job.status_key) if job_name and storage.exists(job.status_key) else None
    if previous and json.loads(previous).get("status") == "Completed":
        raise ValueError(f"training job {job.name} already completed; start a new job instead")
    job.root.mkdir(parents=True, exist_ok=True)
    status = {
        "job": job.name,
        "status": "InProgress",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "hyperparameters": dict(hyperparameters or {}),
        "runner": process_identity(),
    }
    timings: dict[str, float] = {}

    def record(**changes) -> None:
        status.update(changes, timings={k: round(v, 3) for k, v in timings.items()})
        write_json_atomic(job.status_path, status)
        storage.put_bytes(job.status_key, (json.dumps(status, indent=2, sort_keys=True) + "\n").encode())

    record()
    started = time.perf_counter()
    try:
        _fetch_channels(storage, settings, job)
        timings["fetch_seconds"] = time.perf_counter() - started
        manifest_sha256 = storage.checksum(f"{settings.data_prefix}/manifest.json")
        command = [
            sys.executable,
            str(script),
            *hyperparameter_args(hyperparameters or {}),
            "--job-name",
            job.name,
            "--feature-cache-dir",
            str(settings.work_dir / "feature-cache"),
        ]
        if manifest_sha256:
            command += ["--data-manifest-sha256", manifest_sha256]
        if stream is not None:
            stream.write(f"training job {job.name}: {' '.join(command[1:])}\n")
        step = time.perf_counter()
        returncode = _run_script(
            command,
            _sagemaker_env(job),
            job.log_path,
            stream,
            on_start=lambda pid: record(script=process_identity(pid)),
        )
        timings["train_seconds"] = time.perf_counter() - step
        if job.output_data_dir.is_dir():
            storage.put_file(_tar_dir(job.output_data_dir, job.output_dir / "output.tar.gz"), job.output_key)
        if returncode != 0:
            raise TrainingJobFailed(job.name, _failure_reason(job, returncode), job.log_path)
        step = time.perf_counter()
        tar = pack_artifact(job.model_dir, job.output_dir / "model.tar.gz")
        storage.put_file(tar, job.artifact_key)
        timings["upload_seconds"] = time.perf_counter() - step
        artifact = load_artifact(job.model_dir)
        if register:
            Registry(storage, settings).register(job.name, artifact)
        timings["total_seconds"] = time.perf_counter() - started
        record(
            status="Completed",
            ended=_now(),
            artifact_key=job.artifact_key,
            metrics={"log_loss": artifact.metrics["log_loss"], "accuracy": artifact.metrics["accuracy"]},
        )
        return job.name
    except BaseException as error:
        reason = error.reason if isinstance(error, TrainingJobFailed) else f"{type(error).__name__}: {error}"
        stopped = not isinstance(error, Exception)  # Ctrl-C, or SIGTERM of the pipeline run that started it
        timings["total_seconds"] = time.perf_counter() - started
        if storage.exists(job.artifact_key):  # failed after the upload (e.g. registering): no artifact stays
            storage.delete(job.artifact_key)
        record(status="Stopped" if stopped else "Failed", ended=_now(), failure_reason=reason or "interrupted")
        if isinstance(error, Exception) and not isinstance(error, TrainingJobFailed):
            raise TrainingJobFailed(job.name, reason, job.log_path) from error
        raise
    finally:
        if job.log_path.exists():
            storage.put_file(job.log_path, job.log_key)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def close_orphaned_jobs(storage: Storage, settings: Settings, closed_by: str) -> list[tuple[str, str]]:
    """Record as Stopped every job left InProgress by a runner that is gone; returns (job, reason) pairs.

    A runner killed with SIGKILL never writes how its job ended. Its training
    script, if it still runs (it dies at its next write to the closed pipe),
    is stopped. Jobs of other hosts, or of a runner that may still be alive,
    are left alone.
    """
    closed = []
    for key in storage.list_keys(f"{settings.models_prefix}/"):
        if not key.endswith("/status.json"):
            continue
        try:
            status = json.loads(storage.get_bytes(key))
        except (KeyNotFound, ValueError):
            continue
        runner = status.get("runner") or {}
        gone = process_gone(runner.get("host"), runner.get("pid"), runner.get("pid_started"))
        if status.get("status") != "InProgress" or not gone:
            continue
        _stop_script(status.get("script") or {})
        reason = f"its runner's {gone}: it was killed before it could record how the job ended (closed by {closed_by})"
        status.update(status="Stopped", ended=_now(), failure_reason=reason)
        body = (json.dumps(status, indent=2, sort_keys=True) + "\n").encode()
        storage.put_bytes(key, body)
        local = LocalJob(settings, status["job"]).status_path
        if local.parent.is_dir():
            write_bytes_atomic(local, body)
        closed.append((status["job"], reason))
    return closed


def _stop_script(script: dict) -> None:
    """Kill an orphaned training script, if the process with its pid is still that script."""
    pid = script.get("pid")
    if (
        not pid
        or script.get("host") != socket.gethostname()
        or process_gone(script["host"], pid, script.get("pid_started"))
    ):
        return
    with contextlib.suppress(psutil.Error):
        psutil.Process(script["pid"]).kill()


def _fetch_channels(storage, settings: Settings, job: LocalJob) -> None:
    """``data/{train,validation}`` → ``input/data/{train,validation}``, verified against the data manifest."""
    download_channels(storage, settings.data_prefix, job.channel_dir("train").parent)


def _sagemaker_env(job: LocalJob) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "SM_CHANNEL_TRAIN": str(job.channel_dir("train")),
            "SM_CHANNEL_VALIDATION": str(job.channel_dir("validation")),
            "SM_CHANNELS": json.dumps(["train", "validation"]),
            "SM_MODEL_DIR": str(job.model_dir),
            "SM_OUTPUT_DIR": str(job.output_dir),
            "SM_OUTPUT_DATA_DIR": str(job.output_data_dir),
            "SM_CHECKPOINT_DIR": str(job.checkpoint_dir),
            "TRAINING_JOB_NAME": job.name,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env
