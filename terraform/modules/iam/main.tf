locals {
  arn_prefix      = "arn:${var.partition}"
  sagemaker_arn   = "${local.arn_prefix}:sagemaker:${var.region}:${var.account_id}"
  logs_arn        = "${local.arn_prefix}:logs:${var.region}:${var.account_id}"
  endpoint_arn    = "${local.sagemaker_arn}:endpoint/${var.endpoint_name}"
  codebuild_logs  = "/aws/codebuild/${var.codebuild_project_name}"
  training_logs   = "/aws/sagemaker/TrainingJobs"
  transform_logs  = "/aws/sagemaker/TransformJobs"
  pipeline_prefix = [var.data_prefix, var.raw_prefix, var.models_prefix, var.registry_prefix, var.pipeline_prefix, var.transform_prefix]
}

data "aws_iam_policy_document" "trust" {
  for_each = {
    sagemaker  = "sagemaker.amazonaws.com"
    codebuild  = "codebuild.amazonaws.com"
    api_lambda = "lambda.amazonaws.com"
  }

  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = [each.value]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [var.account_id]
    }
  }
}

# --- SageMaker execution role: training jobs, the endpoint's models, Batch Transform -----

data "aws_iam_policy_document" "sagemaker" {
  statement {
    sid       = "ListBucket"
    actions   = ["s3:ListBucket"]
    resources = [var.data_bucket_arn]
  }

  statement {
    sid     = "ReadChannelsAndModels"
    actions = ["s3:GetObject"]
    resources = [
      "${var.data_bucket_arn}/${var.data_prefix}/*",
      "${var.data_bucket_arn}/${var.models_prefix}/*",
    ]
  }

  statement {
    sid       = "WriteTrainingOutputs"
    actions   = ["s3:PutObject"]
    resources = ["${var.data_bucket_arn}/${var.models_prefix}/*"]
  }

  statement {
    sid       = "ReadTransformInputs"
    actions   = ["s3:GetObject"]
    resources = ["${var.data_bucket_arn}/${var.transform_prefix}/*"]
  }

  statement {
    sid = "WriteTransformOutputs"
    # Batch Transform uploads each .out by multipart upload and aborts it on an error.
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = ["${var.data_bucket_arn}/${var.transform_prefix}/*/output/*"]
  }

  statement {
    sid = "WriteDataCapture"
    # The endpoint's DataCaptureConfig: SageMaker writes the captured invocations as this role.
    actions   = ["s3:PutObject"]
    resources = ["${var.data_bucket_arn}/${var.capture_prefix}/*"]
  }

  statement {
    sid = "UseKey"
    # Encrypt: OutputDataConfig.KmsKeyId and DataCaptureConfig.KmsKeyId make SageMaker encrypt the model
    # artifacts and the captured data with this role.
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [var.kms_key_arn]
  }

  statement {
    sid       = "PullServingImage"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = [var.ecr_repository_arn]
  }

  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken has no resource-level permissions
  }

  statement {
    sid     = "Logs"
    actions = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = [
      "${local.logs_arn}:log-group:/aws/sagemaker/*",
      "${local.logs_arn}:log-group:/aws/sagemaker/*:log-stream:*",
    ]
  }

  statement {
    sid       = "Metrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData has no resource-level permissions; the namespace is constrained

    condition {
      test     = "StringLike"
      variable = "cloudwatch:namespace"
      values   = ["/aws/sagemaker/*", "aws/sagemaker/*"]
    }
  }
}

resource "aws_iam_role" "sagemaker" {
  name               = "${var.name}-sagemaker"
  description        = "SageMaker training jobs and endpoint models of ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.trust["sagemaker"].json
}

resource "aws_iam_role_policy" "sagemaker" {
  name   = "pipeline-bucket-image-logs"
  role   = aws_iam_role.sagemaker.id
  policy = data.aws_iam_policy_document.sagemaker.json
}

# --- CodeBuild: what buildspec.yml does, nothing wider -----------------------------------

