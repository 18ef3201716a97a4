"""Every role's policy as Terraform renders it, against the real IAM action catalogue and the calls our code makes.

Three checks per role (CodeBuild, SageMaker execution, predict Lambda, trigger Lambda,
API Gateway logging):

1. **the catalogue** (``policy_sentry``'s copy of AWS's Service Authorization
   Reference): every action exists, and every resource ARN fits a resource type
   of the action (an action without resource types takes ``"*"`` only);
2. **coverage**: each AWS operation the role's code path makes (recorded from
   botocore's events while the moto and Stubber tests drive the code, see
   ``tests/iam_recorder.py``) becomes ``(action, resource ARN, condition values)``
   and is evaluated against the role's policies by moto's IAM policy evaluator;
3. **what AWS checks beyond the call** (``implied``): Application Auto Scaling's
   validation of the caller, ``iam:PassRole``, ``kms:Encrypt`` for an encrypted
   training output, the execution role's writes of an endpoint's data capture,
   Logs for every service that writes them, each with the AWS page that says so.

A missing grant names the operation, the role and the statement that should allow it.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from distracted_driver.hosting.aws import TRANSFORM_JOB_INFIX
from distracted_driver.infra.findings import Finding
from distracted_driver.infra.findings import Report as check_report
from distracted_driver.infra.hcl import Configuration

ACCOUNT = "123456789012"
PARTITION = "aws"
KMS_KEY_ID = "0c0ffee0-0000-4000-8000-000000000000"
ROLES = {  # (module, aws_iam_role name) → the role's name in reports
    ("iam", "codebuild"): "codebuild",
    ("iam", "sagemaker"): "sagemaker-execution",
    ("iam", "api_lambda"): "predict-lambda",
    ("trigger", "trigger"): "trigger-lambda",
    ("api", "apigateway_logs"): "apigateway-logging",
}
# ARN of a resource from the attribute that names it (the AWS ARN formats of each service).
ARN_OF = {
    "aws_s3_bucket": ("bucket", "arn:{p}:s3:::{name}"),
    "aws_kms_key": (None, "arn:{p}:kms:{r}:{a}:key/" + KMS_KEY_ID),
    "aws_iam_role": ("name", "arn:{p}:iam::{a}:role/{name}"),
    "aws_ecr_repository": ("name", "arn:{p}:ecr:{r}:{a}:repository/{name}"),
    "aws_codebuild_project": ("name", "arn:{p}:codebuild:{r}:{a}:project/{name}"),
    "aws_cloudwatch_log_group": ("name", "arn:{p}:logs:{r}:{a}:log-group:{name}"),
    "aws_sqs_queue": ("name", "arn:{p}:sqs:{r}:{a}:{name}"),
}
_SYMBOL = re.compile(r'\$\{(\w+):(?:(data)\.)?(\w+)\.(\w+)(?:\[\d+\]|\["(\w+)"\])?\.(\w+)\}')
# Operations whose IAM action is not named like the API call (Amazon S3's "Actions" page:
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_Operations_Amazon_Simple_Storage_Service.html
# and the "Policy actions" table of the S3 User Guide).
S3_ACTIONS = {
    "HeadObject": "GetObject",
    "GetObjectAttributes": "GetObject",
    "ListObjectsV2": "ListBucket",
    "ListObjects": "ListBucket",
    "HeadBucket": "ListBucket",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "DeleteObjects": "DeleteObject",
    "AbortMultipartUpload": "AbortMultipartUpload",
    "ListParts": "ListMultipartUploadParts",
}
# Calls no IAM policy decides: STS GetCallerIdentity ("No permissions are required",
# https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html).
UNAUTHORIZED_CALLS = {("sts", "GetCallerIdentity")}
# ARN template variables → the request parameter that holds them.
PARAMETERS = {
    "BucketName": "Bucket",
    "ObjectName": "Key",
    "LogGroupName": "logGroupName",
    "RepositoryName": "repositoryName",
    "ProjectName": "projectName",
    "EndpointName": "EndpointName",
    "EndpointConfigName": "EndpointConfigName",
    "ModelName": "ModelName",
    "TrainingJobName": "TrainingJobName",
    "TransformJobName": "TransformJobName",
    "RoleNameWithPath": "RoleName",
}


@dataclass(frozen=True)
class Operation:
    """One request: who makes it, the IAM action, on what, with which condition values, and why."""

    role: str
    action: str
    resource: str
    context: tuple = ()  # ((condition key, value), ...)
    origin: str = ""  # the recorded call, or the AWS page that states the implied permission


@dataclass
class Report(check_report):
    """Findings (``variant`` is the role) and the operations judged."""

    operations: list[Operation] = field(default_factory=list)

    def summary(self) -> str:
        roles = {op.role for op in self.operations}
        granted = "all granted" if not [f for f in self.failures if f.check == "coverage"] else "NOT all granted"
        return f"{len(self.operations)} operations over {len(roles)} roles, {granted}"


# --- the policies as Terraform renders them ------------------------------------------------


class Rendered:
    """Each role's policy documents with every reference made concrete (one account, the env's region)."""

    def __init__(self, terraform_dir: str | Path, tfvars: str | Path | None = None):
        self.config = Configuration(terraform_dir, tfvars)
        self.region = self.config.variable("region")
        self.policies: dict[str, list[dict]] = {role: [] for role in ROLES.values()}
        for (module, role_name), role in ROLES.items():
            context = self.config.instance(module)
            for (kind, name), body in context.module.resources.items():
                if kind == "aws_iam_role_policy" and self._names(body.get("role", ""), module, role_name):
                    document = re.search(r"data\.aws_iam_policy_document\.(\w+)\.json", body["policy"]).group(1)
                    self.policies[role].append(self.document(module, document, name))
                if kind == "aws_iam_role_policy_attachment" and self._names(body.get("role", ""), module, role_name):
                    self.policies[role].append(managed_policy(body["policy_arn"].rsplit("/", 1)[-1]))

    @staticmethod
    def _names(reference: str, module: str, role_name: str) -> bool:
        return bool(re.search(rf"aws_iam_role\.{role_name}(\[0\])?\.(id|name)", reference))

    def concrete(self, value):
        if isinstance(value, list):
            return [self.concrete(item) for item in value]
        if isinstance(value, dict):
            return {key: self.concrete(item) for key, item in value.items()}
        if not isinstance(value, str):
            return value
        for _ in range(5):  # a name may itself hold references (the account id in a bucket name)
            replaced = _SYMBOL.sub(self._symbol, value)
            if replaced == value:
                break
            value = replaced
        return value

    def _symbol(self, match: re.Match) -> str:
        module, data, kind, name, key, attribute = match.groups()
        if data and kind == "aws_partition":
            return PARTITION
        if data and kind == "aws_caller_identity":
            return ACCOUNT
        if data and kind == "aws_region":
            return self.region
        if data or kind not in ARN_OF:
            return match.group(0)
        context = self.config.root if module == "root" else self.config.instance(module)
        block = context.module.resources[(kind, name)]
        if key is not None:  # one instance of a for_each resource
            context = context.for_each_instance(block, key)
        body = context.value(block)
        field_name, template = ARN_OF[kind]
        named = self.concrete(body.get(field_name, name)) if field_name else name
        if attribute == "arn":
            return template.format(p=PARTITION, r=self.region, a=ACCOUNT, name=named)
        if attribute == "repository_url":
            return f"{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com/{named}"
        return str(named)  # .id / .name of these resources is their name

    def document(self, module: str, name: str, attached_as: str = "") -> dict:
        context = self.config.instance(module)
        body = context.value(context.module.data[("aws_iam_policy_document", name)])
        statements = []
        for statement in self.concrete(body.get("statement", [])):
            rendered = {
                "Sid": statement.get("sid", ""),
                "Effect": statement.get("effect", "Allow"),
                "Action": statement["actions"],
                "Resource": statement.get("resources", ["*"]),
            }
            for condition in statement.get("condition", []):
                rendered.setdefault("Condition", {}).setdefault(condition["test"], {})[condition["variable"]] = (
                    condition["values"]
                )
            statements.append(rendered)
        return {"Version": "2012-10-17", "Statement": statements, "Name": attached_as or name}

    def unresolved(self) -> list[str]:
        text = json.dumps(self.policies)
        return sorted(set(re.findall(r"\$\{[^}]+\}", text)))


@functools.lru_cache(maxsize=8)
def managed_policy(name: str) -> dict:
    """An AWS managed policy's document, from the copy moto ships of AWS's managed policies."""
    from moto.iam.aws_managed_policies import aws_managed_policies_data  # ops extra, slow to load

    document = json.loads(aws_managed_policies_data)[name]["Document"]
    return {**document, "Name": f"AWS managed {name}"}


# --- the catalogue ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def action_data(action: str) -> tuple[str, ...] | None:
    """The action's resource ARN formats (("*",) when it has no resource types); None when it does not exist."""
    from policy_sentry.querying.actions import get_action_data  # ops extra, slow to load

    service, name = action.split(":", 1)
    found = (get_action_data(service, name) or {}).get(service) or []
    found = [entry for entry in found if entry["action"].lower() == action.lower()]
    if not found:
        return None
    return tuple(entry["resource_arn_format"] for entry in found)


