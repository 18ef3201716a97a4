# --- identity ------------------------------------------------------------------

variable "project" {
  description = "Short name used as the prefix of every resource name."
  type        = string
  default     = "distracted-driver"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,23}$", var.project))
    error_message = "project must be 2-24 lower-case letters, digits or '-', starting with a letter."
  }
}

variable "environment" {
  description = "Deployment environment; one state and one tfvars file (envs/<environment>.tfvars) each."
  type        = string

  validation {
    condition     = contains(["dev", "staging", "prod"], var.environment)
    error_message = "environment must be dev, staging or prod."
  }
}

variable "region" {
  description = "AWS region of every resource (the pipeline's DD_REGION)."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like us-east-1."
  }
}

variable "tags" {
  description = "Extra tags for every resource (Project, Environment and ManagedBy are always set)."
  type        = map(string)
  default     = {}
}

# --- what the pipeline and Terraform must agree on (checked by `inv infra.check`) ---

variable "endpoint_name" {
  description = "SageMaker endpoint that the deploy task creates and updates (Terraform owns everything around it). Lower case: SageMaker writes endpoint ARNs in lower case, and IAM compares ARNs as written."
  type        = string
  default     = "distracted-driver"

  validation {
    # 39 = 63 (SageMaker's name limit) - 24 (the "-dd-YYYYMMDD-HHMMSS-xxxx" of a model version).
    condition     = can(regex("^[a-z0-9](-*[a-z0-9])*$", var.endpoint_name)) && length(var.endpoint_name) <= 39
    error_message = "endpoint_name must be at most 39 lower-case letters, digits and '-'."
  }
}

variable "variant_name" {
  description = "The endpoint's one production variant. It stays the same across blue/green swaps so that the autoscaling registration holds."
  type        = string
  default     = "AllTraffic"

  validation {
    condition     = can(regex("^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$", var.variant_name))
    error_message = "variant_name must be at most 63 letters, digits and '-'."
  }
}

variable "data_prefix" {
  description = "Bucket prefix of the converted RecordIO channels."
  type        = string
  default     = "data"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*$", var.data_prefix))
    error_message = "prefixes are one path segment without slashes."
  }
}

variable "raw_prefix" {
  description = "Bucket prefix of the raw images; a new object under <raw_prefix>/manifests/ starts a pipeline run."
  type        = string
  default     = "raw"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*$", var.raw_prefix))
    error_message = "prefixes are one path segment without slashes."
  }
}

variable "models_prefix" {
  description = "Bucket prefix of training jobs' outputs (models/<job>/output/model.tar.gz)."
  type        = string
  default     = "models"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*$", var.models_prefix))
    error_message = "prefixes are one path segment without slashes."
  }
}

variable "registry_prefix" {
  description = "Bucket prefix of the model registry and the live-model record."
  type        = string
  default     = "registry"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*$", var.registry_prefix))
    error_message = "prefixes are one path segment without slashes."
  }
}

variable "capture_prefix" {
  description = "Bucket prefix of the endpoint's data capture (<prefix>/<endpoint>/<variant>/yyyy/mm/dd/hh/*.jsonl)."
  type        = string
  default     = "capture"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*$", var.capture_prefix))
    error_message = "prefixes are one path segment without slashes."
  }
}

variable "pipeline_prefix" {
  description = "Bucket prefix of pipeline run records and the pipeline lock."
  type        = string
  default     = "pipeline"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*$", var.pipeline_prefix))
    error_message = "prefixes are one path segment without slashes."
  }
}

variable "transform_prefix" {
  description = "Bucket prefix of Batch Transform: images to score (anywhere under it) and each job's manifest and outputs."
  type        = string
  default     = "transform"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*$", var.transform_prefix))
    error_message = "prefixes are one path segment without slashes."
  }
}

variable "serving_instance_type" {
  description = "Instance type of the endpoint's variant (the pipeline's DD_SERVING_INSTANCE_TYPE)."
  type        = string
  default     = "ml.c5.large"

  validation {
    condition     = startswith(var.serving_instance_type, "ml.")
    error_message = "SageMaker instance types start with ml."
  }
}

