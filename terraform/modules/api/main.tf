# REST API: POST /predict → Lambda proxy → lambda/handler.py → SageMaker Runtime.
locals {
  # Kept equal to lambda/handler.py's IMAGE_TYPES (checked by `inv infra.check`):
  # API Gateway base64-encodes these bodies, and the handler decodes them.
  binary_media_types = ["image/jpeg", "image/jpg", "image/png", "application/x-image"]
  # Two attempts of (connect + read) stay inside the Lambda's timeout.
  connect_timeout_seconds = 2
  max_attempts            = 2
}

# --- the Lambda ----------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "lambda" {
  name              = "/aws/lambda/${var.function_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_lambda_function" "predict" {
  #checkov:skip=CKV_AWS_117:The function only calls the public SageMaker Runtime API; a VPC would add NAT or interface endpoints and cold-start time for no isolation gain.
  #checkov:skip=CKV_AWS_116:Invoked synchronously by API Gateway; the caller gets the error, so there is nothing for a dead-letter queue to hold.
  #checkov:skip=CKV_AWS_272:The package is this repository's lambda/handler.py and the two standard-library-only package modules it imports, zipped by `inv infra.package`; no third-party code is deployed, so there is nothing to sign.
  function_name                  = var.function_name
  description                    = "POST /predict: image → SageMaker endpoint ${var.endpoint_name} → class and probabilities"
  role                           = var.role_arn
  runtime                        = "python3.12"
  handler                        = "handler.handler"
  filename                       = var.package_file
  source_code_hash               = filebase64sha256(var.package_file)
  memory_size                    = var.memory_mb
  timeout                        = var.timeout_seconds
  reserved_concurrent_executions = var.reserved_concurrency
  kms_key_arn                    = var.kms_key_arn

  environment {
    variables = {
      ENDPOINT_NAME     = var.endpoint_name
      CONNECT_TIMEOUT_S = tostring(local.connect_timeout_seconds)
      READ_TIMEOUT_S    = tostring(var.endpoint_read_timeout_seconds)
      MAX_ATTEMPTS      = tostring(local.max_attempts)
    }
  }

  tracing_config {
    mode = "Active"
  }

  depends_on = [aws_cloudwatch_log_group.lambda]

  lifecycle {
    precondition {
      condition     = (local.connect_timeout_seconds + var.endpoint_read_timeout_seconds) * local.max_attempts < var.timeout_seconds
      error_message = "Two invoke_endpoint attempts must fit in the Lambda's timeout."
    }
  }
}

