"""Static checks of the Terraform: the wiring between its modules and the pipeline's code, and checkov.

``wiring_findings`` resolves the configuration (``infra.hcl``) once with the
variable defaults and once per ``envs/<env>.tfvars`` and asks, for each:

- the predict Lambda's ``ENDPOINT_NAME`` is the endpoint its IAM policy may
  invoke, and nothing else; its timeouts fit inside API Gateway's 29 s;
- the API's ``binary_media_types`` cover every image type ``lambda/handler.py`` takes;
- autoscaling and the rollback alarms name ``endpoint/<name>/variant/<variant>``
  exactly as ``hosting.aws`` does (resource id, policy name, alarm names); the drift
  alarm watches the metric ``monitor.cloudwatch`` puts, and is no rollback alarm;
- CodeBuild may run transform jobs named as ``hosting.batch_transform`` names them,
  and the SageMaker role reads the transform prefix and writes only its jobs' outputs;
- the S3 notification fires on ``<raw_prefix>/manifests/*.json`` (what ``data.add``
  writes) into the trigger Lambda, whose role may start builds of the pipeline's
  project and nothing else;
- variable defaults agree with ``Settings``, ``ScalingPolicy`` and ``AlarmThresholds``;
- every variable has a description and a type; every checkov skip has a reason;
  every module has a versions.tf with the root's floors, and a README whose inputs
  and outputs tables match its .tf files (``infra.docs``);
- what a fresh account's first apply and first build need: no reserved Lambda
  concurrency unless asked for, the grants AWS checks beyond the call itself
  (Application Auto Scaling's validation of the caller, ``kms:Encrypt`` for a
  KMS-encrypted training output), Logs ARNs in the ``log-group:NAME:*`` form, an
  ECR lifecycle policy that never expires an image a kept model names, no empty
  ``filter {}`` in S3 lifecycle rules, and the API Gateway account setting made
  only after its role's policy is attached.

``run_checkov`` runs checkov from its own virtual environment (``make checkov-env``).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from distracted_driver.config import Settings
from distracted_driver.hosting.aws import (
    MODEL_IMAGE_TAG_PREFIX,
    SCALABLE_DIMENSION,
    SCALING_METRIC,
    rollback_alarm_names,
    scalable_resource_id,
    scaling_policy_name,
    transform_job_prefix,
)
from distracted_driver.hosting.base import AlarmThresholds, ScalingPolicy
from distracted_driver.infra import docs
from distracted_driver.infra.ecr import Image, lifecycle_expired
from distracted_driver.infra.findings import Finding, Report
from distracted_driver.infra.hcl import (
    Configuration,
    Context,
    HclError,
    Module,
    example_dirs,
    nested_blocks,
    requirements,
    skip_comments,
)
from distracted_driver.monitor.cloudwatch import ALL_VARIANTS, DRIFT_METRIC, DRIFT_NAMESPACE

API_GATEWAY_TIMEOUT_SECONDS = 29
MANIFESTS_DIR = "manifests"  # distracted_driver.data.ingest.MANIFESTS (a test keeps them equal)
TRIGGER_ACTIONS = {"codebuild:StartBuild", "codebuild:ListBuildsForProject", "codebuild:BatchGetBuilds"}
# pipeline_settings entries that are not Settings fields, and who reads them.
EXTRA_SETTINGS = {
    "DD_SERVING_IMAGE_REPOSITORY": "infra.push-image tags and pushes the serving image here",
    "DD_API_URL": "buildspec.yml's smoke and load tests",
    "DD_ENV": "buildspec.yml's preflight reads envs/<env>.tfvars",
}
PROJECT_ARN = "${codebuild:aws_codebuild_project.this.arn}"
# Application Auto Scaling checks that the caller of RegisterScalableTarget may do these on the
# variant's endpoint (Application Auto Scaling User Guide, "Identity and access management",
# permissions for SageMaker AI); a missing one is a ValidationException.
AUTOSCALING_VALIDATION = {
    "sagemaker:DescribeEndpoint",
    "sagemaker:DescribeEndpointConfig",
    "sagemaker:UpdateEndpointWeightsAndCapacities",
}
MIN_SKIP_REASON = 20


class _Checker:
    def __init__(self, config: Configuration, variant: str, repo_root: Path):
        self.config, self.variant, self.repo_root = config, variant, repo_root
        self.findings: list[Finding] = []

    def expect(self, check: str, ok: bool, detail: str) -> bool:
        self.findings.append(Finding(check, bool(ok), detail, self.variant))
        return bool(ok)

    def var(self, name: str):
        return self.config.variable(name)

    def resource(self, module: str, type_: str, name: str) -> tuple[Context, dict]:
        context = self.config.instance(module)
        body = context.module.resources.get((type_, name))
        if body is None:
            raise HclError(f"module {module} has no {type_}.{name}")
        return context, context.value(body)

    def output(self, module: str, name: str):
        context = self.config.instance(module)
        return context.value(context.module.outputs[name]["value"])

    def policy(self, module: str, name: str) -> list[dict]:
        context = self.config.instance(module)
        body = context.module.data.get(("aws_iam_policy_document", name))
        if body is None:
            raise HclError(f"module {module} has no aws_iam_policy_document.{name}")
        return context.value(body).get("statement", [])

    # --- the checks ---------------------------------------------------------------------

    def predict_lambda(self) -> None:
        endpoint = self.var("endpoint_name")
        _, function = self.resource("api", "aws_lambda_function", "predict")
        env = function["environment"][0]["variables"]
        self.expect(
            "lambda-endpoint",
            env.get("ENDPOINT_NAME") == endpoint,
            f"ENDPOINT_NAME={env.get('ENDPOINT_NAME')!r}, endpoint_name={endpoint!r}",
        )
        self.expect(
            "lambda-role",
            function["role"] == "${iam:aws_iam_role.api_lambda.arn}",
            f"the predict Lambda runs as {function['role']}",
        )
        _, attachment = self.resource("iam", "aws_iam_role_policy", "api_lambda")
        self.expect(
            "lambda-role-policy",
            attachment["role"] == "${iam:aws_iam_role.api_lambda.id}"
            and attachment["policy"] == "${iam:data.aws_iam_policy_document.api_lambda.json}",
            "the predict role carries the api_lambda policy document",
        )
        statements = self.policy("iam", "api_lambda")
        sagemaker = [s for s in statements if any(a.startswith("sagemaker:") for a in s["actions"])]
        actions = {a for s in sagemaker for a in s["actions"]}
        resources = [r for s in sagemaker for r in s["resources"]]
        suffix = f":sagemaker:{self.var('region')}:"
        self.expect(
            "lambda-invokes-only-its-endpoint",
            actions == {"sagemaker:InvokeEndpoint"}
            and len(resources) == 1
            and resources[0].endswith(f":endpoint/{endpoint}")
            and suffix in resources[0]
            and "*" not in resources[0],
            f"sagemaker actions {sorted(actions)} on {resources}",
        )
        others = {a for s in statements for a in s["actions"]} - actions
        self.expect(
            "lambda-policy-narrow",
            others
            <= {
                "logs:CreateLogStream",
                "logs:PutLogEvents",
                "kms:Decrypt",
                "xray:PutTraceSegments",
                "xray:PutTelemetryRecords",
            },
            f"other actions: {sorted(others)}",
        )
        try:
            attempts = int(env["MAX_ATTEMPTS"])
            per_attempt = float(env["CONNECT_TIMEOUT_S"]) + float(env["READ_TIMEOUT_S"])
            timeout = float(function["timeout"])
        except (KeyError, TypeError, ValueError):
            self.expect("lambda-timeouts", False, f"timeouts not resolvable: {env}, timeout {function.get('timeout')}")
        else:
            self.expect(
                "lambda-timeouts",
                attempts * per_attempt < timeout <= API_GATEWAY_TIMEOUT_SECONDS,
                f"{attempts} x {per_attempt:g} s < timeout {timeout:g} s <= {API_GATEWAY_TIMEOUT_SECONDS} s",
            )
        self.handler_file("api", function, "handler")

    def lambda_source(self, package: str) -> Path:
        """``.build/<name>.zip`` holds ``lambda/<name>.py`` at its root (``infra.terraform.package_lambdas``)."""
        return (self.repo_root / "lambda" / f"{Path(package).stem}.py").resolve()

    def handler_file(self, module: str, function: dict, stem: str) -> Path | None:
        context = self.config.instance(module)
        source = self.lambda_source(context.inputs["package_file"])
        ok = source.is_file() and source.stem == stem and function["handler"] == f"{stem}.handler"
        self.expect(f"{module}-lambda-source", ok, f"{function['handler']} from {source}")
        if not ok:
            return None
        spec = importlib.util.spec_from_file_location(f"_infra_check_{stem}", source)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        self.expect(
            f"{module}-lambda-entry", callable(getattr(loaded, "handler", None)), f"{source.name} defines handler()"
        )
        return source

    def rest_api(self) -> None:
        _, api = self.resource("api", "aws_api_gateway_rest_api", "this")
        _, function = self.resource("api", "aws_lambda_function", "predict")
        source = self.lambda_source(self.config.instance("api").inputs["package_file"])
        spec = importlib.util.spec_from_file_location("_infra_check_api_handler", source)
        handler = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(handler)
        wanted = set(handler.IMAGE_TYPES)
        declared = set(api.get("binary_media_types") or [])
        self.expect(
            "binary-media-types", wanted <= declared, f"handler takes {sorted(wanted)}; API declares {sorted(declared)}"
        )
        _, method = self.resource("api", "aws_api_gateway_method", "predict")
        self.expect(
            "api-key-required",
            method.get("api_key_required") is True and method.get("http_method") == "POST",
            f"POST /predict api_key_required={method.get('api_key_required')}",
        )
        _, integration = self.resource("api", "aws_api_gateway_integration", "predict")
        self.expect(
            "api-lambda-proxy",
            integration.get("type") == "AWS_PROXY"
            and integration.get("uri") == "${api:aws_lambda_function.predict.invoke_arn}",
            f"integration {integration.get('type')} → {integration.get('uri')}",
        )
        _, plan = self.resource("api", "aws_api_gateway_usage_plan", "this")
        stages = plan.get("api_stages", [])
        self.expect(
            "usage-plan",
            bool(stages)
            and stages[0].get("stage") == "${api:aws_api_gateway_stage.this.stage_name}"
            and bool(plan.get("throttle_settings"))
            and bool(plan.get("quota_settings")),
            "the usage plan covers the stage with a throttle and a quota",
        )

    def autoscaling(self) -> None:
        endpoint, variant = self.var("endpoint_name"), self.var("variant_name")
        context = self.config.instance("autoscaling")
        _, target = self.resource("autoscaling", "aws_appautoscaling_target", "variant")
        _, policy = self.resource("autoscaling", "aws_appautoscaling_policy", "invocations")
        resource_id = scalable_resource_id(endpoint, variant)
        self.expect(
            "autoscaling-resource-id",
            target["resource_id"] == resource_id,
            f"{target['resource_id']} (hosting.aws registers {resource_id})",
        )
        self.expect(
            "autoscaling-dimension",
            target["scalable_dimension"] == SCALABLE_DIMENSION and target["service_namespace"] == "sagemaker",
            f"{target['service_namespace']} {target['scalable_dimension']}",
        )
        self.expect(
            "autoscaling-policy-name",
            policy["name"] == scaling_policy_name(endpoint, variant),
            f"{policy['name']} (hosting.aws puts {scaling_policy_name(endpoint, variant)})",
        )
        tracking = policy["target_tracking_scaling_policy_configuration"][0]
        metric = tracking["predefined_metric_specification"][0]["predefined_metric_type"]
        self.expect(
            "autoscaling-metric",
            metric == SCALING_METRIC and policy["policy_type"] == "TargetTrackingScaling",
            f"{policy['policy_type']} on {metric}",
        )
        self.expect(
            "autoscaling-policy-target",
            policy["resource_id"] == "${autoscaling:aws_appautoscaling_target.variant[0].resource_id}",
            "the policy attaches to the registered target",
        )
        enabled = context.inputs.get("enabled")
        self.expect(
            "autoscaling-gated",
            enabled == self.var("endpoint_exists"),
            f"registered only when endpoint_exists (now {enabled})",
        )

    def alarms(self) -> None:
        endpoint, variant = self.var("endpoint_name"), self.var("variant_name")
        _, errors = self.resource("alarms", "aws_cloudwatch_metric_alarm", "errors")
        _, latency = self.resource("alarms", "aws_cloudwatch_metric_alarm", "latency")
        names = [errors["alarm_name"], latency["alarm_name"]]
        self.expect(
            "rollback-alarm-names",
            names == rollback_alarm_names(endpoint),
            f"{names} (hosting.aws passes {rollback_alarm_names(endpoint)})",
        )
        dims = {"EndpointName": endpoint, "VariantName": variant}
        metrics = {q["metric"][0]["metric_name"]: q["metric"][0] for q in errors["metric_query"] if q.get("metric")}
        self.expect(
            "error-alarm-metrics",
            set(metrics) == {"Invocation5XXErrors", "Invocations"}
            and all(m["dimensions"] == dims and m["namespace"] == "AWS/SageMaker" for m in metrics.values()),
            f"error rate of {sorted(metrics)} on {dims}",
        )
        expected = self.var("alarm_p99_latency_ms") * 1000
        self.expect(
            "latency-alarm-microseconds",
            latency["metric_name"] == "ModelLatency"
            and latency["dimensions"] == dims
            and latency["threshold"] == expected,
            f"ModelLatency p99 > {latency['threshold']} us ({self.var('alarm_p99_latency_ms')} ms)",
        )
        _, drifted = self.resource("alarms", "aws_cloudwatch_metric_alarm", "drift")
        watched = (drifted["namespace"], drifted["metric_name"], drifted["dimensions"])
        expected_drift = (DRIFT_NAMESPACE, DRIFT_METRIC, {"EndpointName": endpoint, "VariantName": ALL_VARIANTS})
        self.expect(
            "drift-alarm-metric",
            watched == expected_drift and drifted["alarm_name"] not in rollback_alarm_names(endpoint),
            f"{watched[0]}/{watched[1]} on {watched[2]} (monitor.cloudwatch puts {expected_drift[0]}/"
            f"{expected_drift[1]} on {expected_drift[2]}); not a rollback alarm",
        )

    def storage_buckets(self) -> None:
        """What checkov cannot follow through the storage module's for_each: every bucket has each setting, KMS
        encryption but on the access-log target, access logs into that target, and a rule aborting stale uploads."""
        storage = self.config.instance("storage")
        resources = storage.module.resources
        buckets = storage.value(resources[("aws_s3_bucket", "this")]["for_each"])
        settings = [
            type_
            for (type_, name), body in resources.items()
            if type_.startswith("aws_s3_bucket_") and type_ != "aws_s3_bucket_logging"
        ]
        partial = [type_ for type_ in settings if storage.value(resources[(type_, "this")].get("for_each")) != buckets]
        self.expect(
            "bucket-settings",
            not partial,
            f"{partial} do not cover every bucket" if partial else f"{sorted(settings)} for {sorted(buckets)}",
        )
        logging = resources[("aws_s3_bucket_logging", "this")]
        target = re.fullmatch(
            r'\$\{storage:aws_s3_bucket\.this\["(\w+)"\]\.id\}', storage.value(logging["target_bucket"])
        )
        target = target.group(1) if target else None
        unlogged = sorted(name for name, bucket in buckets.items() if bucket["access_log_prefix"] is None)
        self.expect(
            "bucket-access-logs",
            unlogged == [target] and logging["for_each"] == "${local.access_logged}",
            f"every bucket logs into {target!r} but {unlogged}",
        )
        plain = sorted(name for name, bucket in buckets.items() if not bucket["sse_kms"])
        self.expect("bucket-encryption", plain == [target], f"SSE-KMS for every bucket but {plain} (SSE-S3)")
        endless = sorted(
            name
            for name, bucket in buckets.items()
            if not any(rule.get("abort_upload_days") for rule in bucket["lifecycle_rules"])
        )
        self.expect(
            "bucket-abort-uploads",
            not endless,
            f"{endless} keep incomplete uploads" if endless else "every bucket aborts incomplete uploads",
        )

    def trigger(self) -> None:
        manifest_prefix = f"{self.var('raw_prefix')}/{MANIFESTS_DIR}/"
        _, notification = self.resource("trigger", "aws_s3_bucket_notification", "manifests")
        rule = notification["lambda_function"][0]
        data_bucket = {attribute: self.output("storage", f"data_bucket_{attribute}") for attribute in ("name", "arn")}
        self.expect(
            "trigger-bucket",
            notification["bucket"] == data_bucket["name"],
            f"notification on {notification['bucket']} (the storage module's data bucket)",
        )
        self.expect(
            "trigger-prefix",
            rule.get("filter_prefix") == manifest_prefix and rule.get("filter_suffix") == ".json",
            f"{rule.get('filter_prefix')}*{rule.get('filter_suffix')} (data.add writes {manifest_prefix}<id>.json)",
        )
        self.expect(
            "trigger-events",
            any(e.startswith("s3:ObjectCreated:") for e in rule.get("events", [])),
            f"events {rule.get('events')}",
        )
        self.expect(
            "trigger-target",
            rule.get("lambda_function_arn") == "${trigger:aws_lambda_function.trigger.arn}",
            f"notifies {rule.get('lambda_function_arn')}",
        )
        _, permission = self.resource("trigger", "aws_lambda_permission", "s3")
        self.expect(
            "trigger-permission",
            permission["principal"] == "s3.amazonaws.com" and permission["source_arn"] == data_bucket["arn"],
            f"{permission['principal']} from {permission['source_arn']}",
        )
        statements = self.policy("trigger", "trigger")
        codebuild = [s for s in statements if any(a.startswith("codebuild:") for a in s["actions"])]
        actions = {a for s in codebuild for a in s["actions"]}
        resources = {r for s in codebuild for r in s["resources"]}
        self.expect(
            "trigger-policy-project-only",
            resources == {PROJECT_ARN} and actions <= TRIGGER_ACTIONS and "codebuild:StartBuild" in actions,
            f"{sorted(actions)} on {sorted(resources)}",
        )
        _, function = self.resource("trigger", "aws_lambda_function", "trigger")
        env = function["environment"][0]["variables"]
        self.expect(
            "trigger-env",
            env.get("PROJECT_NAME") == "${codebuild:aws_codebuild_project.this.name}"
            and env.get("MANIFEST_PREFIX") == manifest_prefix,
            f"PROJECT_NAME={env.get('PROJECT_NAME')}, MANIFEST_PREFIX={env.get('MANIFEST_PREFIX')}",
        )
        self.handler_file("trigger", function, "trigger")

    def codebuild(self) -> None:
        _, project = self.resource("codebuild", "aws_codebuild_project", "this")
        source = project["source"][0]
        buildspec = self.repo_root / str(source.get("buildspec"))
        self.expect("codebuild-buildspec", buildspec.is_file(), f"{source.get('buildspec')} in the repository")
        self.expect("codebuild-one-build", project.get("concurrent_build_limit") == 1, "concurrent_build_limit = 1")
        _, webhook = self.resource("codebuild", "aws_codebuild_webhook", "push")
        filters = {f["type"]: f["pattern"] for f in webhook["filter_group"][0]["filter"]}
        branch = self.var("github_branch")
        self.expect(
            "codebuild-webhook",
            filters == {"EVENT": "PUSH", "HEAD_REF": f"^refs/heads/{branch}$"},
            f"webhook filters {filters}",
        )
        statements = self.policy("iam", "codebuild")
        passrole = [s for s in statements if "iam:PassRole" in s["actions"]]
        self.expect(
            "codebuild-passrole",
            len(passrole) == 1
            and passrole[0]["resources"] == ["${iam:aws_iam_role.sagemaker.arn}"]
            and passrole[0]["condition"][0]["values"] == ["sagemaker.amazonaws.com"],
            "PassRole only of the SageMaker execution role, only to SageMaker",
        )
        endpoint = self.var("endpoint_name")
        named = [r for s in statements for r in s["resources"] if ":sagemaker:" in r]
        jobs = transform_job_prefix(endpoint)
        self.expect(
            "codebuild-sagemaker-names",
            all(
                r.endswith(
                    (
                        f":endpoint/{endpoint}",
                        f":model/{endpoint}-*",
                        f":endpoint-config/{endpoint}-*",
                        ":training-job/dd-*",
                        f":transform-job/{jobs}*",
                    )
                )
                for r in named
            ),
            f"SageMaker resources {named}",
        )
        transform = [r for s in statements if "sagemaker:CreateTransformJob" in s["actions"] for r in s["resources"]]
        self.expect(
            "transform-job-names",
            len(transform) == 1 and transform[0].endswith(f":transform-job/{jobs}*"),
            f"CreateTransformJob on {transform} (hosting.batch_transform names jobs {jobs}…)",
        )

    def lambda_concurrency(self) -> None:
        """Lambda keeps 100 executions unreserved; new accounts often have 10 in all."""
        for module, name, variable in (
            ("api", "predict", "lambda_reserved_concurrency"),
            ("trigger", "trigger", "trigger_reserved_concurrency"),
        ):
            _, function = self.resource(module, "aws_lambda_function", name)
            reserved, asked = function.get("reserved_concurrent_executions"), self.var(variable)
            self.expect(
                "lambda-no-reservation-unless-asked",
                reserved == asked and (asked is None or self.variant != "defaults"),
                f"{name}: reserves {reserved!r} ({variable} = {asked!r})",
            )

    def implicit_grants(self) -> None:
        statements = self.policy("iam", "codebuild")
        on_endpoint = {
            a
            for s in statements
            for a in s["actions"]
            if any(r.endswith(f":endpoint/{self.var('endpoint_name')}") for r in s["resources"])
        }
        on_configs = {
            a for s in statements for a in s["actions"] if any(":endpoint-config/" in r for r in s["resources"])
        }
        granted = on_endpoint | (on_configs & {"sagemaker:DescribeEndpointConfig"})
        self.expect(
            "autoscaling-validation-grants",
            AUTOSCALING_VALIDATION <= granted,
            f"CodeBuild role lacks {sorted(AUTOSCALING_VALIDATION - granted) or 'nothing'} for Application Auto Scaling's check",
        )
        sagemaker = {a for s in self.policy("iam", "sagemaker") for a in s["actions"] if a.startswith("kms:")}
        self.expect(
            "training-output-kms",
            {"kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt"} <= sagemaker,
            f"SageMaker role's KMS actions {sorted(sagemaker)} (OutputDataConfig.KmsKeyId needs kms:Encrypt)",
        )
        for module, document in (
            ("iam", "codebuild"),
            ("iam", "sagemaker"),
            ("iam", "api_lambda"),
            ("trigger", "trigger"),
        ):
            for statement in self.policy(module, document):
                if not any(a.startswith("logs:") and a != "logs:CreateLogGroup" for a in statement["actions"]):
                    continue
                bare = [
                    r
                    for r in statement["resources"]
                    if ":log-group:" in r and not (r.endswith(":*") or r.endswith("/*") or ":log-stream:" in r)
                ]
                self.expect(
                    "logs-arn-form",
                    not bare,
                    f"{document}/{statement.get('sid', '?')}: {bare or 'log-group:NAME:* form'}",
                )

    def ecr_lifecycle(self) -> None:
        """The policy, applied to a repository whose oldest images are the live model's and the rollback target's."""
        context = self.config.instance("ecr")
        body = context.module.data.get(("aws_ecr_lifecycle_policy_document", "this"))
        if body is None:
            raise HclError(
                "module ecr has no aws_ecr_lifecycle_policy_document.this (the policy's rules must be readable)"
            )
        rules = context.value(body)["rule"]
        _, policy = self.resource("ecr", "aws_ecr_lifecycle_policy", "this")
        keep = int(context.inputs["images_to_keep"])
        kept = [
            Image("sha256:live", ("c0ffee1", f"{MODEL_IMAGE_TAG_PREFIX}dd-2", f"{MODEL_IMAGE_TAG_PREFIX}dd-3"), 0),
            Image("sha256:rollback", ("c0ffee0", f"{MODEL_IMAGE_TAG_PREFIX}dd-1"), -1),
        ]
        builds = [Image(f"sha256:build{i}", (f"commit{i}",), i + 1) for i in range(keep + 5)]
        expired = lifecycle_expired(rules, kept + builds)
        self.expect(
            "ecr-keeps-model-images",
            not expired & {i.digest for i in kept}
            and len(expired) == 5
            and policy.get("policy") == "${ecr:data.aws_ecr_lifecycle_policy_document.this.json}",
            f"after {len(builds)} newer pushes it expires {sorted(expired)} (never the kept models' images)",
        )

    def sagemaker_role(self) -> None:
        statements = {s.get("sid"): s for s in self.policy("iam", "sagemaker")}
        read = statements.get("ReadChannelsAndModels", {}).get("resources", [])
        write = statements.get("WriteTrainingOutputs", {}).get("resources", [])
        capture = statements.get("WriteDataCapture", {}).get("resources", [])
        data, models = self.var("data_prefix"), self.var("models_prefix")
        self.expect(
            "sagemaker-role-prefixes",
            sorted(r.rsplit("/", 2)[-2] for r in read) == sorted([data, models])
            and [r.rsplit("/", 2)[-2] for r in write] == [models]
            and [r.rsplit("/", 2)[-2] for r in capture] == [self.var("capture_prefix")],
            f"reads {read}, writes {write} and the data capture {capture}",
        )
        transform = self.var("transform_prefix")
        inputs = statements.get("ReadTransformInputs", {}).get("resources", [])
        outputs = statements.get("WriteTransformOutputs", {}).get("resources", [])
        self.expect(
            "transform-prefixes",
            [r.split("/", 1)[-1] for r in inputs] == [f"{transform}/*"]
            and [r.split("/", 1)[-1] for r in outputs] == [f"{transform}/*/output/*"],
            f"Batch Transform reads {inputs}, writes {outputs} (hosting.batch_transform: images under "
            f"{transform}/, outputs under {transform}/<job>/output/)",
        )

    def pipeline_settings(self) -> None:
        values = self.config.root.value(self.config.root_module.locals["pipeline_settings"])
        fields = {f"DD_{name.upper()}" for name in Settings.__dataclass_fields__}
        unknown = set(values) - fields - set(EXTRA_SETTINGS)
        self.expect(
            "settings-known",
            not unknown,
            f"unknown settings {sorted(unknown)}" if unknown else f"{len(values)} settings",
        )
        same = {
            "DD_ENDPOINT_NAME": "endpoint_name",
            "DD_VARIANT_NAME": "variant_name",
            "DD_REGION": "region",
            "DD_DATA_PREFIX": "data_prefix",
            "DD_RAW_PREFIX": "raw_prefix",
            "DD_MODELS_PREFIX": "models_prefix",
            "DD_REGISTRY_PREFIX": "registry_prefix",
            "DD_PIPELINE_PREFIX": "pipeline_prefix",
            "DD_TRANSFORM_PREFIX": "transform_prefix",
            "DD_CAPTURE_PREFIX": "capture_prefix",
        }
        wrong = {key: values.get(key) for key, var in same.items() if values.get(key) != self.var(var)}
        self.expect(
            "settings-match-variables", not wrong, f"mismatched {wrong}" if wrong else "names and prefixes agree"
        )
        context = self.config.instance("codebuild")
        self.expect(
            "settings-reach-codebuild",
            context.inputs.get("settings") == values,
            "CodeBuild gets the same settings as `inv infra.outputs`",
        )


def _defaults_agree(config: Configuration) -> list[Finding]:
    """Without tfvars, Terraform's defaults and the pipeline's must be the same values."""
    settings, scaling, alarms = Settings(), ScalingPolicy(), AlarmThresholds()
    pairs = {
        "endpoint_name": settings.endpoint_name,
        "variant_name": settings.variant_name,
        "region": settings.region,
        "data_prefix": settings.data_prefix,
        "raw_prefix": settings.raw_prefix,
        "models_prefix": settings.models_prefix,
        "registry_prefix": settings.registry_prefix,
        "pipeline_prefix": settings.pipeline_prefix,
        "transform_prefix": settings.transform_prefix,
        "capture_prefix": settings.capture_prefix,
        "serving_instance_type": settings.serving_instance_type,
        "training_instance_type": settings.training_instance_type,
        "autoscaling_min_instances": scaling.min_instances,
        "autoscaling_max_instances": scaling.max_instances,
        "autoscaling_target_invocations": scaling.target_invocations_per_instance,
        "autoscaling_scale_out_cooldown_seconds": scaling.scale_out_cooldown_seconds,
        "autoscaling_scale_in_cooldown_seconds": scaling.scale_in_cooldown_seconds,
        "alarm_max_error_rate": alarms.max_error_rate,
        "alarm_min_requests": alarms.min_requests,
        "alarm_p99_latency_ms": alarms.max_p99_latency_ms,
    }
    findings = []
    for name, expected in pairs.items():
        actual = config.variable(name)
        findings.append(
            Finding("defaults-agree", actual == expected, f"{name}: terraform {actual!r}, pipeline {expected!r}")
        )
    return findings


def _floor(constraint: str | None) -> str | None:
    """The ``>= x`` part of a version constraint such as ``">= 5.40, < 7.0"``."""
    floors = [part.strip() for part in (constraint or "").split(",") if part.strip().startswith(">=")]
    return floors[0] if len(floors) == 1 else None


def _versions(directory: Path, module: Module, root: tuple[str | None, dict[str, dict]]) -> Finding:
    """A module's versions.tf: the root's Terraform floor, and each provider it uses from the root's source with
    the root's floor (a module states what it needs; the root alone caps versions)."""
    name = directory.name
    version, providers = requirements(directory)
    if version is None and not providers:
        return Finding("module-versions", False, f"{name}: no versions.tf with required_version and required_providers")
    root_version, root_providers = root
    used = {type_.split("_")[0] for type_, _ in list(module.resources) + list(module.data)}
    problems = (
        []
        if _floor(version) == _floor(root_version)
        else [f"required_version {version!r}, the root's floor is {_floor(root_version)!r}"]
    )
    for provider in sorted(used | set(providers)):
        spec, expected = providers.get(provider), root_providers.get(provider)
        if spec is None or expected is None:
            problems.append(
                f"uses {provider} without requiring it" if spec is None else f"requires {provider}, the root does not"
            )
        elif spec.get("source") != expected["source"] or spec.get("version") != _floor(expected.get("version")):
            problems.append(
                f"{provider} {spec.get('source')!r} {spec.get('version')!r}, the root's is "
                f"{expected['source']!r} {_floor(expected.get('version'))!r}"
            )
    return Finding(
        "module-versions",
        not problems,
        f"{name}: {'; '.join(problems) or f'requires {sorted(providers)} with the root floors'}",
    )


