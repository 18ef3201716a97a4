"""inv infra.preflight: moto for STS and S3; botocore's Stubber (requests and answers validated against the
service models) for Lambda's account settings, Service Quotas and CodeBuild's source credentials, which
moto does not answer."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from distracted_driver.infra.preflight import LAMBDA_QUOTA_CODE, Preflight, needs_of

pytestmark = pytest.mark.moto  # moto and Stubber clients for every check

REPO = Path(__file__).resolve().parents[1]
TERRAFORM = REPO / "terraform"


def _quota(name: str, code: str, value: float) -> dict:
    return {
        "ServiceCode": "sagemaker",
        "ServiceName": "Amazon SageMaker",
        "QuotaCode": code,
        "QuotaName": name,
        "Value": value,
        "Unit": "None",
        "Adjustable": True,
        "GlobalQuota": False,
    }


FRESH_QUOTAS = [  # what a new account shows: CPU types a little, GPU training none
    _quota("ml.c5.large for endpoint usage", "L-R0C5A1B2", 2),
    _quota("ml.m5.xlarge for training job usage", "L-M5X1T4A1", 2),
    _quota("ml.g4dn.xlarge for training job usage", "L-G4DNX1T0", 0),
]


def _run(needs, *, total=10, unreserved=10, quotas=FRESH_QUOTAS, credentials=(), build=False):
    session = boto3.session.Session()
    clients = {
        name: session.client(name, region_name=needs.region) for name in ("lambda", "service-quotas", "codebuild")
    }
    stubs = {name: Stubber(client) for name, client in clients.items()}
    stubs["lambda"].add_response(
        "get_account_settings",
        {
            "AccountLimit": {
                "ConcurrentExecutions": total,
                "UnreservedConcurrentExecutions": unreserved,
                "TotalCodeSize": 80530636800,
                "CodeSizeUnzipped": 262144000,
                "CodeSizeZipped": 52428800,
            }
        },
        {},
    )
    stubs["service-quotas"].add_response(
        "list_aws_default_service_quotas", {"Quotas": quotas}, {"ServiceCode": "sagemaker"}
    )
    stubs["service-quotas"].add_response("list_service_quotas", {"Quotas": []}, {"ServiceCode": "sagemaker"})
    if not build and not needs.registers_source_credential:
        stubs["codebuild"].add_response("list_source_credentials", {"sourceCredentialsInfos": list(credentials)}, {})
    for stub in stubs.values():
        stub.activate()
    report = Preflight(needs, session, build=build, clients=clients).run()
    for stub in stubs.values():
        stub.assert_no_pending_responses()
    return report


def _lines(report, name):
    return [str(check) for check in report.findings if check.check == name]


def test_dev_reads_what_it_asks_of_the_account():
    needs = needs_of(TERRAFORM, "dev")
    assert (needs.region, needs.serving_instance_type, needs.serving_instances) == ("us-east-1", "ml.c5.large", 1)
    assert needs.lambda_reservations == {} and needs.state_bucket is None
    assert needs.training_instance_types == {"ml.m5.xlarge": True, "ml.g4dn.xlarge": False}


def test_a_fresh_account_takes_dev_and_says_what_it_lacks(aws):
    """10 concurrent executions and no GPU training quota: dev (no reservations, CPU training) still applies and
    builds; the lines say what to request for the rest."""
    report = _run(
        needs_of(TERRAFORM, "dev"),
        credentials=[
            {
                "arn": "arn:aws:codebuild:us-east-1:123456789012:token/github",
                "serverType": "GITHUB",
                "authType": "PERSONAL_ACCESS_TOKEN",
            }
        ],
    )
    assert report.ok, str(report)
    assert "123456789012" in _lines(report, "identity")[0] and "region us-east-1" in _lines(report, "identity")[0]
    assert "only 10 at once" in _lines(report, "lambda-concurrency")[0] and LAMBDA_QUOTA_CODE in str(report)
    gpu = [line for line in _lines(report, "sagemaker-quota") if "g4dn" in line]
    assert gpu == [
        "warn sagemaker-quota: 'ml.g4dn.xlarge for training job usage' is 0, the built-in algorithm's "
        "training (optional: `--algorithm builtin`) needs 1: request 1 in Service Quotas > Amazon SageMaker > "
        "L-G4DNX1T0 in us-east-1"
    ]
    assert "'ml.c5.large for endpoint usage' (L-R0C5A1B2) is 2" in str(report)


def test_a_fresh_account_refuses_what_it_cannot_take(aws):
    """The old defaults (100 + 1 reserved) and GPU training on a fresh account: apply and the first build would fail."""
    needs = replace(
        needs_of(TERRAFORM, "dev"),
        lambda_reservations={"predict": 100, "trigger": 1},
        training_instance_types={"ml.g4dn.xlarge": True},
    )
    report = _run(needs, credentials=[])
    assert not report.ok
    failures = [str(c) for c in report.findings if c.status == "FAIL"]
    assert any(
        f"request Service Quotas > AWS Lambda > Concurrent executions ({LAMBDA_QUOTA_CODE}) of at least 201" in f
        for f in failures
    ), failures
    assert any(
        "'ml.g4dn.xlarge for training job usage' is 0, a training job needs 1: request 1" in f and "L-G4DNX1T0" in f
        for f in failures
    ), failures
    assert any("no GitHub source credential" in f and "github_token" in f for f in failures), failures


def test_an_instance_type_the_region_lacks_is_named(aws):
    needs = replace(needs_of(TERRAFORM, "dev"), serving_instance_type="ml.c9.huge", registers_source_credential=True)
    report = _run(needs)
    assert not report.ok
    assert _lines(report, "instance-offered") == [
        "FAIL instance-offered: ml.c9.huge is not offered for the endpoint in us-east-1 (Service Quotas has no "
        "'ml.c9.huge for endpoint usage'): pick another type in envs/dev.tfvars or another region"
    ]


def test_the_state_bucket_must_exist(aws, tmp_path):
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy, ignore=shutil.ignore_patterns(".terraform"))
    (copy / "backend.tf").write_text((TERRAFORM / "backend.tf.example").read_text())
    needs = replace(needs_of(copy, "dev"), registers_source_credential=True)
    assert needs.state_bucket == "my-org-terraform-state"
    assert "does not exist" in _lines(_run(needs), "state-bucket")[0]
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="my-org-terraform-state")
    assert _lines(_run(needs), "state-bucket") == ["ok   state-bucket: state bucket my-org-terraform-state exists"]
    assert _lines(_run(needs, build=True), "state-bucket") == []  # inside CodeBuild the state is not its business


def test_no_credentials_is_one_clear_line(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    report = Preflight(needs_of(TERRAFORM, "dev"), boto3.session.Session()).run()
    assert not report.ok and [c.check for c in report.findings] == ["identity"]
    assert "no usable credentials" in str(report)


@pytest.mark.slow
def test_the_task_exits_non_zero_when_the_account_cannot_take_the_env(tmp_path):
    """`inv infra.preflight` as ops run it: without credentials it prints the line and exits 1."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "DD_ROOT": str(REPO),
    }
    done = subprocess.run(
        [str(Path(sys.executable).with_name("inv")), "infra.preflight", "--env", "dev"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL identity: no usable credentials" in done.stdout