def _format_regex(arn_format: str) -> re.Pattern:
    parts = re.split(r"(\$\{[^}]+\})", arn_format)
    pattern = "".join(
        ("[^/]+" if part == "${BucketName}" else ".+") if part.startswith("${") else re.escape(part) for part in parts
    )
    return re.compile(f"^{pattern}$")


def fits(resource: str, formats: tuple[str, ...]) -> bool:
    if resource == "*":
        return True
    # A wildcard stands for a name, a path (S3 keys, log group names), or the rest of a longer ARN
    # of the same service (``log-group:NAME:*`` covers that group's ``:log-stream:NAME``).
    samples = [resource.replace("*", fill) for fill in ("x", "x/x", "x:log-stream:x")]
    return any(
        arn_format != "*" and _format_regex(arn_format).match(sample) for arn_format in formats for sample in samples
    )


def catalogue_findings(rendered: Rendered) -> list[Finding]:
    findings = []
    for role, documents in rendered.policies.items():
        unknown, misfits, count = [], [], 0
        for document in documents:
            for statement in document["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                resources = (
                    statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                )
                for action in actions:
                    count += 1
                    formats = action_data(action)
                    if formats is None:
                        unknown.append(f"{action} ({document['Name']}/{statement.get('Sid') or '?'})")
                        continue
                    if formats == ("*",):
                        bad = [r for r in resources if r != "*"]
                    else:
                        bad = [r for r in resources if not fits(r, formats)]
                    misfits += [f"{action} on {r} ({document['Name']}/{statement.get('Sid') or '?'})" for r in bad]
        findings.append(Finding("known-actions", not unknown, f"{count} actions; unknown: {unknown or 'none'}", role))
        findings.append(
            Finding(
                "resources-fit",
                not misfits,
                f"resource ARNs that fit no resource type of their action: {misfits or 'none'}",
                role,
            )
        )
    return findings