def _hygiene(config: Configuration) -> list[Finding]:
    findings = []
    root_requirements = requirements(config.root_dir)
    findings.append(
        Finding(
            "module-versions",
            bool(root_requirements[1]) and _floor(root_requirements[0]) is not None,
            f"root: versions.tf {root_requirements}",
        )
    )
    for directory in config.module_dirs():
        module = Module.load(directory)
        name = directory.name if directory != config.root_dir else "root"
        if directory != config.root_dir:
            findings.append(_versions(directory, module, root_requirements))
        undocumented = [v for v, spec in module.variables.items() if not spec.get("description") or "type" not in spec]
        findings.append(
            Finding(
                "variables-documented",
                not undocumented,
                f"{name}: {undocumented or 'every variable has a description and a type'}",
            )
        )
        findings.append(Finding("module-readme", (directory / "README.md").is_file(), f"{name}/README.md"))
        blocks = list(module.resources.values()) + list(module.data.values())
        short = [
            (check, reason) for body in blocks for check, reason in skip_comments(body) if len(reason) < MIN_SKIP_REASON
        ]
        findings.append(Finding("checkov-skips-justified", not short, f"{name}: {short or 'every skip has a reason'}"))
        empty = [
            f"{rname} rule {rule.get('id')}"
            for rname, body in module.resources_of("aws_s3_bucket_lifecycle_configuration").items()
            for rule in nested_blocks(body, "rule")
            for block in nested_blocks(rule, "filter")
            if not {k: v for k, v in block.items() if not k.startswith("__")}
        ]
        findings.append(
            Finding(
                "lifecycle-filter-not-empty",
                not empty,
                f"{name}: {empty or 'no empty filter {} (a warning from provider 5.90, an error later)'}",
            )
        )
        for rname, body in module.resources_of("aws_api_gateway_account").items():
            after = " ".join(map(str, body.get("depends_on", [])))
            findings.append(
                Finding(
                    "api-account-after-role-policy",
                    "aws_iam_role_policy_attachment.apigateway_logs" in after,
                    f"{name}: aws_api_gateway_account.{rname} depends_on {after or 'nothing'}",
                )
            )
    return findings


