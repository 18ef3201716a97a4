# New data → a pipeline run: S3 ObjectCreated under <raw_prefix>/manifests/ → this
# Lambda (lambda/trigger.py) → codebuild:StartBuild, unless a build of the project is
# already in progress (the running pipeline, or the next one, converts from the newest
# manifest, so a skipped event loses no data). Reserved concurrency 1 serializes the
# trigger itself; the project's concurrent_build_limit of 1 is the last line.
data "aws_caller_identity" "current" {}

resource "aws_cloudwatch_log_group" "trigger" {
  name              = "/aws/lambda/${var.function_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

data "aws_iam_policy_document" "trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

data "aws_iam_policy_document" "trigger" {
  statement {
    sid       = "StartPipelineBuilds"
    actions   = ["codebuild:StartBuild", "codebuild:ListBuildsForProject", "codebuild:BatchGetBuilds"]
    resources = [var.codebuild_project_arn]
  }

  statement {
    sid       = "OwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.trigger.arn}:*"]
  }

  statement {
    # decrypt its environment; encrypt what it sends to the dead-letter queue
    sid       = "UseKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }

  statement {
    sid       = "Tracing"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"] # X-Ray's trace APIs have no resource-level permissions
  }
}

resource "aws_iam_role" "trigger" {
  name               = "${var.function_name}-lambda"
  description        = "Lambda ${var.function_name}: starts builds of ${var.codebuild_project_name} only"
  assume_role_policy = data.aws_iam_policy_document.trust.json
}

resource "aws_iam_role_policy" "trigger" {
  name   = "start-pipeline-builds"
  role   = aws_iam_role.trigger.id
  policy = data.aws_iam_policy_document.trigger.json
}

resource "aws_lambda_function" "trigger" {
  #checkov:skip=CKV_AWS_117:The function only calls the public CodeBuild API; a VPC would add NAT or interface endpoints for no isolation gain.
  #checkov:skip=CKV_AWS_272:The package is this repository's lambda/trigger.py alone, zipped by `inv infra.package`; no third-party code is deployed, so there is nothing to sign.
  function_name                  = var.function_name
  description                    = "New data manifest in s3://${var.data_bucket_name}/${var.manifest_prefix} → CodeBuild ${var.codebuild_project_name}"
  role                           = aws_iam_role.trigger.arn
  runtime                        = "python3.12"
  handler                        = "trigger.handler"
  filename                       = var.package_file
  source_code_hash               = filebase64sha256(var.package_file)
  memory_size                    = 128
  timeout                        = 30
  reserved_concurrent_executions = var.reserved_concurrency
  kms_key_arn                    = var.kms_key_arn

  environment {
    variables = {
      PROJECT_NAME    = var.codebuild_project_name
      MANIFEST_PREFIX = var.manifest_prefix
      MANIFEST_SUFFIX = ".json"
    }
  }

  dead_letter_config {
    target_arn = aws_sqs_queue.dead_letters.arn
  }

  tracing_config {
    mode = "Active"
  }

  depends_on = [aws_cloudwatch_log_group.trigger, aws_iam_role_policy.dead_letters]
}

# S3 invokes the Lambda asynchronously: events that still fail after Lambda's retries
# land here instead of vanishing.
resource "aws_sqs_queue" "dead_letters" {
  name                      = "${var.function_name}-dead-letters"
  kms_master_key_id         = var.kms_key_arn
  message_retention_seconds = 1209600
}

data "aws_iam_policy_document" "dead_letters" {
  statement {
    sid       = "DeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dead_letters.arn]
  }
}

resource "aws_iam_role_policy" "dead_letters" {
  name   = "dead-letters"
  role   = aws_iam_role.trigger.id
  policy = data.aws_iam_policy_document.dead_letters.json
}

resource "aws_lambda_permission" "s3" {
  statement_id   = "AllowDataBucketNotifications"
  action         = "lambda:InvokeFunction"
  function_name  = aws_lambda_function.trigger.function_name
  principal      = "s3.amazonaws.com"
  source_arn     = var.data_bucket_arn
  source_account = data.aws_caller_identity.current.account_id
}

resource "aws_s3_bucket_notification" "manifests" {
  bucket = var.data_bucket_name

  lambda_function {
    id                  = "new-data-manifest"
    lambda_function_arn = aws_lambda_function.trigger.arn
    events              = ["s3:ObjectCreated:*"]
    filter_prefix       = var.manifest_prefix
    filter_suffix       = ".json"
  }

  depends_on = [aws_lambda_permission.s3]
}
