# The storage module's per-bucket resources became for_each instances (modules/storage/moved.tf).
# This applies the module as it was before (tests/fixtures/storage_before_for_each, a copy
# of it), then the module as it is to the same state (state_key), with the AWS provider
# mocked. A moved block that is missing or wrong makes Terraform destroy the old object
# and create a new one, whose mocked id differs; a setting the rewrite changed differs
# from the deployed one. Needs Terraform >= 1.11 (state_key).

mock_provider "aws" {
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
}

variables {
  name                          = "distracted-driver-test"
  account_id                    = "123456789012"
  partition                     = "aws"
  region                        = "us-east-1"
  models_prefix                 = "models"
  noncurrent_model_version_days = 90
  artifact_expiration_days      = 90
}

run "deployed_before_for_each" {
  state_key = "storage"

  module {
    source = "./tests/fixtures/storage_before_for_each"
  }
}

run "for_each_keeps_every_object" {
  state_key = "storage"

  module {
    source = "./modules/storage"
  }

  assert {
    condition = {
      for kind, objects in {
        buckets              = aws_s3_bucket.this
        public_access_blocks = aws_s3_bucket_public_access_block.this
        ownership_controls   = aws_s3_bucket_ownership_controls.this
        versioning           = aws_s3_bucket_versioning.this
        encryption           = aws_s3_bucket_server_side_encryption_configuration.this
        logging              = aws_s3_bucket_logging.this
        lifecycle            = aws_s3_bucket_lifecycle_configuration.this
        policies             = aws_s3_bucket_policy.this
      } : kind => { for bucket, object in objects : bucket => object.id }
    } == { for kind, objects in run.deployed_before_for_each.per_bucket : kind => { for bucket, object in objects : bucket => object.id } }
    error_message = "an object of a deployment would be destroyed and created anew (a bucket's data lost, or a bucket left without a setting for a while): modules/storage/moved.tf lacks its moved block"
  }

  assert {
    condition     = aws_kms_key.this == run.deployed_before_for_each.key.key && aws_kms_alias.this == run.deployed_before_for_each.key.alias
    error_message = "the key or its alias differs from the deployed one"
  }

  assert {
    condition     = tomap(aws_s3_bucket.this) == run.deployed_before_for_each.per_bucket.buckets
    error_message = "a bucket differs from the deployed one"
  }

  assert {
    condition     = tomap(aws_s3_bucket_public_access_block.this) == run.deployed_before_for_each.per_bucket.public_access_blocks
    error_message = "a public access block differs from the deployed one"
  }

  assert {
    condition     = tomap(aws_s3_bucket_ownership_controls.this) == run.deployed_before_for_each.per_bucket.ownership_controls
    error_message = "an ownership control differs from the deployed one"
  }

  assert {
    condition     = tomap(aws_s3_bucket_versioning.this) == run.deployed_before_for_each.per_bucket.versioning
    error_message = "a bucket's versioning differs from the deployed one"
  }

  assert {
    condition     = tomap(aws_s3_bucket_server_side_encryption_configuration.this) == run.deployed_before_for_each.per_bucket.encryption
    error_message = "a bucket's default encryption differs from the deployed one"
  }

  assert {
    condition     = tomap(aws_s3_bucket_logging.this) == run.deployed_before_for_each.per_bucket.logging
    error_message = "a bucket's access logging differs from the deployed one"
  }

  assert {
    condition     = tomap(aws_s3_bucket_lifecycle_configuration.this) == run.deployed_before_for_each.per_bucket.lifecycle
    error_message = "a bucket's lifecycle rules differ from the deployed ones"
  }

  assert {
    condition     = tomap(aws_s3_bucket_policy.this) == run.deployed_before_for_each.per_bucket.policies
    error_message = "a bucket policy differs from the deployed one"
  }

  # The policy documents' statements, each condition's values as a set: the provider compares
  # policies so (hashicorp/awspolicyequivalence), and the log bucket's policy now lists the
  # buckets that log into it in key order (artifacts, data) where it listed data first.
  assert {
    condition = {
      for bucket, document in data.aws_iam_policy_document.bucket : bucket => [
        for statement in document.statement : merge(statement, { condition = toset([for c in statement.condition : merge(c, { values = toset(c.values) })]) })
      ]
      } == {
      for bucket, statements in run.deployed_before_for_each.policy_statements : bucket => [
        for statement in statements : merge(statement, { condition = toset([for c in statement.condition : merge(c, { values = toset(c.values) })]) })
      ]
    }
    error_message = "a bucket policy's statements differ from the deployed ones"
  }
}