# --- recorded calls → operations ---------------------------------------------------------------


# botocore's signing name → IAM's service prefix, where they differ.
IAM_PREFIX = {"monitoring": "cloudwatch"}


def iam_action(signing_name: str, operation: str) -> str:
    signing_name = IAM_PREFIX.get(signing_name, signing_name)
    if signing_name == "s3":
        return f"s3:{S3_ACTIONS.get(operation, operation)}"
    return f"{signing_name}:{operation}"


def resource_arns(action: str, params: dict, region: str) -> list[str]:
    """The ARNs the request is authorized against: its action's first resource type that the request's
    parameters fill (one ARN per name when it names several, e.g. ``AlarmNames``). A resource named by an
    opaque id the request does not carry (Application Auto Scaling's scalable targets) gets a stand-in id."""
    formats = action_data(action) or ("*",)
    if formats == ("*",):
        return ["*"]
    values = dict(params)
    if action.startswith("codebuild:") and "ids" in params:  # BatchGetBuilds: "<project>:<build uuid>"
        values["projectName"] = [str(build).split(":", 1)[0] for build in params["ids"]]
    if action.startswith("logs:") and "logGroupName" in values:
        # CloudWatch Logs authorizes log-group actions on "log-group:NAME:*" (CloudWatch Logs User Guide,
        # "CloudWatch Logs resources and operations").
        values["logGroupName"] = f"{values['logGroupName']}:*"
    for arn_format in formats:
        names = [
            name for name in re.findall(r"\$\{(\w+)\}", arn_format) if name not in ("Partition", "Region", "Account")
        ]
        choices = {}
        for name in names:
            key = PARAMETERS.get(name, name)
            value = values.get(key, values.get(key + "s"))
            if isinstance(value, (str, int)):
                choices[name] = [str(value)]
            elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                choices[name] = value
        if len(choices) == len(names):
            arns = [arn_format]
            for name, options in choices.items():
                arns = [arn.replace(f"${{{name}}}", option) for arn in arns for option in options]
            return [_fill(arn, region) for arn in arns]
    return [_fill(re.sub(r"\$\{(?!Partition|Region|Account)\w+\}", "0c0ffee0", formats[0]), region)]


