# One environment as a caller of the root module (../..). terraform.tfvars links to the
# environment's ../../envs/<env>.tfvars and variables.tf to the root's, so the values and
# their declarations are written once; every variable is passed on as it is.

module "distracted_driver" {
  source = "../.."

  project                                = var.project
  environment                            = var.environment
  region                                 = var.region
  tags                                   = var.tags
  endpoint_name                          = var.endpoint_name
  variant_name                           = var.variant_name
  data_prefix                            = var.data_prefix
  raw_prefix                             = var.raw_prefix
  models_prefix                          = var.models_prefix
  registry_prefix                        = var.registry_prefix
  capture_prefix                         = var.capture_prefix
  pipeline_prefix                        = var.pipeline_prefix
  transform_prefix                       = var.transform_prefix
  serving_instance_type                  = var.serving_instance_type
  training_instance_type                 = var.training_instance_type
  github_repository_url                  = var.github_repository_url
  github_branch                          = var.github_branch
  codebuild_compute_type                 = var.codebuild_compute_type
  codebuild_image                        = var.codebuild_image
  codebuild_timeout_minutes              = var.codebuild_timeout_minutes
  endpoint_exists                        = var.endpoint_exists
  autoscaling_min_instances              = var.autoscaling_min_instances
  autoscaling_max_instances              = var.autoscaling_max_instances
  autoscaling_target_invocations         = var.autoscaling_target_invocations
  autoscaling_scale_out_cooldown_seconds = var.autoscaling_scale_out_cooldown_seconds
  autoscaling_scale_in_cooldown_seconds  = var.autoscaling_scale_in_cooldown_seconds
  alarm_max_error_rate                   = var.alarm_max_error_rate
  alarm_min_requests                     = var.alarm_min_requests
  alarm_p99_latency_ms                   = var.alarm_p99_latency_ms
  alarm_evaluation_periods               = var.alarm_evaluation_periods
  api_throttle_rate_limit                = var.api_throttle_rate_limit
  api_throttle_burst_limit               = var.api_throttle_burst_limit
  api_quota_per_day                      = var.api_quota_per_day
  lambda_memory_mb                       = var.lambda_memory_mb
  lambda_timeout_seconds                 = var.lambda_timeout_seconds
  lambda_endpoint_read_timeout_seconds   = var.lambda_endpoint_read_timeout_seconds
  lambda_reserved_concurrency            = var.lambda_reserved_concurrency
  trigger_reserved_concurrency           = var.trigger_reserved_concurrency
  github_token                           = var.github_token
  codeconnections_arn                    = var.codeconnections_arn
  log_retention_days                     = var.log_retention_days
  noncurrent_model_version_days          = var.noncurrent_model_version_days
  artifact_expiration_days               = var.artifact_expiration_days
  serving_images_to_keep                 = var.serving_images_to_keep
  force_destroy                          = var.force_destroy
}
