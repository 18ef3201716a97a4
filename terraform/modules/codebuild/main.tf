# The pipeline's CI: buildspec.yml on every push to the branch, and on new data (the
# trigger module calls StartBuild). Settings reach the build as environment variables
# read from SSM parameters at build start; nothing secret is in the repository.
resource "aws_ssm_parameter" "setting" {
  for_each = var.settings

  name        = "${var.parameter_path}/${each.key}"
  description = "Pipeline setting ${each.key} (Terraform output; read by CodeBuild)"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = each.value
}

resource "aws_ssm_parameter" "api_key" {
  name        = "${var.parameter_path}/DD_API_KEY"
  description = "API key for the pipeline's smoke and load tests"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = var.api_key_value
}

resource "aws_cloudwatch_log_group" "build" {
  name              = "/aws/codebuild/${var.project_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_codebuild_project" "this" {
  #checkov:skip=CKV_AWS_316:Privileged mode runs the Docker daemon that builds the serving image (docker build/push of the model server); the build runs only this repository's code.
  name                   = var.project_name
  description            = "Continuous training and deployment: buildspec.yml"
  service_role           = var.role_arn
  build_timeout          = var.timeout_minutes
  queued_timeout         = 60
  encryption_key         = var.kms_key_arn
  concurrent_build_limit = 1 # never two pipeline runs at once (StartBuild fails while one runs)
  source_version         = var.branch

  source {
    type                = "GITHUB"
    location            = var.repository_url
    git_clone_depth     = 1
    buildspec           = "buildspec.yml"
    report_build_status = true
  }

  artifacts {
    type                = "S3"
    location            = var.artifacts_bucket_name
    path                = "builds"
    namespace_type      = "BUILD_ID"
    packaging           = "ZIP"
    encryption_disabled = false
  }

  environment {
    compute_type                = var.compute_type
    image                       = var.image
    type                        = "LINUX_CONTAINER"
    image_pull_credentials_type = "CODEBUILD"
    privileged_mode             = true

    dynamic "environment_variable" {
      for_each = aws_ssm_parameter.setting
      content {
        name  = environment_variable.key
        value = environment_variable.value.name
        type  = "PARAMETER_STORE"
      }
    }

    environment_variable {
      name  = "DD_API_KEY"
      value = aws_ssm_parameter.api_key.name
      type  = "PARAMETER_STORE"
    }
  }

  logs_config {
    cloudwatch_logs {
      status     = "ENABLED"
      group_name = aws_cloudwatch_log_group.build.name
    }

    s3_logs {
      status = "DISABLED"
    }
  }
}

# CodeBuild reaches GitHub with one source credential per account and region. With
# github_token or codeconnections_arn set, Terraform registers it; with neither, the
# account must already have one (`inv infra.preflight` checks, and says how to add it).
locals {
  source_credential = (
    var.codeconnections_arn != null ? { auth_type = "CODECONNECTIONS", token = var.codeconnections_arn } :
    var.github_token != null ? { auth_type = "PERSONAL_ACCESS_TOKEN", token = var.github_token } : null
  )
}

resource "aws_codebuild_source_credential" "github" {
  count = local.source_credential == null ? 0 : 1

  server_type = "GITHUB"
  auth_type   = local.source_credential.auth_type
  token       = local.source_credential.token
}

# A push to the branch starts a build (the webhook needs the source credential above, or
# one the account already has).
resource "aws_codebuild_webhook" "push" {
  project_name = aws_codebuild_project.this.name
  build_type   = "BUILD"

  filter_group {
    filter {
      type    = "EVENT"
      pattern = "PUSH"
    }

    filter {
      type    = "HEAD_REF"
      pattern = "^refs/heads/${var.branch}$"
    }
  }

  depends_on = [aws_codebuild_source_credential.github]
}