def _fill(arn: str, region: str) -> str:
    return arn.replace("${Partition}", PARTITION).replace("${Region}", region).replace("${Account}", ACCOUNT)


def operations_from_calls(calls: list[dict], region: str) -> list[Operation]:
    """Recorded calls (``{"role", "service", "operation", "params"}``) → operations."""
    found = []
    for call in calls:
        if (call["service"], call["operation"]) in UNAUTHORIZED_CALLS:
            continue
        action = iam_action(call["service"], call["operation"])
        params = call.get("params") or {}
        context = (("aws:RequestedRegion", region),)
        if action == "cloudwatch:PutMetricData" and params.get("Namespace"):
            # The namespace is PutMetricData's condition key (CloudWatch User Guide, "Using condition keys to
            # limit access to CloudWatch namespaces").
            context += (("cloudwatch:namespace", params["Namespace"]),)
        if action == "s3:PutObject" and params.get("CopySource"):
            source = params["CopySource"]
            bucket, key = (source["Bucket"], source["Key"]) if isinstance(source, dict) else str(source).split("/", 1)
            found.append(
                Operation(
                    call["role"],
                    "s3:GetObject",
                    f"arn:{PARTITION}:s3:::{bucket}/{key}",
                    context,
                    f"{call['service']}.{call['operation']}",
                )
            )
        found += [
            Operation(call["role"], action, arn, context, f"{call['service']}.{call['operation']}")
            for arn in resource_arns(action, params, region)
        ]
        found += implied(call, region)
    return found


# --- what AWS checks beyond the call itself ------------------------------------------------------

PASS_ROLE = "https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-roles.html#sagemaker-roles-pass-role"
TRAINING_ROLE = (
    "https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-roles.html#sagemaker-roles-createtrainingjob-perms"
)
MODEL_ROLE = "https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-roles.html#sagemaker-roles-createmodel-perms"
TRANSFORM_ROLE = (
    "https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-roles.html#sagemaker-roles-createtransformjob-perms"
)
TRANSFORM_OUTPUT_KMS = (
    "https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_TransformOutput.html "
    "(KmsKeyId: the key policy must grant the role the model runs as)"
)
KMS_OUTPUT = (
    "https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_OutputDataConfig.html "
    "(KmsKeyId: the execution role needs kms:Encrypt)"
)
AUTOSCALING_CHECK = "https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-prerequisites.html"
DATA_CAPTURE = (
    "https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_DataCaptureConfig.html "
    "(the endpoint writes the capture under DestinationS3Uri as the model's execution role, "
    "encrypted with KmsKeyId)"
)
AUTOSCALING_ROLE = (
    "https://docs.aws.amazon.com/autoscaling/application/userguide/application-auto-scaling-service-linked-roles.html"
)
TARGET_TRACKING = (
    "https://docs.aws.amazon.com/autoscaling/application/userguide/"
    "application-auto-scaling-target-tracking.html (target tracking creates and deletes its alarms)"
)
LAMBDA_LOGS = "https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs.html"
LAMBDA_KMS = "https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars-encryption.html"
LAMBDA_XRAY = "https://docs.aws.amazon.com/lambda/latest/dg/services-xray.html"
LAMBDA_DLQ = "https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html#invocation-dlq"
CODEBUILD_ROLE = "https://docs.aws.amazon.com/codebuild/latest/userguide/setting-up-service-role.html"
APIGATEWAY_LOGS = "https://docs.aws.amazon.com/apigateway/latest/developerguide/set-up-logging.html"


def _s3(uri: str, key_suffix: str = "") -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key + key_suffix


