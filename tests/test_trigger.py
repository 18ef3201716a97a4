"""lambda/trigger.py: new data manifest → one CodeBuild build, never while one is running.

moto plays S3 and CodeBuild; its builds finish the moment they are looked at, so the
"a build is in progress" and "limit reached" answers come through botocore's Stubber.
"""

from __future__ import annotations

import hashlib
import importlib.util
import urllib.parse
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

pytestmark = pytest.mark.moto  # moto's S3 and CodeBuild

REPO = Path(__file__).resolve().parents[1]
BUCKET = "dd-trigger-bucket"
PROJECT = "distracted-driver-dev-pipeline"
PREFIX = "raw/manifests/"


@pytest.fixture
def trigger(monkeypatch):
    spec = importlib.util.spec_from_file_location("dd_trigger_lambda", REPO / "lambda" / "trigger.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("PROJECT_NAME", PROJECT)
    monkeypatch.setenv("MANIFEST_PREFIX", PREFIX)
    return module


def s3_event(bucket: str, key: str, sequencer: str = "0065A1B2C3D4E5F6") -> dict:
    """An S3 ObjectCreated notification as S3 sends it (keys URL-encoded)."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": urllib.parse.quote_plus(key, safe="/"), "size": 120, "sequencer": sequencer},
                },
            }
        ]
    }


@pytest.fixture
def cloud(aws):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    role = boto3.client("iam").create_role(RoleName="codebuild", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    codebuild = boto3.client("codebuild", region_name="us-east-1")
    codebuild.create_project(
        name=PROJECT,
        serviceRole=role,
        artifacts={"type": "NO_ARTIFACTS"},
        source={
            "type": "GITHUB",
            "location": "https://github.com/example-org/distracted-driver.git",
            "buildspec": "buildspec.yml",
        },
        environment={
            "type": "LINUX_CONTAINER",
            "image": "aws/codebuild/standard:7.0",
            "computeType": "BUILD_GENERAL1_MEDIUM",
        },
    )
    return s3, codebuild


def test_a_new_manifest_starts_a_build_of_the_project(trigger, cloud):
    s3, codebuild = cloud
    key = f"{PREFIX}000002.json"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b'{"id": "000002"}')
    answer = trigger.handler(s3_event(BUCKET, key), None)
    assert answer["started"] is True and answer["manifest"] == key
    assert codebuild.list_builds_for_project(projectName=PROJECT)["ids"] == [answer["build"]]
    # moto finishes builds when they are looked at: the next manifest finds none running.
    assert codebuild.batch_get_builds(ids=[answer["build"]])["builds"][0]["buildStatus"] == "SUCCEEDED"
    later = trigger.handler(s3_event(BUCKET, f"{PREFIX}000003.json", "0065A1B2C3D4E5F7"), None)
    assert later["started"] is True
    assert len(codebuild.list_builds_for_project(projectName=PROJECT)["ids"]) == 2


def test_other_objects_start_nothing(trigger, cloud):
    _, codebuild = cloud
    for key in ("raw/train/c0/img_1.jpg", f"{PREFIX}notes.txt", PREFIX, "data/manifest.json"):
        assert trigger.handler(s3_event(BUCKET, key), None)["started"] is False
    assert trigger.handler({"Records": []}, None)["started"] is False
    assert trigger.handler("not an event", None)["started"] is False
    assert codebuild.list_builds_for_project(projectName=PROJECT)["ids"] == []


def test_url_encoded_keys_are_decoded(trigger):
    event = s3_event(BUCKET, f"{PREFIX}batch 7.json")
    assert event["Records"][0]["s3"]["object"]["key"] == "raw/manifests/batch+7.json"
    assert trigger.manifest_keys(event, PREFIX, ".json") == [(BUCKET, f"{PREFIX}batch 7.json", "0065A1B2C3D4E5F6")]


def _stubbed(trigger, monkeypatch):
    client = boto3.client("codebuild", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    monkeypatch.setattr(trigger, "_client", client)
    return client


def test_no_build_while_one_is_in_progress(trigger, monkeypatch):
    client = _stubbed(trigger, monkeypatch)
    with Stubber(client) as stub:
        stub.add_response(
            "list_builds_for_project",
            {"ids": [f"{PROJECT}:b2", f"{PROJECT}:b1"]},
            {"projectName": PROJECT, "sortOrder": "DESCENDING"},
        )
        stub.add_response(
            "batch_get_builds",
            {
                "builds": [
                    {"id": f"{PROJECT}:b2", "buildStatus": "IN_PROGRESS"},
                    {"id": f"{PROJECT}:b1", "buildStatus": "SUCCEEDED"},
                ]
            },
            {"ids": [f"{PROJECT}:b2", f"{PROJECT}:b1"]},
        )
        # No start_build queued: the Stubber would refuse the call.
        answer = trigger.handler(s3_event(BUCKET, f"{PREFIX}000003.json"), None)
        stub.assert_no_pending_responses()
    assert answer == {
        "started": False,
        "reason": "in progress",
        "build": f"{PROJECT}:b2",
        "manifest": f"{PREFIX}000003.json",
    }


def test_a_repeated_event_carries_the_same_idempotency_token(trigger, monkeypatch):
    client = _stubbed(trigger, monkeypatch)
    key, sequencer = f"{PREFIX}000004.json", "00AA"
    token = hashlib.sha256(f"{BUCKET}/{key}/{sequencer}".encode()).hexdigest()
    with Stubber(client) as stub:
        for _ in range(2):
            stub.add_response("list_builds_for_project", {}, {"projectName": PROJECT, "sortOrder": "DESCENDING"})
            stub.add_response(
                "start_build",
                {"build": {"id": f"{PROJECT}:b9", "buildStatus": "IN_PROGRESS"}},
                {
                    "projectName": PROJECT,
                    "idempotencyToken": token,
                    "environmentVariablesOverride": [
                        {"name": "DD_TRIGGER_MANIFEST", "value": f"s3://{BUCKET}/{key}", "type": "PLAINTEXT"}
                    ],
                },
            )
        first = trigger.handler(s3_event(BUCKET, key, sequencer), None)
        second = trigger.handler(s3_event(BUCKET, key, sequencer), None)
        stub.assert_no_pending_responses()
    assert first["build"] == second["build"] == f"{PROJECT}:b9"


def test_the_project_build_limit_counts_as_in_progress(trigger, monkeypatch):
    client = _stubbed(trigger, monkeypatch)
    with Stubber(client) as stub:
        stub.add_response("list_builds_for_project", {}, {"projectName": PROJECT, "sortOrder": "DESCENDING"})
        stub.add_client_error(
            "start_build",
            service_error_code="AccountLimitExceededException",
            http_status_code=400,
            service_message="Cannot have more than 1 builds in queue for the account",
        )
        answer = trigger.handler(s3_event(BUCKET, f"{PREFIX}000005.json"), None)
    assert answer["started"] is False and answer["reason"] == "limit reached"


def test_the_trigger_imports_nothing_but_boto3_and_the_standard_library():
    source = (REPO / "lambda" / "trigger.py").read_text()
    imported = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imported <= {"__future__", "hashlib", "json", "logging", "os", "urllib", "boto3", "botocore"}
