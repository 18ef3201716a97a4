# The state addresses the buckets and their settings had before they became for_each
# instances of one resource each. A deployment made before then moves its objects to the
# new addresses on its next plan instead of destroying and recreating them (destroying a
# bucket loses its data; destroying a setting leaves the bucket without it for a while).
# tests/storage_moved.tftest.hcl applies the old module and proves the new one keeps
# every object. Keep these blocks until every deployment has applied them.

moved {
  from = aws_s3_bucket.data
  to   = aws_s3_bucket.this["data"]
}

moved {
  from = aws_s3_bucket.artifacts
  to   = aws_s3_bucket.this["artifacts"]
}

moved {
  from = aws_s3_bucket.logs
  to   = aws_s3_bucket.this["logs"]
}

moved {
  from = aws_s3_bucket_versioning.data
  to   = aws_s3_bucket_versioning.this["data"]
}

moved {
  from = aws_s3_bucket_versioning.artifacts
  to   = aws_s3_bucket_versioning.this["artifacts"]
}

moved {
  from = aws_s3_bucket_versioning.logs
  to   = aws_s3_bucket_versioning.this["logs"]
}

moved {
  from = aws_s3_bucket_server_side_encryption_configuration.data
  to   = aws_s3_bucket_server_side_encryption_configuration.this["data"]
}

moved {
  from = aws_s3_bucket_server_side_encryption_configuration.artifacts
  to   = aws_s3_bucket_server_side_encryption_configuration.this["artifacts"]
}

moved {
  from = aws_s3_bucket_server_side_encryption_configuration.logs
  to   = aws_s3_bucket_server_side_encryption_configuration.this["logs"]
}

moved {
  from = aws_s3_bucket_logging.data
  to   = aws_s3_bucket_logging.this["data"]
}

moved {
  from = aws_s3_bucket_logging.artifacts
  to   = aws_s3_bucket_logging.this["artifacts"]
}

moved {
  from = aws_s3_bucket_lifecycle_configuration.data
  to   = aws_s3_bucket_lifecycle_configuration.this["data"]
}

moved {
  from = aws_s3_bucket_lifecycle_configuration.artifacts
  to   = aws_s3_bucket_lifecycle_configuration.this["artifacts"]
}

moved {
  from = aws_s3_bucket_lifecycle_configuration.logs
  to   = aws_s3_bucket_lifecycle_configuration.this["logs"]
}

moved {
  from = aws_s3_bucket_policy.tls_only["data"]
  to   = aws_s3_bucket_policy.this["data"]
}

moved {
  from = aws_s3_bucket_policy.tls_only["artifacts"]
  to   = aws_s3_bucket_policy.this["artifacts"]
}

moved {
  from = aws_s3_bucket_policy.logs
  to   = aws_s3_bucket_policy.this["logs"]
}
