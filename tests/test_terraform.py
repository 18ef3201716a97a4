"""terraform/ checked statically: the wiring (python-hcl2), checkov, and the outputs → settings conversion.

No terraform binary and no provider: the checks read the files. Each wiring check is
also shown to fail on a copy of the configuration broken in the way it guards against.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest

from distracted_driver.config import Settings
from distracted_driver.infra import docs
from distracted_driver.infra import terraform as tf
from distracted_driver.infra.check import MANIFESTS_DIR, run_checkov, wiring_findings
from distracted_driver.infra.hcl import Configuration, Module

REPO = Path(__file__).resolve().parents[1]
TERRAFORM = REPO / "terraform"
SAMPLE_OUTPUTS = Path(__file__).parent / "data" / "terraform_output.json"


def test_the_configuration_is_wired_to_the_code():
    report = wiring_findings(TERRAFORM, REPO)
    assert report.ok, "\n".join(str(f) for f in report.failures)
    checks = {f.check for f in report.findings}
    assert {
        "lambda-endpoint",
        "lambda-invokes-only-its-endpoint",
        "binary-media-types",
        "autoscaling-resource-id",
        "rollback-alarm-names",
        "trigger-prefix",
        "trigger-policy-project-only",
        "defaults-agree",
        "checkov-skips-justified",
        "lambda-timeouts",
        "autoscaling-validation-grants",
        "ecr-keeps-model-images",
        "lambda-no-reservation-unless-asked",
        "logs-arn-form",
        "lifecycle-filter-not-empty",
        "transform-job-names",
        "transform-prefixes",
    } <= checks
    assert {f.variant for f in report.findings} == {"defaults", "dev", "prod"}


def test_values_flow_through_modules():
    config = Configuration(TERRAFORM, TERRAFORM / "envs" / "dev.tfvars")
    assert config.variable("endpoint_name") == "distracted-driver-dev"
    autoscaling = config.instance("autoscaling")
    assert (
        autoscaling.value(autoscaling.module.locals["resource_id"])
        == "endpoint/distracted-driver-dev/variant/AllTraffic"
    )
    trigger = config.instance("trigger")
    assert trigger.inputs["codebuild_project_arn"] == "${codebuild:aws_codebuild_project.this.arn}"
    assert trigger.inputs["manifest_prefix"] == f"raw/{MANIFESTS_DIR}/"


def test_the_manifest_directory_is_the_one_ingest_writes():
    from distracted_driver.data.ingest import MANIFESTS

    assert MANIFESTS == MANIFESTS_DIR


# --- each check fails on the mistake it guards against -------------------------------------------


def _broken(tmp_path: Path, path: str, old: str, new: str) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(TERRAFORM, copy / "terraform", ignore=shutil.ignore_patterns(".terraform"), symlinks=True)
    shutil.copytree(REPO / "lambda", copy / "lambda", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "buildspec.yml", copy / "buildspec.yml")
    target = copy / "terraform" / path
    text = target.read_text()
    assert old in text, f"{old!r} not in {path}"
    target.write_text(text.replace(old, new, 1))
    return copy


@pytest.mark.parametrize(
    "path, old, new, check",
    [
        (
            "modules/api/main.tf",
            "ENDPOINT_NAME     = var.endpoint_name",
            'ENDPOINT_NAME     = "other-endpoint"',
            "lambda-endpoint",
        ),
        (
            "modules/iam/main.tf",
            'endpoint_arn    = "${local.sagemaker_arn}:endpoint/${var.endpoint_name}"',
            'endpoint_arn    = "${local.sagemaker_arn}:endpoint/*"',
            "lambda-invokes-only-its-endpoint",
        ),
        ("modules/api/main.tf", '"image/png", ', "", "binary-media-types"),
        (
            "modules/autoscaling/main.tf",
            'resource_id = "endpoint/${var.endpoint_name}/variant/${var.variant_name}"',
            'resource_id = "endpoint/${var.endpoint_name}/variant/Blue"',
            "autoscaling-resource-id",
        ),
        (
            "modules/alarms/main.tf",
            '"${var.endpoint_name}-model-latency"',
            '"${var.endpoint_name}-latency"',
            "rollback-alarm-names",
        ),
        (
            "modules/alarms/main.tf",
            "threshold           = var.p99_latency_ms * 1000",
            "threshold           = var.p99_latency_ms",
            "latency-alarm-microseconds",
        ),
        (
            "main.tf",
            'manifest_prefix        = "${var.raw_prefix}/manifests/"',
            'manifest_prefix        = "${var.data_prefix}/manifests/"',
            "trigger-prefix",
        ),
        (
            "modules/trigger/main.tf",
            "resources = [var.codebuild_project_arn]",
            'resources = ["*"]',
            "trigger-policy-project-only",
        ),
        ("modules/api/main.tf", "connect_timeout_seconds = 2", "connect_timeout_seconds = 5", "lambda-timeouts"),
        ("variables.tf", 'default     = "AllTraffic"', 'default     = "Primary"', "defaults-agree"),
        # what a fresh account's first apply and first build need (issue 11)
        ("modules/iam/main.tf", '"sagemaker:UpdateEndpointWeightsAndCapacities",', "", "autoscaling-validation-grants"),
        (
            "modules/iam/main.tf",
            '["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"]',
            '["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]',
            "training-output-kms",
        ),
        (
            "modules/iam/main.tf",
            '"${local.logs_arn}:log-group:${local.training_logs}:*",',
            '"${local.logs_arn}:log-group:${local.training_logs}",',
            "logs-arn-form",
        ),
        (
            "modules/trigger/main.tf",
            "reserved_concurrent_executions = var.reserved_concurrency",
            "reserved_concurrent_executions = 1",
            "lambda-no-reservation-unless-asked",
        ),
        (
            "modules/api/main.tf",
            "reserved_concurrent_executions = var.reserved_concurrency",
            "reserved_concurrent_executions = 100",
            "lambda-no-reservation-unless-asked",
        ),
        (
            "modules/ecr/main.tf",
            "tag_prefix_list = [var.model_tag_prefix]",
            'tag_prefix_list = ["release-"]',
            "ecr-keeps-model-images",
        ),
        (
            "modules/storage/main.tf",
            'filter {\n        prefix = rule.value.prefix # "" is every object; an empty filter {} warns from provider 5.90 on\n      }',
            "filter {}",
            "lifecycle-filter-not-empty",
        ),
        (
            "modules/api/main.tf",
            "depends_on = [aws_iam_role_policy_attachment.apigateway_logs]",
            "",
            "api-account-after-role-policy",
        ),
        # Batch Transform (issue 13): the job names the code makes, the prefixes the execution role reads and writes
        (
            "modules/iam/main.tf",
            "transform-job/${var.endpoint_name}-batch-*",
            "transform-job/${var.endpoint_name}-transform-*",
            "transform-job-names",
        ),
        (
            "modules/iam/main.tf",
            'resources = ["${var.data_bucket_arn}/${var.transform_prefix}/*/output/*"]',
            'resources = ["${var.data_bucket_arn}/${var.transform_prefix}/*"]',
            "transform-prefixes",
        ),
        (
            "main.tf",
            "DD_TRANSFORM_PREFIX         = var.transform_prefix",
            'DD_TRANSFORM_PREFIX         = "batch"',
            "settings-match-variables",
        ),
        (
            "modules/storage/main.tf",
            "#checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost; the data bucket's contents are rebuilt from its versioned raw images, build artifacts by rerunning a build, and access logs stay in-region.",
            "#checkov:skip=CKV_AWS_144:cost.",
            "checkov-skips-justified",
        ),
        # examples/<env>: the root module with exactly the env's values, every output returned
        ("examples/dev/main.tf", "  tags                                   = var.tags\n", "", "example"),
        (
            "examples/dev/main.tf",
            "  region                                 = var.region",
            '  region                                 = "eu-west-1"',
            "example",
        ),
        ("examples/dev/outputs.tf", "  sensitive = true\n", "", "example"),
        ("examples/dev/main.tf", 'source = "../.."', 'source = "../../modules/storage"', "example"),
        (
            "modules/ecr/variables.tf",
            'description = "Newest images kept; older ones expire."',
            'description = "Images kept."',
            "module-docs",
        ),
        ("modules/ecr/versions.tf", 'version = ">= 5.40"', 'version = ">= 5.0"', "module-versions"),
        # the storage module's buckets, where checkov cannot follow its for_each
        (
            "modules/storage/main.tf",
            "sse_kms           = true    # SSE-KMS",
            "sse_kms           = false   # SSE-KMS",
            "bucket-encryption",
        ),
        (
            "modules/storage/main.tf",
            "noncurrent_days = null, abort_upload_days = 7 }",
            "noncurrent_days = null, abort_upload_days = null }",
            "bucket-abort-uploads",
        ),
        (
            "modules/storage/main.tf",
            'access_log_prefix = "artifacts/"',
            "access_log_prefix = null",
            "bucket-access-logs",
        ),
        (
            "modules/storage/main.tf",
            'resource "aws_s3_bucket_versioning" "this" {\n  for_each = local.buckets',
            'resource "aws_s3_bucket_versioning" "this" {\n  for_each = local.access_logged',
            "bucket-settings",
        ),
        # the notification and the permission are on the storage module's data bucket, not another of its buckets
        (
            "main.tf",
            "data_bucket_name       = module.storage.data_bucket_name",
            "data_bucket_name       = module.storage.artifacts_bucket_name",
            "trigger-bucket",
        ),
        (
            "modules/trigger/main.tf",
            "source_arn     = var.data_bucket_arn",
            "source_arn     = var.kms_key_arn",
            "trigger-permission",
        ),
    ],
)
def test_a_broken_wiring_is_caught(tmp_path, path, old, new, check):
    copy = _broken(tmp_path, path, old, new)
    report = wiring_findings(copy / "terraform", copy)
    assert check in {f.check for f in report.failures}, [str(f) for f in report.failures]


def test_each_env_is_an_example_that_reads_its_tfvars(tmp_path):
    for env in ("dev", "prod"):
        example = Configuration(TERRAFORM / "examples" / env, TERRAFORM / "examples" / env / "terraform.tfvars")
        assert example.instance("distracted_driver").inputs["environment"] == env
        assert example.variable("endpoint_name") == Configuration(
            TERRAFORM, TERRAFORM / "envs" / f"{env}.tfvars"
        ).variable("endpoint_name")

    copy = _broken(tmp_path, "envs/prod.tfvars", "force_destroy = false", "force_destroy = false")
    values = copy / "terraform" / "examples" / "prod" / "terraform.tfvars"
    text = values.read_text()
    values.unlink()
    values.write_text(text)  # a copy of the values instead of the link: a second copy that can drift
    (copy / "terraform" / "examples" / "staging").mkdir()
    shutil.copy(copy / "terraform" / "examples" / "dev" / "main.tf", copy / "terraform" / "examples" / "staging")
    failures = {
        (f.variant, f.detail) for f in wiring_findings(copy / "terraform", copy).failures if f.check == "example"
    }
    assert failures == {
        ("prod", "examples/prod/terraform.tfvars is not a link to envs/prod.tfvars"),
        ("defaults", "examples without an envs/<env>.tfvars: ['staging']"),
    }


# --- module READMEs -------------------------------------------------------------------------------


def test_every_readme_lists_its_modules_inputs_and_outputs():
    assert docs.stale(TERRAFORM) == []
    for directory in docs.module_dirs(TERRAFORM):
        readme = (directory / "README.md").read_text()
        module = Module.load(directory)
        section = readme[readme.index(docs.BEGIN) :]
        assert all(f"| `{name}` |" in section for name in [*module.variables, *module.outputs]), directory


def test_infra_docs_rewrites_only_the_tables(tmp_path):
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy, ignore=shutil.ignore_patterns(".terraform", ".build"))
    variables = copy / "modules" / "ecr" / "variables.tf"
    variables.write_text(
        variables.read_text()
        + """
