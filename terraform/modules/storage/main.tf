locals {
  data_bucket      = "${var.name}-data-${var.account_id}-${var.region}"
  artifacts_bucket = "${var.name}-artifacts-${var.account_id}-${var.region}"
  logs_bucket      = "${var.name}-logs-${var.account_id}-${var.region}"
  encrypted = {
    data      = aws_s3_bucket.data.id
    artifacts = aws_s3_bucket.artifacts.id
  }
}

# --- the key ---------------------------------------------------------------------

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:A key policy's "*" resource means this key only; administration stays with the account's IAM policies, as AWS's default key policy does.
  #checkov:skip=CKV_AWS_111:A key policy's "*" resource means this key only; writes need an IAM policy of this account that names the key.
  #checkov:skip=CKV_AWS_356:A key policy's "*" resource means this key only; it cannot name the key's own ARN before the key exists.
  # Key administration and use stay with the account's IAM policies (the roles in the
  # iam module are granted use of this key by ARN); CloudWatch Logs needs the key
  # policy itself to encrypt this account's log groups.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${var.partition}:iam::${var.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncrypt"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${var.partition}:logs:${var.region}:${var.account_id}:log-group:*"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: buckets, logs, parameters, images"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

# --- buckets -------------------------------------------------------------------------

resource "aws_s3_bucket" "data" {
  #checkov:skip=CKV2_AWS_62:The trigger module's aws_s3_bucket_notification sends new data manifests to the trigger Lambda (checkov cannot follow the bucket across modules; `inv infra.check` verifies that wiring).
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost; everything here is rebuilt from the raw images, which are versioned.
  bucket        = local.data_bucket
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket" "artifacts" {
  #checkov:skip=CKV_AWS_144:Build artifacts and reports are reproducible by rerunning a build; replication is not worth its cost.
  #checkov:skip=CKV2_AWS_62:Nothing reacts to new build artifacts; event notifications would have no consumer.
  bucket        = local.artifacts_bucket
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket" "logs" {
  #checkov:skip=CKV_AWS_144:Access logs are kept in-region; replicating them is not required here.
  #checkov:skip=CKV_AWS_18:This is the access-log target bucket; logging it into itself would loop.
  #checkov:skip=CKV2_AWS_62:Nothing reacts to new access-log objects.
  #checkov:skip=CKV_AWS_145:S3 server access logging only delivers to targets encrypted with SSE-S3, not SSE-KMS.
  bucket        = local.logs_bucket
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each = {
    data      = aws_s3_bucket.data.id
    artifacts = aws_s3_bucket.artifacts.id
    logs      = aws_s3_bucket.logs.id
  }

  bucket                  = each.value
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = {
    data      = aws_s3_bucket.data.id
    artifacts = aws_s3_bucket.artifacts.id
    logs      = aws_s3_bucket.logs.id
  }

  bucket = each.value

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "data" {
  bucket = aws_s3_bucket.data.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_versioning" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_versioning" "logs" {
  bucket = aws_s3_bucket.logs.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_logging" "data" {
  bucket        = aws_s3_bucket.data.id
  target_bucket = aws_s3_bucket.logs.id
  target_prefix = "data/"
}

resource "aws_s3_bucket_logging" "artifacts" {
  bucket        = aws_s3_bucket.artifacts.id
  target_bucket = aws_s3_bucket.logs.id
  target_prefix = "artifacts/"
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    id     = "expire-replaced-models"
    status = "Enabled"

    filter {
      prefix = "${var.models_prefix}/"
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_model_version_days
    }
  }

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"

    filter {
      prefix = "" # every object; an empty filter {} warns from provider 5.90 on
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.data]
}

resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    id     = "expire-build-artifacts"
    status = "Enabled"

    filter {
      prefix = "" # every object; an empty filter {} warns from provider 5.90 on
    }

    expiration {
      days = var.artifact_expiration_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 7
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.artifacts]
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    id     = "expire-access-logs"
    status = "Enabled"

    filter {
      prefix = "" # every object; an empty filter {} warns from provider 5.90 on
    }

    expiration {
      days = 365
    }

    noncurrent_version_expiration {
      noncurrent_days = 7
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.logs]
}

# --- bucket policies: TLS only; the log bucket takes S3's access-log deliveries ----------

data "aws_iam_policy_document" "tls_only" {
  for_each = {
    data      = aws_s3_bucket.data.arn
    artifacts = aws_s3_bucket.artifacts.arn
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [each.value, "${each.value}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "tls_only" {
  for_each = data.aws_iam_policy_document.tls_only

  bucket = local.encrypted[each.key]
  policy = each.value.json

  depends_on = [aws_s3_bucket_public_access_block.this]
}

data "aws_iam_policy_document" "logs" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.logs.arn, "${aws_s3_bucket.logs.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid       = "S3ServerAccessLogs"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.logs.arn}/*"]

    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [var.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.data.arn, aws_s3_bucket.artifacts.arn]
    }
  }
}

resource "aws_s3_bucket_policy" "logs" {
  bucket = aws_s3_bucket.logs.id
  policy = data.aws_iam_policy_document.logs.json

  depends_on = [aws_s3_bucket_public_access_block.this]
}
