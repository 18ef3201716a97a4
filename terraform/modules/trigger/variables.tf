variable "function_name" {
  description = "Name of the trigger Lambda."
  type        = string
}

variable "package_file" {
  description = "Zip of lambda/trigger.py alone (boto3 only), written by `inv infra.package` (infra.plan and infra.apply run it)."
  type        = string
}

variable "data_bucket_name" {
  description = "The pipeline's bucket, whose new data manifests start a build."
  type        = string
}

variable "data_bucket_arn" {
  description = "ARN of the pipeline's bucket."
  type        = string
}

variable "manifest_prefix" {
  description = "Key prefix of data manifests (<raw_prefix>/manifests/), as `inv data.add` writes them."
  type        = string

  validation {
    condition     = endswith(var.manifest_prefix, "/manifests/")
    error_message = "manifest_prefix must end with /manifests/."
  }
}

variable "codebuild_project_name" {
  description = "The project to start."
  type        = string
}

variable "codebuild_project_arn" {
  description = "ARN of that project; the trigger's role may start builds of it and nothing else."
  type        = string
}

variable "kms_key_arn" {
  description = "Key for the Lambda's environment and logs."
  type        = string
}

variable "reserved_concurrency" {
  description = "Reserved concurrent executions; null reserves none (the CodeBuild project's build limit serializes builds)."
  type        = number
  default     = null
}

variable "log_retention_days" {
  description = "Retention of the trigger's log group."
  type        = number
}