def implied(call: dict, region: str) -> list[Operation]:
    """The permissions AWS checks because of this call, on the caller or on the role the call hands over."""
    service, operation, params = call["service"], call["operation"], call.get("params") or {}
    p, r, a = PARTITION, region, ACCOUNT
    here = (("aws:RequestedRegion", region),)
    ops = []

    def add(role, action, resource, source, context=here):
        ops.append(Operation(role, action, resource, context, source))

    if service == "sagemaker" and operation in ("CreateTrainingJob", "CreateModel"):
        role_arn = params.get("RoleArn") or params.get("ExecutionRoleArn")
        add(
            call["role"],
            "iam:PassRole",
            role_arn,
            PASS_ROLE,
            here + (("iam:PassedToService", "sagemaker.amazonaws.com"),),
        )
    if service == "sagemaker" and operation == "CreateTrainingJob":
        for channel in params.get("InputDataConfig", []):
            bucket, key = _s3(channel["DataSource"]["S3DataSource"]["S3Uri"])
            add("sagemaker-execution", "s3:ListBucket", f"arn:{p}:s3:::{bucket}", TRAINING_ROLE)
            add("sagemaker-execution", "s3:GetObject", f"arn:{p}:s3:::{bucket}/{key.rstrip('/')}/part", TRAINING_ROLE)
        output = params["OutputDataConfig"]
        bucket, key = _s3(output["S3OutputPath"])
        add(
            "sagemaker-execution",
            "s3:PutObject",
            f"arn:{p}:s3:::{bucket}/{key}/{params['TrainingJobName']}/output/model.tar.gz",
            TRAINING_ROLE,
        )
        if output.get("KmsKeyId"):
            for action in ("kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt"):
                add("sagemaker-execution", action, output["KmsKeyId"], KMS_OUTPUT)
        group = f"arn:{p}:logs:{r}:{a}:log-group:/aws/sagemaker/TrainingJobs"
        add(
            "sagemaker-execution",
            "logs:CreateLogStream",
            f"{group}:log-stream:{params['TrainingJobName']}/algo-1",
            TRAINING_ROLE,
        )
        add(
            "sagemaker-execution",
            "logs:PutLogEvents",
            f"{group}:log-stream:{params['TrainingJobName']}/algo-1",
            TRAINING_ROLE,
        )
    if service == "sagemaker" and operation == "CreateModel":
        container = params.get("PrimaryContainer", {})
        if container.get("ModelDataUrl"):
            bucket, key = _s3(container["ModelDataUrl"])
            add("sagemaker-execution", "s3:GetObject", f"arn:{p}:s3:::{bucket}/{key}", MODEL_ROLE)
        image = re.match(rf"^{a}\.dkr\.ecr\.{r}\.amazonaws\.com/([^:@]+)", container.get("Image", ""))
        if image:  # an image in this account's ECR (AWS's own algorithm images are not the role's business)
            for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"):
                add("sagemaker-execution", action, f"arn:{p}:ecr:{r}:{a}:repository/{image.group(1)}", MODEL_ROLE)
            add("sagemaker-execution", "ecr:GetAuthorizationToken", "*", MODEL_ROLE)
    if service == "sagemaker" and operation == "CreateTransformJob":
        ops += _transform_job(params, region)
    if service == "sagemaker" and operation == "CreateEndpointConfig" and params.get("DataCaptureConfig"):
        capture = params["DataCaptureConfig"]
        bucket, key = _s3(capture["DestinationS3Uri"])
        for variant in params.get("ProductionVariants", []):
            add(
                "sagemaker-execution",
                "s3:PutObject",
                f"arn:{p}:s3:::{bucket}/{key.rstrip('/')}/endpoint/"
                f"{variant['VariantName']}/2026/01/01/00/00-00-000-0c0ffee0.jsonl",
                DATA_CAPTURE,
            )
        if capture.get("KmsKeyId"):
            for action in ("kms:Encrypt", "kms:GenerateDataKey"):
                add("sagemaker-execution", action, capture["KmsKeyId"], DATA_CAPTURE)
    if service == "sagemaker" and operation == "CreateEndpoint":
        group = f"arn:{p}:logs:{r}:{a}:log-group:/aws/sagemaker/Endpoints/{params['EndpointName']}"
        for action in ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"):
            add("sagemaker-execution", action, f"{group}:log-stream:AllTraffic/i-0", MODEL_ROLE)
    if (
        service == "application-autoscaling"
        and operation == "RegisterScalableTarget"
        and params.get("ServiceNamespace") == "sagemaker"
    ):
        endpoint = params["ResourceId"].split("/")[1]
        add(
            call["role"],
            "sagemaker:DescribeEndpoint",
            f"arn:{p}:sagemaker:{r}:{a}:endpoint/{endpoint}",
            AUTOSCALING_CHECK,
        )
        add(
            call["role"],
            "sagemaker:DescribeEndpointConfig",
            f"arn:{p}:sagemaker:{r}:{a}:endpoint-config/{endpoint}-live",
            AUTOSCALING_CHECK,
        )
        add(
            call["role"],
            "sagemaker:UpdateEndpointWeightsAndCapacities",
            f"arn:{p}:sagemaker:{r}:{a}:endpoint/{endpoint}",
            AUTOSCALING_CHECK,
        )
        add(
            call["role"],
            "iam:CreateServiceLinkedRole",
            f"arn:{p}:iam::{a}:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
            "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint",
            AUTOSCALING_ROLE,
            here + (("iam:AWSServiceName", "sagemaker.application-autoscaling.amazonaws.com"),),
        )
    if (
        service == "application-autoscaling"
        and operation == "PutScalingPolicy"
        and params.get("PolicyType") == "TargetTrackingScaling"
    ):
        alarm = f"arn:{p}:cloudwatch:{r}:{a}:alarm:TargetTracking-{params['ResourceId']}-AlarmHigh-0c0ffee0"
        for action in ("cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms", "cloudwatch:DeleteAlarms"):
            add(call["role"], action, alarm, TARGET_TRACKING)
    return ops


