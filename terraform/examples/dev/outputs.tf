# Every output of the root module, as it is (../../README.md describes them).

output "pipeline_settings" {
  value = module.distracted_driver.pipeline_settings
}

output "data_bucket" {
  value = module.distracted_driver.data_bucket
}

output "artifacts_bucket" {
  value = module.distracted_driver.artifacts_bucket
}

output "kms_key_arn" {
  value = module.distracted_driver.kms_key_arn
}

output "sagemaker_role_arn" {
  value = module.distracted_driver.sagemaker_role_arn
}

output "serving_image_repository" {
  value = module.distracted_driver.serving_image_repository
}

output "api_url" {
  value = module.distracted_driver.api_url
}

output "api_key" {
  value     = module.distracted_driver.api_key
  sensitive = true
}

output "codebuild_project" {
  value = module.distracted_driver.codebuild_project
}

output "drift_alarm_name" {
  value = module.distracted_driver.drift_alarm_name
}

output "rollback_alarm_names" {
  value = module.distracted_driver.rollback_alarm_names
}

output "trigger_function" {
  value = module.distracted_driver.trigger_function
}

output "autoscaling_resource_id" {
  value = module.distracted_driver.autoscaling_resource_id
}
