"""Will ``terraform apply`` and the first build work in the account these credentials reach?

``inv infra.preflight --env dev`` asks the account, before anything is created,
for what a fresh account most often lacks, and prints one line per check: ``ok``,
or what to request and where. The exit status is non-zero when apply or the
first build would fail.

- **identity and region**: who the credentials are (STS), and the region the env uses;
- **Lambda concurrency**: Lambda keeps 100 of the account's ``ConcurrentExecutions``
  unreserved, so any reservation the env asks for must leave 100 (new accounts
  often have 10 in all; the quota is ``L-B99A9384``);
- **SageMaker quotas**: ``<type> for endpoint usage`` (the variant's instances,
  twice over during a blue/green swap) and ``<type> for training job usage``
  (new accounts often have 0 for GPU types); their codes are read from Service
  Quotas, not assumed. A type with no such quota in the region is not offered there;
- **CodeBuild's GitHub credential**, when the env does not register one itself;
- **the Terraform state bucket** named in ``terraform/backend.tf``, when there is one.

A check that only concerns an optional path (the built-in algorithm's GPU
training) warns and does not fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from distracted_driver.infra.findings import Finding, Report
from distracted_driver.infra.hcl import Configuration, parse_file
from distracted_driver.train.sagemaker import BUILTIN_INSTANCE_TYPE

LAMBDA_QUOTA_CODE = "L-B99A9384"  # Lambda "Concurrent executions"
LAMBDA_MIN_UNRESERVED = 100  # Lambda refuses a reservation that leaves fewer unreserved
SWAP_FACTOR = 2  # a blue/green swap runs the green fleet beside the blue one


@dataclass(frozen=True)
class Needs:
    """What an environment (``terraform/envs/<env>.tfvars``) asks of the account."""

    env: str
    region: str
    lambda_reservations: dict[str, int]  # function → reserved executions asked for
    serving_instance_type: str
    serving_instances: int  # autoscaling minimum: the endpoint's size at first deploy
    training_instance_types: dict[str, bool]  # type → required (False: optional path, warns only)
    registers_source_credential: bool
    state_bucket: str | None


def needs_of(terraform_dir: str | Path, env: str) -> Needs:
    """Read the env's values as Terraform would resolve them (variable defaults, then the tfvars)."""
    terraform_dir = Path(terraform_dir)
    config = Configuration(terraform_dir, terraform_dir / "envs" / f"{env}.tfvars")
    var = config.variable
    reservations = {
        name: int(var(variable))
        for name, variable in (("predict", "lambda_reserved_concurrency"), ("trigger", "trigger_reserved_concurrency"))
        if var(variable) is not None
    }
    training = {var("training_instance_type"): True}
    training.setdefault(BUILTIN_INSTANCE_TYPE, False)
    return Needs(
        env=env,
        region=var("region"),
        lambda_reservations=reservations,
        serving_instance_type=var("serving_instance_type"),
        serving_instances=int(var("autoscaling_min_instances")),
        training_instance_types=training,
        registers_source_credential=var("github_token") is not None or var("codeconnections_arn") is not None,
        state_bucket=state_bucket(terraform_dir / "backend.tf"),
    )


def state_bucket(backend_file: Path) -> str | None:
    """The bucket of an S3 backend in ``backend.tf`` (None without one)."""
    if not backend_file.is_file():
        return None
    for block in parse_file(backend_file).get("terraform", []):
        for backend in block.get("backend", []):
            if "s3" in backend:
                return backend["s3"].get("bucket")
    return None


def _error(error: Exception) -> str:
    if isinstance(error, ClientError):
        return f"{error.response['Error'].get('Code')}: {error.response['Error'].get('Message')}"
    return str(error)