EXAMPLE_CALL = "distracted_driver"  # the module call of each examples/<env>/main.tf


def _example(terraform_dir: Path, env: str, tfvars: Path, root: Configuration) -> Finding:
    """``examples/<env>``: a root that reads the env's tfvars (a link), passes every variable on to the root
    module and returns every output, so that the module gets exactly what ``-var-file=envs/<env>.tfvars`` gives."""
    directory = terraform_dir / "examples" / env
    values = directory / "terraform.tfvars"
    if not values.is_file() or not values.samefile(tfvars):
        return Finding("example", False, f"examples/{env}/terraform.tfvars is not a link to envs/{env}.tfvars", env)
    example = Configuration(directory, values)
    call = example.root_module.modules.get(EXAMPLE_CALL, {})
    problems = (
        []
        if (directory / call.get("source", "-")).resolve() == terraform_dir.resolve()
        else [f"module {EXAMPLE_CALL} does not call the root module"]
    )
    problems += [
        f"{name} is not passed on as var.{name}"
        for name in root.root_module.variables
        if call.get(name) != f"${{var.{name}}}"
    ]
    if not problems and example.instance(EXAMPLE_CALL).inputs != root.root.inputs:
        problems.append(f"the module gets other values than envs/{env}.tfvars gives the root")
    outputs = example.root_module.outputs
    problems += [
        f"output {name} is not returned as it is"
        for name, spec in root.root_module.outputs.items()
        if outputs.get(name, {}).get("value") != f"${{module.{EXAMPLE_CALL}.{name}}}"
        or outputs[name].get("sensitive", False) != spec.get("sensitive", False)
    ]
    return Finding(
        "example",
        not problems,
        f"examples/{env}: {'; '.join(problems) or f'the root module with envs/{env}.tfvars'}",
        env,
    )