def _transform_job(params: dict, region: str) -> list[Operation]:
    """What a transform job does as the model's execution role: read its input, write its outputs and log."""
    p, r, a, role = PARTITION, region, ACCOUNT, "sagemaker-execution"
    here = (("aws:RequestedRegion", region),)
    source = params["TransformInput"]["DataSource"]["S3DataSource"]
    bucket, key = _s3(source["S3Uri"])
    if source.get("S3DataType") == "ManifestFile":
        # the manifest, then the objects it names (a directory's images are uploaded beside it, under input/)
        reads = [key, f"{key.rsplit('/', 1)[0]}/input/part"]
    else:
        reads = [f"{key.rstrip('/')}/part"]
    ops = [Operation(role, "s3:GetObject", f"arn:{p}:s3:::{bucket}/{read}", here, TRANSFORM_ROLE) for read in reads]
    if source.get("S3DataType") == "S3Prefix":
        ops.append(Operation(role, "s3:ListBucket", f"arn:{p}:s3:::{bucket}", here, TRANSFORM_ROLE))
    output = params["TransformOutput"]
    bucket, key = _s3(output["S3OutputPath"])
    ops.append(
        Operation(role, "s3:PutObject", f"arn:{p}:s3:::{bucket}/{key.rstrip('/')}/part.out", here, TRANSFORM_ROLE)
    )
    if output.get("KmsKeyId"):
        ops += [
            Operation(role, action, output["KmsKeyId"], here, TRANSFORM_OUTPUT_KMS)
            for action in ("kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt")
        ]
    stream = (
        f"arn:{p}:logs:{r}:{a}:log-group:/aws/sagemaker/TransformJobs:log-stream:"
        f"{params['TransformJobName']}/i-0c0ffee0/data-log"
    )
    ops += [
        Operation(role, action, stream, here, TRANSFORM_ROLE)
        for action in ("logs:CreateLogStream", "logs:PutLogEvents")
    ]
    return ops