data "aws_iam_policy_document" "codebuild" {
  statement {
    sid     = "BuildLogs"
    actions = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [
      "${local.logs_arn}:log-group:${local.codebuild_logs}:*",
      "${local.logs_arn}:log-group:${local.codebuild_logs}:log-stream:*",
    ]
  }

  statement {
    sid     = "ReadTrainingLogs"
    actions = ["logs:FilterLogEvents", "logs:GetLogEvents", "logs:DescribeLogStreams"]
    # Logs authorizes FilterLogEvents and DescribeLogStreams on "log-group:NAME:*", not on the bare name.
    resources = [
      "${local.logs_arn}:log-group:${local.training_logs}:*",
      "${local.logs_arn}:log-group:${local.training_logs}:log-stream:*",
    ]
  }

  statement {
    sid     = "ReadTransformLogs"
    actions = ["logs:FilterLogEvents", "logs:GetLogEvents", "logs:DescribeLogStreams"]
    # A transform job's data log says why an image got no output.
    resources = [
      "${local.logs_arn}:log-group:${local.transform_logs}:*",
      "${local.logs_arn}:log-group:${local.transform_logs}:log-stream:*",
    ]
  }

  statement {
    sid       = "PipelineBucketList"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [var.data_bucket_arn]
  }

  statement {
    sid       = "PipelineBucketObjects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = [for prefix in local.pipeline_prefix : "${var.data_bucket_arn}/${prefix}/*"]
  }

  statement {
    sid       = "ReadDataCapture"
    actions   = ["s3:GetObject"]
    resources = ["${var.data_bucket_arn}/${var.capture_prefix}/*"]
  }

  statement {
    sid       = "BuildArtifactsBucket"
    actions   = ["s3:GetBucketAcl", "s3:GetBucketLocation"]
    resources = [var.artifacts_bucket_arn]
  }

  statement {
    sid       = "BuildArtifacts"
    actions   = ["s3:PutObject", "s3:GetObject"]
    resources = ["${var.artifacts_bucket_arn}/*"]
  }

  statement {
    sid       = "UseKey"
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [var.kms_key_arn]
  }

  statement {
    sid       = "Settings"
    actions   = ["ssm:GetParameters", "ssm:GetParameter"]
    resources = ["${local.arn_prefix}:ssm:${var.region}:${var.account_id}:parameter${var.parameter_path}/*"]
  }

  statement {
    sid       = "DriftMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData has no resource-level permissions; the namespace is constrained
    # inv monitor.report --backend aws puts its figures here (distracted_driver.monitor.cloudwatch);
    # the drift alarm in modules/alarms watches them.
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = ["DistractedDriver/Drift"]
    }
  }

  statement {
    sid       = "TrainingJobs"
    actions   = ["sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob", "sagemaker:AddTags"]
    resources = ["${local.sagemaker_arn}:training-job/dd-*"]
  }

  statement {
    sid       = "TransformJobs"
    actions   = ["sagemaker:CreateTransformJob", "sagemaker:DescribeTransformJob", "sagemaker:StopTransformJob", "sagemaker:AddTags"]
    resources = ["${local.sagemaker_arn}:transform-job/${var.endpoint_name}-batch-*"]
  }

  statement {
    sid       = "Models"
    actions   = ["sagemaker:CreateModel", "sagemaker:DescribeModel", "sagemaker:DeleteModel", "sagemaker:AddTags"]
    resources = ["${local.sagemaker_arn}:model/${var.endpoint_name}-*"]
  }

  statement {
    sid = "EndpointConfigs"
    actions = [
      "sagemaker:CreateEndpointConfig", "sagemaker:DescribeEndpointConfig", "sagemaker:DeleteEndpointConfig",
      "sagemaker:AddTags", "sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint",
    ]
    resources = ["${local.sagemaker_arn}:endpoint-config/${var.endpoint_name}-*"]
  }

  statement {
    sid = "Endpoint"
    actions = [
      "sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint", "sagemaker:DescribeEndpoint",
      "sagemaker:DeleteEndpoint", "sagemaker:InvokeEndpoint", "sagemaker:AddTags",
      # Application Auto Scaling checks the caller may describe the endpoint (and its config,
      # granted above) and change its instance counts when it registers the variant.
      "sagemaker:UpdateEndpointWeightsAndCapacities",
    ]
    resources = [local.endpoint_arn]
  }

  statement {
    sid = "Preflight"
    # `inv infra.preflight --build` reads the account's limits; none of these has resource-level permissions.
    actions = [
      "lambda:GetAccountSettings", "servicequotas:ListServiceQuotas", "servicequotas:ListAWSDefaultServiceQuotas",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "ListSageMaker"
    actions   = ["sagemaker:ListModels", "sagemaker:ListEndpointConfigs", "sagemaker:ListTrainingJobs"]
    resources = ["*"] # List actions have no resource-level permissions
  }

  statement {
    sid       = "PassExecutionRole"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.sagemaker.arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["sagemaker.amazonaws.com"]
    }
  }

  statement {
    sid = "Autoscaling"
    actions = [
      "application-autoscaling:RegisterScalableTarget", "application-autoscaling:DeregisterScalableTarget",
      "application-autoscaling:PutScalingPolicy", "application-autoscaling:DescribeScalableTargets",
      "application-autoscaling:DescribeScalingPolicies",
    ]
    # Scalable-target ARNs carry an opaque id, not the endpoint's name, so they cannot be named here.
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "aws:RequestedRegion"
      values   = [var.region]
    }
  }

  statement {
    sid       = "AutoscalingServiceLinkedRole"
    actions   = ["iam:CreateServiceLinkedRole"]
    resources = ["${local.arn_prefix}:iam::${var.account_id}:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"]

    condition {
      test     = "StringEquals"
      variable = "iam:AWSServiceName"
      values   = ["sagemaker.application-autoscaling.amazonaws.com"]
    }
  }

  statement {
    sid     = "Alarms"
    actions = ["cloudwatch:DescribeAlarms", "cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms"]
    resources = [
      # the blue/green rollback alarms, and those target tracking creates for the variant
      "${local.arn_prefix}:cloudwatch:${var.region}:${var.account_id}:alarm:${var.endpoint_name}-*",
      "${local.arn_prefix}:cloudwatch:${var.region}:${var.account_id}:alarm:TargetTracking-endpoint/${var.endpoint_name}/*",
    ]
  }

  statement {
    sid = "PushServingImage"
    actions = [
      "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
      "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
      "ecr:DescribeImages", "ecr:BatchDeleteImage", # BatchDeleteImage removes a retired model's model-<version> tag only
    ]
    resources = [var.ecr_repository_arn]
  }

  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken has no resource-level permissions
  }

  statement {
    sid = "TestReports"
    actions = [
      "codebuild:CreateReportGroup", "codebuild:CreateReport", "codebuild:UpdateReport",
      "codebuild:BatchPutTestCases", "codebuild:BatchPutCodeCoverages",
    ]
    resources = ["${local.arn_prefix}:codebuild:${var.region}:${var.account_id}:report-group/${var.codebuild_project_name}-*"]
  }
}

resource "aws_iam_role" "codebuild" {
  name               = "${var.name}-codebuild"
  description        = "CodeBuild project ${var.codebuild_project_name}: runs buildspec.yml"
  assume_role_policy = data.aws_iam_policy_document.trust["codebuild"].json
}

resource "aws_iam_role_policy" "codebuild" {
  name   = "pipeline"
  role   = aws_iam_role.codebuild.id
  policy = data.aws_iam_policy_document.codebuild.json
}

# --- the predict Lambda: invoke this one endpoint, write its own logs ------------------------

data "aws_iam_policy_document" "api_lambda" {
  statement {
    sid       = "InvokeEndpoint"
    actions   = ["sagemaker:InvokeEndpoint"]
    resources = [local.endpoint_arn]
  }

  statement {
    sid       = "OwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${local.logs_arn}:log-group:/aws/lambda/${var.api_function_name}:*"]
  }

  statement {
    sid       = "DecryptEnvironment"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }

  statement {
    sid       = "Tracing"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"] # X-Ray's trace APIs have no resource-level permissions
  }
}

resource "aws_iam_role" "api_lambda" {
  name               = "${var.name}-predict-lambda"
  description        = "Lambda ${var.api_function_name}: invokes endpoint ${var.endpoint_name}"
  assume_role_policy = data.aws_iam_policy_document.trust["api_lambda"].json
}

resource "aws_iam_role_policy" "api_lambda" {
  name   = "invoke-endpoint"
  role   = aws_iam_role.api_lambda.id
  policy = data.aws_iam_policy_document.api_lambda.json
}
