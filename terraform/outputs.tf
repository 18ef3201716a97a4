output "pipeline_settings" {
  description = "The pipeline's DD_* settings; `inv infra.outputs` writes them to .state/aws.env for --backend aws."
  value       = local.pipeline_settings
}

output "data_bucket" {
  description = "The pipeline's bucket (raw images, channels, models, registry, run records)."
  value       = module.storage.data_bucket_name
}

output "artifacts_bucket" {
  description = "CodeBuild artifacts and test reports."
  value       = module.storage.artifacts_bucket_name
}

output "kms_key_arn" {
  description = "The customer managed key that encrypts the buckets, logs, parameters and images."
  value       = module.storage.kms_key_arn
}

output "sagemaker_role_arn" {
  description = "Execution role of training jobs and of the endpoint's models."
  value       = module.iam.sagemaker_role_arn
}

output "serving_image_repository" {
  description = "ECR repository of the model-server image (`inv infra.push-image` builds and pushes it)."
  value       = module.ecr.repository_url
}

output "api_url" {
  description = "Base URL of the REST API stage; POST <api_url>/predict with an x-api-key header."
  value       = module.api.api_url
}

output "api_key" {
  description = "The API key for the usage plan (also in SSM as <parameter_path>/DD_API_KEY)."
  value       = module.api.api_key_value
  sensitive   = true
}

output "codebuild_project" {
  description = "The CodeBuild project that runs buildspec.yml."
  value       = module.codebuild.project_name
}

output "drift_alarm_name" {
  description = "CloudWatch alarm on the drift report's verdict (inv monitor.report --backend aws)."
  value       = module.alarms.drift_alarm_name
}

output "rollback_alarm_names" {
  description = "CloudWatch alarms that the blue/green update's AutoRollbackConfiguration watches."
  value       = module.alarms.alarm_names
}

output "trigger_function" {
  description = "Lambda that starts a build when a new data manifest lands."
  value       = module.trigger.function_name
}

output "autoscaling_resource_id" {
  description = "Application Auto Scaling resource id of the variant (null until endpoint_exists)."
  value       = module.autoscaling.resource_id
}