variable "scan_on_push" {
  description = "Scan | each image when pushed to <repository>."
  type        = bool
  default     = true
}
"""
    )
    (copy / "modules" / "alarms" / "outputs.tf").unlink()
    readme = copy / "modules" / "ecr" / "README.md"
    prose = readme.read_text().split(docs.BEGIN)[0]
    assert docs.stale(copy) == [copy / "modules" / "alarms" / "README.md", readme]

    assert docs.write(copy) == [copy / "modules" / "alarms" / "README.md", readme]
    assert docs.stale(copy) == [] and docs.write(copy) == []
    text = readme.read_text()
    assert text.startswith(prose) and text.count(docs.BEGIN) == 1 and text.endswith(docs.END + "\n")
    assert r"| `scan_on_push` | `bool` | `true` | Scan \| each image when pushed to \<repository>. |" in text
    assert "## Outputs\n\nNone." in (copy / "modules" / "alarms" / "README.md").read_text()

    bare = copy / "modules" / "trigger" / "README.md"
    bare.write_text("# trigger\n\nHand-written prose.\n")  # no section yet: one is added at the end
    assert docs.write(copy) == [bare] and bare.read_text().startswith(
        "# trigger\n\nHand-written prose.\n\n" + docs.BEGIN
    )


# --- checkov ---------------------------------------------------------------------------------------


@pytest.mark.slow  # checkov in its own environment: a process over the whole configuration
def test_checkov_finds_nothing(tmp_path):
    """Zero failed checks; every skip carries its reason inline. Builds .venvs/checkov once (make checkov-env)."""
    checkov = REPO / ".venvs" / "checkov" / "bin" / "checkov"
    if not checkov.exists():
        subprocess.run(["make", "checkov-env"], cwd=REPO, check=True, timeout=900)
    result = run_checkov(TERRAFORM, checkov)
    assert result.ok, str(result)
    assert result.passed > 200 and result.skipped > 0


# --- terraform outputs → the pipeline's settings ---------------------------------------------------


def test_outputs_become_the_settings_of_the_aws_backend(tmp_path, monkeypatch):
    outputs = json.loads(SAMPLE_OUTPUTS.read_text())
    settings = Settings(root=tmp_path)
    path, values = tf.refresh_env_file(settings, outputs)
    assert path == tmp_path / ".state" / "aws.env"
    assert values["DD_BUCKET"] == "distracted-driver-dev-data-123456789012-eu-west-1"
    assert "api_key" not in path.read_text() and "Zq3Example" not in path.read_text()  # the secret stays out

    for name in [n for n in __import__("os").environ if n.startswith("DD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DD_ROOT", str(tmp_path))
    aws = Settings.from_env(backend="aws")
    assert (aws.bucket, aws.region, aws.endpoint_name) == (values["DD_BUCKET"], "eu-west-1", "distracted-driver-dev")
    assert aws.role_arn.endswith(":role/distracted-driver-dev-sagemaker") and aws.kms_key_id.startswith("arn:aws:kms:")
    monkeypatch.setenv("DD_ENDPOINT_NAME", "from-the-environment")
    assert Settings.from_env(backend="aws").endpoint_name == "from-the-environment"  # the environment wins
    assert Settings.from_env(backend="local").bucket == Settings().bucket  # local ignores aws.env

    # A pushed image survives a refresh of the outputs.
    tf.record_serving_image(settings, f"{values['DD_SERVING_IMAGE_REPOSITORY']}:0123abcd")
    tf.refresh_env_file(settings, outputs)
    assert Settings.from_env(backend="aws").serving_image.endswith("-serving:0123abcd")


def test_outputs_that_cannot_be_settings_are_refused():
    outputs = json.loads(SAMPLE_OUTPUTS.read_text())
    with pytest.raises(tf.OutputsError, match="infra.apply"):
        tf.settings_from_outputs({})
    unsafe = json.loads(json.dumps(outputs))
    unsafe["pipeline_settings"]["value"]["DD_BUCKET"] = "bucket; rm -rf /"
    with pytest.raises(tf.OutputsError, match="DD_BUCKET"):
        tf.settings_from_outputs(unsafe)
    missing = json.loads(json.dumps(outputs))
    del missing["pipeline_settings"]["value"]["DD_ROLE_ARN"]
    with pytest.raises(tf.OutputsError, match="DD_ROLE_ARN"):
        tf.settings_from_outputs(missing)


def test_terraform_command_lines(tmp_path):
    settings = Settings(root=REPO)
    plan = tf.command(settings, "plan", "dev", endpoint_exists=False, plan_file="dev.tfplan")
    assert plan == (
        f"terraform -chdir={TERRAFORM} plan -input=false -var-file=envs/dev.tfvars "
        "-var=endpoint_exists=false -out=dev.tfplan"
    )
    apply = tf.command(settings, "apply", "prod", endpoint_exists=True, auto_approve=True)
    assert apply.endswith("apply -input=false -var-file=envs/prod.tfvars -var=endpoint_exists=true -auto-approve")
    assert tf.output_command(settings) == f"terraform -chdir={TERRAFORM} output -json"
    with pytest.raises(ValueError, match="environments: dev, prod"):
        tf.command(settings, "plan", "qa")
    assert tf.endpoint_of(settings, "dev") == ("us-east-1", "distracted-driver-dev")
    assert tf.image_tag("0123abcd") == "0123abcd" and tf.image_tag("0123abcd-dirty").startswith("0123abcd-dirty-")


def test_endpoint_existence_decides_the_autoscaling_module(aws):
    assert tf.endpoint_exists("us-east-1", "distracted-driver-dev") is False
    sm = boto3.client("sagemaker", region_name="us-east-1")
    sm.create_model(
        ModelName="m",
        PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/x:1"},
        ExecutionRoleArn="arn:aws:iam::123456789012:role/r",
    )
    sm.create_endpoint_config(
        EndpointConfigName="c",
        ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": "m", "InitialInstanceCount": 1, "InstanceType": "ml.c5.large"}
        ],
    )
    sm.create_endpoint(EndpointName="distracted-driver-dev", EndpointConfigName="c")
    assert tf.endpoint_exists("us-east-1", "distracted-driver-dev") is True


@pytest.mark.slow  # `inv` processes
def test_the_infra_tasks_drive_the_terraform_cli(tmp_path):
    """inv infra.plan / infra.outputs through invoke's c.run, with a stand-in `terraform` on PATH that logs its calls."""
    import os
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bin_dir / "terraform"
    fake.write_text(f"""#!/bin/sh
echo "$@" >> {calls}
case "$*" in *"output -json"*) cat {SAMPLE_OUTPUTS} ;; esac
""")
    fake.chmod(0o755)
    root = tmp_path / "root"
    shutil.copytree(TERRAFORM, root / "terraform", ignore=shutil.ignore_patterns(".terraform"))
    shutil.copytree(REPO / "lambda", root / "lambda", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DD_ROOT": str(root)}
    inv = Path(sys.executable).with_name("inv")

    plan = subprocess.run(
        [str(inv), "infra.plan", "--env", "dev", "--endpoint-exists", "false"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plan.returncode == 0, plan.stdout + plan.stderr
    outputs = subprocess.run(
        [str(inv), "infra.outputs"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert outputs.returncode == 0, outputs.stdout + outputs.stderr
    assert calls.read_text().splitlines() == [
        f"-chdir={root / 'terraform'} init -input=false",
        f"-chdir={root / 'terraform'} plan -input=false -var-file=envs/dev.tfvars -var=endpoint_exists=false",
        f"-chdir={root / 'terraform'} output -json",
    ]
    assert "DD_BUCKET=distracted-driver-dev-data-123456789012-eu-west-1" in (root / ".state" / "aws.env").read_text()


def test_the_lifecycle_model_follows_ecr_rule_order():
    """A rule's matches are out of reach of later rules; ``any`` must come last."""
    from distracted_driver.infra.ecr import Image, lifecycle_expired

    rules = [
        {"priority": 2, "selection": [{"tag_status": "any", "count_type": "imageCountMoreThan", "count_number": 1}]},
        {
            "priority": 1,
            "selection": [
                {
                    "tag_status": "tagged",
                    "tag_prefix_list": ["model-"],
                    "count_type": "imageCountMoreThan",
                    "count_number": 5,
                }
            ],
        },
    ]
    images = [Image("old-model", ("a", "model-v1"), 0), Image("old", ("b",), 1), Image("new", ("c",), 2)]
    assert lifecycle_expired(rules, images) == {"old"}
    assert lifecycle_expired(rules[:1], images) == {"old-model", "old"}  # the old policy: any, newest N
    with pytest.raises(ValueError, match="last"):
        lifecycle_expired([{**rules[0], "priority": 0}, rules[1]], images)