class Preflight:
    def __init__(self, needs: Needs, session, build: bool = False, clients: dict | None = None):
        """``build``: running inside CodeBuild (the source was fetched and the state is not its business)."""
        self.needs, self.session, self.build = needs, session, build
        self.clients = dict(clients or {})
        self.report = Report()

    def client(self, service: str):
        if service not in self.clients:
            self.clients[service] = self.session.client(service, region_name=self.needs.region)
        return self.clients[service]

    def say(self, name: str, status: str, line: str) -> None:
        self.report.findings.append(Finding(name, status != "FAIL", line, variant=None, warning=status == "warn"))

    def run(self) -> Report:
        if not self.identity():
            return self.report  # nothing else can be asked without credentials
        for check in (self.lambda_concurrency, self.sagemaker_quotas, self.source_credential, self.state):
            try:
                check()
            except (ClientError, BotoCoreError) as error:
                self.say(check.__name__.replace("_", "-"), "FAIL", f"could not ask: {_error(error)}")
        return self.report

    def identity(self) -> bool:
        try:
            who = self.client("sts").get_caller_identity()
        except (ClientError, BotoCoreError) as error:
            self.say("identity", "FAIL", f"no usable credentials ({_error(error)}): set AWS_PROFILE or keys")
            return False
        self.say("identity", "ok", f"{who['Arn']} (account {who['Account']}), region {self.needs.region}")
        return True

    def lambda_concurrency(self) -> None:
        limits = self.client("lambda").get_account_settings()["AccountLimit"]
        total, unreserved = limits["ConcurrentExecutions"], limits["UnreservedConcurrentExecutions"]
        asked = sum(self.needs.lambda_reservations.values())
        if asked and unreserved - asked < LAMBDA_MIN_UNRESERVED:
            self.say(
                "lambda-concurrency",
                "FAIL",
                f"the env reserves {asked} ({self.needs.lambda_reservations}) but only {unreserved} of {total} are "
                f"unreserved and Lambda keeps {LAMBDA_MIN_UNRESERVED}: request Service Quotas > AWS Lambda > "
                f"Concurrent executions ({LAMBDA_QUOTA_CODE}) of at least {asked + LAMBDA_MIN_UNRESERVED + total - unreserved}"
                f" in {self.needs.region}, or leave the reservations null",
            )
            return
        note = (
            ""
            if total >= 2 * LAMBDA_MIN_UNRESERVED
            else (
                f"; only {total} at once for the whole account: the API answers 429 beyond that, "
                f"request {LAMBDA_QUOTA_CODE} (Concurrent executions) to raise it"
            )
        )
        self.say(
            "lambda-concurrency",
            "ok",
            f"{total} concurrent executions, {unreserved} unreserved, the env reserves {asked or 'none'}{note}",
        )

    def _sagemaker_quotas(self) -> dict[str, dict]:
        quotas = {}
        client = self.client("service-quotas")
        for operation in ("list_aws_default_service_quotas", "list_service_quotas"):  # applied values win
            for page in client.get_paginator(operation).paginate(ServiceCode="sagemaker"):
                for quota in page["Quotas"]:
                    quotas[quota["QuotaName"]] = quota
        return quotas

    def sagemaker_quotas(self) -> None:
        quotas = self._sagemaker_quotas()
        serving = self.needs.serving_instance_type
        wanted = [
            (
                f"{serving} for endpoint usage",
                SWAP_FACTOR * self.needs.serving_instances,
                True,
                f"the endpoint ({self.needs.serving_instances} instance(s), twice that during a blue/green swap)",
            )
        ]
        wanted += [
            (
                f"{kind} for training job usage",
                1,
                required,
                "a training job" if required else "the built-in algorithm's training (optional: `--algorithm builtin`)",
            )
            for kind, required in self.needs.training_instance_types.items()
        ]
        for quota_name, need, required, purpose in wanted:
            kind = quota_name.split(" ", 1)[0]
            quota = quotas.get(quota_name)
            status = "FAIL" if required else "warn"
            if quota is None:
                self.say(
                    "instance-offered",
                    status,
                    f"{kind} is not offered for {purpose.split(' (')[0]} in {self.needs.region} (Service Quotas has no "
                    f"'{quota_name}'): pick another type in envs/{self.needs.env}.tfvars or another region",
                )
                continue
            have = int(quota.get("Value", 0))
            if have >= need:
                self.say(
                    "sagemaker-quota", "ok", f"'{quota_name}' ({quota['QuotaCode']}) is {have}, {purpose} needs {need}"
                )
            else:
                self.say(
                    "sagemaker-quota",
                    status,
                    f"'{quota_name}' is {have}, {purpose} needs {need}: request {need} in Service Quotas > "
                    f"Amazon SageMaker > {quota['QuotaCode']} in {self.needs.region}",
                )

    def source_credential(self) -> None:
        if self.build:
            return  # CodeBuild fetched this source: it has a credential
        if self.needs.registers_source_credential:
            self.say(
                "github-credential",
                "ok",
                "Terraform registers CodeBuild's GitHub source credential (github_token or codeconnections_arn)",
            )
            return
        credentials = self.client("codebuild").list_source_credentials().get("sourceCredentialsInfos", [])
        github = [c for c in credentials if c.get("serverType") == "GITHUB"]
        if github:
            self.say(
                "github-credential", "ok", f"CodeBuild has a GitHub source credential ({github[0].get('authType')})"
            )
        else:
            self.say(
                "github-credential",
                "FAIL",
                f"CodeBuild has no GitHub source credential in {self.needs.region}: set github_token or "
                f"codeconnections_arn in envs/{self.needs.env}.tfvars (or TF_VAR_github_token), or run "
                "`aws codebuild import-source-credentials --server-type GITHUB --auth-type PERSONAL_ACCESS_TOKEN "
                "--token <token>`",
            )

    def state(self) -> None:
        if self.build:
            return
        bucket = self.needs.state_bucket
        if bucket is None:
            self.say(
                "state-bucket",
                "ok",
                "no terraform/backend.tf: the state stays in terraform/terraform.tfstate "
                "(copy backend.tf.example for a team or CI)",
            )
            return
        try:
            self.client("s3").head_bucket(Bucket=bucket)
        except ClientError as error:
            code = error.response["Error"].get("Code")
            missing = code in ("404", "NoSuchBucket", "NotFound")
            self.say(
                "state-bucket",
                "FAIL",
                f"state bucket {bucket} {'does not exist' if missing else f'cannot be read ({code})'}: "
                f"`aws s3api create-bucket --bucket {bucket}` and turn on versioning before `terraform init`"
                if missing
                else f"state bucket {bucket} cannot be read ({_error(error)})",
            )
            return
        self.say("state-bucket", "ok", f"state bucket {bucket} exists")


def preflight(terraform_dir: str | Path, env: str, session=None, build: bool = False) -> Report:
    needs = needs_of(terraform_dir, env)
    return Preflight(needs, session or boto3.session.Session(), build=build).run()