def service_operations(rendered: Rendered) -> list[Operation]:
    """What the services do as each role, whatever our code calls: the Lambdas' logs, keys and traces, CodeBuild's
    build environment, API Gateway's logs."""
    config, p, r, a = rendered.config, PARTITION, rendered.region, ACCOUNT
    key = f"arn:{p}:kms:{r}:{a}:key/{KMS_KEY_ID}"
    ops = []
    for role, module, function in (("predict-lambda", "api", "predict"), ("trigger-lambda", "trigger", "trigger")):
        context = config.instance(module)
        body = context.value(context.module.resources[("aws_lambda_function", function)])
        name = rendered.concrete(body["function_name"])
        stream = f"arn:{p}:logs:{r}:{a}:log-group:/aws/lambda/{name}:log-stream:2026/01/01/[$LATEST]0c0ffee0"
        ops += [
            Operation(role, "logs:CreateLogStream", stream, (), LAMBDA_LOGS),
            Operation(role, "logs:PutLogEvents", stream, (), LAMBDA_LOGS),
        ]
        if body.get("kms_key_arn"):
            ops.append(Operation(role, "kms:Decrypt", key, (), LAMBDA_KMS))
        if (body.get("tracing_config") or [{}])[0].get("mode") == "Active":
            ops += [
                Operation(role, f"xray:{action}", "*", (), LAMBDA_XRAY)
                for action in ("PutTraceSegments", "PutTelemetryRecords")
            ]
        dead_letters = body.get("dead_letter_config")
        if dead_letters:
            ops.append(
                Operation(role, "sqs:SendMessage", rendered.concrete(dead_letters[0]["target_arn"]), (), LAMBDA_DLQ)
            )
    codebuild = config.instance("codebuild")
    project = codebuild.value(codebuild.module.resources[("aws_codebuild_project", "this")])
    name = rendered.concrete(project["name"])
    group = f"arn:{p}:logs:{r}:{a}:log-group:/aws/codebuild/{name}"
    ops += [
        Operation("codebuild", action, f"{group}:log-stream:0c0ffee0", (), CODEBUILD_ROLE)
        for action in ("logs:CreateLogStream", "logs:PutLogEvents")
    ]
    ops.append(Operation("codebuild", "logs:CreateLogGroup", f"{group}:*", (), CODEBUILD_ROLE))
    artifacts = rendered.concrete(project["artifacts"][0]["location"])
    ops.append(
        Operation("codebuild", "s3:PutObject", f"arn:{p}:s3:::{artifacts}/builds/0c0ffee0/{name}", (), CODEBUILD_ROLE)
    )
    settings = config.root.value(config.root_module.locals["pipeline_settings"])
    path = rendered.concrete(codebuild.inputs["parameter_path"])
    for setting in list(settings) + ["DD_API_KEY"]:
        ops.append(
            Operation(
                "codebuild", "ssm:GetParameters", f"arn:{p}:ssm:{r}:{a}:parameter{path}/{setting}", (), CODEBUILD_ROLE
            )
        )
    ops += [
        Operation("codebuild", action, key, (), CODEBUILD_ROLE) for action in ("kms:Decrypt", "kms:GenerateDataKey")
    ]
    ops += [
        Operation(
            "codebuild",
            f"codebuild:{action}",
            f"arn:{p}:codebuild:{r}:{a}:report-group/{name}-pytest",
            (),
            CODEBUILD_ROLE,
        )
        for action in ("CreateReportGroup", "CreateReport", "UpdateReport", "BatchPutTestCases")
    ]
    ops += [
        Operation("apigateway-logging", f"logs:{action}", "*", (), APIGATEWAY_LOGS)
        for action in (
            "CreateLogGroup",
            "CreateLogStream",
            "DescribeLogGroups",
            "DescribeLogStreams",
            "PutLogEvents",
            "GetLogEvents",
            "FilterLogEvents",
        )
    ]
    return ops


# --- evaluation ----------------------------------------------------------------------------------


def _allowed_by(document: dict, operation: Operation):
    from moto.iam.access_control import IAMPolicy, PermissionResult  # ops extra, slow to load

    statements = [{k: v for k, v in s.items() if k != "Sid"} for s in document["Statement"]]
    verdict = IAMPolicy(json.dumps({"Version": "2012-10-17", "Statement": statements})).is_action_permitted(
        operation.action, operation.resource, incoming_condition_values=dict(operation.context)
    )
    return verdict == PermissionResult.PERMITTED, verdict == PermissionResult.DENIED


