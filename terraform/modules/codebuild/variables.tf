variable "project_name" {
  description = "Name of the CodeBuild project."
  type        = string
}

variable "role_arn" {
  description = "Service role (iam module: what buildspec.yml does, nothing wider)."
  type        = string
}

variable "repository_url" {
  description = "HTTPS clone URL of the GitHub repository."
  type        = string
}

variable "branch" {
  description = "Branch whose pushes start a build."
  type        = string
}

variable "compute_type" {
  description = "CodeBuild compute type."
  type        = string
}

variable "image" {
  description = "CodeBuild image."
  type        = string
}

variable "timeout_minutes" {
  description = "Build timeout."
  type        = number
}

variable "artifacts_bucket_name" {
  description = "Bucket for build artifacts."
  type        = string
}

variable "kms_key_arn" {
  description = "Key for artifacts, logs and parameters."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the build log group."
  type        = number
}

variable "parameter_path" {
  description = "SSM path under which the settings are stored, e.g. /distracted-driver/dev."
  type        = string
}

variable "settings" {
  description = "The pipeline's DD_* settings; each becomes an SSM parameter and a build environment variable."
  type        = map(string)

  validation {
    condition     = alltrue([for name in keys(var.settings) : can(regex("^DD_[A-Z0-9_]+$", name))])
    error_message = "settings are named DD_<FIELD>."
  }
}

variable "api_key_value" {
  description = "API key for the smoke and load tests (stored as a SecureString, exposed to the build as DD_API_KEY)."
  type        = string
  sensitive   = true
}

variable "github_token" {
  description = "GitHub personal access token registered as CodeBuild's source credential; null: none."
  type        = string
  default     = null
  sensitive   = true
}

variable "codeconnections_arn" {
  description = "CodeConnections connection ARN registered as CodeBuild's source credential (wins over github_token); null: none."
  type        = string
  default     = null
}
