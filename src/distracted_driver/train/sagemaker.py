"""Training jobs on SageMaker, laid out in the bucket as the local runner lays out its own.

Two algorithms on the same RecordIO channels (``data/train``, ``data/validation``):

- ``script``: our ``scripts/train.py`` in the SageMaker PyTorch training container
  (script mode). The source (``train.py``, the package beside it, a
  ``requirements.txt``) is staged to ``models/<job>/source/sourcedir.tar.gz``;
  the channels arrive in File mode (``.rec`` + ``.idx``, as our reader wants);
  the job writes our artifact contract (``model.onnx`` …) to ``SM_MODEL_DIR``.
- ``builtin``: SageMaker's image-classification algorithm (MXNet ResNet, GPU
  instances only), RecordIO in Pipe mode. A manifest per channel lists only
  the ``.rec`` file, because Pipe mode would stream every object under a
  prefix (``.idx`` and ``.lst`` included) into one byte stream.

Either way SageMaker writes ``models/<job>/output/model.tar.gz`` (its
``S3OutputPath`` is ``s3://<bucket>/models``), this module streams the job's
CloudWatch log while it waits, copies it to ``models/<job>/output/train.log``,
keeps ``models/<job>/status.json`` current and registers the result.
Image URIs come from ``sagemaker-core``'s table (``image_uris.retrieve``), per region.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from distracted_driver.awsclient import aws_client
from distracted_driver.config import Settings
from distracted_driver.data.layout import CLASSES
from distracted_driver.model.precision import with_tolerance
from distracted_driver.model.registry import Registry
from distracted_driver.storage import Storage, open_storage
from distracted_driver.train.runner import new_job_name
from distracted_driver.train.source_dir import stage_source_dir
from distracted_driver.train.trainer import Trainer, TrainingFailed

ALGORITHMS = ("script", "builtin")
# The SageMaker PyTorch training container (sagemaker-core's table; newest with a CPU image at writing).
PYTORCH_VERSION = "2.8"
PYTORCH_PY_VERSION = "py312"
BUILTIN_INSTANCE_TYPE = "ml.g4dn.xlarge"  # the built-in algorithm trains on GPU instances only
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL = ("Completed", "Failed", "Stopped")
RECORDIO = "application/x-recordio"
CHANNELS = ("train", "validation")

# Our hyperparameter names (scripts/train.py's flags) → the built-in algorithm's; flags that
# only mean something to our script are left out of a built-in job (and said so).
BUILTIN_RENAMES = {"patience": "early_stopping_patience"}
SCRIPT_ONLY = {"freeze_backbone", "augmentation", "seed", "dropout", "feature_cache_dir"}
BUILTIN_PARAMETERS = {
    "num_layers",
    "image_shape",
    "num_classes",
    "num_training_samples",
    "mini_batch_size",
    "epochs",
    "learning_rate",
    "use_pretrained_model",
    "augmentation_type",
    "optimizer",
    "momentum",
    "weight_decay",
    "lr_scheduler_factor",
    "lr_scheduler_step",
    "early_stopping",
    "early_stopping_patience",
    "early_stopping_min_epochs",
    "early_stopping_tolerance",
    "precision_dtype",
    "resize",
    "top_k",
    "use_weighted_loss",
    "checkpoint_frequency",
    "beta_1",
    "beta_2",
    "eps",
    "gamma",
    "kv_store",
}
BUILTIN_DEFAULTS = {
    "num_layers": 18,
    "use_pretrained_model": 1,
    "epochs": 10,
    "learning_rate": 0.001,
    "mini_batch_size": 32,
    "augmentation_type": "crop_color_transform",
    "early_stopping": "true",
    "precision_dtype": "float32",
}


class SageMakerJobFailed(TrainingFailed):
    def __init__(self, job: str, status: str, reason: str):
        super().__init__(f"training job {job} {status.lower()}: {reason}")
        self.job, self.status, self.reason = job, status, reason


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def image_uri(algorithm: str, region: str, instance_type: str) -> str:
    from sagemaker.core import image_uris  # sagemaker-core (aws extra): local installs and the serving image lack it

    if algorithm == "builtin":
        return image_uris.retrieve("image-classification", region)
    return image_uris.retrieve(
        "pytorch",
        region,
        version=PYTORCH_VERSION,
        py_version=PYTORCH_PY_VERSION,
        instance_type=instance_type,
        image_scope="training",
    )


def builtin_hyperparameters(hyperparameters: dict, num_training_samples: int) -> tuple[dict[str, str], list[str]]:
    """The built-in algorithm's hyperparameters from ours (``image_size`` → ``image_shape``) or its own names.

    Returns them and the names of our script's flags that were left out.
    """
    values = dict(BUILTIN_DEFAULTS)
    ignored = []
    for key, value in hyperparameters.items():
        key = key.replace("-", "_")
        if value is None:
            continue
        if key == "image_size":
            values["image_shape"] = f"3,{int(value)},{int(value)}"
        elif key in SCRIPT_ONLY:
            ignored.append(key)
        elif BUILTIN_RENAMES.get(key, key) in BUILTIN_PARAMETERS:
            values[BUILTIN_RENAMES.get(key, key)] = value
        else:
            raise ValueError(
                f"hyperparameter {key!r} has no meaning for the built-in algorithm; "
                f"use image_size or one of {', '.join(sorted(BUILTIN_PARAMETERS))}"
            )
    values.setdefault("image_shape", "3,224,224")
    values["num_classes"] = len(CLASSES)
    values["num_training_samples"] = num_training_samples
    text = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in values.items()}
    return text, ignored


def script_hyperparameters(hyperparameters: dict, source_uri: str, region: str) -> dict[str, str]:
    """Our flags as SageMaker passes them (``--key value``), plus the script-mode settings."""
    values = {
        key.replace("_", "-"): str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in hyperparameters.items()
        if value is not None
    }
    values.update(
        sagemaker_program="train.py",
        sagemaker_submit_directory=source_uri,
        sagemaker_region=region,
        sagemaker_container_log_level="20",
    )
    return values


class SageMakerTrainer(Trainer):
    def __init__(
        self,
        settings: Settings,
        *,
        algorithm: str = "script",
        storage: Storage | None = None,
        sagemaker=None,
        logs=None,
        poll_seconds: float = 30.0,
        stream: IO[str] | None = sys.stdout,
        progress: bool = True,
    ):
        self.settings = settings
        self.algorithm = algorithm  # of train(): script or builtin
        self.storage = storage or open_storage(settings)
        self.sagemaker = sagemaker or aws_client("sagemaker", settings.region)
        self.logs = logs or aws_client("logs", settings.region)
        self.poll_seconds = poll_seconds
        self.stream = stream
        self.progress = progress

    # -- keys ----------------------------------------------------------------

    def _prefix(self, job: str) -> str:
        return f"{self.settings.models_prefix}/{job}"

    def _s3(self, key: str) -> str:
        return f"s3://{self.settings.bucket}/{key}"

    # -- the request -----------------------------------------------------------

    def _num_training_samples(self) -> int:
        idx = self.storage.get_bytes(f"{self.settings.data_prefix}/train/train.idx")
        return sum(1 for line in idx.splitlines() if line.strip())

    def _channel_manifest(self, job: str, channel: str) -> str:
        """A manifest listing only ``<channel>.rec``: Pipe mode streams every object it names."""
        key = f"{self._prefix(job)}/input/{channel}.manifest"
        prefix = self._s3(f"{self.settings.data_prefix}/{channel}/")
        self.storage.put_bytes(key, json.dumps([{"prefix": prefix}, f"{channel}.rec"]).encode())
        return self._s3(key)

    def _stage_source(self, job: str) -> str:
        key = f"{self._prefix(job)}/source/sourcedir.tar.gz"
        with tempfile.TemporaryDirectory(prefix="sourcedir-") as tmp:
            tar = stage_source_dir(Path(tmp) / "sourcedir.tar.gz")
            self.storage.put_file(tar, key)
        return self._s3(key)

    def request(
        self,
        job: str,
        algorithm: str,
        hyperparameters: dict,
        instance_type: str,
        max_runtime_seconds: int,
        spot: bool,
        volume_gb: int,
    ) -> dict:
        """The ``CreateTrainingJob`` request (staging the manifests or the source it names)."""
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, not {algorithm!r}")
        if not self.settings.role_arn:
            raise ValueError("no SageMaker execution role: set DD_ROLE_ARN (Terraform output sagemaker_role_arn)")
        if algorithm == "builtin":
            mode = "Pipe"
            hp, ignored = builtin_hyperparameters(hyperparameters, self._num_training_samples())
            if ignored:
                self._say(f"the built-in algorithm has no equivalent of {', '.join(sorted(ignored))}: left out")
            channels = [
                {
                    "ChannelName": channel,
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "ManifestFile",
                            "S3Uri": self._channel_manifest(job, channel),
                            "S3DataDistributionType": "FullyReplicated",
                        }
                    },
                    "ContentType": RECORDIO,
                    "InputMode": mode,
                }
                for channel in CHANNELS
            ]
        else:
            mode = "File"
            hp = script_hyperparameters(
                with_tolerance(hyperparameters, self.settings.int8_tolerance),
                self._stage_source(job),
                self.settings.region,
            )
            manifest_sha256 = self.storage.checksum(f"{self.settings.data_prefix}/manifest.json")
            if manifest_sha256:
                hp["data-manifest-sha256"] = manifest_sha256
            channels = [
                {
                    "ChannelName": channel,
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": self._s3(f"{self.settings.data_prefix}/{channel}/"),
                            "S3DataDistributionType": "FullyReplicated",
                        }
                    },
                    "InputMode": mode,
                }
                for channel in CHANNELS
            ]
        output = {"S3OutputPath": self._s3(self.settings.models_prefix)}
        if self.settings.kms_key_id:
            output["KmsKeyId"] = self.settings.kms_key_id
        stopping = {"MaxRuntimeInSeconds": int(max_runtime_seconds)}
        if spot:  # spot capacity may take a while; wait at most as long again
            stopping["MaxWaitTimeInSeconds"] = 2 * int(max_runtime_seconds)
        return {
            "TrainingJobName": job,
            "AlgorithmSpecification": {
                "TrainingImage": image_uri(algorithm, self.settings.region, instance_type),
                "TrainingInputMode": mode,
            },
            "RoleArn": self.settings.role_arn,
            "HyperParameters": hp,
            "InputDataConfig": channels,
            "OutputDataConfig": output,
            "ResourceConfig": {"InstanceType": instance_type, "InstanceCount": 1, "VolumeSizeInGB": int(volume_gb)},
            "StoppingCondition": stopping,
            "EnableManagedSpotTraining": bool(spot),
            "CheckpointConfig": {"S3Uri": self._s3(f"{self._prefix(job)}/checkpoints")},
            "Tags": [{"Key": "algorithm", "Value": algorithm}, {"Key": "project", "Value": "distracted-driver"}],
        }

    # -- running -------------------------------------------------------------------

    def _record(self, job: str, status: dict) -> None:
        body = (json.dumps(status, indent=2, sort_keys=True, default=str) + "\n").encode()
        self.storage.put_bytes(f"{self._prefix(job)}/status.json", body)

    def train(self, hyperparameters: dict, *, resume: str | None = None) -> str:
        if resume:
            raise ValueError("--resume continues local jobs; a SageMaker job name cannot be reused")
        return self.run(hyperparameters, algorithm=self.algorithm)

    def run(
        self,
        hyperparameters: dict | None = None,
        algorithm: str = "script",
        job_name: str | None = None,
        instance_type: str | None = None,
        max_runtime_seconds: int = 4 * 3600,
        spot: bool = False,
        volume_gb: int = 30,
        register: bool = True,
    ) -> str:
        """Start a job, wait for it with its log streaming, store its log and register its model."""
        job = job_name or new_job_name()
        hyperparameters = dict(hyperparameters or {})
        instance_type = instance_type or (
            BUILTIN_INSTANCE_TYPE if algorithm == "builtin" else self.settings.training_instance_type
        )
        request = self.request(job, algorithm, hyperparameters, instance_type, max_runtime_seconds, spot, volume_gb)
        status = {
            "job": job,
            "status": "InProgress",
            "started": _now(),
            "algorithm": algorithm,
            "backend": "aws",
            "instance_type": instance_type,
            "hyperparameters": hyperparameters,
        }
        self._record(job, status)
        self.sagemaker.create_training_job(**request)
        self._say(f"training job {job} ({algorithm}, {instance_type}) started")
        try:
            described = self.wait(job)
        except KeyboardInterrupt:  # do not leave a paid job running behind an interrupted command
            self.sagemaker.stop_training_job(TrainingJobName=job)
            self._record(job, {**status, "status": "Stopped", "ended": _now(), "failure_reason": "interrupted"})
            raise
        status.update(
            ended=_now(),
            status=described["TrainingJobStatus"],
            billable_seconds=described.get("BillableTimeInSeconds"),
            final_metrics={m["MetricName"]: m["Value"] for m in described.get("FinalMetricDataList", [])},
        )
        if described["TrainingJobStatus"] != "Completed":
            reason = described.get("FailureReason") or described.get("SecondaryStatus", "")
            self._record(job, {**status, "failure_reason": reason})
            raise SageMakerJobFailed(job, described["TrainingJobStatus"], reason)
        status["artifact_key"] = f"{self._prefix(job)}/output/model.tar.gz"
        if register:
            status["metrics"] = self._register(job, algorithm, status)
        self._record(job, status)
        return job

    def _say(self, line: str) -> None:
        if self.stream is not None:
            tqdm.write(line, file=self.stream)

    def wait(self, job: str) -> dict:
        """Poll until the job ends; print its CloudWatch log as it comes; keep a copy in the bucket."""
        lines: list[str] = []
        cursor: dict = {"start": 0, "seen": set()}
        with tqdm(total=0, bar_format="{desc} [{elapsed}]", disable=not self.progress) as bar:
            while True:
                described = self.sagemaker.describe_training_job(TrainingJobName=job)
                bar.set_description_str(
                    f"{job}: {described['TrainingJobStatus']} / {described.get('SecondaryStatus', '')}"
                )
                for line in self._new_log_lines(job, cursor):
                    lines.append(line)
                    self._say(line)
                if described["TrainingJobStatus"] in TERMINAL:
                    break
                time.sleep(self.poll_seconds)
        for line in self._new_log_lines(job, cursor):  # what arrived after the last poll
            lines.append(line)
            self._say(line)
        if lines:
            self.storage.put_bytes(f"{self._prefix(job)}/output/train.log", ("\n".join(lines) + "\n").encode())
        return described

    def _new_log_lines(self, job: str, cursor: dict) -> list[str]:
        request = {"logGroupName": LOG_GROUP, "logStreamNamePrefix": f"{job}/", "startTime": cursor["start"]}
        lines = []
        try:
            for page in self.logs.get_paginator("filter_log_events").paginate(**request):
                for event in page.get("events", []):
                    if event["eventId"] in cursor["seen"]:
                        continue
                    cursor["seen"].add(event["eventId"])
                    cursor["start"] = max(cursor["start"], event["timestamp"])
                    lines.append(event["message"].rstrip("\n"))
        except ClientError as error:
            # No log group or stream before the instance starts: nothing to say. Anything else
            # (AccessDenied, throttling) costs the log, never the wait: the job runs and bills on.
            code = error.response.get("Error", {}).get("Code")
            if code != "ResourceNotFoundException" and code not in cursor.setdefault("warned", set()):
                cursor["warned"].add(code)
                self._say(
                    f"{job}: cannot read its log from CloudWatch ({code}: "
                    f"{error.response.get('Error', {}).get('Message', '')}); waiting on without it"
                )
        except BotoCoreError as error:
            if "connection" not in cursor.setdefault("warned", set()):
                cursor["warned"].add("connection")
                self._say(f"{job}: cannot reach CloudWatch Logs ({error}); waiting on without the log")
        return lines

    # -- registering -------------------------------------------------------------------

    def _register(self, job: str, algorithm: str, status: dict) -> dict:
        """Register a script-mode model (our artifact contract); report the built-in one's own metrics.

        The built-in algorithm's model is MXNet, not our ONNX artifact, and it reports
        accuracy, not the log loss on unseen drivers that the gate compares, so it is
        stored and described in status.json but not registered: the gate cannot judge it.
        """
        if algorithm == "builtin":
            self._say(
                f"{job}: built-in model stored at {self._s3(status['artifact_key'])}; "
                "not registered (no log loss for the gate); final metrics "
                f"{status.get('final_metrics')}"
            )
            return dict(status.get("final_metrics") or {})

        registry = Registry(self.storage, self.settings)
        with tempfile.TemporaryDirectory(prefix=f"{job}-") as tmp:
            artifact = registry.fetch_artifact(job, tmp)
            registry.register(job, artifact)
        return {"log_loss": artifact.metrics["log_loss"], "accuracy": artifact.metrics["accuracy"]}


def run_sagemaker_job(
    settings: Settings, hyperparameters: dict | None = None, algorithm: str = "script", **options
) -> str:
    """Train on SageMaker and register the model; returns the job name (= model version)."""
    return SageMakerTrainer(settings).run(hyperparameters, algorithm=algorithm, **options)
