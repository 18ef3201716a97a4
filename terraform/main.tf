provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  name = "${var.project}-${var.environment}"
  tags = merge(var.tags, {
    Project     = var.project
    Environment = var.environment
    ManagedBy   = "terraform"
  })

  api_function_name      = "${local.name}-predict"
  trigger_function_name  = "${local.name}-trigger"
  codebuild_project_name = "${local.name}-pipeline"
  parameter_path         = "/${var.project}/${var.environment}"

  # The pipeline's settings (distracted_driver.config.Settings, DD_<FIELD>): CodeBuild
  # reads them from SSM parameters, a laptop from `inv infra.outputs` (.state/aws.env).
  pipeline_settings = {
    DD_BACKEND                  = "aws"
    DD_REGION                   = var.region
    DD_BUCKET                   = module.storage.data_bucket_name
    DD_KMS_KEY_ID               = module.storage.kms_key_arn
    DD_ROLE_ARN                 = module.iam.sagemaker_role_arn
    DD_ENDPOINT_NAME            = var.endpoint_name
    DD_VARIANT_NAME             = var.variant_name
    DD_DATA_PREFIX              = var.data_prefix
    DD_RAW_PREFIX               = var.raw_prefix
    DD_MODELS_PREFIX            = var.models_prefix
    DD_REGISTRY_PREFIX          = var.registry_prefix
    DD_PIPELINE_PREFIX          = var.pipeline_prefix
    DD_TRANSFORM_PREFIX         = var.transform_prefix
    DD_CAPTURE_PREFIX           = var.capture_prefix
    DD_SERVING_INSTANCE_TYPE    = var.serving_instance_type
    DD_TRAINING_INSTANCE_TYPE   = var.training_instance_type
    DD_SERVING_IMAGE_REPOSITORY = module.ecr.repository_url
    DD_API_URL                  = module.api.api_url
    DD_ENV                      = var.environment
  }
}

module "storage" {
  source = "./modules/storage"

  name                          = local.name
  account_id                    = data.aws_caller_identity.current.account_id
  partition                     = data.aws_partition.current.partition
  region                        = var.region
  models_prefix                 = var.models_prefix
  noncurrent_model_version_days = var.noncurrent_model_version_days
  artifact_expiration_days      = var.artifact_expiration_days
  force_destroy                 = var.force_destroy
}

module "ecr" {
  source = "./modules/ecr"

  name           = "${local.name}-serving"
  kms_key_arn    = module.storage.kms_key_arn
  images_to_keep = var.serving_images_to_keep
  force_delete   = var.force_destroy
}

module "iam" {
  source = "./modules/iam"

  name                   = local.name
  account_id             = data.aws_caller_identity.current.account_id
  partition              = data.aws_partition.current.partition
  region                 = var.region
  endpoint_name          = var.endpoint_name
  data_bucket_arn        = module.storage.data_bucket_arn
  artifacts_bucket_arn   = module.storage.artifacts_bucket_arn
  kms_key_arn            = module.storage.kms_key_arn
  ecr_repository_arn     = module.ecr.repository_arn
  data_prefix            = var.data_prefix
  raw_prefix             = var.raw_prefix
  models_prefix          = var.models_prefix
  registry_prefix        = var.registry_prefix
  pipeline_prefix        = var.pipeline_prefix
  transform_prefix       = var.transform_prefix
  capture_prefix         = var.capture_prefix
  api_function_name      = local.api_function_name
  codebuild_project_name = local.codebuild_project_name
  parameter_path         = local.parameter_path
}

module "alarms" {
  source = "./modules/alarms"

  endpoint_name      = var.endpoint_name
  variant_name       = var.variant_name
  max_error_rate     = var.alarm_max_error_rate
  min_requests       = var.alarm_min_requests
  p99_latency_ms     = var.alarm_p99_latency_ms
  evaluation_periods = var.alarm_evaluation_periods
}

module "autoscaling" {
  source = "./modules/autoscaling"

  enabled                    = var.endpoint_exists
  endpoint_name              = var.endpoint_name
  variant_name               = var.variant_name
  min_instances              = var.autoscaling_min_instances
  max_instances              = var.autoscaling_max_instances
  target_invocations         = var.autoscaling_target_invocations
  scale_out_cooldown_seconds = var.autoscaling_scale_out_cooldown_seconds
  scale_in_cooldown_seconds  = var.autoscaling_scale_in_cooldown_seconds
}

module "api" {
  source = "./modules/api"

  name                          = local.name
  function_name                 = local.api_function_name
  role_arn                      = module.iam.api_lambda_role_arn
  package_file                  = "${path.module}/.build/handler.zip"
  endpoint_name                 = var.endpoint_name
  kms_key_arn                   = module.storage.kms_key_arn
  log_retention_days            = var.log_retention_days
  memory_mb                     = var.lambda_memory_mb
  timeout_seconds               = var.lambda_timeout_seconds
  endpoint_read_timeout_seconds = var.lambda_endpoint_read_timeout_seconds
  reserved_concurrency          = var.lambda_reserved_concurrency
  throttle_rate_limit           = var.api_throttle_rate_limit
  throttle_burst_limit          = var.api_throttle_burst_limit
  quota_per_day                 = var.api_quota_per_day
}

module "codebuild" {
  source = "./modules/codebuild"

  project_name          = local.codebuild_project_name
  role_arn              = module.iam.codebuild_role_arn
  repository_url        = var.github_repository_url
  branch                = var.github_branch
  compute_type          = var.codebuild_compute_type
  image                 = var.codebuild_image
  timeout_minutes       = var.codebuild_timeout_minutes
  artifacts_bucket_name = module.storage.artifacts_bucket_name
  kms_key_arn           = module.storage.kms_key_arn
  log_retention_days    = var.log_retention_days
  parameter_path        = local.parameter_path
  settings              = local.pipeline_settings
  api_key_value         = module.api.api_key_value
  github_token          = var.github_token
  codeconnections_arn   = var.codeconnections_arn
}

module "trigger" {
  source = "./modules/trigger"

  function_name          = local.trigger_function_name
  package_file           = "${path.module}/.build/trigger.zip"
  data_bucket_name       = module.storage.data_bucket_name
  data_bucket_arn        = module.storage.data_bucket_arn
  manifest_prefix        = "${var.raw_prefix}/manifests/"
  codebuild_project_name = module.codebuild.project_name
  codebuild_project_arn  = module.codebuild.project_arn
  kms_key_arn            = module.storage.kms_key_arn
  log_retention_days     = var.log_retention_days
  reserved_concurrency   = var.trigger_reserved_concurrency
}