variable "training_instance_type" {
  description = "Instance type of script-mode training jobs (the built-in algorithm always uses a GPU type)."
  type        = string
  default     = "ml.m5.xlarge"

  validation {
    condition     = startswith(var.training_instance_type, "ml.")
    error_message = "SageMaker instance types start with ml."
  }
}

# --- CI ----------------------------------------------------------------------------

variable "github_repository_url" {
  description = "HTTPS clone URL of this repository; CodeBuild builds it on every push to github_branch. Connect CodeBuild to GitHub once per account and region first (see the codebuild module's README)."
  type        = string

  validation {
    condition     = can(regex("^https://github\\.com/[^/]+/[^/]+\\.git$", var.github_repository_url))
    error_message = "github_repository_url must look like https://github.com/owner/repo.git."
  }
}

variable "github_branch" {
  description = "The branch whose pushes run the pipeline."
  type        = string
  default     = "main"

  validation {
    condition     = can(regex("^[A-Za-z0-9._/-]+$", var.github_branch))
    error_message = "github_branch must be a plain branch name."
  }
}

variable "codebuild_compute_type" {
  description = "CodeBuild compute type; the build runs the tests and a bounded load test, the training runs on SageMaker."
  type        = string
  default     = "BUILD_GENERAL1_MEDIUM"

  validation {
    condition     = contains(["BUILD_GENERAL1_SMALL", "BUILD_GENERAL1_MEDIUM", "BUILD_GENERAL1_LARGE"], var.codebuild_compute_type)
    error_message = "codebuild_compute_type must be BUILD_GENERAL1_SMALL, _MEDIUM or _LARGE."
  }
}

variable "codebuild_image" {
  description = "CodeBuild image (Ubuntu standard image with Python 3.11 and Docker)."
  type        = string
  default     = "aws/codebuild/standard:7.0"
}

variable "codebuild_timeout_minutes" {
  description = "Longest a pipeline build may run (training included)."
  type        = number
  default     = 480

  validation {
    condition     = var.codebuild_timeout_minutes >= 5 && var.codebuild_timeout_minutes <= 2160
    error_message = "codebuild_timeout_minutes must be within 5..2160."
  }
}

# --- autoscaling -------------------------------------------------------------------

variable "endpoint_exists" {
  description = "Set to true once the deploy task has created the endpoint (`inv infra.apply` detects it). Application Auto Scaling refuses to register a variant that does not exist yet, so the autoscaling module stays empty until then."
  type        = bool
  default     = false
}

variable "autoscaling_min_instances" {
  description = "Fewest instances of the variant."
  type        = number
  default     = 1

  validation {
    condition     = var.autoscaling_min_instances >= 1
    error_message = "autoscaling_min_instances must be at least 1."
  }
}

variable "autoscaling_max_instances" {
  description = "Most instances of the variant."
  type        = number
  default     = 4

  validation {
    condition     = var.autoscaling_max_instances >= 1 && var.autoscaling_max_instances <= 20
    error_message = "autoscaling_max_instances must be within 1..20."
  }
}

variable "autoscaling_target_invocations" {
  description = "Target of SageMakerVariantInvocationsPerInstance (invocations per instance per minute): the highest sustainable requests/s per instance from `inv loadtest.find-capacity` x safety factor x 60."
  type        = number
  default     = 600

  validation {
    condition     = var.autoscaling_target_invocations > 0
    error_message = "autoscaling_target_invocations must be positive."
  }
}

variable "autoscaling_scale_out_cooldown_seconds" {
  description = "Seconds after a scale-out before another scale-out."
  type        = number
  default     = 60
}

variable "autoscaling_scale_in_cooldown_seconds" {
  description = "Seconds after a scale-in before another scale-in."
  type        = number
  default     = 300
}

# --- alarms (the blue/green auto-rollback watches them) ---------------------------------

variable "alarm_max_error_rate" {
  description = "Roll back when Invocation5XXErrors / Invocations over a minute exceeds this share."
  type        = number
  default     = 0.05

  validation {
    condition     = var.alarm_max_error_rate > 0 && var.alarm_max_error_rate < 1
    error_message = "alarm_max_error_rate must be within (0, 1)."
  }
}

