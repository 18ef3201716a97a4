# `terraform test -var-file=envs/<env>.tfvars` plans an environment against the mocked
# AWS provider (after `inv infra.package` wrote the Lambda zips): every expression, type, validation and precondition is evaluated by
# Terraform core and checked against the real provider schemas, with no account and
# no credentials. `inv infra.check` runs it for dev and prod where terraform and the
# providers are installed (it says so when they are not).

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = {
      account_id = "123456789012"
    }
  }

  mock_data "aws_partition" {
    defaults = {
      partition = "aws"
    }
  }

  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }

  mock_data "aws_ecr_lifecycle_policy_document" {
    defaults = {
      json = "{\"rules\":[]}"
    }
  }
}

variables {
  endpoint_exists = false
}

run "plan" {
  command = plan

  assert {
    condition     = output.pipeline_settings["DD_ENDPOINT_NAME"] == var.endpoint_name && output.pipeline_settings["DD_ENV"] == var.environment
    error_message = "the pipeline's settings name this env's endpoint"
  }
}

run "plan_with_the_endpoint" {
  command = plan

  variables {
    endpoint_exists = true
  }

  assert {
    condition     = output.autoscaling_resource_id == "endpoint/${var.endpoint_name}/variant/${var.variant_name}"
    error_message = "the autoscaling resource id must be the one hosting.aws registers"
  }

  assert {
    condition     = length(output.rollback_alarm_names) == 2
    error_message = "blue/green deploys roll back on two alarms"
  }
}