def _module_docs(terraform_dir: Path) -> Finding:
    outdated = [str(path.relative_to(terraform_dir)) for path in docs.stale(terraform_dir)]
    return Finding(
        "module-docs",
        not outdated,
        f"inputs/outputs tables differ from the .tf files in {outdated} (`inv infra.docs` rewrites them)"
        if outdated
        else "every README's inputs and outputs tables match the .tf files",
    )


def wiring_findings(terraform_dir: str | Path, repo_root: str | Path | None = None) -> Report:
    """Every wiring check, with the defaults and with each ``envs/*.tfvars``."""
    terraform_dir = Path(terraform_dir)
    repo_root = Path(repo_root) if repo_root else terraform_dir.resolve().parent
    report = Report()
    variants = [("defaults", None)] + [(path.stem, path) for path in sorted((terraform_dir / "envs").glob("*.tfvars"))]
    for variant, tfvars in variants:
        try:
            config = Configuration(terraform_dir, tfvars)
            checker = _Checker(config, variant, repo_root)
            for check in (
                checker.predict_lambda,
                checker.rest_api,
                checker.autoscaling,
                checker.alarms,
                checker.trigger,
                checker.codebuild,
                checker.sagemaker_role,
                checker.pipeline_settings,
                checker.lambda_concurrency,
                checker.implicit_grants,
                checker.ecr_lifecycle,
                checker.storage_buckets,
            ):
                try:
                    check()
                except (HclError, KeyError, IndexError, TypeError, AttributeError) as error:
                    checker.expect(check.__name__, False, f"cannot evaluate: {type(error).__name__}: {error}")
            report.findings.extend(checker.findings)
            if tfvars is not None:
                report.findings.append(_example(terraform_dir, variant, tfvars, config))
            if tfvars is None:
                report.findings.extend(_defaults_agree(config))
                report.findings.extend(_hygiene(config))
                report.findings.append(_module_docs(terraform_dir))
                unmatched = sorted({path.name for path in example_dirs(terraform_dir)} - {env for env, _ in variants})
                report.findings.append(
                    Finding(
                        "example",
                        not unmatched,
                        f"examples without an envs/<env>.tfvars: {unmatched}"
                        if unmatched
                        else "every example is an environment's",
                    )
                )
        except HclError as error:
            report.findings.append(Finding("parse", False, str(error), variant))
    return report