def _should_allow(documents: list[dict], operation: Operation) -> str:
    """The statement that should allow a denied operation: the one with its action, else its service's."""
    from moto.iam.access_control import IAMPolicyStatement  # ops extra, slow to load

    service = operation.action.split(":")[0]

    def on_resource(statement: dict) -> bool:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        return any(IAMPolicyStatement._match(resource, operation.resource) for resource in resources)

    for want in (
        lambda a, s: a.split(":")[0] == service and on_resource(s),  # same service, same resource
        lambda a, s: a == operation.action,
        lambda a, s: a.split(":")[0] == service,
    ):
        for document in documents:
            for statement in document["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                if any(want(action, statement) for action in actions):
                    return (
                        f"{document['Name']}/{statement.get('Sid') or '?'} (actions {actions}, "
                        f"resources {statement['Resource']})"
                    )
    return f"no statement of the role grants any {service}: action"


def coverage_findings(rendered: Rendered, operations: list[Operation]) -> list[Finding]:
    findings = []
    for operation in sorted(set(operations), key=lambda op: (op.role, op.action, op.resource)):
        documents = rendered.policies.get(operation.role)
        if documents is None:
            findings.append(Finding("coverage", False, f"unknown role for {operation.action}", operation.role))
            continue
        allowed = denied = False
        for document in documents:
            permitted, refused = _allowed_by(document, operation)
            allowed, denied = allowed or permitted, denied or refused
        ok = allowed and not denied
        detail = f"{operation.action} on {operation.resource} ({operation.origin})"
        if not ok:
            detail += f": not granted; the statement that should allow it: {_should_allow(documents, operation)}"
        findings.append(Finding("coverage", ok, detail, operation.role))
    return findings


def env_names(rendered: Rendered) -> dict[str, str]:
    """What the pipeline's settings name, as this env names it (Terraform's outputs)."""
    config = rendered.config
    settings = rendered.concrete(config.root.value(config.root_module.locals["pipeline_settings"]))
    return {
        "bucket": settings["DD_BUCKET"],
        "endpoint": settings["DD_ENDPOINT_NAME"],
        "repository": settings["DD_SERVING_IMAGE_REPOSITORY"].split("/", 1)[1],
        "role": settings["DD_ROLE_ARN"].rsplit("/", 1)[1],
        "key": settings["DD_KMS_KEY_ID"],
        "project": rendered.concrete(config.instance("codebuild").inputs["project_name"]),
    }


# Which request fields carry which of the names the settings give.
NAMED_BY = {
    "bucket": {
        "Bucket",
        "S3Uri",
        "S3OutputPath",
        "ModelDataUrl",
        "sagemaker_submit_directory",
        "CopySource",
        "DestinationS3Uri",
    },
    "endpoint": {
        "EndpointName",
        "ModelName",
        "EndpointConfigName",
        "ResourceId",
        "PolicyName",
        "AlarmNames",
        "TransformJobName",
    },
    "repository": {"repositoryName", "Image"},
    "role": {"RoleArn", "ExecutionRoleArn"},
    "key": {"KmsKeyId", "SSEKMSKeyId"},
    "project": {"projectName", "ids"},
}
_FOUND_BY = {
    "bucket": r"^s3://([^/]+)|^([a-z0-9][a-z0-9.-]*)$",
    "endpoint": r"^(?:endpoint/)?([a-zA-Z0-9-]+?)(?:/|$)",
    "repository": r"(?:\.amazonaws\.com/)?([a-z0-9._/-]+?)(?::|@|$)",
    "role": r":role/([\w+=,.@-]+)$",
    "key": r"^(.+)$",
    "project": r"^([\w-]+?)(?::|$)",
}


def _walk(value, key: str, visit):
    if isinstance(value, dict):
        return {k: _walk(v, k, visit) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, key, visit) for v in value]
    return visit(key, value) if isinstance(value, str) else value


def rename(calls: list[dict], names: dict[str, str]) -> list[dict]:
    """The tests run the code with their own bucket, endpoint, repository, role and key names; our code only
    ever addresses the ones its settings give, so in the fields that carry them those become the env's."""
    seen: dict[str, set] = {kind: set() for kind in NAMED_BY}

    def collect(key, text):
        for kind, keys in NAMED_BY.items():
            if key in keys:
                found = re.search(_FOUND_BY[kind], text)
                if key == "TransformJobName":  # <endpoint>-batch-<time>-<hex>
                    found = re.search(rf"^(.+?)-{TRANSFORM_JOB_INFIX}-\d{{8}}-\d{{6}}-[0-9a-f]+$", text)
                if found and (kind != "endpoint" or key in ("EndpointName", "ResourceId", "TransformJobName")):
                    seen[kind].add(next(group for group in found.groups() if group))
        return text

    for call in calls:
        _walk(call.get("params") or {}, "", collect)
    tables = {kind: {old: names[kind] for old in olds if old != names[kind]} for kind, olds in seen.items()}

    def replace(key, text):
        for kind, keys in NAMED_BY.items():
            if key in keys and tables[kind]:
                for old in sorted(tables[kind], key=len, reverse=True):
                    new = tables[kind][old]
                    # "distracted-driver" → "distracted-driver-dev" must leave "distracted-driver-dev-…" alone
                    keep = f"(?!{re.escape(new[len(old) :])})" if new.startswith(old) else ""
                    text = re.sub(rf"(?<![\w.]){re.escape(old)}(?![\w.]){keep}", new, text)
        return text

    return [{**call, "params": _walk(call.get("params") or {}, "", replace)} for call in calls]


def check(terraform_dir: str | Path, tfvars: str | Path | None, calls: list[dict]) -> Report:
    """The catalogue checks, and every recorded and implied operation evaluated against its role's policies."""
    rendered = Rendered(terraform_dir, tfvars)
    report = Report()
    unresolved = rendered.unresolved()
    report.findings.append(Finding("rendered", not unresolved, f"unresolved references: {unresolved or 'none'}", "all"))
    report.findings += catalogue_findings(rendered)
    calls = rename(calls, env_names(rendered))
    operations = operations_from_calls(calls, rendered.region) + service_operations(rendered)
    report.operations = sorted(set(operations), key=lambda op: (op.role, op.action, op.resource))
    report.findings += coverage_findings(rendered, operations)
    return report
