variable "name" {
  description = "Prefix of the bucket names and of the key alias (<project>-<environment>)."
  type        = string
}

variable "account_id" {
  description = "AWS account id; part of the bucket names, which are global."
  type        = string
}

variable "partition" {
  description = "AWS partition (aws, aws-cn, aws-us-gov)."
  type        = string
}

variable "region" {
  description = "Region of the buckets; part of the bucket names."
  type        = string
}

variable "models_prefix" {
  description = "Prefix of training outputs in the data bucket; its old versions expire."
  type        = string
}

variable "noncurrent_model_version_days" {
  description = "Days a replaced or deleted model object stays recoverable."
  type        = number
}

variable "artifact_expiration_days" {
  description = "Days CodeBuild artifacts are kept."
  type        = number
}

variable "force_destroy" {
  description = "Allow destroying non-empty buckets."
  type        = bool
  default     = false
}
