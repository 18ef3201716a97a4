"""State across runs, on moto: the CodeBuild sequence twice on the same commit, and the trigger's build after a
data upload.

A second build of a commit is what the S3 trigger starts whenever new data lands, so everything the build
does must find the state the first one left and go on: ``inv infra.push-image`` (an IMMUTABLE tag already in
ECR), the deploy (the same version already live), the smoke request. Docker is not run here: a stand-in
``docker``/``aws`` on PATH logs what the task asks of them, and the test puts the image into (moto's) ECR
where the push would have.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import boto3
import pytest
from hosting_support import put_rollback_alarms
from invoke import Config, Context

from distracted_driver.config import Settings
from distracted_driver.hosting.aws import SageMakerHosting
from distracted_driver.hosting.base import AlarmThresholds, ModelSpec, TrafficRouting
from distracted_driver.infra.terraform import env_file
from distracted_driver.model.registry import Registry
from distracted_driver.storage.s3 import S3Storage

pytestmark = pytest.mark.moto  # runs the build's sequence twice against moto

REPO = Path(__file__).resolve().parents[1]
BUCKET = "dd-runs-bucket"
REPOSITORY = "distracted-driver-dev-serving"
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
COMMIT = "0123abcd"
VERSION = "dd-20260105-000000-eeee"
PROJECT = "distracted-driver-dev-pipeline"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 7,
            "digest": "sha256:" + "b" * 64,
        },
        "layers": [],
    }
)


def _tasks():
    spec = importlib.util.spec_from_file_location("dd_tasks_runs", REPO / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def account(aws, tmp_path, monkeypatch, make_artifact, runtime_answers):
    """What `terraform apply` leaves: the bucket, the repository, the rollback alarms, the CodeBuild project;
    and a registered model version, as the pipeline's train and gate stages leave it."""
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    boto3.client("ecr", region_name="us-east-1").create_repository(
        repositoryName=REPOSITORY, imageTagMutability="IMMUTABLE"
    )
    put_rollback_alarms("distracted-driver-dev")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "aws"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path / "tools.log"}\n')
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("DD_ROOT", str(tmp_path))
    monkeypatch.setenv("DD_SERVING_IMAGE_REPOSITORY", f"{REGISTRY}/{REPOSITORY}")
    settings = Settings(
        backend="aws",
        root=tmp_path,
        bucket=BUCKET,
        endpoint_name="distracted-driver-dev",
        role_arn="arn:aws:iam::123456789012:role/distracted-driver-dev-sagemaker",
    )
    storage = S3Storage(BUCKET)
    make_artifact(VERSION, seed=5).publish(storage, settings)
    return settings, storage, tmp_path


def _build(settings, storage, root) -> dict:
    """One CodeBuild run of buildspec.yml's AWS steps on the same commit: push-image, deploy, smoke."""
    _tasks().infra_push_image(Context(Config(overrides={"run": {"in_stream": False}})), tag=COMMIT)
    log = (root / "tools.log").read_text().splitlines() if (root / "tools.log").exists() else []
    if any(line.startswith("docker push") for line in log) and not _in_ecr():
        # The stand-in docker does not reach a registry: put the image where the push would have.
        boto3.client("ecr", region_name="us-east-1").put_image(
            repositoryName=REPOSITORY, imageManifest=MANIFEST, imageTag=COMMIT
        )
    image = dict(
        line.split("=", 1)
        for line in env_file(settings).read_text().splitlines()
        if line.startswith("DD_SERVING_IMAGE=")
    )["DD_SERVING_IMAGE"]
    built = Settings(**{**settings.__dict__, "serving_image": image})
    hosting = SageMakerHosting(built, storage=storage, poll_seconds=0, progress=False)
    deployed = hosting.deploy(
        ModelSpec(VERSION, f"{settings.models_prefix}/{VERSION}/output/model.tar.gz"),
        TrafficRouting(strategy="canary"),
        AlarmThresholds(),
    )
    body, variant = hosting.invoke(b"image bytes", "image/jpeg")  # reaches the endpoint (moto reads bodies as text)
    return {"deploy": deployed, "tools": log, "smoke": (body, variant)}


def _in_ecr() -> bool:
    images = boto3.client("ecr", region_name="us-east-1").describe_images(repositoryName=REPOSITORY)["imageDetails"]
    return any(COMMIT in image.get("imageTags", []) for image in images)


def test_the_build_runs_twice_on_the_same_commit(account, capsys):
    settings, storage, root = account
    first = _build(settings, storage, root)
    assert first["deploy"].outcome == "deployed"
    # (`aws ecr get-login-password | docker login` runs both at once: either may log first)
    assert sorted(line.split()[:2] for line in first["tools"]) == [
        ["aws", "ecr"],
        ["docker", "build"],
        ["docker", "login"],
        ["docker", "push"],
    ]
    assert "pushed" in capsys.readouterr().out

    second = _build(settings, storage, root)
    assert second["tools"] == first["tools"]  # no docker call at all: the tag is in ECR already
    assert "is in ECR already (tags are immutable): not built, not pushed" in capsys.readouterr().out
    assert (second["deploy"].outcome, second["deploy"].live_version) == ("unchanged", VERSION)
    assert Registry(storage, settings).live()["job"] == VERSION
    tags = {
        tag
        for image in boto3.client("ecr", region_name="us-east-1").describe_images(repositoryName=REPOSITORY)[
            "imageDetails"
        ]
        for tag in image.get("imageTags", [])
    }
    assert tags == {COMMIT, f"model-{VERSION}"}  # the live model's image is kept from the lifecycle policy


def test_the_trigger_starts_a_build_after_a_data_upload(account, monkeypatch, tmp_path):
    """`inv data.add` on S3 writes the manifest last; its S3 event makes the trigger start the pipeline's build,
    again after a second upload once the first build is over."""
    from pipeline_support import sample_batch

    from distracted_driver.data.ingest import add_data

    settings, storage, _ = account
    role = boto3.client("iam").create_role(RoleName="codebuild", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    codebuild = boto3.client("codebuild", region_name="us-east-1")
    codebuild.create_project(
        name=PROJECT,
        serviceRole=role,
        artifacts={"type": "NO_ARTIFACTS"},
        source={"type": "GITHUB", "location": "https://github.com/example-org/distracted-driver.git"},
        environment={
            "type": "LINUX_CONTAINER",
            "image": "aws/codebuild/standard:7.0",
            "computeType": "BUILD_GENERAL1_MEDIUM",
        },
    )
    spec = importlib.util.spec_from_file_location("dd_trigger_runs", REPO / "lambda" / "trigger.py")
    trigger = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trigger)
    monkeypatch.setenv("PROJECT_NAME", PROJECT)
    monkeypatch.setenv("MANIFEST_PREFIX", f"{settings.raw_prefix}/manifests/")

    started = []
    for batch, seed in (("one", 1), ("two", 2)):
        add_data(
            storage,
            settings,
            sample_batch(tmp_path / batch, drivers=2, per_class=1, seed=seed, first_driver=seed * 10),
            progress=False,
        )
        manifests = sorted(storage.list_keys(f"{settings.raw_prefix}/manifests/"))
        event = {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": BUCKET}, "object": {"key": manifests[-1], "sequencer": f"00{seed}"}},
                }
            ]
        }
        answer = trigger.handler(event, None)
        assert answer["started"] is True and answer["manifest"] == manifests[-1]
        started.append(answer["build"])
    assert sorted(codebuild.list_builds_for_project(projectName=PROJECT)["ids"]) == sorted(started)