# --- checkov ------------------------------------------------------------------------------


@dataclass
class CheckovResult:
    passed: int
    failed: int
    skipped: int
    failures: list[str]

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def __str__(self) -> str:
        lines = [
            f"checkov: {self.passed} passed, {self.failed} failed, {self.skipped} skipped (each with its reason inline)"
        ]
        lines += [f"  FAIL {failure}" for failure in self.failures]
        return "\n".join(lines)


def run_checkov(terraform_dir: str | Path, checkov: str | Path, timeout: float = 600) -> CheckovResult:
    """Run checkov on the Terraform (no network: nothing is downloaded or uploaded)."""
    command = [
        str(checkov),
        "-d",
        str(terraform_dir),
        "--framework",
        "terraform",
        "--output",
        "json",
        "--quiet",
        "--compact",
        "--skip-download",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    try:
        document = json.loads(completed.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"checkov gave no JSON (exit {completed.returncode}): {completed.stderr[-2000:]}") from None
    reports = document if isinstance(document, list) else [document]
    passed = failed = skipped = 0
    failures = []
    for report in reports:
        summary = report.get("summary", {})
        passed += summary.get("passed", 0)
        failed += summary.get("failed", 0)
        skipped += summary.get("skipped", 0)
        for check in report.get("results", {}).get("failed_checks", []):
            failures.append(f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}")
    return CheckovResult(passed, failed, skipped, failures)
