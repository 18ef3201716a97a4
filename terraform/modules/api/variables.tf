variable "name" {
  description = "Prefix of the API's resource names (<project>-<environment>)."
  type        = string
}

variable "function_name" {
  description = "Name of the predict Lambda."
  type        = string
}

variable "role_arn" {
  description = "Execution role of the Lambda (iam module: InvokeEndpoint on this endpoint only)."
  type        = string
}

variable "package_file" {
  description = "Zip of lambda/handler.py and the package modules it imports (standard library and boto3 only), written by `inv infra.package` (infra.plan and infra.apply run it)."
  type        = string
}

variable "endpoint_name" {
  description = "The SageMaker endpoint the handler invokes (its ENDPOINT_NAME)."
  type        = string
}

variable "kms_key_arn" {
  description = "Key for the Lambda's environment and the log groups."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the Lambda's and the API's log groups."
  type        = number
}

variable "memory_mb" {
  description = "Lambda memory."
  type        = number
}

variable "timeout_seconds" {
  description = "Lambda timeout (API Gateway gives up after 29 s)."
  type        = number
}

variable "endpoint_read_timeout_seconds" {
  description = "Read timeout of each invoke_endpoint attempt."
  type        = number
}

variable "reserved_concurrency" {
  description = "Reserved concurrent executions; null reserves none (the usage plan's throttle bounds traffic)."
  type        = number
  default     = null
}

variable "throttle_rate_limit" {
  description = "Usage plan steady rate (requests/s)."
  type        = number
}

variable "throttle_burst_limit" {
  description = "Usage plan burst."
  type        = number
}

variable "quota_per_day" {
  description = "Usage plan daily quota."
  type        = number
}

variable "stage_name" {
  description = "Name of the API stage (part of the URL)."
  type        = string
  default     = "v1"
}

variable "manage_account_logging_role" {
  description = "Set the region's API Gateway CloudWatch role (an account-wide setting that stage logging needs); false when another stack owns it."
  type        = bool
  default     = true
}