resource "aws_lambda_permission" "api" {
  statement_id  = "AllowApiGatewayPredict"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.predict.function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_api_gateway_rest_api.this.execution_arn}/*/POST/predict"
}

# --- the REST API --------------------------------------------------------------------

resource "aws_api_gateway_rest_api" "this" {
  name               = "${var.name}-api"
  description        = "Distracted-driver classifier: POST /predict with a JPEG or PNG"
  binary_media_types = local.binary_media_types
  api_key_source     = "HEADER"

  endpoint_configuration {
    types = ["REGIONAL"]
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_api_gateway_resource" "predict" {
  rest_api_id = aws_api_gateway_rest_api.this.id
  parent_id   = aws_api_gateway_rest_api.this.root_resource_id
  path_part   = "predict"
}

resource "aws_api_gateway_method" "predict" {
  #checkov:skip=CKV2_AWS_53:The body is an image (or the legacy JSON), validated by the handler, which answers 4xx with a message; a request model cannot describe a binary body.
  rest_api_id      = aws_api_gateway_rest_api.this.id
  resource_id      = aws_api_gateway_resource.predict.id
  http_method      = "POST"
  authorization    = "NONE" # callers present an API key of the usage plan instead
  api_key_required = true
}

resource "aws_api_gateway_integration" "predict" {
  rest_api_id             = aws_api_gateway_rest_api.this.id
  resource_id             = aws_api_gateway_resource.predict.id
  http_method             = aws_api_gateway_method.predict.http_method
  type                    = "AWS_PROXY"
  integration_http_method = "POST"
  uri                     = aws_lambda_function.predict.invoke_arn
}

resource "aws_api_gateway_deployment" "this" {
  rest_api_id = aws_api_gateway_rest_api.this.id

  triggers = {
    redeployment = sha1(jsonencode([
      aws_api_gateway_resource.predict.id,
      aws_api_gateway_method.predict.id,
      aws_api_gateway_integration.predict.id,
      aws_api_gateway_rest_api.this.binary_media_types,
    ]))
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_cloudwatch_log_group" "access" {
  name              = "/aws/apigateway/${var.name}-api/access"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

# API Gateway writes execution logs here; created first so it has retention and encryption.
resource "aws_cloudwatch_log_group" "execution" {
  name              = "API-Gateway-Execution-Logs_${aws_api_gateway_rest_api.this.id}/${var.stage_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_api_gateway_stage" "this" {
  #checkov:skip=CKV_AWS_120:Every request carries a different image; a response cache would never hit.
  #checkov:skip=CKV2_AWS_51:The integration is a Lambda proxy, not an HTTP backend that could verify a client certificate.
  #checkov:skip=CKV2_AWS_29:Abuse is bounded by API keys, the usage plan's throttle and quota, and the Lambda's reserved concurrency; a WAF web ACL is left to the account's edge policy.
  rest_api_id          = aws_api_gateway_rest_api.this.id
  deployment_id        = aws_api_gateway_deployment.this.id
  stage_name           = var.stage_name
  xray_tracing_enabled = true

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.access.arn
    format = jsonencode({
      requestId      = "$context.requestId"
      ip             = "$context.identity.sourceIp"
      apiKeyId       = "$context.identity.apiKeyId"
      requestTime    = "$context.requestTime"
      httpMethod     = "$context.httpMethod"
      resourcePath   = "$context.resourcePath"
      status         = "$context.status"
      responseLength = "$context.responseLength"
      latencyMs      = "$context.responseLatency"
      integrationMs  = "$context.integration.latency"
      errorMessage   = "$context.error.message"
    })
  }

  depends_on = [aws_cloudwatch_log_group.execution, aws_api_gateway_account.this]
}

resource "aws_api_gateway_method_settings" "all" {
  #checkov:skip=CKV_AWS_225:Every request carries a different image; a response cache would never hit.
  rest_api_id = aws_api_gateway_rest_api.this.id
  stage_name  = aws_api_gateway_stage.this.stage_name
  method_path = "*/*"

  settings {
    metrics_enabled        = true
    logging_level          = "INFO"
    data_trace_enabled     = false # bodies are images; never log them
    caching_enabled        = false
    cache_data_encrypted   = true
    throttling_rate_limit  = var.throttle_rate_limit
    throttling_burst_limit = var.throttle_burst_limit
  }
}

# --- API keys and the usage plan --------------------------------------------------------------

resource "aws_api_gateway_usage_plan" "this" {
  name        = "${var.name}-plan"
  description = "Throttle and daily quota per API key"

  api_stages {
    api_id = aws_api_gateway_rest_api.this.id
    stage  = aws_api_gateway_stage.this.stage_name
  }

  throttle_settings {
    rate_limit  = var.throttle_rate_limit
    burst_limit = var.throttle_burst_limit
  }

  quota_settings {
    limit  = var.quota_per_day
    period = "DAY"
  }
}

resource "aws_api_gateway_api_key" "pipeline" {
  name        = "${var.name}-pipeline"
  description = "Used by CI's smoke and load tests; create more keys for clients"
  enabled     = true
}

resource "aws_api_gateway_usage_plan_key" "pipeline" {
  key_id        = aws_api_gateway_api_key.pipeline.id
  key_type      = "API_KEY"
  usage_plan_id = aws_api_gateway_usage_plan.this.id
}

# --- the region's CloudWatch role for API Gateway (stage logging needs it) ---------------------

data "aws_iam_policy_document" "apigateway_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["apigateway.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "apigateway_logs" {
  count = var.manage_account_logging_role ? 1 : 0

  name               = "${var.name}-apigateway-logs"
  description        = "Lets API Gateway write execution and access logs"
  assume_role_policy = data.aws_iam_policy_document.apigateway_trust.json
}

resource "aws_iam_role_policy_attachment" "apigateway_logs" {
  count = var.manage_account_logging_role ? 1 : 0

  role       = aws_iam_role.apigateway_logs[0].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
}

resource "aws_api_gateway_account" "this" {
  count = var.manage_account_logging_role ? 1 : 0

  cloudwatch_role_arn = aws_iam_role.apigateway_logs[0].arn

  # API Gateway checks the role can write to CloudWatch Logs when the account setting is made;
  # without this the apply races IAM's propagation of the attachment.
  depends_on = [aws_iam_role_policy_attachment.apigateway_logs]
}

data "aws_partition" "current" {}
