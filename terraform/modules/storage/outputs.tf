output "data_bucket_name" {
  description = "The pipeline's bucket."
  value       = aws_s3_bucket.this["data"].id
}

output "data_bucket_arn" {
  description = "ARN of the pipeline's bucket."
  value       = aws_s3_bucket.this["data"].arn
}

output "artifacts_bucket_name" {
  description = "CodeBuild artifacts and reports."
  value       = aws_s3_bucket.this["artifacts"].id
}

output "artifacts_bucket_arn" {
  description = "ARN of the artifacts bucket."
  value       = aws_s3_bucket.this["artifacts"].arn
}

output "logs_bucket_name" {
  description = "S3 server access logs of the other two buckets."
  value       = aws_s3_bucket.this["logs"].id
}

output "kms_key_arn" {
  description = "The customer managed key."
  value       = aws_kms_key.this.arn
}
