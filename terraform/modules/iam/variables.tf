variable "name" {
  description = "Prefix of the role names (<project>-<environment>)."
  type        = string
}

variable "account_id" {
  description = "AWS account id, for ARNs of resources this configuration does not create (the endpoint, jobs)."
  type        = string
}

variable "partition" {
  description = "AWS partition."
  type        = string
}

variable "region" {
  description = "Region of the pipeline's resources."
  type        = string
}

variable "endpoint_name" {
  description = "The endpoint the deploy task manages; the predict Lambda may invoke it and nothing else."
  type        = string
}

variable "data_bucket_arn" {
  description = "The pipeline's bucket."
  type        = string
}

variable "artifacts_bucket_arn" {
  description = "CodeBuild's artifacts bucket."
  type        = string
}

variable "kms_key_arn" {
  description = "The customer managed key of buckets, logs and parameters."
  type        = string
}

variable "ecr_repository_arn" {
  description = "The serving image's repository."
  type        = string
}

variable "data_prefix" {
  description = "Prefix of the channels (training reads it)."
  type        = string
}

variable "raw_prefix" {
  description = "Prefix of the raw images."
  type        = string
}

variable "models_prefix" {
  description = "Prefix of training outputs (training writes it, hosting reads it)."
  type        = string
}

variable "registry_prefix" {
  description = "Prefix of the model registry."
  type        = string
}

variable "pipeline_prefix" {
  description = "Prefix of pipeline run records and the lock."
  type        = string
}

variable "transform_prefix" {
  description = "Prefix of Batch Transform: images to score, each job's manifest (read) and outputs (written)."
  type        = string
}

variable "capture_prefix" {
  description = "Prefix of the endpoint's data capture (SageMaker writes it, the pipeline reads it)."
  type        = string
}

variable "api_function_name" {
  description = "Name of the predict Lambda (its log group is /aws/lambda/<name>)."
  type        = string
}

variable "codebuild_project_name" {
  description = "Name of the CodeBuild project (its log group and report groups derive from it)."
  type        = string
}

variable "parameter_path" {
  description = "SSM path of the pipeline's settings, e.g. /distracted-driver/dev."
  type        = string
}