variable "alarm_min_requests" {
  description = "Minutes with fewer invocations than this decide nothing about the error rate."
  type        = number
  default     = 5
}

variable "alarm_p99_latency_ms" {
  description = "Roll back when the p99 of ModelLatency over a minute exceeds this many milliseconds."
  type        = number
  default     = 2000

  validation {
    condition     = var.alarm_p99_latency_ms > 0
    error_message = "alarm_p99_latency_ms must be positive."
  }
}

variable "alarm_evaluation_periods" {
  description = "Consecutive breaching minutes before an alarm fires."
  type        = number
  default     = 2
}

# --- REST API ------------------------------------------------------------------------

variable "api_throttle_rate_limit" {
  description = "Usage plan: steady requests per second per API key."
  type        = number
  default     = 50
}

variable "api_throttle_burst_limit" {
  description = "Usage plan: burst of requests per API key."
  type        = number
  default     = 100
}

variable "api_quota_per_day" {
  description = "Usage plan: requests per day per API key."
  type        = number
  default     = 100000
}

variable "lambda_memory_mb" {
  description = "Memory of the predict Lambda (its CPU share grows with it)."
  type        = number
  default     = 256

  validation {
    condition     = var.lambda_memory_mb >= 128 && var.lambda_memory_mb <= 10240
    error_message = "lambda_memory_mb must be within 128..10240."
  }
}

variable "lambda_timeout_seconds" {
  description = "Timeout of the predict Lambda; at most 29 s, API Gateway's integration limit."
  type        = number
  default     = 29

  validation {
    condition     = var.lambda_timeout_seconds >= 3 && var.lambda_timeout_seconds <= 29
    error_message = "lambda_timeout_seconds must be within 3..29."
  }
}

variable "lambda_endpoint_read_timeout_seconds" {
  description = "Read timeout of each invoke_endpoint attempt; (2 + this) x 2 attempts must stay below lambda_timeout_seconds."
  type        = number
  default     = 12
}

variable "lambda_reserved_concurrency" {
  description = "Concurrent executions reserved for the predict Lambda; null (default) reserves none. Lambda keeps 100 of the account's ConcurrentExecutions unreserved and new accounts often have 10 in all, so only set this where `inv infra.preflight` says the quota allows it. The usage plan's throttle is what bounds abuse."
  type        = number
  default     = null
}

variable "trigger_reserved_concurrency" {
  description = "Concurrent executions reserved for the trigger Lambda; null (default) reserves none. Builds are serialized by the CodeBuild project's concurrent build limit of 1, not by this."
  type        = number
  default     = null
}

variable "github_token" {
  description = "GitHub personal access token that CodeBuild uses for the source and the webhook (stored by aws_codebuild_source_credential). Leave null when the account already has a GitHub source credential, or use codeconnections_arn."
  type        = string
  default     = null
  sensitive   = true
}

variable "codeconnections_arn" {
  description = "ARN of an AWS CodeConnections (CodeStar Connections) connection to GitHub, registered as CodeBuild's source credential instead of a token. null: none."
  type        = string
  default     = null

  validation {
    condition     = var.codeconnections_arn == null || can(regex("^arn:aws[a-z-]*:(codeconnections|codestar-connections):", var.codeconnections_arn))
    error_message = "codeconnections_arn must be a CodeConnections connection ARN."
  }
}

# --- storage and logs ------------------------------------------------------------------

variable "log_retention_days" {
  description = "Retention of every CloudWatch log group."
  type        = number
  default     = 365

  validation {
    condition     = contains([365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a CloudWatch retention of at least one year."
  }
}

variable "noncurrent_model_version_days" {
  description = "Days a replaced or deleted object under models/ stays recoverable (versioning) before it expires."
  type        = number
  default     = 90
}

variable "artifact_expiration_days" {
  description = "Days CodeBuild artifacts and reports are kept."
  type        = number
  default     = 90
}

variable "serving_images_to_keep" {
  description = "Newest serving images kept in ECR; older ones expire."
  type        = number
  default     = 20
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete non-empty buckets and repositories (dev only)."
  type        = bool
  default     = false
}
